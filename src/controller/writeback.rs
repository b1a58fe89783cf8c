//! Writing a rotated OAuth2 refresh token back into its Secret: read, check
//! that the key still holds the token we used, replace it with the
//! resourceVersion we read, so a concurrent change (an admin re-consenting)
//! makes the write fail instead of being overwritten.

use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};
use secrecy::{ExposeSecret, SecretString};

use super::MANAGER;
use mailroom_core::oauth2::{WriteBack, WriteBackError};

pub struct SecretUpdate {
    pub client: Client,
}

impl WriteBack for SecretUpdate {
    fn write<'a>(
        &'a self,
        namespace: &'a str,
        secret: &'a str,
        key: &'a str,
        old: &'a SecretString,
        new: &'a SecretString,
    ) -> BoxFuture<'a, Result<(), WriteBackError>> {
        Box::pin(async move {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
            let failed = |what: &str, e: kube::Error| {
                WriteBackError(format!("{what} Secret {namespace}/{secret}: {e}"))
            };
            let mut object = api
                .get(secret)
                .await
                .map_err(|e| failed("cannot read", e))?;
            let data = object.data.get_or_insert_with(Default::default);
            let holds_old = data
                .get(key)
                .is_some_and(|v| String::from_utf8_lossy(&v.0).trim() == old.expose_secret());
            if !holds_old {
                return Err(WriteBackError(format!(
                    "Secret {namespace}/{secret} key {key:?} no longer holds the refresh token mailroom used (changed meanwhile?); left as it is"
                )));
            }
            data.insert(
                key.to_owned(),
                ByteString(new.expose_secret().as_bytes().to_vec()),
            );
            // stringData would win over data on the server; it was merged into data on write.
            object.string_data = None;
            api.replace(
                secret,
                &PostParams {
                    field_manager: Some(MANAGER.to_owned()),
                    ..PostParams::default()
                },
                &object,
            )
            .await
            .map(drop)
            .map_err(|e| failed("cannot update", e))
        })
    }
}
