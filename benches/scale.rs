//! Scale benchmark: many mailboxes in IMAP IDLE in one process. Starts a
//! worker per mailbox against the local Dovecot (IMAPS, as Gmail requires),
//! waits until every one idles, and prints the process's resident memory and
//! its CPU use while idle, beside the same process before the workers started.
//!
//!     cargo bench --bench scale            (MAILBOXES=N to change the count,
//!                                           SIGN_INS=N for sign-ins at once)

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mailroom_core::connection::limits::SessionLimits;
use mailroom_core::incoming::worker::{Observer, Scanning, Worker, WorkerEvent, WorkerOptions};
use mailroom_core::sinks::{DirectorySink, Sink};
use mailroom_core::state::FileCursorStore;
use support::Secrets;
use testbed::{Options, Stack};

/// Counts the workers that reached IDLE, as a runtime follows its worker:
/// in place, without a channel per worker.
struct IdleCounter(Arc<AtomicUsize>);

impl Observer for IdleCounter {
    fn observe(&self, event: WorkerEvent) {
        if matches!(event, WorkerEvent::Scanning(Scanning::Idle)) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// CPU time (user + system) of this process, in clock ticks (1/100 s).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::main]
async fn main() {
    let count: usize = std::env::var("MAILBOXES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    // Dovecot tuned to hold them all (a login process per TLS session, as by
    // default, would be 2 processes per mailbox).
    let stack = Stack::start(Options {
        sessions: Some(count + 100),
        ..Options::default()
    })
    .unwrap();
    let users: Vec<_> = (0..count)
        .map(|_| stack.create_user("scale").unwrap())
        .collect();
    let out = tempfile::tempdir().unwrap();
    let sink = Arc::new(Sink::Directory(
        DirectorySink::open(out.path().join("t")).unwrap(),
    ));
    let store = Arc::new(FileCursorStore::new(out.path().join("state")));
    let idle = Arc::new(AtomicUsize::new(0));
    // Sign-ins at once: the product's default unless SIGN_INS says otherwise.
    let limits = match std::env::var("SIGN_INS").ok().and_then(|v| v.parse().ok()) {
        Some(n) => SessionLimits::new(n, None),
        None => SessionLimits::default(),
    };
    let before = rss_kib();

    let began = Instant::now();
    let mut handles = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let spec: mailroom::api::IncomingEmailServerSpec =
            serde_json::from_value(serde_json::json!({
                "email": user.address, "provider": "Other", "server": "127.0.0.1",
                "port": stack.ports().imaps, "securityType": "SSL",
                "auth": {"passwordSecretRef": {"name": "mail", "key": "password"}},
                "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}},
            }))
            .unwrap();
        let secrets = Secrets(vec![
            ("mail".into(), "password".into(), user.password.clone()),
            ("ca".into(), "ca.crt".into(), stack.ca_pem().to_owned()),
        ]);
        let settings = mailroom::resolve::incoming_settings(
            &mailroom_core::vocab::ResourceId::new("bench", format!("m{i}")),
            &spec,
            support::sources(&secrets),
        )
        .unwrap();
        handles.push(Worker::spawn(
            settings,
            sink.clone(),
            store.clone(),
            Arc::new(IdleCounter(idle.clone())),
            WorkerOptions {
                limits: limits.clone(),
                ..WorkerOptions::default()
            },
        ));
    }
    while idle.load(Ordering::Relaxed) < count {
        assert!(
            began.elapsed() < Duration::from_secs(300),
            "{} of {count} idle",
            idle.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{count} mailboxes in IDLE after {:.1} s",
        began.elapsed().as_secs_f64()
    );
    // Let allocations settle, then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib();
    let ticks = cpu_ticks();
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let used = cpu_ticks() - ticks;
    // Each session announces IDLE once: more means sessions were lost.
    let sessions = idle.load(Ordering::Relaxed);
    println!(
        "resident memory: {:.1} MiB with {count} idling workers ({:.1} MiB before them; {:.0} KiB per mailbox)",
        after as f64 / 1024.0,
        before as f64 / 1024.0,
        (after - before) as f64 / count as f64
    );
    println!(
        "CPU while idle: {:.2} % of one core over {} s; sessions started: {sessions} (one per mailbox: none lost)",
        used as f64 / window.as_secs_f64(),
        window.as_secs()
    );
    for h in handles {
        h.stop().await;
    }
}
