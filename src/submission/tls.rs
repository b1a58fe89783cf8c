//! TLS for the submission endpoint from a certificate and key on disk (a
//! mounted Secret, e.g. one cert-manager renews): the files are read again
//! when they change, so a renewed certificate is served without a restart.
//! Handshakes run apart from the accept loop: a client that never finishes its
//! handshake holds up nobody.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use mailroom_core::sync::unpoisoned;

/// A handshake must finish within this.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// The files are looked at again at most this often.
const RECHECK: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}; mount the Secret with tls.crt and tls.key")]
    Read { path: String, message: String },
    #[error("{path} holds no usable {what}")]
    Pem { path: String, what: &'static str },
    #[error("the certificate and key in {cert} / {key} do not form a server identity: {message}")]
    Config {
        cert: String,
        key: String,
        message: String,
    },
}

/// Where the certificate chain and the private key are (PEM).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

impl TlsFiles {
    /// Reads both files into a server configuration (HTTP/1.1 only).
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let cert_pem = read(&self.cert)?;
        let key_pem = read(&self.key)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .filter_map(Result::ok)
            .collect();
        if chain.is_empty() {
            return Err(TlsError::Pem {
                path: self.cert.display().to_string(),
                what: "certificate",
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Pem {
            path: self.key.display().to_string(),
            what: "private key",
        })?;
        let config_error = |message: String| TlsError::Config {
            cert: self.cert.display().to_string(),
            key: self.key.display().to_string(),
            message,
        };
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| config_error(e.to_string()))?
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .map_err(|e| config_error(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The configuration in use, and the file times it was read at.
struct Current {
    config: Arc<ServerConfig>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: std::time::Instant,
}

/// Serves TLS: hands finished handshakes to axum.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Starts accepting on `tcp` with the certificate in `files` (read now:
    /// a bad certificate fails at start-up, not at the first client).
    pub fn start(tcp: TcpListener, files: TlsFiles) -> Result<Self, TlsError> {
        let local = tcp.local_addr().map_err(|e| TlsError::Read {
            path: "the listener".into(),
            message: e.to_string(),
        })?;
        let current = Arc::new(Mutex::new(Current {
            config: files.load()?,
            stamps: (modified(&files.cert), modified(&files.key)),
            checked: std::time::Instant::now(),
        }));
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = tcp.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if tx.is_closed() {
                    return;
                }
                let config = config_now(&current, &files);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await
                    {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        Ok(Self { local, ready })
    }
}

/// The configuration to use now: read again when the files changed.
fn config_now(current: &Mutex<Current>, files: &TlsFiles) -> Arc<ServerConfig> {
    let mut c = unpoisoned(current);
    if c.checked.elapsed() >= RECHECK {
        c.checked = std::time::Instant::now();
        let stamps = (modified(&files.cert), modified(&files.key));
        if stamps != c.stamps {
            match files.load() {
                Ok(config) => {
                    tracing::info!(cert = %files.cert.display(), "submission endpoint: serving the renewed certificate");
                    c.config = config;
                    c.stamps = stamps;
                }
                Err(e) => {
                    tracing::warn!("submission endpoint: keeping the previous certificate: {e}")
                }
            }
        }
    }
    c.config.clone()
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Some(conn) = self.ready.recv().await {
                return conn;
            }
            // The accept task ended: nothing will come; wait to be shut down.
            std::future::pending::<()>().await;
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
