//! Optional TLS for the peer transport: rustls on aws-lc-rs, certificates and keys from PEM
//! files (the operator mounts them from a Secret), ALPN `h2`.
//!
//! Every member presents the configured certificate chain and verifies its peers' certificates
//! against the configured CA (or, without one, against the **last** certificate of its own chain
//! file: a group whose members share one CA and put it at the end of their chain) under one
//! server name
//! ([`TlsConfig::server_name`], default [`DEFAULT_SERVER_NAME`]), since pod IPs are not in
//! certificates. The group secret still authenticates each request; TLS adds confidentiality
//! and integrity of the bodies.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::PeerError;

/// The server name members verify in each other's certificates by default.
pub const DEFAULT_SERVER_NAME: &str = "hedge-peer";

/// Where the TLS material is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// The PEM certificate chain this member presents.
    pub cert: PathBuf,
    /// The PEM private key of the certificate.
    pub key: PathBuf,
    /// The PEM CA bundle that signs the members' certificates; `None` trusts the last
    /// certificate of the `cert` chain (its CA).
    pub ca: Option<PathBuf>,
    /// The name every member's certificate must carry.
    pub server_name: String,
}

impl TlsConfig {
    /// TLS with this certificate chain (leaf first, its CA last) and key, trusting the chain's
    /// last certificate.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            ca: None,
            server_name: DEFAULT_SERVER_NAME.to_owned(),
        }
    }

    /// Loads the files into a server and a client side.
    pub fn load(&self) -> Result<(TlsServer, TlsClient), PeerError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| PeerError::Tls(format!("{what}: {e}"));
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| bad(&format!("cannot read {}", self.cert.display()), &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(&format!("bad certificate in {}", self.cert.display()), &e))?;
        if certs.is_empty() {
            return Err(PeerError::Tls(format!(
                "no certificate in {}",
                self.cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| bad(&format!("cannot read the key {}", self.key.display()), &e))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS versions", &e))?
            .with_no_client_auth()
            .with_single_cert(certs.clone(), key)
            .map_err(|e| bad("certificate and key", &e))?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        let trusted: Vec<CertificateDer<'static>> = match &self.ca {
            Some(ca) => CertificateDer::pem_file_iter(ca)
                .map_err(|e| bad(&format!("cannot read {}", ca.display()), &e))?
                .collect::<Result<_, _>>()
                .map_err(|e| bad(&format!("bad certificate in {}", ca.display()), &e))?,
            None => certs.last().cloned().into_iter().collect(),
        };
        for cert in trusted {
            roots
                .add(cert)
                .map_err(|e| bad("trusted certificate", &e))?;
        }
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS versions", &e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec()];
        let name = ServerName::try_from(self.server_name.clone())
            .map_err(|e| bad(&format!("server name {:?}", self.server_name), &e))?;
        Ok((
            TlsServer(TlsAcceptor::from(Arc::new(server))),
            TlsClient {
                connector: TlsConnector::from(Arc::new(client)),
                name,
            },
        ))
    }
}

/// The accepting side of TLS.
#[derive(Clone)]
pub struct TlsServer(TlsAcceptor);

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsServer")
    }
}

impl TlsServer {
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
    ) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        self.0.accept(stream).await
    }
}

/// The connecting side of TLS.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .finish()
    }
}

impl TlsClient {
    pub(crate) async fn connect(
        &self,
        stream: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.connector.connect(self.name.clone(), stream).await
    }
}

/// A connection with or without TLS.
pub(crate) enum MaybeTls {
    Plain(TcpStream),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Server(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Client(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Server(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Client(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Server(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Client(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Server(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Client(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Server(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Client(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Server(s) => s.is_write_vectored(),
            MaybeTls::Client(s) => s.is_write_vectored(),
        }
    }
}
