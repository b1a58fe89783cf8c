//! `mailroom controller`: the Kubernetes adapter. kube-runtime Controllers for
//! both kinds, with the Secrets and ConfigMaps they reference watched
//! (metadata only) and mapped back to them. Reconcile keeps the finalizer,
//! takes the referenced values (`references`: read once per resourceVersion)
//! and hands the object to the engine
//! (`crate::engine`, the same one standalone mode uses), then writes the status
//! the engine computes (`status`) and announces changes (`events`). A runtime
//! whose health changes asks for a status-only write: no Secret is read and
//! nothing is re-hashed for it.

pub mod cursor;
mod events;
pub mod http;
pub mod leader;
pub mod references;
pub mod review;
pub mod run;
pub mod shard;
pub mod status;
pub mod writeback;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use tokio::sync::{Mutex, mpsc};

use crate::api::{IncomingEmailServer, OutgoingEmailServer};
use crate::engine::{Applied, Desired, Engine, Environment, Names, Plan, Retired, own_addresses};
use crate::runtime::OnChange;
use mailroom_core::incoming::worker::WorkerOptions;
use mailroom_core::oauth2::Tokens;
use mailroom_core::outgoing::Outbox;
use mailroom_core::sync::unpoisoned;
use mailroom_core::vocab::ResourceId;
pub use status::StatusWork;

/// The finalizer that lets a worker finish its message before its resource goes.
pub const FINALIZER: &str = "mailroom.dev/worker";
/// The one field manager of every write.
pub(crate) const MANAGER: &str = "mailroom";
/// Annotating an object with a new value runs its connection test again.
pub const TEST_ANNOTATION: &str = "mailroom.dev/test-connection";
/// How often a controller's reconciles run again without a change, and how
/// often status counters may be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Every resource is reconciled again after about this long (less up
    /// to a tenth, so that resources started together spread out).
    pub resync: Duration,
    /// Status counters alone are written at most this often; conditions at once.
    pub stats_every: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(600),
            stats_every: Duration::from_secs(60),
        }
    }
}

impl Timing {
    /// The resync wait, less a random part of up to a tenth.
    pub(crate) fn resync(&self) -> Duration {
        self.resync.mul_f64(1.0 - fastrand::f64() / 10.0)
    }
}

/// How often a mailbox moved from another shard is looked at while that
/// shard still claims it.
const HANDOVER_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("the object has no namespace, name or uid")]
    Unnamed,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    recorder: Recorder,
    /// Every running resource of this scope.
    pub engine: Mutex<Engine>,
    incoming_store: Store<IncomingEmailServer>,
    outgoing_store: Store<OutgoingEmailServer>,
    incoming_trigger: mpsc::UnboundedSender<ObjectRef<IncomingEmailServer>>,
    status_trigger: mpsc::UnboundedSender<StatusWork>,
    references: references::References,
    timing: Timing,
    reconciles: Arc<std::sync::atomic::AtomicU64>,
    metrics: Arc<crate::metrics::Metrics>,
    shard: shard::Shard,
    claims: shard::Claims,
    failures: std::sync::Mutex<HashMap<String, u32>>,
    /// When each status was last written, for batching the counters.
    written_at: std::sync::Mutex<HashMap<ResourceId, std::time::Instant>>,
    /// The leader's contexts write (finalizers, status, events); a standby's
    /// only keeps its senders current for the submission endpoint.
    writes: bool,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// What a Context is built from.
