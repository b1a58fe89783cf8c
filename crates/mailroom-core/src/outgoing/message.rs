//! A message to send, as the submission endpoint and acknowledgements describe
//! it, checked before anything reaches a server, and built into MIME with lettre.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::SystemTime;

use base64::Engine;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::{Address, Message};
use serde::{Deserialize, Serialize};

/// Largest message the endpoint takes, attachments included (before base64).
pub const MAX_MESSAGE_BYTES: usize = 25 * 1024 * 1024;

/// Headers mailroom sets itself; a request may not set or repeat them.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "sender",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "message-id",
    "date",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "return-path",
    "received",
];

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutgoingMessage {
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub cc: Vec<String>,
    /// Receive the message without appearing in its headers.
    #[serde(default)]
    pub bcc: Vec<String>,
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// Extra headers, e.g. `X-Ticket-Id` or `Auto-Submitted`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub attachments: Vec<OutgoingAttachment>,
    /// Message-ID this message answers, for threading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<String>,
    #[serde(default)]
    pub references: Vec<String>,
    /// Left side of the Message-ID, for messages whose id others must
    /// recognise (acknowledgements); else a new unique one. Never taken from
    /// a submission.
    #[serde(skip)]
    pub message_id_local: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutgoingAttachment {
    pub filename: String,
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// The content, base64.
    pub content: String,
}

fn default_content_type() -> String {
    "application/octet-stream".to_owned()
}

/// Bad input, naming the field: nothing was sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidMessage {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> InvalidMessage {
    InvalidMessage {
        field: field.into(),
        message: message.into(),
    }
}

/// Who a message is from: the sending server's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub email: String,
    pub sender_name: Option<String>,
    pub reply_to: Option<String>,
}

/// A message ready for the SMTP transaction.
#[derive(Clone, Debug)]
pub struct Built {
    pub message_id: String,
    /// To, Cc and Bcc in order, each once.
    pub recipients: Vec<Address>,
    pub bytes: Vec<u8>,
}

fn single_line(field: &str, value: &str) -> Result<(), InvalidMessage> {
    if value.contains(['\r', '\n']) {
        return Err(invalid(
            field,
            "contains a line break (CR or LF); header values must be one line",
        ));
    }
    Ok(())
}

fn address(field: &str, value: &str) -> Result<Address, InvalidMessage> {
    single_line(field, value)?;
    Address::from_str(value.trim()).map_err(|e| {
        invalid(
            field,
            format!("{value:?} is not a valid email address ({e})"),
        )
    })
}

fn message_id_ref(field: &str, value: &str) -> Result<(), InvalidMessage> {
    single_line(field, value)?;
    let inner = value.trim();
    if !(inner.starts_with('<') && inner.ends_with('>') && inner.contains('@'))
        || inner.contains(char::is_whitespace)
    {
        return Err(invalid(
            field,
            format!("{value:?} is not a Message-ID such as <id@example.com>"),
        ));
    }
    Ok(())
}

/// A message that passed every check, with its recipients parsed and its
/// attachments decoded once, however many servers it is built for.
#[derive(Debug)]
pub struct Checked<'a> {
    message: &'a OutgoingMessage,
    /// To, Cc and Bcc in order, each once.
    pub recipients: Vec<Address>,
    attachments: Vec<(ContentType, Vec<u8>)>,
}

