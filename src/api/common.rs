//! Spec pieces shared by both kinds: secret references, security, auth, proxy and TLS.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use mailroom_core::vocab::AuthType;

/// A Kubernetes object name (DNS subdomain, RFC 1123).
pub(crate) const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$";
/// A host name or IP literal: no scheme, no port, no path.
pub(crate) const HOST_PATTERN: &str = r"^[A-Za-z0-9]([-A-Za-z0-9.:]*[A-Za-z0-9])?$";
/// A single-line value: header values with CR or LF could inject headers.
pub(crate) const SINGLE_LINE_PATTERN: &str = r"^[^\r\n]*$";

/// Reference to one key of a Secret in the same namespace as the resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret. It must live in the same namespace as this resource.
    #[schemars(length(min = 1, max = 253), pattern(NAME_PATTERN))]
    pub name: String,
    /// Key inside the Secret's data whose value is used.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Reference to one key of a ConfigMap in the same namespace as the resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap. It must live in the same namespace as this resource.
    #[schemars(length(min = 1, max = 253), pattern(NAME_PATTERN))]
    pub name: String,
    /// Key inside the ConfigMap's data whose value is used.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Reference to an object of the same namespace, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectRef {
    /// Name of the referenced object, in the same namespace as this resource.
    #[schemars(length(min = 1, max = 253), pattern(NAME_PATTERN))]
    pub name: String,
}

fn default_client_id_key() -> String {
    "client_id".into()
}
fn default_client_secret_key() -> String {
    "client_secret".into()
}
fn default_refresh_token_key() -> String {
    "refresh_token".into()
}

/// OAuth2 credentials. The Secret holds the client id, the client secret and the
/// refresh token; a refresh token rotated by the provider is written back to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2Spec {
    /// Secret (same namespace) holding the client id, client secret and refresh token.
    pub secret_ref: LocalObjectRef,
    /// Key of the client id in the Secret.
    #[serde(default = "default_client_id_key")]
    #[schemars(length(min = 1))]
    pub client_id_key: String,
    /// Key of the client secret in the Secret.
    #[serde(default = "default_client_secret_key")]
    #[schemars(length(min = 1))]
    pub client_secret_key: String,
    /// Key of the refresh token in the Secret. mailroom writes a rotated token back here.
    #[serde(default = "default_refresh_token_key")]
    #[schemars(length(min = 1))]
    pub refresh_token_key: String,
    /// Token endpoint. Defaults from the provider (Google, Microsoft); required
    /// for provider Other. HTTPS; plain HTTP only to a loopback address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(
        r"^(https://[^\s]+|http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]+)?(/[^\s]*)?)$"
    ))]
    pub token_url: Option<String>,
    /// Scopes requested when refreshing. Defaults from the provider's mail scopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1)))]
    pub scopes: Vec<String>,
}

/// Sign-in of an incoming server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type != 'Basic' || has(self.passwordSecretRef)").message("passwordSecretRef is required when type is Basic: point it at the Secret key that holds the App Password").field_path(".passwordSecretRef"))]
#[x_kube(validation = Rule::new("self.type != 'OAuth2' || has(self.oauth2)").message("oauth2 is required when type is OAuth2: point oauth2.secretRef at the Secret with client id, client secret and refresh token").field_path(".oauth2"))]
#[x_kube(validation = Rule::new("self.type == 'OAuth2' || !has(self.oauth2)").message("oauth2 is only used when type is OAuth2").field_path(".oauth2"))]
pub struct AuthSpec {
    /// Email Auth Type: Basic (username + App Password) or OAuth2.
    #[serde(default, rename = "type")]
    pub type_: AuthType,
    /// Username to sign in with. Defaults to `email`; Gmail wants the full address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 320), pattern(SINGLE_LINE_PATTERN))]
    pub username: Option<String>,
    /// Secret key holding the password (for Gmail the 16-character App Password,
    /// never the account password). Spaces in a Gmail App Password are removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// OAuth2 credentials, for type OAuth2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Spec>,
}

/// A proxy that every connection of this server goes through. TLS runs end to end
/// through the tunnel, so the proxy never sees the password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxySpec {
    /// Proxy address: `socks5://host:port`, `socks5h://host:port` (the proxy resolves
    /// the mail server's name) or `http://host:port` (HTTP CONNECT).
    #[schemars(pattern(r"^(socks5h?|http)://[^/@\s]+:[0-9]{1,5}/?$"))]
    pub url: String,
    /// Secret (same namespace) with keys `username` and `password` for the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalObjectRef>,
}

/// TLS settings beyond the defaults (system and webpki roots, SNI = server).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.caSecretRef) && has(self.caConfigMapRef))").message("set caSecretRef or caConfigMapRef, not both"))]
pub struct TlsSpec {
    /// Secret key holding extra CA certificates (PEM) to trust, e.g. a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// ConfigMap key holding extra CA certificates (PEM) to trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_config_map_ref: Option<ConfigMapKeyRef>,
    /// Name sent as SNI and checked against the certificate, when it differs from `server`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(HOST_PATTERN))]
    pub server_name: Option<String>,
    /// Skip certificate verification. Only for tests: the password becomes readable
    /// to anyone in the path, and a warning condition says so while it is set.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}
