//! Reaching a mail server: DNS, TCP, TLS (implicit or after STARTTLS), with
//! timeouts, and the staged record of it that the connection test reports.
//! Protocol clients (IMAP, POP3, SMTP) build on this; nothing here knows a
//! protocol or Kubernetes.

pub mod limits;
pub(crate) mod proxy;
pub(crate) mod stream;
pub(crate) mod tls;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::BufReader;
use tokio::net::TcpStream;

use crate::vocab::{ConnectionStage, StageResult};
pub use proxy::ProxySettings;
pub use stream::MailStream;
pub use tls::{TlsOptions, client_config, server_name};

/// Why a connection test ended as it did: the `ConnectionVerified` condition's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Connected,
    AuthenticationFailed,
    TlsHandshakeFailed,
    StartTlsUnavailable,
    ConnectionRefused,
    Timeout,
    DnsFailed,
    ProxyFailed,
    MailboxNotFound,
    SecretNotFound,
    ProtocolError,
    /// The spec cannot be used as it is: the message names the field.
    InvalidConfig,
    /// No ticket sink is configured, so nothing may be fetched.
    NoSink,
    /// The ticket sink named in the spec could not be opened.
    SinkSetupFailed,
    /// The fetch cursor could not be read or saved.
    CursorStoreFailed,
    /// Every session the account allows is in use by other resources.
    SessionLimit,
    /// The server turned the sign-in away for now (too many connections,
    /// busy): retried after a longer wait.
    Throttled,
}

impl Reason {
    /// The CamelCase reason written into conditions.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "Connected",
            Self::AuthenticationFailed => "AuthenticationFailed",
            Self::TlsHandshakeFailed => "TLSHandshakeFailed",
            Self::StartTlsUnavailable => "StartTLSUnavailable",
            Self::ConnectionRefused => "ConnectionRefused",
            Self::Timeout => "Timeout",
            Self::DnsFailed => "DNSFailed",
            Self::ProxyFailed => "ProxyFailed",
            Self::MailboxNotFound => "MailboxNotFound",
            Self::SecretNotFound => "SecretNotFound",
            Self::ProtocolError => "ProtocolError",
            Self::InvalidConfig => "InvalidConfig",
            Self::NoSink => "NoSink",
            Self::SinkSetupFailed => "SinkSetupFailed",
            Self::CursorStoreFailed => "CursorStoreFailed",
            Self::SessionLimit => "SessionLimit",
            Self::Throttled => "Throttled",
        }
    }

    /// Failures that retrying cannot fix: only a change of spec, Secret or server
    /// setting can. They make the resource `Stalled`.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            Self::AuthenticationFailed
                | Self::StartTlsUnavailable
                | Self::TlsHandshakeFailed
                | Self::MailboxNotFound
                | Self::SecretNotFound
                | Self::InvalidConfig
                | Self::NoSink
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step that failed, with a message that says what to do. Never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
}

impl Failure {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// The leaf certificate a server presented.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    pub subject: String,
    pub issuer: String,
    pub not_after: SystemTime,
}

/// Connect and read/write timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub io: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            io: Duration::from_secs(60),
        }
    }
}

/// The outcome of a staged connection test (the Test Connection button).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionReport {
    pub reason: Reason,
    pub message: String,
    pub tested_at: SystemTime,
    pub latency: Duration,
    pub stage_reached: ConnectionStage,
    pub stages: Vec<StageResult>,
    pub capabilities: Vec<String>,
    pub certificate: Option<CertificateInfo>,
}

/// Records each stage of a connection as it happens. The workers connect through
/// the same code, so the test and the real connection never disagree.
#[derive(Debug)]
pub struct Probe {
    started: Instant,
    tested_at: SystemTime,
    stages: Vec<StageResult>,
    pub capabilities: Vec<String>,
    pub certificate: Option<CertificateInfo>,
}

impl Default for Probe {
    fn default() -> Self {
        Self::new()
    }
}

