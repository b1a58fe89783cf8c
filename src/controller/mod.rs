//! `mailroom controller`: the Kubernetes adapter. kube-runtime Controllers for
//! both kinds, with the Secrets they reference watched (metadata only) and
//! mapped back to them; reconcile resolves the spec with Secrets read fresh
//! from the API, (re)starts the resource's runtime (`crate::runtime`, the same
//! one standalone mode uses) only when its configuration changed, and writes
//! the status the runtime computes by server-side apply, only when it changed.

pub mod cursor;
pub mod http;
pub mod leader;
pub mod references;
pub mod run;
pub mod writeback;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use tokio::sync::{Mutex, mpsc};

use crate::api::{IncomingEmailServer, OutgoingEmailServer};
use crate::incoming::worker::WorkerOptions;
use crate::oauth2::Tokens;
use crate::outgoing::Outbox;
use crate::runtime::{IncomingInputs, IncomingRuntime, OutgoingRuntime, Runtime, config_hash};
use crate::status::conditions::{READY, primary_conflict};
pub use references::{Fetched, Names};

/// The finalizer that lets a worker finish its message before its resource goes.
pub const FINALIZER: &str = "mailroom.dev/worker";
/// The one field manager of every write.
pub const MANAGER: &str = "mailroom";
/// Annotating an object with a new value runs its connection test again.
pub const TEST_ANNOTATION: &str = "mailroom.dev/test-connection";
/// Status counters are written at most this often (conditions at once).
pub const STATS_EVERY: Duration = Duration::from_secs(60);
/// Rejections this recent keep FilterRejecting True.
const REJECTING_WINDOW: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("the object has no namespace, name or uid")]
    Unnamed,
}

/// A runtime and the configuration digest it was started from.
#[derive(Debug)]
pub struct Running<R> {
    pub namespace: String,
    pub name: String,
    pub runtime: R,
    hash: [u8; 32],
    /// When status was last written, for batching the counters.
    written_at: Option<Instant>,
}

impl<R> Running<R> {
    fn new(namespace: &str, name: &str, runtime: R, hash: [u8; 32]) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            runtime,
            hash,
            written_at: None,
        }
    }
}

/// A callback that asks for a reconcile of `obj`.
fn reconcile_trigger<K: Resource<DynamicType = ()> + Send + Sync + 'static>(
    trigger: &mpsc::UnboundedSender<ObjectRef<K>>,
    obj: &K,
) -> crate::runtime::OnChange {
    let trigger = trigger.clone();
    let me = ObjectRef::from_obj(obj);
    Arc::new(move || {
        let _ = trigger.send(me.clone());
    })
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub outbox: Arc<Outbox>,
    recorder: Recorder,
    pub incoming: Mutex<HashMap<String, Running<IncomingRuntime>>>,
    pub outgoing: Mutex<HashMap<String, Running<OutgoingRuntime>>>,
    incoming_store: Store<IncomingEmailServer>,
    outgoing_store: Store<OutgoingEmailServer>,
    incoming_trigger: mpsc::UnboundedSender<ObjectRef<IncomingEmailServer>>,
    outgoing_trigger: mpsc::UnboundedSender<ObjectRef<OutgoingEmailServer>>,
    default_sink: Option<PathBuf>,
    options: WorkerOptions,
    failures: std::sync::Mutex<HashMap<String, u32>>,
    /// OAuth2 grants; rotated refresh tokens go back into their Secrets.
    pub tokens: Tokens,
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
    pub incoming_trigger: mpsc::UnboundedSender<ObjectRef<IncomingEmailServer>>,
    pub outgoing_trigger: mpsc::UnboundedSender<ObjectRef<OutgoingEmailServer>>,
    pub default_sink: Option<PathBuf>,
    pub options: WorkerOptions,
}

