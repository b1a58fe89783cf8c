//! Acknowledgements: one automatic, threaded answer to the requester of each new
//! ticket, through the IncomingEmailServer's `outgoingServerRef`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Outbox, OutgoingMessage};
use crate::filter::{RateLimit, SlidingLimit, normalize};
use crate::incoming::worker::TicketHook;
use crate::state::ACK_PREFIX;
use crate::sync::unpoisoned;
use crate::ticket::Ticket;

/// What acknowledgements say, and how many one sender gets.
#[derive(Clone, Debug)]
pub struct AckSettings {
    /// Subject; `{subject}` is replaced by the original subject and
    /// `{reference}` by the sink's name for the ticket.
    pub subject: String,
    /// Plain-text body; `{subject}` and `{reference}` likewise.
    pub text: String,
    pub limit: RateLimit,
    /// Mail that reached the server longer ago gets none.
    pub max_age: std::time::Duration,
    /// The reference as the subject carries it when the templates do not
    /// place `{reference}` (`[#{reference}]`, RT's `[rtname #{reference}]`).
    pub tag: String,
}

#[derive(Debug)]
pub struct Acknowledger {
    outbox: Arc<Outbox>,
    namespace: String,
    server: String,
    subject: String,
    text: String,
    limit: Mutex<SlidingLimit>,
    max_age: std::time::Duration,
    tag: String,
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
            max_age: settings.max_age,
            tag: settings.tag,
            limit: Mutex::new(SlidingLimit::new(settings.limit)),
        }
    }

    /// The acknowledgement for `ticket`, or None when its requester has had
    /// enough of them within the window, asked for none, or wrote longer ago
    /// than `max_age` (or there is nobody to answer). `reference` is the
    /// sink's name for the ticket: `{reference}` in the templates, else
    /// ` [#reference]` after the subject, which the default reference pattern
    /// finds in the answer. `wall` is the time now.
    pub(crate) fn message_for(
        &self,
        ticket: &Ticket,
        reference: Option<&str>,
        now: Instant,
        wall: jiff::Timestamp,
    ) -> Option<OutgoingMessage> {
        let to = ticket.from.as_ref()?.address.clone();
        if ticket.auto_reply_suppressed {
            tracing::info!(requester = %to, "the message asks for no automatic answer (X-Auto-Response-Suppress); no acknowledgement");
            return None;
        }
        // Unknown arrival (no INTERNALDATE, no Received header): answered.
        let arrived = ticket
            .arrived_at
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
        if let Some(arrived) = arrived
            && arrived < wall
            && wall.duration_since(arrived).unsigned_abs() > self.max_age
        {
            tracing::info!(requester = %to, %arrived, "the message reached the server longer ago than acknowledgements.maxAge; no acknowledgement");
            return None;
        }
        if unpoisoned(&self.limit)
            .admit(&normalize::address(&to), ticket.message_id.as_deref(), now)
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
        // `{reference}` first: a subject that spells "{reference}" stays as it is.
        let fill = |template: &str| {
            template
                .replace("{reference}", reference.unwrap_or_default())
                .replace("{subject}", &original)
        };
        let mut subject = fill(&self.subject);
        if let Some(r) = reference
            && !self.subject.contains("{reference}")
        {
            subject.push(' ');
            subject.push_str(&self.tag.replace("{reference}", r));
        }
        Some(OutgoingMessage {
            to: vec![to],
            subject,
            text: Some(fill(&self.text)),
            headers: [("Auto-Submitted".to_owned(), "auto-replied".to_owned())].into(),
            in_reply_to,
            references,
            // The customer's answer names it: it threads to this ticket even
            // when the subject's reference was edited away.
            message_id_local: Some(format!("{ACK_PREFIX}{}", ticket.idempotency_key)),
            ..OutgoingMessage::default()
        })
    }
}

