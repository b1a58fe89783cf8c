//! A mailbox's counters and fetch lag, folded from its workers' events and
//! kept across restarts of its configuration.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Observer, WorkerEvent};
use crate::filter::{RejectionLog, RejectionRecord};
use crate::sync::unpoisoned;

/// Counters of a mailbox, folded from its workers' events.
#[derive(Debug)]
pub struct WorkerStats {
    pub fetched: AtomicU64,
    pub tickets_created: AtomicU64,
    pub rejected: AtomicU64,
    pub failed: AtomicU64,
    pub last_fetch_at: Mutex<Option<jiff::Timestamp>>,
    /// Rejections (filter, loop protection, sender), with counts per rule.
    pub rejections: Mutex<RejectionLog>,
    /// Judged messages by outcome and reason (both from small fixed sets).
    pub outcomes: Mutex<BTreeMap<(&'static str, String), u64>>,
    /// Failed sign-ins (connection through opening the mailbox) by reason.
    pub sign_in_failures: Mutex<BTreeMap<String, u64>>,
    /// Batches the sink could not take.
    pub sink_failures: AtomicU64,
    /// When the mailbox was last known to be fully taken.
    caught_up_at: Mutex<Option<jiff::Timestamp>>,
    /// Waiting in IDLE since then: new mail is taken as it arrives.
    idling: AtomicBool,
    /// When these counters began (the fetch lag before any pass).
    since: jiff::Timestamp,
}

impl Default for WorkerStats {
    fn default() -> Self {
        Self {
            fetched: AtomicU64::default(),
            tickets_created: AtomicU64::default(),
            rejected: AtomicU64::default(),
            failed: AtomicU64::default(),
            last_fetch_at: Mutex::default(),
            rejections: Mutex::default(),
            outcomes: Mutex::default(),
            sign_in_failures: Mutex::default(),
            sink_failures: AtomicU64::default(),
            caught_up_at: Mutex::default(),
            idling: AtomicBool::new(false),
            since: jiff::Timestamp::now(),
        }
    }
}

/// A filter rule's name without the entry it matched (`keywords[3]` →
/// `keywords`), so that the metric's reason label stays a small set.
fn rule_class(rule: &str) -> String {
    rule.split('[').next().unwrap_or(rule).to_owned()
}

impl WorkerStats {
    /// How far behind the mailbox mailroom may be: nothing while a session
    /// waits in IDLE, else the time since it last took everything (or since
    /// the start, before the first pass).
    pub fn fetch_lag(&self, now: jiff::Timestamp) -> Duration {
        if self.idling.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let since = unpoisoned(&self.caught_up_at).unwrap_or(self.since);
        Duration::try_from(now.duration_since(since)).unwrap_or_default()
    }

    /// A session that waited in IDLE was current until `at`.
    fn leave_idle(&self, at: jiff::Timestamp) {
        if self.idling.swap(false, Ordering::Relaxed) {
            *unpoisoned(&self.caught_up_at) = Some(at);
        }
    }

    fn count(&self, outcome: &'static str, reason: String) {
        *unpoisoned(&self.outcomes)
            .entry((outcome, reason))
            .or_default() += 1;
    }

