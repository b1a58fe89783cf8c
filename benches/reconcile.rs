//! Reconcile benchmark: a spec change in a manifests folder to the new worker
//! connected and its status written, through standalone mode's supervisor (the
//! folder watch adds its 200 ms settle time on top). Repeated a few times
//! against the local Dovecot; prints each figure and the median.
//!
//!     cargo bench --bench reconcile       (ROUNDS=N to change the count)

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom::api::validation::ManifestValidator;
use mailroom::standalone::manifests::load_dir;
use mailroom::standalone::supervisor::{Paths, Supervisor};
use mailroom_core::incoming::worker::WorkerOptions;
use mailroom_core::outgoing::Outbox;
use testbed::{Options, Stack};

fn manifest(stack: &Stack, address: &str, password: &str, category: usize) -> String {
    let pem: String = stack
        .ca_pem()
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: mail, namespace: bench}}\nstringData:\n  password: {password}\n  ca.crt: |\n{pem}---\napiVersion: mailroom.dev/v1alpha1\nkind: IncomingEmailServer\nmetadata: {{name: support, namespace: bench}}\nspec:\n  email: {address}\n  provider: Other\n  server: 127.0.0.1\n  port: {port}\n  securityType: SSL\n  auth: {{passwordSecretRef: {{name: mail, key: password}}}}\n  tls: {{caSecretRef: {{name: mail, key: ca.crt}}}}\n  ticket: {{category: \"round {category}\"}}\n",
        port = stack.ports().imaps
    )
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let stack = Stack::start(Options::default()).unwrap();
    let user = stack.create_user("reconcile").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths {
        status: dir.path().join(".status"),
        tickets: dir.path().join(".tickets"),
        state: dir.path().join(".state"),
    };
    let status_file = paths.status.join("incomingemailserver/bench/support.yaml");
    let validator = ManifestValidator::new().unwrap();
    let mut supervisor = Supervisor::new(
        paths,
        dir.path(),
        Arc::new(Outbox::new()),
        WorkerOptions::default(),
        Default::default(),
    );
    let mut figures = Vec::new();
    for round in 0..=rounds {
        std::fs::write(
            dir.path().join("support.yaml"),
            manifest(&stack, &user.address, &user.password, round),
        )
        .unwrap();
        let began = Instant::now();
        supervisor
            .reconcile(&load_dir(dir.path(), &validator).unwrap())
            .await;
        // Ready again, with the new worker's connection, written to the file.
        loop {
            supervisor.write_status().unwrap();
            let text = std::fs::read_to_string(&status_file).unwrap_or_default();
            if text.contains("reason: Connected") && text.contains("status: 'True'") {
                break;
            }
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "no Ready status:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The first round starts from nothing; the rest are changes.
        if round > 0 {
            figures.push(began.elapsed());
        }
    }
    for (i, f) in figures.iter().enumerate() {
        println!(
            "round {}: spec change -> new worker connected, status written: {:.1} ms",
            i + 1,
            f.as_secs_f64() * 1000.0
        );
    }
    figures.sort();
    println!(
        "median: {:.1} ms (+ 200 ms of folder-watch settling in `mailroom run`)",
        figures[figures.len() / 2].as_secs_f64() * 1000.0
    );
    supervisor.shutdown().await;
}
