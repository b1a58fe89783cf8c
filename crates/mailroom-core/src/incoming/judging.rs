//! Parsing, judging and mapping of fetched mail, apart from the fetching: an
//! IMAP batch is judged on a blocking thread while the worker fetches the next.

use std::sync::Arc;

use super::settings::{IncomingSettings, TicketSettings};
use super::worker::WorkerEvent;
use crate::filter::{Judge, LoopProtection, MessageFacts};
use crate::ticket::{self, Ticket};
use crate::vocab::Mode;

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
    /// A `Judged` event per parsed message, in order, for the worker to report.
    pub verdicts: Vec<WorkerEvent>,
}

/// Everything a message is judged with; owned by one worker and used by one
/// batch at a time, in fetch order (the rate limit counts in that order).
pub(super) struct Judging {
    judge: Judge,
    ticket: TicketSettings,
    dry_run: bool,
}

impl Judging {
    pub fn new(settings: &IncomingSettings) -> Self {
        Self {
            judge: Judge {
                filter: settings.filter.clone(),
                loops: LoopProtection::new(settings.own_addresses.clone(), settings.rate_limit),
            },
            ticket: settings.ticket.clone(),
            dry_run: settings.mode == Mode::DryRun,
        }
    }

    /// Judges a fetched IMAP batch: `(UID, raw message)` pairs.
    pub(crate) fn batch<'a>(
        &mut self,
        messages: impl IntoIterator<Item = (u32, &'a [u8])>,
        at: jiff::Timestamp,
    ) -> Judged {
        let mut judged = Judged::default();
        let mut tickets = Vec::new();
        for (uid, raw) in messages {
            let (outcome, verdict) = self.message(raw, at);
            judged.verdicts.extend(verdict);
            match outcome {
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

    /// Parses and judges one message: a ticket only for what is accepted,
    /// and the verdict to report (none for mail that cannot be parsed).
    pub(crate) fn message(
        &mut self,
        raw: &[u8],
        at: jiff::Timestamp,
    ) -> (Outcome, Option<WorkerEvent>) {
        let message = match ticket::parse(raw) {
            Ok(m) => m,
            Err(e) => return (Outcome::Unparseable(e.to_string()), None),
        };
        let facts = MessageFacts::from_message(&message, self.judge.needs_text());
        let verdict = self.judge.judge(&facts, std::time::Instant::now());
        let outcome = if verdict.accepted {
            let mut ticket = ticket::from_message(raw, &message, &self.ticket, at);
            ticket.auto_reply_suppressed = facts.suppress_auto_reply;
            Outcome::Ticket(Box::new(ticket))
        } else {
            Outcome::Rejected
        };
        let event = WorkerEvent::Judged {
            message_id: facts.message_id.clone(),
            sender: facts.sender_for_record(),
            verdict,
            dry_run: self.dry_run,
            at,
        };
        (outcome, Some(event))
    }
}
