//! Filters and loop protection, pure code: no I/O, no clock of its own.
//!
//! A message is judged in this order: loop protection (automatic replies,
//! bounces, system senders, our own addresses), the sender check (a missing or
//! malformed From is its own reason), the Allow/Ignore filter, then the
//! per-sender rate limit for what would become a ticket. Every verdict names the
//! rule that decided it (`emails[2]`, `domains[0]`, `keywords[1]`, `noMatch`,
//! `loop:…`, `sender:…`) and says why in words.

pub(crate) mod facts;
pub(crate) mod loops;
pub(crate) mod normalize;
pub mod record;

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::vocab::FilterType;
pub use facts::{MessageFacts, SenderProblem};
pub use loops::{LoopProtection, OwnAddresses, RateLimit, SlidingLimit};
pub use record::{RejectionLog, RejectionRecord};

/// The outcome of judging a message or a recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub accepted: bool,
    pub rule: String,
    pub reason: String,
}

impl Verdict {
    pub(crate) fn accept(rule: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            accepted: true,
            rule: rule.into(),
            reason: reason.into(),
        }
    }
    pub(crate) fn reject(rule: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            accepted: false,
            rule: rule.into(),
            reason: reason.into(),
        }
    }
}

/// An Allow or Ignore filter, compiled for fast judging: hash lookups for
/// addresses and domains, one Aho-Corasick pass for all keywords.
#[derive(Clone, Debug)]
pub struct Filter {
    kind: FilterType,
    emails: HashMap<String, usize>,
    exact_domains: HashMap<String, usize>,
    wildcard_domains: HashMap<String, usize>,
    keywords: Option<AhoCorasick>,
    keyword_entries: Vec<usize>,
    originals: Originals,
}

#[derive(Clone, Debug, Default)]
struct Originals {
    emails: Vec<String>,
    domains: Vec<String>,
    keywords: Vec<String>,
}

