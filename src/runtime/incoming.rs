//! A running IncomingEmailServer: settings resolved, sink opened, worker
//! started, its events followed into `Live` and the log.

use std::path::Path;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::{Shared, username};
use crate::api::{EffectiveSettings, IncomingEmailServerSpec, IncomingEmailServerStatus, Mode};
use crate::metrics::{Counters, Metrics, Sample};
use crate::resolve::{self, ResolvedIncoming, SecretSource, Sources};
use crate::status::{self, Health};
use mailroom_core::config::Credentials;
use mailroom_core::filter::OwnAddresses;
use mailroom_core::incoming::worker::{
    Counted, Observer, Scanning, Worker, WorkerEvent, WorkerHandle, WorkerOptions, WorkerStats,
};
use mailroom_core::oauth2::Tokens;
use mailroom_core::outgoing::Outbox;
use mailroom_core::outgoing::ack::Acknowledger;
use mailroom_core::state::CursorStore;
use mailroom_core::sync::unpoisoned;
use mailroom_core::vocab::ResourceId;
use prometheus_client::metrics::histogram::Histogram;

/// Everything a worker is started from.
pub struct IncomingInputs<'a> {
    pub id: &'a ResourceId,
    pub spec: &'a IncomingEmailServerSpec,
    pub secrets: &'a dyn SecretSource,
    pub config_maps: &'a dyn SecretSource,
    /// OAuth2 grants in use in this process.
    pub tokens: &'a Tokens,
    /// From addresses of the namespace's OutgoingEmailServers.
    pub own_addresses: Vec<String>,
    pub outbox: Arc<Outbox>,
    /// Where tickets go when the spec names no sink; None: nowhere, and the
    /// resource says so.
    pub default_sink: Option<&'a Path>,
    pub store: Arc<dyn CursorStore>,
    pub options: WorkerOptions,
    pub on_change: Option<super::OnChange>,
    /// Counters carried over from the runtime this one replaces.
    pub counters: Arc<WorkerStats>,
    pub metrics: &'a Metrics,
}

#[derive(Debug)]
pub struct IncomingRuntime {
    pub shared: Shared,
    worker: Option<WorkerHandle>,
    /// Folded from the worker's events; carried over restarts.
    stats: Arc<WorkerStats>,
    /// Whether a worker was ever started (status shows counters only then).
    started: bool,
    effective: Option<EffectiveSettings>,
    /// For the OAuth2 part of status.
    credentials: Option<Credentials>,
    dry_run: bool,
    /// Shared with the worker's loop protection.
    own_addresses: OwnAddresses,
}

impl IncomingRuntime {
    /// Resolves and starts. A configuration that cannot be resolved (a missing
    /// Secret, no sink) starts nothing and is reported through `Live`.
    pub fn start(i: IncomingInputs<'_>) -> Self {
        let resource = format!("IncomingEmailServer {}", i.id);
        let shared = Shared::new(Health::Connecting, i.on_change.clone());
        let mut runtime = Self {
            shared,
            worker: None,
            stats: i.counters.clone(),
            started: false,
            effective: None,
            credentials: None,
            dry_run: i.spec.mode == Mode::DryRun,
            own_addresses: OwnAddresses::new(&i.own_addresses),
        };
        let sources = Sources {
            namespace: &i.id.namespace,
            secrets: i.secrets,
            config_maps: i.config_maps,
            tokens: i.tokens,
        };
        let ResolvedIncoming {
            mut settings,
            sink,
            acknowledgements,
        } = match resolve::incoming(i.id, i.spec, sources, i.default_sink) {
            Ok(r) => r,
            Err(f) => {
                tracing::warn!(resource = %resource, reason = %f.reason, "{}", f.message);
                runtime.shared.update(|l| l.health = Health::Failing(f));
                return runtime;
            }
        };
        settings.own_addresses = runtime.own_addresses.clone();
        runtime.credentials = Some(settings.server.credentials.clone());
        runtime.effective = Some(EffectiveSettings {
            server: settings.server.endpoint.host.clone(),
            port: i32::from(settings.server.endpoint.port),
            security_type: Some(settings.server.endpoint.security),
            username: username(Some(&settings.server.credentials)),
            scanning: None,
            after_processing: Some(format!("{:?}", settings.after_processing)),
        });
        if !i.spec.enabled {
            runtime.shared.update(|l| l.health = Health::Disabled);
            return runtime;
        }
        let mut options = i.options;
        if let Some((server, ack)) = acknowledgements {
            options.on_ticket = Some(Arc::new(Acknowledger::new(
                i.outbox.clone(),
                &i.id.namespace,
                server,
                ack,
            )));
        }
        let observer = Counted {
            stats: runtime.stats.clone(),
            inner: Follower {
                resource: resource.clone(),
                shared: runtime.shared.clone(),
                ticket_latency: i.metrics.ticket_latency(&i.id.namespace),
            },
        };
        runtime.worker = Some(Worker::spawn(
            settings,
            Arc::new(sink),
            i.store,
            Arc::new(observer),
            options,
        ));
        runtime.started = true;
        tracing::info!(resource = %resource, "worker started");
        runtime
    }

