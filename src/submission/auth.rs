//! Who may send: the endpoint asks an `Authenticator`. Standalone mode's is the
//! token file; the controller's (`controller::review`) also asks the API
//! server about ServiceAccount tokens.

use std::fmt;

use futures::future::BoxFuture;

use super::{Denied, SubmissionTokens};

pub trait Authenticator: Send + Sync + fmt::Debug {
    /// Ok when `bearer` may send in `namespace`.
    fn check<'a>(
        &'a self,
        bearer: Option<&'a str>,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<(), Denied>>;
}

impl Authenticator for SubmissionTokens {
    fn check<'a>(
        &'a self,
        bearer: Option<&'a str>,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<(), Denied>> {
        Box::pin(async move { SubmissionTokens::check(self, bearer, namespace) })
    }
}
