//! The words the core and the resource types share: providers, protocols,
//! security and auth types, filter types, processing choices and connection
//! stages. Plain serde and JSON-schema types, so that the resource types
//! reuse them as they are and the CRDs describe them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How the connection is encrypted. SSL is implicit TLS from the first byte
/// (IMAPS 993, POP3S 995, SMTPS 465). TLS is STARTTLS on the plain port (IMAP 143,
/// POP3 110, SMTP submission 587); it is required, so a server that does not offer
/// STARTTLS fails the connection test and nothing is ever sent in clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SecurityType {
    #[serde(rename = "SSL")]
    Ssl,
    #[serde(rename = "TLS")]
    Tls,
}

/// The mail provider. A preset (Gmail, Microsoft365) fills in `server` from the
/// protocol; Other requires `server`. Microsoft365 accepts OAuth2 only, since
/// Microsoft has turned Basic authentication off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Provider {
    Gmail,
    Microsoft365,
    #[default]
    Other,
}

/// How mailroom signs in. Basic is a username and password (for Gmail: a
/// 16-character App Password, which needs 2-Step Verification). OAuth2 is SASL
/// XOAUTH2/OAUTHBEARER with an access token refreshed from a refresh token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum AuthType {
    #[default]
    Basic,
    OAuth2,
}

/// Filter Type. Allow accepts only what matches an entry (all else is blocked);
/// Ignore silently discards what matches (all else is allowed). A rejection is
/// still recorded in status, events and metrics; "silently" means no bounce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum FilterType {
    Allow,
    Ignore,
}

/// Protocol used to read the mailbox. The protocol must be enabled on the account
/// (Gmail: Settings > See all settings > Forwarding and POP/IMAP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum IncomingProtocol {
    #[default]
    #[serde(rename = "IMAP")]
    Imap,
    #[serde(rename = "POP3")]
    Pop3,
}

/// What happens to a message on the server once its ticket is durably accepted
/// (or once it was rejected by the filter, which is judged only once). IMAP:
/// MarkSeen (default), Move to `moveTo`, or Delete. POP3: Keep (default; the UIDL
/// cursor prevents duplicates) or Delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum AfterProcessing {
    MarkSeen,
    Move,
    Delete,
    Keep,
}

/// What the first start on a mailbox takes (the first session, with no cursor
/// saved yet). Unprocessed: what afterProcessing has not touched — unseen mail
/// with MarkSeen, everything in the folder otherwise, everything on a POP3
/// server. All: every message there, seen or not. NewOnly: nothing that is
/// there already, only mail that arrives from then on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum FirstStart {
    #[default]
    Unprocessed,
    All,
    NewOnly,
}

/// Active creates tickets and applies afterProcessing. DryRun connects, fetches and
/// judges every message, reports in status what would have become a ticket or been
/// rejected, and touches nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Mode {
    #[default]
    Active,
    DryRun,
}

/// Stages of the connection test, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ConnectionStage {
    /// Resolving the server's (or the proxy's) name.
    #[serde(rename = "DNS")]
    Dns,
    /// Opening the tunnel through the proxy.
    Proxy,
    /// Opening the TCP connection.
    #[serde(rename = "TCP")]
    Tcp,
    /// The TLS handshake (implicit TLS, or after STARTTLS).
    #[serde(rename = "TLS")]
    Tls,
    /// The server's greeting and capabilities.
    Greeting,
    /// Signing in.
    Login,
    /// IMAP SELECT of the mailbox, POP3 STAT, or SMTP EHLO after AUTH.
    Mailbox,
    /// Every stage passed.
    Done,
}

/// One stage of the connection test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageResult {
    /// The stage.
    pub stage: ConnectionStage,
    /// Whether it passed.
    pub ok: bool,
    /// How long it took, in milliseconds.
    pub latency_ms: i64,
    /// What was learnt or what failed, without secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Protocol used to send. SMTP is the only one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum OutgoingProtocol {
    #[default]
    #[serde(rename = "SMTP")]
    Smtp,
}

/// Which resource: its namespace and name. Shown as `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceId {
    pub namespace: String,
    pub name: String,
}

impl ResourceId {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ResourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
