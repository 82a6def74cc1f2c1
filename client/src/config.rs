//! Timings and identity, validated; [`Config::from_env`] reads the `HEDGE_*` variables that the
//! operator writes into the group's ConfigMap, and [`Config::to_env`] writes them.

use std::collections::BTreeMap;
use std::time::Duration;

pub use crate::names::{DatabasePath, DatabasePathError};
use crate::names::{TableNames, TableNamesError};

/// The group name (`HEDGE_GROUP`).
pub const ENV_GROUP: &str = "HEDGE_GROUP";
/// The Spanner database path (`HEDGE_SPANNER_DATABASE`).
pub const ENV_DATABASE: &str = "HEDGE_SPANNER_DATABASE";
/// The lock table (`HEDGE_LOCK_TABLE`).
pub const ENV_LOCK_TABLE: &str = "HEDGE_LOCK_TABLE";
/// The member table (`HEDGE_MEMBER_TABLE`).
pub const ENV_MEMBER_TABLE: &str = "HEDGE_MEMBER_TABLE";
/// The schema table (`HEDGE_SCHEMA_TABLE`).
pub const ENV_SCHEMA_TABLE: &str = "HEDGE_SCHEMA_TABLE";
/// The log's key table (`HEDGE_LOG_KEY_TABLE`).
pub const ENV_LOG_KEY_TABLE: &str = "HEDGE_LOG_KEY_TABLE";
/// The log table (`HEDGE_LOG_TABLE`).
pub const ENV_LOG_TABLE: &str = "HEDGE_LOG_TABLE";
/// The semaphore table (`HEDGE_SEMAPHORE_TABLE`).
pub const ENV_SEMAPHORE_TABLE: &str = "HEDGE_SEMAPHORE_TABLE";
/// The permit table (`HEDGE_PERMIT_TABLE`).
pub const ENV_PERMIT_TABLE: &str = "HEDGE_PERMIT_TABLE";
/// The lease in milliseconds (`HEDGE_LEASE_MS`).
pub const ENV_LEASE_MS: &str = "HEDGE_LEASE_MS";
/// The renew interval in milliseconds (`HEDGE_RENEW_INTERVAL_MS`).
pub const ENV_RENEW_INTERVAL_MS: &str = "HEDGE_RENEW_INTERVAL_MS";
/// The candidates' poll interval in milliseconds (`HEDGE_POLL_INTERVAL_MS`).
pub const ENV_POLL_INTERVAL_MS: &str = "HEDGE_POLL_INTERVAL_MS";
/// The holder's safety margin in milliseconds (`HEDGE_SAFETY_MARGIN_MS`).
pub const ENV_SAFETY_MARGIN_MS: &str = "HEDGE_SAFETY_MARGIN_MS";
/// The member heartbeat interval in milliseconds (`HEDGE_MEMBER_HEARTBEAT_MS`).
pub const ENV_MEMBER_HEARTBEAT_MS: &str = "HEDGE_MEMBER_HEARTBEAT_MS";
/// How long a member row lives without a heartbeat, in milliseconds (`HEDGE_MEMBER_TTL_MS`).
pub const ENV_MEMBER_TTL_MS: &str = "HEDGE_MEMBER_TTL_MS";
/// The peer transport port (`HEDGE_PEER_PORT`).
pub const ENV_PEER_PORT: &str = "HEDGE_PEER_PORT";
/// The member id override (`HEDGE_MEMBER_ID`); by default the pod name.
pub const ENV_MEMBER_ID: &str = "HEDGE_MEMBER_ID";
/// The group secret (`HEDGE_GROUP_SECRET`), from the group's Secret.
pub const ENV_GROUP_SECRET: &str = "HEDGE_GROUP_SECRET";
/// The pod name, from the downward API.
pub const ENV_POD_NAME: &str = "POD_NAME";
/// The pod uid, from the downward API.
pub const ENV_POD_UID: &str = "POD_UID";
/// The pod IP, from the downward API.
pub const ENV_POD_IP: &str = "POD_IP";

