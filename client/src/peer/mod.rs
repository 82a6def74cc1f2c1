//! The peer transport: how the members of a group talk to each other.
//!
//! HTTP/2 (hyper) on one port per member, one pooled and multiplexed connection per peer,
//! versioned routes (`/hedge/v1/...`), every request authenticated with the group secret
//! ([`auth`]), every call bounded by a deadline that travels with it, bodies limited in size,
//! typed errors ([`wire::ErrorBody`]), optional TLS ([`tls`]), graceful shutdown.
//!
//! * [`PeerServer`] serves a [`Router`] of routes; the library's own typed routes implement
//!   [`wire::Rpc`] and register with [`Router::rpc`]; callers use [`PeerClient::call`].
//! * [`PeerOptions`] says where to listen, what address to advertise, the secret, TLS and limits;
//!   [`PeerOptions::from_vars`] reads them from the environment the operator sets up.

pub mod auth;
pub mod body;
pub mod client;
pub mod server;
pub mod tls;
pub mod wire;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;

pub use auth::{AuthError, Authenticator, GroupSecret, SecretError};
pub use body::ResponseBody;
pub use client::PeerClient;
pub use server::{PeerServer, RequestContext, RouteHandler, RouteKind, Router, ServerLimits};
pub use tls::{TlsClient, TlsConfig, TlsServer};
pub use wire::{ErrorBody, ErrorKind, LeaderHint, Rpc};

/// The peer port variable (`HEDGE_PEER_PORT`).
pub const ENV_PEER_PORT: &str = "HEDGE_PEER_PORT";
/// The advertised address override (`HEDGE_PEER_ADVERTISE`): `ip:port`, or `:port` for this
/// host's address.
pub const ENV_PEER_ADVERTISE: &str = "HEDGE_PEER_ADVERTISE";
/// The pod IP, from the downward API (`POD_IP`).
pub const ENV_POD_IP: &str = "POD_IP";
/// The PEM certificate for peer TLS (`HEDGE_PEER_TLS_CERT`); TLS is on when it is set.
pub const ENV_TLS_CERT: &str = "HEDGE_PEER_TLS_CERT";
/// The PEM key for peer TLS (`HEDGE_PEER_TLS_KEY`).
pub const ENV_TLS_KEY: &str = "HEDGE_PEER_TLS_KEY";
/// The PEM CA bundle for peer TLS (`HEDGE_PEER_TLS_CA`); by default the certificate itself.
pub const ENV_TLS_CA: &str = "HEDGE_PEER_TLS_CA";
/// The name in the members' certificates (`HEDGE_PEER_TLS_SERVER_NAME`).
pub const ENV_TLS_SERVER_NAME: &str = "HEDGE_PEER_TLS_SERVER_NAME";
/// The body size limit in bytes (`HEDGE_PEER_MAX_BODY_BYTES`).
pub const ENV_MAX_BODY_BYTES: &str = "HEDGE_PEER_MAX_BODY_BYTES";

/// Errors of the peer transport.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The server could not listen.
    #[error("cannot listen for peers on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration is unusable.
    #[error("peer TLS: {0}")]
    Tls(String),
    /// The transport configuration is unusable.
    #[error("peer transport: {0}")]
    Config(String),
    /// The secret is missing or unusable.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// No connection to the peer could be made; the request was not sent.
    #[error("cannot connect to peer {peer}: {message}")]
    Connect {
        /// The peer's address.
        peer: String,
        /// What failed.
        message: String,
    },
    /// The request was not sent (the connection closed first, or the peer refused the stream
    /// unprocessed).
    #[error("the request to peer {peer} was not sent: {message}")]
    NotSent {
        /// The peer's address.
        peer: String,
        /// What failed.
        message: String,
    },
    /// The peer answered with an error.
    #[error("peer {peer} answered {}: {}", error.kind, error.message)]
    Remote {
        /// The peer's address.
        peer: String,
        /// The typed error.
        error: ErrorBody,
    },
    /// The deadline passed. With `sent`, the request may have been handled.
    #[error("peer {peer} did not answer before the deadline{}", if *sent { " (the request was sent: its outcome is unknown)" } else { " (nothing was sent)" })]
    Timeout {
        /// The peer's address.
        peer: String,
        /// Whether the request had left.
        sent: bool,
    },
    /// The connection failed after the request left: its outcome is unknown.
    #[error(
        "the call to peer {peer} failed after the request was sent (outcome unknown): {message}"
    )]
    Failed {
        /// The peer's address.
        peer: String,
        /// What failed.
        message: String,
    },
}

