//! Access tokens for one OAuth2 grant (one refresh token in one Secret),
//! refreshed before they run out and once more when a server refuses one, and
//! the process-wide registry that lets every server naming that Secret share
//! them: with a provider that rotates refresh tokens, two holders refreshing on
//! their own would invalidate each other.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::connection::{Failure, ProxySettings, Reason, TlsOptions, client_config};
use crate::sync::unpoisoned;

/// Longest margin before expiry at which a token is renewed.
const MARGIN: Duration = Duration::from_secs(300);
/// Lifetime assumed when the provider does not say (RFC 6749 makes
/// `expires_in` optional; Google and Microsoft use an hour).
const DEFAULT_LIFETIME: u64 = 3600;
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Refresh tokens a grant remembers having held (the current one included).
const KNOWN_TOKENS: usize = 16;

/// What a Secret says about one OAuth2 sign-in.
#[derive(Clone, Debug)]
pub struct Grant {
    /// Name of the Secret, and the key of the refresh token in it.
    pub secret: String,
    pub refresh_key: String,
    pub client_id: String,
    pub client_secret: SecretString,
    pub refresh_token: SecretString,
    pub token_url: String,
    pub scopes: Vec<String>,
    /// The proxy the token endpoint is reached through: the resource's own,
    /// since a network that needs it for mail needs it for this too.
    pub proxy: Option<ProxySettings>,
}

impl Grant {
    fn same_client(&self, other: &Grant) -> bool {
        self.client_id == other.client_id
            && self.client_secret.expose_secret() == other.client_secret.expose_secret()
            && self.token_url == other.token_url
            && self.scopes == other.scopes
            && match (&self.proxy, &other.proxy) {
                (None, None) => true,
                (Some(a), Some(b)) => a.same_as(b),
                _ => false,
            }
    }
}

/// An access token and when it runs out. Debug never shows the token.
#[derive(Clone, Debug)]
pub struct AccessToken {
    pub token: SecretString,
    pub expires_at: Timestamp,
    issued_at: Timestamp,
    serial: u64,
    /// The provider issued it for this very request: if a server refuses it,
    /// asking the provider again would give the same kind of token.
    pub fresh: bool,
}

/// What status and metrics show about a grant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenInfo {
    /// When the current access token runs out.
    pub expires_at: Option<Timestamp>,
    /// The last refresh the provider answered with a token.
    pub last_refresh: Option<Timestamp>,
    /// The last time the provider rotated the refresh token.
    pub last_rotation: Option<Timestamp>,
    /// Why the last rotated refresh token could not be written back, if it
    /// could not: it then lives in memory only, until the process ends.
    pub write_back_error: Option<String>,
}

/// Where a rotated refresh token goes: the Secret in the cluster, or the
/// Secret manifest in the standalone folder. `old` lets the writer refuse to
/// overwrite a value that someone else changed meanwhile.
pub trait WriteBack: Send + Sync {
    fn write<'a>(
        &'a self,
        namespace: &'a str,
        secret: &'a str,
        key: &'a str,
        old: &'a SecretString,
        new: &'a SecretString,
    ) -> BoxFuture<'a, Result<(), WriteBackError>>;
}

/// A rotated refresh token could not be written back. Never holds the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WriteBackError(pub String);

type Fingerprint = [u8; 32];

fn fingerprint(s: &str) -> Fingerprint {
    Sha256::digest(s.as_bytes()).into()
}

struct Inner {
    grant: Grant,
    /// The refresh token as last put in the Secret by someone else; rotations
    /// by us keep it, so the adapters can tell their own write-backs apart.
    origin: Fingerprint,
    /// The refresh tokens this grant has held: the current one and every one
    /// the provider rotated away. A Secret read before a write-back landed
    /// still shows an old one, which is no news.
    known: Vec<Fingerprint>,
    access: Option<AccessToken>,
    /// A refusal only a new refresh token or client can fix.
    refused: Option<Failure>,
    info: TokenInfo,
    serial: u64,
}

impl Inner {
    fn new(grant: Grant, serial: u64) -> Self {
        let fp = fingerprint(grant.refresh_token.expose_secret());
        Self {
            grant,
            origin: fp,
            known: vec![fp],
            access: None,
            refused: None,
            info: TokenInfo::default(),
            serial,
        }
    }
}

/// The access tokens of one grant.
pub struct TokenSession {
    namespace: String,
    inner: Mutex<Inner>,
    /// One refresh at a time: a second caller waits and takes its result.
    refreshing: tokio::sync::Mutex<()>,
    writer: Option<Arc<dyn WriteBack>>,
}

