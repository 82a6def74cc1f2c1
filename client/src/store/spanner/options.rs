//! How to reach Spanner: an emulator or the real service, and the time limits of each call.

use std::time::Duration;

/// The variable the crate reads to find an emulator's gRPC endpoint (`host:port`).
pub const ENV_EMULATOR_HOST: &str = "SPANNER_EMULATOR_HOST";

/// The variable hedge reads for the emulator's REST admin endpoint (`http://host:port`, the
/// gateway's `--http_port`) when `SPANNER_EMULATOR_HOST` is set and the gRPC port is not the
/// default 9010 (whose REST port 9020 the crate derives by itself).
pub const ENV_EMULATOR_REST: &str = "HEDGE_SPANNER_EMULATOR_REST";

/// How to reach Spanner.
///
/// The default uses what the environment says, as the official crate does:
/// `SPANNER_EMULATOR_HOST` (with anonymous credentials) when it is set, otherwise
/// `spanner.googleapis.com` with Application Default Credentials (a service-account key in
/// `GOOGLE_APPLICATION_CREDENTIALS`, GKE Workload Identity through the metadata server, or
/// `gcloud auth application-default login`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpannerOptions {
    /// An emulator's gRPC endpoint (`host:port`, e.g. the gateway's `--grpc_port`), used with
    /// anonymous credentials. Overrides `SPANNER_EMULATOR_HOST` for this store only.
    pub emulator_host: Option<String>,
    /// The emulator's REST admin endpoint (`http://host:port`, the gateway's `--http_port`),
    /// used for DDL by [`ensure_schema`](crate::store::schema::ensure_schema). When unset:
    /// `HEDGE_SPANNER_EMULATOR_REST`, else the crate's default (gRPC port 9010 → 9020).
    pub emulator_rest_endpoint: Option<String>,
    /// How long connecting (building the client and creating its session) may take before it
    /// fails with [`StoreError::Unavailable`](crate::store::StoreError::Unavailable). Default 10 s.
    pub connect_timeout: Duration,
    /// How long one operation may take, its Aborted retries included. Default 10 s.
    pub operation_timeout: Duration,
    /// How long one schema change (a DDL batch, which real Spanner may take minutes to apply)
    /// may take. Default 10 minutes.
    pub schema_timeout: Duration,
    /// Export the crate's built-in client metrics to Cloud Monitoring (needs the
    /// `monitoring.timeSeries.create` permission). Default `false`; never on for emulators.
    pub export_builtin_metrics: bool,
}

impl Default for SpannerOptions {
    fn default() -> Self {
        Self {
            emulator_host: None,
            emulator_rest_endpoint: None,
            connect_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(10),
            schema_timeout: Duration::from_secs(600),
            export_builtin_metrics: false,
        }
    }
}

impl SpannerOptions {
    /// Options for the emulator whose gateway listens on `grpc_host` (`host:port`) and
    /// `rest_endpoint` (`http://host:port`).
    pub fn emulator(grpc_host: impl Into<String>, rest_endpoint: impl Into<String>) -> Self {
        Self {
            emulator_host: Some(grpc_host.into()),
            emulator_rest_endpoint: Some(rest_endpoint.into()),
            ..Self::default()
        }
    }

    /// Whether these options (or the environment) point at an emulator.
    pub fn targets_emulator(&self) -> bool {
        self.emulator_host.is_some() || env_emulator_host().is_some()
    }

    /// A sentence on what to check when Spanner cannot be reached.
    pub(crate) fn unreachable_hint(&self) -> String {
        if let Some(host) = &self.emulator_host {
            return format!("is the Cloud Spanner emulator running with its gRPC port at {host}?");
        }
        if let Some(host) = env_emulator_host() {
            return format!(
                "is {ENV_EMULATOR_HOST}={host} right, and is the Cloud Spanner emulator running there?"
            );
        }
        "are Application Default Credentials present (GOOGLE_APPLICATION_CREDENTIALS, GKE \
         Workload Identity, or `gcloud auth application-default login`) with Spanner access, \
         and can this host reach spanner.googleapis.com? (For the emulator, set \
         SPANNER_EMULATOR_HOST.)"
            .to_owned()
    }

    pub(super) fn emulator_endpoint(&self) -> Option<String> {
        self.emulator_host.as_ref().map(|h| {
            if h.contains("://") {
                h.clone()
            } else {
                format!("http://{h}")
            }
        })
    }

    pub(crate) fn rest_endpoint(&self) -> Option<String> {
        if let Some(rest) = &self.emulator_rest_endpoint {
            return Some(rest.clone());
        }
        if self.emulator_host.is_some() || env_emulator_host().is_some() {
            return std::env::var(ENV_EMULATOR_REST)
                .ok()
                .filter(|v| !v.is_empty());
        }
        None
    }
}

fn env_emulator_host() -> Option<String> {
    std::env::var(ENV_EMULATOR_HOST)
        .ok()
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulator_options_are_explicit() {
        let o = SpannerOptions::emulator("127.0.0.1:1234", "http://127.0.0.1:1235");
        assert!(o.targets_emulator());
        assert_eq!(
            o.emulator_endpoint().as_deref(),
            Some("http://127.0.0.1:1234")
        );
        assert_eq!(o.rest_endpoint().as_deref(), Some("http://127.0.0.1:1235"));
        assert!(o.unreachable_hint().contains("127.0.0.1:1234"));
    }
}
