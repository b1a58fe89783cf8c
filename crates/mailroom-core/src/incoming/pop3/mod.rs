//! A small POP3 client of our own: the maintained crates use native-tls or
//! async-std, and POP3 needs only a handful of commands. STLS is required with
//! securityType TLS; nothing is sent in clear before it.

use std::time::Duration;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::config::server::refused_sign_in;
use crate::config::{Credentials, ServerSettings};
use crate::connection::{
    Failure, MailStream, Probe, Reason, open, protocol_error, require_starttls, starttls, within,
};
use crate::oauth2::{self, Attempt, no_token_mechanism, sasl::Mechanism};
use crate::vocab::{ConnectionStage, SecurityType};
use parse::Reply;

pub mod parse;

/// Longest status line accepted; RFC 1939 allows 512 octets.
const MAX_LINE: u64 = 8 * 1024;

pub(crate) struct Pop3 {
    stream: BufReader<MailStream>,
    io: Duration,
}

/// The protocol's name in errors.
const POP3: &str = "POP3";

impl Pop3 {
    fn new(stream: MailStream, io: Duration) -> Self {
        Self {
            stream: BufReader::new(stream),
            io,
        }
    }

    async fn read_line(&mut self) -> Result<String, Failure> {
        let mut buf = Vec::new();
        let n = (&mut self.stream)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|e| protocol_error(POP3, "read", e))?;
        if n == 0 {
            return Err(protocol_error(
                POP3,
                "read",
                "connection closed by the server",
            ));
        }
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    async fn reply(&mut self) -> Result<Reply, Failure> {
        let line = within(self.io, "waiting for the POP3 server", self.read_line()).await?;
        parse::reply(&line)
    }

    async fn send(&mut self, line: &str) -> Result<(), Failure> {
        let io = self.io;
        let stream = self.stream.get_mut();
        within(io, "sending to the POP3 server", async {
            let write = async {
                stream.write_all(line.as_bytes()).await?;
                stream.write_all(b"\r\n").await?;
                stream.flush().await
            };
            write.await.map_err(|e| protocol_error(POP3, "write", e))
        })
        .await
    }

    /// Sends a command and expects `+OK`.
    async fn command(&mut self, line: &str, what: &str) -> Result<String, Failure> {
        self.send(line).await?;
        match self.reply().await? {
            Reply::Ok(text) => Ok(text),
            Reply::Err(text) => Err(protocol_error(POP3, what, text)),
        }
    }

    /// Reads a multi-line body up to the lone ".", undoing dot-stuffing.
    async fn multiline(&mut self, limit: u64) -> Result<Vec<u8>, Failure> {
        let io = self.io;
        within(io, "reading a POP3 listing", async {
            let mut out = Vec::new();
            loop {
                let mut line = Vec::new();
                let n = (&mut self.stream)
                    .take(limit.saturating_add(MAX_LINE))
                    .read_until(b'\n', &mut line)
                    .await
                    .map_err(|e| protocol_error(POP3, "read", e))?;
                if n == 0 {
                    return Err(protocol_error(
                        POP3,
                        "read",
                        "connection closed in a listing",
                    ));
                }
                match parse::body_line(&line) {
                    Some(body) => out.extend_from_slice(body),
                    None => return Ok(out),
                }
            }
        })
        .await
    }

    async fn capa(&mut self) -> Result<Vec<String>, Failure> {
        self.send("CAPA").await?;
        match self.reply().await? {
            Reply::Ok(_) => Ok(parse::capabilities(&self.multiline(MAX_LINE * 64).await?)),
            // CAPA is optional (RFC 2449): an old server simply has none.
            Reply::Err(_) => Ok(Vec::new()),
        }
    }

