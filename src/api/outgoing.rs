//! The `OutgoingEmailServer` kind: an SMTP account that mailroom sends helpdesk mail through.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{
    HOST_PATTERN, OAuth2Spec, ProxySpec, SINGLE_LINE_PATTERN, SecretKeyRef, TlsSpec,
};
use super::status::OutgoingEmailServerStatus;
use mailroom_core::vocab::{AuthType, FilterType, OutgoingProtocol, Provider, SecurityType};

/// Authentication Needed, Email Auth Type, Username and Password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.required || self.type != 'Basic' || has(self.passwordSecretRef)").message("passwordSecretRef is required when authentication is required and type is Basic: point it at the Secret key that holds the App Password").field_path(".passwordSecretRef"))]
#[x_kube(validation = Rule::new("!self.required || self.type != 'OAuth2' || has(self.oauth2)").message("oauth2 is required when type is OAuth2: point oauth2.secretRef at the Secret with client id, client secret and refresh token").field_path(".oauth2"))]
#[x_kube(validation = Rule::new("self.type == 'OAuth2' || !has(self.oauth2)").message("oauth2 is only used when type is OAuth2").field_path(".oauth2"))]
pub struct AuthenticationSpec {
    /// Authentication Needed: sign in before sending (default true).
    #[serde(default = "default_true")]
    pub required: bool,
    /// Email Auth Type: Basic (username + App Password) or OAuth2.
    #[serde(default, rename = "type")]
    pub type_: AuthType,
    /// Username to sign in with. Defaults to `email`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 320), pattern(SINGLE_LINE_PATTERN))]
    pub username: Option<String>,
    /// Secret key holding the password (for Gmail the 16-character App Password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// OAuth2 credentials, for type OAuth2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Spec>,
}

/// Recipient filter. Every recipient (To, Cc, Bcc) is judged on its own; entries
/// are OR. A message left with no recipient is not sent and is reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.emails) + size(self.domains) > 0").message("a filter needs at least one entry in emails or domains; remove the filter to send to everyone"))]
pub struct RecipientFilter {
    /// Allow: send only to matching recipients. Ignore: silently drop matching recipients.
    #[serde(rename = "type")]
    pub type_: FilterType,
    /// Recipient addresses, compared case-insensitively. Example: hr@company.com.
    #[serde(default)]
    #[schemars(length(max = 1000), inner(email, length(max = 320)))]
    pub emails: Vec<String>,
    /// Recipient domains without `@`; `*.example.com` also matches every subdomain.
    #[serde(default)]
    #[schemars(
        length(max = 1000),
        inner(pattern(r"^(\*\.)?[^@\s*/:]+$"), length(max = 253))
    )]
    pub domains: Vec<String>,
}

fn default_true() -> bool {
    true
}

fn default_outgoing_security() -> SecurityType {
    SecurityType::Tls
}

/// An SMTP account that mailroom sends helpdesk mail through.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "mailroom.dev",
    version = "v1alpha1",
    kind = "OutgoingEmailServer",
    plural = "outgoingemailservers",
    shortname = "oes",
    category = "mailroom",
    namespaced,
    status = "OutgoingEmailServerStatus",
    derive = "PartialEq",
    doc = "An SMTP account that mailroom sends helpdesk mail through.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Protocol","type":"string","jsonPath":".spec.protocol"}"#,
    printcolumn = r#"{"name":"Server","type":"string","jsonPath":".status.effective.server"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.provider != 'Other' || has(self.server)").message("server is required when provider is Other (a preset provider such as Gmail fills it in)").field_path(".server"))]
#[x_kube(validation = Rule::new("self.provider != 'Microsoft365' || !self.authentication.required || self.authentication.type == 'OAuth2'").message("Microsoft 365 has turned SMTP Basic authentication off: use authentication.type OAuth2").field_path(".authentication.type"))]
#[x_kube(validation = Rule::new("!self.authentication.required || self.authentication.type != 'OAuth2' || self.provider != 'Other' || (has(self.authentication.oauth2) && has(self.authentication.oauth2.tokenUrl))").message("authentication.oauth2.tokenUrl is required with provider Other (presets know their token endpoint)").field_path(".authentication"))]
pub struct OutgoingEmailServerSpec {
    /// Human-friendly name shown in status; metadata.name is the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), pattern(SINGLE_LINE_PATTERN))]
    pub display_name: Option<String>,
    /// The From address of every message sent through this server.
    #[schemars(email, length(max = 320))]
    pub email: String,
    /// SMTP.
    #[serde(default)]
    pub protocol: OutgoingProtocol,
    /// Sender Name: the display name of the From address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), pattern(SINGLE_LINE_PATTERN))]
    pub sender_name: Option<String>,
    /// Email Provider: a preset fills in `server` (Gmail: smtp.gmail.com). Other requires `server`.
    #[serde(default)]
    pub provider: Provider,
    /// SMTP server host name. Defaults from provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(HOST_PATTERN))]
    pub server: Option<String>,
    /// Port. Defaults from securityType: 587 (TLS), 465 (SSL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Security Type: TLS (STARTTLS, required) or SSL (implicit TLS).
    #[serde(default = "default_outgoing_security")]
    pub security_type: SecurityType,
    /// Authentication Needed, Email Auth Type, Username and Password.
    pub authentication: AuthenticationSpec,
    /// Reply-To Email: replies go here. Point it at a monitored mailbox so that
    /// replies become tickets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(email, length(max = 320))]
    pub reply_to: Option<String>,
    /// Proxy Server. Absent means a direct connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySpec>,
    /// Custom CA, SNI override and (tests only) skipping verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Enabled: when false mailroom opens no connection at all, and a condition says so.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Primary: the fallback used when the chosen server is unavailable. At most
    /// one per namespace.
    #[serde(default)]
    pub primary: bool,
    /// Domain of generated Message-IDs. Default: the domain of `email` (never a pod host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(HOST_PATTERN))]
    pub message_id_domain: Option<String>,
    /// Filter Type, Emails and Domains for recipients. Absent sends to everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<RecipientFilter>,
}
