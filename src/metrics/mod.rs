//! The metrics mailroom serves at `/metrics` (controller, and `mailroom run`
//! with `--metrics-listen`), in the OpenMetrics text format through
//! prometheus-client. Histograms that span resources live here and are
//! observed as things happen; each resource's counters and state are read
//! from its runtime at scrape time, so a deleted resource's series end with
//! it. Labels come from small sets — kind, namespace, name, outcome, reason —
//! never an address.

mod scrape;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub(crate) use scrape::{Counters, Process, Sample};

/// Label pairs of one series.
pub(crate) type Labels = Vec<(&'static str, String)>;

type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// The content type of the OpenMetrics text format.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Mail arrival (as the server saw it) to ticket: seconds to hours, as a
/// mailbox may be polled every few minutes or catch up after an outage.
fn ticket_latency() -> Histogram {
    Histogram::new([
        0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0,
    ])
}

/// A reconcile: milliseconds, up to the seconds a sign-in test may take.
fn reconcile_duration() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The process's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    ticket_latency: Histograms,
    reconcile_duration: Histograms,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let ticket_latency = Histograms::new_with_constructor(ticket_latency as fn() -> Histogram);
        let reconcile_duration =
            Histograms::new_with_constructor(reconcile_duration as fn() -> Histogram);
        registry.register(
            "mailroom_ticket_latency_seconds",
            "Seconds from the mail server receiving a message (IMAP INTERNALDATE, else its newest Received header) to its ticket accepted by the sink, by namespace.",
            ticket_latency.clone(),
        );
        registry.register(
            "mailroom_reconcile_duration_seconds",
            "Seconds one reconcile of a resource took, by kind.",
            reconcile_duration.clone(),
        );
        Self {
            registry,
            ticket_latency,
            reconcile_duration,
        }
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The ticket latency histogram of a namespace's mailboxes (a handle:
    /// observations go to the shared series).
    pub(crate) fn ticket_latency(&self, namespace: &str) -> Histogram {
        self.ticket_latency
            .get_or_create_owned(&vec![("namespace", namespace.to_owned())])
    }

    pub(crate) fn reconciled(&self, kind: &str, took: Duration) {
        self.reconcile_duration
            .get_or_create(&vec![("kind", kind.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// The whole exposition: the long-lived families, then every resource's
    /// and the process's values as of now.
    pub(crate) fn render(&self, samples: Vec<Sample>, process: Vec<Process>) -> String {
        let mut now = Registry::default();
        now.register_collector(Box::new(scrape::Scrape { samples, process }));
        let mut out = String::new();
        // Writing to a String cannot fail; the encoders only report the
        // writer's errors.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &now);
        let _ = encode_eof(&mut out);
        out
    }
}
