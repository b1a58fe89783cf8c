//! A message, mapped to the stable JSON document a helpdesk receives. Pure code:
//! bytes in, ticket out.

use base64::Engine;
use mail_parser::{Address, HeaderValue, Message, MessageParser, MimeHeaders};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::incoming::settings::TicketSettings;

/// One address of a header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mailbox {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub address: String,
}

/// A file attached to the message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub name: Option<String>,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
    /// The bytes, base64.
    pub content: String,
}

/// The ticket document. Field names and meaning are a contract with helpdesks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ticket {
    /// SHA-256 (hex) of the mailbox and the Message-ID, or of the raw message when
    /// it has no Message-ID: the same message always gives the same key, and the
    /// key is safe as a file name and an HTTP header.
    pub idempotency_key: String,
    /// `namespace/name` of the IncomingEmailServer.
    pub mailbox: String,
    pub technician_group: Option<String>,
    pub category: Option<String>,
    pub from: Option<Mailbox>,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub subject: Option<String>,
    /// The text body; for HTML-only mail, the HTML converted to text.
    pub text: Option<String>,
    pub html: Option<String>,
    pub attachments: Vec<Attachment>,
    pub message_id: Option<String>,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    /// The ticket reference found in the subject (e.g. `1234` from `[#1234]`).
    pub ticket_reference: Option<String>,
    /// The Date header, RFC 3339.
    pub date: Option<String>,
    /// When mailroom took the message in, RFC 3339.
    pub received_at: String,
    /// When the mail server received the message, RFC 3339: IMAP's
    /// INTERNALDATE, else the date of the newest Received header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrived_at: Option<String>,
    /// The sender asked for no automatic answers (`X-Auto-Response-Suppress`
    /// All, AutoReply or OOF): mailroom sends no acknowledgement, and a
    /// helpdesk should send none either.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_reply_suppressed: bool,
    /// Set when the message answers a known ticket: it is a reply, to be
    /// added to that ticket rather than opening one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyTo>,
}

/// How a reply was matched to its ticket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ThreadMatch {
    /// The subject carries the ticket's reference (`[#1234]`, the sink's tag).
    Subject,
    /// `In-Reply-To` or `References` name a message delivered for the ticket,
    /// or an acknowledgement of it.
    Thread,
}

/// The ticket a reply answers. At least one of `ticket` and `originalKey`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplyTo {
    /// The helpdesk's name for the ticket (the subject's reference, or what
    /// the sink answered when the ticket was made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Idempotency key of the message that opened the ticket, when mailroom
    /// delivered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_key: Option<String>,
    pub matched_by: ThreadMatch,
}

impl Ticket {
    /// The idempotency key of the message that opened this message's
    /// ticket: its own for a new ticket.
    pub fn root_key(&self) -> &str {
        self.reply_to
            .as_ref()
            .and_then(|r| r.original_key.as_deref())
            .unwrap_or(&self.idempotency_key)
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("the message could not be parsed as mail (no header section)")]
    Unparseable,
    #[error(
        "the mail parser failed on the message (its MIME structure is broken); it is kept aside so that the rest flows"
    )]
    ParserFailed,
}