    /// Connects, secures and signs in, recording each stage in `probe`.
    pub(crate) async fn connect(
        server: &ServerSettings,
        probe: &mut Probe,
    ) -> Result<Pop3, Failure> {
        let t = server.timeouts;
        let ep = &server.endpoint;
        let (stream, upgrade) = open(ep, &server.tls, server.proxy.as_ref(), t, probe).await?;
        let mut pop = Pop3::new(stream, t.io);
        let mut caps = probe
            .stage(ConnectionStage::Greeting, async {
                match pop.reply().await? {
                    Reply::Ok(_) => pop.capa().await,
                    Reply::Err(text) => Err(protocol_error(POP3, "greeting", text)),
                }
            })
            .await?;

        if ep.security == SecurityType::Tls {
            let offered = caps.iter().any(|c| c.eq_ignore_ascii_case("STLS"));
            require_starttls(probe, offered, ep, "STLS", 995).await?;
            let stream = starttls(probe, POP3, "STLS", upgrade, async move || {
                pop.command("STLS", "STLS")
                    .await
                    .map_err(|f| Failure::new(Reason::StartTlsUnavailable, f.message))?;
                Ok(pop.stream)
            })
            .await?;
            pop = Pop3::new(stream, t.io);
            caps = pop.capa().await?;
        }
        probe.capabilities = caps.clone();

        let provider = server.provider;
        let refused = |text: String| refused_sign_in(provider, &text);
        let sasl: Vec<&str> = caps
            .iter()
            .filter_map(|c| {
                let mut words = c.split_whitespace();
                words
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case("SASL"))
                    .then_some(words)
            })
            .flatten()
            .collect();
        let pop = match &server.credentials {
            Credentials::Basic { username, password } => {
                probe
                    .stage(ConnectionStage::Login, async {
                        if sasl.iter().any(|w| w.eq_ignore_ascii_case("PLAIN")) {
                            let token = base64::engine::general_purpose::STANDARD
                                .encode(format!("\0{username}\0{}", password.expose_secret()));
                            pop.send(&format!("AUTH PLAIN {token}")).await?;
                        } else {
                            if let Reply::Err(text) = {
                                pop.send(&format!("USER {username}")).await?;
                                pop.reply().await?
                            } {
                                return Err(refused(text));
                            }
                            pop.send(&format!("PASS {}", password.expose_secret()))
                                .await?;
                        }
                        match pop.reply().await? {
                            Reply::Ok(_) => Ok(()),
                            Reply::Err(text) => Err(refused(text)),
                        }
                    })
                    .await?;
                pop
            }
            Credentials::OAuth2 { username, tokens } => {
                probe
                    .stage(ConnectionStage::Login, async {
                        let mechanism = Mechanism::choose(sasl.iter().copied())
                            .ok_or_else(|| no_token_mechanism("POP3", &caps))?;
                        oauth2::sign_in(tokens, pop, |mut pop, token| async move {
                            let first =
                                mechanism.initial_response(username, &token, &ep.host, ep.port);
                            match pop.authenticate(mechanism, &first).await {
                                Ok(None) => Ok(pop),
                                Ok(Some(said)) => Err(Attempt::Refused { said, conn: pop }),
                                Err(f) => Err(Attempt::Failed(f)),
                            }
                        })
                        .await
                    })
                    .await?
            }
        };
        Ok(pop)
    }

    /// `AUTH` with a token (RFC 5034): None when signed in, else what the
    /// server said when it refused.
    async fn authenticate(
        &mut self,
        mechanism: Mechanism,
        first: &SecretString,
    ) -> Result<Option<String>, Failure> {
        let b64 = base64::engine::general_purpose::STANDARD;
        self.send(&format!(
            "AUTH {} {}",
            mechanism.name(),
            b64.encode(first.expose_secret())
        ))
        .await?;
        // At most one challenge: the error status, which the client acknowledges.
        for _ in 0..2 {
            let line = within(self.io, "waiting for the POP3 server", self.read_line()).await?;
            if line.starts_with("+OK") {
                return Ok(None);
            } else if let Some(rest) = line.strip_prefix("-ERR") {
                return Ok(Some(rest.trim().to_owned()));
            } else if line == "+" || line.starts_with("+ ") {
                self.send(&b64.encode(mechanism.error_ack())).await?;
            } else {
                break;
            }
        }
        Err(protocol_error(POP3, "AUTH", "unexpected answer to AUTH"))
    }

    /// Number of messages and total size.
    pub(crate) async fn stat(&mut self) -> Result<(u32, u64), Failure> {
        let text = self.command("STAT", "STAT").await?;
        parse::stat(&text)
    }

    async fn listing(&mut self, command: &str) -> Result<Vec<(u32, String)>, Failure> {
        self.command(command, command).await?;
        let body = self.multiline(64 * 1024 * 1024).await?;
        parse::listing(&body, command)
    }

    /// Message numbers with their unique ids.
    pub(crate) async fn uidl(&mut self) -> Result<Vec<(u32, String)>, Failure> {
        self.listing("UIDL").await
    }

    /// Message numbers with their sizes.
    pub(crate) async fn list(&mut self) -> Result<Vec<(u32, u64)>, Failure> {
        parse::sizes(self.listing("LIST").await?)
    }

    /// One whole message.
    pub(crate) async fn retr(&mut self, n: u32, size_hint: u64) -> Result<Vec<u8>, Failure> {
        self.command(&format!("RETR {n}"), "RETR").await?;
        self.multiline(size_hint).await
    }

    /// Marks a message for deletion; it goes when the session ends with QUIT.
    pub(crate) async fn dele(&mut self, n: u32) -> Result<(), Failure> {
        self.command(&format!("DELE {n}"), "DELE").await.map(drop)
    }

    /// Ends the session, committing deletions.
    pub async fn quit(mut self) -> Result<(), Failure> {
        self.command("QUIT", "QUIT").await.map(drop)
    }
}
