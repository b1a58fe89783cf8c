//! SMTP. We open the connection ourselves (DNS, TCP, TLS, and the plain-text
//! part of STARTTLS) through `connection`, so that the connection test records
//! every stage, TLS uses the same rustls setup as IMAP and POP3, and a proxy can
//! slot in later; lettre's `AsyncSmtpConnection` then speaks EHLO, AUTH and the
//! mail transaction over that stream.

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use base64::Engine;
use lettre::Address;
use lettre::transport::smtp::authentication::{Credentials as LettreCredentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};

use super::OutgoingSettings;
use crate::config::Credentials;
use crate::config::server::authentication_hint;
use crate::connection::{
    ConnectionReport, Failure, MailStream, Probe, Reason, open, protocol_error, require_starttls,
    starttls, within,
};
use crate::oauth2::{self, Attempt, no_token_mechanism, sasl::Mechanism as TokenMechanism};
use crate::vocab::{ConnectionStage, SecurityType};

/// A stream that first replays bytes already read (the greeting, when we ran
/// STARTTLS ourselves), then reads from the connection.
struct Replay {
    prefix: Vec<u8>,
    pos: usize,
    inner: MailStream,
}

impl fmt::Debug for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replay")
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for Replay {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
}

/// The protocol's name in errors.
const SMTP: &str = "SMTP";

/// Reads one SMTP reply (all its lines); returns the code and the text.
async fn read_reply(
    conn: &mut BufReader<MailStream>,
    what: &str,
) -> Result<(u16, String), Failure> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let n = conn
            .read_line(&mut line)
            .await
            .map_err(|e| protocol_error(SMTP, what, e))?;
        if n == 0 {
            return Err(protocol_error(SMTP, what, "the connection was closed"));
        }
        let code = line
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| protocol_error(SMTP, what, format!("{:?}", line.trim_end())))?;
        text.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok((code, text));
        }
    }
}

async fn write_line(
    conn: &mut BufReader<MailStream>,
    line: &str,
    what: &str,
) -> Result<(), Failure> {
    let stream = conn.get_mut();
    stream
        .write_all(line.as_bytes())
        .await
        .map_err(|e| protocol_error(SMTP, what, e))?;
    stream
        .flush()
        .await
        .map_err(|e| protocol_error(SMTP, what, e))
}

/// The plain-text part of STARTTLS: greeting, EHLO, and STARTTLS if offered.
/// Returns the greeting (lettre reads it again) and whether TLS may start.
async fn plain_prelude(
    conn: &mut BufReader<MailStream>,
    hello: &str,
) -> Result<(String, bool), Failure> {
    let (code, greeting) = read_reply(conn, "the greeting").await?;
    if code != 220 {
        return Err(protocol_error(SMTP, "the greeting", greeting.trim_end()));
    }
    write_line(conn, &format!("EHLO {hello}\r\n"), "EHLO").await?;
    let (code, ehlo) = read_reply(conn, "EHLO").await?;
    if code != 250 {
        return Err(protocol_error(SMTP, "EHLO", ehlo.trim_end()));
    }
    let offered = ehlo.lines().any(|l| {
        l.get(4..)
            .is_some_and(|k| k.trim().eq_ignore_ascii_case("STARTTLS"))
    });
    Ok((greeting, offered))
}

/// The extensions status shows.
fn capabilities(conn: &AsyncSmtpConnection) -> Vec<String> {
    let info = conn.server_info();
    let mut caps = Vec::new();
    for (ext, name) in [
        (Extension::EightBitMime, "8BITMIME"),
        (Extension::SmtpUtfEight, "SMTPUTF8"),
        (Extension::StartTls, "STARTTLS"),
    ] {
        if info.supports_feature(ext) {
            caps.push(name.to_owned());
        }
    }
    for (m, name) in [
        (Mechanism::Plain, "AUTH=PLAIN"),
        (Mechanism::Login, "AUTH=LOGIN"),
        (Mechanism::Xoauth2, "AUTH=XOAUTH2"),
    ] {
        if info.supports_auth_mechanism(m) {
            caps.push(name.to_owned());
        }
    }
    caps
}

/// What the server said about a refused sign-in, as an actionable failure.
/// 535 (bad credentials) and 534 (Gmail's "Application-specific password
/// required", 5.7.9) both mean: use an App Password.
fn auth_failure(settings: &OutgoingSettings, e: &lettre::transport::smtp::Error) -> Failure {
    let code = e.status().map(|c| c.to_string());
    match code.as_deref() {
        Some("535" | "534") => Failure::new(
            Reason::AuthenticationFailed,
            authentication_hint(settings.provider, &e.to_string()),
        ),
        _ if e.is_client() => Failure::new(
            Reason::ProtocolError,
            format!(
                "the server offers no sign-in mechanism mailroom speaks (PLAIN or LOGIN): {e}; check the port (587 or 465)"
            ),
        ),
        _ if e.is_timeout() => Failure::new(Reason::Timeout, format!("signing in timed out: {e}")),
        _ => Failure::new(
            Reason::ProtocolError,
            format!("the server refused AUTH: {e}"),
        ),
    }
}