/// The Cloud Spanner emulator (`host:port` of its gRPC endpoint) the members use instead of
/// Spanner, when the group names one (`spec.spanner.emulatorHost`). Optional: written only when
/// set. Unlike the process-wide `SPANNER_EMULATOR_HOST`, it points only hedge's store there.
pub const ENV_SPANNER_EMULATOR_HOST: &str = "HEDGE_SPANNER_EMULATOR_HOST";

/// The variables of the group's ConfigMap, exactly what [`Config::to_env`] writes (and
/// [`ENV_SPANNER_EMULATOR_HOST`] when an emulator is set).
pub const CONFIG_MAP_VARIABLES: &[&str] = &[
    ENV_GROUP,
    ENV_DATABASE,
    ENV_LOCK_TABLE,
    ENV_MEMBER_TABLE,
    ENV_SCHEMA_TABLE,
    ENV_LOG_KEY_TABLE,
    ENV_LOG_TABLE,
    ENV_SEMAPHORE_TABLE,
    ENV_PERMIT_TABLE,
    ENV_LEASE_MS,
    ENV_RENEW_INTERVAL_MS,
    ENV_POLL_INTERVAL_MS,
    ENV_SAFETY_MARGIN_MS,
    ENV_MEMBER_HEARTBEAT_MS,
    ENV_MEMBER_TTL_MS,
    ENV_PEER_PORT,
];

/// The default peer port.
pub const DEFAULT_PEER_PORT: u16 = 7946;

