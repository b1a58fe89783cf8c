//! The controller process: startup checks, leader election, both Controllers,
//! the health/metrics server and the submission endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};

use super::http::{self, HealthState};
use super::leader::{ElectionConfig, Elector, Held};
use super::references::References;
use super::review::ServiceAccounts;
use super::shard::Shard;
use super::{
    Context, ContextParts, Names, error_policy, reconcile_incoming, reconcile_outgoing,
    servers_referencing, trigger_hash,
};
use crate::api::{IncomingEmailServer, OutgoingEmailServer};
use crate::submission::tls::{TlsFiles, TlsListener};
use crate::submission::{self, SubmissionTokens};
use mailroom_core::incoming::worker::{Fence, WorkerOptions};
use mailroom_core::outgoing::Outbox;
use mailroom_core::sync::write_unpoisoned;

/// Reconciles running at once, per kind.
const CONCURRENCY: u16 = 8;
/// How long the standby controllers may take to stop once this replica leads.
const STANDBY_STOP: std::time::Duration = std::time::Duration::from_secs(2);
/// How often workers whose resource is gone are looked for.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// Watch only these namespaces; empty: all.
    pub namespaces: Vec<String>,
    /// Ticket folder for resources that name no sink.
    pub default_sink: Option<PathBuf>,
    pub health_listen: SocketAddr,
    pub submission_listen: SocketAddr,
    pub tokens: Option<SubmissionTokens>,
    /// The audience ServiceAccount tokens at the submission endpoint must carry.
    pub token_audience: String,
    /// The submission endpoint's certificate; none: plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Plain HTTP off loopback, knowingly.
    pub allow_plain_http: bool,
    /// Leader election; none: this replica always leads.
    pub election: Option<ElectionConfig>,
    /// Named in events.
    pub identity: String,
    pub timing: super::Timing,
    /// The resources this controller handles, by their shard label.
    pub shard: Shard,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot reach the Kubernetes API: {0}; run in a cluster or set KUBECONFIG")]
    Client(kube::Error),
    #[error("{0}")]
    Startup(String),
    #[error("the leader election task failed ({0}); exiting rather than leading without it")]
    Election(String),
    #[error("cannot listen on {addr}: {message}")]
    Listen { addr: SocketAddr, message: String },
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The CRDs are served and listing is allowed; otherwise a one-line hint.
pub async fn check_startup(client: &Client, namespace: Option<&str>) -> Result<(), String> {
    let lp = ListParams::default().limit(1);
    let hint = |what: &str, e: kube::Error| match &e {
        kube::Error::Api(a) if a.code == 404 => format!(
            "the {what} CRD is not installed: kubectl apply -f crds/ (or install the Helm chart with crds.enabled=true)"
        ),
        kube::Error::Api(a) if a.code == 403 => format!(
            "RBAC does not allow listing {what}: apply the chart's ClusterRole and binding for this ServiceAccount ({})",
            a.message
        ),
        _ => format!("cannot list {what}: {e}"),
    };
    scoped::<IncomingEmailServer>(client, namespace)
        .list(&lp)
        .await
        .map_err(|e| hint("IncomingEmailServer", e))?;
    scoped::<OutgoingEmailServer>(client, namespace)
        .list(&lp)
        .await
        .map_err(|e| hint("OutgoingEmailServer", e))?;
    scoped::<Secret>(client, namespace)
        .list_metadata(&lp)
        .await
        .map_err(|e| hint("Secrets", e))?;
    Ok(())
}

async fn listen(addr: SocketAddr) -> Result<tokio::net::TcpListener, RunError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| RunError::Listen {
            addr,
            message: e.to_string(),
        })
}

fn stream_of<T: Send + 'static>(
    rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|r| (r, rx)) })
}

