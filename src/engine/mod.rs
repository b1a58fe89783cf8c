//! The one reconcile engine. Whoever reads the desired state — the controller
//! from the API server, standalone mode from a folder — hands each resource to
//! the engine, which owns desired → running: the configuration digest, start,
//! restart or keep, stop with counters and conditions carried over, the
//! namespace's own addresses, the rejection window and Ready transitions, and
//! the status computed from all that. The adapters keep only what is theirs:
//! reading, writing and announcing.

mod digest;
mod references;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::{
    IncomingEmailServerSpec, IncomingEmailServerStatus, OutgoingEmailServerSpec,
    OutgoingEmailServerStatus,
};
use crate::runtime::{
    Data, IncomingInputs, IncomingRuntime, Lookup, OnChange, OutgoingRuntime, Runtime,
};
use crate::status::FILTER_REJECTING;
use crate::status::conditions::{READY, primary_conflict};
pub(crate) use digest::digest;
use mailroom_core::incoming::worker::WorkerOptions;
use mailroom_core::oauth2::Tokens;
use mailroom_core::outgoing::Outbox;
use mailroom_core::state::CursorStore;
use mailroom_core::vocab::ResourceId;
pub use references::Names;

/// Rejections this recent keep `FilterRejecting` True.
pub(crate) const REJECTING_WINDOW: Duration = Duration::from_secs(3600);

/// What every runtime of a process is started with.
pub struct Environment {
    /// Shared by every resource, and by the submission endpoint.
    pub outbox: Arc<Outbox>,
    /// OAuth2 grants; rotated refresh tokens go back where the adapter says.
    pub tokens: Tokens,
    /// Where tickets go when a spec names no sink; None: nowhere (`NoSink`).
    pub default_sink: Option<PathBuf>,
    pub options: WorkerOptions,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// One resource as its adapter read it.
#[derive(Clone)]
pub(crate) struct Desired<'a, S> {
    pub id: &'a ResourceId,
    pub spec: &'a S,
    pub generation: Option<i64>,
    /// The re-test annotation's value: a new value restarts the resource.
    pub retest: &'a str,
    /// The namespace's Secrets and ConfigMaps by name (at least those the spec names).
    pub secrets: &'a BTreeMap<String, Data>,
    pub config_maps: &'a BTreeMap<String, Data>,
    /// Conditions the resource already shows, for its first start here.
    pub conditions: &'a [Condition],
    /// Told when the runtime's health changes, for a status-only write.
    pub on_change: Option<OnChange>,
}

/// What `apply` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    Started,
    Restarted,
    /// The configuration is unchanged: the runtime keeps running.
    Kept,
}

/// A status as computed, with what changed since the last one.
#[derive(Debug)]
pub(crate) struct Computed<S> {
    pub status: S,
    /// The Ready condition, when its status or reason changed.
    pub ready_changed: Option<Condition>,
    /// The FilterRejecting message, when it became True or its message changed
    /// while True.
    pub rejecting: Option<String>,
}

/// An IncomingEmailServer's runtime taken out of the engine, to be stopped
/// by the caller without holding the engine: a worker that takes seconds to
/// finish its message must not hold up any other resource.
#[derive(Debug)]
pub struct Retired {
    entry: Box<Entry<IncomingRuntime>>,
}

impl Retired {
    /// Stops the worker after the message in flight; its cursor is saved.
    pub async fn stop(&mut self) {
        self.entry.runtime.stop().await;
    }
}

/// What applying an IncomingEmailServer needs: nothing, or a (re)start after
/// the old runtime, if any, has stopped.
#[derive(Debug)]
pub(crate) enum Plan {
    Keep,
    Start(Option<Retired>),
}

#[derive(Debug)]
struct Entry<R> {
    runtime: R,
    digest: [u8; 32],
    generation: Option<i64>,
    /// The conditions last computed: transition times carry over from them.
    conditions: Vec<Condition>,
}

