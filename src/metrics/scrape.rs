//! Each resource's values as of a scrape, read from its runtime.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::Labels;
use crate::runtime::Shared;
use crate::status::Health;
use mailroom_core::config::Credentials;
use mailroom_core::incoming::worker::WorkerStats;
use mailroom_core::outgoing::SendStats;
use mailroom_core::sync::unpoisoned;

/// One resource, as its runtime holds it: read when scraped.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub health: Shared,
    /// For the OAuth2 token times.
    pub credentials: Option<Credentials>,
    pub counters: Counters,
}

#[derive(Clone, Debug)]
pub(crate) enum Counters {
    /// None until a worker was started (a configuration that never resolved).
    Incoming(Option<Arc<WorkerStats>>),
    Outgoing(Arc<SendStats>),
}

/// A value of the process itself (leadership, reconciles).
#[derive(Debug)]
pub(crate) struct Process {
    pub name: &'static str,
    pub help: &'static str,
    pub counter: bool,
    pub value: u64,
}

#[derive(Debug)]
pub(super) struct Scrape {
    pub samples: Vec<Sample>,
    pub process: Vec<Process>,
}

impl Sample {
    fn labels(&self) -> Labels {
        vec![
            ("namespace", self.namespace.clone()),
            ("name", self.name.clone()),
        ]
    }

    fn with_kind(&self) -> Labels {
        let mut labels = vec![("kind", self.kind.to_owned())];
        labels.extend(self.labels());
        labels
    }

    fn incoming(&self) -> Option<&WorkerStats> {
        match &self.counters {
            Counters::Incoming(stats) => stats.as_deref(),
            Counters::Outgoing(_) => None,
        }
    }

