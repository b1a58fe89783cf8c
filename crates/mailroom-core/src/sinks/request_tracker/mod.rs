//! Request Tracker 5 over REST 2: a new ticket per new message (queue,
//! requestor, subject, body, attachments, category), a correspondence per
//! reply on the ticket it answers.
//!
//! RT has no idempotency key. Every ticket mailroom makes carries, in a
//! multi-value ticket custom field, the key of each message added to it;
//! the field is written in the same request as the ticket or the
//! correspondence, so RT either has both or neither. Before adding anything
//! mailroom looks for the key: a delivery retried after a crash (RT took the
//! message, the cursor had not moved) finds it and adds nothing. The field is
//! created and applied to the queue on first use when missing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

mod rest;

use super::{Delivery, SinkError, in_lanes};
use crate::connection::TlsOptions;
use crate::ticket::Ticket;
use rest::{Answer, Rest, failure};

/// Tickets of a batch under way at once unless the spec says otherwise: RT
/// on SQLite takes one write at a time, so more only waits in its lock.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;

pub struct RequestTrackerSink {
    rest: Rest,
    queue: String,
    category_field: String,
    message_field: String,
    max_in_flight: usize,
    /// The queue's id and whether the category field is applied to it,
    /// checked (and the message field created) once.
    prepared: OnceCell<Prepared>,
}

#[derive(Debug)]
struct Prepared {
    queue_id: u64,
    /// Found applied to the queue; looked for again while it is not, so
    /// that a field created in RT meanwhile is taken without a restart.
    category_field: AtomicBool,
}

impl std::fmt::Debug for RequestTrackerSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTrackerSink")
            .field("api", &self.rest.api)
            .field("queue", &self.queue)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

/// Where RT fields go.
#[derive(Clone, Debug)]
pub struct RtFields {
    pub queue: String,
    pub category: String,
    pub message: String,
}