impl Context {
    pub fn new(p: ContextParts) -> Self {
        let tokens = Tokens::new(Some(Arc::new(writeback::SecretUpdate {
            client: p.client.clone(),
        })));
        Self {
            client: p.client,
            outbox: p.outbox,
            recorder: p.recorder,
            incoming: Mutex::default(),
            outgoing: Mutex::default(),
            incoming_store: p.incoming_store,
            outgoing_store: p.outgoing_store,
            incoming_trigger: p.incoming_trigger,
            outgoing_trigger: p.outgoing_trigger,
            default_sink: p.default_sink,
            options: p.options,
            failures: std::sync::Mutex::default(),
            tokens,
        }
    }

    /// From addresses of the namespace's OutgoingEmailServers, sorted.
    fn own_addresses(&self, namespace: &str) -> Vec<String> {
        let mut own: Vec<String> = self
            .outgoing_store
            .state()
            .iter()
            .filter(|o| o.namespace().as_deref() == Some(namespace))
            .map(|o| o.spec.email.clone())
            .collect();
        own.sort();
        own.dedup();
        own
    }

    /// Stops every worker (each finishes its message in flight).
    pub async fn stop_all(&self) {
        for (_, mut r) in self.incoming.lock().await.drain() {
            r.runtime.stop().await;
        }
        for (_, mut r) in self.outgoing.lock().await.drain() {
            r.runtime.stop();
        }
    }

    async fn event(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
        action: &str,
    ) {
        let ev = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, reference).await {
            tracing::warn!("cannot record an event: {e}");
        }
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
    Some(h.finish())
}

/// The servers of `servers` that name the Secret `namespace/name`.
pub fn servers_referencing<K: Resource<DynamicType = ()>>(
    servers: &[Arc<K>],
    namespace: &str,
    name: &str,
    names_of: impl Fn(&K) -> Names,
) -> Vec<ObjectRef<K>> {
    servers
        .iter()
        .filter(|s| s.meta().namespace.as_deref() == Some(namespace))
        .filter(|s| names_of(s).secrets.iter().any(|n| n == name))
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

/// Whether a status must be written now: never when nothing changed; at once
/// when anything but the counters changed; counters at most every STATS_EVERY.
fn must_write<S: Serialize>(
    current: Option<&S>,
    computed: &S,
    written_at: Option<Instant>,
) -> Result<bool, Duration> {
    let a = serde_json::to_value(current).unwrap_or_default();
    let b = serde_json::to_value(Some(computed)).unwrap_or_default();
    if a == b {
        return Ok(false);
    }
    let without_counters = |mut v: serde_json::Value| {
        if let Some(o) = v.as_object_mut() {
            for k in ["stats", "recentRejections", "dryRun"] {
                o.remove(k);
            }
        }
        v
    };
    if without_counters(a) != without_counters(b) {
        return Ok(true);
    }
    match written_at {
        Some(t) if t.elapsed() < STATS_EVERY => Err(STATS_EVERY - t.elapsed()),
        _ => Ok(true),
    }
}

fn ready_of(conditions: &[Condition]) -> Option<(String, String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn rejecting_since(now: jiff::Timestamp) -> jiff::Timestamp {
    now.checked_sub(jiff::SignedDuration::try_from(REJECTING_WINDOW).unwrap_or_default())
        .unwrap_or(now)
}

async fn patch_status<K>(
    api: &Api<K>,
    name: &str,
    status: &impl Serialize,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map(drop)
}

fn identity<K: Resource>(obj: &K) -> Result<(String, String, String), Error> {
    let m = obj.meta();
    Ok((
        m.namespace.clone().ok_or(Error::Unnamed)?,
        m.name.clone().ok_or(Error::Unnamed)?,
        m.uid.clone().ok_or(Error::Unnamed)?,
    ))
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
    let (ns, _, uid) = identity(obj.as_ref())?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
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
        ctx.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&uid);
    }
    result
}

