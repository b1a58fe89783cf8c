//! The `IncomingEmailServer` kind: a mailbox that mailroom reads and turns into tickets.

use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    AuthSpec, HOST_PATTERN, LocalObjectRef, ProxySpec, SINGLE_LINE_PATTERN, SecretKeyRef, TlsSpec,
};
use super::status::IncomingEmailServerStatus;
use mailroom_core::vocab::{
    AfterProcessing, FilterType, FirstStart, IncomingProtocol, Mode, Provider, SecurityType,
};

/// Sender filter for incoming mail. Entries of all lists are OR: a message matches
/// when any one entry matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.emails) + size(self.domains) + size(self.keywords) > 0").message("a filter needs at least one entry in emails, domains or keywords; remove the filter to accept all mail"))]
pub struct IncomingFilter {
    /// Allow: only matching mail becomes a ticket. Ignore: matching mail is discarded
    /// without a bounce (and still recorded as a rejection).
    #[serde(rename = "type")]
    pub type_: FilterType,
    /// Sender addresses (the From header's address, not its display name), compared
    /// case-insensitively. Example: hr@company.com.
    #[serde(default)]
    #[schemars(length(max = 1000), inner(email, length(max = 320)))]
    pub emails: Vec<String>,
    /// Sender domains without `@`, compared case-insensitively after IDN
    /// normalisation. `*.example.com` also matches every subdomain.
    #[serde(default)]
    #[schemars(
        length(max = 1000),
        inner(pattern(r"^(\*\.)?[^@\s*/:]+$"), length(max = 253))
    )]
    pub domains: Vec<String>,
    /// Words or phrases matched case-insensitively in the subject and the text body
    /// (HTML bodies are converted to text first).
    #[serde(default)]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 200)))]
    pub keywords: Vec<String>,
}

/// Where tickets are delivered. Exactly one of webhook, directory or requestTracker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.webhook) ? 1 : 0) + (has(self.directory) ? 1 : 0) + (has(self.requestTracker) ? 1 : 0) == 1").message("set exactly one of webhook, directory or requestTracker"))]
pub struct SinkSpec {
    /// POST each ticket as JSON to a URL. Mail is marked processed only after a 2xx answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSinkSpec>,
    /// Write each ticket as a JSON file, atomically, named by its idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<DirectorySinkSpec>,
    /// Create tickets in Request Tracker 5 over its REST 2 API; replies become
    /// correspondence on their ticket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_tracker: Option<RequestTrackerSinkSpec>,
}

fn default_rt_timeout() -> Duration {
    std::time::Duration::from_secs(30).into()
}

fn default_category_field() -> String {
    "Category".into()
}

fn default_message_field() -> String {
    "Mailroom Message".into()
}

/// A Request Tracker 5 instance that receives tickets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestTrackerSinkSpec {
    /// RT's base URL (its `$WebBaseURL`), e.g. `https://rt.example.com`.
    #[schemars(pattern(r"^https?://[^\s]+$"), length(max = 2048))]
    pub url: String,
    /// Queue of new tickets. Default: `ticket.technicianGroup`, else `General`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200), pattern(SINGLE_LINE_PATTERN))]
    pub queue: Option<String>,
    /// Secret key holding an RT auth token (RT user → Auth Tokens) of a user
    /// who may create tickets, reply and set custom fields in the queue.
    pub token_secret_ref: SecretKeyRef,
    /// Ticket custom field that receives `ticket.category`. It must be
    /// applied to the queue (a Select field needs the value among its values).
    #[serde(default = "default_category_field")]
    #[schemars(length(min = 1, max = 200), pattern(SINGLE_LINE_PATTERN))]
    pub category_field: String,
    /// Ticket custom field where mailroom records the key of every message it
    /// added to the ticket, so that a retried delivery never adds it twice.
    /// Created (applied to the queue) when missing.
    #[serde(default = "default_message_field")]
    #[schemars(length(min = 1, max = 200), pattern(SINGLE_LINE_PATTERN))]
    pub message_field: String,
    /// RT's `$rtname`: replies tagged `[rtname #123]` in the subject thread to
    /// ticket 123, and acknowledgements carry the same tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100), pattern(r"^[^\s\[\]#]+$"))]
    pub rt_name: Option<String>,
    /// Time allowed for one request before it is retried (Go duration).
    #[serde(default = "default_rt_timeout")]
    #[schemars(with = "String", pattern(DURATION_PATTERN))]
    pub timeout: Duration,
    /// Tickets of one mailbox under way at once (RT on SQLite takes one
    /// write at a time). Default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max_in_flight: Option<u16>,
}