/// Errors in configuration: each message says what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A timing is zero.
    #[error("{name} must be greater than zero")]
    Zero {
        /// The setting.
        name: &'static str,
    },
    /// Two timings are in the wrong order.
    #[error("{smaller} ({smaller_value:?}) must be below {larger} ({larger_value:?})")]
    Order {
        /// The setting that must be smaller.
        smaller: &'static str,
        /// Its value.
        smaller_value: Duration,
        /// The setting that must be larger.
        larger: &'static str,
        /// Its value.
        larger_value: Duration,
    },
    /// A timing outside the range hedge supports.
    #[error("{name} ({value:?}) must be {bound} {limit:?}: {why}")]
    OutOfRange {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: Duration,
        /// "at least" or "at most".
        bound: &'static str,
        /// The limit.
        limit: Duration,
        /// Why the limit exists.
        why: &'static str,
    },
    /// A variable that is not a number.
    #[error("environment variable {name}={value:?} is not a valid {kind}")]
    NotANumber {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        kind: &'static str,
    },
    /// A required variable is missing.
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    /// An id or name that hedge cannot store.
    #[error("invalid {what} {value:?}: use 1 to 253 printable characters without whitespace")]
    InvalidName {
        /// Which name.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// A table name problem.
    #[error(transparent)]
    Tables(#[from] TableNamesError),
    /// A malformed database path.
    #[error(transparent)]
    Database(#[from] DatabasePathError),
}

/// The longest lease hedge accepts. Longer leases would leave a crashed leader's group leaderless
/// for over an hour, and deadlines computed from them could overflow a clock.
pub const MAX_LEASE: Duration = Duration::from_secs(3600);

/// The smallest safety margin hedge accepts.
///
/// The holder steps down a quarter of the margin before its local deadline (the *step-down
/// lead*), so that the term's cancellation and the `Lost` event are out before `is_leader()`
/// turns false by itself. Cancellation is cooperative and timers fire late on a loaded node: on
/// a 2-core machine with both cores saturated, a 10 ms tokio sleep woke 1.2 ms late at the
/// median, 13 ms at the 99th percentile and 77 ms at worst (the `timer_slack_ms` figure of
/// `hedge-bench election`, BENCHMARKS.md). A 150 ms margin gives a 37 ms lead, above the 99th
/// percentile, and leaves room for the worst case (lead + 77 ms < 150 ms); it also covers the
/// clock-rate difference between a member and Spanner (under 1 ms per 5 s lease at 200 ppm).
/// The default margin, 700 ms, gives a 175 ms lead.
pub const MIN_SAFETY_MARGIN: Duration = Duration::from_millis(150);

/// The timings of an election.
///
/// * `lease`: how long a grant or renewal holds the lock on the store's clock. A crashed
///   leader is replaced within about one lease (candidates retry when the lease they saw runs
///   out), and at most `lease + poll_interval`. At most [`MAX_LEASE`].
/// * `renew_interval`: how often the holder renews. Each renewal has until the local deadline
///   to succeed, and a failed one is retried sooner, so several can fail before leadership is
///   lost.
/// * `poll_interval`: how often a candidate checks a lock held by a live leader (with jitter).
/// * `safety_margin`: the holder's local deadline is `renew sent + lease − safety_margin`, on a
///   monotonic clock that also counts suspended time. It absorbs clock *rate* differences between
///   the holder and the store, store clock jumps up to the margin, and the time between the
///   step-down and the application seeing it. At least [`MIN_SAFETY_MARGIN`].
///
/// Defaults: lease 5 s, renew every 1 s, poll every 750 ms, margin 700 ms (10% + 200 ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectionTimings {
    /// The lease.
    pub lease: Duration,
    /// The renew interval, below `lease − safety_margin`.
    pub renew_interval: Duration,
    /// The candidates' poll interval.
    pub poll_interval: Duration,
    /// The safety margin, below the lease.
    pub safety_margin: Duration,
}

impl Default for ElectionTimings {
    fn default() -> Self {
        Self::from_lease(Duration::from_secs(5))
    }
}

impl ElectionTimings {
    /// Timings scaled from a lease the way the defaults are: renew every lease/5, poll every
    /// 3/20 of the lease, margin lease/10 + 200 ms (capped to lease/4 for short leases, so a
    /// lease under 600 ms gives a margin below [`MIN_SAFETY_MARGIN`], which `validate` refuses).
    pub fn from_lease(lease: Duration) -> Self {
        let margin = (lease / 10 + Duration::from_millis(200)).min(lease / 4);
        Self {
            lease,
            renew_interval: lease / 5,
            poll_interval: lease * 3 / 20,
            safety_margin: margin,
        }
    }

    /// Checks every rule; the error says which setting to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("lease", self.lease),
            ("renew interval", self.renew_interval),
            ("poll interval", self.poll_interval),
            ("safety margin", self.safety_margin),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Zero { name });
            }
        }
        if self.lease > MAX_LEASE {
            return Err(ConfigError::OutOfRange {
                name: "lease",
                value: self.lease,
                bound: "at most",
                limit: MAX_LEASE,
                why: "a crashed leader would leave the group leaderless for that long",
            });
        }
        if self.safety_margin < MIN_SAFETY_MARGIN {
            return Err(ConfigError::OutOfRange {
                name: "safety margin",
                value: self.safety_margin,
                bound: "at least",
                limit: MIN_SAFETY_MARGIN,
                why: "the holder steps down a quarter of the margin before its deadline, \
                      and that lead must exceed the scheduling delay of a loaded node",
            });
        }
        if self.safety_margin >= self.lease {
            return Err(ConfigError::Order {
                smaller: "safety margin",
                smaller_value: self.safety_margin,
                larger: "lease",
                larger_value: self.lease,
            });
        }
        if self.renew_interval >= self.lease {
            return Err(ConfigError::Order {
                smaller: "renew interval",
                smaller_value: self.renew_interval,
                larger: "lease",
                larger_value: self.lease,
            });
        }
        let holding = self.lease - self.safety_margin;
        if self.renew_interval >= holding {
            return Err(ConfigError::Order {
                smaller: "renew interval",
                smaller_value: self.renew_interval,
                larger: "lease minus safety margin",
                larger_value: holding,
            });
        }
        Ok(())
    }

    /// How long the holder may count on a renewal sent now.
    pub fn holding_time(&self) -> Duration {
        self.lease.saturating_sub(self.safety_margin)
    }

    /// How long before its local deadline the holder steps down when no renewal succeeded: a
    /// quarter of the safety margin (see [`MIN_SAFETY_MARGIN`]).
    pub fn step_down_lead(&self) -> Duration {
        self.safety_margin / 4
    }
}