/// Writes `status` when `must_write` says so; tells whether it did, and when
/// to come back.
async fn sync_status<K>(
    ctx: &Context,
    obj: &K,
    current: Option<&<K as HasStatus>::Status>,
    status: &<K as HasStatus>::Status,
    written_at: &mut Option<Instant>,
) -> Result<(bool, Action), Error>
where
    K: HasStatus
        + Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let (ns, name, _) = identity(obj)?;
    match must_write(current, status, *written_at) {
        Ok(true) => {
            patch_status(
                &Api::<K>::namespaced(ctx.client.clone(), &ns),
                &name,
                status,
            )
            .await?;
            *written_at = Some(Instant::now());
            Ok((true, Action::requeue(STATS_EVERY)))
        }
        Ok(false) => Ok((false, Action::requeue(STATS_EVERY))),
        Err(wait) => Ok((false, Action::requeue(wait))),
    }
}

/// Computes the status (with `extra` conditions) and writes it when it must;
/// returns whether it was written, the conditions before, the status, and
/// when to come back.
async fn status_and_sync<K, R>(
    ctx: &Context,
    obj: &K,
    runtime: &R,
    extra: Vec<Condition>,
    written_at: &mut Option<Instant>,
) -> Result<(bool, Vec<Condition>, R::Status, Action), Error>
where
    K: HasStatus<Status = R::Status>
        + Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    R: Runtime,
{
    let now = jiff::Timestamp::now();
    let current = obj.current_status();
    let previous = current
        .map(|s| R::conditions(s).to_vec())
        .unwrap_or_default();
    let mut status = runtime.status(obj.meta().generation, &previous, rejecting_since(now), now);
    R::conditions_mut(&mut status).extend(extra);
    let (written, action) = sync_status(ctx, obj, current, &status, written_at).await?;
    Ok((written, previous, status, action))
}

/// The kinds whose status the controller writes.
pub trait HasStatus {
    type Status: Serialize;
    fn current_status(&self) -> Option<&Self::Status>;
}

impl HasStatus for IncomingEmailServer {
    type Status = crate::api::IncomingEmailServerStatus;
    fn current_status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}

impl HasStatus for OutgoingEmailServer {
    type Status = crate::api::OutgoingEmailServerStatus;
    fn current_status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}

/// Reconciles an IncomingEmailServer.
pub async fn reconcile_incoming(
    obj: Arc<IncomingEmailServer>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    reconcile_with(obj, ctx, apply_incoming, cleanup_incoming).await
}