impl Probe {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            tested_at: SystemTime::now(),
            stages: Vec::new(),
            capabilities: Vec::new(),
            certificate: None,
        }
    }

    /// Runs one stage and records its duration and outcome.
    pub(crate) async fn stage<T>(
        &mut self,
        stage: ConnectionStage,
        work: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        let begun = Instant::now();
        let result = work.await;
        self.stages.push(StageResult {
            stage,
            ok: result.is_ok(),
            latency_ms: millis(begun.elapsed()),
            detail: result.as_ref().err().map(|f| f.message.clone()),
        });
        result
    }

    /// Closes the record: `Connected` when `outcome` is Ok.
    pub(crate) fn finish(self, outcome: Result<(), Failure>) -> ConnectionReport {
        let (reason, message, stage_reached) = match outcome {
            Ok(()) => (
                Reason::Connected,
                "every stage passed".to_owned(),
                ConnectionStage::Done,
            ),
            Err(f) => (
                f.reason,
                f.message,
                self.stages
                    .last()
                    .map(|s| s.stage)
                    .unwrap_or(ConnectionStage::Dns),
            ),
        };
        ConnectionReport {
            reason,
            message,
            tested_at: self.tested_at,
            latency: self.started.elapsed(),
            stage_reached,
            stages: self.stages,
            capabilities: self.capabilities,
            certificate: self.certificate,
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Runs `work` within `limit`, turning the deadline into a `Timeout` failure.
pub(crate) async fn within<T>(
    limit: Duration,
    what: &str,
    work: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(Failure::new(
            Reason::Timeout,
            format!("no answer within {limit:?} while {what}; check the server, port and firewall"),
        ))
    })
}

/// Resolves the server's name.
pub(crate) async fn resolve(
    host: &str,
    port: u16,
    timeouts: Timeouts,
) -> Result<Vec<SocketAddr>, Failure> {
    within(timeouts.connect, &format!("resolving {host}"), async {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| {
                Failure::new(
                    Reason::DnsFailed,
                    format!("cannot resolve {host}: {e}; check spec.server and the cluster's DNS"),
                )
            })?
            .collect();
        if addrs.is_empty() {
            return Err(Failure::new(
                Reason::DnsFailed,
                format!("{host} has no address; check spec.server"),
            ));
        }
        Ok(addrs)
    })
    .await
}

/// Opens a TCP connection to the first address that answers.
pub(crate) async fn connect_tcp(
    addrs: &[SocketAddr],
    timeouts: Timeouts,
) -> Result<TcpStream, Failure> {
    let mut last = None;
    for addr in addrs {
        let attempt = within(timeouts.connect, &format!("connecting to {addr}"), async {
            TcpStream::connect(addr).await.map_err(|e| {
                let reason = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    Reason::ConnectionRefused
                } else {
                    Reason::ProtocolError
                };
                Failure::new(
                    reason,
                    format!("cannot connect to {addr}: {e}; check spec.server, spec.port and securityType"),
                )
            })
        })
        .await;
        match attempt {
            Ok(stream) => {
                // Small commands and replies: send them without delay.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(f) => last = Some(f),
        }
    }
    Err(last.unwrap_or_else(|| Failure::new(Reason::DnsFailed, "no address to connect to")))
}

/// Runs the TLS handshake over a connected stream and reads the peer certificate.
pub(crate) async fn tls_handshake(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    timeouts: Timeouts,
) -> Result<(MailStream, Option<CertificateInfo>), Failure> {
    let shown = name.to_str().into_owned();
    within(timeouts.connect, "in the TLS handshake", async move {
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                Failure::new(
                    Reason::TlsHandshakeFailed,
                    format!(
                        "TLS handshake with {shown} failed: {e}; for a private CA set spec.tls.caSecretRef, for a name mismatch spec.tls.serverName, and check that securityType matches the port (SSL: 993/995/465, TLS: 143/110/587)"
                    ),
                )
            })?;
        let certificate = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|der| certificate_info(der.as_ref()));
        Ok((MailStream::Tls(Box::new(tls)), certificate))
    })
    .await
}

/// With securityType TLS, refuses to go on when the server does not offer
/// STARTTLS (`verb`: STARTTLS or STLS): nothing, least of all the password, is
/// sent in clear. `ssl_port` is the implicit-TLS port to suggest instead.
pub(crate) async fn require_starttls(
    probe: &mut Probe,
    offered: bool,
    endpoint: &crate::config::Endpoint,
    verb: &str,
    ssl_port: u16,
) -> Result<(), Failure> {
    if offered {
        return Ok(());
    }
    let failure = Failure::new(
        Reason::StartTlsUnavailable,
        format!(
            "{}:{} does not offer {verb}, and mailroom never sends a password in clear; use securityType SSL (port {ssl_port}) or enable {verb} on the server",
            endpoint.host, endpoint.port
        ),
    );
    probe
        .stage(ConnectionStage::Tls, async { Err(failure) })
        .await
}