    fn outgoing(&self) -> Option<&SendStats> {
        match &self.counters {
            Counters::Outgoing(stats) => Some(stats),
            Counters::Incoming(_) => None,
        }
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// One family; described even without samples, so that a scrape shows
/// every family mailroom has.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    rows: impl IntoIterator<Item = (Labels, M)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in rows {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counters<'a>(
    samples: impl Iterator<Item = (&'a Sample, u64)>,
) -> impl Iterator<Item = (Labels, ConstCounter<u64>)> {
    samples.map(|(s, v)| (s.labels(), ConstCounter::new(v)))
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let now = jiff::Timestamp::now();
        let incoming: Vec<(&Sample, &WorkerStats)> = self
            .samples
            .iter()
            .filter_map(|s| Some((s, s.incoming()?)))
            .collect();
        let outgoing: Vec<(&Sample, &SendStats)> = self
            .samples
            .iter()
            .filter_map(|s| Some((s, s.outgoing()?)))
            .collect();

        family(
            &mut e,
            "mailroom_ready",
            "1 while the resource is Ready (connected, signed in, its sink taking tickets).",
            MetricType::Gauge,
            self.samples.iter().map(|s| {
                let ready = s.health.lock().health == Health::Connected;
                (s.with_kind(), ConstGauge::new(i64::from(ready)))
            }),
        )?;
        family(
            &mut e,
            "mailroom_fetch_lag_seconds",
            "How far behind its mailbox mailroom may be: 0 while a session waits in IDLE, else seconds since every message was last taken (polling intervals and outages count).",
            MetricType::Gauge,
            incoming
                .iter()
                .map(|(s, st)| (s.labels(), ConstGauge::new(st.fetch_lag(now).as_secs_f64()))),
        )?;
        family(
            &mut e,
            "mailroom_messages_fetched",
            "Messages taken from the mailbox.",
            MetricType::Counter,
            counters(incoming.iter().map(|(s, st)| (*s, load(&st.fetched)))),
        )?;
        family(
            &mut e,
            "mailroom_tickets_created",
            "Tickets the sink accepted (re-deliveries of an old ticket not counted).",
            MetricType::Counter,
            counters(
                incoming
                    .iter()
                    .map(|(s, st)| (*s, load(&st.tickets_created))),
            ),
        )?;
        family(
            &mut e,
            "mailroom_messages",
            "Judged messages by outcome (ticket, reply, rejected, quarantined, sinkRejected) and reason (the filter or loop rule, oversized, unparseable).",
            MetricType::Counter,
            incoming.iter().flat_map(|(s, st)| {
                unpoisoned(&st.outcomes)
                    .iter()
                    .map(|((outcome, reason), n)| {
                        let mut labels = s.labels();
                        labels.push(("outcome", (*outcome).to_owned()));
                        labels.push(("reason", reason.clone()));
                        (labels, ConstCounter::new(*n))
                    })
                    .collect::<Vec<_>>()
            }),
        )?;
        family(
            &mut e,
            "mailroom_login_failures",
            "Failed attempts to connect, sign in and open the mailbox, by reason (AuthenticationFailed, ConnectionRefused, Timeout, ...).",
            MetricType::Counter,
            incoming.iter().flat_map(|(s, st)| {
                unpoisoned(&st.sign_in_failures)
                    .iter()
                    .map(|(reason, n)| {
                        let mut labels = s.with_kind();
                        labels.push(("reason", reason.clone()));
                        (labels, ConstCounter::new(*n))
                    })
                    .collect::<Vec<_>>()
            }),
        )?;
        family(
            &mut e,
            "mailroom_sink_failures",
            "Batches of tickets the sink could not take (retried; nothing was marked processed).",
            MetricType::Counter,
            counters(incoming.iter().map(|(s, st)| (*s, load(&st.sink_failures)))),
        )?;

        family(
            &mut e,
            "mailroom_sent",
            "Messages an SMTP server accepted.",
            MetricType::Counter,
            counters(outgoing.iter().map(|(s, st)| (*s, load(&st.sent)))),
        )?;
        family(
            &mut e,
            "mailroom_send_failures",
            "Send attempts that failed (unreachable, sign-in or message refused).",
            MetricType::Counter,
            counters(outgoing.iter().map(|(s, st)| (*s, load(&st.failed)))),
        )?;
        family(
            &mut e,
            "mailroom_failovers",
            "Messages for this server that the namespace's primary server sent instead.",
            MetricType::Counter,
            counters(outgoing.iter().map(|(s, st)| (*s, load(&st.failovers)))),
        )?;
        family(
            &mut e,
            "mailroom_recipients_blocked",
            "Recipients the outgoing filter blocked.",
            MetricType::Counter,
            counters(outgoing.iter().map(|(s, st)| (*s, load(&st.blocked)))),
        )?;
        family(
            &mut e,
            "mailroom_send_duration_seconds",
            "Seconds one SMTP transaction took, accepted or not.",
            MetricType::Histogram,
            outgoing
                .iter()
                .map(|(s, st)| (s.labels(), st.duration.clone())),
        )?;

        let tokens: Vec<_> = self
            .samples
            .iter()
            .filter_map(|s| Some((s, s.credentials.as_ref()?.token_info()?)))
            .collect();
        let seconds = |t: Option<jiff::Timestamp>| t.map(|t| t.as_second());
        family(
            &mut e,
            "mailroom_oauth2_access_token_expiry_timestamp_seconds",
            "When the current OAuth2 access token expires (Unix time).",
            MetricType::Gauge,
            tokens.iter().filter_map(|(s, info)| {
                Some((s.with_kind(), ConstGauge::new(seconds(info.expires_at)?)))
            }),
        )?;
        family(
            &mut e,
            "mailroom_oauth2_last_refresh_timestamp_seconds",
            "The last successful OAuth2 token refresh (Unix time).",
            MetricType::Gauge,
            tokens.iter().filter_map(|(s, info)| {
                Some((s.with_kind(), ConstGauge::new(seconds(info.last_refresh)?)))
            }),
        )?;

        for p in &self.process {
            if p.counter {
                family(
                    &mut e,
                    p.name,
                    p.help,
                    MetricType::Counter,
                    [(Vec::new(), ConstCounter::new(p.value))],
                )?;
            } else {
                family(
                    &mut e,
                    p.name,
                    p.help,
                    MetricType::Gauge,
                    [(Vec::new(), ConstGauge::new(p.value as i64))],
                )?;
            }
        }
        Ok(())
    }
}
