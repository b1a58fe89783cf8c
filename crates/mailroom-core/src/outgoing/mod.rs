//! Outgoing mail: the SMTP client and connection test, message building, the
//! recipient filter, per-server session pools and the fallback to the
//! namespace's primary server. Core code: no Kubernetes here.

pub mod ack;
pub mod message;
pub mod pool;
pub mod settings;
pub mod smtp;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use lettre::Address;
use serde::Serialize;

use crate::filter::{RejectionLog, RejectionRecord};
use crate::sync::{read_unpoisoned, unpoisoned, write_unpoisoned};
pub use message::{Checked, Identity, InvalidMessage, OutgoingMessage, new_message_id};
use pool::{AttemptError, Pool};
pub use settings::OutgoingSettings;
use smtp::{RcptAnswer, TransactionError};

/// Sessions per server at most.
pub const DEFAULT_POOL_SIZE: usize = 4;

/// Counters of one server, kept across restarts of its configuration.
#[derive(Debug)]
pub struct SendStats {
    /// Messages the server accepted (for at least one recipient).
    pub sent: AtomicU64,
    /// Recipients the filter blocked.
    pub blocked: AtomicU64,
    /// Attempts that failed: unreachable, refused sign-in, refused message,
    /// or every recipient answered "try again later" (4xx).
    pub failed: AtomicU64,
    /// Messages for this server that the primary sent instead.
    pub failovers: AtomicU64,
    pub last_sent_at: Mutex<Option<jiff::Timestamp>>,
    pub rejections: Mutex<RejectionLog>,
    /// Seconds each SMTP transaction took, accepted or not.
    pub duration: Histogram,
}

impl Default for SendStats {
    fn default() -> Self {
        Self {
            sent: AtomicU64::default(),
            blocked: AtomicU64::default(),
            failed: AtomicU64::default(),
            failovers: AtomicU64::default(),
            last_sent_at: Mutex::default(),
            rejections: Mutex::default(),
            // 10 ms to about 80 s: a local relay answers in milliseconds, a
            // slow provider with greylisting in tens of seconds.
            duration: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
        }
    }
}

/// One OutgoingEmailServer, ready to send.
#[derive(Debug)]
pub struct OutgoingServer {
    pub namespace: String,
    pub name: String,
    pub settings: OutgoingSettings,
    pub stats: Arc<SendStats>,
    pool: Pool,
}

impl OutgoingServer {
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        settings: OutgoingSettings,
        stats: Arc<SendStats>,
        pool_size: usize,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            settings,
            stats,
            pool: Pool::new(pool_size),
        }
    }

    fn identity(&self) -> Identity {
        Identity {
            email: self.settings.email.clone(),
            sender_name: self.settings.sender_name.clone(),
            reply_to: self.settings.reply_to.clone(),
        }
    }
}

/// What became of one recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// The server accepted the message for this recipient.
    Sent,
    /// The recipient filter blocked it; nothing was sent to it.
    Blocked,
    /// The server refused the recipient for good (5xx); no fallback.
    Refused,
    /// No server could take it now (unreachable, 4xx); try again later.
    Deferred,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecipientReport {
    pub address: String,
    pub outcome: Outcome,
    /// The server that took or refused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The answer to a send request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SendReport {
    pub message_id: String,
    /// The server asked for (or the primary when none was named).
    pub server: String,
    /// Whether the primary sent some or all of it instead.
    pub failover: bool,
    pub recipients: Vec<RecipientReport>,
}

impl SendReport {
    pub fn count(&self, outcome: Outcome) -> usize {
        self.recipients
            .iter()
            .filter(|r| r.outcome == outcome)
            .count()
    }
}

/// Requests that cannot be tried at all.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("invalid message: {0}")]
    Invalid(#[from] InvalidMessage),
    #[error(
        "OutgoingEmailServer {namespace}/{name} does not exist (or is not valid); check the name"
    )]
    NotFound { namespace: String, name: String },
    #[error(
        "namespace {namespace} has no usable primary OutgoingEmailServer; name a server or mark one primary: true"
    )]
    NoPrimary { namespace: String },
}

/// Every OutgoingEmailServer known to this process, by namespace and name.
#[derive(Debug, Default)]
pub struct Outbox {
    servers: RwLock<BTreeMap<(String, String), Arc<OutgoingServer>>>,
}

