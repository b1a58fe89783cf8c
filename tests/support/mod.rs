//! Helpers shared by the integration tests: specs pointing at the test mail
//! servers, in-memory Secrets, and a relay that records what a client sends.

#![allow(dead_code)]

pub mod cluster;
pub mod outgoing;
pub mod standalone;
pub mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};

use mailroom::api::{
    AuthSpec, IncomingEmailServerSpec, IncomingProtocol, Provider, SecretKeyRef, SecurityType,
    TlsSpec,
};
use mailroom::resolve::{SecretError, SecretSource, Sources};
use mailroom_core::incoming::IncomingSettings;
use mailroom_core::oauth2::Tokens;
use testbed::{Stack, User};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Resident memory of process `pid`, in KiB.
pub fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// How many IMAP sessions Dovecot holds for `user` now.
pub fn imap_sessions(stack: &Stack, user: &User) -> usize {
    stack
        .sessions(&user.address)
        .unwrap()
        .iter()
        .filter(|(service, _)| service == "imap")
        .count()
}

/// A loopback port nothing listens on now.
/// A count from the environment (a bench's setting), else `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn free_port() -> u16 {
    testbed::free_port().unwrap()
}

/// Every `*.json` file of a folder (e.g. the directory sink's tickets),
/// parsed; none when the folder does not exist yet.
pub fn json_files<T: serde::de::DeserializeOwned>(dir: &std::path::Path) -> Vec<T> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// Secrets held in memory, keyed by (name, key).
#[derive(Default, Clone)]
pub struct Secrets(pub HashMap<(String, String), Vec<u8>>);

impl Secrets {
    pub fn with(mut self, name: &str, key: &str, value: &str) -> Self {
        self.0
            .insert((name.into(), key.into()), value.as_bytes().to_vec());
        self
    }
}

impl SecretSource for Secrets {
    fn get(&self, name: &str, key: &str) -> Result<Vec<u8>, SecretError> {
        if !self.0.keys().any(|(n, _)| n == name) {
            return Err(SecretError::NotFound { name: name.into() });
        }
        self.0
            .get(&(name.to_owned(), key.to_owned()))
            .cloned()
            .ok_or_else(|| SecretError::KeyMissing {
                name: name.into(),
                key: key.into(),
            })
    }
}

/// A spec for `user` on the test stack, over `protocol` with `security`, at `addr`.
pub fn incoming_spec(
    stack: &Stack,
    user: &User,
    protocol: IncomingProtocol,
    security: SecurityType,
) -> (IncomingEmailServerSpec, Secrets) {
    let port = match (protocol, security) {
        (IncomingProtocol::Imap, SecurityType::Ssl) => stack.ports().imaps,
        (IncomingProtocol::Imap, SecurityType::Tls) => stack.ports().imap,
        (IncomingProtocol::Pop3, SecurityType::Ssl) => stack.ports().pop3s,
        (IncomingProtocol::Pop3, SecurityType::Tls) => stack.ports().pop3,
    };
    let spec: IncomingEmailServerSpec = serde_json::from_value(serde_json::json!({
        "email": user.address,
        "protocol": protocol,
        "provider": "Other",
        "server": "127.0.0.1",
        "port": port,
        "securityType": security,
        "auth": {"passwordSecretRef": {"name": "mail", "key": "password"}},
        "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}},
    }))
    .unwrap();
    let secrets = Secrets::default()
        .with("mail", "password", &user.password)
        .with("ca", "ca.crt", stack.ca_pem());
    (spec, secrets)
}

pub fn resolve(spec: &IncomingEmailServerSpec, secrets: &Secrets) -> IncomingSettings {
    mailroom::resolve::incoming_settings(
        &mailroom_core::vocab::ResourceId::new("helpdesk", "support"),
        spec,
        sources("helpdesk", secrets),
    )
    .unwrap()
}

/// Lookups in `namespace` for `secrets`, with no ConfigMaps and a registry of
/// OAuth2 grants of its own (it lives for the whole test binary).
pub fn sources<'a>(namespace: &'a str, secrets: &'a Secrets) -> Sources<'a> {
    static NO_CONFIG_MAPS: LazyLock<Secrets> = LazyLock::new(Secrets::default);
    static TOKENS: LazyLock<Tokens> = LazyLock::new(Tokens::default);
    Sources {
        namespace,
        secrets,
        config_maps: &*NO_CONFIG_MAPS,
        tokens: &TOKENS,
    }
}

