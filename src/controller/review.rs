//! The submission endpoint's authenticator in a cluster: tokens from the token
//! file first, then ServiceAccount tokens that the API server vouches for with a
//! TokenReview. A ServiceAccount may send in its own namespace only.

use std::fmt;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::submission::{Authenticator, Denied, SubmissionTokens};

/// File tokens first; any other token is reviewed by the API server.
pub struct ServiceAccounts {
    pub tokens: Option<SubmissionTokens>,
    pub client: Client,
}

impl fmt::Debug for ServiceAccounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccounts")
            .field("tokens", &self.tokens)
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
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_owned()),
                    ..TokenReviewSpec::default()
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
            if status.authenticated != Some(true) {
                return Err(Denied::Unauthenticated);
            }
            let username = status.user.and_then(|u| u.username).unwrap_or_default();
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
