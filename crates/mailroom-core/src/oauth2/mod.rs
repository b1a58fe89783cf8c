//! OAuth2 sign-in: access tokens refreshed from a refresh token (shared by every
//! server that names the same Secret, so a rotated refresh token is never used
//! twice), the SASL XOAUTH2/OAUTHBEARER responses built from them, provider
//! presets, and the authorization-code flow that obtains the first refresh
//! token. Nothing here knows IMAP, SMTP or Kubernetes; the adapters say where a
//! rotated refresh token is written back.

pub mod authorize;
pub mod preset;
pub mod sasl;
mod session;

pub use preset::Preset;
pub use session::{AccessToken, Grant, TokenInfo, TokenSession, Tokens, WriteBack, WriteBackError};

use std::future::Future;

use secrecy::SecretString;

use crate::connection::{Failure, Reason};

/// A server that lists sign-in mechanisms, but none that takes a token.
pub(crate) fn no_token_mechanism(protocol: &str, offered: &[String]) -> Failure {
    Failure::new(
        Reason::AuthenticationFailed,
        format!(
            "the {protocol} server offers neither OAUTHBEARER nor XOAUTH2 (it offers {}); it cannot take OAuth2 tokens, use Basic authentication",
            offered.join(" ")
        ),
    )
}

/// How one sign-in attempt with a token ended, other than signed in.
pub(crate) enum Attempt<S> {
    /// The server refused the token and the connection (`S`) can try again.
    Refused { said: String, conn: S },
    /// Anything else: the sign-in is over.
    Failed(Failure),
}

/// Signs in with the grant's access token and, if the server refuses it,
/// once more with a newer one (the cached token may have been revoked early).
/// A token refused right after it was issued is reported, not refreshed again.
pub(crate) async fn sign_in<S, T, F, Fut>(
    session: &TokenSession,
    conn: S,
    mut attempt: F,
) -> Result<T, Failure>
where
    F: FnMut(S, SecretString) -> Fut,
    Fut: Future<Output = Result<T, Attempt<S>>>,
{
    let refused = |said: &str| {
        Failure::new(
            Reason::AuthenticationFailed,
            format!(
                "the server refused the OAuth2 access token ({}); the provider issued it just now, so check that auth.username is the account that consented and that the client's scopes include mail access",
                said.trim()
            ),
        )
    };
    let access = session.access_token().await?;
    match attempt(conn, access.token.clone()).await {
        Ok(done) => Ok(done),
        Err(Attempt::Failed(f)) => Err(f),
        Err(Attempt::Refused { said, conn }) => match session.after_rejection(&access).await? {
            None => Err(refused(&said)),
            Some(newer) => match attempt(conn, newer.token).await {
                Ok(done) => Ok(done),
                Err(Attempt::Failed(f)) => Err(f),
                Err(Attempt::Refused { said, .. }) => Err(refused(&said)),
            },
        },
    }
}
