//! The conditions every resource carries, from what the core knows of it: the
//! connection's health and the filter's rejections. kstatus, `kubectl wait`
//! and Argo CD read them, so the rules are strict: Ready is always there,
//! Reconciling and Stalled only while True, and a condition's
//! lastTransitionTime moves only when its status flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{CertificateStatus, ConnectionStatus};
use mailroom_core::connection::{ConnectionReport, Failure, Reason};

pub(crate) const READY: &str = "Ready";
pub(crate) const CONNECTION_VERIFIED: &str = "ConnectionVerified";
pub(crate) const RECONCILING: &str = "Reconciling";
pub(crate) const STALLED: &str = "Stalled";

/// What is known of a resource's connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// `enabled: false`: no connection at all.
    Disabled,
    /// Started, no answer yet.
    Connecting,
    /// The last connection (test or worker) succeeded.
    Connected,
    /// Connected, but the ticket sink refuses the tickets for now: nothing is
    /// marked processed, and delivery is retried.
    SinkUnavailable(String),
    /// The configuration could not be resolved (a missing Secret) or the last
    /// connection failed.
    Failing(Failure),
}

fn condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
        observed_generation: None,
    }
}

/// Ready, ConnectionVerified, Reconciling/Stalled (while True) and, when given,
/// FilterRejecting, with transition times carried over from `previous`.
pub(crate) fn conditions(
    health: &Health,
    filter: Option<Condition>,
    generation: Option<i64>,
    previous: &[Condition],
    now: jiff::Timestamp,
) -> Vec<Condition> {
    let mut out = match health {
        Health::Disabled => {
            let m = "enabled is false: mailroom opens no connection".to_owned();
            vec![
                condition(READY, false, "Disabled", m.clone()),
                condition(CONNECTION_VERIFIED, false, "Disabled", m),
            ]
        }
        Health::Connecting => vec![
            condition(
                READY,
                false,
                "Connecting",
                "connecting to the server".into(),
            ),
            condition(
                CONNECTION_VERIFIED,
                false,
                "Connecting",
                "the connection test has not finished yet".into(),
            ),
            condition(
                RECONCILING,
                true,
                "Connecting",
                "connecting to the server".into(),
            ),
        ],
        Health::Connected => vec![
            condition(
                READY,
                true,
                "Connected",
                "connected; the worker is running".into(),
            ),
            condition(
                CONNECTION_VERIFIED,
                true,
                "Connected",
                "every stage of the connection test passed".into(),
            ),
        ],
        Health::SinkUnavailable(message) => vec![
            condition(READY, false, "SinkUnavailable", message.clone()),
            condition(
                CONNECTION_VERIFIED,
                true,
                "Connected",
                "every stage of the connection test passed".into(),
            ),
            condition(
                RECONCILING,
                true,
                "SinkUnavailable",
                "retrying the ticket sink with backoff; nothing is marked processed meanwhile"
                    .into(),
            ),
        ],
        Health::Failing(f) => {
            let reason = f.reason.as_str();
            let mut v = vec![
                condition(READY, false, reason, f.message.clone()),
                condition(CONNECTION_VERIFIED, false, reason, f.message.clone()),
            ];
            if f.reason.is_permanent() {
                v.push(condition(
                    STALLED,
                    true,
                    reason,
                    format!("retrying will not help until the spec, the Secret or the server changes: {}", f.message),
                ));
            } else {
                v.push(condition(
                    RECONCILING,
                    true,
                    reason,
                    "retrying with backoff".into(),
                ));
            }
            v
        }
    };
    out.extend(filter);
    for c in &mut out {
        stamp(c, generation, previous, now);
    }
    out
}

/// Sets the generation, and keeps the previous transition time unless the
/// status flipped.
fn stamp(c: &mut Condition, generation: Option<i64>, previous: &[Condition], now: jiff::Timestamp) {
    c.observed_generation = generation;
    c.last_transition_time = previous
        .iter()
        .find(|p| p.type_ == c.type_ && p.status == c.status)
        .map(|p| p.last_transition_time.clone())
        .unwrap_or(Time(now));
}