struct Attempt {
    done: Vec<RecipientReport>,
    /// Recipients no server has taken yet, and why.
    retry: Vec<(Address, String)>,
}

impl Outbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a server; sessions of a replaced one close when the
    /// sends in flight on them finish.
    pub fn insert(&self, server: OutgoingServer) {
        let key = (server.namespace.clone(), server.name.clone());
        self.write().insert(key, Arc::new(server));
    }

    pub fn remove(&self, namespace: &str, name: &str) {
        self.write()
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<OutgoingServer>> {
        self.read()
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The namespace's primary server. With two (a conflict status reports),
    /// the first by name, so that the choice is stable.
    pub(crate) fn primary(&self, namespace: &str) -> Option<Arc<OutgoingServer>> {
        self.read()
            .values()
            .find(|s| s.namespace == namespace && s.settings.primary && s.settings.enabled)
            .cloned()
    }

    fn read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, BTreeMap<(String, String), Arc<OutgoingServer>>> {
        read_unpoisoned(&self.servers)
    }

    fn write(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<(String, String), Arc<OutgoingServer>>> {
        write_unpoisoned(&self.servers)
    }

    /// Sends through `name` (or the primary). Recipients the chosen server
    /// cannot take now (unreachable, sign-in refused, 4xx) go to the
    /// namespace's primary; recipients refused for good (5xx) do not.
    pub async fn send(
        &self,
        namespace: &str,
        name: Option<&str>,
        message: &OutgoingMessage,
    ) -> Result<SendReport, SendError> {
        let local = message.message_id_local.clone();
        let message = message.validate()?;
        let recipients = message.recipients.clone();
        let primary = self.primary(namespace);
        let chosen = match name {
            Some(n) => self.get(namespace, n).ok_or_else(|| SendError::NotFound {
                namespace: namespace.to_owned(),
                name: n.to_owned(),
            })?,
            None => primary.clone().ok_or_else(|| SendError::NoPrimary {
                namespace: namespace.to_owned(),
            })?,
        };
        let domain = &chosen.settings.message_id_domain;
        let message_id = match &local {
            Some(local) => format!("<{local}@{domain}>"),
            None => new_message_id(domain),
        };
        let identity = chosen.identity();
        let first = attempt(&chosen, &message, &message_id, &identity, recipients).await?;
        let mut report = SendReport {
            message_id: message_id.clone(),
            server: chosen.name.clone(),
            failover: false,
            recipients: first.done,
        };
        let fallback = primary.filter(|p| p.name != chosen.name);
        match fallback {
            Some(primary) if !first.retry.is_empty() => {
                chosen.stats.failovers.fetch_add(1, Ordering::Relaxed);
                report.failover = true;
                tracing::warn!(
                    server = %chosen.name, primary = %primary.name, namespace,
                    "sending through the primary server instead: {}",
                    first.retry.first().map(|(_, why)| why.as_str()).unwrap_or_default()
                );
                // The primary sends as itself (its server may refuse a foreign
                // From); replies still go where the chosen server's would.
                let via = Identity {
                    reply_to: Some(
                        chosen
                            .settings
                            .reply_to
                            .clone()
                            .unwrap_or_else(|| chosen.settings.email.clone()),
                    ),
                    ..primary.identity()
                };
                // What the chosen server answered stays in the report: the
                // caller learns that it failed, not only that the primary sent.
                let reasons: BTreeMap<String, String> = first
                    .retry
                    .iter()
                    .map(|(a, why)| (a.to_string(), why.clone()))
                    .collect();
                let rest = first.retry.into_iter().map(|(a, _)| a).collect();
                let second = attempt(&primary, &message, &message_id, &via, rest).await?;
                report
                    .recipients
                    .extend(second.done.into_iter().map(|mut r| {
                        if r.detail.is_none()
                            && let Some(why) = reasons.get(&r.address)
                        {
                            r.detail = Some(format!("{} could not take it: {why}", chosen.name));
                        }
                        r
                    }));
                report.recipients.extend(
                    second
                        .retry
                        .into_iter()
                        .map(|(a, why)| deferred(a, &primary.name, why)),
                );
            }
            _ => report.recipients.extend(
                first
                    .retry
                    .into_iter()
                    .map(|(a, why)| deferred(a, &chosen.name, why)),
            ),
        }
        Ok(report)
    }
}

fn deferred(address: Address, server: &str, why: String) -> RecipientReport {
    RecipientReport {
        address: address.to_string(),
        outcome: Outcome::Deferred,
        server: Some(server.to_owned()),
        detail: Some(why),
    }
}

/// One server's try: the filter, then the SMTP transaction.
async fn attempt(
    server: &OutgoingServer,
    message: &Checked<'_>,
    message_id: &str,
    identity: &Identity,
    recipients: Vec<Address>,
) -> Result<Attempt, SendError> {
    let mut done = Vec::new();
    let mut allowed = Vec::new();
    for rcpt in recipients {
        let verdict = server
            .settings
            .filter
            .as_ref()
            .map(|f| f.judge_recipient(rcpt.as_ref()));
        match verdict {
            Some(v) if !v.accepted => {
                server.stats.blocked.fetch_add(1, Ordering::Relaxed);
                unpoisoned(&server.stats.rejections).record(RejectionRecord {
                    at: jiff::Timestamp::now(),
                    sender: None,
                    recipient: Some(rcpt.to_string()),
                    message_id: Some(message_id.to_owned()),
                    rule: v.rule.clone(),
                    reason: v.reason.clone(),
                });
                done.push(RecipientReport {
                    address: rcpt.to_string(),
                    outcome: Outcome::Blocked,
                    server: Some(server.name.clone()),
                    detail: Some(format!("{}: {}", v.rule, v.reason)),
                });
            }
            _ => allowed.push(rcpt),
        }
    }
    if allowed.is_empty() {
        return Ok(Attempt {
            done,
            retry: Vec::new(),
        });
    }
    if !server.settings.enabled {
        let why = format!("OutgoingEmailServer {} is disabled", server.name);
        return Ok(Attempt {
            done,
            retry: allowed.into_iter().map(|a| (a, why.clone())).collect(),
        });
    }
    let built = message.build(identity, message_id)?;
    let from: Address = identity.email.parse().map_err(|e| InvalidMessage {
        field: "email".into(),
        message: format!("the server's address is not valid: {e}"),
    })?;
    let began = std::time::Instant::now();
    let sent = server
        .pool
        .send(&server.settings, &from, &allowed, &built.bytes)
        .await;
    server.stats.duration.observe(began.elapsed().as_secs_f64());
    let mut retry = Vec::new();
    match sent {
        Ok(answers) => {
            if answers.contains(&RcptAnswer::Accepted) {
                server.stats.sent.fetch_add(1, Ordering::Relaxed);
                *unpoisoned(&server.stats.last_sent_at) = Some(jiff::Timestamp::now());
            } else if answers.iter().any(|a| matches!(a, RcptAnswer::Deferred(_))) {
                // "Try again later" for every recipient: the server did not
                // take the message, as much as when it is unreachable.
                server.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            for (rcpt, answer) in allowed.into_iter().zip(answers) {
                let (outcome, detail) = match answer {
                    RcptAnswer::Accepted => (Outcome::Sent, None),
                    RcptAnswer::Refused(why) => (Outcome::Refused, Some(why)),
                    RcptAnswer::Deferred(why) => {
                        retry.push((rcpt, why));
                        continue;
                    }
                };
                done.push(RecipientReport {
                    address: rcpt.to_string(),
                    outcome,
                    server: Some(server.name.clone()),
                    detail,
                });
            }
        }
        Err(AttemptError::Transaction(TransactionError::Refused(why))) => {
            server.stats.failed.fetch_add(1, Ordering::Relaxed);
            done.extend(allowed.into_iter().map(|rcpt| RecipientReport {
                address: rcpt.to_string(),
                outcome: Outcome::Refused,
                server: Some(server.name.clone()),
                detail: Some(why.clone()),
            }));
        }
        Err(e) => {
            server.stats.failed.fetch_add(1, Ordering::Relaxed);
            let why = e.to_string();
            retry.extend(allowed.into_iter().map(|a| (a, why.clone())));
        }
    }
    Ok(Attempt { done, retry })
}