impl std::fmt::Debug for TokenSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("TokenSession")
            .field("namespace", &self.namespace)
            .field("secret", &inner.grant.secret)
            .field("info", &inner.info)
            .finish_non_exhaustive()
    }
}

fn remaining(until: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(until.duration_since(now)).unwrap_or(Duration::ZERO)
}

impl TokenSession {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        unpoisoned(&self.inner)
    }

    pub(crate) fn info(&self) -> TokenInfo {
        self.lock().info.clone()
    }

    /// A token with time left: the cached one, or a new one from the provider
    /// when the cached one is within a tenth of its life (at most five
    /// minutes) of running out.
    pub(crate) async fn access_token(&self) -> Result<AccessToken, Failure> {
        let _one = self.refreshing.lock().await;
        {
            let inner = self.lock();
            if let Some(f) = &inner.refused {
                return Err(f.clone());
            }
            if let Some(a) = &inner.access {
                let now = Timestamp::now();
                let life = remaining(a.expires_at, a.issued_at);
                if remaining(a.expires_at, now) > MARGIN.min(life / 10) {
                    return Ok(AccessToken {
                        fresh: false,
                        ..a.clone()
                    });
                }
            }
        }
        self.refresh().await
    }

    /// After a server refused `rejected`: a newer token if one can be had.
    /// None when `rejected` was itself just issued (a new one would fare no
    /// better, and asking at every sign-in is the loop that gets a client
    /// blocked); the caller then reports the refusal.
    pub(crate) async fn after_rejection(
        &self,
        rejected: &AccessToken,
    ) -> Result<Option<AccessToken>, Failure> {
        let _one = self.refreshing.lock().await;
        {
            let inner = self.lock();
            if let Some(f) = &inner.refused {
                return Err(f.clone());
            }
            if let Some(a) = &inner.access
                && a.serial != rejected.serial
            {
                return Ok(Some(AccessToken {
                    fresh: false,
                    ..a.clone()
                }));
            }
            if rejected.fresh {
                return Ok(None);
            }
        }
        self.refresh().await.map(Some)
    }

    /// Takes a grant read from the Secret. Our own write-back, or a stale read
    /// of an older value, changes nothing; a new refresh token or client
    /// starts over (and clears a refusal: the admin has re-consented).
    fn adopt(&self, grant: Grant) {
        let mut inner = self.lock();
        let fp = fingerprint(grant.refresh_token.expose_secret());
        if inner.grant.same_client(&grant) && inner.known.contains(&fp) {
            return;
        }
        let serial = inner.serial;
        *inner = Inner::new(grant, serial);
    }

    async fn refresh(&self) -> Result<AccessToken, Failure> {
        let grant = self.lock().grant.clone();
        let mut form = vec![
            ("grant_type", "refresh_token".to_owned()),
            (
                "refresh_token",
                grant.refresh_token.expose_secret().to_owned(),
            ),
            ("client_id", grant.client_id.clone()),
            (
                "client_secret",
                grant.client_secret.expose_secret().to_owned(),
            ),
        ];
        if !grant.scopes.is_empty() {
            form.push(("scope", grant.scopes.join(" ")));
        }
        let url = &grant.token_url;
        let response = http_client(grant.proxy.as_ref())?
            .post(url)
            .form(&form)
            .send()
            .await
            .map_err(|e| unreachable_endpoint(url, &e))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        // The Secret may have brought another grant while we asked: what the
        // provider said about the old one then changes nothing.
        let used = fingerprint(grant.refresh_token.expose_secret());
        let current =
            |inner: &Inner| fingerprint(inner.grant.refresh_token.expose_secret()) == used;
        if !status.is_success() {
            let failure = refusal(&grant, status.as_u16(), &body);
            {
                let mut inner = self.lock();
                if failure.reason.is_permanent() && current(&inner) {
                    inner.refused = Some(failure.clone());
                    inner.access = None;
                    inner.info.expires_at = None;
                }
            }
            tracing::warn!(namespace = %self.namespace, secret = %grant.secret, reason = %failure.reason, "{}", failure.message);
            return Err(failure);
        }
        let token = body["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Failure::new(
                    Reason::ProtocolError,
                    format!("the token endpoint {url} answered without an access_token"),
                )
            })?;
        let lifetime = body["expires_in"]
            .as_u64()
            .or_else(|| body["expires_in"].as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(DEFAULT_LIFETIME);
        let rotated = body["refresh_token"]
            .as_str()
            .filter(|r| !r.is_empty() && *r != grant.refresh_token.expose_secret())
            .map(|r| SecretString::from(r.to_owned()));
        let now = Timestamp::now();
        let access = {
            let mut inner = self.lock();
            if !current(&inner) {
                return Ok(AccessToken {
                    token: SecretString::from(token.to_owned()),
                    expires_at: now,
                    issued_at: now,
                    serial: 0,
                    fresh: true,
                });
            }
            inner.serial += 1;
            let access = AccessToken {
                token: SecretString::from(token.to_owned()),
                expires_at: now
                    .checked_add(Duration::from_secs(lifetime))
                    .unwrap_or(now),
                issued_at: now,
                serial: inner.serial,
                fresh: true,
            };
            inner.access = Some(access.clone());
            inner.info.expires_at = Some(access.expires_at);
            inner.info.last_refresh = Some(now);
            if let Some(new) = &rotated {
                inner.known.push(fingerprint(new.expose_secret()));
                // A stale read lags by seconds, not by many rotations: a few
                // recent tokens are enough to recognise.
                let excess = inner.known.len().saturating_sub(KNOWN_TOKENS);
                inner.known.drain(..excess);
                inner.grant.refresh_token = new.clone();
                inner.info.last_rotation = Some(now);
            }
            access
        };
        tracing::info!(namespace = %self.namespace, secret = %grant.secret, expires_at = %access.expires_at, rotated = rotated.is_some(), "OAuth2 access token refreshed");
        if let Some(new) = rotated {
            self.write_back(&grant, &new).await;
        }
        Ok(access)
    }

    async fn write_back(&self, grant: &Grant, new: &SecretString) {
        let outcome = match &self.writer {
            Some(w) => {
                w.write(
                    &self.namespace,
                    &grant.secret,
                    &grant.refresh_key,
                    &grant.refresh_token,
                    new,
                )
                .await
            }
            None => Err(WriteBackError(
                "nothing to write it back to in this mode".into(),
            )),
        };
        if let Err(e) = &outcome {
            tracing::error!(namespace = %self.namespace, secret = %grant.secret, key = %grant.refresh_key, "the provider rotated the refresh token and the new one could not be written back ({e}); it is kept in memory, and a restart before the write succeeds loses it");
        }
        self.lock().info.write_back_error = outcome.err().map(|e| e.0);
    }
}

