//! Two `mailroom controller` replicas against one API double and one Dovecot:
//! a leader stopped with SIGTERM hands over at once, and a leader cut off from
//! the API server aborts its workers before the standby may take over — with
//! every message one ticket.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::cluster::{chart_rbac, mail, outgoing_yaml, while_mail_arrives, with_mailbox};
use testbed::Stack;

/// Short Lease timings, so that a failover test takes seconds.
const FAST: &[&str] = &[
    "--lease-duration",
    "4",
    "--renew-deadline",
    "3",
    "--retry-period",
    "1",
];

#[test]
fn sigterm_of_the_leader_hands_over_and_the_standby_fetches_within_3_seconds() {
    let stack = Stack::start(Default::default()).unwrap();
    let (mut cluster, user) = with_mailbox(&stack, chart_rbac());
    cluster.start_controller("pod-a", &[]);
    cluster.wait_ready();
    cluster.start_controller("pod-b", &[]);
    cluster.wait_for("pod-b to stand by", Duration::from_secs(10), |c| {
        c.replicas[1].log().contains("standing by")
    });
    stack.deliver(&user.address, &[mail("before")]).unwrap();
    cluster.wait_for("the first ticket", Duration::from_secs(20), |c| {
        c.ticket_count() == 1
    });

    let stopped = Instant::now();
    cluster.replicas[0].terminate();
    assert_eq!(
        cluster.replicas[0].wait_exit(Duration::from_secs(10)),
        Some(0)
    );
    stack.deliver(&user.address, &[mail("after")]).unwrap();
    cluster.wait_for("the standby's ticket", Duration::from_secs(20), |c| {
        c.ticket_count() == 2
    });
    let took = stopped.elapsed();
    eprintln!("SIGTERM to the standby's first ticket: {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "SIGTERM to the standby's first ticket took {took:?}\n{}",
        cluster.log()
    );
    assert!(
        cluster.replicas[1]
            .log()
            .contains("leading: starting the controllers")
    );
}

#[test]
fn a_partitioned_leader_aborts_its_workers_before_the_standby_takes_over() {
    let stack = Stack::start(Default::default()).unwrap();
    let (mut cluster, user) = with_mailbox(&stack, chart_rbac());
    cluster.start_controller("pod-a", FAST);
    cluster.wait_ready();
    cluster.start_controller("pod-b", FAST);
    cluster.wait_for("pod-b to stand by", Duration::from_secs(10), |c| {
        c.replicas[1].log().contains("standing by")
    });

    // Mail keeps arriving through the failover.
    let (sent, ()) = while_mail_arrives(&stack, &user, "m", Duration::from_millis(150), || {
        std::thread::sleep(Duration::from_secs(1));
        cluster.api.faults().partition(&cluster.replicas[0].token);
        cluster.wait_for("pod-b to lead", Duration::from_secs(30), |c| {
            c.replicas[1]
                .log()
                .contains("leading: starting the controllers")
        });
        std::thread::sleep(Duration::from_secs(2));
    });
    cluster.api.faults().heal(&cluster.replicas[0].token);

    let fenced = cluster.replicas[0]
        .logged_at("lost the leader Lease")
        .unwrap_or_else(|| panic!("pod-a never gave up\n{}", cluster.log()));
    let took_over = cluster.replicas[1]
        .logged_at("leading: starting the controllers")
        .unwrap();
    assert!(
        fenced < took_over,
        "pod-a aborted at {fenced}, after pod-b led at {took_over}"
    );
    cluster.assert_each_message_one_ticket(sent);
    // Healed, the old leader stands by.
    cluster.wait_for("pod-a to stand by again", Duration::from_secs(10), |c| {
        c.replicas[0].log().matches("standing by").count() >= 1
            && c.replicas[0].log().contains("aborted every fetch worker")
    });
}

/// A blocking HTTP POST; returns the status code.
fn post(port: u16, path: &str, token: Option<&str>, body: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response[9..12].parse().unwrap()
}

