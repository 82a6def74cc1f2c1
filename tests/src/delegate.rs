//! A macro for test stores that wrap another store and change only the lock operations: it
//! forwards the member, log and semaphore operations of [`hedge::Store`] to the wrapped store.

/// `impl Store for $wrapper` with the lock operations given in the braces and the member, log
/// and semaphore operations forwarded to field `$field` (a name, or `0`):
/// `store_with_storage_of!(Wrapper, inner, { async fn acquire(...) ... })`.
#[macro_export]
macro_rules! store_with_storage_of {
    ($wrapper:ty, $field:tt, { $($election:tt)* }) => {
        #[::async_trait::async_trait]
        impl ::hedge::Store for $wrapper {
            $($election)*

            async fn heartbeat_member(
                &self,
                group: &str,
                member: &::hedge::store::MemberHeartbeat,
            ) -> ::hedge::store::StoreResult<()> {
                self.$field.heartbeat_member(group, member).await
            }

            async fn remove_member(&self, group: &str, id: &str) -> ::hedge::store::StoreResult<()> {
                self.$field.remove_member(group, id).await
            }

            async fn list_members(
                &self,
                group: &str,
            ) -> ::hedge::store::StoreResult<Vec<::hedge::store::MemberRecord>> {
                self.$field.list_members(group).await
            }

            async fn put(
                &self,
                group: &str,
                request: &::hedge::store::PutRequest,
            ) -> ::hedge::store::StoreResult<::hedge::store::PutOutcome> {
                self.$field.put(group, request).await
            }

            async fn read_log(
                &self,
                group: &str,
                key: &str,
                query: ::hedge::store::LogQuery,
            ) -> ::hedge::store::StoreResult<Vec<::hedge::store::LogEntry>> {
                self.$field.read_log(group, key, query).await
            }

            async fn list_log_keys(
                &self,
                group: &str,
                prefix: &str,
                start_after: Option<&str>,
                limit: u32,
            ) -> ::hedge::store::StoreResult<Vec<String>> {
                self.$field
                    .list_log_keys(group, prefix, start_after, limit)
                    .await
            }

            async fn trim_log(
                &self,
                group: &str,
                key: &str,
                retention: ::hedge::store::Retention,
            ) -> ::hedge::store::StoreResult<u64> {
                self.$field.trim_log(group, key, retention).await
            }

            async fn define_semaphore(
                &self,
                key: &::hedge::store::SemaphoreKey,
                limit: u32,
            ) -> ::hedge::store::StoreResult<::hedge::store::DefineOutcome> {
                self.$field.define_semaphore(key, limit).await
            }

            async fn semaphore_state(
                &self,
                key: &::hedge::store::SemaphoreKey,
            ) -> ::hedge::store::StoreResult<Option<::hedge::store::SemaphoreState>> {
                self.$field.semaphore_state(key).await
            }

            async fn acquire_permit(
                &self,
                key: &::hedge::store::SemaphoreKey,
                request: &::hedge::store::PermitRequest,
            ) -> ::hedge::store::StoreResult<::hedge::store::PermitOutcome> {
                self.$field.acquire_permit(key, request).await
            }

            async fn renew_permit(
                &self,
                key: &::hedge::store::SemaphoreKey,
                permit_id: &str,
                token: u64,
                lease: ::std::time::Duration,
            ) -> ::hedge::store::StoreResult<::hedge::store::PermitRenewal> {
                self.$field
                    .renew_permit(key, permit_id, token, lease)
                    .await
            }

            async fn release_permit(
                &self,
                key: &::hedge::store::SemaphoreKey,
                permit_id: &str,
            ) -> ::hedge::store::StoreResult<::hedge::store::ReleaseOutcome> {
                self.$field.release_permit(key, permit_id).await
            }
        }
    };
}