pub async fn run(opts: ControllerOptions) -> Result<(), RunError> {
    let terminated = crate::signals::terminated();
    let client = Client::try_default().await.map_err(RunError::Client)?;
    if let Some(election) = &opts.election {
        election.check().map_err(RunError::Startup)?;
    }
    if opts.tls.is_none() && !opts.allow_plain_http && !opts.submission_listen.ip().is_loopback() {
        return Err(RunError::Startup(format!(
            "the submission endpoint would take bearer tokens over plain HTTP on {}: give --tls-cert and --tls-key (e.g. a cert-manager Secret), listen on loopback, or say --allow-plain-http",
            opts.submission_listen
        )));
    }
    if opts.namespaces.is_empty() {
        check_startup(&client, None)
            .await
            .map_err(RunError::Startup)?;
    }
    for ns in &opts.namespaces {
        check_startup(&client, Some(ns))
            .await
            .map_err(RunError::Startup)?;
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        terminated.await;
        let _ = stop_tx.send(true);
    });
    let probe = HealthState::default();
    probe.ready.store(true, Ordering::Relaxed);
    let health = listen(opts.health_listen).await?;
    let mut health_stop = stop_rx.clone();
    tokio::spawn(submission::serve(
        health,
        http::router(probe.clone()),
        async move {
            let _ = health_stop.wait_for(|s| *s).await;
        },
    ));

    // Sending needs no leadership: every replica serves the endpoint from
    // senders of its own, kept current by the leader's or a standby's controllers.
    let outbox = Arc::new(Outbox::new());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "mailroom".into(),
            instance: Some(opts.identity.clone()),
        },
    );
    let submission_task = {
        let tcp = listen(opts.submission_listen).await?;
        let auth = ServiceAccounts::new(opts.tokens.clone(), client.clone(), &opts.token_audience);
        let router = submission::router(outbox.clone(), Arc::new(auth));
        let mut stop = stop_rx.clone();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        match &opts.tls {
            Some(files) => {
                let tls = TlsListener::start(tcp, files.clone())
                    .map_err(|e| RunError::Startup(e.to_string()))?;
                tokio::spawn(submission::serve(tls, router, stopped))
            }
            None => tokio::spawn(submission::serve(tcp, router, stopped)),
        }
    };
    let shared = Shared {
        client: client.clone(),
        outbox,
        recorder,
        reconciles: probe.reconciles.clone(),
        metrics: probe.metrics.clone(),
    };

    let mut elector = opts
        .election
        .clone()
        .map(|config| Elector::new(client.clone(), config));
    loop {
        if let Some(e) = elector.as_mut() {
            let c = e.config();
            tracing::info!(identity = %c.identity, "waiting to lead (Lease {}/{})", c.namespace, c.name);
            let (standby_stop, standby_rx) = watch::channel(false);
            let standby = tokio::spawn(standby(shared.clone(), opts.clone(), standby_rx));
            let led = e.acquire(&mut stop_rx.clone()).await;
            let _ = standby_stop.send(true);
            // A Controller told to stop before it ever ran may not return; a
            // standby writes nothing, so ending it the hard way is safe.
            let handle = standby.abort_handle();
            if tokio::time::timeout(STANDBY_STOP, standby).await.is_err() {
                tracing::warn!(
                    "the standby controllers did not stop within {STANDBY_STOP:?}; ending them"
                );
                handle.abort();
            }
            if led.is_none() {
                let _ = submission_task.await;
                return Ok(());
            }
        }
        tracing::info!("leading: starting the controllers");
        probe.leading.store(true, Ordering::Relaxed);
        let (lost_tx, lost_rx) = watch::channel(false);
        let (release_tx, mut release_rx) = watch::channel(false);
        let fence = Fence::default();
        let holding = elector.take().map(|mut e| {
            let lost_tx = lost_tx.clone();
            let fence = fence.clone();
            let probe = probe.clone();
            tokio::spawn(async move {
                let held = e.hold(&mut release_rx).await;
                if let Held::Lost(why) = &held {
                    // Fencing: abort at once, without waiting for batches or locks.
                    let aborted = fence.abort_all();
                    probe.fenced.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        workers = aborted,
                        "lost the leader Lease ({why}): aborted every fetch worker; standing by"
                    );
                    let _ = lost_tx.send(true);
                }
                e
            })
        });
        term(&shared, &opts, &probe, fence, stop_rx.clone(), lost_rx).await;
        probe.leading.store(false, Ordering::Relaxed);
        let stopping = *stop_rx.borrow();
        if stopping {
            // Workers have stopped: now the Lease goes, and a standby takes over at once.
            let _ = release_tx.send(true);
        }
        if let Some(task) = holding {
            // Never lead on without an election: a failed election task ends the process.
            elector = Some(task.await.map_err(|e| RunError::Election(e.to_string()))?);
        }
        if stopping || opts.election.is_none() {
            let _ = submission_task.await;
            return Ok(());
        }
    }
}

