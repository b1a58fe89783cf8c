//! A running IncomingEmailServer: settings resolved, sink opened, worker
//! started, its events followed into `Live` and the log.

use std::path::Path;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Shared, username};
use crate::api::{EffectiveSettings, IncomingEmailServerSpec, IncomingEmailServerStatus, Mode};
use crate::config::{Credentials, SecretSource, Sources};
use crate::connection::{Failure, Reason};
use crate::incoming::IncomingSettings;
use crate::incoming::worker::{
    Scanning, Worker, WorkerEvent, WorkerHandle, WorkerOptions, WorkerStats,
};
use crate::oauth2::Tokens;
use crate::outgoing::Outbox;
use crate::outgoing::ack::Acknowledger;
use crate::sinks::Sink;
use crate::state::CursorStore;
use crate::status::{self, Health};

/// Everything a worker is started from.
pub struct IncomingInputs<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
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
}

#[derive(Debug)]
pub struct IncomingRuntime {
    pub shared: Shared,
    worker: Option<WorkerHandle>,
    /// The worker's counters; kept after it stopped, for the last status.
    stats: Option<Arc<WorkerStats>>,
    follower: Option<JoinHandle<()>>,
    effective: Option<EffectiveSettings>,
    /// For the OAuth2 part of status.
    credentials: Option<Credentials>,
    dry_run: bool,
}

impl IncomingRuntime {
    /// Resolves and starts. A configuration that cannot be resolved (a missing
    /// Secret, no sink) starts nothing and is reported through `Live`.
    pub fn start(i: IncomingInputs<'_>) -> Self {
        let resource = format!("IncomingEmailServer {}/{}", i.namespace, i.name);
        let shared = Shared::new(Health::Connecting, i.on_change.clone());
        let mut runtime = Self {
            shared,
            worker: None,
            stats: None,
            follower: None,
            effective: None,
            credentials: None,
            dry_run: i.spec.mode == Mode::DryRun,
        };
        let sources = Sources {
            namespace: i.namespace,
            secrets: i.secrets,
            config_maps: i.config_maps,
            tokens: i.tokens,
        };
        let resolved = IncomingSettings::resolve(i.name, i.spec, sources)
            .and_then(|settings| {
                let sink = match (i.spec.ticket.sink.as_ref(), i.default_sink) {
                    (None, None) => Err(Failure::new(
                        Reason::ProtocolError,
                        "no ticket sink: set spec.ticket.sink, or give mailroom a default sink; nothing is fetched until then",
                    )),
                    (spec, dir) => Sink::from_spec(spec, dir.unwrap_or(Path::new(".")), i.secrets),
                }?;
                Ok((settings, sink))
            });
        let (mut settings, sink) = match resolved {
            Ok(ok) => ok,
            Err(f) => {
                tracing::warn!(resource = %resource, reason = %f.reason, "{}", f.message);
                runtime.shared.update(|l| l.health = Health::Failing(f));
                return runtime;
            }
        };
        settings.own_addresses = i.own_addresses;
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
        if i.spec.acknowledgements.enabled
            && let Some(out) = &i.spec.outgoing_server_ref
        {
            options.on_ticket = Some(Arc::new(Acknowledger::new(
                i.outbox.clone(),
                i.namespace,
                &out.name,
                &i.spec.acknowledgements,
            )));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Worker::spawn(settings, Arc::new(sink), i.store, tx, options);
        runtime.stats = Some(worker.stats.clone());
        runtime.worker = Some(worker);
        runtime.follower = Some(follow(resource.clone(), runtime.shared.clone(), rx));
        tracing::info!(resource = %resource, "worker started");
        runtime
    }

    /// The OAuth2 grant's token times, when the server signs in with OAuth2.
    pub fn oauth2(&self) -> Option<crate::oauth2::TokenInfo> {
        self.credentials.as_ref()?.token_info()
    }

    /// The worker's counters, once it was started.
    pub fn stats(&self) -> Option<&WorkerStats> {
        self.stats.as_deref()
    }

    /// Stops the worker after the message in flight; its cursor is saved.
    pub async fn stop(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop().await;
        }
        if let Some(follower) = self.follower.take() {
            // The worker's end closes the event channel; the follower then ends.
            let _ = follower.await;
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

/// Follows a worker's events: status facts into `shared`, the rest into the log.
fn follow(
    resource: String,
    shared: Shared,
    mut events: mpsc::UnboundedReceiver<WorkerEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
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
                            .checked_add(
                                jiff::SignedDuration::try_from(retry_in).unwrap_or_default(),
                            )
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
                WorkerEvent::TicketCreated { key, message_id } => {
                    tracing::info!(resource = %resource, ticket = %key, message_id = message_id.as_deref().unwrap_or("-"), "ticket created");
                    sink_recovered(&shared);
                }
                WorkerEvent::CursorAdvanced(_) => sink_recovered(&shared),
                WorkerEvent::Judged {
                    verdict,
                    sender,
                    message_id,
                    dry_run,
                } if !verdict.accepted || dry_run => {
                    tracing::info!(
                        resource = %resource, rule = %verdict.rule, dry_run,
                        sender = sender.as_deref().unwrap_or("-"),
                        message_id = message_id.as_deref().unwrap_or("-"),
                        "{}", verdict.reason
                    );
                }
                WorkerEvent::Quarantined { message_id, reason } => {
                    tracing::warn!(resource = %resource, message_id = message_id.as_deref().unwrap_or("-"), "quarantined: {reason}");
                }
                WorkerEvent::TicketRejected { message_id, reason } => {
                    tracing::warn!(resource = %resource, message_id = message_id.as_deref().unwrap_or("-"), "the sink refused the ticket: {reason}");
                }
                WorkerEvent::SinkUnavailable { message, retry_in } => {
                    tracing::warn!(resource = %resource, retry_in_ms = retry_in.as_millis() as u64, "{message}");
                    shared.update(|l| {
                        l.health = Health::SinkUnavailable(message);
                        l.next_retry_at = jiff::Timestamp::now()
                            .checked_add(
                                jiff::SignedDuration::try_from(retry_in).unwrap_or_default(),
                            )
                            .ok();
                    });
                }
                _ => {}
            }
        }
    })
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
        let stats = self.stats.as_deref();
        let filter = stats.map(|s| {
            let log = s.rejections.lock().unwrap_or_else(|p| p.into_inner());
            status::filter_rejecting(&log, rejecting_since, generation, now)
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
                .map(|s| {
                    status::recent_rejections(
                        &s.rejections.lock().unwrap_or_else(|p| p.into_inner()),
                    )
                })
                .unwrap_or_default(),
        }
    }

    fn conditions(status: &IncomingEmailServerStatus) -> &[Condition] {
        &status.conditions
    }

    fn conditions_mut(status: &mut IncomingEmailServerStatus) -> &mut Vec<Condition> {
        &mut status.conditions
    }
}