/// The timings of membership: how often a member refreshes its row, and how long the row
/// lives without a refresh. Defaults: heartbeat every 2 s, TTL 10 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MembershipTimings {
    /// The heartbeat interval.
    pub heartbeat_interval: Duration,
    /// The row's time to live, above the heartbeat interval.
    pub ttl: Duration,
}

impl Default for MembershipTimings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(2),
            ttl: Duration::from_secs(10),
        }
    }
}

impl MembershipTimings {
    /// Checks every rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError::Zero {
                name: "member heartbeat interval",
            });
        }
        if self.heartbeat_interval >= self.ttl {
            return Err(ConfigError::Order {
                smaller: "member heartbeat interval",
                smaller_value: self.heartbeat_interval,
                larger: "member TTL",
                larger_value: self.ttl,
            });
        }
        if self.ttl > MAX_LEASE {
            return Err(ConfigError::OutOfRange {
                name: "member TTL",
                value: self.ttl,
                bound: "at most",
                limit: MAX_LEASE,
                why: "a crashed member would stay in every view for that long",
            });
        }
        Ok(())
    }
}

/// Everything a member needs to join its group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The group's name.
    pub group: String,
    /// This member's id: unique in the group while it lives.
    pub member_id: String,
    /// The Spanner database, or `None` for the embedded in-memory store.
    pub database: Option<DatabasePath>,
    /// The table names.
    pub tables: TableNames,
    /// Election timings.
    pub election: ElectionTimings,
    /// Membership timings.
    pub membership: MembershipTimings,
    /// The peer transport port.
    pub peer_port: u16,
    /// This member's peer address (`POD_IP:port`), when known.
    pub address: Option<String>,
    /// The group secret that authenticates peer traffic.
    pub group_secret: Option<String>,
    /// The Cloud Spanner emulator (`host:port`) to connect to instead of Spanner, when set
    /// ([`ENV_SPANNER_EMULATOR_HOST`]); the builder's own Spanner options win over it.
    pub spanner_emulator_host: Option<String>,
}

