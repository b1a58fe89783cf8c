//! `/healthz`, `/readyz` and `/metrics` (Prometheus text format).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use super::Context;
use crate::status::Health;
use mailroom_core::oauth2::TokenInfo;

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

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

async fn metrics(State(p): State<HealthState>) -> String {
    let contexts = mailroom_core::sync::read_unpoisoned(&p.contexts).clone();
    let mut out = render(&contexts).await;
    let _ = writeln!(
        out,
        "# HELP mailroom_leader 1 while this replica holds the leader Lease and runs the fetch workers.\n# TYPE mailroom_leader gauge\nmailroom_leader {}",
        u64::from(p.leading.load(Ordering::Relaxed))
    );
    let _ = writeln!(
        out,
        "# HELP mailroom_leader_fenced_total Times this replica lost the Lease (no renewal within the renew deadline, or another holder) and aborted its workers.\n# TYPE mailroom_leader_fenced_total counter\nmailroom_leader_fenced_total {}",
        p.fenced.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP mailroom_reconciles_total Reconciles run (changes, resyncs and referenced Secrets or ConfigMaps that changed).\n# TYPE mailroom_reconciles_total counter\nmailroom_reconciles_total {}",
        p.reconciles.load(Ordering::Relaxed)
    );
    out
}

/// The metrics text.
pub async fn render(contexts: &[Arc<Context>]) -> String {
    type Family = (&'static str, &'static str, &'static str, Vec<(String, u64)>);
    let mut families: Vec<Family> = vec![
        (
            "mailroom_messages_fetched_total",
            "counter",
            "Messages fetched from the mailbox.",
            Vec::new(),
        ),
        (
            "mailroom_tickets_created_total",
            "counter",
            "Tickets the sink accepted.",
            Vec::new(),
        ),
        (
            "mailroom_messages_rejected_total",
            "counter",
            "Messages rejected by the filter or loop protection.",
            Vec::new(),
        ),
        (
            "mailroom_messages_failed_total",
            "counter",
            "Messages quarantined or skipped.",
            Vec::new(),
        ),
        (
            "mailroom_sent_total",
            "counter",
            "Messages an SMTP server accepted.",
            Vec::new(),
        ),
        (
            "mailroom_recipients_blocked_total",
            "counter",
            "Recipients the filter blocked.",
            Vec::new(),
        ),
        (
            "mailroom_send_failures_total",
            "counter",
            "Send attempts that failed.",
            Vec::new(),
        ),
        (
            "mailroom_failovers_total",
            "counter",
            "Messages the namespace's primary sent instead.",
            Vec::new(),
        ),
        (
            "mailroom_ready",
            "gauge",
            "1 while the server is connected.",
            Vec::new(),
        ),
        (
            "mailroom_oauth2_access_token_expiry_timestamp_seconds",
            "gauge",
            "When the current OAuth2 access token expires (Unix time).",
            Vec::new(),
        ),
        (
            "mailroom_oauth2_last_refresh_timestamp_seconds",
            "gauge",
            "The last successful OAuth2 token refresh (Unix time).",
            Vec::new(),
        ),
    ];
    let oauth2 = |families: &mut Vec<Family>, labels: &str, info: Option<TokenInfo>| {
        let seconds =
            |t: Option<jiff::Timestamp>| t.map(|t| u64::try_from(t.as_second()).unwrap_or(0));
        if let Some(info) = info {
            for (i, t) in [(9, info.expires_at), (10, info.last_refresh)] {
                if let Some(v) = seconds(t) {
                    families[i].3.push((labels.to_owned(), v));
                }
            }
        }
    };
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    for ctx in contexts {
        let engine = ctx.engine.lock().await;
        for id in engine.incoming_ids() {
            let Some(r) = engine.incoming(&id) else {
                continue;
            };
            let labels = format!(
                "kind=\"IncomingEmailServer\",namespace=\"{}\",name=\"{}\"",
                escape(&id.namespace),
                escape(&id.name)
            );
            if let Some(s) = r.stats() {
                for (i, v) in [
                    load(&s.fetched),
                    load(&s.tickets_created),
                    load(&s.rejected),
                    load(&s.failed),
                ]
                .into_iter()
                .enumerate()
                {
                    families[i].3.push((labels.clone(), v));
                }
            }
            let ready = u64::from(r.shared.lock().health == Health::Connected);
            oauth2(&mut families, &labels, r.oauth2());
            families[8].3.push((labels, ready));
        }
        for id in engine.outgoing_ids() {
            let Some(r) = engine.outgoing(&id) else {
                continue;
            };
            let labels = format!(
                "kind=\"OutgoingEmailServer\",namespace=\"{}\",name=\"{}\"",
                escape(&id.namespace),
                escape(&id.name)
            );
            let s = &r.stats;
            for (i, v) in [
                load(&s.sent),
                load(&s.blocked),
                load(&s.failed),
                load(&s.failovers),
            ]
            .into_iter()
            .enumerate()
            {
                families[4 + i].3.push((labels.clone(), v));
            }
            let ready = u64::from(r.shared.lock().health == Health::Connected);
            oauth2(&mut families, &labels, r.oauth2());
            families[8].3.push((labels, ready));
        }
    }
    let mut out = String::new();
    for (name, kind, help, samples) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
    out
}
