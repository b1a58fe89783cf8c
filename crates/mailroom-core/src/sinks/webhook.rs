//! HTTP(S) POST of each ticket as JSON, with CloudEvents headers, an
//! `Idempotency-Key` header and, when a key is given, a Standard Webhooks
//! signature (`webhook-id`, `webhook-timestamp`, `webhook-signature`), which
//! receivers check with off-the-shelf libraries and which refuses replays.
//! Up to `max_in_flight` tickets of a batch are under way at once. 5xx, 408,
//! 429 and timeouts are retried with backoff, or after the `Retry-After` the
//! receiver names (a long one by the worker, between sessions); any other 4xx
//! refuses that ticket for good.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use standardwebhooks::Webhook;

use super::{Delivery, SinkError};
use crate::connection::TlsOptions;
use crate::ticket::Ticket;

/// CloudEvents type of a new ticket.
pub(crate) const EVENT_TYPE: &str = "dev.mailroom.ticket.created";
/// CloudEvents type of a reply to a known ticket (the document's `replyTo`
/// names it).
pub(crate) const REPLY_EVENT_TYPE: &str = "dev.mailroom.ticket.replied";
/// Tickets of one batch under way at once, unless the spec says otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;
/// The longest `Retry-After` waited for within one delivery. A longer one
/// ends the delivery, and the worker waits it out between sessions, where a
/// stop does not have to wait for it.
const MAX_RETRY_AFTER_IN_PLACE: Duration = Duration::from_secs(10);

pub struct WebhookSink {
    client: reqwest::Client,
    url: String,
    signer: Option<Webhook>,
    attempts: u32,
    first_backoff: Duration,
    max_in_flight: usize,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink")
            .field("url", &self.url)
            .field("signed", &self.signer.is_some())
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

/// A Standard Webhooks key: `whsec_` followed by base64 (the prefix may be
/// left out), as the receivers' libraries take it.
fn signer(key: &str) -> Result<Webhook, SinkError> {
    Webhook::new(key.trim()).map_err(|_| {
        SinkError::Setup(
            "the webhook signing key is not a Standard Webhooks key: write whsec_ followed by the base64 of at least 24 random bytes (e.g. `echo whsec_$(head -c 32 /dev/urandom | base64)`) and give the receiver the same text".into(),
        )
    })
}

impl WebhookSink {
    pub fn new(
        url: &str,
        signing_key: Option<&str>,
        timeout: Duration,
        tls: &TlsOptions,
    ) -> Result<Self, SinkError> {
        let client = super::http_client(timeout, tls)?;
        Ok(Self {
            client,
            url: url.to_owned(),
            signer: signing_key.map(signer).transpose()?,
            attempts: 4,
            first_backoff: Duration::from_millis(250),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        })
    }

    /// Sets how often one ticket is tried and the first pause between tries.
    pub fn with_retries(mut self, attempts: u32, first_backoff: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.first_backoff = first_backoff;
        self
    }

    /// Sets how many tickets of a batch are under way at once.
    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Delivers a batch, up to `max_in_flight` tickets at once; the answers
    /// come back in the batch's order. When one ticket cannot be delivered the
    /// batch fails as a whole and nothing of it counts as delivered: tickets
    /// accepted meanwhile come again with the same `webhook-id` and
    /// `Idempotency-Key`, which the receiver recognises.
    pub async fn deliver(&self, tickets: &[Ticket]) -> Result<Vec<Delivery>, SinkError> {
        super::in_lanes(tickets, self.max_in_flight, |t| self.deliver_one(t)).await
    }