impl PeerError {
    /// Whether a handler may have run for the request. `false` means sending it again (here or
    /// elsewhere) cannot run it twice.
    pub fn handler_may_have_run(&self) -> bool {
        match self {
            PeerError::Bind { .. }
            | PeerError::Tls(_)
            | PeerError::Config(_)
            | PeerError::Secret(_)
            | PeerError::Connect { .. }
            | PeerError::NotSent { .. } => false,
            PeerError::Timeout { sent, .. } => *sent,
            PeerError::Remote { error, .. } => error.kind.handler_may_have_run(),
            PeerError::Failed { .. } => true,
        }
    }

    /// The remote error kind, when the peer answered.
    pub fn remote_kind(&self) -> Option<ErrorKind> {
        match self {
            PeerError::Remote { error, .. } => Some(error.kind),
            _ => None,
        }
    }
}

/// Where and how a member talks to its peers.
#[derive(Clone, Debug)]
pub struct PeerOptions {
    /// The address to listen on. Default `0.0.0.0:7946`.
    pub listen: SocketAddr,
    /// The address other members use, `ip:port` or `:port` (this host's address). By default
    /// the listening address, with `POD_IP` (or this host's address) when it listens on all
    /// interfaces.
    pub advertise: Option<String>,
    /// The pod's IP (`POD_IP`), when known.
    pub pod_ip: Option<IpAddr>,
    /// The group secret.
    pub secret: GroupSecret,
    /// TLS, when configured.
    pub tls: Option<TlsConfig>,
    /// Sizes and time bounds.
    pub limits: ServerLimits,
}

impl PeerOptions {
    /// Listens on all interfaces on the default port (7946), with `secret`.
    pub fn new(secret: GroupSecret) -> Self {
        Self {
            listen: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                crate::config::DEFAULT_PEER_PORT,
            ),
            advertise: None,
            pod_ip: None,
            secret,
            tls: None,
            limits: ServerLimits::default(),
        }
    }

    /// Listens on `addr` (port 0 picks a free port; the advertised address follows it).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Advertises `address` (`ip:port`, or `:port` for this host's address) to other members.
    pub fn advertise(mut self, address: impl Into<String>) -> Self {
        self.advertise = Some(address.into());
        self
    }

    /// Uses TLS.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Uses these limits.
    pub fn limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Reads the options from variables: the secret ([`GroupSecret::from_vars`]),
    /// [`ENV_PEER_PORT`], [`ENV_PEER_ADVERTISE`], [`ENV_POD_IP`], the TLS files and
    /// [`ENV_MAX_BODY_BYTES`].
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, PeerError> {
        let mut options = Self::new(GroupSecret::from_vars(&get)?);
        if let Some(port) = get(ENV_PEER_PORT) {
            let port: u16 = port.trim().parse().map_err(|_| {
                PeerError::Config(format!("{ENV_PEER_PORT}={port:?} is not a port number"))
            })?;
            options.listen.set_port(port);
        }
        options.advertise = get(ENV_PEER_ADVERTISE).filter(|a| !a.is_empty());
        if let Some(ip) = get(ENV_POD_IP).filter(|a| !a.is_empty()) {
            options.pod_ip = Some(ip.trim().parse().map_err(|_| {
                PeerError::Config(format!("{ENV_POD_IP}={ip:?} is not an IP address"))
            })?);
        }
        if let Some(cert) = get(ENV_TLS_CERT).filter(|c| !c.is_empty()) {
            let key = get(ENV_TLS_KEY).filter(|k| !k.is_empty()).ok_or_else(|| {
                PeerError::Config(format!("{ENV_TLS_CERT} is set but {ENV_TLS_KEY} is not"))
            })?;
            let mut tls = TlsConfig::new(PathBuf::from(cert), PathBuf::from(key));
            tls.ca = get(ENV_TLS_CA).filter(|c| !c.is_empty()).map(PathBuf::from);
            if let Some(name) = get(ENV_TLS_SERVER_NAME).filter(|n| !n.is_empty()) {
                tls.server_name = name;
            }
            options.tls = Some(tls);
        }
        if let Some(limit) = get(ENV_MAX_BODY_BYTES) {
            options.limits.max_body_bytes = limit.trim().parse().map_err(|_| {
                PeerError::Config(format!(
                    "{ENV_MAX_BODY_BYTES}={limit:?} is not a number of bytes"
                ))
            })?;
        }
        Ok(options)
    }

    /// The address other members should use, given the address the server is bound to.
    pub fn advertised_address(&self, bound: SocketAddr) -> Result<String, PeerError> {
        match self.advertise.as_deref() {
            Some(a) if a.starts_with(':') => {
                let port: u16 = a[1..].parse().map_err(|_| {
                    PeerError::Config(format!("advertised address {a:?}: bad port"))
                })?;
                Ok(SocketAddr::new(self.pod_ip.unwrap_or_else(local_ip), port).to_string())
            }
            // An address with port 0 (`POD_IP` with `HEDGE_PEER_PORT=0`) names the port the
            // server picked: nobody can reach port 0.
            Some(a) => match a.parse::<SocketAddr>() {
                Ok(mut addr) if addr.port() == 0 => {
                    addr.set_port(bound.port());
                    Ok(addr.to_string())
                }
                _ => Ok(a.to_owned()),
            },
            None if !bound.ip().is_unspecified() => Ok(bound.to_string()),
            None => {
                Ok(SocketAddr::new(self.pod_ip.unwrap_or_else(local_ip), bound.port()).to_string())
            }
        }
    }
}

