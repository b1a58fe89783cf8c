//! What the filter and loop protection look at, taken once from a parsed
//! message: the sender address (not its display name), normalised subject and
//! text, and the headers that mark automatic mail.

use mail_parser::{HeaderName, Message, MimeHeaders};

use super::normalize;

/// Why a message has no usable sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderProblem {
    Missing,
    Malformed(String),
}

/// The facts of one message, normalised for judging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageFacts {
    /// The From header's address as written (for records), or what is wrong with it.
    pub sender: Result<String, SenderProblem>,
    /// Normalised sender address.
    pub sender_key: Option<String>,
    /// Normalised sender domain.
    pub sender_domain: Option<String>,
    /// Normalised subject and text body, joined by a line feed (phrases never
    /// match across the two). Empty when no keyword needs it.
    pub searchable: String,
    pub message_id: Option<String>,
    pub auto_submitted: Option<String>,
    pub x_autoreply: bool,
    pub precedence: Option<String>,
    pub delivery_report: bool,
    /// `X-Auto-Response-Suppress` asks for no automatic answer of the kind an
    /// acknowledgement is: no acknowledgement, but still a ticket.
    pub suppress_auto_reply: bool,
}

fn header_text(message: &Message<'_>, name: &str) -> Option<String> {
    message
        .header_raw(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn is_address(a: &str) -> bool {
    match a.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && domain.contains('.')
                && !a.chars().any(|c| c.is_whitespace() || c == '<' || c == '>')
        }
        None => false,
    }
}

impl MessageFacts {
    /// Takes the facts of a message; `with_text` also normalises subject and
    /// body, which only keyword filters need.
    pub fn from_message(message: &Message<'_>, with_text: bool) -> Self {
        let sender = match message.from() {
            None if message.header(HeaderName::From).is_none() => Err(SenderProblem::Missing),
            None => Err(SenderProblem::Malformed(
                header_text(message, "From").unwrap_or_default(),
            )),
            Some(list) => match list.first().and_then(|a| a.address()) {
                Some(a) if is_address(a) => Ok(a.to_owned()),
                Some(a) => Err(SenderProblem::Malformed(a.to_owned())),
                None => Err(SenderProblem::Malformed(
                    header_text(message, "From").unwrap_or_default(),
                )),
            },
        };
        let sender_key = sender.as_ref().ok().map(|s| normalize::address(s));
        let sender_domain = sender_key
            .as_ref()
            .and_then(|s| s.rsplit_once('@').map(|(_, d)| d.to_owned()));
        let searchable = if with_text {
            let subject = message.subject().unwrap_or_default();
            let body = message.body_text(0).unwrap_or_default();
            format!("{}\n{}", normalize::text(subject), normalize::text(&body))
        } else {
            String::new()
        };
        let content_type = message
            .content_type()
            .map(|ct| {
                format!(
                    "{}/{}",
                    ct.ctype().to_ascii_lowercase(),
                    ct.subtype().unwrap_or_default().to_ascii_lowercase()
                )
            })
            .unwrap_or_default();
        Self {
            sender,
            sender_key,
            sender_domain,
            searchable,
            message_id: message.message_id().map(str::to_owned),
            auto_submitted: header_text(message, "Auto-Submitted"),
            x_autoreply: header_text(message, "X-Autoreply").is_some()
                || header_text(message, "X-Autorespond").is_some(),
            precedence: header_text(message, "Precedence").map(|p| p.to_ascii_lowercase()),
            delivery_report: content_type == "multipart/report"
                || content_type == "message/delivery-status",
            suppress_auto_reply: header_text(message, "X-Auto-Response-Suppress")
                .is_some_and(|v| suppresses_acknowledgement(&v)),
        }
    }

    /// The sender as recorded in rejections.
    pub(crate) fn sender_for_record(&self) -> Option<String> {
        match &self.sender {
            Ok(s) => Some(s.clone()),
            Err(SenderProblem::Malformed(raw)) => Some(raw.clone()),
            Err(SenderProblem::Missing) => None,
        }
    }
}

/// Whether an `X-Auto-Response-Suppress` value (Microsoft's comma-separated
/// flags) covers an acknowledgement. `All` and `AutoReply` name it; `OOF`
/// (out-of-office answers) is taken to cover it too, since an acknowledgement
/// is the same kind of automatic answer to a person. `DR`, `NDR`, `RN` and
/// `NRN` are about delivery and read reports, which an acknowledgement is not.
fn suppresses_acknowledgement(value: &str) -> bool {
    value.split(',').map(str::trim).any(|flag| {
        ["All", "AutoReply", "OOF"]
            .iter()
            .any(|f| flag.eq_ignore_ascii_case(f))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_are_suppressed_by_all_autoreply_and_oof_only() {
        for v in [
            "All",
            "AutoReply",
            "OOF",
            "oof",
            "DR, AutoReply",
            " NDR ,All",
        ] {
            assert!(suppresses_acknowledgement(v), "{v}");
        }
        for v in ["DR", "NDR", "RN", "NRN", "DR, NDR", "", "None"] {
            assert!(!suppresses_acknowledgement(v), "{v}");
        }
    }
}