    /// Counts what `event` tells.
    pub(crate) fn fold(&self, event: &WorkerEvent) {
        match event {
            WorkerEvent::Fetched { count, at } => {
                self.fetched.fetch_add(*count as u64, Ordering::Relaxed);
                *unpoisoned(&self.last_fetch_at) = Some(*at);
                self.leave_idle(*at);
            }
            WorkerEvent::Judged {
                message_id,
                sender,
                verdict,
                dry_run,
                at,
            } if !verdict.accepted => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                self.count("rejected", rule_class(&verdict.rule));
                unpoisoned(&self.rejections).record(RejectionRecord {
                    at: *at,
                    sender: sender.clone(),
                    recipient: None,
                    message_id: message_id.clone(),
                    rule: verdict.rule.clone(),
                    reason: if *dry_run {
                        format!("(dry run) {}", verdict.reason)
                    } else {
                        verdict.reason.clone()
                    },
                });
            }
            WorkerEvent::TicketCreated { .. } => {
                self.tickets_created.fetch_add(1, Ordering::Relaxed);
                self.count("ticket", "accepted".into());
            }
            WorkerEvent::ReplyDelivered { .. } => self.count("reply", "accepted".into()),
            WorkerEvent::TicketRejected { .. } => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.count("sinkRejected", "sink".into());
            }
            WorkerEvent::Quarantined { kind, .. } => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.count("quarantined", kind.as_str().into());
            }
            WorkerEvent::ConnectionFailed { report, .. } => {
                *unpoisoned(&self.sign_in_failures)
                    .entry(report.reason.to_string())
                    .or_default() += 1;
                self.leave_idle(jiff::Timestamp::now());
            }
            WorkerEvent::SinkUnavailable { .. } => {
                self.sink_failures.fetch_add(1, Ordering::Relaxed);
                self.leave_idle(jiff::Timestamp::now());
            }
            WorkerEvent::CaughtUp { at, idle } => {
                *unpoisoned(&self.caught_up_at) = Some(*at);
                self.idling.store(*idle, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Folds events into `stats`, then hands them on.
pub struct Counted<O> {
    pub stats: Arc<WorkerStats>,
    pub inner: O,
}

impl<O: Observer> Observer for Counted<O> {
    fn observe(&self, event: WorkerEvent) {
        self.stats.fold(&event);
        self.inner.observe(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::{Probe, Reason};

    fn failed() -> WorkerEvent {
        let report = Probe::new().finish(Err(crate::connection::Failure::new(
            Reason::ConnectionRefused,
            "refused",
        )));
        WorkerEvent::ConnectionFailed {
            report,
            retry_in: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_fetch_lag_is_nothing_in_idle_and_grows_from_the_last_current_moment() {
        let stats = WorkerStats::default();
        let start = jiff::Timestamp::now();
        let later = |s: i64| {
            start
                .checked_add(jiff::SignedDuration::from_secs(s))
                .unwrap()
        };
        assert!(
            stats.fetch_lag(later(5)) >= Duration::from_secs(4),
            "before any pass"
        );
        stats.fold(&WorkerEvent::CaughtUp {
            at: start,
            idle: true,
        });
        assert_eq!(
            stats.fetch_lag(later(3600)),
            Duration::ZERO,
            "IDLE is current"
        );
        // New mail after an hour in IDLE: current until then, not an hour behind.
        stats.fold(&WorkerEvent::Fetched {
            count: 1,
            at: later(3600),
        });
        assert_eq!(stats.fetch_lag(later(3602)), Duration::from_secs(2));
        stats.fold(&WorkerEvent::CaughtUp {
            at: later(3602),
            idle: false,
        });
        assert_eq!(
            stats.fetch_lag(later(3662)),
            Duration::from_secs(60),
            "polling"
        );
        stats.fold(&WorkerEvent::CaughtUp {
            at: later(3662),
            idle: true,
        });
        stats.fold(&failed());
        let lag = stats.fetch_lag(
            jiff::Timestamp::now()
                .checked_add(jiff::SignedDuration::from_secs(30))
                .unwrap(),
        );
        assert!(
            lag >= Duration::from_secs(29),
            "an outage counts from its start: {lag:?}"
        );
        assert_eq!(
            unpoisoned(&stats.sign_in_failures).get("ConnectionRefused"),
            Some(&1)
        );
    }

    #[test]
    fn outcomes_carry_the_rule_without_its_entry() {
        assert_eq!(rule_class("keywords[3]"), "keywords");
        assert_eq!(rule_class("loop:autoReply"), "loop:autoReply");
    }
}
