//! Secret references of a spec, resolved: passwords, OAuth2 grants, proxy
//! credentials and CA certificates, read from the resource's namespace.

use secrecy::SecretString;

use crate::api::{OAuth2Spec, ProxySpec, SecretKeyRef, TlsSpec};
use mailroom_core::config::{Credentials, normalize_password};
use mailroom_core::connection::{Failure, ProxySettings, Reason, TlsOptions};
use mailroom_core::oauth2::{Grant, Preset, Tokens, preset::url_allowed};
use mailroom_core::vocab::{AuthType, Provider};

/// Where secret values come from: the cluster's Secrets (controller) or Secret
/// manifests in a folder (standalone). Lookups are in the resource's namespace.
pub trait SecretSource {
    fn get(&self, name: &str, key: &str) -> Result<Vec<u8>, SecretError>;
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "Secret {name:?} was not found in the resource's namespace; create it or fix the reference"
    )]
    NotFound { name: String },
    #[error("Secret {name:?} has no key {key:?}; add the key or fix the reference")]
    KeyMissing { name: String, key: String },
    #[error("Secret {name:?} could not be read: {message}")]
    Unreadable { name: String, message: String },
}

impl From<SecretError> for Failure {
    fn from(e: SecretError) -> Self {
        Failure::new(Reason::SecretNotFound, e.to_string())
    }
}

/// Where a resource's secrets come from, and the OAuth2 grants in use.
#[derive(Clone, Copy)]
pub struct Sources<'a> {
    /// The resource's namespace: every reference is resolved in it.
    pub namespace: &'a str,
    pub secrets: &'a dyn SecretSource,
    pub config_maps: &'a dyn SecretSource,
    pub tokens: &'a Tokens,
}

/// The sign-in part of a spec.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AuthRef<'a> {
    pub type_: AuthType,
    pub username: &'a str,
    pub password: Option<&'a SecretKeyRef>,
    pub oauth2: Option<&'a OAuth2Spec>,
}

/// Reads a Secret key as text.
pub(crate) fn secret_text(
    source: &dyn SecretSource,
    r: &SecretKeyRef,
) -> Result<String, SecretError> {
    let bytes = source.get(&r.name, &r.key)?;
    String::from_utf8(bytes).map_err(|_| SecretError::Unreadable {
        name: r.name.clone(),
        message: format!("key {:?} is not UTF-8 text", r.key),
    })
}

/// Resolves credentials: the password, or the OAuth2 grant's shared session.
pub(crate) fn credentials(
    sources: Sources<'_>,
    provider: Provider,
    auth: AuthRef<'_>,
    proxy: Option<&ProxySettings>,
) -> Result<Credentials, Failure> {
    let username = auth.username.to_owned();
    match auth.type_ {
        AuthType::Basic => {
            let r = auth.password.ok_or_else(|| {
                Failure::new(
                    Reason::SecretNotFound,
                    "passwordSecretRef is required for Basic authentication",
                )
            })?;
            let raw = secret_text(sources.secrets, r)?;
            Ok(Credentials::Basic {
                username,
                password: normalize_password(&raw, provider),
            })
        }
        AuthType::OAuth2 => {
            let spec = auth.oauth2.ok_or_else(|| {
                Failure::new(
                    Reason::SecretNotFound,
                    "oauth2 is required for OAuth2 authentication: point oauth2.secretRef at the Secret with client id, client secret and refresh token",
                )
            })?;
            let grant = grant(sources.secrets, provider, spec, proxy)?;
            Ok(Credentials::OAuth2 {
                username,
                tokens: sources.tokens.session(sources.namespace, grant)?,
            })
        }
    }
}

/// The OAuth2 grant a spec names, with the provider's preset filling in the
/// token endpoint and scopes the spec leaves out.
fn grant(
    source: &dyn SecretSource,
    provider: Provider,
    spec: &OAuth2Spec,
    proxy: Option<&ProxySettings>,
) -> Result<Grant, Failure> {
    let key = |key: &str| {
        secret_text(
            source,
            &SecretKeyRef {
                name: spec.secret_ref.name.clone(),
                key: key.to_owned(),
            },
        )
        .map(|v| v.trim().to_owned())
    };
    let preset = Preset::of(provider);
    let token_url = spec
        .token_url
        .clone()
        .or_else(|| preset.map(|p| p.token_url.to_owned()))
        .ok_or_else(|| {
            Failure::new(
                Reason::InvalidConfig,
                "oauth2.tokenUrl is required with provider Other (presets know their token endpoint)",
            )
        })?;
    if !url_allowed(&token_url) {
        return Err(Failure::new(
            Reason::InvalidConfig,
            format!(
                "oauth2.tokenUrl {token_url:?} must be https:// (plain http only to a loopback address)"
            ),
        ));
    }
    let scopes = if spec.scopes.is_empty() {
        preset
            .map(|p| p.scopes.iter().map(|s| (*s).to_owned()).collect())
            .unwrap_or_default()
    } else {
        spec.scopes.clone()
    };
    Ok(Grant {
        secret: spec.secret_ref.name.clone(),
        refresh_key: spec.refresh_token_key.clone(),
        client_id: key(&spec.client_id_key)?,
        client_secret: SecretString::from(key(&spec.client_secret_key)?),
        refresh_token: SecretString::from(key(&spec.refresh_token_key)?),
        token_url,
        scopes,
        proxy: proxy.cloned(),
    })
}