pub fn with_provider(
    mut spec: IncomingEmailServerSpec,
    provider: Provider,
) -> IncomingEmailServerSpec {
    spec.provider = provider;
    spec
}

pub fn with_auth(mut spec: IncomingEmailServerSpec, auth: AuthSpec) -> IncomingEmailServerSpec {
    spec.auth = auth;
    spec
}

pub fn without_ca(mut spec: IncomingEmailServerSpec) -> IncomingEmailServerSpec {
    spec.tls = Some(TlsSpec::default());
    spec
}

pub fn password_ref() -> SecretKeyRef {
    SecretKeyRef {
        name: "mail".into(),
        key: "password".into(),
    }
}

/// A TCP relay to `target` that records every byte the client sent, to prove
/// what did or did not go over the wire.
pub struct Recorder {
    pub addr: SocketAddr,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let record = sent.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.split();
                    let (mut sr, mut sw) = server.split();
                    let upstream = async {
                        let mut buf = [0u8; 4096];
                        loop {
                            let n = cr.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            record.lock().unwrap().extend_from_slice(&buf[..n]);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let downstream = async {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(upstream, downstream);
                });
            }
        });
        Self { addr, sent }
    }

    pub fn sent(&self) -> String {
        String::from_utf8_lossy(&self.sent.lock().unwrap()).into_owned()
    }
}

/// One request the webhook receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub status: u16,
    pub at: std::time::Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_map(&self) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (k, v) in &self.headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }
}

/// How the webhook receiver answers besides the status.
#[derive(Clone, Copy, Debug, Default)]
pub struct Behaviour {
    /// Each answer comes this long after its request: a slow helpdesk.
    pub delay: std::time::Duration,
    /// `Retry-After` on 429 and 503 answers.
    pub retry_after: Option<&'static str>,
    /// The body of 2xx answers (JSON), none when unset.
    pub body: Option<&'static str>,
}

/// A minimal HTTP/1.1 receiver for webhook tests; `answer` picks the status of
/// each request from its sequence number (0-based).
pub struct WebhookReceiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// The most requests it held at once.
    pub most_in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl WebhookReceiver {
    pub async fn start(answer: impl Fn(usize) -> u16 + Send + Sync + 'static) -> Self {
        Self::serve(Behaviour::default(), answer).await
    }

    pub async fn serve(
        behaviour: Behaviour,
        answer: impl Fn(usize) -> u16 + Send + Sync + 'static,
    ) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/tickets", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let most_in_flight = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (log, most) = (received.clone(), most_in_flight.clone());
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, most, in_flight) = (log.clone(), most.clone(), in_flight.clone());
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut reader = tokio::io::BufReader::new(stream);
                    loop {
                        use tokio::io::AsyncBufReadExt;
                        let mut line = String::new();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        let mut headers = Vec::new();
                        loop {
                            let mut h = String::new();
                            reader.read_line(&mut h).await.unwrap();
                            let h = h.trim_end().to_owned();
                            if h.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = h.split_once(':') {
                                headers.push((k.trim().to_owned(), v.trim().to_owned()));
                            }
                        }
                        let len: usize = headers
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                            .and_then(|(_, v)| v.parse().ok())
                            .unwrap_or(0);
                        let mut body = vec![0u8; len];
                        reader.read_exact(&mut body).await.unwrap();
                        let status = {
                            let mut log = log.lock().unwrap();
                            let status = answer(log.len());
                            log.push(Received {
                                headers,
                                body,
                                status,
                                at: std::time::Instant::now(),
                            });
                            status
                        };
                        tokio::time::sleep(behaviour.delay).await;
                        let retry_after = match behaviour.retry_after {
                            Some(v) if status == 429 || status == 503 => {
                                format!("Retry-After: {v}\r\n")
                            }
                            _ => String::new(),
                        };
                        let body = match behaviour.body {
                            Some(b) if (200..300).contains(&status) => b,
                            _ => "",
                        };
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\n{retry_after}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        if reader.get_mut().write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            url,
            received,
            most_in_flight,
        }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}
