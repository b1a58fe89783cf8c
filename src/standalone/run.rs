//! `mailroom run --manifests DIR`: load, reconcile, watch, write status, serve
//! the submission endpoint, and on SIGINT/SIGTERM stop cleanly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher;
use tokio::sync::{mpsc, watch};

use super::manifests::{LoadError, is_manifest, load_dir};
use super::supervisor::{Paths, Published, Supervisor, write_problems};
use crate::api::validation::ManifestValidator;
use crate::metrics::{CONTENT_TYPE, Metrics};
use crate::submission::{self, SubmissionTokens, TokenError};
use axum::http::header;
use mailroom_core::incoming::worker::WorkerOptions;
use mailroom_core::outgoing::Outbox;
use mailroom_core::sync::read_unpoisoned;

/// How often status is recomputed (and written when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Changes arriving within this time are taken together.
const SETTLE: Duration = Duration::from_millis(200);

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub manifests: PathBuf,
    pub status: Option<PathBuf>,
    pub tickets: Option<PathBuf>,
    pub state: Option<PathBuf>,
    /// Where the submission endpoint listens.
    pub listen: SocketAddr,
    /// Where /metrics is served; None: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Tokens for the submission endpoint; None leaves it off.
    pub tokens: Option<SubmissionTokens>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error("{0}")]
    Tokens(#[from] TokenError),
    #[error("cannot watch {path} for changes: {message}")]
    Watch { path: String, message: String },
    #[error(
        "cannot listen on {addr} for the submission endpoint: {message}; choose another --listen address"
    )]
    Listen { addr: SocketAddr, message: String },
    #[error(
        "cannot listen on {addr} for metrics: {message}; choose another --metrics-listen address"
    )]
    MetricsListen { addr: SocketAddr, message: String },
    #[error("cannot write under {path}: {message}")]
    Write { path: String, message: String },
}

fn write_error(path: &Path) -> impl Fn(std::io::Error) -> RunError + '_ {
    move |e| RunError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Reads the folder again and reconciles what changed.
async fn reload(
    dir: &Path,
    validator: &ManifestValidator,
    paths: &Paths,
    supervisor: &mut Supervisor,
) -> Result<(), RunError> {
    let snapshot = load_dir(dir, validator)?;
    for p in &snapshot.problems {
        tracing::error!("invalid manifest, not applied: {p}");
    }
    write_problems(paths, &snapshot).map_err(write_error(&paths.status))?;
    supervisor.reconcile(&snapshot).await;
    supervisor
        .write_status()
        .map_err(write_error(&paths.status))
}

/// `/metrics` of the resources the supervisor last published, and `/healthz`.
fn metrics_router(metrics: Arc<Metrics>, published: Published) -> axum::Router {
    axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let samples = read_unpoisoned(&published).clone();
                let text = metrics.render(samples, Vec::new());
                async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], text) }
            }),
        )
}

pub async fn run(options: RunOptions) -> Result<(), RunError> {
    let stop = crate::signals::terminated();
    let dir = options.manifests.clone();
    let paths = Paths {
        status: options
            .status
            .clone()
            .unwrap_or_else(|| dir.join(".status")),
        tickets: options
            .tickets
            .clone()
            .unwrap_or_else(|| dir.join(".tickets")),
        state: options.state.clone().unwrap_or_else(|| dir.join(".state")),
    };
    for p in [&paths.status, &paths.tickets, &paths.state] {
        std::fs::create_dir_all(p).map_err(write_error(p))?;
    }
    let validator = ManifestValidator::new().map_err(LoadError::from)?;
    let outbox = Arc::new(Outbox::new());

    let (stop_tx, stop_rx) = watch::channel(false);
    let endpoint = match options.tokens {
        Some(tokens) => {
            let listener = tokio::net::TcpListener::bind(options.listen)
                .await
                .map_err(|e| RunError::Listen {
                    addr: options.listen,
                    message: e.to_string(),
                })?;
            let addr = listener.local_addr().unwrap_or(options.listen);
            tracing::info!(%addr, "submission endpoint listening");
            let router = submission::router(outbox.clone(), Arc::new(tokens));
            let mut stop = stop_rx.clone();
            Some(tokio::spawn(submission::serve(
                listener,
                router,
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            )))
        }
        None => {
            tracing::warn!(
                "submission endpoint off: no token configured (--token-file or MAILROOM_SUBMISSION_TOKENS)"
            );
            None
        }
    };

    let (changed_tx, mut changed) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && event.paths.iter().any(|p| is_manifest(p))
        {
            let _ = changed_tx.send(());
        }
    })
    .map_err(|e| RunError::Watch {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| RunError::Watch {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;

    let metrics = Metrics::new();
    let mut supervisor = Supervisor::new(
        paths.clone(),
        &dir,
        outbox,
        WorkerOptions::default(),
        metrics.clone(),
    );
    let metrics_task = match options.metrics_listen {
        Some(addr) => {
            let listener =
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| RunError::MetricsListen {
                        addr,
                        message: e.to_string(),
                    })?;
            tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "metrics listening");
            let router = metrics_router(metrics, supervisor.published());
            let mut stop = stop_rx.clone();
            Some(tokio::spawn(submission::serve(
                listener,
                router,
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            )))
        }
        None => None,
    };
    reload(&dir, &validator, &paths, &mut supervisor).await?;
    tracing::info!(manifests = %dir.display(), "running; watching the folder for changes");

    let mut tick = tokio::time::interval(STATUS_EVERY);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(()) = changed.recv() => {
                tokio::time::sleep(SETTLE).await;
                while changed.try_recv().is_ok() {}
                if let Err(e) = reload(&dir, &validator, &paths, &mut supervisor).await {
                    tracing::error!("reload failed, the previous configuration keeps running: {e}");
                }
            }
            _ = tick.tick() => {
                if let Err(e) = supervisor.write_status() {
                    tracing::error!("cannot write status: {e}");
                }
            }
        }
    }
    tracing::info!("stopping: finishing the messages in flight");
    drop(watcher);
    let _ = stop_tx.send(true);
    supervisor.shutdown().await;
    supervisor
        .write_status()
        .map_err(write_error(&paths.status))?;
    for task in [endpoint, metrics_task].into_iter().flatten() {
        let _ = task.await;
    }
    tracing::info!("stopped");
    Ok(())
}