/// Every running resource of a process.
pub struct Engine {
    env: Environment,
    incoming: HashMap<ResourceId, Entry<IncomingRuntime>>,
    outgoing: HashMap<ResourceId, Entry<OutgoingRuntime>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("incoming", &self.incoming.len())
            .field("outgoing", &self.outgoing.len())
            .finish()
    }
}

/// From addresses of a namespace's OutgoingEmailServers, sorted and without
/// repeats: mail from them is a loop. `outgoing` yields `(namespace, email)`.
pub(crate) fn own_addresses<'a>(
    namespace: &str,
    outgoing: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<String> {
    let mut own: Vec<String> = outgoing
        .into_iter()
        .filter(|(ns, _)| *ns == namespace)
        .map(|(_, email)| email.to_owned())
        .collect();
    own.sort();
    own.dedup();
    own
}

fn ready(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == READY)
}

fn rejecting(conditions: &[Condition]) -> Option<&str> {
    conditions
        .iter()
        .find(|c| c.type_ == FILTER_REJECTING && c.status == "True")
        .map(|c| c.message.as_str())
}

/// Computes `entry`'s status with `extra` conditions, remembers its conditions
/// and tells what changed.
fn compute<R: Runtime>(
    entry: &mut Entry<R>,
    extra: impl FnOnce(Option<i64>, &[Condition]) -> Option<Condition>,
    now: jiff::Timestamp,
) -> Computed<R::Status> {
    let since = now
        .checked_sub(jiff::SignedDuration::try_from(REJECTING_WINDOW).unwrap_or_default())
        .unwrap_or(now);
    let mut status = entry
        .runtime
        .status(entry.generation, &entry.conditions, since, now);
    let more = extra(entry.generation, &entry.conditions);
    R::conditions_mut(&mut status).extend(more);
    let after = R::conditions(&status);
    let key = |c: Option<&Condition>| c.map(|c| (c.status.clone(), c.reason.clone()));
    let ready_changed = (key(ready(&entry.conditions)) != key(ready(after)))
        .then(|| ready(after).cloned())
        .flatten();
    let rejecting = rejecting(after)
        .filter(|message| rejecting(&entry.conditions) != Some(message))
        .map(str::to_owned);
    entry.conditions = after.to_vec();
    Computed {
        status,
        ready_changed,
        rejecting,
    }
}

/// Whether the runtime of `id` already runs from `digest`; if so it is kept,
/// with the generation it now stands for.
fn kept<R>(
    entries: &mut HashMap<ResourceId, Entry<R>>,
    id: &ResourceId,
    digest: [u8; 32],
    generation: Option<i64>,
) -> bool {
    match entries.get_mut(id) {
        Some(e) if e.digest == digest => {
            e.generation = generation;
            true
        }
        _ => false,
    }
}

impl Engine {
    pub fn new(env: Environment) -> Self {
        Self {
            env,
            incoming: HashMap::new(),
            outgoing: HashMap::new(),
        }
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.env.outbox
    }

    /// Starts, restarts or keeps an IncomingEmailServer. `own` are the
    /// namespace's own addresses (`own_addresses`); `cursors` makes its cursor
    /// store when it (re)starts. Stops the old runtime in between; an adapter
    /// that shares the engine calls `plan_incoming`, stops the retired runtime
    /// unlocked, then `start_incoming`.
    pub(crate) async fn apply_incoming(
        &mut self,
        d: Desired<'_, IncomingEmailServerSpec>,
        own: &[String],
        cursors: impl FnOnce() -> Arc<dyn CursorStore>,
    ) -> Applied {
        match self.plan_incoming(&d, own) {
            Plan::Keep => Applied::Kept,
            Plan::Start(mut retired) => {
                if let Some(r) = retired.as_mut() {
                    r.stop().await;
                }
                self.start_incoming(d, own, cursors, retired)
            }
        }
    }