pub struct ContextParts {
    pub client: Client,
    pub recorder: Recorder,
    /// Shared by every scope, and by the submission endpoint.
    pub outbox: Arc<Outbox>,
    pub incoming_store: Store<IncomingEmailServer>,
    pub outgoing_store: Store<OutgoingEmailServer>,
    /// Asks for a full reconcile of an IncomingEmailServer.
    pub incoming_trigger: mpsc::UnboundedSender<ObjectRef<IncomingEmailServer>>,
    /// Asks for a status-only write.
    pub status_trigger: mpsc::UnboundedSender<StatusWork>,
    /// The referenced Secrets and ConfigMaps of this scope.
    pub references: references::References,
    pub timing: Timing,
    /// Counts every reconcile (the process's `mailroom_reconciles_total`).
    pub reconciles: Arc<std::sync::atomic::AtomicU64>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The resources this controller writes for.
    pub shard: shard::Shard,
    /// Its leader election Lease (`namespace/name`), named in the claims it
    /// puts on mailboxes; none without leader election.
    pub lease: Option<String>,
    pub default_sink: Option<PathBuf>,
    pub options: WorkerOptions,
    /// False on a standby: no finalizer, status or event is written.
    pub writes: bool,
}

impl Context {
    pub fn new(p: ContextParts) -> Self {
        let claims = shard::Claims::new(p.client.clone(), &p.shard, p.lease.clone());
        let tokens = Tokens::new(Some(Arc::new(writeback::SecretUpdate {
            client: p.client.clone(),
        })));
        Self {
            client: p.client,
            recorder: p.recorder,
            engine: Mutex::new(Engine::new(Environment {
                outbox: p.outbox,
                tokens,
                default_sink: p.default_sink,
                options: p.options,
                metrics: p.metrics.clone(),
            })),
            incoming_store: p.incoming_store,
            outgoing_store: p.outgoing_store,
            incoming_trigger: p.incoming_trigger,
            status_trigger: p.status_trigger,
            references: p.references,
            timing: p.timing,
            reconciles: p.reconciles,
            metrics: p.metrics,
            claims,
            shard: p.shard,
            failures: std::sync::Mutex::default(),
            written_at: std::sync::Mutex::default(),
            writes: p.writes,
        }
    }

    /// Whether this controller writes the object's finalizer, status and
    /// events: it leads, and the object's shard label is its shard's (every
    /// replica follows every OutgoingEmailServer to send for it).
    fn writes_for(&self, meta: &ObjectMeta) -> bool {
        self.writes && self.shard.handles(meta)
    }

    /// From addresses of the namespace's OutgoingEmailServers.
    fn own_addresses(&self, namespace: &str) -> Vec<String> {
        let outgoing: Vec<(String, String)> = self
            .outgoing_store
            .state()
            .iter()
            .filter_map(|o| Some((o.namespace()?, o.spec.email.clone())))
            .collect();
        own_addresses(
            namespace,
            outgoing.iter().map(|(ns, e)| (ns.as_str(), e.as_str())),
        )
    }

    /// Stops every worker at once (each finishes its message in flight),
    /// without holding the engine while they finish.
    pub async fn stop_all(&self) {
        let mut retired = {
            let mut engine = self.engine.lock().await;
            engine.stop_outgoing();
            engine.take_all_incoming()
        };
        futures::future::join_all(retired.iter_mut().map(Retired::stop)).await;
    }

    /// Stops the workers and senders whose resource is no longer in the
    /// watch cache: its finalizer was removed by hand, or its deletion was
    /// missed. Runs only on a synced cache (a cache still listing is not a
    /// cluster without resources). Returns what it stopped.
    pub async fn sweep(&self) -> Vec<ResourceId> {
        let live = |ids: Vec<ResourceId>| -> std::collections::HashSet<ResourceId> {
            ids.into_iter().collect()
        };
        let incoming = live(
            self.incoming_store
                .state()
                .iter()
                .filter_map(|o| identity(o.as_ref()).ok().map(|(id, _)| id))
                .collect(),
        );
        let outgoing = live(
            self.outgoing_store
                .state()
                .iter()
                .filter_map(|o| identity(o.as_ref()).ok().map(|(id, _)| id))
                .collect(),
        );
        let mut stopped = Vec::new();
        let mut retired = Vec::new();
        {
            let mut engine = self.engine.lock().await;
            for id in engine.incoming_ids() {
                if !incoming.contains(&id)
                    && let Some(r) = engine.take_incoming(&id)
                {
                    retired.push(r);
                    stopped.push(id);
                }
            }
            for id in engine.outgoing_ids() {
                if !outgoing.contains(&id) && engine.remove_outgoing(&id) {
                    stopped.push(id);
                }
            }
        }
        futures::future::join_all(retired.iter_mut().map(Retired::stop)).await;
        for id in &stopped {
            tracing::warn!(resource = %id, "stopped: the resource is gone from this controller's watch without its finalizer's cleanup (was the finalizer removed by hand, or its shard label changed?)");
            if self.writes {
                self.claims.release(id).await;
            }
        }
        stopped
    }

