//! Where tickets go. A sink accepts a batch durably or not at all; mail is marked
//! processed only after its ticket was accepted.

pub(crate) mod directory;
pub(crate) mod webhook;

use std::sync::Arc;

use crate::ticket::Ticket;
pub use directory::DirectorySink;
pub use webhook::WebhookSink;

/// What became of one ticket of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Durably accepted.
    Accepted,
    /// Accepted before (delivery is idempotent): nothing new was created.
    Duplicate,
    /// Refused for good (e.g. HTTP 422): recorded, and the mail is left in place.
    Rejected { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("the ticket sink is unavailable, nothing was marked processed, retrying later: {0}")]
    Unavailable(String),
    #[error("the ticket sink could not be set up: {0}")]
    Setup(String),
}

/// The sinks mailroom delivers to.
#[derive(Debug)]
pub enum Sink {
    Directory(DirectorySink),
    Webhook(WebhookSink),
}

impl Sink {
    /// Delivers a batch; one `Delivery` per ticket, in order. An error means
    /// nothing of the batch may be taken as delivered. Shared, not copied: the
    /// directory sink writes on a blocking thread.
    pub async fn deliver(&self, tickets: Arc<[Ticket]>) -> Result<Vec<Delivery>, SinkError> {
        match self {
            Self::Directory(d) => d.deliver(tickets).await,
            Self::Webhook(w) => w.deliver(&tickets).await,
        }
    }
}