/// A TicketSQL string literal: quotes and backslashes escaped.
fn sql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl RequestTrackerSink {
    pub fn new(
        url: &str,
        token: &str,
        fields: RtFields,
        timeout: Duration,
        tls: &TlsOptions,
    ) -> Result<Self, SinkError> {
        let client = super::http_client(timeout, tls)?;
        let token = token.trim();
        if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SinkError::Setup(
                "the Request Tracker token is empty or not one word: put the auth token RT showed when it was made (e.g. 1-14-0d7e…) in the Secret".into(),
            ));
        }
        Ok(Self {
            rest: Rest::new(client, url, token),
            queue: fields.queue,
            category_field: fields.category,
            message_field: fields.message,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            prepared: OnceCell::new(),
        })
    }

    /// Sets how many tickets of a batch are under way at once.
    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Sets how often one call is tried and the first pause between tries.
    pub fn with_retries(mut self, attempts: u32, first_backoff: Duration) -> Self {
        self.rest.attempts = attempts.max(1);
        self.rest.first_backoff = first_backoff;
        self
    }

    /// Delivers a batch: replies to one ticket in order, the rest up to
    /// `max_in_flight` at once. Any call RT could not answer fails the
    /// batch; what was added meanwhile is found again by its key.
    pub async fn deliver(&self, tickets: &[Ticket]) -> Result<Vec<Delivery>, SinkError> {
        let prepared = self.prepared.get_or_try_init(|| self.prepare()).await?;
        in_lanes(tickets, self.max_in_flight, |t| {
            self.deliver_one(t, prepared)
        })
        .await
    }

    /// Checks the queue, finds the category field and makes sure the message
    /// field exists on the queue (creating it when missing).
    async fn prepare(&self) -> Result<Prepared, SinkError> {
        let queue_path = format!(
            "/queue/{}",
            percent_encoding::utf8_percent_encode(&self.queue, percent_encoding::NON_ALPHANUMERIC)
        );
        let answer = self.rest.call(Method::GET, &queue_path, None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Err(SinkError::Unavailable(format!(
                "Request Tracker has no queue {:?}: create it, or set requestTracker.queue (default: the technicianGroup, else General)",
                self.queue
            )));
        }
        if !answer.status.is_success() {
            return Err(failure(&answer, "reading the queue"));
        }
        let queue_id = answer.body.get("id").and_then(|v| match v {
            Value::String(s) => s.parse::<u64>().ok(),
            Value::Number(n) => n.as_u64(),
            _ => None,
        });
        let Some(queue_id) = queue_id else {
            return Err(SinkError::Unavailable(format!(
                "Request Tracker's answer for queue {:?} has no id",
                self.queue
            )));
        };
        let fields = self.applied_fields(queue_id).await?;
        if !fields.iter().any(|f| f == &self.message_field) {
            let body = json!({
                "Name": self.message_field,
                "Type": "Freeform",
                "MaxValues": 0,
                "LookupType": "RT::Queue-RT::Ticket",
                "Description": "Keys of the mail mailroom added to this ticket; mailroom reads them to never add a message twice",
                "Queue": queue_id,
            });
            let answer = self
                .rest
                .call(Method::POST, "/customfield", Some(&body))
                .await?;
            if !answer.status.is_success() {
                return Err(SinkError::Unavailable(format!(
                    "mailroom could not create the ticket custom field {:?} (RT answered {}: {}): create it yourself (Freeform, multiple values, applied to queue {:?}) or give the token's user AdminCustomField and AssignCustomFields",
                    self.message_field,
                    answer.status,
                    answer.text(),
                    self.queue
                )));
            }
            // Verified, not assumed: a search by a field RT does not know
            // would match every ticket.
            if !self
                .applied_fields(queue_id)
                .await?
                .iter()
                .any(|f| f == &self.message_field)
            {
                return Err(SinkError::Unavailable(format!(
                    "the ticket custom field {:?} was created but is not applied to queue {:?}: apply it in RT (Admin → Custom Fields → Applies to)",
                    self.message_field, self.queue
                )));
            }
        }
        Ok(Prepared {
            queue_id,
            category_field: AtomicBool::new(fields.iter().any(|f| f == &self.category_field)),
        })
    }

    /// Names of the ticket custom fields applied to a queue (or globally).
    async fn applied_fields(&self, queue_id: u64) -> Result<Vec<String>, SinkError> {
        let body = self
            .rest
            .expect(
                Method::GET,
                &format!("/queue/{queue_id}/customfields?per_page=100&fields=Name,LookupType"),
                None,
                "listing the queue's custom fields",
            )
            .await?;
        Ok(body
            .get("items")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter(|i| {
                        i.get("LookupType").and_then(Value::as_str) == Some("RT::Queue-RT::Ticket")
                    })
                    .filter_map(|i| i.get("Name").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn deliver_one(
        &self,
        ticket: &Ticket,
        prepared: &Prepared,
    ) -> Result<Delivery, SinkError> {
        if let Some(reply) = &ticket.reply_to {
            let mut target = None;
            if let Some(id) = reply
                .ticket
                .as_deref()
                .filter(|r| r.bytes().all(|b| b.is_ascii_digit()))
            {
                target = self
                    .ticket_fields(id)
                    .await?
                    .map(|values| (id.to_owned(), values));
            }
            if target.is_none()
                && let Some(root) = &reply.original_key
                && let Some(id) = self.find(root).await?
            {
                target = self.ticket_fields(&id).await?.map(|values| (id, values));
            }
            if let Some((id, keys)) = target {
                return self.correspond(&id, keys, ticket).await;
            }
            // A ticket RT does not have (another helpdesk's number, a deleted
            // ticket): the message opens one, as RT's own mail gateway does.
        }
        if self.find(&ticket.idempotency_key).await?.is_some() {
            return Ok(Delivery::Duplicate);
        }
        self.create(ticket, prepared).await
    }

    /// The ticket that holds message `key`, if one does (the first made).
    async fn find(&self, key: &str) -> Result<Option<String>, SinkError> {
        Ok(self.find_all(key).await?.first().map(u64::to_string))
    }

    /// Every ticket that holds message `key`, oldest first.
    async fn find_all(&self, key: &str) -> Result<Vec<u64>, SinkError> {
        let query = format!("CF.{{{}}} = {}", self.message_field, sql_literal(key));
        let query: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
        let path = format!("/tickets?fields=id&per_page=20&orderby=id&order=ASC&query={query}");
        let body = self
            .rest
            .expect(
                Method::GET,
                &path,
                None,
                "searching for an earlier delivery",
            )
            .await?;
        let mut ids: Vec<u64> = body
            .get("items")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|t| match t.get("id") {
                        Some(Value::String(s)) => s.parse().ok(),
                        Some(Value::Number(n)) => n.as_u64(),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The message keys recorded on ticket `id`, or None when RT has no such
    /// ticket.
    async fn ticket_fields(&self, id: &str) -> Result<Option<Vec<String>>, SinkError> {
        let answer = self
            .rest
            .call(Method::GET, &format!("/ticket/{id}"), None)
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !answer.status.is_success() {
            return Err(failure(&answer, "reading a ticket"));
        }
        let keys = answer
            .body
            .get("CustomFields")
            .and_then(Value::as_array)
            .and_then(|fields| {
                fields.iter().find(|f| {
                    f.get("name").and_then(Value::as_str) == Some(self.message_field.as_str())
                })
            })
            .and_then(|f| f.get("values"))
            .and_then(Value::as_array)
            .map(|v| {
                v.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(keys))
    }

    /// The body and attachments as REST 2 takes them: the HTML when the
    /// sender wrote one (RT derives the text for its mail), else the text.
    fn content(ticket: &Ticket) -> Value {
        let (content, content_type) = match (&ticket.html, &ticket.text) {
            (Some(html), _) => (html.as_str(), "text/html"),
            (None, Some(text)) => (text.as_str(), "text/plain"),
            (None, None) => ("", "text/plain"),
        };
        let attachments: Vec<Value> = ticket
            .attachments
            .iter()
            .map(|a| {
                json!({
                    "FileName": a.name.clone().unwrap_or_else(|| "attachment".into()),
                    "FileType": a.content_type,
                    "FileContent": a.content,
                })
            })
            .collect();
        let mut body = json!({"ContentType": content_type});
        if !content.is_empty() {
            body["Content"] = json!(content);
        }
        if !attachments.is_empty() {
            body["Attachments"] = json!(attachments);
        }
        body
    }

    fn refused(&self, answer: &Answer, what: &str) -> Result<Delivery, SinkError> {
        match answer.status {
            StatusCode::UNAUTHORIZED => Err(failure(answer, what)),
            s => Ok(Delivery::Rejected {
                reason: format!("Request Tracker refused {what} ({s}): {}", answer.text()),
            }),
        }
    }

    async fn create(&self, ticket: &Ticket, prepared: &Prepared) -> Result<Delivery, SinkError> {
        let mut body = Self::content(ticket);
        body["Queue"] = json!(self.queue);
        body["Subject"] = json!(
            ticket
                .subject
                .as_deref()
                .unwrap_or("(no subject)")
                .replace(['\r', '\n'], " ")
        );
        if let Some(from) = &ticket.from {
            body["Requestor"] = json!([from.address]);
        }
        let mut fields = json!({ &self.message_field: [ticket.idempotency_key] });
        if let Some(category) = &ticket.category {
            if !prepared.category_field.load(Ordering::Relaxed) {
                let applied = self.applied_fields(prepared.queue_id).await?;
                if applied.iter().any(|f| f == &self.category_field) {
                    prepared.category_field.store(true, Ordering::Relaxed);
                }
            }
            if !prepared.category_field.load(Ordering::Relaxed) {
                return Err(SinkError::Unavailable(format!(
                    "the ticket custom field {:?} for the category is not applied to queue {:?}: create it in RT (Select or Freeform) and apply it to the queue, or set requestTracker.categoryField",
                    self.category_field, self.queue
                )));
            }
            fields[&self.category_field] = json!(category);
        }
        body["CustomFields"] = fields;
        let answer = self.rest.call(Method::POST, "/ticket", Some(&body)).await?;
        if !answer.status.is_success() {
            return self.refused(&answer, "the new ticket");
        }
        let created = match answer.body.get("id") {
            Some(Value::String(id)) => id.parse::<u64>().ok(),
            Some(Value::Number(id)) => id.as_u64(),
            _ => None,
        };
        let Some(created) = created else {
            return Ok(Delivery::Accepted);
        };
        // A request of a killed process may still have been under way in RT
        // when this one looked: of two tickets with one key the first made
        // stays, and the other is merged into it (RT's own remedy).
        let all = self.find_all(&ticket.idempotency_key).await?;
        let Some(&first) = all.first() else {
            return Ok(Delivery::Created {
                reference: created.to_string(),
            });
        };
        for &other in all.iter().filter(|&&id| id != first) {
            tracing::warn!(
                ticket = other,
                into = first,
                "a message reached Request Tracker twice (a delivery of a stopped process was still under way); merging the second ticket into the first"
            );
            self.rest
                .expect(
                    Method::PUT,
                    &format!("/ticket/{other}"),
                    Some(&json!({"MergeInto": first})),
                    "merging a twice-made ticket",
                )
                .await?;
        }
        Ok(if first == created {
            Delivery::Created {
                reference: created.to_string(),
            }
        } else {
            Delivery::Duplicate
        })
    }

    async fn correspond(
        &self,
        id: &str,
        mut keys: Vec<String>,
        ticket: &Ticket,
    ) -> Result<Delivery, SinkError> {
        if keys.iter().any(|k| k == &ticket.idempotency_key) {
            return Ok(Delivery::Duplicate);
        }
        keys.push(ticket.idempotency_key.clone());
        let mut body = Self::content(ticket);
        body["CustomFields"] = json!({ &self.message_field: keys });
        let answer = self
            .rest
            .call(
                Method::POST,
                &format!("/ticket/{id}/correspond"),
                Some(&body),
            )
            .await?;
        if !answer.status.is_success() {
            return self.refused(&answer, "the reply");
        }
        Ok(Delivery::Created {
            reference: id.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_sql_literals_cannot_break_out() {
        assert_eq!(sql_literal("abc"), "'abc'");
        assert_eq!(sql_literal("a'b\\"), "'a\\'b\\\\'");
    }

    #[test]
    fn the_token_stays_out_of_debug_and_a_bad_one_is_named_without_it() {
        let fields = RtFields {
            queue: "General".into(),
            category: "Category".into(),
            message: "Mailroom Message".into(),
        };
        let sink = RequestTrackerSink::new(
            "http://127.0.0.1:1",
            "1-14-secretsecret",
            fields.clone(),
            Duration::from_secs(1),
            &TlsOptions::default(),
        )
        .unwrap();
        assert!(!format!("{sink:?}").contains("secretsecret"));
        let err = RequestTrackerSink::new(
            "http://127.0.0.1:1",
            "two words",
            fields,
            Duration::from_secs(1),
            &TlsOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains("words"), "{err}");
    }
}