fn default_webhook_timeout() -> Duration {
    std::time::Duration::from_secs(10).into()
}

/// A webhook that receives tickets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSinkSpec {
    /// URL that receives an HTTP POST per ticket, with CloudEvents headers and an
    /// `Idempotency-Key` header.
    #[schemars(pattern(r"^https?://[^\s]+$"), length(max = 2048))]
    pub url: String,
    /// Secret key holding a Standard Webhooks signing key (`whsec_` followed by
    /// base64); each request then carries `webhook-id`, `webhook-timestamp` and
    /// `webhook-signature`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret_ref: Option<SecretKeyRef>,
    /// Time allowed for one request before it is retried (Go duration, e.g. `10s`).
    #[serde(default = "default_webhook_timeout")]
    #[schemars(with = "String", pattern(DURATION_PATTERN))]
    pub timeout: Duration,
    /// Tickets of one mailbox under way at once. Default 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max_in_flight: Option<u16>,
}

/// A directory on the operator's file system that receives tickets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DirectorySinkSpec {
    /// Directory path; created when missing.
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
}

/// How accepted mail becomes a ticket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketSpec {
    /// Technician Group copied onto every ticket created from this mailbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), pattern(SINGLE_LINE_PATTERN))]
    pub technician_group: Option<String>,
    /// Category copied onto every ticket created from this mailbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), pattern(SINGLE_LINE_PATTERN))]
    pub category: Option<String>,
    /// Regular expression whose first capture group is the ticket reference found in
    /// the subject, so that replies thread onto their ticket. Default `\[#(\d+)\]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub reference_pattern: Option<String>,
    /// Where tickets go. Defaults to the operator-wide sink (in standalone mode a
    /// directory). Without any sink nothing is fetched, and a condition says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkSpec>,
}

fn default_max_tickets_per_sender() -> i32 {
    20
}
fn default_loop_window() -> Duration {
    std::time::Duration::from_secs(3600).into()
}

/// Loop protection beyond the header checks (auto-replies, bounces and mail from
/// our own addresses never become tickets).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoopProtectionSpec {
    /// Most tickets one sender may open within `window`; more is taken for a mail
    /// loop and rejected (recorded with rule `loop:rateLimit`).
    #[serde(default = "default_max_tickets_per_sender")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_tickets_per_sender: i32,
    /// The window of the per-sender limit (Go duration, e.g. `1h`).
    #[serde(default = "default_loop_window")]
    #[schemars(with = "String", pattern(DURATION_PATTERN))]
    pub window: Duration,
}

impl Default for LoopProtectionSpec {
    fn default() -> Self {
        Self {
            max_tickets_per_sender: default_max_tickets_per_sender(),
            window: default_loop_window(),
        }
    }
}

/// Acknowledgements: an automatic answer to the requester once per new ticket,
/// sent through `outgoingServerRef`, threaded to the original message and
/// marked `Auto-Submitted: auto-replied`. Never sent for automatic mail (it
/// never becomes a ticket) and limited per sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcknowledgementSpec {
    /// Send acknowledgements (default false).
    #[serde(default)]
    pub enabled: bool,
    /// Subject; `{subject}` is replaced by the original subject and
    /// `{reference}` by the ticket's name from the sink (without it, ` [#id]`
    /// is appended when the sink gave one).
    #[serde(default = "default_ack_subject")]
    #[schemars(length(min = 1, max = 998), pattern(SINGLE_LINE_PATTERN))]
    pub subject: String,
    /// Plain-text body; `{subject}` and `{reference}` as in the subject.
    #[serde(default = "default_ack_text")]
    #[schemars(length(min = 1, max = 65536))]
    pub text: String,
    /// Most acknowledgements one sender gets within `window`.
    #[serde(default = "default_ack_max")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_per_sender: i32,
    /// The window of the per-sender limit (Go duration).
    #[serde(default = "default_loop_window")]
    #[schemars(with = "String", pattern(DURATION_PATTERN))]
    pub window: Duration,
    /// Mail that reached the server longer ago than this (its INTERNALDATE, or
    /// the newest Received header) gets no acknowledgement: a first start on a
    /// mailbox full of old mail must not answer every old sender (Go duration,
    /// default `1h`).
    #[serde(default = "default_ack_max_age")]
    #[schemars(with = "String", pattern(DURATION_PATTERN))]
    pub max_age: Duration,
}

