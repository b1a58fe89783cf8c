//! Failover and shutdown with many mailboxes: two `mailroom controller`
//! processes (default Lease timings: 15 s, 10 s, 1 s) against the test bed's
//! API double and the local Dovecot. For each count it prints
//!
//! - the baseline: a cold start, from the controller's start to every worker
//!   connected;
//! - failover: the leader killed -9 → every worker of the standby connected,
//!   and of that the wait for the Lease (the standby's "leading" line);
//! - shutdown: SIGTERM to the leader → the process gone (workers stopped, Lease
//!   released).
//!
//!     cargo bench --bench failover        (FAILOVER_MAILBOXES=1,100,1000)

#[path = "../tests/support/mod.rs"]
mod test_support;

use std::time::{Duration, Instant};

use test_support::cluster::{Cluster, chart_rbac, mailboxes_yaml};
use testbed::{Options, Stack};

fn connected(cluster: &Cluster, replica: usize) -> usize {
    cluster.replicas[replica]
        .log()
        .matches("mailroom::runtime::incoming: connected")
        .count()
}

fn wait(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn measure(count: usize) {
    // Room for both replicas' sessions: the killed leader's are closed by the
    // kernel, but Dovecot may count them until it reads the end of each.
    let stack = Stack::start(Options {
        sessions: Some(2 * count + 100),
        ..Options::default()
    })
    .unwrap();
    let users: Vec<_> = (0..count)
        .map(|_| stack.create_user("failover").unwrap())
        .collect();
    let mut cluster = Cluster::start(chart_rbac());
    let out = cluster.kubectl(
        &["apply", "--server-side", "-f", "-"],
        Some(&mailboxes_yaml(&stack, &users, |_| None)),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sink = cluster.tickets();
    let extra = ["--default-sink-dir", sink.to_str().unwrap()];

    let started = Instant::now();
    cluster.start_controller("pod-a", &extra);
    wait("a cold start", Duration::from_secs(600), || {
        connected(&cluster, 0) >= count
    });
    let cold = started.elapsed();
    cluster.start_controller("pod-b", &extra);
    wait("the standby", Duration::from_secs(60), || {
        cluster.replicas[1].log().contains("standing by")
    });

    let killed = Instant::now();
    let killed_at = jiff::Timestamp::now();
    cluster.replicas[0].kill_9();
    wait("the failover", Duration::from_secs(600), || {
        connected(&cluster, 1) >= count
    });
    let failover = killed.elapsed();
    let led = cluster.replicas[1]
        .logged_at("leading: starting the controllers")
        .unwrap();
    let lease_wait = Duration::try_from(led.duration_since(killed_at)).unwrap_or_default();

    let stopping = Instant::now();
    cluster.replicas[1].terminate();
    let code = cluster.replicas[1].wait_exit(Duration::from_secs(120));
    let shutdown = stopping.elapsed();
    assert_eq!(code, Some(0), "{}", cluster.log());
    println!(
        "| {count} | {:.1} s | {:.1} s | {:.1} s | {:.1} s | {:.2} s |",
        cold.as_secs_f64(),
        failover.as_secs_f64(),
        lease_wait.as_secs_f64(),
        (failover.saturating_sub(lease_wait)).as_secs_f64(),
        shutdown.as_secs_f64()
    );
}

fn main() {
    // One socket per mailbox in the controllers, which inherit this limit.
    testbed::raise_fd_limit().unwrap();
    let counts: Vec<usize> = std::env::var("FAILOVER_MAILBOXES")
        .unwrap_or_else(|_| "1,100,1000".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    println!(
        "| mailboxes | cold start (baseline) | failover: kill -9 → all connected | of which waiting for the Lease | after the Lease | shutdown (SIGTERM → exit) |"
    );
    println!("|---|---|---|---|---|---|");
    for count in counts {
        measure(count);
    }
}
