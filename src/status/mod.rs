//! Status computation shared by the controller and standalone mode: core
//! records in, the resource's status pieces out.

pub(crate) mod conditions;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use std::sync::atomic::{AtomicU64, Ordering};

use crate::api::{DryRunReport, IncomingStats, OAuth2Status, OutgoingStats, Rejection};
pub(crate) use conditions::{Health, conditions, connection_status, health_of};
use mailroom_core::filter::RejectionLog;
use mailroom_core::incoming::worker::WorkerStats;
use mailroom_core::oauth2::TokenInfo;
use mailroom_core::outgoing::SendStats;
use mailroom_core::sync::unpoisoned;

fn count(c: &AtomicU64) -> i64 {
    i64::try_from(c.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
}

/// `oauth2` of either kind, when it signs in with OAuth2.
pub(crate) fn oauth2_status(info: TokenInfo) -> OAuth2Status {
    OAuth2Status {
        access_token_expiry: info.expires_at.map(Time),
        last_refresh_time: info.last_refresh.map(Time),
        last_rotation_time: info.last_rotation.map(Time),
        write_back_error: info.write_back_error,
    }
}

/// `stats` of an IncomingEmailServer.
pub(crate) fn incoming_stats(stats: &WorkerStats) -> IncomingStats {
    IncomingStats {
        fetched: count(&stats.fetched),
        tickets_created: count(&stats.tickets_created),
        rejected: count(&stats.rejected),
        failed: count(&stats.failed),
        last_fetch_at: unpoisoned(&stats.last_fetch_at).map(Time),
    }
}

/// `stats` of an OutgoingEmailServer.
pub(crate) fn outgoing_stats(stats: &SendStats) -> OutgoingStats {
    OutgoingStats {
        sent: count(&stats.sent),
        blocked: count(&stats.blocked),
        failed: count(&stats.failed),
        failovers: count(&stats.failovers),
        last_sent_at: unpoisoned(&stats.last_sent_at).map(Time),
    }
}

/// Condition type for rejected mail or recipients.
pub(crate) const FILTER_REJECTING: &str = "FilterRejecting";

/// `recentRejections`: the last ones, newest first, never more than ten.
pub fn recent_rejections(log: &RejectionLog) -> Vec<Rejection> {
    log.recent()
        .map(|r| Rejection {
            at: Time(r.at),
            sender: r.sender.clone(),
            recipient: r.recipient.clone(),
            message_id: r.message_id.clone(),
            rule: r.rule.clone(),
            reason: r.reason.clone(),
        })
        .collect()
}

/// `FilterRejecting`: True while something was rejected since `window_start`,
/// with the counts per rule and the last rejection as message.
pub(crate) fn filter_rejecting(
    log: &RejectionLog,
    window_start: jiff::Timestamp,
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> Condition {
    let rejecting = log.rejecting_since(window_start);
    Condition {
        type_: FILTER_REJECTING.into(),
        status: if rejecting { "True" } else { "False" }.into(),
        reason: if rejecting {
            "MailRejected"
        } else {
            "NoRecentRejections"
        }
        .into(),
        message: if log.total() == 0 {
            "nothing rejected".into()
        } else {
            log.condition_message()
        },
        last_transition_time: Time(now),
        observed_generation: generation,
    }
}

/// The DryRun summary from a worker's counters: in DryRun nothing is delivered,
/// so what was neither rejected nor quarantined would have become a ticket.
pub fn dry_run_report(stats: &WorkerStats) -> DryRunReport {
    let judged = count(&stats.fetched);
    let would_reject = count(&stats.rejected);
    let would_quarantine = count(&stats.failed);
    DryRunReport {
        judged,
        would_create_tickets: (judged - would_reject - would_quarantine).max(0),
        would_reject,
        would_quarantine,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailroom_core::filter::RejectionRecord;

    #[test]
    fn rejections_become_status_pieces() {
        let mut log = RejectionLog::default();
        let at = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        log.record(RejectionRecord {
            at,
            sender: Some("spam@yahoo.com".into()),
            recipient: None,
            message_id: Some("m1".into()),
            rule: "domains[0]".into(),
            reason: "matches domains[0] (yahoo.com) of the Ignore filter".into(),
        });
        let recent = recent_rejections(&log);
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].rule, "domains[0]");
        assert_eq!(recent[0].at, Time(at));

        let c = filter_rejecting(&log, at, Some(3), at);
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("FilterRejecting", "True", "MailRejected")
        );
        assert!(c.message.contains("domains[0]: 1"), "{}", c.message);
        assert_eq!(c.observed_generation, Some(3));

        let later = jiff::Timestamp::from_second(1_800_003_600).unwrap();
        let c = filter_rejecting(&log, later, Some(3), later);
        assert_eq!(c.status, "False");
        let empty = filter_rejecting(&RejectionLog::default(), later, None, later);
        assert_eq!(empty.message, "nothing rejected");
    }
}
