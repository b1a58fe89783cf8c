//! Acknowledgements: one automatic, threaded answer to the requester of each new
//! ticket, through the IncomingEmailServer's `outgoingServerRef`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Outbox, OutgoingMessage};
use crate::filter::{RateLimit, SlidingLimit, normalize};
use crate::incoming::worker::TicketHook;
use crate::sync::unpoisoned;
use crate::ticket::Ticket;

/// What acknowledgements say, and how many one sender gets.
#[derive(Clone, Debug)]
pub struct AckSettings {
    /// Subject; `{subject}` is replaced by the original subject.
    pub subject: String,
    /// Plain-text body; `{subject}` likewise.
    pub text: String,
    pub limit: RateLimit,
}

#[derive(Debug)]
pub struct Acknowledger {
    outbox: Arc<Outbox>,
    namespace: String,
    server: String,
    subject: String,
    text: String,
    limit: Mutex<SlidingLimit>,
}

fn angle(id: &str) -> String {
    format!(
        "<{}>",
        id.trim().trim_start_matches('<').trim_end_matches('>')
    )
}

impl Acknowledger {
    /// Acknowledges through OutgoingEmailServer `namespace/server`.
    pub fn new(
        outbox: Arc<Outbox>,
        namespace: impl Into<String>,
        server: impl Into<String>,
        settings: AckSettings,
    ) -> Self {
        Self {
            outbox,
            namespace: namespace.into(),
            server: server.into(),
            subject: settings.subject,
            text: settings.text,
            limit: Mutex::new(SlidingLimit::new(settings.limit)),
        }
    }

    /// The acknowledgement for `ticket`, or None when its requester has had
    /// enough of them within the window (or there is nobody to answer).
    pub(crate) fn message_for(&self, ticket: &Ticket, now: Instant) -> Option<OutgoingMessage> {
        let to = ticket.from.as_ref()?.address.clone();
        if ticket.auto_reply_suppressed {
            tracing::info!(requester = %to, "the message asks for no automatic answer (X-Auto-Response-Suppress); no acknowledgement");
            return None;
        }
        if unpoisoned(&self.limit)
            .admit(&normalize::address(&to), now)
            .is_err()
        {
            tracing::info!(requester = %to, "acknowledgement limit reached for this sender; none sent");
            return None;
        }
        // A decoded subject may hold line breaks; a header value may not.
        let original = ticket
            .subject
            .as_deref()
            .unwrap_or("(no subject)")
            .replace(['\r', '\n'], " ");
        let mut references: Vec<String> = ticket.references.iter().map(|r| angle(r)).collect();
        let in_reply_to = ticket.message_id.as_deref().map(angle);
        if let Some(id) = &in_reply_to
            && !references.contains(id)
        {
            references.push(id.clone());
        }
        Some(OutgoingMessage {
            to: vec![to],
            subject: self.subject.replace("{subject}", &original),
            text: Some(self.text.replace("{subject}", &original)),
            headers: [("Auto-Submitted".to_owned(), "auto-replied".to_owned())].into(),
            in_reply_to,
            references,
            ..OutgoingMessage::default()
        })
    }
}

impl TicketHook for Acknowledger {
    fn ticket_created(&self, ticket: &Ticket) {
        let Some(message) = self.message_for(ticket, Instant::now()) else {
            return;
        };
        let outbox = self.outbox.clone();
        let namespace = self.namespace.clone();
        let server = self.server.clone();
        tokio::spawn(async move {
            match outbox.send(&namespace, Some(&server), &message).await {
                Ok(report) => tracing::info!(
                    server = %server, message_id = %report.message_id,
                    sent = report.count(super::Outcome::Sent), "acknowledgement sent"
                ),
                Err(e) => tracing::warn!(server = %server, "acknowledgement not sent: {e}"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(from: &str, subject: &str) -> Ticket {
        serde_json::from_value(serde_json::json!({
            "idempotencyKey": "k",
            "mailbox": "helpdesk/support",
            "from": {"address": from},
            "to": [], "cc": [],
            "subject": subject,
            "attachments": [],
            "messageId": "orig@example.org",
            "inReplyTo": [],
            "references": ["older@example.org"],
            "receivedAt": "2026-11-25T10:00:00Z",
        }))
        .unwrap()
    }

    #[test]
    fn threaded_marked_and_limited_per_sender() {
        let window = std::time::Duration::from_secs(3600);
        let settings = AckSettings {
            subject: "Re: {subject}".into(),
            text: "Thank you.".into(),
            limit: RateLimit { max: 2, window },
        };
        let ack = Acknowledger::new(Arc::new(Outbox::new()), "ns", "out", settings);
        let now = Instant::now();
        let m = ack
            .message_for(&ticket("Ann@Example.org", "printer\r\non fire"), now)
            .unwrap();
        assert_eq!(m.subject, "Re: printer  on fire");
        assert_eq!(m.in_reply_to.as_deref(), Some("<orig@example.org>"));
        assert_eq!(m.references, ["<older@example.org>", "<orig@example.org>"]);
        assert_eq!(m.headers["Auto-Submitted"], "auto-replied");
        assert!(m.validate().is_ok());
        assert!(
            ack.message_for(&ticket("ann@example.org", "again"), now)
                .is_some()
        );
        // The same sender, however spelled, has had its two.
        assert!(
            ack.message_for(&ticket("ANN@example.org", "third"), now)
                .is_none()
        );
        assert!(
            ack.message_for(&ticket("bob@example.org", "other"), now)
                .is_some()
        );
        let later = now + window;
        // A sender who asked for no automatic answers gets none.
        let mut suppressed = ticket("carol@example.org", "out of office? no: a request");
        suppressed.auto_reply_suppressed = true;
        assert!(ack.message_for(&suppressed, now).is_none());
        assert!(
            ack.message_for(&ticket("ann@example.org", "later"), later)
                .is_some()
        );
    }
}
