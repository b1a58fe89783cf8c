//! A small OAuth2 provider on loopback, so that XOAUTH2 and OAUTHBEARER logins
//! to the stack are real: Dovecot validates every bearer token by introspection
//! against it (RFC 7662), and clients refresh tokens at its token endpoint
//! (RFC 6749 §6, with refresh-token rotation when a client asks for it) or get
//! their first one through the authorization-code flow with PKCE (RFC 7636),
//! where the consent screen says yes at once.
//!
//! Each client has its own settings and counters, so tests sharing one stack
//! stay apart. Plain HTTP: OAuth2 allows it on loopback only, which is all this
//! serves.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::Error;

/// How one client's tokens behave.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// Every refresh returns a new refresh token and retires the old one.
    pub rotate: bool,
    /// Lifetime of access tokens.
    pub lifetime: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            rotate: false,
            lifetime: Duration::from_secs(3600),
        }
    }
}

/// What happened at the provider for one client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Refresh-token grants answered with a new access token.
    pub refreshes: u32,
    /// Refresh-token grants answered with `invalid_grant`.
    pub invalid_grants: u32,
    /// Authorization codes exchanged for tokens.
    pub code_exchanges: u32,
    /// Introspections that found the token valid.
    pub accepted: u32,
    /// Introspections of an expired, revoked or unknown token of this client.
    pub rejected: u32,
}

#[derive(Debug)]
struct Client {
    secret: String,
    options: ClientOptions,
    stats: ClientStats,
}

#[derive(Debug)]
struct Grant {
    client: String,
    user: String,
}

#[derive(Debug)]
struct Code {
    grant: Grant,
    redirect_uri: String,
    challenge: String,
}

#[derive(Debug, Default)]
struct State {
    clients: HashMap<String, Client>,
    refresh: HashMap<String, Grant>,
    access: HashMap<String, (Grant, Instant)>,
    codes: HashMap<String, Code>,
}

/// The running provider; stops when dropped.
#[derive(Debug)]
pub struct OAuthProvider {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

fn token(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        (0..32)
            .map(|_| fastrand::alphanumeric())
            .collect::<String>()
    )
}

impl OAuthProvider {
    pub fn start() -> Result<Self, Error> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, flag) = (state.clone(), stop.clone());
        thread::Builder::new()
            .name("oauth-provider".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        let s = s.clone();
                        thread::spawn(move || serve(conn, &s));
                    }
                }
            })?;
        Ok(Self { addr, state, stop })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.url())
    }

    pub fn authorize_url(&self) -> String {
        format!("{}/authorize", self.url())
    }

    pub fn introspection_url(&self) -> String {
        format!("{}/introspect", self.url())
    }

    /// A new client: its id and secret.
    pub fn register_client(&self, options: ClientOptions) -> (String, String) {
        let (id, secret) = (token("client"), token("secret"));
        self.state().clients.insert(
            id.clone(),
            Client {
                secret: secret.clone(),
                options,
                stats: ClientStats::default(),
            },
        );
        (id, secret)
    }

    /// A refresh token for `user`, as if the user had consented to `client`.
    pub fn grant(&self, client: &str, user: &str) -> String {
        let refresh = token("refresh");
        self.state().refresh.insert(
            refresh.clone(),
            Grant {
                client: client.into(),
                user: user.into(),
            },
        );
        refresh
    }

    /// An access token for `user`, as the token endpoint would issue it.
    pub fn access_token(&self, client: &str, user: &str) -> String {
        mint(&mut self.state(), client, user).0
    }

    /// Revokes the access tokens of `client` and keeps its refresh tokens, as
    /// a provider does when it ends sessions early.
    pub fn revoke_access_tokens(&self, client: &str) {
        self.state().access.retain(|_, (g, _)| g.client != client);
    }

    /// Revokes every token of `client`, as a user withdrawing consent does.
    pub fn revoke(&self, client: &str) {
        let mut s = self.state();
        s.refresh.retain(|_, g| g.client != client);
        s.access.retain(|_, (g, _)| g.client != client);
    }

    /// Whether `refresh_token` is still valid.
    pub fn is_valid(&self, refresh_token: &str) -> bool {
        self.state().refresh.contains_key(refresh_token)
    }

    pub fn stats(&self, client: &str) -> ClientStats {
        self.state()
            .clients
            .get(client)
            .map(|c| c.stats)
            .unwrap_or_default()
    }
}