    /// Own addresses are not part of it: they change in the running worker.
    fn incoming_digest(&self, d: &Desired<'_, IncomingEmailServerSpec>) -> [u8; 32] {
        digest(
            d.spec,
            &d.id.namespace,
            d.secrets,
            d.config_maps,
            &self.env.tokens,
            &[d.retest],
        )
    }

    /// Keeps the runtime when it already runs from this configuration, or
    /// takes the old one out for the caller to stop.
    pub(crate) fn plan_incoming(
        &mut self,
        d: &Desired<'_, IncomingEmailServerSpec>,
        own: &[String],
    ) -> Plan {
        let digest = self.incoming_digest(d);
        if kept(&mut self.incoming, d.id, digest, d.generation) {
            if let Some(e) = self.incoming.get(d.id) {
                e.runtime.set_own_addresses(own);
            }
            return Plan::Keep;
        }
        Plan::Start(self.take_incoming(d.id))
    }

    /// Starts the runtime, carrying conditions and counters over from the
    /// stopped one.
    pub(crate) fn start_incoming(
        &mut self,
        d: Desired<'_, IncomingEmailServerSpec>,
        own: &[String],
        cursors: impl FnOnce() -> Arc<dyn CursorStore>,
        retired: Option<Retired>,
    ) -> Applied {
        let id = d.id;
        let (applied, conditions, carried) = match retired {
            Some(old) => (
                Applied::Restarted,
                old.entry.conditions,
                old.entry.runtime.counters(),
            ),
            None => (Applied::Started, d.conditions.to_vec(), Default::default()),
        };
        let runtime = IncomingRuntime::start(IncomingInputs {
            id,
            spec: d.spec,
            secrets: &Lookup::new(Some(d.secrets), "Secret"),
            config_maps: &Lookup::new(Some(d.config_maps), "ConfigMap"),
            tokens: &self.env.tokens,
            own_addresses: own.to_vec(),
            outbox: self.env.outbox.clone(),
            default_sink: self.env.default_sink.as_deref(),
            store: cursors(),
            options: self.env.options.clone(),
            on_change: d.on_change.clone(),
            counters: carried,
            metrics: &self.env.metrics,
        });
        // Taken again now that the runtime's OAuth2 grants are known, so that
        // their own refresh-token write-backs leave it unchanged.
        let digest = self.incoming_digest(&d);
        self.incoming.insert(
            id.clone(),
            Entry {
                runtime,
                digest,
                generation: d.generation,
                conditions,
            },
        );
        applied
    }

    /// Starts, restarts or keeps an OutgoingEmailServer (registered in the outbox).
    pub(crate) fn apply_outgoing(&mut self, d: Desired<'_, OutgoingEmailServerSpec>) -> Applied {
        let id = d.id;
        let digest_now = || {
            digest(
                d.spec,
                &id.namespace,
                d.secrets,
                d.config_maps,
                &self.env.tokens,
                &[d.retest],
            )
        };
        if kept(&mut self.outgoing, id, digest_now(), d.generation) {
            return Applied::Kept;
        }
        let (applied, conditions, stats) = match self.outgoing.remove(id) {
            Some(mut old) => {
                old.runtime.stop();
                (
                    Applied::Restarted,
                    old.conditions,
                    old.runtime.stats.clone(),
                )
            }
            None => (Applied::Started, d.conditions.to_vec(), Default::default()),
        };
        let runtime = OutgoingRuntime::start(
            id,
            d.spec,
            &Lookup::new(Some(d.secrets), "Secret"),
            &Lookup::new(Some(d.config_maps), "ConfigMap"),
            &self.env.tokens,
            &self.env.outbox,
            stats,
            d.on_change,
        );
        let digest = digest_now();
        self.outgoing.insert(
            id.clone(),
            Entry {
                runtime,
                digest,
                generation: d.generation,
                conditions,
            },
        );
        applied
    }