impl Default for AcknowledgementSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            subject: default_ack_subject(),
            text: default_ack_text(),
            max_per_sender: default_ack_max(),
            window: default_loop_window(),
            max_age: default_ack_max_age(),
        }
    }
}

fn default_ack_max_age() -> Duration {
    std::time::Duration::from_secs(3600).into()
}

fn default_ack_subject() -> String {
    "Re: {subject}".into()
}
fn default_ack_text() -> String {
    "Thank you for your message \"{subject}\". We have received it and will answer as soon as we can.\n\nThis is an automatic reply.".into()
}
fn default_ack_max() -> i32 {
    3
}

/// Go duration: `30s`, `2m`, `1h30m`.
pub(crate) const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

fn default_true() -> bool {
    true
}
fn default_scan_interval() -> Duration {
    std::time::Duration::from_secs(120).into()
}
fn default_mailbox() -> String {
    "INBOX".into()
}
fn default_max_message_size() -> String {
    "25Mi".into()
}

/// A mailbox that mailroom reads (IMAP or POP3) and turns into helpdesk tickets.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "mailroom.dev",
    version = "v1alpha1",
    kind = "IncomingEmailServer",
    plural = "incomingemailservers",
    shortname = "ies",
    category = "mailroom",
    namespaced,
    status = "IncomingEmailServerStatus",
    derive = "PartialEq",
    doc = "A mailbox that mailroom reads over IMAP or POP3 and turns into helpdesk tickets.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Protocol","type":"string","jsonPath":".spec.protocol"}"#,
    printcolumn = r#"{"name":"Server","type":"string","jsonPath":".status.effective.server"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.provider != 'Other' || has(self.server)").message("server is required when provider is Other (a preset provider such as Gmail fills it in)").field_path(".server"))]
