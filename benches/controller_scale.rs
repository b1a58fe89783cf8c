//! The controller at scale: IncomingEmailServers against the test bed's API
//! double (the chart's RBAC, every request logged) with a real IMAPS session
//! each on the local Dovecot (tuned to hold them). Prints
//!
//! - cold start: the controllers' start → every resource `Ready=True`;
//! - steady state: API requests per second over a window, watches excluded,
//!   by verb and resource (Lease renewals included: they are the floor);
//! - with SHARDS=2, half the resources are labelled for shard `b`, served by
//!   a second controller with its own Lease; figures per shard.
//!
//!     cargo bench --bench controller_scale
//!
//! Settings: RESOURCES=5000, SHARDS=1|2, WINDOW=300 (seconds), RESYNC=600.

#[path = "../tests/support/mod.rs"]
mod test_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use test_support::cluster::{Cluster, IES, NS, chart_rbac, condition, mailboxes_yaml};
use testbed::{Options, Stack};

fn ready(cluster: &Cluster, names: &[String]) -> usize {
    names
        .iter()
        .filter(|n| {
            cluster
                .api
                .object(IES, NS, n)
                .and_then(|o| condition(&o, "Ready"))
                .is_some_and(|c| c["status"] == "True")
        })
        .count()
}

fn main() {
    let count = test_support::env_count("RESOURCES", 5000);
    let shards = test_support::env_count("SHARDS", 1).clamp(1, 2);
    let window = Duration::from_secs(test_support::env_count("WINDOW", 300) as u64);
    let stack = Stack::start(Options {
        sessions: Some(count + 100),
        ..Options::default()
    })
    .unwrap();
    let users: Vec<_> = (0..count)
        .map(|_| stack.create_user("ctl").unwrap())
        .collect();
    let shard_of = |i: usize| (shards == 2 && i % 2 == 1).then(|| "b".to_owned());
    let mut cluster = Cluster::start(chart_rbac());
    let applied = Instant::now();
    let out = cluster.kubectl(
        &["apply", "--server-side", "-f", "-"],
        Some(&mailboxes_yaml(&stack, &users, shard_of)),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "{count} IncomingEmailServers applied with kubectl in {:.1} s",
        applied.elapsed().as_secs_f64()
    );
    let names: Vec<Vec<String>> = (0..shards)
        .map(|s| {
            (0..count)
                .filter(|i| (shards == 1) || (i % 2 == s))
                .map(|i| format!("box-{i}"))
                .collect()
        })
        .collect();
    let sink = cluster.tickets();
    // RESYNC=N seconds puts resyncs into the window (default: the product's 600).
    let resync = test_support::env_count("RESYNC", 600).to_string();
    let sink_args = [
        "--default-sink-dir",
        sink.to_str().unwrap(),
        "--resync",
        resync.as_str(),
    ];

    let started = Instant::now();
    cluster.start_controller("main", &sink_args);
    if shards == 2 {
        cluster.start_controller("shard-b", &[&sink_args[..], &["--shard", "b"]].concat());
    }
    let mut done = vec![None; shards];
    while done.iter().any(Option::is_none) {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "not Ready after 900 s: {:?} of {count}\n{}",
            names.iter().map(|n| ready(&cluster, n)).collect::<Vec<_>>(),
            cluster.report()
        );
        for (s, n) in names.iter().enumerate() {
            if done[s].is_none() && ready(&cluster, n) == n.len() {
                done[s] = Some(started.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for (s, d) in done.iter().enumerate() {
        println!(
            "cold start, shard {}: {} resources Ready=True after {:.1} s",
            if s == 0 { "main" } else { "b" },
            names[s].len(),
            d.unwrap_or_default().as_secs_f64()
        );
    }

    // Steady state: nothing changes; what do the controllers still ask?
    std::thread::sleep(Duration::from_secs(10));
    let seen = cluster.requests_of_controller().len();
    std::thread::sleep(window);
    let requests = cluster.requests_of_controller();
    let mut by: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in requests[seen..].iter().filter(|r| r.verb != "watch") {
        *by.entry((r.verb.clone(), r.resource.clone())).or_default() += 1;
    }
    let total: usize = by.values().sum();
    println!(
        "steady state over {} s, {} controller(s), resync every {resync} s: {:.2} requests/s (watches excluded)",
        window.as_secs(),
        shards,
        total as f64 / window.as_secs_f64()
    );
    for (replica, s) in cluster.replicas.iter().zip(["main", "b"]) {
        if let Some(kib) = replica.resident_kib() {
            println!(
                "resident memory, shard {s}: {:.0} MiB ({:.1} KiB per resource, with its IMAP session)",
                kib as f64 / 1024.0,
                kib as f64 / names[if s == "main" { 0 } else { 1 }].len() as f64
            );
        }
    }
    for ((verb, resource), n) in by {
        println!(
            "  {verb} {resource}: {n} ({:.2}/s)",
            n as f64 / window.as_secs_f64()
        );
    }
}
