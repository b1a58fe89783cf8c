//! Status of both kinds: conditions, the connection test, counters and recent rejections.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use mailroom_core::vocab::{ConnectionStage, SecurityType, StageResult};

/// Observed state of an IncomingEmailServer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IncomingEmailServerStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, ConnectionVerified, FilterRejecting, and Reconciling/Stalled while True.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Settings in effect after defaults were applied (never written back into spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective: Option<EffectiveSettings>,
    /// Result of the last staged connection test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionStatus>,
    /// When the next connection attempt is due after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<Time>,
    /// Counters of the fetch worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<IncomingStats>,
    /// OAuth2 access token and refresh times, with auth.type OAuth2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Status>,
    /// With mode DryRun: what would have happened to the mail judged so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<DryRunReport>,
    /// The last rejected messages, newest first. Never bodies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub recent_rejections: Vec<Rejection>,
    /// The controller running the fetch worker. Another shard's controller
    /// waits for this claim to be cleared before it fetches (see Shards in
    /// docs/operations.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerHolder>,
}

/// A controller that runs (or last ran) a mailbox's fetch worker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerHolder {
    /// Its shard; absent: the controller for unlabelled resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Its leader election Lease, `namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

/// Observed state of an OutgoingEmailServer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutgoingEmailServerStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, ConnectionVerified, FilterRejecting, and Reconciling/Stalled while True.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Settings in effect after defaults were applied (never written back into spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective: Option<EffectiveSettings>,
    /// Result of the last staged connection test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionStatus>,
    /// When the next connection attempt is due after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<Time>,
    /// Counters of the send worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<OutgoingStats>,
    /// OAuth2 access token and refresh times, with authentication.type OAuth2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Status>,
    /// The last blocked recipients, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub recent_rejections: Vec<Rejection>,
}

/// OAuth2 sign-in as last seen. Never a token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2Status {
    /// When the current access token expires; mailroom refreshes it before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_expiry: Option<Time>,
    /// The last refresh the provider answered with an access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<Time>,
    /// The last time the provider rotated the refresh token; the new one is
    /// written back to the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<Time>,
    /// Why the last rotated refresh token could not be written back to the
    /// Secret (it is then held in memory only: fix the cause before a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_back_error: Option<String>,
}

/// Settings in effect after defaults were applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveSettings {
    /// Server host name in use.
    pub server: String,
    /// Port in use.
    pub port: i32,
    /// Security type in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_type: Option<SecurityType>,
    /// Username in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// How new mail is noticed: `IDLE`, or `Polling every <interval>` with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scanning: Option<String>,
    /// What happens to processed mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_processing: Option<String>,
}

/// The server certificate seen during the connection test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// Subject of the leaf certificate.
    pub subject: String,
    /// Issuer of the leaf certificate.
    pub issuer: String,
    /// Expiry of the leaf certificate.
    pub not_after: Time,
}

/// Result of the last staged connection test (the Test Connection button).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStatus {
    /// When the test ran.
    pub tested_at: Time,
    /// Total duration of the test, in milliseconds.
    pub latency_ms: i64,
    /// The last stage reached; Done when every stage passed.
    pub stage_reached: ConnectionStage,
    /// Each stage run, in order.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub stages: Vec<StageResult>,
    /// Capabilities the server announced (e.g. IDLE, UIDPLUS, AUTH=PLAIN).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub capabilities: Vec<String>,
    /// The server certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateStatus>,
}

/// Counters of a fetch worker since it started for this generation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IncomingStats {
    /// Messages fetched.
    pub fetched: i64,
    /// Tickets created (accepted by the sink).
    pub tickets_created: i64,
    /// Messages rejected by loop protection or the filter.
    pub rejected: i64,
    /// Messages that could not be processed (quarantined or skipped).
    pub failed: i64,
    /// Last successful fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetch_at: Option<Time>,
}

/// What DryRun found: messages judged, and what would have become of them. The
/// rejections themselves are in recentRejections, marked "(dry run)".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DryRunReport {
    /// Messages fetched and judged.
    pub judged: i64,
    /// Messages that would have become tickets.
    pub would_create_tickets: i64,
    /// Messages the filter or loop protection would have rejected.
    pub would_reject: i64,
    /// Messages that would have been quarantined (unparseable or oversized).
    pub would_quarantine: i64,
}

/// Counters of a send worker since it started for this generation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutgoingStats {
    /// Messages accepted by the SMTP server.
    pub sent: i64,
    /// Recipients blocked by the filter.
    pub blocked: i64,
    /// Messages that could not be sent.
    pub failed: i64,
    /// Messages sent through the primary server because this one was unavailable.
    pub failovers: i64,
    /// Last successful send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sent_at: Option<Time>,
}

/// One rejected message (incoming) or recipient (outgoing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    /// When it was rejected.
    pub at: Time,
    /// Sender address of a rejected incoming message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Recipient address blocked on an outgoing message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// Message-ID of the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The rule that decided, e.g. `domains[0]`, `noMatch`, `loop:autoSubmitted`.
    pub rule: String,
    /// Why, in words.
    pub reason: String,
}
