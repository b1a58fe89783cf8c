//! Parsing, judging and mapping of fetched mail, apart from the fetching: an
//! IMAP batch is judged on a blocking thread while the worker fetches the next.

use std::sync::{Arc, Mutex};

use super::settings::{IncomingSettings, TicketSettings};
use super::worker::WorkerEvent;
use crate::filter::{Judge, LoopProtection, MessageFacts};
use crate::state::{ThreadMap, acknowledged_key};
use crate::sync::unpoisoned;
use crate::ticket::{self, ReplyTo, ThreadMatch, Ticket};
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
    /// The mailbox's Message-ID → ticket memory, shared with the worker,
    /// which saves it with the cursor.
    threads: Arc<Mutex<ThreadMap>>,
}

impl Judging {
    pub fn new(settings: &IncomingSettings, threads: Arc<Mutex<ThreadMap>>) -> Self {
        Self {
            threads,
            judge: Judge {
                filter: settings.filter.clone(),
                loops: LoopProtection::new(settings.own_addresses.clone(), settings.rate_limit),
            },
            ticket: settings.ticket.clone(),
            dry_run: settings.mode == Mode::DryRun,
        }
    }

    /// Judges a fetched IMAP batch: UID, raw message and the server's
    /// arrival time (INTERNALDATE).
    pub(crate) fn batch<'a>(
        &mut self,
        messages: impl IntoIterator<Item = (u32, &'a [u8], Option<jiff::Timestamp>)>,
        at: jiff::Timestamp,
    ) -> Judged {
        let mut judged = Judged::default();
        let mut tickets = Vec::new();
        for (uid, raw, arrived) in messages {
            let (outcome, verdict) = self.message(raw, at, arrived);
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
    /// `arrived`: when the server received it, if it says (else the
    /// message's newest Received header tells).
    pub(crate) fn message(
        &mut self,
        raw: &[u8],
        at: jiff::Timestamp,
        arrived: Option<jiff::Timestamp>,
    ) -> (Outcome, Option<WorkerEvent>) {
        // A panic past parsing (in reading the parsed message) is the same
        // fault as one in the parser: that message is set aside, the rest
        // flows. The judge's counters stay usable: at worst one sender is
        // counted once too often.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.message_unguarded(raw, at, arrived)
        }))
        .unwrap_or_else(|_| {
            (
                Outcome::Unparseable(ticket::TicketError::ParserFailed.to_string()),
                None,
            )
        })
    }

    /// Tells whether an accepted message answers a known ticket, and
    /// remembers which ticket it belongs to. The subject's reference wins:
    /// it is what the helpdesk itself threads by. Judged in fetch order, so a
    /// reply taken after its original (even in the same batch) finds it.
    fn thread(&self, ticket: &mut Ticket) {
        let mut threads = unpoisoned(&self.threads);
        let named = ticket
            .in_reply_to
            .iter()
            .chain(ticket.references.iter().rev())
            .find_map(|id| match acknowledged_key(id) {
                Some(root) => Some((threads.reference_of(&root), root)),
                None => threads.get(id).map(|t| (t.reference, t.root)),
            });
        ticket.reply_to = match (ticket.ticket_reference.clone(), named) {
            (Some(reference), named) => Some(ReplyTo {
                // The thread's ticket only when it is the one the subject names.
                original_key: named
                    .filter(|(known, _)| known.as_deref().is_none_or(|k| k == reference))
                    .map(|(_, root)| root),
                ticket: Some(reference),
                matched_by: ThreadMatch::Subject,
            }),
            (None, Some((reference, root))) => Some(ReplyTo {
                ticket: reference,
                original_key: Some(root),
                matched_by: ThreadMatch::Thread,
            }),
            (None, None) => None,
        };
        if let Some(id) = &ticket.message_id {
            let reference = ticket.reply_to.as_ref().and_then(|r| r.ticket.as_deref());
            threads.record(id, ticket.root_key(), reference);
        }
    }

    fn message_unguarded(
        &mut self,
        raw: &[u8],
        at: jiff::Timestamp,
        arrived: Option<jiff::Timestamp>,
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
            if let Some(arrived) = arrived {
                ticket.arrived_at = Some(arrived.to_string());
            }
            self.thread(&mut ticket);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::RateLimit;
    use crate::state::ACK_PREFIX;

    fn judging() -> (Judging, Arc<Mutex<ThreadMap>>) {
        let threads = Arc::new(Mutex::new(ThreadMap::default()));
        let judging = Judging {
            judge: Judge {
                filter: None,
                loops: LoopProtection::new(Default::default(), RateLimit::default()),
            },
            ticket: TicketSettings {
                mailbox: "helpdesk/support".into(),
                technician_group: None,
                category: None,
                reference: regex::Regex::new(r"\[#(\d+)\]").unwrap(),
                sink_tag: None,
            },
            dry_run: false,
            threads: threads.clone(),
        };
        (judging, threads)
    }

    fn ticket(j: &mut Judging, headers: &str) -> Ticket {
        let raw = format!("From: ann@customer.example\r\n{headers}\r\n\r\nbody\r\n");
        match j.message(raw.as_bytes(), jiff::Timestamp::now(), None).0 {
            Outcome::Ticket(t) => *t,
            _ => panic!("not a ticket: {headers}"),
        }
    }

    #[test]
    fn replies_thread_by_in_reply_to_references_acknowledgements_and_subject() {
        let (mut j, threads) = judging();
        let first = ticket(&mut j, "Subject: printer\r\nMessage-ID: <a@c>");
        assert_eq!(first.reply_to, None, "a new ticket");
        // In the same batch, right after its original.
        let reply = ticket(
            &mut j,
            "Subject: more\r\nMessage-ID: <b@c>\r\nIn-Reply-To: <a@c>",
        );
        let to = reply.reply_to.clone().unwrap();
        assert_eq!(
            to.original_key.as_deref(),
            Some(first.idempotency_key.as_str())
        );
        assert_eq!(to.matched_by, ThreadMatch::Thread);
        assert_eq!(to.ticket, None, "the sink has not named it yet");
        // The sink named the ticket: later replies carry its name, also by
        // a reply to the reply (References).
        unpoisoned(&threads).learn(&first.idempotency_key, "42");
        let deeper = ticket(
            &mut j,
            "Subject: x\r\nMessage-ID: <c@c>\r\nReferences: <zz@c> <b@c>",
        );
        assert_eq!(deeper.reply_to.unwrap().ticket.as_deref(), Some("42"));
        // An answer to the acknowledgement, whose subject lost the tag.
        let ack = format!("<{ACK_PREFIX}{}@helpdesk.example>", first.idempotency_key);
        let to_ack = ticket(
            &mut j,
            &format!("Subject: thanks\r\nMessage-ID: <d@c>\r\nIn-Reply-To: {ack}"),
        );
        let to = to_ack.reply_to.unwrap();
        assert_eq!(to.ticket.as_deref(), Some("42"));
        assert_eq!(
            to.original_key.as_deref(),
            Some(first.idempotency_key.as_str())
        );
        // The subject's reference wins over a thread to another ticket.
        let tagged = ticket(
            &mut j,
            "Subject: Re: [#7] other\r\nMessage-ID: <e@c>\r\nIn-Reply-To: <a@c>",
        );
        let to = tagged.reply_to.unwrap();
        assert_eq!((to.ticket.as_deref(), to.original_key), (Some("7"), None));
        assert_eq!(to.matched_by, ThreadMatch::Subject);
        // Unknown messages are no thread.
        let unknown = ticket(
            &mut j,
            "Subject: hi\r\nMessage-ID: <f@c>\r\nIn-Reply-To: <nobody@c>",
        );
        assert_eq!(unknown.reply_to, None);
    }
}