impl Drop for OAuthProvider {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    form: HashMap<String, String>,
    basic: Option<(String, String)>,
}

fn parse_form(s: &str) -> HashMap<String, String> {
    form_urlencoded::parse(s.as_bytes()).into_owned().collect()
}

fn read_request(conn: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut length = 0usize;
    let mut basic = None;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().ok()?;
        } else if name.eq_ignore_ascii_case("authorization")
            && let Some(b64) = value.strip_prefix("Basic ")
        {
            let decoded = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (id, secret) = text.split_once(':')?;
            let decode = |s: &str| {
                form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            basic = Some((decode(id), decode(secret)));
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body).ok()?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    Some(Request {
        method,
        path: path.to_owned(),
        query: parse_form(query),
        form: parse_form(&String::from_utf8_lossy(&body)),
        basic,
    })
}

fn respond(mut conn: &TcpStream, status: &str, extra: &str, body: &str) {
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    let _ = conn.flush();
}

fn error(conn: &TcpStream, status: &str, code: &str, description: &str) {
    let body = serde_json::json!({"error": code, "error_description": description});
    respond(conn, status, "", &body.to_string());
}

fn serve(conn: TcpStream, state: &Mutex<State>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Some(req) = read_request(&conn) else {
        return;
    };
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/token") => token_endpoint(&conn, &mut s, &req),
        ("POST", "/introspect") => introspect(&conn, &mut s, &req),
        ("GET", "/authorize") => authorize(&conn, &mut s, &req),
        _ => error(&conn, "404 Not Found", "not_found", "no such endpoint"),
    }
}

/// Checks client credentials from the form (client_secret_post) or HTTP Basic.
fn client_of(s: &State, req: &Request) -> Option<String> {
    let (id, secret) = match &req.basic {
        Some((id, secret)) => (id.clone(), secret.clone()),
        None => (
            req.form.get("client_id")?.clone(),
            req.form.get("client_secret")?.clone(),
        ),
    };
    (s.clients.get(&id)?.secret == secret).then_some(id)
}

/// A new access token of `client` for `user`, and its lifetime.
fn mint(s: &mut State, client: &str, user: &str) -> (String, Duration) {
    let lifetime = s
        .clients
        .get(client)
        .map_or(Duration::ZERO, |c| c.options.lifetime);
    let access = token("access");
    s.access.insert(
        access.clone(),
        (
            Grant {
                client: client.into(),
                user: user.into(),
            },
            Instant::now() + lifetime,
        ),
    );
    (access, lifetime)
}

/// The token endpoint's answer: a new access token, and `refresh` if given.
fn issue(s: &mut State, client: &str, user: &str, refresh: Option<String>) -> String {
    let (access, lifetime) = mint(s, client, user);
    let mut body = serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
        "scope": "mail",
    });
    if let Some(r) = refresh {
        body["refresh_token"] = r.into();
    }
    body.to_string()
}

