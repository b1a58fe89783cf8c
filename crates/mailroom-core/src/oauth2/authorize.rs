//! Obtaining the first refresh token: the OAuth2 authorization-code flow for
//! native apps (RFC 8252) with PKCE (RFC 7636). The admin opens the consent
//! URL in a browser on the same machine; the provider sends the browser back to
//! a listener on the loopback address, and the code it brings is exchanged for
//! tokens.
//! This flow rather than the device-code one because Google's device flow does
//! not grant the mail scope.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::preset::url_allowed;
use super::session::http_client;

#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    #[error("{which} {url:?} must be https:// (plain http only to a loopback address)")]
    InsecureUrl { which: &'static str, url: String },
    #[error("cannot listen for the provider's redirect on {addr}: {message}")]
    Listen { addr: SocketAddr, message: String },
    #[error(
        "no consent arrived within {0:?}; run the command again and finish the sign-in in the browser sooner"
    )]
    TimedOut(Duration),
    #[error("the provider refused the consent: {0}")]
    Refused(String),
    #[error("the token endpoint could not be reached: {0}")]
    Unreachable(String),
    #[error(
        "the token endpoint refused the code ({0}); check the client id and secret and that loopback redirect URIs are allowed for this client"
    )]
    Exchange(String),
    #[error("the provider returned no refresh token; {0}")]
    NoRefreshToken(&'static str),
}

/// What the flow needs.
#[derive(Clone, Debug)]
pub struct Request {
    pub authorize_url: String,
    pub token_url: String,
    pub client_id: String,
    pub client_secret: SecretString,
    pub scopes: Vec<String>,
    /// The account to sign in as, so the provider preselects it.
    pub login_hint: Option<String>,
    /// Where to listen for the redirect (port 0: any free one).
    pub listen: SocketAddr,
    /// Host name of the redirect URI: Google documents `127.0.0.1`, Microsoft
    /// registers `localhost`; both reach the listener.
    pub redirect_host: &'static str,
    pub timeout: Duration,
}

fn random(len: usize) -> String {
    (0..len).map(|_| fastrand::alphanumeric()).collect()
}

fn query(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn parse_query(q: &str) -> HashMap<String, String> {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

/// Runs the flow. `show` gets the consent URL to open, once the listener is up.
pub async fn authorize(
    req: &Request,
    show: impl FnOnce(&str),
) -> Result<SecretString, AuthorizeError> {
    for (which, url) in [
        ("the authorization URL", &req.authorize_url),
        ("the token URL", &req.token_url),
    ] {
        if !url_allowed(url) {
            return Err(AuthorizeError::InsecureUrl {
                which,
                url: url.clone(),
            });
        }
    }
    let listener = TcpListener::bind(req.listen)
        .await
        .map_err(|e| AuthorizeError::Listen {
            addr: req.listen,
            message: e.to_string(),
        })?;
    let port = listener
        .local_addr()
        .map_err(|e| AuthorizeError::Listen {
            addr: req.listen,
            message: e.to_string(),
        })?
        .port();
    let redirect_uri = format!("http://{}:{port}/", req.redirect_host);
    let verifier = random(64);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let state = random(32);
    let scope = req.scopes.join(" ");
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", req.client_id.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("scope", scope.as_str()),
        ("state", state.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        // Google returns a refresh token only with these two.
        ("access_type", "offline"),
        ("prompt", "consent"),
    ];
    if let Some(hint) = &req.login_hint {
        params.push(("login_hint", hint));
    }
    let separator = if req.authorize_url.contains('?') {
        '&'
    } else {
        '?'
    };
    show(&format!(
        "{}{separator}{}",
        req.authorize_url,
        query(&params)
    ));

    let code = tokio::time::timeout(req.timeout, receive_code(&listener, &state))
        .await
        .map_err(|_| AuthorizeError::TimedOut(req.timeout))??;
    exchange(req, &code, &redirect_uri, &verifier).await
}

/// Waits for the browser's redirect with our `state`; other requests (a
/// favicon, a stray visitor) are answered and ignored.
async fn receive_code(listener: &TcpListener, state: &str) -> Result<String, AuthorizeError> {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let mut conn = BufReader::new(conn);
        let mut line = String::new();
        if conn.read_line(&mut line).await.is_err() {
            continue;
        }
        // The headers are not needed; read them so the browser sees a clean reply.
        loop {
            let mut header = String::new();
            match conn.read_line(&mut header).await {
                Ok(n) if n > 2 => continue,
                _ => break,
            }
        }
        let target = line.split_whitespace().nth(1).unwrap_or_default();
        let params = parse_query(target.split_once('?').map(|(_, q)| q).unwrap_or_default());
        let outcome = if params.get("state").map(String::as_str) != Some(state) {
            None
        } else if let Some(error) = params.get("error") {
            let description = params.get("error_description").cloned().unwrap_or_default();
            Some(Err(AuthorizeError::Refused(
                format!("{error} {description}").trim().to_owned(),
            )))
        } else {
            params.get("code").cloned().map(Ok)
        };
        let page = match &outcome {
            Some(Ok(_)) => "mailroom received the consent. You can close this window.",
            Some(Err(_)) => "The consent was refused; see the terminal.",
            None => "Not the redirect mailroom is waiting for.",
        };
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
            page.len()
        );
        let _ = conn.get_mut().write_all(reply.as_bytes()).await;
        let _ = conn.get_mut().shutdown().await;
        if let Some(outcome) = outcome {
            return outcome;
        }
    }
}

