//! The submission endpoint's authenticator in a cluster: tokens from the token
//! file first, then ServiceAccount tokens that the API server vouches for with a
//! TokenReview for our audience (a token minted for another service is refused).
//! A ServiceAccount may send in its own namespace only. Answers are cached
//! briefly, by the token's SHA-256, so a busy client costs one review a while.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::submission::{Authenticator, Denied, SubmissionTokens};
use mailroom_core::sync::unpoisoned;

/// The audience ServiceAccount tokens must be issued for, unless configured.
pub const DEFAULT_AUDIENCE: &str = "mailroom";
/// How long a review's answer is reused.
const CACHE_FOR: Duration = Duration::from_secs(10);
/// Answers kept at most; expired ones go first.
const CACHE_SIZE: usize = 4096;

/// A review's answer: when it was given, and the user the token stands for.
type Reviewed = (Instant, Option<String>);

/// File tokens first; any other token is reviewed by the API server.
pub struct ServiceAccounts {
    tokens: Option<SubmissionTokens>,
    client: Client,
    audience: String,
    /// SHA-256 of a token → when reviewed, and the user name it stands for.
    reviewed: Mutex<HashMap<[u8; 32], Reviewed>>,
}

impl ServiceAccounts {
    pub fn new(tokens: Option<SubmissionTokens>, client: Client, audience: &str) -> Self {
        Self {
            tokens,
            client,
            audience: audience.to_owned(),
            reviewed: Mutex::new(HashMap::new()),
        }
    }

    /// The ServiceAccount a token stands for, if the API server vouches for it
    /// for our audience.
    async fn review(&self, token: &str) -> Result<Option<String>, Denied> {
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some((at, user)) = unpoisoned(&self.reviewed).get(&key)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(user.clone());
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                tracing::warn!("TokenReview failed, refusing the request: {e}");
                Denied::Unauthenticated
            })?;
        let status = answer.status.unwrap_or_default();
        let for_us = status
            .audiences
            .as_ref()
            .is_some_and(|a| a.contains(&self.audience));
        let user = (status.authenticated == Some(true) && for_us)
            .then(|| status.user.and_then(|u| u.username))
            .flatten();
        let mut cache = unpoisoned(&self.reviewed);
        if cache.len() >= CACHE_SIZE {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_FOR);
        }
        if cache.len() < CACHE_SIZE {
            cache.insert(key, (Instant::now(), user.clone()));
        }
        Ok(user)
    }
}

impl fmt::Debug for ServiceAccounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccounts")
            .field("tokens", &self.tokens)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// The namespace of a ServiceAccount user name (`system:serviceaccount:NS:NAME`).
fn service_account_namespace(username: &str) -> Option<&str> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    (!namespace.is_empty() && !name.is_empty()).then_some(namespace)
}

impl Authenticator for ServiceAccounts {
    fn check<'a>(
        &'a self,
        bearer: Option<&'a str>,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<(), Denied>> {
        Box::pin(async move {
            if let Some(tokens) = &self.tokens {
                match tokens.check(bearer, namespace) {
                    Err(Denied::Unauthenticated) => {}
                    decided => return decided,
                }
            }
            let token = bearer
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or(Denied::Unauthenticated)?;
            let username = self.review(token).await?.ok_or(Denied::Unauthenticated)?;
            match service_account_namespace(&username) {
                Some(ns) if ns == namespace => Ok(()),
                _ => Err(Denied::Forbidden),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_names() {
        assert_eq!(
            service_account_namespace("system:serviceaccount:helpdesk:app"),
            Some("helpdesk")
        );
        assert_eq!(
            service_account_namespace("system:serviceaccount::app"),
            None
        );
        assert_eq!(service_account_namespace("alice"), None);
    }
}