    /// The OAuth2 grant's token times, when the server signs in with OAuth2.
    pub(crate) fn oauth2(&self) -> Option<mailroom_core::oauth2::TokenInfo> {
        self.credentials.as_ref()?.token_info()
    }

    /// The namespace's own addresses changed: the running worker takes them
    /// at its next message.
    pub(crate) fn set_own_addresses(&self, own: &[String]) {
        self.own_addresses.set(own);
    }

    /// The worker's counters, once it was started.
    pub(crate) fn stats(&self) -> Option<&WorkerStats> {
        self.started.then_some(&*self.stats)
    }

    /// What metrics read of it.
    pub(crate) fn sample(&self, id: &ResourceId) -> Sample {
        Sample {
            kind: "IncomingEmailServer",
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            health: self.shared.clone(),
            credentials: self.credentials.clone(),
            counters: Counters::Incoming(self.started.then(|| self.stats.clone())),
        }
    }

    /// The counters, for the runtime that replaces this one.
    pub(crate) fn counters(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Stops the worker after the message in flight; its cursor is saved.
    pub async fn stop(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop().await;
        }
    }
}

/// A delivery went through: a sink that refused is fine again.
fn sink_recovered(shared: &Shared) {
    if matches!(shared.lock().health, Health::SinkUnavailable(_)) {
        shared.update(|l| {
            l.health = Health::Connected;
            l.next_retry_at = None;
        });
    }
}

/// Folds a worker's events into `Live` and the log; counters are folded
/// beside it (`Counted`).
struct Follower {
    resource: String,
    shared: Shared,
    ticket_latency: Histogram,
}