impl OutgoingMessage {
    /// Checks every field; the first problem is named.
    pub(crate) fn validate(&self) -> Result<Checked<'_>, InvalidMessage> {
        let mut recipients: Vec<Address> = Vec::new();
        for (list, values) in [("to", &self.to), ("cc", &self.cc), ("bcc", &self.bcc)] {
            for (i, value) in values.iter().enumerate() {
                let a = address(&format!("{list}[{i}]"), value)?;
                if !recipients.contains(&a) {
                    recipients.push(a);
                }
            }
        }
        if recipients.is_empty() {
            return Err(invalid("to", "at least one recipient in to, cc or bcc"));
        }
        single_line("subject", &self.subject)?;
        if self.text.is_none() && self.html.is_none() {
            return Err(invalid("text", "a body is required: text, html or both"));
        }
        for (name, value) in &self.headers {
            let field = format!("headers.{name}");
            let valid_name =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
            if !valid_name {
                return Err(invalid(
                    &field,
                    "a header name is printable ASCII without spaces or colons",
                ));
            }
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(invalid(
                    &field,
                    "mailroom sets this header itself; use the matching field of the request",
                ));
            }
            single_line(&field, value)?;
        }
        if let Some(id) = &self.in_reply_to {
            message_id_ref("inReplyTo", id)?;
        }
        for (i, id) in self.references.iter().enumerate() {
            message_id_ref(&format!("references[{i}]"), id)?;
        }
        let mut total =
            self.text.as_ref().map_or(0, String::len) + self.html.as_ref().map_or(0, String::len);
        let mut attachments = Vec::with_capacity(self.attachments.len());
        for (i, a) in self.attachments.iter().enumerate() {
            single_line(&format!("attachments[{i}].filename"), &a.filename)?;
            if a.filename.trim().is_empty() {
                return Err(invalid(
                    format!("attachments[{i}].filename"),
                    "a file name is required",
                ));
            }
            let content_type = ContentType::parse(&a.content_type).map_err(|_| {
                invalid(
                    format!("attachments[{i}].contentType"),
                    format!(
                        "{:?} is not a MIME type such as application/pdf",
                        a.content_type
                    ),
                )
            })?;
            let bytes = decode(i, &a.content)?;
            total += bytes.len();
            attachments.push((content_type, bytes));
        }
        if total > MAX_MESSAGE_BYTES {
            return Err(invalid(
                "attachments",
                format!("the message is larger than {MAX_MESSAGE_BYTES} bytes"),
            ));
        }
        Ok(Checked {
            message: self,
            recipients,
            attachments,
        })
    }

    /// Validates and builds the MIME message from `from`'s identity.
    pub fn build(&self, from: &Identity, message_id: &str) -> Result<Built, InvalidMessage> {
        self.validate()?.build(from, message_id)
    }
}

impl Checked<'_> {
    /// Builds the MIME message from `from`'s identity. Bcc stays in the
    /// envelope only.
    pub fn build(&self, from: &Identity, message_id: &str) -> Result<Built, InvalidMessage> {
        let m = self.message;
        let sender = Mailbox::new(from.sender_name.clone(), address("email", &from.email)?);
        let mut builder = Message::builder()
            .from(sender)
            .subject(m.subject.clone())
            .message_id(Some(message_id.to_owned()))
            .date(SystemTime::now());
        if let Some(r) = &from.reply_to {
            builder = builder.reply_to(Mailbox::new(None, address("replyTo", r)?));
        }
        for (list, values) in [("to", &m.to), ("cc", &m.cc)] {
            for (i, value) in values.iter().enumerate() {
                let mailbox = Mailbox::new(None, address(&format!("{list}[{i}]"), value)?);
                builder = if list == "to" {
                    builder.to(mailbox)
                } else {
                    builder.cc(mailbox)
                };
            }
        }
        if let Some(id) = &m.in_reply_to {
            builder = builder.in_reply_to(id.trim().to_owned());
        }
        if !m.references.is_empty() {
            let joined: Vec<&str> = m.references.iter().map(|r| r.trim()).collect();
            builder = builder.references(joined.join(" "));
        }
        for (name, value) in &m.headers {
            let name = HeaderName::new_from_ascii(name.clone())
                .map_err(|_| invalid(format!("headers.{name}"), "not a valid header name"))?;
            builder = builder.raw_header(HeaderValue::new(name, value.clone()));
        }
        let body = self.body()?;
        let message = match body {
            Body::Single(part) => builder.singlepart(part),
            Body::Multi(part) => builder.multipart(part),
        }
        .map_err(|e| invalid("to", format!("the message could not be built: {e}")))?;
        Ok(Built {
            message_id: message_id.to_owned(),
            recipients: self.recipients.clone(),
            bytes: message.formatted(),
        })
    }

    fn body(&self) -> Result<Body, InvalidMessage> {
        let m = self.message;
        let text = match (&m.text, &m.html) {
            (Some(t), Some(h)) => {
                Body::Multi(MultiPart::alternative_plain_html(t.clone(), h.clone()))
            }
            (Some(t), None) => Body::Single(SinglePart::plain(t.clone())),
            (None, Some(h)) => Body::Single(SinglePart::html(h.clone())),
            (None, None) => return Err(invalid("text", "a body is required: text, html or both")),
        };
        if self.attachments.is_empty() {
            return Ok(text);
        }
        let mut mixed = match text {
            Body::Single(part) => MultiPart::mixed().singlepart(part),
            Body::Multi(part) => MultiPart::mixed().multipart(part),
        };
        for ((content_type, bytes), a) in self.attachments.iter().zip(&m.attachments) {
            mixed = mixed.singlepart(
                Attachment::new(a.filename.clone()).body(bytes.clone(), content_type.clone()),
            );
        }
        Ok(Body::Multi(mixed))
    }
}

