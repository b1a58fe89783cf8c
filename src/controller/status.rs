//! Status, written by server-side apply (one field manager) only when its
//! content changed, counters at most every `Timing::stats_every`. Reconcile writes it
//! after applying; a runtime whose health changed asks for a status-only
//! write through `StatusWork`, which reads nothing from the API.

use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use tokio::sync::mpsc;

use super::{Context, Error, MANAGER, events, identity};
use crate::api::{IncomingEmailServer, OutgoingEmailServer, OutgoingStats};
use mailroom_core::sync::unpoisoned;
use mailroom_core::vocab::ResourceId;

/// A resource whose status should be written now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusWork {
    Incoming(ResourceId),
    Outgoing(ResourceId),
}

/// Whether a status must be written now: never when nothing changed; at once
/// when anything but the counters changed; counters at most every `every`.
fn must_write<S: Serialize>(
    current: Option<&S>,
    computed: &S,
    written_at: Option<Instant>,
    every: Duration,
) -> bool {
    let a = serde_json::to_value(current).unwrap_or_default();
    let b = serde_json::to_value(Some(computed)).unwrap_or_default();
    if a == b {
        return false;
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
        return true;
    }
    written_at.is_none_or(|t| t.elapsed() >= every)
}

/// Writes `status` of `obj` when `must_write` says so; tells whether it did.
/// Counters held back go with a later write (`flush_counters`).
async fn sync<K, S: Serialize>(
    ctx: &Context,
    obj: &K,
    current: Option<&S>,
    status: &S,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let (id, _) = identity(obj)?;
    let written_at = unpoisoned(&ctx.written_at).get(&id).copied();
    if !must_write(current, status, written_at, ctx.timing.stats_every) {
        return Ok(false);
    }
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    Api::<K>::namespaced(ctx.client.clone(), &id.namespace)
        .patch_status(
            &id.name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
    unpoisoned(&ctx.written_at).insert(id, Instant::now());
    Ok(true)
}

/// Computes and (when it must) writes an IncomingEmailServer's status.
pub(super) async fn write_incoming(
    ctx: &Context,
    obj: &IncomingEmailServer,
) -> Result<Action, Error> {
    let (id, _) = identity(obj)?;
    if !ctx.writes_for(&obj.metadata) {
        return Ok(Action::await_change());
    }
    // The engine is released before the API call: a slow write holds nobody.
    let computed = ctx
        .engine
        .lock()
        .await
        .incoming_status(&id, jiff::Timestamp::now())
        .map(|mut c| {
            c.status.worker = Some(ctx.claims.me().clone());
            c
        });
    let Some(computed) = computed else {
        return Ok(Action::requeue(ctx.timing.resync()));
    };
    if sync(ctx, obj, obj.status.as_ref(), &computed.status).await? {
        events::for_change(ctx, &obj.object_ref(&()), &computed).await;
    }
    Ok(Action::requeue(ctx.timing.resync()))
}

/// Computes and (when it must) writes an OutgoingEmailServer's status, with
/// a conflict when its namespace has another primary.
pub(super) async fn write_outgoing(
    ctx: &Context,
    obj: &OutgoingEmailServer,
) -> Result<Action, Error> {
    let (id, _) = identity(obj)?;
    if !ctx.writes_for(&obj.metadata) {
        return Ok(Action::await_change());
    }
    let others: Vec<String> = if obj.spec.primary {
        ctx.outgoing_store
            .state()
            .iter()
            .filter(|o| {
                o.namespace().as_deref() == Some(id.namespace.as_str())
                    && o.spec.primary
                    && o.name_any() != id.name
            })
            .map(|o| o.name_any())
            .collect()
    } else {
        Vec::new()
    };
    let computed = ctx
        .engine
        .lock()
        .await
        .outgoing_status(&id, &others, jiff::Timestamp::now());
    let Some(computed) = computed else {
        return Ok(Action::requeue(ctx.timing.resync()));
    };
    if sync(ctx, obj, obj.status.as_ref(), &computed.status).await? {
        let reference = obj.object_ref(&());
        events::for_change(ctx, &reference, &computed).await;
        let failovers = |s: Option<&OutgoingStats>| s.map_or(0, |s| s.failovers);
        let (before, after) = (
            failovers(obj.status.as_ref().and_then(|s| s.stats.as_ref())),
            failovers(computed.status.stats.as_ref()),
        );
        if after > before {
            events::publish(
                ctx,
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
    Ok(Action::requeue(ctx.timing.resync()))
}

/// Every `stats_every`, asks for a status-only write of every running
/// resource, so that changed counters reach status without waiting for a
/// resync (a status whose content is unchanged is not written).
pub async fn flush_counters(ctx: std::sync::Arc<Context>, stop: impl Future<Output = ()>) {
    let flushing = async {
        let mut tick = tokio::time::interval(ctx.timing.stats_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (incoming, outgoing) = {
                let engine = ctx.engine.lock().await;
                (engine.incoming_ids(), engine.outgoing_ids())
            };
            let work = incoming
                .into_iter()
                .map(StatusWork::Incoming)
                .chain(outgoing.into_iter().map(StatusWork::Outgoing));
            for w in work {
                if ctx.status_trigger.send(w).is_err() {
                    return;
                }
            }
        }
    };
    tokio::select! {
        _ = flushing => {}
        _ = stop => {}
    }
}

/// Status-only writes, as runtimes ask for them; the object comes from the
/// watch cache.
pub async fn follow(ctx: std::sync::Arc<Context>, mut work: mpsc::UnboundedReceiver<StatusWork>) {
    while let Some(w) = work.recv().await {
        let result = match &w {
            StatusWork::Incoming(id) => {
                let found = ctx
                    .incoming_store
                    .get(&ObjectRef::new(&id.name).within(&id.namespace));
                match found {
                    Some(obj) => write_incoming(&ctx, &obj).await.map(drop),
                    None => Ok(()),
                }
            }
            StatusWork::Outgoing(id) => {
                let found = ctx
                    .outgoing_store
                    .get(&ObjectRef::new(&id.name).within(&id.namespace));
                match found {
                    Some(obj) => write_outgoing(&ctx, &obj).await.map(drop),
                    None => Ok(()),
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(work = ?w, "status write failed, retried at the next reconcile: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_alone_wait_for_the_batch_and_conditions_do_not() {
        let a = serde_json::json!({"conditions": [1], "stats": {"fetched": 1}});
        let b = serde_json::json!({"conditions": [1], "stats": {"fetched": 2}});
        let c = serde_json::json!({"conditions": [2], "stats": {"fetched": 2}});
        let every = Duration::from_secs(60);
        let now = Some(Instant::now());
        assert!(!must_write(Some(&a), &a, None, every));
        assert!(!must_write(Some(&a), &b, now, every));
        assert!(must_write(Some(&a), &b, None, every));
        assert!(must_write(Some(&a), &c, now, every));
    }
}
