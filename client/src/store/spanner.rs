//! Cloud Spanner backend (being written).

/// The Cloud Spanner store.
#[derive(Debug)]
pub struct SpannerStore;