pub(crate) const PRIMARY_CONFLICT: &str = "PrimaryConflict";

/// `PrimaryConflict`, present only while True: more than one primary server
/// in the namespace (`others` are the other primaries).
pub(crate) fn primary_conflict(
    others: &[String],
    generation: Option<i64>,
    previous: &[Condition],
    now: jiff::Timestamp,
) -> Option<Condition> {
    if others.is_empty() {
        return None;
    }
    let mut c = condition(
        PRIMARY_CONFLICT,
        true,
        "MoreThanOnePrimary",
        format!(
            "the namespace has more than one primary OutgoingEmailServer (also: {}); set primary: true on one only",
            others.join(", ")
        ),
    );
    stamp(&mut c, generation, previous, now);
    Some(c)
}

/// The Failure a connection report stands for, if it failed.
pub(crate) fn health_of(report: &ConnectionReport) -> Health {
    if report.reason == Reason::Connected {
        Health::Connected
    } else {
        Health::Failing(Failure::new(report.reason, report.message.clone()))
    }
}

/// `status.connection` from a staged test.
pub(crate) fn connection_status(report: &ConnectionReport) -> ConnectionStatus {
    ConnectionStatus {
        tested_at: Time(jiff::Timestamp::try_from(report.tested_at).unwrap_or_default()),
        latency_ms: i64::try_from(report.latency.as_millis()).unwrap_or(i64::MAX),
        stage_reached: report.stage_reached,
        stages: report.stages.clone(),
        capabilities: report.capabilities.clone(),
        certificate: report.certificate.as_ref().map(|c| CertificateStatus {
            subject: c.subject.clone(),
            issuer: c.issuer.clone(),
            not_after: Time(jiff::Timestamp::try_from(c.not_after).unwrap_or_default()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(c: &'a [Condition], t: &str) -> Option<&'a Condition> {
        c.iter().find(|c| c.type_ == t)
    }

    #[test]
    fn permanent_failures_stall_and_transient_ones_reconcile() {
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let auth = Health::Failing(Failure::new(
            Reason::AuthenticationFailed,
            "use an App Password",
        ));
        let c = conditions(&auth, None, Some(2), &[], now);
        assert_eq!(find(&c, READY).unwrap().status, "False");
        assert_eq!(
            find(&c, CONNECTION_VERIFIED).unwrap().reason,
            "AuthenticationFailed"
        );
        assert_eq!(find(&c, STALLED).unwrap().status, "True");
        assert!(find(&c, RECONCILING).is_none(), "present only while True");
        assert!(c.iter().all(|c| c.observed_generation == Some(2)));

        let refused = Health::Failing(Failure::new(Reason::ConnectionRefused, "down"));
        let c = conditions(&refused, None, None, &[], now);
        assert!(find(&c, STALLED).is_none());
        assert_eq!(find(&c, RECONCILING).unwrap().status, "True");

        let sink = Health::SinkUnavailable("the helpdesk answered 503".into());
        let c = conditions(&sink, None, None, &[], now);
        assert_eq!(find(&c, READY).unwrap().reason, "SinkUnavailable");
        assert_eq!(find(&c, CONNECTION_VERIFIED).unwrap().status, "True");
        assert_eq!(find(&c, RECONCILING).unwrap().status, "True");
        assert!(find(&c, STALLED).is_none());

        let c = conditions(&Health::Connected, None, None, &[], now);
        assert_eq!(find(&c, READY).unwrap().status, "True");
        assert!(find(&c, STALLED).is_none() && find(&c, RECONCILING).is_none());
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let t0 = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let t1 = jiff::Timestamp::from_second(1_800_000_600).unwrap();
        let first = conditions(&Health::Connected, None, None, &[], t0);
        let same = conditions(&Health::Connected, None, None, &first, t1);
        assert_eq!(find(&same, READY).unwrap().last_transition_time, Time(t0));
        let flipped = conditions(
            &Health::Failing(Failure::new(Reason::Timeout, "slow")),
            None,
            None,
            &same,
            t1,
        );
        assert_eq!(
            find(&flipped, READY).unwrap().last_transition_time,
            Time(t1)
        );
    }
}