    async fn deliver_one(&self, ticket: &Ticket) -> Result<Delivery, SinkError> {
        let body = serde_json::to_vec(ticket)
            .map_err(|e| SinkError::Unavailable(format!("cannot serialise a ticket: {e}")))?;
        let mut backoff = self.first_backoff;
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            let mut request = self
                .client
                .post(&self.url)
                .header("Content-Type", "application/json")
                .header("Idempotency-Key", &ticket.idempotency_key)
                .header("ce-specversion", "1.0")
                .header(
                    "ce-type",
                    if ticket.reply_to.is_some() {
                        REPLY_EVENT_TYPE
                    } else {
                        EVENT_TYPE
                    },
                )
                .header("ce-source", format!("mailroom/{}", ticket.mailbox))
                .header("ce-id", &ticket.idempotency_key)
                .header("ce-time", &ticket.received_at);
            if let Some(signer) = &self.signer {
                // Signed at each attempt: receivers refuse timestamps older
                // than a few minutes, and a retry may come later than that.
                let now = unix_now();
                let signature = signer
                    .sign(&ticket.idempotency_key, now, &body)
                    .map_err(|e| SinkError::Unavailable(format!("cannot sign a ticket: {e}")))?;
                request = request
                    .header("webhook-id", &ticket.idempotency_key)
                    .header("webhook-timestamp", now.to_string())
                    .header("webhook-signature", signature);
            }
            let mut pause = backoff;
            match request.body(body.clone()).send().await {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        let body = response.bytes().await.unwrap_or_default();
                        return Ok(match ticket_id(&body) {
                            Some(reference) => Delivery::Created { reference },
                            None => Delivery::Accepted,
                        });
                    }
                    let asked = retry_after(status, response.headers());
                    let text: String = response
                        .text()
                        .await
                        .unwrap_or_default()
                        .chars()
                        .take(200)
                        .collect();
                    let retry = status.is_server_error()
                        || status == StatusCode::REQUEST_TIMEOUT
                        || status == StatusCode::TOO_MANY_REQUESTS;
                    if !retry {
                        return Ok(Delivery::Rejected {
                            reason: format!("the webhook answered {status}: {text}"),
                        });
                    }
                    last = format!("the webhook answered {status}: {text}");
                    if let Some(asked) = asked {
                        if asked > MAX_RETRY_AFTER_IN_PLACE {
                            return Err(SinkError::Busy {
                                message: last,
                                retry_after: asked,
                            });
                        }
                        pause = asked;
                    }
                }
                Err(e) => last = format!("the webhook could not be reached: {e}"),
            }
            if attempt < self.attempts {
                tokio::time::sleep(pause).await;
                backoff = backoff.saturating_mul(2);
            }
        }
        Err(SinkError::Unavailable(last))
    }
}

/// The `ticketId` a receiver may answer with (`{"ticketId": 4711}` or a
/// string): the helpdesk's own number, for acknowledgements to carry.
fn ticket_id(body: &[u8]) -> Option<String> {
    let answer: serde_json::Value = serde_json::from_slice(body).ok()?;
    let id = match answer.get("ticketId")? {
        serde_json::Value::String(s) => s.trim().to_owned(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return None,
    };
    // It goes into a subject line: short, printable, one line.
    let usable = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_graphic());
    usable.then_some(id)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The wait a 429 or 503 names in `Retry-After`: seconds or an HTTP date.
fn retry_after(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    match value.parse::<u64>() {
        Ok(seconds) => Some(Duration::from_secs(seconds)),
        Err(_) => httpdate::parse_http_date(value)
            .ok()
            .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn retry_after_takes_seconds_and_dates_on_429_and_503_only() {
        let too_many = StatusCode::TOO_MANY_REQUESTS;
        assert_eq!(
            retry_after(too_many, &headers("7")),
            Some(Duration::from_secs(7))
        );
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(90));
        let waited = retry_after(StatusCode::SERVICE_UNAVAILABLE, &headers(&later)).unwrap();
        assert!((88..=90).contains(&waited.as_secs()), "{waited:?}");
        let past = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH);
        assert_eq!(retry_after(too_many, &headers(&past)), Some(Duration::ZERO));
        assert_eq!(retry_after(too_many, &headers("soon")), None);
        assert_eq!(
            retry_after(StatusCode::INTERNAL_SERVER_ERROR, &headers("7")),
            None
        );
    }

    #[test]
    fn the_ticket_id_is_read_from_a_number_or_a_string_and_nothing_else() {
        assert_eq!(ticket_id(br#"{"ticketId": 4711}"#).as_deref(), Some("4711"));
        assert_eq!(
            ticket_id(br#"{"ticketId": " INC-12 ", "x": 1}"#).as_deref(),
            Some("INC-12")
        );
        for body in [
            &b""[..],
            b"ok",
            br#"{"id": 1}"#,
            br#"{"ticketId": null}"#,
            br#"{"ticketId": "two words"}"#,
            br#"{"ticketId": "a
Bcc: x@example.org"}"#,
        ] {
            assert_eq!(ticket_id(body), None, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn a_key_that_is_not_a_standard_webhooks_key_is_refused_with_the_fix() {
        let err = signer("hmac-key!").err().unwrap().to_string();
        assert!(err.contains("whsec_"), "{err}");
        assert!(
            !err.contains("hmac-key"),
            "the key stays out of the message"
        );
        assert!(signer("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(signer("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
    }
}
