//! What every server needs to connect: endpoint, credentials from Secrets, TLS
//! choices and timeouts.

use secrecy::SecretString;

use super::{Endpoint, normalize_password};
use crate::api::{AuthType, Provider, ProxySpec, SecretKeyRef, TlsSpec};
use crate::connection::{Failure, ProxySettings, Reason, Timeouts, TlsOptions};

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

/// How to sign in. Debug never shows the password.
#[derive(Clone, Debug)]
pub enum Credentials {
    Basic {
        username: String,
        password: SecretString,
    },
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

/// Reads a Secret key as text.
pub fn secret_text(source: &dyn SecretSource, r: &SecretKeyRef) -> Result<String, SecretError> {
    let bytes = source.get(&r.name, &r.key)?;
    String::from_utf8(bytes).map_err(|_| SecretError::Unreadable {
        name: r.name.clone(),
        message: format!("key {:?} is not UTF-8 text", r.key),
    })
}

/// Resolves Basic credentials; OAuth2 is refused with a clear message until it is built.
pub fn credentials(
    source: &dyn SecretSource,
    provider: Provider,
    auth_type: AuthType,
    username: &str,
    password_ref: Option<&SecretKeyRef>,
) -> Result<Credentials, Failure> {
    match auth_type {
        AuthType::Basic => {
            let r = password_ref.ok_or_else(|| {
                Failure::new(
                    Reason::SecretNotFound,
                    "passwordSecretRef is required for Basic authentication",
                )
            })?;
            let raw = secret_text(source, r)?;
            Ok(Credentials::Basic {
                username: username.to_owned(),
                password: normalize_password(&raw, provider),
            })
        }
        AuthType::OAuth2 => Err(Failure::new(
            Reason::ProtocolError,
            "auth.type OAuth2 is not supported by this mailroom version yet; use Basic with an App Password",
        )),
    }
}

/// The proxy from the spec, with its credentials (keys `username` and
/// `password`) read from its Secret.
pub fn proxy_settings(
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
pub fn tls_options(
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