/// This host's address on its default route, found without sending anything (a UDP socket's
/// `connect` only picks the route); loopback when there is no route.
pub fn local_ip() -> IpAddr {
    let probe = || -> std::io::Result<IpAddr> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        socket.connect((Ipv4Addr::new(10, 254, 254, 254), 9))?;
        Ok(socket.local_addr()?.ip())
    };
    match probe() {
        Ok(ip) if !ip.is_unspecified() => ip,
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_resolve_as_documented() {
        let options = PeerOptions::new(GroupSecret::random());
        let bound: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(options.advertised_address(bound).unwrap(), "127.0.0.1:4000");
        let any: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        let mut with_pod = options.clone();
        with_pod.pod_ip = Some("10.1.2.3".parse().unwrap());
        assert_eq!(with_pod.advertised_address(any).unwrap(), "10.1.2.3:4000");
        assert_eq!(
            with_pod
                .clone()
                .advertise(":5000")
                .advertised_address(any)
                .unwrap(),
            "10.1.2.3:5000"
        );
        assert_eq!(
            options
                .clone()
                .advertise("h:1")
                .advertised_address(any)
                .unwrap(),
            "h:1"
        );
        // `POD_IP` with port 0: the port the server picked, never port 0.
        assert_eq!(
            options
                .clone()
                .advertise("10.1.2.3:0")
                .advertised_address(any)
                .unwrap(),
            "10.1.2.3:4000"
        );
        assert!(options.advertise(":x").advertised_address(any).is_err());
    }

    #[test]
    fn options_come_from_the_environment() {
        let vars = |name: &str| match name {
            "HEDGE_GROUP_SECRET" => Some("0123456789abcdef0123".to_owned()),
            "HEDGE_PEER_PORT" => Some("7000".to_owned()),
            "POD_IP" => Some("10.0.0.9".to_owned()),
            _ => None,
        };
        let options = PeerOptions::from_vars(vars).unwrap();
        assert_eq!(options.listen.port(), 7000);
        assert_eq!(
            options.advertised_address(options.listen).unwrap(),
            "10.0.0.9:7000"
        );
        assert!(options.tls.is_none());
        assert!(matches!(
            PeerOptions::from_vars(|n| (n == "HEDGE_PEER_TLS_CERT")
                .then(|| "c".to_owned())
                .or_else(|| vars(n))),
            Err(PeerError::Config(_))
        ));
    }
}
