//! Rejection records: the last few for status, counts per rule, and the
//! `FilterRejecting` condition's message. Never bodies, never secrets.

use std::collections::{BTreeMap, VecDeque};

/// How many recent rejections status keeps.
pub(crate) const RECENT: usize = 10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectionRecord {
    pub at: jiff::Timestamp,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub message_id: Option<String>,
    pub rule: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RejectionLog {
    recent: VecDeque<RejectionRecord>,
    counts: BTreeMap<String, u64>,
    total: u64,
}

impl RejectionLog {
    pub fn record(&mut self, r: RejectionRecord) {
        *self.counts.entry(r.rule.clone()).or_default() += 1;
        self.total += 1;
        self.recent.push_front(r);
        self.recent.truncate(RECENT);
    }

    /// The last rejections, newest first.
    pub fn recent(&self) -> impl Iterator<Item = &RejectionRecord> {
        self.recent.iter()
    }

    pub fn counts(&self) -> &BTreeMap<String, u64> {
        &self.counts
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether anything was rejected since `since`.
    pub fn rejecting_since(&self, since: jiff::Timestamp) -> bool {
        self.recent.front().is_some_and(|r| r.at >= since)
    }

    /// "3 rejected (domains[0]: 2, noMatch: 1); last: mail from x@y.z (domains[0]): …".
    pub fn condition_message(&self) -> String {
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(rule, n)| format!("{rule}: {n}"))
            .collect();
        let mut message = format!("{} rejected ({})", self.total, counts.join(", "));
        if let Some(last) = self.recent.front() {
            let who = last
                .sender
                .as_deref()
                .or(last.recipient.as_deref())
                .unwrap_or("unknown sender");
            message.push_str(&format!("; last: {who} ({}): {}", last.rule, last.reason));
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: i64, rule: &str) -> RejectionRecord {
        RejectionRecord {
            at: jiff::Timestamp::from_second(1_800_000_000 + i).unwrap(),
            sender: Some(format!("s{i}@x.example")),
            recipient: None,
            message_id: Some(format!("m{i}")),
            rule: rule.into(),
            reason: format!("reason {i}"),
        }
    }

    #[test]
    fn keeps_the_last_ten_newest_first_and_counts_every_rule() {
        let mut log = RejectionLog::default();
        for i in 0..15 {
            log.record(rec(i, if i % 3 == 0 { "noMatch" } else { "domains[0]" }));
        }
        let recent: Vec<_> = log.recent().collect();
        assert_eq!(recent.len(), RECENT);
        assert_eq!(recent[0].message_id.as_deref(), Some("m14"));
        assert_eq!(log.counts()["noMatch"], 5);
        assert_eq!(log.counts()["domains[0]"], 10);
        let msg = log.condition_message();
        assert!(msg.starts_with("15 rejected (domains[0]: 10, noMatch: 5); last: s14@x.example (domains[0]): reason 14"), "{msg}");
        assert!(log.rejecting_since(jiff::Timestamp::from_second(1_800_000_010).unwrap()));
        assert!(!log.rejecting_since(jiff::Timestamp::from_second(1_800_000_100).unwrap()));
    }
}
