//! Where tickets go. A sink accepts a batch durably or not at all; mail is marked
//! processed only after its ticket was accepted.

pub mod directory;
pub mod webhook;

use std::path::Path;
use std::sync::Arc;

use crate::api::SinkSpec;
use crate::config::SecretSource;
use crate::config::server::secret_text;
use crate::connection::{Failure, Reason, TlsOptions};
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
    /// The sink a resource names, or a directory at `default_dir` when it names
    /// none. The webhook's signing key is read from `secrets`.
    pub fn from_spec(
        spec: Option<&SinkSpec>,
        default_dir: &Path,
        secrets: &dyn SecretSource,
    ) -> Result<Self, Failure> {
        let setup = |e: SinkError| Failure::new(Reason::ProtocolError, e.to_string());
        match spec {
            Some(SinkSpec {
                webhook: Some(w), ..
            }) => {
                let key = w
                    .signing_secret_ref
                    .as_ref()
                    .map(|r| secret_text(secrets, r).map(String::into_bytes))
                    .transpose()?;
                WebhookSink::new(&w.url, key, w.timeout.into(), &TlsOptions::default())
                    .map(Self::Webhook)
                    .map_err(setup)
            }
            Some(SinkSpec {
                directory: Some(d), ..
            }) => DirectorySink::open(&d.path)
                .map(Self::Directory)
                .map_err(setup),
            _ => DirectorySink::open(default_dir)
                .map(Self::Directory)
                .map_err(setup),
        }
    }

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