#[x_kube(validation = Rule::new("self.provider != 'Microsoft365' || self.auth.type == 'OAuth2'").message("Microsoft 365 has turned Basic authentication off: use auth.type OAuth2").field_path(".auth.type"))]
#[x_kube(validation = Rule::new("self.auth.type != 'OAuth2' || self.provider != 'Other' || (has(self.auth.oauth2) && has(self.auth.oauth2.tokenUrl))").message("auth.oauth2.tokenUrl is required with provider Other (presets know their token endpoint)").field_path(".auth"))]
#[x_kube(validation = Rule::new("!self.acknowledgements.enabled || has(self.outgoingServerRef)").message("acknowledgements need outgoingServerRef: name the OutgoingEmailServer that sends them").field_path(".acknowledgements.enabled"))]
#[x_kube(validation = Rule::new("!has(self.afterProcessing) || self.afterProcessing != 'Move' || has(self.moveTo)").message("moveTo is required when afterProcessing is Move").field_path(".moveTo"))]
#[x_kube(validation = Rule::new("!has(self.moveTo) || (has(self.afterProcessing) && self.afterProcessing == 'Move')").message("moveTo is only used when afterProcessing is Move").field_path(".moveTo"))]
#[x_kube(validation = Rule::new("!has(self.moveTo) || self.moveTo != self.mailbox").message("moveTo must differ from mailbox, or moved mail would be fetched again").field_path(".moveTo"))]
#[x_kube(validation = Rule::new("self.protocol != 'POP3' || !has(self.afterProcessing) || self.afterProcessing in ['Delete', 'Keep']").message("with POP3, afterProcessing must be Delete or Keep (POP3 has no flags and no folders)").field_path(".afterProcessing"))]
#[x_kube(validation = Rule::new("self.protocol != 'IMAP' || !has(self.afterProcessing) || self.afterProcessing != 'Keep'").message("with IMAP, afterProcessing must be MarkSeen, Move or Delete").field_path(".afterProcessing"))]
#[x_kube(validation = Rule::new("self.protocol != 'POP3' || self.mailbox == 'INBOX'").message("POP3 can only read INBOX; use IMAP to read another folder").field_path(".mailbox"))]
#[x_kube(validation = Rule::new("self.protocol != 'POP3' || !has(self.quarantineFolder)").message("quarantineFolder needs IMAP: POP3 has no folders, so bad messages are recorded and skipped").field_path(".quarantineFolder"))]
#[x_kube(validation = Rule::new("!has(self.quarantineFolder) || self.quarantineFolder != self.mailbox").message("quarantineFolder must differ from mailbox").field_path(".quarantineFolder"))]
pub struct IncomingEmailServerSpec {
    /// Human-friendly name shown in tickets and status; metadata.name is the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), pattern(SINGLE_LINE_PATTERN))]
    pub display_name: Option<String>,
    /// The mailbox address (for Gmail, the Gmail address used to sign in).
    #[schemars(email, length(max = 320))]
    pub email: String,
    /// IMAP or POP3. The protocol must be enabled on the account.
    #[serde(default)]
    pub protocol: IncomingProtocol,
    /// Email Provider: a preset fills in `server` (Gmail: imap.gmail.com or
    /// pop.gmail.com). Other requires `server`.
    #[serde(default)]
    pub provider: Provider,
    /// Mail server host name. Defaults from provider and protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(HOST_PATTERN))]
    pub server: Option<String>,
    /// Port. Defaults from protocol and securityType: IMAP 993 (SSL) / 143 (TLS),
    /// POP3 995 (SSL) / 110 (TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Security Type: SSL (implicit TLS) or TLS (STARTTLS, required).
    #[serde(default = "default_incoming_security")]
    pub security_type: SecurityType,
    /// Email Auth Type, Username and Password.
    pub auth: AuthSpec,
    /// Proxy Server. Absent means a direct connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySpec>,
    /// Custom CA, SNI override and (tests only) skipping verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Enabled: when false mailroom opens no connection at all, and a condition says so.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Primary: the namespace's primary incoming server. At most one per namespace;
    /// a second one gets a condition naming the conflict.
    #[serde(default)]
    pub primary: bool,
    /// Outgoing Email Server used for replies and acknowledgements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outgoing_server_ref: Option<LocalObjectRef>,
    /// Real Time Scanning: IMAP IDLE delivers new mail within a second. When false,
    /// or when the server lacks IDLE (and always with POP3), the mailbox is polled
    /// every scanInterval.
    #[serde(default = "default_true")]
    pub real_time_scanning: bool,
    /// Poll interval when not scanning in real time (Go duration, at least 10s).
    #[serde(default = "default_scan_interval")]
    #[schemars(with = "String", pattern(DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10s')").message("scanInterval must be at least 10s; use realTimeScanning for instant delivery"))]
    pub scan_interval: Duration,
    /// IMAP folder to read. POP3 always reads INBOX.
    #[serde(default = "default_mailbox")]
    #[schemars(length(min = 1, max = 1024), pattern(SINGLE_LINE_PATTERN))]
    pub mailbox: String,
    /// What to do with a message once processed. Default: MarkSeen (IMAP), Keep (POP3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_processing: Option<AfterProcessing>,
    /// What the first start on this mailbox takes: Unprocessed (default; unseen
    /// mail with MarkSeen, else everything there), All, or NewOnly (only mail
    /// arriving from then on). Later starts go on from the cursor.
    #[serde(default)]
    pub first_start: FirstStart,
    /// IMAP folder that processed mail is moved to when afterProcessing is Move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), pattern(SINGLE_LINE_PATTERN))]
    pub move_to: Option<String>,
    /// IMAP folder where unparseable or oversized mail is moved, so that one bad
    /// message never blocks the mailbox and is never destroyed. Default `Quarantine`,
    /// created when first needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), pattern(SINGLE_LINE_PATTERN))]
    pub quarantine_folder: Option<String>,
    /// Active, or DryRun to judge every message and touch nothing.
    #[serde(default)]
    pub mode: Mode,
    /// Largest message turned into a ticket (Kubernetes quantity, e.g. `25Mi`).
    /// Larger mail is quarantined (IMAP) or recorded and skipped (POP3).
    #[serde(default = "default_max_message_size")]
    #[schemars(pattern(r"^[1-9][0-9]*(Ki|Mi|Gi|k|M|G)?$"))]
    pub max_message_size: String,
    /// Filter Type, Emails, Domains and Keywords. Absent accepts all senders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<IncomingFilter>,
    /// Ticket fields copied from this server, and where tickets go.
    #[serde(default)]
    pub ticket: TicketSpec,
    /// Per-sender rate limit that stops a mail loop the header checks miss.
    #[serde(default)]
    pub loop_protection: LoopProtectionSpec,
    /// Acknowledgements to the requester of each new ticket (off by default).
    #[serde(default)]
    pub acknowledgements: AcknowledgementSpec,
}

fn default_incoming_security() -> SecurityType {
    SecurityType::Ssl
}
