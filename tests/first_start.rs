//! What the first start on a mailbox takes (`firstStart`), against the real
//! Dovecot: NewOnly leaves what is there alone and takes only what arrives,
//! All takes read mail too, and with POP3 NewOnly the old mail is neither
//! fetched nor deleted by `afterProcessing: Delete`. A later start goes on
//! from the cursor whatever the setting.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mailroom::api::{AfterProcessing, FirstStart, IncomingProtocol, SecurityType};
use mailroom_core::incoming::worker::WorkerEvent;
use mailroom_core::state::FileCursorStore;
use support::worker::*;
use testbed::Stack;

fn subjects(dir: &Path) -> Vec<String> {
    let mut s: Vec<String> = tickets(dir).into_iter().filter_map(|t| t.subject).collect();
    s.sort();
    s
}

#[tokio::test]
async fn imap_new_only_takes_only_mail_that_arrives_and_all_takes_read_mail_too() {
    let stack = Stack::shared();
    // NewOnly: three old messages stay untouched.
    let user = stack.create_user("first-new-only").unwrap();
    stack
        .deliver(&user.address, &(0..3).map(customer).collect::<Vec<_>>())
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let t = out.path().join("t");
    let s = settings(
        stack,
        &user,
        IncomingProtocol::Imap,
        SecurityType::Ssl,
        |s| s.first_start = FirstStart::NewOnly,
    );
    let store = Arc::new(FileCursorStore::new(out.path().join("state")));
    let mut run = start(s.clone(), dir_sink(&t), store.clone(), fast());
    run.until("IDLE", |e| {
        matches!(e, WorkerEvent::CaughtUp { idle: true, .. })
    })
    .await;
    stack
        .deliver(&user.address, &[customer(10), customer(11)])
        .unwrap();
    wait_tickets(&t, 2).await;
    run.handle.stop().await;
    assert_eq!(subjects(&t), ["request 10", "request 11"]);
    assert_eq!(
        inbox_seen(stack, &user.address),
        [false, false, false, true, true]
    );
    // A later start goes on from the cursor: the old mail is still left alone.
    stack.deliver(&user.address, &[customer(12)]).unwrap();
    let run = start(s, dir_sink(&t), store, fast());
    wait_tickets(&t, 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    run.handle.stop().await;
    assert_eq!(subjects(&t), ["request 10", "request 11", "request 12"]);

    // All: a read message is taken too (Unprocessed, the default, would not).
    let user = stack.create_user("first-all").unwrap();
    stack
        .deliver(&user.address, &(0..3).map(customer).collect::<Vec<_>>())
        .unwrap();
    let read = stack.messages(&user.address, "INBOX").unwrap()[0].uid;
    stack
        .add_flag(&user.address, "INBOX", read, "\\Seen")
        .unwrap();
    let (out, run) = start_imaps(
        stack,
        &user,
        |s| s.first_start = FirstStart::All,
        ticket_dir,
        fast(),
    );
    let t = out.path().join("t");
    wait_tickets(&t, 3).await;
    run.handle.stop().await;
    assert_eq!(subjects(&t), ["request 0", "request 1", "request 2"]);
}

#[tokio::test]
async fn pop3_new_only_with_delete_neither_fetches_nor_deletes_the_old_mail() {
    let stack = Stack::shared();
    let user = stack.create_user("first-pop3").unwrap();
    stack
        .deliver(&user.address, &(0..3).map(customer).collect::<Vec<_>>())
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let t = out.path().join("t");
    let mut s = settings(
        stack,
        &user,
        IncomingProtocol::Pop3,
        SecurityType::Ssl,
        |s| {
            s.first_start = FirstStart::NewOnly;
            s.after_processing = Some(AfterProcessing::Delete);
        },
    );
    s.scan_interval = Duration::from_millis(300);
    let store = Arc::new(FileCursorStore::new(out.path().join("state")));
    let mut run = start(s, dir_sink(&t), store, fast());
    run.until("the first poll", |e| {
        matches!(e, WorkerEvent::CaughtUp { .. })
    })
    .await;
    stack
        .deliver(&user.address, &[customer(10), customer(11)])
        .unwrap();
    wait_tickets(&t, 2).await;
    // Give a wrong DELE of the old mail time to be committed.
    let mut polls = 0;
    run.until("two more polls", |e| {
        polls += usize::from(matches!(e, WorkerEvent::CaughtUp { .. }));
        polls == 2
    })
    .await;
    run.handle.stop().await;
    assert_eq!(subjects(&t), ["request 10", "request 11"]);
    assert_eq!(
        stack.messages(&user.address, "INBOX").unwrap().len(),
        3,
        "the three old messages stay, the two new ones are deleted"
    );
}