impl Observer for Follower {
    fn observe(&self, event: WorkerEvent) {
        let (resource, shared) = (&self.resource, &self.shared);
        match event {
            WorkerEvent::Connected(report) => {
                if shared.lock().health != Health::Connected {
                    tracing::info!(resource = %resource, "connected");
                }
                shared.update(|l| {
                    // A sink that refused stays suspect until a delivery succeeds.
                    if !matches!(l.health, Health::SinkUnavailable(_)) {
                        l.health = Health::Connected;
                    }
                    l.report = Some(report);
                    l.next_retry_at = None;
                });
            }
            WorkerEvent::ConnectionFailed { report, retry_in } => {
                tracing::warn!(
                    resource = %resource, reason = %report.reason,
                    retry_in_ms = retry_in.as_millis() as u64,
                    "connection failed: {}", report.message
                );
                shared.update(|l| {
                    l.health = status::health_of(&report);
                    l.report = Some(report);
                    l.next_retry_at = jiff::Timestamp::now()
                        .checked_add(jiff::SignedDuration::try_from(retry_in).unwrap_or_default())
                        .ok();
                });
            }
            WorkerEvent::Scanning(s) => shared.update(|l| {
                l.scanning = Some(match s {
                    Scanning::Idle => "IDLE".to_owned(),
                    Scanning::Polling { every, reason } => {
                        format!("Polling every {every:?} ({reason})")
                    }
                });
            }),
            WorkerEvent::TicketCreated {
                key,
                message_id,
                arrived,
            } => {
                if let Some(arrived) = arrived {
                    let waited = jiff::Timestamp::now().duration_since(arrived);
                    self.ticket_latency.observe(waited.as_secs_f64().max(0.0));
                }
                tracing::info!(resource = %resource, ticket = %key, message_id = message_id.as_deref().unwrap_or("-"), "ticket created");
                sink_recovered(shared);
            }
            WorkerEvent::ReplyDelivered {
                key,
                message_id,
                ticket,
                arrived,
            } => {
                if let Some(arrived) = arrived {
                    let waited = jiff::Timestamp::now().duration_since(arrived);
                    self.ticket_latency.observe(waited.as_secs_f64().max(0.0));
                }
                tracing::info!(resource = %resource, reply = %key, ticket = ticket.as_deref().unwrap_or("-"), message_id = message_id.as_deref().unwrap_or("-"), "reply added to its ticket");
                sink_recovered(shared);
            }
            WorkerEvent::CursorAdvanced(_) => sink_recovered(shared),
            WorkerEvent::Judged {
                verdict,
                sender,
                message_id,
                dry_run,
                ..
            } if !verdict.accepted || dry_run => {
                tracing::info!(
                    resource = %resource, rule = %verdict.rule, dry_run,
                    sender = sender.as_deref().unwrap_or("-"),
                    message_id = message_id.as_deref().unwrap_or("-"),
                    "{}", verdict.reason
                );
            }
            WorkerEvent::Quarantined { reason, .. } => {
                tracing::warn!(resource = %resource, "quarantined: {reason}");
            }
            WorkerEvent::TicketRejected { message_id, reason } => {
                tracing::warn!(resource = %resource, message_id = message_id.as_deref().unwrap_or("-"), "the sink refused the ticket: {reason}");
            }
            WorkerEvent::SinkUnavailable { message, retry_in } => {
                tracing::warn!(resource = %resource, retry_in_ms = retry_in.as_millis() as u64, "{message}");
                shared.update(|l| {
                    l.health = Health::SinkUnavailable(message);
                    l.next_retry_at = jiff::Timestamp::now()
                        .checked_add(jiff::SignedDuration::try_from(retry_in).unwrap_or_default())
                        .ok();
                });
            }
            _ => {}
        }
    }
}

impl super::Runtime for IncomingRuntime {
    type Status = IncomingEmailServerStatus;
    const KIND: &'static str = "IncomingEmailServer";

    fn status(
        &self,
        generation: Option<i64>,
        previous: &[Condition],
        rejecting_since: jiff::Timestamp,
        now: jiff::Timestamp,
    ) -> IncomingEmailServerStatus {
        let stats = self.stats();
        let filter = stats.map(|s| {
            status::filter_rejecting(&unpoisoned(&s.rejections), rejecting_since, generation, now)
        });
        let live = self.shared.lock();
        let effective = self.effective.clone().map(|mut e| {
            e.scanning = live.scanning.clone();
            e
        });
        IncomingEmailServerStatus {
            observed_generation: generation,
            conditions: status::conditions(&live.health, filter, generation, previous, now),
            effective,
            connection: live.report.as_ref().map(status::connection_status),
            next_retry_at: live.next_retry_at.map(Time),
            stats: stats.map(status::incoming_stats),
            oauth2: self.oauth2().map(status::oauth2_status),
            dry_run: stats.filter(|_| self.dry_run).map(status::dry_run_report),
            recent_rejections: stats
                .map(|s| status::recent_rejections(&unpoisoned(&s.rejections)))
                .unwrap_or_default(),
            worker: None,
        }
    }

    fn conditions(status: &IncomingEmailServerStatus) -> &[Condition] {
        &status.conditions
    }

    fn conditions_mut(status: &mut IncomingEmailServerStatus) -> &mut Vec<Condition> {
        &mut status.conditions
    }
}