/// The proxy from the spec, with its credentials (keys `username` and
/// `password`) read from its Secret.
pub(crate) fn proxy_settings(
    spec: Option<&ProxySpec>,
    source: &dyn SecretSource,
) -> Result<Option<ProxySettings>, Failure> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let credentials = match &spec.credentials_secret_ref {
        Some(r) => {
            let key = |key: &str| {
                secret_text(
                    source,
                    &SecretKeyRef {
                        name: r.name.clone(),
                        key: key.into(),
                    },
                )
            };
            Some((
                key("username")?.trim_end().to_owned(),
                SecretString::from(key("password")?.trim_end_matches(['\r', '\n']).to_owned()),
            ))
        }
        None => None,
    };
    ProxySettings::parse(&spec.url, credentials)
        .map(Some)
        .map_err(|e| Failure::new(Reason::ProxyFailed, e.to_string()))
}

/// TLS options from the spec, with the CA read from its Secret or ConfigMap.
pub(crate) fn tls_options(
    spec: Option<&TlsSpec>,
    source: &dyn SecretSource,
    config_maps: &dyn SecretSource,
) -> Result<TlsOptions, Failure> {
    let Some(spec) = spec else {
        return Ok(TlsOptions::default());
    };
    let extra_ca_pem = match (&spec.ca_secret_ref, &spec.ca_config_map_ref) {
        (Some(r), _) => Some(secret_text(source, r)?),
        (None, Some(r)) => Some(secret_text(
            config_maps,
            &SecretKeyRef {
                name: r.name.clone(),
                key: r.key.clone(),
            },
        )?),
        (None, None) => None,
    };
    Ok(TlsOptions {
        extra_ca_pem,
        server_name: spec.server_name.clone(),
        insecure_skip_verify: spec.insecure_skip_verify,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use secrecy::ExposeSecret;

    use super::*;

    struct Map(BTreeMap<(String, String), String>);

    impl SecretSource for Map {
        fn get(&self, name: &str, key: &str) -> Result<Vec<u8>, SecretError> {
            self.0
                .get(&(name.to_owned(), key.to_owned()))
                .map(|v| v.as_bytes().to_vec())
                .ok_or_else(|| SecretError::KeyMissing {
                    name: name.into(),
                    key: key.into(),
                })
        }
    }

    fn oauth_secret() -> Map {
        Map(["client_id", "client_secret", "refresh_token"]
            .into_iter()
            .map(|k| (("oauth".to_owned(), k.to_owned()), format!("{k}-value\n")))
            .collect())
    }

    fn spec(token_url: Option<&str>) -> OAuth2Spec {
        serde_json::from_value(serde_json::json!({
            "secretRef": {"name": "oauth"},
            "tokenUrl": token_url,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn presets_fill_in_the_token_endpoint_and_mail_scopes() {
        let g = grant(&oauth_secret(), Provider::Microsoft365, &spec(None), None).unwrap();
        assert_eq!(
            g.token_url,
            "https://login.microsoftonline.com/common/oauth2/v2.0/token"
        );
        assert!(
            g.scopes
                .iter()
                .any(|s| s.ends_with("IMAP.AccessAsUser.All"))
        );
        assert!(g.scopes.iter().any(|s| s == "offline_access"));
        assert_eq!(g.refresh_token.expose_secret(), "refresh_token-value");
        let g = grant(&oauth_secret(), Provider::Gmail, &spec(None), None).unwrap();
        assert_eq!(g.token_url, "https://oauth2.googleapis.com/token");
        assert_eq!(g.scopes, ["https://mail.google.com/"]);
        // A tenant of one's own overrides the preset's endpoint.
        let own = "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/token";
        let g = grant(
            &oauth_secret(),
            Provider::Microsoft365,
            &spec(Some(own)),
            None,
        )
        .unwrap();
        assert_eq!(g.token_url, own);
    }

    #[test]
    fn other_providers_need_a_token_endpoint_over_https() {
        let e = grant(&oauth_secret(), Provider::Other, &spec(None), None).unwrap_err();
        assert!(e.message.contains("tokenUrl is required"), "{}", e.message);
        let e = grant(
            &oauth_secret(),
            Provider::Other,
            &spec(Some("http://idp.example.com/token")),
            None,
        )
        .unwrap_err();
        assert!(e.message.contains("must be https"), "{}", e.message);
        let e = grant(&Map(BTreeMap::new()), Provider::Gmail, &spec(None), None).unwrap_err();
        assert_eq!(e.reason, Reason::SecretNotFound);
    }
}
