//! HTTPS POST of each ticket as JSON, with CloudEvents headers, an
//! `Idempotency-Key` header and, when a key is given, an HMAC-SHA256 signature of
//! the body. 5xx, 408, 429 and timeouts are retried with backoff; any other 4xx
//! refuses that ticket for good.

use std::time::Duration;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

use super::{Delivery, SinkError};
use crate::connection::{TlsOptions, client_config};
use crate::ticket::Ticket;

/// Header carrying `sha256=<hex HMAC of the body>`.
pub(crate) const SIGNATURE_HEADER: &str = "X-Mailroom-Signature";
/// CloudEvents type of a new ticket.
pub(crate) const EVENT_TYPE: &str = "dev.mailroom.ticket.created";

pub struct WebhookSink {
    client: reqwest::Client,
    url: String,
    signing_key: Option<SecretSlice<u8>>,
    attempts: u32,
    first_backoff: Duration,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink")
            .field("url", &self.url)
            .field("signed", &self.signing_key.is_some())
            .finish_non_exhaustive()
    }
}

impl WebhookSink {
    pub fn new(
        url: &str,
        signing_key: Option<Vec<u8>>,
        timeout: Duration,
        tls: &TlsOptions,
    ) -> Result<Self, SinkError> {
        let tls = client_config(tls).map_err(|e| SinkError::Setup(e.to_string()))?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .timeout(timeout)
            .build()
            .map_err(|e| SinkError::Setup(format!("HTTP client: {e}")))?;
        Ok(Self {
            client,
            url: url.to_owned(),
            signing_key: signing_key.map(SecretSlice::from),
            attempts: 4,
            first_backoff: Duration::from_millis(250),
        })
    }

    /// Sets how often one ticket is tried and the first pause between tries.
    pub fn with_retries(mut self, attempts: u32, first_backoff: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.first_backoff = first_backoff;
        self
    }

    fn signature(&self, body: &[u8]) -> Option<String> {
        let key = self.signing_key.as_ref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key.expose_secret()).ok()?;
        mac.update(body);
        Some(format!(
            "sha256={}",
            hex::encode(mac.finalize().into_bytes())
        ))
    }

    pub async fn deliver(&self, tickets: &[Ticket]) -> Result<Vec<Delivery>, SinkError> {
        let mut out = Vec::with_capacity(tickets.len());
        for ticket in tickets {
            out.push(self.deliver_one(ticket).await?);
        }
        Ok(out)
    }

    async fn deliver_one(&self, ticket: &Ticket) -> Result<Delivery, SinkError> {
        let body = serde_json::to_vec(ticket)
            .map_err(|e| SinkError::Unavailable(format!("cannot serialise a ticket: {e}")))?;
        let signature = self.signature(&body);
        let mut backoff = self.first_backoff;
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            let mut request = self
                .client
                .post(&self.url)
                .header("Content-Type", "application/json")
                .header("Idempotency-Key", &ticket.idempotency_key)
                .header("ce-specversion", "1.0")
                .header("ce-type", EVENT_TYPE)
                .header("ce-source", format!("mailroom/{}", ticket.mailbox))
                .header("ce-id", &ticket.idempotency_key)
                .header("ce-time", &ticket.received_at)
                .body(body.clone());
            if let Some(sig) = &signature {
                request = request.header(SIGNATURE_HEADER, sig);
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        return Ok(Delivery::Accepted);
                    }
                    let text: String = response
                        .text()
                        .await
                        .unwrap_or_default()
                        .chars()
                        .take(200)
                        .collect();
                    let retry = status.is_server_error()
                        || status.as_u16() == 408
                        || status.as_u16() == 429;
                    if !retry {
                        return Ok(Delivery::Rejected {
                            reason: format!("the webhook answered {status}: {text}"),
                        });
                    }
                    last = format!("the webhook answered {status}: {text}");
                }
                Err(e) => last = format!("the webhook could not be reached: {e}"),
            }
            if attempt < self.attempts {
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
        }
        Err(SinkError::Unavailable(last))
    }
}
