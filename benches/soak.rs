//! Soak: mail delivered all along while `mailroom run` is killed -9 and
//! started again at random moments and Dovecot is restarted twice. At the end
//! every message is exactly one ticket; the resident memory of each mailroom
//! process is printed as it was killed, and sampled through a last stretch
//! without kills, to show whether it grows.
//!
//!     cargo bench --bench soak        (SOAK_MINUTES=30, SOAK_SEED=n)

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::cluster::mail;
use support::resident_kib;
use support::standalone::*;
use testbed::{Options, Stack};

fn main() {
    let minutes: u64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("soak: {minutes} min, seed {seed} (SOAK_SEED={seed} repeats the kill schedule)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let stack = Stack::start(Options::default()).unwrap();
    let mailbox = stack.create_user("soak").unwrap();
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "ca.yaml", &ca_secret(&stack));
    put(
        dir.path(),
        "incoming.yaml",
        &format!(
            "{}---\n{}",
            password_secret("mailbox", &mailbox.password),
            incoming("support", &mailbox, stack.ports().imaps, "mailbox", "")
        ),
    );

    let total = Duration::from_secs(minutes * 60);
    let began = Instant::now();
    let delivering = AtomicBool::new(true);
    let sent = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    let (kills, sizes, restarts) = std::thread::scope(|scope| {
        scope.spawn(|| {
            // One mail every 100 ms, each from a sender of its own; while
            // Dovecot is down a delivery fails and is not counted.
            while delivering.load(Ordering::Relaxed) {
                let n = sent.load(Ordering::Relaxed);
                match stack.deliver(&mailbox.address, &[mail(&format!("soak-{seed}-{n}"))]) {
                    Ok(()) => {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let mut kills = 0;
        let mut sizes = Vec::new();
        let mut restarts = 0;
        // The last fifth runs without kills, sampling memory.
        let calm = total * 4 / 5;
        while began.elapsed() < calm {
            let mut mailroom = Mailroom::start(dir.path());
            let life = Duration::from_millis(rng.u64(3_000..40_000));
            let until = Instant::now() + life;
            while Instant::now() < until && began.elapsed() < calm {
                // Dovecot restarted at a third and two thirds of the time.
                let due = (restarts + 1) * total.as_secs() / 3;
                if restarts < 2 && began.elapsed().as_secs() >= due {
                    stack.stop_dovecot().unwrap();
                    std::thread::sleep(Duration::from_secs(2));
                    stack.start_dovecot().unwrap();
                    restarts += 1;
                    println!(
                        "  {:>5.0} s: Dovecot restarted",
                        began.elapsed().as_secs_f64()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            if let Some(kib) = resident_kib(mailroom.child.id()) {
                sizes.push(kib);
            }
            mailroom.child.kill().unwrap();
            mailroom.child.wait().unwrap();
            kills += 1;
        }
        let mailroom = Mailroom::start(dir.path());
        let mut calm_sizes = Vec::new();
        while began.elapsed() < total {
            std::thread::sleep(Duration::from_secs(5));
            if let Some(kib) = resident_kib(mailroom.child.id()) {
                calm_sizes.push(kib);
            }
        }
        delivering.store(false, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(200));
        let expected = sent.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(180);
        while mailroom.tickets().len() < expected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
        }
        let tickets = mailroom.tickets();
        let ids: BTreeSet<String> = tickets
            .iter()
            .filter_map(|t| t["messageId"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(tickets.len(), expected, "one ticket per delivered message");
        assert_eq!(ids.len(), expected, "no Message-ID twice");
        assert_eq!(mailroom.terminate(), Some(0));
        (kills, (sizes, calm_sizes), restarts)
    });
    let (killed_at, calm) = sizes;
    let mib = |k: &u64| *k as f64 / 1024.0;
    println!(
        "delivered {} messages ({} deliveries refused while Dovecot was down), mailroom killed -9 {kills} times, Dovecot restarted {restarts} times: every message exactly one ticket",
        sent.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    );
    let range = |v: &[u64]| {
        let lo = v.iter().min().map(mib).unwrap_or(0.0);
        let hi = v.iter().max().map(mib).unwrap_or(0.0);
        format!("{lo:.1}–{hi:.1} MiB")
    };
    println!(
        "resident memory when killed: {} over {} processes; through the last {:.0} s without kills: first {:.1} MiB, last {:.1} MiB ({})",
        range(&killed_at),
        killed_at.len(),
        total.as_secs_f64() / 5.0,
        calm.first().map(mib).unwrap_or(0.0),
        calm.last().map(mib).unwrap_or(0.0),
        range(&calm)
    );
}
