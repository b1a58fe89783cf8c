//! Process signals: both long-running commands stop cleanly on SIGINT or
//! SIGTERM (what Kubernetes sends before it kills a pod).

use std::future::Future;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Listens for SIGINT and SIGTERM from this call on, so that one arriving
/// while the process starts up is not lost; the future resolves when one has
/// arrived. Call it inside the runtime, before anything slow.
pub(crate) fn terminated() -> impl Future<Output = ()> + Send + 'static {
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        let which = tokio::select! {
            _ = arrival(term) => "SIGTERM",
            _ = arrival(interrupt) => "SIGINT",
        };
        tracing::info!("{which} received: stopping");
    }
}

async fn arrival(listener: std::io::Result<Signal>) {
    match listener {
        Ok(mut s) => {
            s.recv().await;
        }
        // Without the listener the default action (exit) still applies.
        Err(_) => std::future::pending::<()>().await,
    }
}