async fn exchange(
    req: &Request,
    code: &str,
    redirect_uri: &str,
    verifier: &str,
) -> Result<SecretString, AuthorizeError> {
    let http = http_client(None).map_err(|f| AuthorizeError::Unreachable(f.message))?;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("client_id", req.client_id.as_str()),
        ("client_secret", req.client_secret.expose_secret()),
        ("code_verifier", verifier),
    ];
    let response = http
        .post(&req.token_url)
        .form(&form)
        .send()
        .await
        .map_err(|e| AuthorizeError::Unreachable(e.to_string()))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        let code = body["error"].as_str().unwrap_or("no error code");
        let description = body["error_description"].as_str().unwrap_or_default();
        return Err(AuthorizeError::Exchange(
            format!("{code} {description}, HTTP {status}")
                .trim()
                .to_owned(),
        ));
    }
    body["refresh_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .map(|t| SecretString::from(t.to_owned()))
        .ok_or(AuthorizeError::NoRefreshToken(
            "for Microsoft include the offline_access scope; for Google revoke the app's access in the account settings and consent again",
        ))
}

/// The Secret to apply: what `auth.oauth2.secretRef` names, with the default keys.
pub fn secret_yaml(
    name: &str,
    namespace: Option<&str>,
    client_id: &str,
    client_secret: &SecretString,
    refresh_token: &SecretString,
) -> String {
    let mut metadata = serde_json::json!({ "name": name });
    if let Some(ns) = namespace {
        metadata["namespace"] = ns.into();
    }
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "stringData": {
            "client_id": client_id,
            "client_secret": client_secret.expose_secret(),
            "refresh_token": refresh_token.expose_secret(),
        },
    });
    serde_yaml::to_string(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_round_trip() {
        let v = "https://mail.google.com/ offline_access&x=1";
        let q = query(&[("scope", v), ("state", "abc")]);
        assert!(!q.contains(' ') && !q.contains("&x"), "{q}");
        let back = parse_query(&q);
        assert_eq!(back["scope"], v);
        assert_eq!(back["state"], "abc");
    }

    #[test]
    fn the_secret_reads_back_with_the_default_keys() {
        let yaml = secret_yaml(
            "gmail-oauth",
            Some("helpdesk"),
            "id.apps.googleusercontent.com",
            &SecretString::from("s".to_owned()),
            &SecretString::from("1//token: with colon".to_owned()),
        );
        let v: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(v["stringData"]["refresh_token"], "1//token: with colon");
        assert_eq!(v["metadata"]["namespace"], "helpdesk");
        assert_eq!(v["kind"], "Secret");
    }
}