/// What every term and standby phase of this process shares.
#[derive(Clone)]
struct Shared {
    client: Client,
    outbox: Arc<Outbox>,
    recorder: Recorder,
    reconciles: Arc<std::sync::atomic::AtomicU64>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// While not leading: the OutgoingEmailServer controllers alone, writing
/// nothing, so that this replica's submission endpoint sends too.
async fn standby(shared: Shared, opts: ControllerOptions, stop: watch::Receiver<bool>) {
    let shutdown = move || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let mut contexts = Vec::new();
    let mut running = Vec::new();
    for scope in scopes(&opts) {
        let (ctx, controllers) = scope_controllers(
            &shared,
            scope,
            Role::Standby,
            &opts,
            WorkerOptions::default(),
            &shutdown,
        );
        contexts.push(ctx);
        running.push(controllers);
    }
    futures::future::join_all(running).await;
    // The senders stay in the outbox until the leader's controllers replace
    // them, so that the endpoint never goes without.
    futures::future::join_all(contexts.iter().map(|ctx| ctx.stop_all())).await;
}

fn scopes(opts: &ControllerOptions) -> Vec<Option<&str>> {
    if opts.namespaces.is_empty() {
        vec![None]
    } else {
        opts.namespaces.iter().map(|n| Some(n.as_str())).collect()
    }
}

/// One term of leadership: both Controllers per scope and the submission
/// endpoint, until asked to stop or the Lease is lost; then every worker stops
/// (after its message in flight; workers already aborted by the fence are gone).
async fn term(
    shared: &Shared,
    opts: &ControllerOptions,
    probe: &HealthState,
    fence: Fence,
    stop_rx: watch::Receiver<bool>,
    lost_rx: watch::Receiver<bool>,
) {
    let shutdown = {
        let stop = stop_rx.clone();
        let lost = lost_rx.clone();
        move || {
            let mut stop = stop.clone();
            let mut lost = lost.clone();
            async move {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => {}
                    _ = lost.wait_for(|l| *l) => {}
                }
            }
        }
    };
    let options = WorkerOptions {
        fence: Some(fence),
        ..WorkerOptions::default()
    };
    let mut contexts = Vec::new();
    let mut running = Vec::new();
    for scope in scopes(opts) {
        let (ctx, controllers) = scope_controllers(
            shared,
            scope,
            Role::Leader,
            opts,
            options.clone(),
            &shutdown,
        );
        contexts.push(ctx);
        running.push(controllers);
    }
    *write_unpoisoned(&probe.contexts) = contexts.clone();
    let sweepers: Vec<_> = contexts
        .iter()
        .flat_map(|ctx| {
            let sweeping = {
                let ctx = ctx.clone();
                let stop = shutdown();
                tokio::spawn(async move { ctx.sweep_every(SWEEP_EVERY, stop).await })
            };
            let flushing = tokio::spawn(super::status::flush_counters(ctx.clone(), shutdown()));
            [sweeping, flushing]
        })
        .collect();

    futures::future::join_all(running).await;
    futures::future::join_all(sweepers).await;
    tracing::info!("stopping every worker after its message in flight");
    futures::future::join_all(contexts.iter().map(|ctx| ctx.stop_all())).await;
    write_unpoisoned(&probe.contexts).clear();
}

/// Whether a scope's controllers lead (fetch workers, finalizers, status,
/// events) or stand by (senders only).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Leader,
    Standby,
}