fn unreachable_endpoint(url: &str, e: &reqwest::Error) -> Failure {
    let reason = if e.is_timeout() {
        Reason::Timeout
    } else if e.is_connect() {
        Reason::ConnectionRefused
    } else {
        Reason::ProtocolError
    };
    Failure::new(
        reason,
        format!("the OAuth2 token endpoint {url} could not be reached ({e}); mailroom retries"),
    )
}

/// The provider's refusal, in words an admin can act on. `invalid_grant`
/// (consent revoked, refresh token expired or used after rotation) and a
/// refused client are permanent; anything else is retried.
fn refusal(grant: &Grant, status: u16, body: &serde_json::Value) -> Failure {
    let code = body["error"].as_str().unwrap_or("no error code");
    let description: String = body["error_description"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    let said = if description.is_empty() {
        format!("{code}, HTTP {status}")
    } else {
        format!("{code}: {description}, HTTP {status}")
    };
    let secret = &grant.secret;
    match code {
        "invalid_grant" => Failure::new(
            Reason::AuthenticationFailed,
            format!(
                "the OAuth2 provider refused the refresh token ({said}): consent was revoked, the token expired, or it was replaced. Re-consent with `mailroom oauth2 authorize` and put the new refresh token in Secret {secret:?}, key {:?}",
                grant.refresh_key
            ),
        ),
        "invalid_client" | "unauthorized_client" => Failure::new(
            Reason::AuthenticationFailed,
            format!(
                "the OAuth2 provider refused the client ({said}); check the client id and client secret in Secret {secret:?}"
            ),
        ),
        _ => Failure::new(
            Reason::ProtocolError,
            format!(
                "the OAuth2 token endpoint {} refused the refresh ({said}); mailroom retries",
                grant.token_url
            ),
        ),
    }
}

/// The HTTP client for token endpoints: public roots, bounded time, through
/// `proxy` when there is one. Built per refresh (about once an hour per
/// grant), so a grant whose proxy changed uses the new one at once.
pub(crate) fn http_client(proxy: Option<&ProxySettings>) -> Result<reqwest::Client, Failure> {
    let tls = client_config(&TlsOptions::default())
        .map_err(|e| Failure::new(Reason::TlsHandshakeFailed, e.to_string()))?;
    let setup = |e: reqwest::Error| {
        Failure::new(
            Reason::ProtocolError,
            format!("cannot set up the OAuth2 HTTP client: {e}"),
        )
    };
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .timeout(HTTP_TIMEOUT);
    if let Some(p) = proxy {
        builder = builder.proxy(p.for_http().map_err(|e| {
            Failure::new(
                Reason::ProxyFailed,
                format!("the proxy cannot be used for the OAuth2 token endpoint: {e}"),
            )
        })?);
    }
    builder.build().map_err(setup)
}

/// Every grant in use in this process, by namespace, Secret and key.
pub struct Tokens {
    writer: Option<Arc<dyn WriteBack>>,
    sessions: Mutex<HashMap<(String, String, String), Arc<TokenSession>>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("write_back", &self.writer.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Tokens {
    /// A registry that cannot write rotated refresh tokens back.
    fn default() -> Self {
        Self::new(None)
    }
}

impl Tokens {
    pub fn new(writer: Option<Arc<dyn WriteBack>>) -> Self {
        Self {
            writer,
            sessions: Mutex::default(),
        }
    }

    fn sessions(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, String, String), Arc<TokenSession>>> {
        unpoisoned(&self.sessions)
    }

    /// The session for `grant`, shared with every other user of its Secret key.
    pub fn session(&self, namespace: &str, grant: Grant) -> Result<Arc<TokenSession>, Failure> {
        let key = (
            namespace.to_owned(),
            grant.secret.clone(),
            grant.refresh_key.clone(),
        );
        if let Some(s) = self.sessions().get(&key) {
            s.adopt(grant);
            return Ok(s.clone());
        }
        let session = Arc::new(TokenSession {
            namespace: namespace.to_owned(),
            inner: Mutex::new(Inner::new(grant, 0)),
            refreshing: tokio::sync::Mutex::new(()),
            writer: self.writer.clone(),
        });
        Ok(self.sessions().entry(key).or_insert(session).clone())
    }

    /// `secrets` (of `namespace`, by name) as configuration digests should see
    /// them: a refresh token that one of our grants holds or held reads as the
    /// one it started from, so writing back a rotated token restarts nothing,
    /// while a token put there by someone else still does.
    pub fn stable_view(
        &self,
        namespace: &str,
        secrets: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    ) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
        let mut view = secrets.clone();
        for ((ns, secret, key), session) in self.sessions().iter() {
            if ns != namespace {
                continue;
            }
            let Some(value) = view.get_mut(secret).and_then(|d| d.get_mut(key)) else {
                continue;
            };
            let inner = session.lock();
            let text = String::from_utf8_lossy(value);
            if inner.known.contains(&fingerprint(text.trim_end())) {
                *value = inner.origin.to_vec();
            }
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(refresh: &str) -> Grant {
        Grant {
            secret: "oauth".into(),
            refresh_key: "refresh_token".into(),
            client_id: "id".into(),
            client_secret: SecretString::from("s".to_owned()),
            refresh_token: SecretString::from(refresh.to_owned()),
            token_url: "http://127.0.0.1:9/token".into(),
            scopes: Vec::new(),
            proxy: None,
        }
    }

    fn data(refresh: &str) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
        [(
            "oauth".to_owned(),
            [("refresh_token".to_owned(), refresh.as_bytes().to_vec())].into(),
        )]
        .into()
    }

    #[test]
    fn own_rotations_are_invisible_to_digests_and_new_consent_is_not() {
        let tokens = Tokens::default();
        let session = tokens.session("ns", grant("r1")).unwrap();
        let before = tokens.stable_view("ns", &data("r1"));
        {
            let mut inner = session.lock();
            inner.known.push(fingerprint("r2"));
            inner.grant.refresh_token = SecretString::from("r2".to_owned());
        }
        assert_eq!(tokens.stable_view("ns", &data("r2")), before);
        assert_eq!(tokens.stable_view("ns", &data("r1")), before);
        assert_ne!(tokens.stable_view("ns", &data("r3")), before);
        assert_eq!(tokens.stable_view("other", &data("r2")), data("r2"));

        // A stale read of r1 keeps r2; a new token from the admin replaces it.
        let again = tokens.session("ns", grant("r1")).unwrap();
        assert!(Arc::ptr_eq(&session, &again));
        assert_eq!(session.lock().grant.refresh_token.expose_secret(), "r2");
        session.lock().refused = Some(Failure::new(Reason::AuthenticationFailed, "x"));
        tokens.session("ns", grant("r3")).unwrap();
        assert_eq!(session.lock().grant.refresh_token.expose_secret(), "r3");
        assert!(session.lock().refused.is_none());
    }

    #[test]
    fn debug_shows_no_secret() {
        let tokens = Tokens::default();
        let session = tokens.session("ns", grant("refresh-value")).unwrap();
        let shown = format!("{session:?} {:?}", grant("refresh-value"));
        assert!(!shown.contains("refresh-value"), "{shown}");
    }
}
