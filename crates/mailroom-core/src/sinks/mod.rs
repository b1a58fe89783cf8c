//! Where tickets go. A sink accepts a batch durably or not at all; mail is marked
//! processed only after its ticket was accepted.

pub(crate) mod directory;
pub(crate) mod request_tracker;
pub(crate) mod webhook;

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use crate::ticket::Ticket;
pub use directory::{DirectorySink, TemporaryFiles};
pub use request_tracker::{RequestTrackerSink, RtFields};
pub use webhook::{DEFAULT_MAX_IN_FLIGHT, WebhookSink};

/// What became of one ticket of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Durably accepted.
    Accepted,
    /// Durably accepted, and the sink named the ticket it made (a helpdesk's
    /// ticket id), which acknowledgements carry in their subject.
    Created { reference: String },
    /// Accepted before (delivery is idempotent): nothing new was created.
    Duplicate,
    /// Refused for good (e.g. HTTP 422): recorded, and the mail is left in place.
    Rejected { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("the ticket sink is unavailable, nothing was marked processed, retrying later: {0}")]
    Unavailable(String),
    #[error(
        "the ticket sink asked for a pause of {} s, nothing was marked processed, retrying then: {message}",
        retry_after.as_secs()
    )]
    Busy {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error("the ticket sink could not be set up: {0}")]
    Setup(String),
}

impl SinkError {
    /// How long the sink asked to be left alone, if it did.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::Busy { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// The sinks mailroom delivers to.
#[derive(Debug)]
pub enum Sink {
    Directory(DirectorySink),
    Webhook(WebhookSink),
    RequestTracker(RequestTrackerSink),
}

impl Sink {
    /// Delivers a batch; one `Delivery` per ticket, in order. An error means
    /// nothing of the batch may be taken as delivered. Shared, not copied: the
    /// directory sink writes on a blocking thread.
    pub async fn deliver(&self, tickets: Arc<[Ticket]>) -> Result<Vec<Delivery>, SinkError> {
        match self {
            Self::Directory(d) => d.deliver(tickets).await,
            Self::Webhook(w) => w.deliver(&tickets).await,
            Self::RequestTracker(rt) => rt.deliver(&tickets).await,
        }
    }
}

/// The HTTP client of a sink: rustls with `tls`, `timeout` per request.
fn http_client(
    timeout: std::time::Duration,
    tls: &crate::connection::TlsOptions,
) -> Result<reqwest::Client, SinkError> {
    let tls = crate::connection::client_config(tls).map_err(|e| SinkError::Setup(e.to_string()))?;
    reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .timeout(timeout)
        .build()
        .map_err(|e| SinkError::Setup(format!("HTTP client: {e}")))
}

/// The tickets of a batch by the ticket they go to, in batch order: a new
/// ticket and the replies to it (by its key, or by the reference the
/// subject names) share a lane.
fn lanes(tickets: &[Ticket]) -> Vec<Vec<usize>> {
    let mut lanes: Vec<Vec<usize>> = Vec::new();
    let mut by_ticket: HashMap<String, usize> = HashMap::new();
    for (i, t) in tickets.iter().enumerate() {
        let reference = t
            .reply_to
            .as_ref()
            .filter(|r| r.original_key.is_none())
            .and_then(|r| r.ticket.as_deref());
        let lane_key = match reference {
            Some(r) => format!("ref:{r}"),
            None => format!("key:{}", t.root_key()),
        };
        let lane = *by_ticket.entry(lane_key).or_insert_with(|| {
            lanes.push(Vec::new());
            lanes.len() - 1
        });
        lanes[lane].push(i);
    }
    lanes
}

/// Delivers a batch with `one`, up to `max_in_flight` tickets at once while
/// the messages of one ticket go in order; the answers come back in the
/// batch's order. The first error fails the batch.
async fn in_lanes<'a, F, Fut>(
    tickets: &'a [Ticket],
    max_in_flight: usize,
    one: F,
) -> Result<Vec<Delivery>, SinkError>
where
    F: Fn(&'a Ticket) -> Fut,
    Fut: Future<Output = Result<Delivery, SinkError>> + 'a,
{
    // Futures made up front (they start only when awaited): a stream closure
    // borrowing the sink would not be `Send` for every lifetime, which the
    // worker's task needs.
    let runs: Vec<_> = lanes(tickets)
        .into_iter()
        .map(|lane| {
            let sends: Vec<_> = lane.into_iter().map(|i| (i, one(&tickets[i]))).collect();
            async move {
                let mut done = Vec::with_capacity(sends.len());
                for (i, send) in sends {
                    done.push((i, send.await?));
                }
                Ok::<_, SinkError>(done)
            }
        })
        .collect();
    let finished: Vec<Vec<(usize, Delivery)>> = futures::stream::iter(runs)
        .buffer_unordered(max_in_flight.max(1))
        .try_collect()
        .await?;
    let mut deliveries = vec![Delivery::Duplicate; tickets.len()];
    for (i, delivery) in finished.into_iter().flatten() {
        deliveries[i] = delivery;
    }
    Ok(deliveries)
}