    /// A mailbox left this controller's watch (deleted, or relabelled to
    /// another shard): its worker stops after the message in flight, then the
    /// claim goes so that the shard it moved to may start.
    pub async fn release_incoming(&self, id: &ResourceId) {
        let retired = self.engine.lock().await.take_incoming(id);
        if let Some(mut r) = retired {
            r.stop().await;
            tracing::info!(resource = %id, "stopped the fetch worker: the resource left this controller's watch");
            if self.writes {
                self.claims.release(id).await;
            }
        }
    }

    /// Sweeps every `every` once both caches have synced, until `stop`.
    pub async fn sweep_every(&self, every: std::time::Duration, stop: impl Future<Output = ()>) {
        // Readiness is asked anew at each tick rather than awaited: a store's
        // readiness wakes only its latest waiter, and the Controller waits too.
        let sweeping = async {
            loop {
                tokio::time::sleep(every).await;
                if ready(&self.incoming_store).await && ready(&self.outgoing_store).await {
                    self.sweep().await;
                }
            }
        };
        tokio::select! {
            _ = sweeping => {}
            _ = stop => {}
        }
    }

    fn on_change(&self, work: StatusWork) -> OnChange {
        let trigger = self.status_trigger.clone();
        Arc::new(move || {
            let _ = trigger.send(work.clone());
        })
    }
}

/// The watch-event filter: only changes of spec (generation), finalizers,
/// deletion or the re-test annotation reach reconcile. Status writes change
/// none of these, so they never cause another reconcile.
pub fn trigger_hash<K: Resource>(obj: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = obj.meta();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut h);
    meta.finalizers.hash(&mut h);
    meta.deletion_timestamp.is_some().hash(&mut h);
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(TEST_ANNOTATION))
        .hash(&mut h);
    // Which shard writes an OutgoingEmailServer's status.
    meta.labels
        .as_ref()
        .and_then(|l| l.get(shard::SHARD_LABEL))
        .hash(&mut h);
    Some(h.finish())
}