/// A failed command of a mail protocol (`protocol`: IMAP, POP3, SMTP), as
/// the worker, the sender and the connection test report it.
pub(crate) fn protocol_error(protocol: &str, what: &str, e: impl fmt::Display) -> Failure {
    Failure::new(
        Reason::ProtocolError,
        format!("{protocol} {what} failed: {e}"),
    )
}

/// The TLS stage of STARTTLS (`verb`: STARTTLS or STLS), the same for every
/// protocol: `ask` sends the verb, reads the server's yes and hands back the
/// connection; then nothing may have arrived ahead of the handshake (it could
/// be an injection), and the plain connection is secured. The certificate goes
/// into `probe`.
pub(crate) async fn starttls(
    probe: &mut Probe,
    protocol: &str,
    verb: &str,
    upgrade: Upgrade,
    ask: impl AsyncFnOnce() -> Result<BufReader<MailStream>, Failure>,
) -> Result<MailStream, Failure> {
    let (stream, certificate) = probe
        .stage(ConnectionStage::Tls, async {
            let conn = ask().await?;
            if !conn.buffer().is_empty() {
                return Err(protocol_error(
                    protocol,
                    verb,
                    "the server sent data before the TLS handshake",
                ));
            }
            let tcp = conn.into_inner().into_plain().ok_or_else(|| {
                protocol_error(protocol, verb, "the connection is already encrypted")
            })?;
            upgrade.handshake(tcp).await
        })
        .await?;
    probe.certificate = certificate;
    Ok(stream)
}

/// What a STARTTLS upgrade needs, kept from [`open`].
pub struct Upgrade {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    timeouts: Timeouts,
}

impl Upgrade {
    /// Runs the TLS handshake on a plain connection after the server agreed to
    /// STARTTLS.
    pub(crate) async fn handshake(
        self,
        tcp: TcpStream,
    ) -> Result<(MailStream, Option<CertificateInfo>), Failure> {
        tls_handshake(tcp, self.config, self.name, self.timeouts).await
    }
}

/// The stages every protocol shares: DNS, TCP and, with implicit TLS, the
/// handshake. With STARTTLS the stream is still plain; `Upgrade` secures it
/// once the protocol has asked.
pub async fn open(
    endpoint: &crate::config::Endpoint,
    tls: &TlsOptions,
    proxy: Option<&ProxySettings>,
    timeouts: Timeouts,
    probe: &mut Probe,
) -> Result<(MailStream, Upgrade), Failure> {
    let tls_failure =
        |e: tls::TlsConfigError| Failure::new(Reason::TlsHandshakeFailed, e.to_string());
    let config = client_config(tls).map_err(tls_failure)?;
    let name = server_name(&endpoint.host, tls).map_err(tls_failure)?;
    let tcp = match proxy {
        None => {
            let addrs = probe
                .stage(
                    ConnectionStage::Dns,
                    resolve(&endpoint.host, endpoint.port, timeouts),
                )
                .await?;
            probe
                .stage(ConnectionStage::Tcp, connect_tcp(&addrs, timeouts))
                .await?
        }
        Some(p) => {
            // Reaching the proxy is part of the proxy stage: failing there is ProxyFailed.
            let as_proxy = |f: Failure| {
                Failure::new(
                    Reason::ProxyFailed,
                    format!("proxy {}:{}: {}", p.host, p.port, f.message),
                )
            };
            probe
                .stage(ConnectionStage::Proxy, async {
                    let addrs = resolve(&p.host, p.port, timeouts).await.map_err(as_proxy)?;
                    let tcp = connect_tcp(&addrs, timeouts).await.map_err(as_proxy)?;
                    proxy::tunnel(tcp, p, &endpoint.host, endpoint.port, timeouts).await
                })
                .await?
        }
    };
    let upgrade = Upgrade {
        config,
        name,
        timeouts,
    };
    let stream = match endpoint.security {
        crate::vocab::SecurityType::Ssl => {
            let (stream, cert) = probe
                .stage(
                    ConnectionStage::Tls,
                    tls_handshake(tcp, upgrade.config.clone(), upgrade.name.clone(), timeouts),
                )
                .await?;
            probe.certificate = cert;
            stream
        }
        crate::vocab::SecurityType::Tls => MailStream::Plain(tcp),
    };
    Ok((stream, upgrade))
}

fn certificate_info(der: &[u8]) -> Option<CertificateInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let not_after = cert.validity().not_after.timestamp();
    Some(CertificateInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_after: SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(not_after).unwrap_or(0)),
    })
}
