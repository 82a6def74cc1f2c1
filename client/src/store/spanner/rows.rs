//! Decoding columns, with errors that name the table, the row's key and the column.

use std::fmt::Display;

use google_cloud_spanner::result::Row;

use crate::store::{StoreError, StoreResult};

/// A [`StoreError::Corrupt`] for the row `key` of `table`.
pub(super) fn corrupt(table: &str, key: impl Display, message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table: table.to_owned(),
        key: key.to_string(),
        message: message.into(),
    }
}

/// Column `name` of `row`, decoded as `T`.
pub(super) fn column<T: google_cloud_spanner::value::FromValue>(
    row: &Row,
    table: &str,
    key: impl Display,
    name: &str,
) -> StoreResult<T> {
    row.get::<T>(name)
        .map_err(|e| corrupt(table, key, format!("column {name}: {e}")))
}

/// A stored `INT64` that must not be negative.
pub(super) fn non_negative(
    table: &str,
    key: impl Display,
    name: &str,
    value: i64,
) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| corrupt(table, key, format!("{name} is negative ({value})")))
}
