//! Loop protection: automatic mail never becomes a ticket, and a per-sender rate
//! limit stops a loop that slips through the header checks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::sync::{read_unpoisoned, write_unpoisoned};

use super::{MessageFacts, Verdict, normalize};

/// At most `max` tickets per sender within `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub max: u32,
    pub window: Duration,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            max: 20,
            window: Duration::from_secs(3600),
        }
    }
}

/// Counts events per key in a sliding window. An event that names itself
/// (a Message-ID) counts once: a message judged again after its delivery
/// failed is the same message, not one more from its sender.
#[derive(Debug, Default)]
pub struct SlidingLimit {
    limit: RateLimit,
    seen: HashMap<String, VecDeque<(Instant, Option<String>)>>,
}

impl SlidingLimit {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            seen: HashMap::new(),
        }
    }

    pub(crate) fn window(&self) -> Duration {
        self.limit.window
    }

    /// Counts one event for `key` at `now`; when `key` already had `max` within
    /// the window, nothing is counted and the number seen is returned. An
    /// event `id` already counted within the window is admitted again
    /// without counting.
    pub(crate) fn admit(&mut self, key: &str, id: Option<&str>, now: Instant) -> Result<(), usize> {
        let window = self.limit.window;
        let times = self.seen.entry(key.to_owned()).or_default();
        while times
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= window)
        {
            times.pop_front();
        }
        if id.is_some() && times.iter().any(|(_, seen)| seen.as_deref() == id) {
            return Ok(());
        }
        if times.len() >= self.limit.max as usize {
            return Err(times.len());
        }
        times.push_back((now, id.map(str::to_owned)));
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct LoopProtection {
    own: OwnAddresses,
    limit: SlidingLimit,
}

/// The From addresses of our own outgoing servers, shared with a running
/// worker: an OutgoingEmailServer added or removed changes them in place,
/// without restarting the mailboxes of its namespace.
#[derive(Clone, Debug, Default)]
pub struct OwnAddresses(Arc<RwLock<HashSet<String>>>);

impl OwnAddresses {
    pub fn new(own: &[String]) -> Self {
        let shared = Self::default();
        shared.set(own);
        shared
    }

    /// Replaces the addresses; every worker holding this handle sees them at
    /// its next message.
    pub fn set(&self, own: &[String]) {
        *write_unpoisoned(&self.0) = own.iter().map(|a| normalize::address(a)).collect();
    }

    fn contains(&self, key: &str) -> bool {
        read_unpoisoned(&self.0).contains(key)
    }
}

impl LoopProtection {
    /// `own` are the From addresses of our outgoing servers.
    pub fn new(own: OwnAddresses, limit: RateLimit) -> Self {
        Self {
            own,
            limit: SlidingLimit::new(limit),
        }
    }

    /// The header and sender checks; `None` when the message is not automatic.
    pub(crate) fn check(&self, facts: &MessageFacts) -> Option<Verdict> {
        if let Some(value) = &facts.auto_submitted
            && !value.eq_ignore_ascii_case("no")
        {
            return Some(Verdict::reject(
                "loop:autoSubmitted",
                format!("Auto-Submitted: {value} marks an automatic message"),
            ));
        }
        if facts.x_autoreply {
            return Some(Verdict::reject(
                "loop:autoReply",
                "X-Autoreply/X-Autorespond marks an automatic reply",
            ));
        }
        if let Some(p) = &facts.precedence
            && matches!(p.as_str(), "bulk" | "junk" | "list")
        {
            return Some(Verdict::reject(
                "loop:precedence",
                format!("Precedence: {p} marks bulk or list mail"),
            ));
        }
        if facts.delivery_report {
            return Some(Verdict::reject(
                "loop:deliveryReport",
                "a delivery status notification or bounce (multipart/report)",
            ));
        }
        if let Some(key) = &facts.sender_key {
            let local = key.split('@').next().unwrap_or_default();
            if local == "mailer-daemon" || local == "postmaster" {
                return Some(Verdict::reject(
                    "loop:systemSender",
                    format!("mail from {local} is a bounce or a system notice"),
                ));
            }
            if self.own.contains(key) {
                return Some(Verdict::reject(
                    "loop:ownAddress",
                    format!("mail from our own outgoing address {key}"),
                ));
            }
        }
        None
    }

    /// Counts a would-be ticket; refuses it when the sender is over the limit.
    pub(crate) fn rate_limit(&mut self, facts: &MessageFacts, now: Instant) -> Option<Verdict> {
        let key = facts.sender_key.as_ref()?;
        let seen = self
            .limit
            .admit(key, facts.message_id.as_deref(), now)
            .err()?;
        Some(Verdict::reject(
            "loop:rateLimit",
            format!(
                "{key} already opened {seen} tickets within {:?}: a mail loop is likely",
                self.limit.window()
            ),
        ))
    }
}
