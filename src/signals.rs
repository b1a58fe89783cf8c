//! Process signals: both long-running commands stop cleanly on SIGINT or
//! SIGTERM (what Kubernetes sends before it kills a pod).

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
