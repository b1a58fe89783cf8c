//! `/healthz`, `/readyz` and `/metrics` (OpenMetrics text format).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::Context;
use crate::metrics::{self, Metrics, Process};

/// What the endpoints report on.
#[derive(Clone, Debug, Default)]
pub(crate) struct HealthState {
    /// Set once the startup checks passed.
    pub ready: Arc<AtomicBool>,
    /// While this replica leads: its controllers (one per scope).
    pub contexts: Arc<RwLock<Vec<Arc<Context>>>>,
    /// Holds the leader Lease (always, without leader election).
    pub leading: Arc<AtomicBool>,
    /// Terms that ended with the Lease lost and the workers aborted.
    pub fenced: Arc<AtomicU64>,
    /// Reconciles run, by every context of this process.
    pub reconciles: Arc<AtomicU64>,
    pub metrics: Arc<Metrics>,
}

pub(crate) fn router(probe: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(probe)
}

async fn readyz(State(p): State<HealthState>) -> (StatusCode, &'static str) {
    if p.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn samples(contexts: &[Arc<Context>]) -> Vec<metrics::Sample> {
    let mut samples = Vec::new();
    for ctx in contexts {
        samples.extend(ctx.engine.lock().await.samples());
    }
    samples
}

/// The metrics of `contexts`' resources, as `/metrics` serves them (without
/// the process's own values).
pub async fn render(contexts: &[Arc<Context>]) -> String {
    match contexts.first() {
        Some(first) => first.metrics.render(samples(contexts).await, Vec::new()),
        None => String::new(),
    }
}

async fn metrics(State(p): State<HealthState>) -> impl IntoResponse {
    let contexts = mailroom_core::sync::read_unpoisoned(&p.contexts).clone();
    let samples = samples(&contexts).await;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let process = vec![
        Process {
            name: "mailroom_leader",
            help: "1 while this replica holds the leader Lease and runs the fetch workers.",
            counter: false,
            value: u64::from(p.leading.load(Ordering::Relaxed)),
        },
        Process {
            name: "mailroom_leader_fenced",
            help: "Times this replica lost the Lease (no renewal within the renew deadline, or another holder) and aborted its workers.",
            counter: true,
            value: load(&p.fenced),
        },
        Process {
            name: "mailroom_reconciles",
            help: "Reconciles run (changes, resyncs and referenced Secrets or ConfigMaps that changed).",
            counter: true,
            value: load(&p.reconciles),
        },
    ];
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        p.metrics.render(samples, process),
    )
}