#[test]
fn every_replica_sends_for_tokens_of_our_audience_only() {
    let stack = Stack::start(Default::default()).unwrap();
    let (mut cluster, user) = with_mailbox(&stack, chart_rbac());
    let sender = stack
        .add_user("notifier@mailroom.test", "n0tify-pass")
        .unwrap();
    // An application team's sender in a namespace of its own.
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: apps}}\n---\n{}---\n{}",
        stack.ca_secret_yaml("ca", "apps"),
        outgoing_yaml(&stack, "notifier", "apps", &sender)
    ));
    cluster.start_controller("pod-a", &[]);
    cluster.wait_ready();
    cluster.start_controller("pod-b", &[]);
    let ours = cluster.api.add_user(testbed::kube::User::service_account(
        "apps",
        "app",
        &["mailroom"],
    ));
    let theirs = cluster.api.add_user(testbed::kube::User::service_account(
        "apps",
        "app",
        &["vault"],
    ));
    let path = "/v1/namespaces/apps/messages";
    let message = |subject: &str| {
        serde_json::json!({"to": [user.address], "subject": subject, "text": "Sent through a replica."})
            .to_string()
    };
    for (i, replica) in cluster.replicas.iter().enumerate() {
        let port = replica.submission;
        // The standby's senders come from its own controllers: wait for them.
        let start = Instant::now();
        let status = loop {
            let status = post(
                port,
                path,
                Some(&ours),
                &message(&format!("via-{}", replica.identity)),
            );
            if status == 200 || start.elapsed() > Duration::from_secs(15) {
                break status;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(status, 200, "replica {i} did not send\n{}", cluster.log());
        assert_eq!(
            post(port, path, Some(&theirs), &message("other-audience")),
            401
        );
        assert_eq!(post(port, path, None, &message("no-token")), 401);
    }
    cluster.wait_for("both messages as tickets", Duration::from_secs(30), |c| {
        c.ticket_count() == 2
    });
    let subjects: Vec<String> = support::json_files::<serde_json::Value>(&cluster.tickets())
        .iter()
        .map(|t| t["subject"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(subjects.contains(&"via-pod-a".to_owned()), "{subjects:?}");
    assert!(subjects.contains(&"via-pod-b".to_owned()), "{subjects:?}");
}

#[test]
fn killing_the_leader_again_and_again_never_puts_two_sessions_on_one_mailbox() {
    let seed = std::env::var("MAILROOM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("seed {seed} (MAILROOM_TEST_SEED={seed} repeats this run)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let stack = Stack::start(Default::default()).unwrap();
    let (mut cluster, user) = with_mailbox(&stack, chart_rbac());
    cluster.start_controller("pod-0", FAST);
    cluster.wait_ready();
    cluster.start_controller("pod-1", FAST);

    let most = AtomicUsize::new(0);
    let (sent, ()) = while_mail_arrives(&stack, &user, "k", Duration::from_millis(100), || {
        let watching = AtomicBool::new(true);
        std::thread::scope(|scope| {
            // Dovecot's own count of the mailbox's IMAP sessions, all along.
            scope.spawn(|| {
                while watching.load(Ordering::Relaxed) {
                    most.fetch_max(support::imap_sessions(&stack, &user), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            for round in 0..3 {
                let leader = cluster
                    .replicas
                    .iter()
                    .rposition(|r| {
                        r.is_running() && r.log().contains("leading: starting the controllers")
                    })
                    .unwrap_or_else(|| panic!("no leader in round {round}\n{}", cluster.log()));
                let wait = Duration::from_millis(rng.u64(300..2500));
                eprintln!(
                    "round {round}: killing {} after {wait:?}",
                    cluster.replicas[leader].identity
                );
                std::thread::sleep(wait);
                cluster.replicas[leader].kill_9();
                let next = format!("pod-{}", cluster.replicas.len());
                cluster.start_controller(&next, FAST);
                // Every earlier leader is dead: a live replica that led is the new one.
                cluster.wait_for("a new leader", Duration::from_secs(20), |c| {
                    c.replicas.iter().any(|r| {
                        r.is_running() && r.log().contains("leading: starting the controllers")
                    })
                });
            }
            std::thread::sleep(Duration::from_secs(1));
            watching.store(false, Ordering::Relaxed);
        });
    });
    cluster.assert_each_message_one_ticket(sent);
    assert_eq!(
        most.load(Ordering::Relaxed),
        1,
        "Dovecot saw two IMAP sessions on the mailbox at once (seed {seed})"
    );
}
