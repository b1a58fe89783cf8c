//! Shards against the API double: two controller binaries, one for the
//! unlabelled resources and one for `mailroom.dev/shard: b`, and a mailbox
//! moved between them by relabelling while mail keeps arriving.

mod support;

use std::time::Duration;

use support::cluster::{NS, chart_rbac, mail, while_mail_arrives, with_mailbox};
use testbed::Stack;

#[test]
fn a_mailbox_relabelled_to_another_shard_moves_without_loss_or_two_workers() {
    let stack = Stack::start(Default::default()).unwrap();
    let (mut cluster, user) = with_mailbox(&stack, chart_rbac());
    cluster.start_controller("main", &[]);
    cluster.start_controller("shard-b", &["--shard", "b"]);
    cluster.wait_ready();
    let worker = |c: &support::cluster::Cluster| {
        c.object("support")
            .map(|o| o["status"]["worker"].clone())
            .unwrap_or_default()
    };
    assert_eq!(
        worker(&cluster),
        serde_json::json!({"lease": "mailroom/mailroom-leader"}),
        "the unlabelled mailbox is the main controller's"
    );
    assert!(!cluster.replicas[1].log().contains("worker started"));

    let (sent, ()) = while_mail_arrives(&stack, &user, "s", Duration::from_millis(100), || {
        std::thread::sleep(Duration::from_secs(1));
        let out = cluster.kubectl(
            &["label", "ies/support", "-n", NS, "mailroom.dev/shard=b"],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_for(
            "shard b to claim the mailbox",
            Duration::from_secs(30),
            |c| {
                worker(c)
                    == serde_json::json!({"shard": "b", "lease": "mailroom/mailroom-leader-b"})
            },
        );
        std::thread::sleep(Duration::from_secs(1));
    });

    // No loss: every message is a ticket; no duplicate: the main
    // controller's worker had stopped before shard b's started.
    cluster.assert_each_message_one_ticket(sent);
    let stopped = cluster.replicas[0]
        .logged_at("the resource left this controller's watch")
        .unwrap_or_else(|| panic!("the main controller kept its worker\n{}", cluster.report()));
    let started = cluster.replicas[1]
        .logged_at("worker started")
        .unwrap_or_else(|| panic!("shard b never started\n{}", cluster.report()));
    assert!(
        stopped < started,
        "shard b started at {started}, before the main controller stopped at {stopped}"
    );
    assert!(
        cluster.replicas[0].log().contains("released the mailbox"),
        "{}",
        cluster.log()
    );
}

const FAST: &[&str] = &[
    "--lease-duration",
    "4",
    "--renew-deadline",
    "3",
    "--retry-period",
    "1",
];

#[test]
fn a_mailbox_moved_away_from_a_shard_cut_off_from_the_api_waits_until_that_shards_lease_lapses() {
    let stack = Stack::start(Default::default()).unwrap();
    let (mut cluster, user) = with_mailbox(&stack, chart_rbac());
    cluster.start_controller("main", FAST);
    cluster.start_controller("shard-b", &[FAST, &["--shard", "b"]].concat());
    cluster.wait_ready();

    // The main controller cannot see the relabel: its worker goes on
    // fetching until its renew deadline fences it.
    cluster.api.faults().partition(&cluster.replicas[0].token);
    let out = cluster.kubectl(
        &["label", "ies/support", "-n", NS, "mailroom.dev/shard=b"],
        None,
    );
    assert!(out.status.success());
    cluster.wait_for(
        "shard b to claim the mailbox",
        Duration::from_secs(30),
        |c| {
            c.object("support")
                .is_some_and(|o| o["status"]["worker"]["shard"] == "b")
        },
    );
    let fenced = cluster.replicas[0]
        .logged_at("aborted every fetch worker")
        .unwrap_or_else(|| panic!("the main controller was never fenced\n{}", cluster.report()));
    let started = cluster.replicas[1].logged_at("worker started").unwrap();
    assert!(
        fenced < started,
        "shard b started at {started}, while the cut-off controller fetched until {fenced}"
    );
    assert!(
        cluster.replicas[1]
            .log()
            .contains("waiting for the shard that runs this mailbox"),
        "{}",
        cluster.log()
    );

    cluster.api.faults().heal(&cluster.replicas[0].token);
    stack.deliver(&user.address, &[mail("after-move")]).unwrap();
    cluster.assert_each_message_one_ticket(1);
}
