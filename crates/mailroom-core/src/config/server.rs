//! What every server needs to connect: endpoint, credentials, TLS choices and
//! timeouts, as resolved from a spec and its Secrets.

use std::sync::Arc;

use secrecy::SecretString;

use super::Endpoint;
use crate::connection::{Failure, ProxySettings, Reason, Timeouts, TlsOptions};
use crate::oauth2::{TokenInfo, TokenSession};
use crate::vocab::Provider;

/// How to sign in. Debug never shows the password or a token.
#[derive(Clone, Debug)]
pub enum Credentials {
    Basic {
        username: String,
        password: SecretString,
    },
    /// SASL XOAUTH2/OAUTHBEARER with access tokens from the grant's session.
    OAuth2 {
        username: String,
        tokens: Arc<TokenSession>,
    },
}

impl Credentials {
    pub fn username(&self) -> &str {
        match self {
            Self::Basic { username, .. } | Self::OAuth2 { username, .. } => username,
        }
    }

    /// The OAuth2 grant's token times, for status and metrics.
    pub fn token_info(&self) -> Option<TokenInfo> {
        match self {
            Self::OAuth2 { tokens, .. } => Some(tokens.info()),
            Self::Basic { .. } => None,
        }
    }
}

/// Everything needed to reach and sign in to one server.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub endpoint: Endpoint,
    pub provider: Provider,
    pub credentials: Credentials,
    pub tls: TlsOptions,
    /// The proxy to connect through, if any.
    pub proxy: Option<ProxySettings>,
    pub timeouts: Timeouts,
}

/// A refused sign-in: throttled when the server says the account has too
/// many connections or is busy (Gmail's `[ALERT] Too many simultaneous
/// connections`, `[UNAVAILABLE]`/`[THROTTLED]` codes, Dovecot's `Maximum number
/// of connections from user+IP exceeded`, POP3's `[IN-USE]`/`[SYS/TEMP]`),
/// which is waited out; otherwise refused credentials.
pub fn refused_sign_in(provider: Provider, server_said: &str) -> Failure {
    let said = server_said.to_ascii_lowercase();
    let busy = [
        "[unavailable]",
        "[throttled]",
        "[in-use]",
        "[sys/temp]",
        "too many",
        "maximum number of connections",
    ]
    .iter()
    .any(|m| said.contains(m));
    if busy {
        Failure::new(
            Reason::Throttled,
            format!(
                "the server turned the sign-in away for now ({}): the account has too many connections or the server is busy; retrying after a longer wait",
                server_said.trim()
            ),
        )
    } else {
        Failure::new(
            Reason::AuthenticationFailed,
            authentication_hint(provider, server_said),
        )
    }
}

/// The message for a refused sign-in. For Gmail it is the help page's own
/// troubleshooting advice, so that nobody needs to look it up.
pub fn authentication_hint(provider: Provider, server_said: &str) -> String {
    let said = server_said.trim();
    match provider {
        Provider::Gmail => format!(
            "Gmail refused the sign-in ({said}). Use a 16-character App Password, not the Google account password: App Passwords need 2-Step Verification (Google Account > Security > 2-Step Verification), then generate one at Google Account > Security > App Passwords and put it in the Secret. If App Passwords is not visible, 2-Step Verification is off or a Workspace admin has disabled App Passwords (use OAuth2 then). Also check that IMAP or POP3 is enabled in Gmail settings > Forwarding and POP/IMAP."
        ),
        Provider::Microsoft365 => format!(
            "Microsoft 365 refused the sign-in ({said}). Basic authentication is turned off there: use auth.type OAuth2."
        ),
        Provider::Other => format!(
            "the server refused the sign-in ({said}); check the username (auth.username, default: email) and the password in the Secret"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_server_throttles_and_anything_else_is_refused_credentials() {
        for busy in [
            "[ALERT] Too many simultaneous connections. (Failure)",
            "[UNAVAILABLE] Maximum number of connections from user+IP exceeded (mail_max_userip_connections=10)",
            "[THROTTLED] Account exceeded command or bandwidth limits",
            "[IN-USE] Mailbox is locked by another POP3 session",
            "[SYS/TEMP] Try again later",
        ] {
            let f = refused_sign_in(Provider::Gmail, busy);
            assert_eq!(f.reason, Reason::Throttled, "{busy}");
            assert!(f.message.contains(busy), "{}", f.message);
        }
        for refused in [
            "[AUTHENTICATIONFAILED] Invalid credentials (Failure)",
            "[AUTH] Authentication failed.",
        ] {
            let f = refused_sign_in(Provider::Gmail, refused);
            assert_eq!(f.reason, Reason::AuthenticationFailed, "{refused}");
            assert!(f.message.contains("App Password"), "{}", f.message);
        }
    }
}