impl Config {
    /// A configuration for `group` with every default and a generated member id.
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            member_id: generated_member_id(),
            database: None,
            tables: TableNames::default(),
            election: ElectionTimings::default(),
            membership: MembershipTimings::default(),
            peer_port: DEFAULT_PEER_PORT,
            address: None,
            group_secret: None,
            spanner_emulator_host: None,
        }
    }

    /// Reads the configuration from the process environment (see [`Config::from_vars`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the configuration from variables: the `HEDGE_*` variables of the group's ConfigMap,
    /// `HEDGE_GROUP_SECRET` from its Secret, and `POD_NAME`, `POD_IP` from the downward API.
    /// `HEDGE_GROUP` is required; everything else has a default.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let group = get(ENV_GROUP).ok_or(ConfigError::Missing(ENV_GROUP))?;
        let mut config = Self::new(group);
        if let Some(db) = get(ENV_DATABASE).filter(|s| !s.is_empty()) {
            config.database = Some(db.parse()?);
        }
        if let Some(id) = get(ENV_MEMBER_ID).or_else(|| get(ENV_POD_NAME)) {
            config.member_id = id;
        }
        let tables = &mut config.tables;
        for (var, slot) in [
            (ENV_LOCK_TABLE, &mut tables.locks),
            (ENV_MEMBER_TABLE, &mut tables.members),
            (ENV_SCHEMA_TABLE, &mut tables.schema),
            (ENV_LOG_KEY_TABLE, &mut tables.log_keys),
            (ENV_LOG_TABLE, &mut tables.log),
            (ENV_SEMAPHORE_TABLE, &mut tables.semaphores),
            (ENV_PERMIT_TABLE, &mut tables.permits),
        ] {
            if let Some(v) = get(var) {
                *slot = v;
            }
        }
        let ms = |name: &'static str, default: Duration| -> Result<Duration, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| ConfigError::NotANumber {
                        name,
                        value: v,
                        kind: "number of milliseconds",
                    }),
            }
        };
        let e = config.election;
        config.election = ElectionTimings {
            lease: ms(ENV_LEASE_MS, e.lease)?,
            renew_interval: ms(ENV_RENEW_INTERVAL_MS, e.renew_interval)?,
            poll_interval: ms(ENV_POLL_INTERVAL_MS, e.poll_interval)?,
            safety_margin: ms(ENV_SAFETY_MARGIN_MS, e.safety_margin)?,
        };
        let m = config.membership;
        config.membership = MembershipTimings {
            heartbeat_interval: ms(ENV_MEMBER_HEARTBEAT_MS, m.heartbeat_interval)?,
            ttl: ms(ENV_MEMBER_TTL_MS, m.ttl)?,
        };
        if let Some(port) = get(ENV_PEER_PORT) {
            config.peer_port = port.trim().parse().map_err(|_| ConfigError::NotANumber {
                name: ENV_PEER_PORT,
                value: port,
                kind: "port number",
            })?;
        }
        config.address = get(ENV_POD_IP)
            .filter(|ip| !ip.is_empty())
            .map(|ip| socket_address(&ip, config.peer_port));
        config.group_secret = get(ENV_GROUP_SECRET).filter(|s| !s.is_empty());
        config.spanner_emulator_host = get(ENV_SPANNER_EMULATOR_HOST)
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty());
        config.validate()?;
        Ok(config)
    }

    /// The ConfigMap variables for this configuration: exactly [`CONFIG_MAP_VARIABLES`], and
    /// `HEDGE_SPANNER_DATABASE` only when a database is set; [`ENV_SPANNER_EMULATOR_HOST`] too
    /// when an emulator is.
    pub fn to_env(&self) -> BTreeMap<String, String> {
        let ms = |d: Duration| d.as_millis().to_string();
        let mut vars = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            vars.insert(k.to_owned(), v);
        };
        put(ENV_GROUP, self.group.clone());
        if let Some(db) = &self.database {
            put(ENV_DATABASE, db.to_string());
        }
        put(ENV_LOCK_TABLE, self.tables.locks.clone());
        put(ENV_MEMBER_TABLE, self.tables.members.clone());
        put(ENV_SCHEMA_TABLE, self.tables.schema.clone());
        put(ENV_LOG_KEY_TABLE, self.tables.log_keys.clone());
        put(ENV_LOG_TABLE, self.tables.log.clone());
        put(ENV_SEMAPHORE_TABLE, self.tables.semaphores.clone());
        put(ENV_PERMIT_TABLE, self.tables.permits.clone());
        put(ENV_LEASE_MS, ms(self.election.lease));
        put(ENV_RENEW_INTERVAL_MS, ms(self.election.renew_interval));
        put(ENV_POLL_INTERVAL_MS, ms(self.election.poll_interval));
        put(ENV_SAFETY_MARGIN_MS, ms(self.election.safety_margin));
        put(
            ENV_MEMBER_HEARTBEAT_MS,
            ms(self.membership.heartbeat_interval),
        );
        put(ENV_MEMBER_TTL_MS, ms(self.membership.ttl));
        put(ENV_PEER_PORT, self.peer_port.to_string());
        if let Some(host) = &self.spanner_emulator_host {
            put(ENV_SPANNER_EMULATOR_HOST, host.clone());
        }
        vars
    }

    /// Checks names, tables and timings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_name("group name", &self.group)?;
        validate_name("member id", &self.member_id)?;
        self.tables.validate()?;
        self.election.validate()?;
        self.membership.validate()
    }
}

/// Checks an id or name stored in a `STRING(253)` key column.
pub fn validate_name(what: &'static str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.chars().all(|c| !c.is_whitespace() && !c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidName {
            what,
            value: value.to_owned(),
        })
    }
}