impl Filter {
    pub fn compile(
        kind: FilterType,
        emails: &[String],
        domains: &[String],
        keywords: &[String],
    ) -> Self {
        let mut exact_domains = HashMap::new();
        let mut wildcard_domains = HashMap::new();
        for (i, d) in domains.iter().enumerate() {
            match d.strip_prefix("*.") {
                Some(rest) => wildcard_domains.entry(normalize::domain(rest)).or_insert(i),
                None => exact_domains.entry(normalize::domain(d)).or_insert(i),
            };
        }
        let mut emails_map = HashMap::new();
        for (i, e) in emails.iter().enumerate() {
            emails_map.entry(normalize::address(e)).or_insert(i);
        }
        let mut patterns = Vec::new();
        let mut keyword_entries = Vec::new();
        for (i, k) in keywords.iter().enumerate() {
            let n = normalize::text(k);
            if !n.is_empty() {
                patterns.push(n);
                keyword_entries.push(i);
            }
        }
        let keywords_ac = if patterns.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostFirst)
                .build(&patterns)
                .ok()
        };
        Self {
            kind,
            emails: emails_map,
            exact_domains,
            wildcard_domains,
            keywords: keywords_ac,
            keyword_entries,
            originals: Originals {
                emails: emails.to_vec(),
                domains: domains.to_vec(),
                keywords: keywords.to_vec(),
            },
        }
    }

    /// Which address or domain entry matches a normalised address.
    fn address_rule(&self, key: &str, domain: &str) -> Option<(String, String)> {
        if let Some(i) = self.emails.get(key) {
            return Some((format!("emails[{i}]"), self.originals.emails[*i].clone()));
        }
        if let Some(i) = self.exact_domains.get(domain) {
            return Some((format!("domains[{i}]"), self.originals.domains[*i].clone()));
        }
        // `*.example.com` matches example.com and every subdomain of it.
        let mut rest = domain;
        loop {
            if let Some(i) = self.wildcard_domains.get(rest) {
                return Some((format!("domains[{i}]"), self.originals.domains[*i].clone()));
            }
            match rest.split_once('.') {
                Some((_, tail)) => rest = tail,
                None => return None,
            }
        }
    }

    fn keyword_rule(&self, searchable: &str) -> Option<(String, String)> {
        let m = self.keywords.as_ref()?.find(searchable)?;
        let entry = self.keyword_entries[m.pattern().as_usize()];
        Some((
            format!("keywords[{entry}]"),
            self.originals.keywords[entry].clone(),
        ))
    }

    fn decide(&self, subject: &str, matched: Option<(String, String)>) -> Verdict {
        match (self.kind, matched) {
            (FilterType::Allow, Some((rule, entry))) => Verdict::accept(
                rule.clone(),
                format!("{subject} matches {rule} ({entry}) of the Allow filter"),
            ),
            (FilterType::Allow, None) => Verdict::reject(
                "noMatch",
                format!("{subject} matches no entry of the Allow filter"),
            ),
            (FilterType::Ignore, Some((rule, entry))) => Verdict::reject(
                rule.clone(),
                format!(
                    "{subject} matches {rule} ({entry}) of the Ignore filter: discarded without a bounce"
                ),
            ),
            (FilterType::Ignore, None) => Verdict::accept(
                "noMatch",
                format!("{subject} matches no entry of the Ignore filter"),
            ),
        }
    }

    /// Whether judging needs the message's normalised text (keyword entries).
    pub(crate) fn needs_text(&self) -> bool {
        self.keywords.is_some()
    }

    /// Judges a message by its sender and its subject and text.
    pub fn judge(&self, facts: &MessageFacts) -> Verdict {
        let by_sender = match (&facts.sender_key, &facts.sender_domain) {
            (Some(key), Some(domain)) => self.address_rule(key, domain),
            _ => None,
        };
        let matched = by_sender.or_else(|| self.keyword_rule(&facts.searchable));
        let who = match &facts.sender {
            Ok(s) => format!("mail from {s}"),
            Err(_) => "mail without a valid sender".to_owned(),
        };
        self.decide(&who, matched)
    }

    /// Judges one recipient of an outgoing message.
    pub fn judge_recipient(&self, address: &str) -> Verdict {
        let key = normalize::address(address);
        let domain = key
            .rsplit_once('@')
            .map(|(_, d)| d.to_owned())
            .unwrap_or_default();
        self.decide(
            &format!("recipient {address}"),
            self.address_rule(&key, &domain),
        )
    }
}

/// Everything that decides whether a message becomes a ticket.
#[derive(Debug)]
pub struct Judge {
    pub filter: Option<Filter>,
    pub loops: LoopProtection,
}

impl Judge {
    /// Whether `MessageFacts` must carry the normalised text.
    pub(crate) fn needs_text(&self) -> bool {
        self.filter.as_ref().is_some_and(Filter::needs_text)
    }

    /// Judges a message at `now` (the rate limit's clock).
    pub fn judge(&mut self, facts: &MessageFacts, now: std::time::Instant) -> Verdict {
        if let Some(v) = self.loops.check(facts) {
            return v;
        }
        match &facts.sender {
            Err(SenderProblem::Missing) => {
                return Verdict::reject(
                    "sender:missing",
                    "the message has no From header: there is nobody to answer",
                );
            }
            Err(SenderProblem::Malformed(raw)) => {
                return Verdict::reject(
                    "sender:malformed",
                    format!(
                        "the From header {raw:?} holds no valid address: there is nobody to answer"
                    ),
                );
            }
            Ok(_) => {}
        }
        let verdict = match &self.filter {
            Some(f) => f.judge(facts),
            None => Verdict::accept("noFilter", "no filter: every sender is accepted"),
        };
        if verdict.accepted
            && let Some(v) = self.loops.rate_limit(facts, now)
        {
            return v;
        }
        verdict
    }
}