/// One signed-in SMTP session.
pub struct SmtpSession {
    conn: AsyncSmtpConnection,
    /// When the session last finished a command; idle sessions age from here.
    pub last_used: Instant,
    io: std::time::Duration,
}

impl fmt::Debug for SmtpSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpSession")
            .field("last_used", &self.last_used)
            .finish()
    }
}

/// Connects, secures and signs in, recording each stage in `probe`. Nothing is
/// sent: no MAIL command.
pub async fn connect(
    settings: &OutgoingSettings,
    probe: &mut Probe,
) -> Result<SmtpSession, Failure> {
    let t = settings.timeouts;
    let ep = &settings.endpoint;
    let hello = settings.message_id_domain.clone();
    let (stream, upgrade) = open(ep, &settings.tls, settings.proxy.as_ref(), t, probe).await?;
    let stream = match ep.security {
        SecurityType::Ssl => Replay {
            prefix: Vec::new(),
            pos: 0,
            inner: stream,
        },
        SecurityType::Tls => {
            let mut conn = BufReader::new(stream);
            let (greeting, offered) = probe
                .stage(
                    ConnectionStage::Greeting,
                    within(
                        t.io,
                        "reading the SMTP greeting",
                        plain_prelude(&mut conn, &hello),
                    ),
                )
                .await?;
            require_starttls(probe, offered, ep, "STARTTLS", 465).await?;
            let stream = starttls(probe, SMTP, "STARTTLS", upgrade, async move || {
                within(t.io, "starting TLS", async {
                    write_line(&mut conn, "STARTTLS\r\n", "STARTTLS").await?;
                    let (code, text) = read_reply(&mut conn, "STARTTLS").await?;
                    if code != 220 {
                        return Err(Failure::new(
                            Reason::StartTlsUnavailable,
                            format!("the server refused STARTTLS: {}", text.trim_end()),
                        ));
                    }
                    Ok(())
                })
                .await?;
                Ok(conn)
            })
            .await?;
            Replay {
                prefix: greeting.into_bytes(),
                pos: 0,
                inner: stream,
            }
        }
    };
    let client_id = ClientId::Domain(hello);
    let conn = probe
        .stage(
            ConnectionStage::Greeting,
            within(t.io, "greeting and EHLO", async {
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), &client_id)
                    .await
                    .map_err(|e| protocol_error(SMTP, "EHLO", e))
            }),
        )
        .await?;
    probe.capabilities = capabilities(&conn);
    let mut session = SmtpSession {
        conn,
        last_used: Instant::now(),
        io: t.io,
    };
    match &settings.credentials {
        None => Ok(session),
        Some(Credentials::Basic { username, password }) => {
            let creds =
                LettreCredentials::new(username.clone(), password.expose_secret().to_owned());
            let conn = &mut session.conn;
            probe
                .stage(
                    ConnectionStage::Login,
                    within(t.io, "signing in", async {
                        conn.auth(&[Mechanism::Plain, Mechanism::Login], &creds)
                            .await
                            .map(drop)
                            .map_err(|e| auth_failure(settings, &e))
                    }),
                )
                .await?;
            Ok(session)
        }
        Some(Credentials::OAuth2 { username, tokens }) => {
            probe
                .stage(ConnectionStage::Login, async {
                    let offered =
                        within(t.io, "EHLO", auth_mechanisms(&mut session, &client_id)).await?;
                    let mechanism = TokenMechanism::choose(offered.iter().map(String::as_str))
                        .ok_or_else(|| no_token_mechanism("SMTP", &offered))?;
                    let ep = &settings.endpoint;
                    oauth2::sign_in(tokens, session, |mut session, token| async move {
                        let first = mechanism.initial_response(username, &token, &ep.host, ep.port);
                        let signed = within(t.io, "signing in", async {
                            token_auth(&mut session.conn, mechanism, &first)
                                .await
                                .map_err(|e| auth_failure(settings, &e))
                        })
                        .await;
                        match signed {
                            Ok(None) => Ok(session),
                            Ok(Some(said)) => Err(Attempt::Refused {
                                said,
                                conn: session,
                            }),
                            Err(f) => Err(Attempt::Failed(f)),
                        }
                    })
                    .await
                })
                .await
        }
    }
}

/// One raw command line; lettre adds nothing to it.
struct Line(String);

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\r\n", self.0)
    }
}

/// The SASL mechanisms from a repeated EHLO: lettre knows only the ones it
/// speaks, and OAUTHBEARER is not among them.
async fn auth_mechanisms(
    session: &mut SmtpSession,
    client_id: &ClientId,
) -> Result<Vec<String>, Failure> {
    let reply = session
        .conn
        .command(Line(format!("EHLO {client_id}")))
        .await
        .map_err(|e| protocol_error(SMTP, "EHLO", e))?;
    Ok(reply
        .message()
        .filter_map(|l| {
            let l = l.trim();
            l.get(..5)
                .filter(|p| p.eq_ignore_ascii_case("AUTH ") || p.eq_ignore_ascii_case("AUTH="))
                .map(|_| &l[5..])
        })
        .flat_map(|l| l.split_whitespace().map(str::to_owned))
        .collect())
}