/// The Controllers over one scope (a namespace, or all), sharing the outbox:
/// both when leading, the OutgoingEmailServer one alone when standing by.
fn scope_controllers<F>(
    shared: &Shared,
    ns: Option<&str>,
    role: Role,
    opts: &ControllerOptions,
    options: WorkerOptions,
    shutdown: &impl Fn() -> F,
) -> (Arc<Context>, futures::future::BoxFuture<'static, ()>)
where
    F: Future<Output = ()> + Send + Sync + 'static,
{
    let client = &shared.client;
    let (incoming_store, incoming_writer) = reflector::store();
    let (outgoing_store, outgoing_writer) = reflector::store();
    let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
    let (outgoing_tx, outgoing_rx) = mpsc::unbounded_channel();
    let (status_tx, status_rx) = mpsc::unbounded_channel();
    let (references, touched) = References::watch(client, ns);
    let ctx = Arc::new(Context::new(ContextParts {
        client: client.clone(),
        recorder: shared.recorder.clone(),
        outbox: shared.outbox.clone(),
        incoming_store: incoming_store.clone(),
        outgoing_store: outgoing_store.clone(),
        incoming_trigger: incoming_tx.clone(),
        status_trigger: status_tx,
        references,
        timing: opts.timing,
        reconciles: shared.reconciles.clone(),
        metrics: shared.metrics.clone(),
        shard: opts.shard.clone(),
        lease: opts
            .election
            .as_ref()
            .map(|e| format!("{}/{}", e.namespace, e.name)),
        default_sink: opts.default_sink.clone(),
        options,
        writes: role == Role::Leader,
    }));
    let status_writer = tokio::spawn(super::status::follow(ctx.clone(), status_rx));
    let config = ControllerConfig::default().concurrency(CONCURRENCY);
    // A referenced Secret or ConfigMap that changed reconciles its resources.
    let follow_references = {
        let incoming_store = incoming_store.clone();
        let outgoing_store = outgoing_store.clone();
        tokio::spawn(touched.for_each(move |(kind, namespace, name)| {
            let object = (kind, namespace.as_str(), name.as_str());
            for r in servers_referencing(&incoming_store.state(), object, |o| {
                Names::incoming(&o.spec)
            }) {
                let _ = incoming_tx.send(r);
            }
            for r in servers_referencing(&outgoing_store.state(), object, |o| {
                Names::outgoing(&o.spec)
            }) {
                let _ = outgoing_tx.send(r);
            }
            async {}
        }))
    };

    let (left_tx, left_rx) = mpsc::unbounded_channel();
    // A mailbox that leaves the watch (deleted, or relabelled to another
    // shard) gives up its worker and its claim at once.
    let follow_leaving = {
        let ctx = ctx.clone();
        // Many mailboxes relabelled at once stop together, not one by one.
        tokio::spawn(stream_of(left_rx).for_each_concurrent(None, move |id| {
            let ctx = ctx.clone();
            async move { ctx.release_incoming(&id).await }
        }))
    };
    let incoming = {
        let stream = watcher(
            scoped::<IncomingEmailServer>(client, ns),
            watcher::Config::default().labels(&opts.shard.selector()),
        )
        .default_backoff()
        .reflect(incoming_writer)
        .inspect(move |event| {
            if let Ok(watcher::Event::Delete(o)) = event
                && let Ok((id, _)) = super::identity(o)
            {
                let _ = left_tx.send(id);
            }
        })
        .applied_objects()
        .predicate_filter(trigger_hash, Default::default());
        Controller::for_stream(stream, incoming_store)
            .with_config(config.clone())
            .reconcile_on(stream_of::<ObjectRef<IncomingEmailServer>>(incoming_rx))
            .graceful_shutdown_on(shutdown())
            .run(reconcile_incoming, error_policy, ctx.clone())
            .for_each(|_| async {})
    };
    let outgoing = {
        let stream = watcher(
            scoped::<OutgoingEmailServer>(client, ns),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(outgoing_writer)
        .applied_objects()
        .predicate_filter(trigger_hash, Default::default());
        Controller::for_stream(stream, outgoing_store)
            .with_config(config)
            .reconcile_on(stream_of::<ObjectRef<OutgoingEmailServer>>(outgoing_rx))
            .graceful_shutdown_on(shutdown())
            .run(reconcile_outgoing, error_policy, ctx.clone())
            .for_each(|_| async {})
    };
    let both = async move {
        // Streams are lazy: a standby's incoming watch is never opened.
        if role == Role::Leader {
            tokio::join!(incoming, outgoing);
        } else {
            outgoing.await;
        }
        status_writer.abort();
        follow_references.abort();
        follow_leaving.abort();
    };
    (ctx, Box::pin(both))
}