async fn apply_incoming(obj: Arc<IncomingEmailServer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (ns, name, uid) = identity(obj.as_ref())?;
    let fetched = references::fetch(&ctx.client, &ns, &Names::incoming(&obj.spec)).await?;
    let own = ctx.own_addresses(&ns);
    let mut extra = own.clone();
    extra.push(
        obj.annotations()
            .get(TEST_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
    );
    let digest = || {
        config_hash(
            "IncomingEmailServer",
            &serde_json::to_value(&obj.spec).unwrap_or_default(),
            &ctx.tokens.stable_view(&ns, &fetched.secrets),
            &fetched.config_maps,
            &extra,
        )
    };
    let hash = digest();
    let reference = obj.object_ref(&());
    let mut running = ctx.incoming.lock().await;
    if running.get(&uid).is_none_or(|r| r.hash != hash) {
        let restart = match running.remove(&uid) {
            Some(mut old) => {
                old.runtime.stop().await;
                true
            }
            None => false,
        };
        let owner = obj.controller_owner_ref(&()).ok_or(Error::Unnamed)?;
        let runtime = IncomingRuntime::start(IncomingInputs {
            namespace: &ns,
            name: &name,
            spec: &obj.spec,
            secrets: &fetched.secrets(),
            config_maps: &fetched.config_maps(),
            tokens: &ctx.tokens,
            own_addresses: own,
            outbox: ctx.outbox.clone(),
            default_sink: ctx.default_sink.as_deref(),
            store: Arc::new(cursor::ConfigMapCursorStore::new(
                ctx.client.clone(),
                &ns,
                &name,
                owner,
                MANAGER,
            )),
            options: ctx.options.clone(),
            on_change: Some(reconcile_trigger(&ctx.incoming_trigger, obj.as_ref())),
        });
        // Taken again now that the runtime's OAuth2 grants are known, so that
        // their own refresh-token write-backs leave it unchanged.
        running.insert(uid.clone(), Running::new(&ns, &name, runtime, digest()));
        let what = if restart {
            "restarted with the new configuration"
        } else {
            "started"
        };
        ctx.event(
            &reference,
            EventType::Normal,
            "WorkerStarted",
            format!("fetch worker {what}"),
            "Start",
        )
        .await;
    }
    let Some(entry) = running.get_mut(&uid) else {
        return Ok(Action::requeue(STATS_EVERY));
    };
    let (written, previous, status, action) = status_and_sync(
        &ctx,
        obj.as_ref(),
        &entry.runtime,
        Vec::new(),
        &mut entry.written_at,
    )
    .await?;
    drop(running);
    if written {
        events_for_change(&ctx, &reference, &previous, &status.conditions).await;
    }
    Ok(action)
}

/// Events for what changed between two sets of conditions.
async fn events_for_change(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    before: &[Condition],
    after: &[Condition],
) {
    let (b, a) = (ready_of(before), ready_of(after));
    if b.as_ref().map(|b| (&b.0, &b.1)) != a.as_ref().map(|a| (&a.0, &a.1))
        && let Some((status, reason, message)) = a
    {
        match (status.as_str(), reason.as_str()) {
            ("True", _) => {
                ctx.event(
                    reference,
                    EventType::Normal,
                    "ConnectionVerified",
                    message,
                    "Test",
                )
                .await
            }
            (_, "Connecting") => {}
            (_, reason) => {
                ctx.event(reference, EventType::Warning, reason, message, "Test")
                    .await
            }
        }
    }
    let rejecting = |c: &[Condition]| {
        c.iter()
            .find(|c| c.type_ == crate::status::FILTER_REJECTING)
            .map(|c| (c.status.clone(), c.message.clone()))
    };
    if let Some((status, message)) = rejecting(after)
        && status == "True"
        && rejecting(before) != Some((status, message.clone()))
    {
        ctx.event(
            reference,
            EventType::Warning,
            "MailRejected",
            message,
            "Filter",
        )
        .await;
    }
}

async fn cleanup_incoming(
    obj: Arc<IncomingEmailServer>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let (_, _, uid) = identity(obj.as_ref())?;
    let removed = ctx.incoming.lock().await.remove(&uid);
    if let Some(mut r) = removed {
        r.runtime.stop().await;
        ctx.event(
            &obj.object_ref(&()),
            EventType::Normal,
            "WorkerStopped",
            "fetch worker stopped; the message in flight was finished".into(),
            "Stop",
        )
        .await;
    }
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
    let (ns, name, uid) = identity(obj.as_ref())?;
    let fetched = references::fetch(&ctx.client, &ns, &Names::outgoing(&obj.spec)).await?;
    let retest = obj
        .annotations()
        .get(TEST_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    let digest = || {
        config_hash(
            "OutgoingEmailServer",
            &serde_json::to_value(&obj.spec).unwrap_or_default(),
            &ctx.tokens.stable_view(&ns, &fetched.secrets),
            &fetched.config_maps,
            std::slice::from_ref(&retest),
        )
    };
    let hash = digest();
    let reference = obj.object_ref(&());
    let mut running = ctx.outgoing.lock().await;
    if running.get(&uid).is_none_or(|r| r.hash != hash) {
        let stats = match running.remove(&uid) {
            Some(mut old) => {
                old.runtime.stop();
                old.runtime.stats.clone()
            }
            None => Default::default(),
        };
        let runtime = OutgoingRuntime::start(
            &ns,
            &name,
            &obj.spec,
            &fetched.secrets(),
            &fetched.config_maps(),
            &ctx.tokens,
            &ctx.outbox,
            stats,
            Some(reconcile_trigger(&ctx.outgoing_trigger, obj.as_ref())),
        );
        // As for incoming: the digest as the started grants see it.
        running.insert(uid.clone(), Running::new(&ns, &name, runtime, digest()));
        // Incoming servers of the namespace treat our address as their own.
        for i in ctx
            .incoming_store
            .state()
            .iter()
            .filter(|i| i.namespace().as_deref() == Some(ns.as_str()))
        {
            let _ = ctx.incoming_trigger.send(ObjectRef::from_obj(i.as_ref()));
        }
    }
    let others: Vec<String> = if obj.spec.primary {
        ctx.outgoing_store
            .state()
            .iter()
            .filter(|o| {
                o.namespace().as_deref() == Some(ns.as_str())
                    && o.spec.primary
                    && o.name_any() != name
            })
            .map(|o| o.name_any())
            .collect()
    } else {
        Vec::new()
    };
    let Some(entry) = running.get_mut(&uid) else {
        return Ok(Action::requeue(STATS_EVERY));
    };
    let conflict = primary_conflict(
        &others,
        obj.metadata.generation,
        obj.status.as_ref().map_or(&[][..], |s| &s.conditions),
        jiff::Timestamp::now(),
    );
    let (written, previous, status, action) = status_and_sync(
        &ctx,
        obj.as_ref(),
        &entry.runtime,
        conflict.into_iter().collect(),
        &mut entry.written_at,
    )
    .await?;
    drop(running);
    if written {
        events_for_change(&ctx, &reference, &previous, &status.conditions).await;
        let failovers = |s: Option<&crate::api::OutgoingStats>| s.map_or(0, |s| s.failovers);
        let (before, after) = (
            failovers(obj.status.as_ref().and_then(|s| s.stats.as_ref())),
            failovers(status.stats.as_ref()),
        );
        if after > before {
            ctx.event(
                &reference,
                EventType::Warning,
                "FailoverUsed",
                format!(
                    "{} message(s) went through the namespace's primary server instead",
                    after - before
                ),
                "Send",
            )
            .await;
        }
    }
    Ok(action)
}

async fn cleanup_outgoing(
    obj: Arc<OutgoingEmailServer>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let (ns, name, uid) = identity(obj.as_ref())?;
    if let Some(mut r) = ctx.outgoing.lock().await.remove(&uid) {
        r.runtime.stop();
    }
    ctx.outbox.remove(&ns, &name);
    Ok(Action::await_change())
}

/// Per-object backoff: 5 s doubling to 5 min, reset by a successful reconcile.
pub fn error_policy<K: Resource>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let uid = obj.meta().uid.clone().unwrap_or_default();
    let n = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(uid).or_insert(0);
        *n += 1;
        *n
    };
    let wait = backoff(n);
    tracing::warn!(object = %obj.meta().name.as_deref().unwrap_or("-"), retry_in_s = wait.as_secs(), "reconcile failed: {error}");
    Action::requeue(wait)
}

/// The wait after the `n`th failure in a row.
pub fn backoff(n: u32) -> Duration {
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

    #[test]
    fn counters_alone_wait_for_the_batch_and_conditions_do_not() {
        let a = serde_json::json!({"conditions": [1], "stats": {"fetched": 1}});
        let b = serde_json::json!({"conditions": [1], "stats": {"fetched": 2}});
        let c = serde_json::json!({"conditions": [2], "stats": {"fetched": 2}});
        assert_eq!(must_write(Some(&a), &a, None), Ok(false));
        assert!(must_write(Some(&a), &b, Some(Instant::now())).is_err());
        assert_eq!(must_write(Some(&a), &b, None), Ok(true));
        assert_eq!(must_write(Some(&a), &c, Some(Instant::now())), Ok(true));
    }
}
