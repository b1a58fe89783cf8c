//! Parsing, judging and mapping of fetched mail, apart from the fetching: an
//! IMAP batch is judged on a blocking thread while the worker fetches the next.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::settings::{IncomingSettings, TicketSettings};
use super::worker::{WorkerEvent, WorkerStats};
use crate::api::Mode;
use crate::filter::{Filter, Judge, LoopProtection, MessageFacts, RejectionRecord};
use crate::ticket::{self, Ticket};

/// What became of one fetched message.
pub(super) enum Outcome {
    Ticket(Box<Ticket>),
    Rejected,
    Unparseable(String),
}

/// A judged IMAP batch, by UID.
#[derive(Default)]
pub(super) struct Judged {
    pub tickets: Arc<[Ticket]>,
    pub ticket_uids: Vec<u32>,
    pub rejected_uids: Vec<u32>,
    pub unparseable: Vec<(u32, String)>,
}

/// Everything a message is judged with; owned by one worker and used by one
/// batch at a time, in fetch order (the rate limit counts in that order).
pub(super) struct Judging {
    judge: Judge,
    ticket: TicketSettings,
    dry_run: bool,
    stats: Arc<WorkerStats>,
    events: mpsc::UnboundedSender<WorkerEvent>,
}

impl Judging {
    pub fn new(
        settings: &IncomingSettings,
        stats: Arc<WorkerStats>,
        events: mpsc::UnboundedSender<WorkerEvent>,
    ) -> Self {
        Self {
            judge: Judge {
                filter: Filter::incoming(settings.filter.as_ref()),
                loops: LoopProtection::new(&settings.own_addresses, settings.rate_limit),
            },
            ticket: settings.ticket.clone(),
            dry_run: settings.mode == Mode::DryRun,
            stats,
            events,
        }
    }

    /// Judges a fetched IMAP batch: `(UID, raw message)` pairs.
    pub fn batch<'a>(
        &mut self,
        messages: impl IntoIterator<Item = (u32, &'a [u8])>,
        at: jiff::Timestamp,
    ) -> Judged {
        let mut judged = Judged::default();
        let mut tickets = Vec::new();
        for (uid, raw) in messages {
            match self.message(raw, at) {
                Outcome::Ticket(t) => {
                    tickets.push(*t);
                    judged.ticket_uids.push(uid);
                }
                Outcome::Rejected => judged.rejected_uids.push(uid),
                Outcome::Unparseable(reason) => judged.unparseable.push((uid, reason)),
            }
        }
        judged.tickets = tickets.into();
        judged
    }

    /// Parses and judges one message; a ticket only for what is accepted.
    pub fn message(&mut self, raw: &[u8], at: jiff::Timestamp) -> Outcome {
        let message = match ticket::parse(raw) {
            Ok(m) => m,
            Err(e) => return Outcome::Unparseable(e.to_string()),
        };
        let facts = MessageFacts::from_message(&message, self.judge.needs_text());
        let verdict = self.judge.judge(&facts, std::time::Instant::now());
        if !verdict.accepted {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut log) = self.stats.rejections.lock() {
                log.record(RejectionRecord {
                    at,
                    sender: facts.sender_for_record(),
                    recipient: None,
                    message_id: facts.message_id.clone(),
                    rule: verdict.rule.clone(),
                    reason: if self.dry_run {
                        format!("(dry run) {}", verdict.reason)
                    } else {
                        verdict.reason.clone()
                    },
                });
            }
        }
        let accepted = verdict.accepted;
        // Nobody listening is not an error: status is then simply not kept.
        let _ = self.events.send(WorkerEvent::Judged {
            message_id: facts.message_id.clone(),
            sender: facts.sender_for_record(),
            verdict,
            dry_run: self.dry_run,
        });
        if accepted {
            Outcome::Ticket(Box::new(ticket::from_message(
                raw,
                &message,
                &self.ticket,
                at,
            )))
        } else {
            Outcome::Rejected
        }
    }
}