/// `AUTH` with a token (RFC 4954), answering the error challenge if one comes:
/// None when signed in, else what the server said when it refused.
async fn token_auth(
    conn: &mut AsyncSmtpConnection,
    mechanism: TokenMechanism,
    first: &SecretString,
) -> Result<Option<String>, lettre::transport::smtp::Error> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let command = Line(format!(
        "AUTH {} {}",
        mechanism.name(),
        b64.encode(first.expose_secret())
    ));
    let answer = match conn.command(command).await {
        Ok(reply) if reply.has_code(334) => {
            conn.command(Line(b64.encode(mechanism.error_ack()))).await
        }
        other => other,
    };
    match answer {
        Ok(reply) if reply.has_code(235) => Ok(None),
        Ok(reply) => Ok(Some(reply.message().collect::<Vec<_>>().join(" "))),
        Err(e) if e.status().is_some_and(|c| c.to_string().starts_with("53")) => {
            Ok(Some(e.to_string()))
        }
        Err(e) => Err(e),
    }
}

/// The staged connection test (the Test Connection button): DNS, TCP, TLS,
/// EHLO, AUTH. No message is sent.
pub async fn test_connection(settings: &OutgoingSettings) -> ConnectionReport {
    let mut probe = Probe::new();
    let outcome = match connect(settings, &mut probe).await {
        Ok(mut session) => {
            session.quit().await;
            Ok(())
        }
        Err(f) => Err(f),
    };
    probe.finish(outcome)
}

/// What the server answered for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptAnswer {
    Accepted,
    /// 5xx: this recipient will never work through any server.
    Refused(String),
    /// 4xx: try again, or through another server.
    Deferred(String),
}

/// Why a transaction did not run to its end.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    /// The connection broke or timed out: the session is gone.
    #[error("the connection to the SMTP server broke: {0}")]
    Broken(String),
    /// The server refused the sender or the message for good (5xx).
    #[error("the SMTP server refused the message: {0}")]
    Refused(String),
    /// The server refused for now (4xx).
    #[error("the SMTP server deferred the message: {0}")]
    Deferred(String),
}

impl TransactionError {
    fn from_lettre(e: lettre::transport::smtp::Error) -> Self {
        if e.is_permanent() {
            Self::Refused(e.to_string())
        } else if e.is_transient() {
            Self::Deferred(e.to_string())
        } else {
            Self::Broken(e.to_string())
        }
    }
}

impl SmtpSession {
    /// One mail transaction: MAIL, a RCPT per recipient (each answered on its
    /// own), DATA. Returns each recipient's answer; with no recipient accepted
    /// the transaction is reset and nothing is sent.
    pub async fn transaction(
        &mut self,
        from: &Address,
        recipients: &[Address],
        message: &[u8],
    ) -> Result<Vec<RcptAnswer>, TransactionError> {
        let io = self.io;
        let conn = &mut self.conn;
        let run = async {
            conn.command(Mail::new(Some(from.clone()), vec![]))
                .await
                .map_err(TransactionError::from_lettre)?;
            let mut answers = Vec::with_capacity(recipients.len());
            for rcpt in recipients {
                let answer = match conn.command(Rcpt::new(rcpt.clone(), vec![])).await {
                    Ok(_) => RcptAnswer::Accepted,
                    Err(e) if e.is_permanent() => RcptAnswer::Refused(e.to_string()),
                    Err(e) if e.is_transient() => RcptAnswer::Deferred(e.to_string()),
                    Err(e) => return Err(TransactionError::Broken(e.to_string())),
                };
                answers.push(answer);
            }
            if !answers.contains(&RcptAnswer::Accepted) {
                conn.command(Rset)
                    .await
                    .map_err(TransactionError::from_lettre)?;
                return Ok(answers);
            }
            conn.command(Data)
                .await
                .map_err(TransactionError::from_lettre)?;
            conn.message(message)
                .await
                .map_err(TransactionError::from_lettre)?;
            Ok(answers)
        };
        let result = tokio::time::timeout(io * 4, run).await.unwrap_or_else(|_| {
            Err(TransactionError::Broken(format!(
                "no answer within {:?}",
                io * 4
            )))
        });
        // After a refusal the session can carry the next message once reset; a
        // server that does not take RSET is never reused. The refusal stands
        // either way: it is the server's answer to this message.
        if let Err(TransactionError::Refused(_) | TransactionError::Deferred(_)) = &result
            && !matches!(
                tokio::time::timeout(io, self.conn.command(Rset)).await,
                Ok(Ok(_))
            )
        {
            self.conn.abort().await;
        }
        result
    }

    /// Whether the session can carry another message.
    pub(crate) fn usable(&self) -> bool {
        !self.conn.has_broken()
    }

    pub async fn quit(&mut self) {
        let _ = tokio::time::timeout(self.io, self.conn.quit()).await;
    }
}
