//! IMAP sign-in over async-imap: implicit TLS or STARTTLS (required: a server that
//! does not offer it fails before anything else is sent), then LOGIN, or
//! AUTHENTICATE with an OAuth2 token.

use async_imap::{Client, Session};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::config::server::refused_sign_in;
use crate::config::{Credentials, ServerSettings};
use crate::connection::{
    Failure, MailStream, Probe, Reason, open, protocol_error, require_starttls, starttls, within,
};
use crate::oauth2::{self, Attempt, no_token_mechanism, sasl::Mechanism};
use crate::vocab::{ConnectionStage, SecurityType};

mod session;

pub(crate) use session::ImapMailbox;

pub(crate) type ImapSession = Session<MailStream>;

/// The protocol's name in errors.
pub(crate) const IMAP: &str = "IMAP";

/// Longest line accepted before sign-in.
const MAX_LINE: u64 = 64 * 1024;

async fn read_line(conn: &mut BufReader<MailStream>) -> Result<String, Failure> {
    let mut buf = Vec::new();
    let n = (&mut *conn)
        .take(MAX_LINE)
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| protocol_error(IMAP, "read", e))?;
    if n == 0 {
        return Err(protocol_error(
            IMAP,
            "read",
            "connection closed by the server",
        ));
    }
    Ok(String::from_utf8_lossy(&buf).trim_end().to_owned())
}

/// Sends a tagged command before sign-in and returns the untagged lines; the
/// async-imap client only takes over once the connection is secured.
async fn command(
    conn: &mut BufReader<MailStream>,
    tag: &str,
    command: &str,
) -> Result<Vec<String>, Failure> {
    let stream = conn.get_mut();
    let sent = async {
        stream
            .write_all(format!("{tag} {command}\r\n").as_bytes())
            .await?;
        stream.flush().await
    };
    sent.await.map_err(|e| protocol_error(IMAP, command, e))?;
    let mut untagged = Vec::new();
    loop {
        let line = read_line(conn).await?;
        if let Some(rest) = line.strip_prefix(&format!("{tag} ")) {
            return if rest.len() >= 2 && rest[..2].eq_ignore_ascii_case("OK") {
                Ok(untagged)
            } else {
                Err(protocol_error(IMAP, command, rest))
            };
        }
        untagged.push(line);
    }
}

async fn capabilities(conn: &mut BufReader<MailStream>, tag: &str) -> Result<Vec<String>, Failure> {
    let lines = command(conn, tag, "CAPABILITY").await?;
    Ok(lines
        .iter()
        .filter_map(|l| l.strip_prefix("* CAPABILITY "))
        .flat_map(|l| l.split_whitespace().map(str::to_owned))
        .collect())
}

fn secured_plain(conn: BufReader<MailStream>, what: &str) -> Result<MailStream, Failure> {
    // Anything the server sent ahead of our next command could be an injection.
    if !conn.buffer().is_empty() {
        return Err(protocol_error(
            IMAP,
            what,
            "the server sent data out of turn",
        ));
    }
    Ok(conn.into_inner())
}

