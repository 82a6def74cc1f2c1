//! The member rows: a heartbeat is one read-write transaction, a leave one delete, the list one
//! strong read judged on Spanner's clock.

use google_cloud_spanner::mutation::Mutation;
use google_cloud_spanner::statement::Statement;
use google_cloud_spanner::transaction::ReadWriteTransaction;
use tracing::warn;

use super::locks::micros;
use super::rows::column;
use super::{COMMIT_TIMESTAMP, SpannerStore};
use crate::store::{MemberHeartbeat, MemberRecord, StoreResult};

impl SpannerStore {
    pub(super) async fn heartbeat(&self, group: &str, member: &MemberHeartbeat) -> StoreResult<()> {
        let ttl_us = micros("the member TTL", member.ttl)?;
        let members = self.tables.members.clone();
        let group = group.to_owned();
        let member = member.clone();
        self.read_write(
            "recording a member",
            &self.tables.members,
            move |tx: ReadWriteTransaction| {
                let (members, group, member) = (members.clone(), group.clone(), member.clone());
                async move {
                    let mut rows = tx
                        .execute_query(
                            Statement::builder(format!(
                                "SELECT incarnation, \
                                 TIMESTAMP_DIFF(CURRENT_TIMESTAMP(), heartbeat, MICROSECOND) < ttl_us \
                                 AS alive FROM {members} WHERE group_name = @g AND member_id = @m"
                            ))
                            .add_param("g", group.as_str())
                            .add_param("m", member.id.as_str())
                            .build(),
                        )
                        .await?;
                    // The same process renewing a live row keeps its membership (and
                    // joined_at); anything else (a new row, an expired one, a restarted
                    // process with the same id) starts a new one.
                    let continuing = match rows.next().await.transpose()? {
                        None => false,
                        Some(row) => {
                            let alive = row.get::<bool>("alive").unwrap_or(false);
                            let incarnation: Option<String> =
                                row.get("incarnation").unwrap_or(None);
                            alive && incarnation.as_deref() == Some(member.incarnation.as_str())
                        }
                    };
                    let builder = if continuing {
                        Mutation::new_update_builder(members.as_str())
                    } else {
                        Mutation::new_insert_or_update_builder(members.as_str())
                            .set("joined_at")
                            .to(COMMIT_TIMESTAMP)
                    };
                    tx.buffer([builder
                        .set("group_name")
                        .to(group.as_str())
                        .set("member_id")
                        .to(member.id.as_str())
                        .set("incarnation")
                        .to(member.incarnation.as_str())
                        .set("address")
                        .to(member.address.clone())
                        .set("ttl_us")
                        .to(ttl_us)
                        .set("heartbeat")
                        .to(COMMIT_TIMESTAMP)
                        .build()])?;
                    Ok(Ok(()))
                }
            },
        )
        .await
    }

    pub(super) async fn remove(&self, group: &str, id: &str) -> StoreResult<()> {
        let members = self.tables.members.clone();
        let group = group.to_owned();
        let id = id.to_owned();
        self.read_write(
            "removing a member",
            &self.tables.members,
            move |tx: ReadWriteTransaction| {
                let (members, group, id) = (members.clone(), group.clone(), id.clone());
                async move {
                    tx.execute_update(
                        Statement::builder(format!(
                            "DELETE FROM {members} WHERE group_name = @g AND member_id = @m"
                        ))
                        .add_param("g", group.as_str())
                        .add_param("m", id.as_str())
                        .build(),
                    )
                    .await?;
                    Ok(Ok(()))
                }
            },
        )
        .await
    }

    pub(super) async fn live_members(&self, group: &str) -> StoreResult<Vec<MemberRecord>> {
        let members = &self.tables.members;
        let statement = Statement::builder(format!(
            "SELECT member_id, incarnation, address, joined_at FROM {members} \
             WHERE group_name = @g \
             AND TIMESTAMP_DIFF(CURRENT_TIMESTAMP(), heartbeat, MICROSECOND) < ttl_us \
             ORDER BY member_id"
        ))
        .add_param("g", group);
        let rows = self
            .query("listing members", members, statement, |row| {
                let id: String = column(row, members, group, "member_id")?;
                let key = format!("{group}/{id}");
                let record = (|| {
                    Ok(MemberRecord {
                        incarnation: column(row, members, &key, "incarnation")?,
                        address: column(row, members, &key, "address")?,
                        joined_at: column(row, members, &key, "joined_at")?,
                        id: id.clone(),
                    })
                })();
                Ok(record)
            })
            .await?;
        // One unreadable row must not hide the others: it is reported and skipped.
        Ok(rows
            .into_iter()
            .filter_map(|record| {
                record
                    .inspect_err(|e: &crate::store::StoreError| {
                        warn!(error = %e, "skipping an unreadable member row");
                    })
                    .ok()
            })
            .collect())
    }
}