enum Body {
    Single(SinglePart),
    Multi(MultiPart),
}

fn decode(i: usize, content: &str) -> Result<Vec<u8>, InvalidMessage> {
    base64::engine::general_purpose::STANDARD
        .decode(content.trim())
        .map_err(|e| {
            invalid(
                format!("attachments[{i}].content"),
                format!("not base64: {e}"),
            )
        })
}

/// A new Message-ID on `domain`: time and 96 random bits, unique without
/// coordination between replicas.
pub fn new_message_id(domain: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "<{nanos:x}.{:016x}{:08x}@{domain}>",
        fastrand::u64(..),
        fastrand::u32(..)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> OutgoingMessage {
        OutgoingMessage {
            to: vec!["a@example.com".into()],
            subject: "Hello".into(),
            text: Some("Hi".into()),
            ..Default::default()
        }
    }

    fn identity() -> Identity {
        Identity {
            email: "help@example.com".into(),
            sender_name: Some("Help Desk".into()),
            reply_to: Some("tickets@example.com".into()),
        }
    }

    #[test]
    fn line_breaks_and_bad_addresses_name_the_field() {
        let cases: Vec<(OutgoingMessage, &str)> = vec![
            (
                OutgoingMessage {
                    subject: "a\r\nBcc: x@evil.test".into(),
                    ..message()
                },
                "subject",
            ),
            (
                OutgoingMessage {
                    to: vec!["a@example.com\r\nBcc: x@evil.test".into()],
                    ..message()
                },
                "to[0]",
            ),
            (
                OutgoingMessage {
                    cc: vec!["not an address".into()],
                    ..message()
                },
                "cc[0]",
            ),
            (
                OutgoingMessage {
                    to: vec![],
                    ..message()
                },
                "to",
            ),
            (
                OutgoingMessage {
                    text: None,
                    ..message()
                },
                "text",
            ),
            (
                OutgoingMessage {
                    headers: [("X-A".to_owned(), "1\n2".to_owned())].into(),
                    ..message()
                },
                "headers.X-A",
            ),
            (
                OutgoingMessage {
                    headers: [("From".to_owned(), "x@y.z".to_owned())].into(),
                    ..message()
                },
                "headers.From",
            ),
            (
                OutgoingMessage {
                    in_reply_to: Some("nope".into()),
                    ..message()
                },
                "inReplyTo",
            ),
            (
                OutgoingMessage {
                    attachments: vec![OutgoingAttachment {
                        filename: "a".into(),
                        content_type: "text/plain".into(),
                        content: "***".into(),
                    }],
                    ..message()
                },
                "attachments[0].content",
            ),
        ];
        for (m, field) in cases {
            let e = m.build(&identity(), "<1@example.com>").expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn builds_from_name_reply_to_threading_and_no_bcc_header() {
        let m = OutgoingMessage {
            bcc: vec!["hidden@example.org".into()],
            in_reply_to: Some("<orig@example.net>".into()),
            references: vec!["<orig@example.net>".into()],
            headers: [("Auto-Submitted".to_owned(), "auto-replied".to_owned())].into(),
            ..message()
        };
        let built = m.build(&identity(), "<42@example.com>").expect("builds");
        let text = String::from_utf8(built.bytes).expect("utf-8");
        assert!(
            text.contains("From: \"Help Desk\" <help@example.com>"),
            "{text}"
        );
        assert!(text.contains("Reply-To: tickets@example.com"), "{text}");
        assert!(text.contains("Message-ID: <42@example.com>"), "{text}");
        assert!(text.contains("In-Reply-To: <orig@example.net>"), "{text}");
        assert!(text.contains("Auto-Submitted: auto-replied"), "{text}");
        assert!(!text.to_ascii_lowercase().contains("bcc:"), "{text}");
        assert_eq!(built.recipients.len(), 2);
    }

    #[test]
    fn message_ids_use_the_domain_and_differ() {
        let a = new_message_id("example.com");
        let b = new_message_id("example.com");
        assert!(a.ends_with("@example.com>") && a.starts_with('<'));
        assert_ne!(a, b);
    }
}