fn token_endpoint(conn: &TcpStream, s: &mut State, req: &Request) {
    let Some(client) = client_of(s, req) else {
        return error(
            conn,
            "401 Unauthorized",
            "invalid_client",
            "unknown client or wrong secret",
        );
    };
    let field = |k: &str| req.form.get(k).cloned().unwrap_or_default();
    match field("grant_type").as_str() {
        "refresh_token" => {
            let presented = field("refresh_token");
            let user = match s.refresh.get(&presented) {
                Some(g) if g.client == client => g.user.clone(),
                _ => {
                    if let Some(c) = s.clients.get_mut(&client) {
                        c.stats.invalid_grants += 1;
                    }
                    return error(
                        conn,
                        "400 Bad Request",
                        "invalid_grant",
                        "Token has been expired or revoked.",
                    );
                }
            };
            let rotate = s.clients.get(&client).is_some_and(|c| c.options.rotate);
            let new_refresh = rotate.then(|| {
                s.refresh.remove(&presented);
                let r = token("refresh");
                s.refresh.insert(
                    r.clone(),
                    Grant {
                        client: client.clone(),
                        user: user.clone(),
                    },
                );
                r
            });
            if let Some(c) = s.clients.get_mut(&client) {
                c.stats.refreshes += 1;
            }
            let body = issue(s, &client, &user, new_refresh);
            respond(conn, "200 OK", "", &body);
        }
        "authorization_code" => {
            let verifier = field("code_verifier");
            let code = match s.codes.remove(&field("code")) {
                Some(c)
                    if c.grant.client == client
                        && c.redirect_uri == field("redirect_uri")
                        && URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
                            == c.challenge =>
                {
                    c
                }
                _ => {
                    return error(
                        conn,
                        "400 Bad Request",
                        "invalid_grant",
                        "unknown code, other redirect_uri or wrong code_verifier",
                    );
                }
            };
            let refresh = token("refresh");
            s.refresh.insert(
                refresh.clone(),
                Grant {
                    client: client.clone(),
                    user: code.grant.user.clone(),
                },
            );
            if let Some(c) = s.clients.get_mut(&client) {
                c.stats.code_exchanges += 1;
            }
            let body = issue(s, &client, &code.grant.user, Some(refresh));
            respond(conn, "200 OK", "", &body);
        }
        other => error(
            conn,
            "400 Bad Request",
            "unsupported_grant_type",
            &format!("grant_type {other:?}"),
        ),
    }
}

fn introspect(conn: &TcpStream, s: &mut State, req: &Request) {
    let presented = req.form.get("token").cloned().unwrap_or_default();
    let found = s
        .access
        .get(&presented)
        .map(|(g, expiry)| (g.client.clone(), g.user.clone(), *expiry > Instant::now()));
    let body = match found {
        Some((client, user, live)) => {
            if let Some(c) = s.clients.get_mut(&client) {
                if live {
                    c.stats.accepted += 1;
                } else {
                    c.stats.rejected += 1;
                }
            }
            if live {
                serde_json::json!({"active": true, "username": user, "client_id": client})
            } else {
                serde_json::json!({"active": false})
            }
        }
        None => serde_json::json!({"active": false}),
    };
    respond(conn, "200 OK", "", &body.to_string());
}

/// The consent screen: the user named by `login_hint` agrees at once and the
/// browser is sent back to the client's redirect URI with a code.
fn authorize(conn: &TcpStream, s: &mut State, req: &Request) {
    let q = |k: &str| req.query.get(k).cloned().unwrap_or_default();
    let redirect_uri = q("redirect_uri");
    let loopback = ["http://127.0.0.1:", "http://localhost:", "http://[::1]:"]
        .iter()
        .any(|p| redirect_uri.starts_with(p));
    if !s.clients.contains_key(&q("client_id"))
        || !loopback
        || q("response_type") != "code"
        || q("code_challenge_method") != "S256"
        || q("login_hint").is_empty()
    {
        return error(
            conn,
            "400 Bad Request",
            "invalid_request",
            "needs a known client_id, a loopback redirect_uri, response_type=code, PKCE S256 and login_hint",
        );
    }
    let code = token("code");
    s.codes.insert(
        code.clone(),
        Code {
            grant: Grant {
                client: q("client_id"),
                user: q("login_hint"),
            },
            redirect_uri: redirect_uri.clone(),
            challenge: q("code_challenge"),
        },
    );
    let location = format!(
        "{redirect_uri}?code={}&state={}",
        form_urlencoded::byte_serialize(code.as_bytes()).collect::<String>(),
        form_urlencoded::byte_serialize(q("state").as_bytes()).collect::<String>()
    );
    respond(conn, "302 Found", &format!("Location: {location}\r\n"), "");
}