/// The servers of `servers` that name the Secret or ConfigMap `namespace/name`.
pub fn servers_referencing<K: Resource<DynamicType = ()>>(
    servers: &[Arc<K>],
    (kind, namespace, name): (references::Kind, &str, &str),
    names_of: impl Fn(&K) -> Names,
) -> Vec<ObjectRef<K>> {
    servers
        .iter()
        .filter(|s| s.meta().namespace.as_deref() == Some(namespace))
        .filter(|s| {
            let names = names_of(s);
            let named = match kind {
                references::Kind::Secret => names.secrets,
                references::Kind::ConfigMap => names.config_maps,
            };
            named.iter().any(|n| n == name)
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

/// The object's identity and uid.
fn identity<K: Resource>(obj: &K) -> Result<(ResourceId, String), Error> {
    let m = obj.meta();
    Ok((
        ResourceId::new(
            m.namespace.clone().ok_or(Error::Unnamed)?,
            m.name.clone().ok_or(Error::Unnamed)?,
        ),
        m.uid.clone().ok_or(Error::Unnamed)?,
    ))
}

fn retest<K: Resource>(obj: &K) -> String {
    obj.annotations()
        .get(TEST_ANNOTATION)
        .cloned()
        .unwrap_or_default()
}

/// Whether a watch cache has synced, asked without waiting.
async fn ready<K>(store: &Store<K>) -> bool
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    tokio::time::timeout(
        std::time::Duration::from_millis(1),
        store.wait_until_ready(),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

/// Runs `apply`, or `cleanup` while the object is being deleted, behind the
/// finalizer; a success resets the object's backoff.
async fn reconcile_with<K, A, FA, C, FC>(
    obj: Arc<K>,
    ctx: Arc<Context>,
    apply: A,
    cleanup: C,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    A: FnOnce(Arc<K>, Arc<Context>) -> FA,
    FA: Future<Output = Result<Action, Error>>,
    C: FnOnce(Arc<K>, Arc<Context>) -> FC,
    FC: Future<Output = Result<Action, Error>>,
{
    let began = std::time::Instant::now();
    let metrics = ctx.metrics.clone();
    let result = async {
        let (id, uid) = identity(obj.as_ref())?;
        ctx.reconciles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !ctx.writes_for(obj.meta()) {
            // A standby, or a controller of another shard (every replica keeps
            // every sender), follows the object without touching it.
            return if obj.meta().deletion_timestamp.is_some() {
                cleanup(obj, ctx).await
            } else {
                apply(obj, ctx).await
            };
        }
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &id.namespace);
        let c = ctx.clone();
        let result = finalizer(&api, FINALIZER, obj, |event| async move {
            match event {
                Finalizer::Apply(o) => apply(o, c).await,
                Finalizer::Cleanup(o) => cleanup(o, c).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)));
        if result.is_ok() {
            unpoisoned(&ctx.failures).remove(&uid);
        }
        result
    }
    .await;
    metrics.reconciled(K::kind(&()).as_ref(), began.elapsed());
    result
}

/// Reconciles an IncomingEmailServer.
pub async fn reconcile_incoming(
    obj: Arc<IncomingEmailServer>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    reconcile_with(obj, ctx, apply_incoming, cleanup_incoming).await
}

async fn apply_incoming(obj: Arc<IncomingEmailServer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (id, _) = identity(obj.as_ref())?;
    if ctx.writes
        && !ctx.engine.lock().await.runs_incoming(&id)
        && let Some(holder) = ctx.claims.standing(obj.as_ref()).await?
    {
        // Moved here from another shard whose worker may still be fetching.
        tracing::info!(resource = %id, shard = ?holder.shard, lease = ?holder.lease, "waiting for the shard that runs this mailbox to let it go");
        return Ok(Action::requeue(HANDOVER_POLL));
    }
    let fetched = ctx
        .references
        .fetch(&id.namespace, &Names::incoming(&obj.spec))
        .await?;
    let own = ctx.own_addresses(&id.namespace);
    let retest = retest(obj.as_ref());
    let owner = obj.controller_owner_ref(&()).ok_or(Error::Unnamed)?;
    let conditions = obj
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let desired = Desired {
        id: &id,
        spec: &obj.spec,
        generation: obj.metadata.generation,
        retest: &retest,
        secrets: &fetched.secrets,
        config_maps: &fetched.config_maps,
        conditions: &conditions,
        on_change: Some(ctx.on_change(StatusWork::Incoming(id.clone()))),
    };
    // The old worker stops with the engine unlocked: other resources'
    // reconciles, status writes and /metrics go on meanwhile.
    let plan = ctx.engine.lock().await.plan_incoming(&desired, &own);
    let applied = match plan {
        Plan::Keep => Applied::Kept,
        Plan::Start(mut retired) => {
            if let Some(r) = retired.as_mut() {
                r.stop().await;
            }
            ctx.engine.lock().await.start_incoming(
                desired,
                &own,
                || {
                    Arc::new(cursor::ConfigMapCursorStore::new(
                        ctx.client.clone(),
                        &id.namespace,
                        &id.name,
                        owner,
                        MANAGER,
                    ))
                },
                retired,
            )
        }
    };
    let reference = obj.object_ref(&());
    if applied != Applied::Kept {
        let what = if applied == Applied::Restarted {
            "restarted with the new configuration"
        } else {
            "started"
        };
        events::publish(
            &ctx,
            &reference,
            EventType::Normal,
            "WorkerStarted",
            format!("fetch worker {what}"),
            "Start",
        )
        .await;
    }
    status::write_incoming(&ctx, obj.as_ref()).await
}

async fn cleanup_incoming(
    obj: Arc<IncomingEmailServer>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let (id, _) = identity(obj.as_ref())?;
    let retired = ctx.engine.lock().await.take_incoming(&id);
    if let Some(mut r) = retired {
        r.stop().await;
        events::publish(
            &ctx,
            &obj.object_ref(&()),
            EventType::Normal,
            "WorkerStopped",
            "fetch worker stopped; the message in flight was finished".into(),
            "Stop",
        )
        .await;
    }
    unpoisoned(&ctx.written_at).remove(&id);
    Ok(Action::await_change())
}

/// Reconciles an OutgoingEmailServer.
pub async fn reconcile_outgoing(
    obj: Arc<OutgoingEmailServer>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    reconcile_with(obj, ctx, apply_outgoing, cleanup_outgoing).await
}

async fn apply_outgoing(obj: Arc<OutgoingEmailServer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (id, _) = identity(obj.as_ref())?;
    let fetched = ctx
        .references
        .fetch(&id.namespace, &Names::outgoing(&obj.spec))
        .await?;
    let retest = retest(obj.as_ref());
    let conditions = obj
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let applied = ctx.engine.lock().await.apply_outgoing(Desired {
        id: &id,
        spec: &obj.spec,
        generation: obj.metadata.generation,
        retest: &retest,
        secrets: &fetched.secrets,
        config_maps: &fetched.config_maps,
        conditions: &conditions,
        on_change: Some(ctx.on_change(StatusWork::Outgoing(id.clone()))),
    });
    if applied != Applied::Kept {
        // Incoming servers of the namespace treat our address as their own.
        for i in ctx
            .incoming_store
            .state()
            .iter()
            .filter(|i| i.namespace().as_deref() == Some(id.namespace.as_str()))
        {
            let _ = ctx.incoming_trigger.send(ObjectRef::from_obj(i.as_ref()));
        }
    }
    status::write_outgoing(&ctx, obj.as_ref()).await
}

async fn cleanup_outgoing(
    obj: Arc<OutgoingEmailServer>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let (id, _) = identity(obj.as_ref())?;
    ctx.engine.lock().await.remove_outgoing(&id);
    unpoisoned(&ctx.written_at).remove(&id);
    Ok(Action::await_change())
}

/// Per-object backoff: 5 s doubling to 5 min, reset by a successful reconcile.
pub(crate) fn error_policy<K: Resource>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let uid = obj.meta().uid.clone().unwrap_or_default();
    let n = {
        let mut failures = unpoisoned(&ctx.failures);
        let n = failures.entry(uid).or_insert(0);
        *n += 1;
        *n
    };
    let wait = backoff(n);
    tracing::warn!(object = %obj.meta().name.as_deref().unwrap_or("-"), retry_in_s = wait.as_secs(), "reconcile failed: {error}");
    Action::requeue(wait)
}

/// The wait after the `n`th failure in a row.
pub(crate) fn backoff(n: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << n.saturating_sub(1).min(10));
    Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_from_5s_to_5min() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(6), Duration::from_secs(160));
        assert_eq!(backoff(7), Duration::from_secs(300));
        assert_eq!(backoff(60), Duration::from_secs(300));
    }
}