/// Connects, secures and signs in, recording each stage in `probe`.
pub(crate) async fn connect(
    server: &ServerSettings,
    probe: &mut Probe,
) -> Result<ImapSession, Failure> {
    let t = server.timeouts;
    let ep = &server.endpoint;
    let (stream, upgrade) = open(ep, &server.tls, server.proxy.as_ref(), t, probe).await?;
    let mut conn = BufReader::new(stream);
    let mut caps = probe
        .stage(
            ConnectionStage::Greeting,
            within(t.io, "reading the IMAP greeting", async {
                let greeting = read_line(&mut conn).await?;
                if !(greeting.starts_with("* OK") || greeting.starts_with("* PREAUTH")) {
                    return Err(protocol_error(
                        IMAP,
                        "greeting",
                        format!("unexpected {greeting:?}"),
                    ));
                }
                capabilities(&mut conn, "m1").await
            }),
        )
        .await?;

    if ep.security == SecurityType::Tls {
        let offered = caps.iter().any(|c| c.eq_ignore_ascii_case("STARTTLS"));
        require_starttls(probe, offered, ep, "STARTTLS", 993).await?;
        let stream = starttls(probe, IMAP, "STARTTLS", upgrade, async move || {
            within(t.io, "starting TLS", command(&mut conn, "m2", "STARTTLS"))
                .await
                .map_err(|f| Failure::new(Reason::StartTlsUnavailable, f.message))?;
            Ok(conn)
        })
        .await?;
        conn = BufReader::new(stream);
        caps = within(
            t.io,
            "reading capabilities after STARTTLS",
            capabilities(&mut conn, "m3"),
        )
        .await?;
    }
    let client = Client::new(secured_plain(conn, "CAPABILITY")?);
    probe.capabilities = caps.clone();

    let provider = server.provider;
    let mut session = probe
        .stage(ConnectionStage::Login, async {
            match &server.credentials {
                Credentials::Basic { username, password } => {
                    within(t.io, "signing in", async {
                        client
                            .login(username, password.expose_secret())
                            .await
                            .map_err(|(e, _)| match e {
                                async_imap::error::Error::No(text) => {
                                    refused_sign_in(provider, &text)
                                }
                                other => protocol_error(IMAP, "LOGIN", other),
                            })
                    })
                    .await
                }
                Credentials::OAuth2 { username, tokens } => {
                    let offered = caps.iter().filter_map(|c| {
                        c.get(..5)
                            .filter(|p| p.eq_ignore_ascii_case("AUTH="))
                            .map(|_| &c[5..])
                    });
                    let mechanism = Mechanism::choose(offered)
                        .ok_or_else(|| no_token_mechanism("IMAP", &caps))?;
                    oauth2::sign_in(tokens, client, |client, token| async move {
                        let first = mechanism.initial_response(username, &token, &ep.host, ep.port);
                        within(t.io, "signing in", async {
                            Ok(client
                                .authenticate(mechanism.name(), Sasl::new(mechanism, first))
                                .await)
                        })
                        .await
                        .map_err(Attempt::Failed)?
                        .map_err(|(e, client)| match e {
                            async_imap::error::Error::No(said) => {
                                Attempt::Refused { said, conn: client }
                            }
                            other => Attempt::Failed(protocol_error(IMAP, "AUTHENTICATE", other)),
                        })
                    })
                    .await
                }
            }
        })
        .await?;
    // Capabilities change after sign-in (IDLE, UIDPLUS, MOVE appear).
    if let Ok(after) = within(t.io, "reading capabilities", async {
        session
            .capabilities()
            .await
            .map_err(|e| protocol_error(IMAP, "CAPABILITY", e))
    })
    .await
    {
        probe.capabilities = after
            .iter()
            .map(|c| match c {
                async_imap::types::Capability::Imap4rev1 => "IMAP4rev1".to_owned(),
                async_imap::types::Capability::Auth(a) => format!("AUTH={a}"),
                async_imap::types::Capability::Atom(a) => a.clone(),
            })
            .collect();
        probe.capabilities.sort();
    }
    Ok(session)
}

/// Answers the server's SASL challenges: the token first, then the
/// acknowledgement of an error challenge.
struct Sasl {
    mechanism: Mechanism,
    first: Option<SecretString>,
}

impl Sasl {
    fn new(mechanism: Mechanism, first: SecretString) -> Self {
        Self {
            mechanism,
            first: Some(first),
        }
    }
}

impl async_imap::Authenticator for Sasl {
    type Response = Vec<u8>;

    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        match self.first.take() {
            Some(first) => first.expose_secret().as_bytes().to_vec(),
            None => self.mechanism.error_ack().as_bytes().to_vec(),
        }
    }
}

/// Maps a refused SELECT/EXAMINE to `MailboxNotFound`.
pub(crate) fn mailbox_failure(mailbox: &str, e: async_imap::error::Error) -> Failure {
    match e {
        async_imap::error::Error::No(text) => Failure::new(
            Reason::MailboxNotFound,
            format!(
                "the server has no mailbox {mailbox:?} ({}); check spec.mailbox (Gmail labels are folders, e.g. \"[Gmail]/All Mail\")",
                text.trim()
            ),
        ),
        other => protocol_error(IMAP, "SELECT", other),
    }
}