fn mailboxes(address: Option<&Address<'_>>) -> Vec<Mailbox> {
    address
        .map(|a| {
            a.iter()
                .filter_map(|addr| {
                    Some(Mailbox {
                        name: addr.name().map(str::to_owned),
                        address: addr.address()?.to_owned(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn id_list(value: &HeaderValue<'_>) -> Vec<String> {
    match value {
        HeaderValue::Text(t) => vec![t.to_string()],
        HeaderValue::TextList(list) => list.iter().map(|t| t.to_string()).collect(),
        _ => Vec::new(),
    }
}

/// The idempotency key of a message in a mailbox.
pub(crate) fn idempotency_key(mailbox: &str, message_id: Option<&str>, raw: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(mailbox.as_bytes());
    hash.update([0]);
    match message_id {
        Some(id) => {
            hash.update(b"id:");
            hash.update(id.trim().as_bytes());
        }
        None => {
            hash.update(b"raw:");
            hash.update(raw);
        }
    }
    hex::encode(hash.finalize())
}

/// Parses a message; one without any header section is refused, and so is
/// one the parser panics on (mail-parser 0.11 asserts on some broken MIME
/// nesting in builds with debug assertions): hostile mail must not stop a
/// mailbox.
pub fn parse(raw: &[u8]) -> Result<Message<'_>, TicketError> {
    let message = std::panic::catch_unwind(|| MessageParser::default().parse(raw))
        .map_err(|_| TicketError::ParserFailed)?
        .ok_or(TicketError::Unparseable)?;
    if message.headers().is_empty() {
        return Err(TicketError::Unparseable);
    }
    Ok(message)
}

/// Maps a raw message to a ticket.
pub fn map(
    raw: &[u8],
    settings: &TicketSettings,
    received_at: jiff::Timestamp,
) -> Result<Ticket, TicketError> {
    Ok(from_message(raw, &parse(raw)?, settings, received_at))
}

/// Maps a parsed message (and its raw bytes, for the idempotency key) to a ticket.
pub fn from_message(
    raw: &[u8],
    message: &Message<'_>,
    settings: &TicketSettings,
    received_at: jiff::Timestamp,
) -> Ticket {
    let message_id = message.message_id().map(str::to_owned);
    let subject = message.subject().map(str::to_owned);
    let ticket_reference = subject.as_deref().and_then(|s| {
        std::iter::once(&settings.reference)
            .chain(&settings.sink_tag)
            .find_map(|pattern| pattern.captures(s))
            .and_then(|c| c.get(1).or_else(|| c.get(0)))
            .map(|m| m.as_str().to_owned())
    });
    let attachments = message
        .attachments()
        .map(|part| {
            let bytes = part.contents();
            let content_type = part
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_owned(),
                })
                .unwrap_or_else(|| "application/octet-stream".into());
            Attachment {
                name: part.attachment_name().map(str::to_owned),
                content_type,
                size: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(bytes)),
                content: base64::engine::general_purpose::STANDARD.encode(bytes),
            }
        })
        .collect();
    Ticket {
        idempotency_key: idempotency_key(&settings.mailbox, message_id.as_deref(), raw),
        mailbox: settings.mailbox.clone(),
        technician_group: settings.technician_group.clone(),
        category: settings.category.clone(),
        from: mailboxes(message.from()).into_iter().next(),
        to: mailboxes(message.to()),
        cc: mailboxes(message.cc()),
        subject,
        text: message.body_text(0).map(|t| t.into_owned()),
        // Only HTML the sender wrote: a plain-text message has none, rather
        // than a copy of its text wrapped in markup.
        html: message
            .html_part(0)
            .filter(|part| part.is_text_html())
            .and_then(|_| message.body_html(0))
            .map(|h| h.into_owned()),
        attachments,
        message_id,
        in_reply_to: id_list(message.in_reply_to()),
        references: id_list(message.references()),
        ticket_reference,
        date: message.date().map(|d| d.to_rfc3339()),
        received_at: received_at.to_string(),
        arrived_at: message
            .received()
            .and_then(|r| r.date())
            .and_then(|d| jiff::Timestamp::from_second(d.to_timestamp()).ok())
            .map(|t| t.to_string()),
        auto_reply_suppressed: false,
        reply_to: None,
    }
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;

    fn settings() -> TicketSettings {
        TicketSettings {
            mailbox: "helpdesk/support".into(),
            technician_group: Some("Service Desk".into()),
            category: Some("Hardware".into()),
            reference: Regex::new(r"\[#(\d+)\]").unwrap(),
            sink_tag: Some(Regex::new(r"(?i)\[rt\.test\s+#(\d+)\s*\]").unwrap()),
        }
    }

    const MULTIPART: &str = "From: \"Ann Example\" <ann@company.com>\r\nTo: support@mailroom.test, \"Bob\" <bob@company.com>\r\nCc: carol@company.com\r\nSubject: Re: printer [#1234] broken\r\nMessage-ID: <abc@company.com>\r\nIn-Reply-To: <prev@mailroom.test>\r\nReferences: <first@mailroom.test> <prev@mailroom.test>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: multipart/alternative; boundary=\"b2\"\r\n\r\n--b2\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe printer is on fire.\r\n--b2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>The printer is <b>on fire</b>.</p>\r\n--b2--\r\n--b1\r\nContent-Type: application/pdf; name=\"log.pdf\"\r\nContent-Disposition: attachment; filename=\"log.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nSGVsbG8=\r\n--b1--\r\n";

    #[test]
    fn every_field_is_mapped() {
        let at = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let t = map(MULTIPART.as_bytes(), &settings(), at).unwrap();
        assert_eq!(t.mailbox, "helpdesk/support");
        assert_eq!(t.technician_group.as_deref(), Some("Service Desk"));
        assert_eq!(t.category.as_deref(), Some("Hardware"));
        let from = t.from.unwrap();
        assert_eq!(from.address, "ann@company.com");
        assert_eq!(from.name.as_deref(), Some("Ann Example"));
        assert_eq!(
            t.to.iter().map(|m| m.address.as_str()).collect::<Vec<_>>(),
            ["support@mailroom.test", "bob@company.com"]
        );
        assert_eq!(t.cc[0].address, "carol@company.com");
        assert_eq!(t.subject.as_deref(), Some("Re: printer [#1234] broken"));
        assert_eq!(t.ticket_reference.as_deref(), Some("1234"));
        assert_eq!(
            t.text.as_deref().map(str::trim),
            Some("The printer is on fire.")
        );
        assert!(t.html.unwrap().contains("<b>on fire</b>"));
        assert_eq!(t.message_id.as_deref(), Some("abc@company.com"));
        assert_eq!(t.in_reply_to, ["prev@mailroom.test"]);
        assert_eq!(t.references, ["first@mailroom.test", "prev@mailroom.test"]);
        assert_eq!(t.attachments.len(), 1);
        let a = &t.attachments[0];
        assert_eq!(a.name.as_deref(), Some("log.pdf"));
        assert_eq!(a.content_type, "application/pdf");
        assert_eq!(a.size, 5);
        assert_eq!(a.sha256, hex::encode(Sha256::digest(b"Hello")));
        assert_eq!(a.content, "SGVsbG8=");
        assert!(t.date.unwrap().starts_with("2026-11-24T10:00:00"));
        assert_eq!(t.received_at, "2027-01-15T08:00:00Z");
        assert_eq!(
            t.idempotency_key,
            idempotency_key("helpdesk/support", Some("abc@company.com"), b"")
        );
    }

    #[test]
    fn the_sinks_own_tag_is_a_reference_too() {
        let raw = b"From: a@b.c\r\nSubject: Re: [RT.test  #77 ] printer\r\n\r\nthanks\r\n";
        let t = map(raw, &settings(), jiff::Timestamp::now()).unwrap();
        assert_eq!(t.ticket_reference.as_deref(), Some("77"));
    }

    #[test]
    fn plain_text_mail_has_no_html() {
        let raw = b"From: a@b.c\r\nSubject: x\r\nContent-Type: text/plain\r\n\r\nHello there\r\n";
        let t = map(raw, &settings(), jiff::Timestamp::now()).unwrap();
        assert_eq!(t.text.as_deref(), Some("Hello there\r\n"));
        assert_eq!(t.html, None);
    }

    #[test]
    fn html_only_mail_gets_a_text_body() {
        let raw = b"From: a@b.c\r\nSubject: x\r\nContent-Type: text/html\r\n\r\n<p>Hello <i>there</i></p>\r\n";
        let t = map(raw, &settings(), jiff::Timestamp::now()).unwrap();
        assert!(t.text.unwrap().contains("Hello there"));
    }

    #[test]
    fn without_message_id_the_key_is_a_hash_of_the_bytes() {
        let a = map(
            b"Subject: one\r\n\r\nx\r\n",
            &settings(),
            jiff::Timestamp::now(),
        )
        .unwrap();
        let b = map(
            b"Subject: two\r\n\r\nx\r\n",
            &settings(),
            jiff::Timestamp::now(),
        )
        .unwrap();
        assert_ne!(a.idempotency_key, b.idempotency_key);
        assert_eq!(a.idempotency_key.len(), 64);
        assert!(a.idempotency_key.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn the_same_message_in_another_mailbox_is_another_ticket() {
        assert_ne!(
            idempotency_key("ns/a", Some("x@y"), b""),
            idempotency_key("ns/b", Some("x@y"), b"")
        );
    }

    #[test]
    fn garbage_is_unparseable_not_a_panic() {
        assert_eq!(
            map(b"", &settings(), jiff::Timestamp::now()),
            Err(TicketError::Unparseable)
        );
    }
}