    /// Stops an IncomingEmailServer's worker after the message in flight.
    pub(crate) async fn remove_incoming(&mut self, id: &ResourceId) -> bool {
        match self.take_incoming(id) {
            Some(mut r) => {
                r.stop().await;
                true
            }
            None => false,
        }
    }

    /// Takes an IncomingEmailServer's runtime out, for the caller to stop.
    pub(crate) fn take_incoming(&mut self, id: &ResourceId) -> Option<Retired> {
        self.incoming.remove(id).map(|entry| Retired {
            entry: Box::new(entry),
        })
    }

    /// Takes an OutgoingEmailServer out of the outbox.
    pub(crate) fn remove_outgoing(&mut self, id: &ResourceId) -> bool {
        self.env.outbox.remove(&id.namespace, &id.name);
        match self.outgoing.remove(id) {
            Some(mut e) => {
                e.runtime.stop();
                true
            }
            None => false,
        }
    }

    pub fn incoming(&self, id: &ResourceId) -> Option<&IncomingRuntime> {
        self.incoming.get(id).map(|e| &e.runtime)
    }

    pub fn outgoing(&self, id: &ResourceId) -> Option<&OutgoingRuntime> {
        self.outgoing.get(id).map(|e| &e.runtime)
    }

    /// Whether a worker runs for the IncomingEmailServer.
    pub(crate) fn runs_incoming(&self, id: &ResourceId) -> bool {
        self.incoming.contains_key(id)
    }

    /// Every resource, for a metrics scrape.
    pub(crate) fn samples(&self) -> Vec<crate::metrics::Sample> {
        let incoming = self.incoming.iter().map(|(id, e)| e.runtime.sample(id));
        let outgoing = self.outgoing.iter().map(|(id, e)| e.runtime.sample(id));
        incoming.chain(outgoing).collect()
    }

    pub fn incoming_ids(&self) -> Vec<ResourceId> {
        let mut ids: Vec<_> = self.incoming.keys().cloned().collect();
        ids.sort();
        ids
    }

    pub(crate) fn outgoing_ids(&self) -> Vec<ResourceId> {
        let mut ids: Vec<_> = self.outgoing.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// An IncomingEmailServer's status now.
    pub(crate) fn incoming_status(
        &mut self,
        id: &ResourceId,
        now: jiff::Timestamp,
    ) -> Option<Computed<IncomingEmailServerStatus>> {
        let entry = self.incoming.get_mut(id)?;
        Some(compute(entry, |_, _| None, now))
    }

    /// An OutgoingEmailServer's status now; `other_primaries` are the other
    /// primary servers of its namespace (a conflict when it is primary too).
    pub(crate) fn outgoing_status(
        &mut self,
        id: &ResourceId,
        other_primaries: &[String],
        now: jiff::Timestamp,
    ) -> Option<Computed<OutgoingEmailServerStatus>> {
        let entry = self.outgoing.get_mut(id)?;
        Some(compute(
            entry,
            |generation, previous| primary_conflict(other_primaries, generation, previous, now),
            now,
        ))
    }

    /// Stops every runtime at once; each worker finishes its message in
    /// flight and saves its cursor. Their last counters stay for a final status.
    pub async fn shutdown(&mut self) {
        futures::future::join_all(self.incoming.values_mut().map(|e| e.runtime.stop())).await;
        self.stop_outgoing();
    }

    /// Ends the OutgoingEmailServers' connection tests still running.
    pub(crate) fn stop_outgoing(&mut self) {
        for e in self.outgoing.values_mut() {
            e.runtime.stop();
        }
    }

    /// Takes every IncomingEmailServer's runtime out, for the caller to stop.
    pub(crate) fn take_all_incoming(&mut self) -> Vec<Retired> {
        self.incoming
            .drain()
            .map(|(_, entry)| Retired {
                entry: Box::new(entry),
            })
            .collect()
    }
}