/// `ip:port`, with brackets around IPv6 addresses.
pub fn socket_address(ip: &str, port: u16) -> String {
    if ip.contains(':') && !ip.starts_with('[') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// A member id for processes outside Kubernetes: `member-` and 8 random hex digits.
pub fn generated_member_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("member-{}", &id[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_emulator_host_round_trips_and_is_written_only_when_set() {
        let mut config = Config::new("orders");
        config.member_id = "pod-a".into();
        assert!(!config.to_env().contains_key(ENV_SPANNER_EMULATOR_HOST));
        config.spanner_emulator_host = Some("spanner-emulator.test.svc:9010".into());
        let env = config.to_env();
        assert_eq!(
            env[ENV_SPANNER_EMULATOR_HOST],
            "spanner-emulator.test.svc:9010"
        );
        let back = Config::from_vars(|k| {
            env.get(k)
                .cloned()
                .or_else(|| (k == ENV_POD_NAME).then(|| "pod-a".into()))
        })
        .unwrap();
        assert_eq!(back, config);
        let blank =
            Config::from_vars(vars(&[(ENV_GROUP, "g"), (ENV_SPANNER_EMULATOR_HOST, " ")])).unwrap();
        assert_eq!(blank.spanner_emulator_host, None);
    }

    #[test]
    fn to_env_round_trips_through_from_vars() {
        let mut config = Config::new("orders");
        config.database = Some("projects/p/instances/i/databases/d".parse().unwrap());
        config.election = ElectionTimings::from_lease(Duration::from_secs(3));
        config.member_id = "pod-a".into();
        config.tables.log = "orders_log".into();
        config.tables.permits = "orders_permits".into();
        let mut env = config.to_env();
        let keys: Vec<&str> = env.keys().map(String::as_str).collect();
        let mut expected = CONFIG_MAP_VARIABLES.to_vec();
        expected.sort_unstable();
        assert_eq!(keys, expected);
        env.insert(ENV_POD_NAME.into(), "pod-a".into());
        let back = Config::from_vars(|k| env.get(k).cloned()).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn pod_identity_comes_from_the_downward_api() {
        let c = Config::from_vars(vars(&[
            (ENV_GROUP, "g"),
            (ENV_POD_NAME, "web-7d9f-x2"),
            (ENV_POD_IP, "fd00::1"),
            (ENV_PEER_PORT, "9000"),
        ]))
        .unwrap();
        assert_eq!(c.member_id, "web-7d9f-x2");
        assert_eq!(c.address.as_deref(), Some("[fd00::1]:9000"));
    }

    #[test]
    fn invalid_timings_say_what_to_fix() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[(ENV_LEASE_MS, "0")], "lease must be greater than zero"),
            (
                &[(ENV_RENEW_INTERVAL_MS, "5000")],
                "renew interval (5s) must be below lease (5s)",
            ),
            (
                &[(ENV_SAFETY_MARGIN_MS, "6000")],
                "safety margin (6s) must be below lease (5s)",
            ),
            (
                &[(ENV_RENEW_INTERVAL_MS, "4500")],
                "must be below lease minus safety margin",
            ),
            (
                &[(ENV_SAFETY_MARGIN_MS, "20")],
                "safety margin (20ms) must be at least 150ms",
            ),
            (
                &[(ENV_LEASE_MS, "7200000")],
                "lease (7200s) must be at most 3600s",
            ),
            (
                &[(ENV_LEASE_MS, "five")],
                "HEDGE_LEASE_MS=\"five\" is not a valid number",
            ),
        ];
        for (extra, message) in cases {
            let mut all = vec![(ENV_GROUP, "g")];
            all.extend_from_slice(extra);
            let err = Config::from_vars(vars(&all)).unwrap_err().to_string();
            assert!(err.contains(message), "{err:?} should contain {message:?}");
        }
        let missing = Config::from_vars(vars(&[])).unwrap_err().to_string();
        assert_eq!(missing, "environment variable HEDGE_GROUP is not set");
    }
}