impl TicketHook for Acknowledger {
    fn ticket_created(&self, ticket: &Ticket, reference: Option<&str>) {
        let Some(message) =
            self.message_for(ticket, reference, Instant::now(), jiff::Timestamp::now())
        else {
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

    const WALL: jiff::Timestamp = jiff::Timestamp::constant(1_795_000_000, 0);

    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

    /// Acknowledgements through a server `out`, at most `max` a sender an
    /// hour, none for mail older than an hour.
    fn acknowledger(subject: &str, text: &str, max: u32) -> Acknowledger {
        let settings = AckSettings {
            subject: subject.into(),
            text: text.into(),
            limit: RateLimit { max, window: HOUR },
            max_age: HOUR,
            tag: "[#{reference}]".into(),
        };
        Acknowledger::new(Arc::new(Outbox::new()), "ns", "out", settings)
    }

    /// A ticket of message `id`: the limit counts each Message-ID once.
    fn ticket(from: &str, subject: &str, id: &str) -> Ticket {
        serde_json::from_value(serde_json::json!({
            "idempotencyKey": "k",
            "mailbox": "helpdesk/support",
            "from": {"address": from},
            "to": [], "cc": [],
            "subject": subject,
            "attachments": [],
            "messageId": id,
            "inReplyTo": [],
            "references": ["older@example.org"],
            "receivedAt": "2026-11-25T10:00:00Z",
        }))
        .unwrap()
    }

    #[test]
    fn threaded_marked_and_limited_per_sender() {
        let window = HOUR;
        let ack = acknowledger("Re: {subject}", "Thank you.", 2);
        let now = Instant::now();
        let m = ack
            .message_for(
                &ticket("Ann@Example.org", "printer\r\non fire", "orig@example.org"),
                None,
                now,
                WALL,
            )
            .unwrap();
        assert_eq!(m.subject, "Re: printer  on fire");
        assert_eq!(m.in_reply_to.as_deref(), Some("<orig@example.org>"));
        assert_eq!(m.references, ["<older@example.org>", "<orig@example.org>"]);
        assert_eq!(m.headers["Auto-Submitted"], "auto-replied");
        assert!(m.validate().is_ok());
        // The same message again (a retried delivery) is not counted twice.
        assert!(
            ack.message_for(
                &ticket("ann@example.org", "printer", "orig@example.org"),
                None,
                now,
                WALL
            )
            .is_some()
        );
        assert!(
            ack.message_for(
                &ticket("ann@example.org", "again", "m2@example.org"),
                None,
                now,
                WALL
            )
            .is_some()
        );
        // The same sender, however spelled, has had its two.
        assert!(
            ack.message_for(
                &ticket("ANN@example.org", "third", "m3@example.org"),
                None,
                now,
                WALL
            )
            .is_none()
        );
        assert!(
            ack.message_for(
                &ticket("bob@example.org", "other", "m4@example.org"),
                None,
                now,
                WALL
            )
            .is_some()
        );
        let later = now + window;
        // A sender who asked for no automatic answers gets none.
        let mut suppressed = ticket(
            "carol@example.org",
            "out of office? no: a request",
            "m5@example.org",
        );
        suppressed.auto_reply_suppressed = true;
        assert!(ack.message_for(&suppressed, None, now, WALL).is_none());
        assert!(
            ack.message_for(
                &ticket("ann@example.org", "later", "m6@example.org"),
                None,
                later,
                WALL
            )
            .is_some()
        );
    }

    #[test]
    fn old_mail_gets_no_acknowledgement_and_mail_of_unknown_age_does() {
        let ack = acknowledger("Re: {subject}", "Thank you.", 100);
        let now = Instant::now();
        let arrived = |ago: i64, id: &str| {
            let mut t = ticket("ann@example.org", "printer", id);
            t.arrived_at = Some((WALL - jiff::SignedDuration::from_secs(ago)).to_string());
            t
        };
        assert!(
            ack.message_for(&arrived(7200, "a"), None, now, WALL)
                .is_none()
        );
        assert!(
            ack.message_for(&arrived(3601, "b"), None, now, WALL)
                .is_none()
        );
        assert!(
            ack.message_for(&arrived(600, "c"), None, now, WALL)
                .is_some()
        );
        // A server clock ahead of ours is not old mail.
        assert!(
            ack.message_for(&arrived(-60, "d"), None, now, WALL)
                .is_some()
        );
        let unknown = ticket("ann@example.org", "printer", "e");
        assert!(ack.message_for(&unknown, None, now, WALL).is_some());
    }

    #[test]
    fn the_sinks_reference_goes_into_the_subject() {
        let text = "Your request is number {reference}.";
        let now = Instant::now();
        let plain = acknowledger("Re: {subject}", text, 100);
        let m = plain
            .message_for(
                &ticket("ann@example.org", "printer", "a"),
                Some("4711"),
                now,
                WALL,
            )
            .unwrap();
        assert_eq!(m.subject, "Re: printer [#4711]");
        assert_eq!(m.text.as_deref(), Some("Your request is number 4711."));
        let m = plain
            .message_for(&ticket("ann@example.org", "printer", "b"), None, now, WALL)
            .unwrap();
        assert_eq!(m.subject, "Re: printer", "no reference, no tag");
        let placed = acknowledger("[REQ-{reference}] {subject}", text, 100);
        let m = placed
            .message_for(
                &ticket("ann@example.org", "{reference}", "c"),
                Some("9"),
                now,
                WALL,
            )
            .unwrap();
        assert_eq!(m.subject, "[REQ-9] {reference}");
    }

    #[test]
    fn the_sinks_own_tag_and_a_message_id_that_names_the_ticket() {
        let mut rt = acknowledger("Re: {subject}", "Thanks.", 100);
        rt.tag = "[rt.example #{reference}]".into();
        let t = ticket("ann@example.org", "printer", "a");
        let m = rt
            .message_for(&t, Some("12"), Instant::now(), WALL)
            .unwrap();
        assert_eq!(m.subject, "Re: printer [rt.example #12]");
        // The answer to it threads by this id even when the tag is gone.
        assert_eq!(
            m.message_id_local,
            Some(format!("{ACK_PREFIX}{}", t.idempotency_key))
        );
    }
}
