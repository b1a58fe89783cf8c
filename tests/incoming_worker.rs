//! The fetch worker against the real Dovecot: tickets with every field, each
//! afterProcessing mode, IDLE, restarts without duplicates, UIDVALIDITY changes,
//! and bad messages that never block the rest (the webhook sink: `tests/webhook.rs`).

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom::api::{AfterProcessing, IncomingProtocol, SecurityType};
use mailroom_core::incoming::IncomingSettings;
use mailroom_core::incoming::worker::{Scanning, WorkerEvent, WorkerOptions};
use mailroom_core::state::{CursorStore, FileCursorStore};
use support::worker::*;
use testbed::{Stack, User};

const MULTIPART: &str = "From: \"Ann Example\" <ann@company.com>\r\nTo: support@mailroom.test\r\nCc: carol@company.com\r\nSubject: Re: printer [#1234] broken\r\nMessage-ID: <multi@company.com>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: multipart/alternative; boundary=\"b2\"\r\n\r\n--b2\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe printer is on fire.\r\n--b2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>The printer is <b>on fire</b>.</p>\r\n--b2--\r\n--b1\r\nContent-Type: application/pdf; name=\"log.pdf\"\r\nContent-Disposition: attachment; filename=\"log.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nSGVsbG8=\r\n--b1--\r\n";

#[tokio::test]
async fn every_protocol_turns_each_message_into_a_ticket_with_all_fields() {
    let stack = Stack::shared();
    for protocol in [IncomingProtocol::Imap, IncomingProtocol::Pop3] {
        for security in [SecurityType::Ssl, SecurityType::Tls] {
            let user = stack.create_user("work-fields").unwrap();
            let mut messages: Vec<String> = (0..4).map(message).collect();
            messages.push(MULTIPART.into());
            stack.deliver(&user.address, &messages).unwrap();
            let out = tempfile::tempdir().unwrap();
            let s = settings(stack, &user, protocol, security, |_| {});
            let store = Arc::new(FileCursorStore::new(out.path().join("state")));
            let run = start(s, dir_sink(&out.path().join("tickets")), store, fast());
            let all = wait_tickets(&out.path().join("tickets"), 5).await;
            run.handle.stop().await;
            assert_eq!(all.len(), 5, "{protocol:?}/{security:?}");
            let t = all
                .iter()
                .find(|t| t.message_id.as_deref() == Some("multi@company.com"))
                .unwrap();
            assert_eq!(t.mailbox, "helpdesk/support");
            assert_eq!(t.technician_group.as_deref(), Some("Service Desk"));
            assert_eq!(t.category.as_deref(), Some("Hardware"));
            assert_eq!(t.from.as_ref().unwrap().address, "ann@company.com");
            assert_eq!(t.cc[0].address, "carol@company.com");
            assert_eq!(t.ticket_reference.as_deref(), Some("1234"));
            assert_eq!(
                t.text.as_deref().map(str::trim),
                Some("The printer is on fire.")
            );
            assert!(t.html.as_deref().unwrap().contains("<b>on fire</b>"));
            assert_eq!(t.attachments[0].name.as_deref(), Some("log.pdf"));
            assert_eq!(
                t.attachments[0].sha256,
                "185f8db32271fe25f561a6fc938b2e264306ec304eda518007d1764826381969"
            );
        }
    }
}

async fn process(
    stack: &Stack,
    user: &User,
    protocol: IncomingProtocol,
    edit: impl FnOnce(&mut mailroom::api::IncomingEmailServerSpec),
    n: usize,
) {
    let out = tempfile::tempdir().unwrap();
    let s = settings(stack, user, protocol, SecurityType::Ssl, edit);
    let store: Arc<dyn CursorStore> = Arc::new(FileCursorStore::new(out.path().join("state")));
    process_with(&s, &store, out.path(), n).await;
}

#[tokio::test]
async fn each_after_processing_mode_leaves_the_mailbox_as_promised() {
    let stack = Stack::shared();
    let msgs: Vec<String> = (0..3).map(message).collect();

    let seen = stack.create_user("after-seen").unwrap();
    stack.deliver(&seen.address, &msgs).unwrap();
    process(stack, &seen, IncomingProtocol::Imap, |_| {}, 3).await;
    let inbox = stack.messages(&seen.address, "INBOX").unwrap();
    assert_eq!(inbox.len(), 3);
    assert!(inbox.iter().all(|m| m.has_flag("\\Seen")), "{inbox:?}");

    let moved = stack.create_user("after-move").unwrap();
    stack.deliver(&moved.address, &msgs).unwrap();
    process(
        stack,
        &moved,
        IncomingProtocol::Imap,
        |s| {
            s.after_processing = Some(AfterProcessing::Move);
            s.move_to = Some("Processed".into());
        },
        3,
    )
    .await;
    assert!(stack.messages(&moved.address, "INBOX").unwrap().is_empty());
    assert_eq!(
        stack.messages(&moved.address, "Processed").unwrap().len(),
        3
    );

    let deleted = stack.create_user("after-delete").unwrap();
    stack.deliver(&deleted.address, &msgs).unwrap();
    process(
        stack,
        &deleted,
        IncomingProtocol::Imap,
        |s| s.after_processing = Some(AfterProcessing::Delete),
        3,
    )
    .await;
    assert!(
        stack
            .messages(&deleted.address, "INBOX")
            .unwrap()
            .is_empty()
    );

    let pop_delete = stack.create_user("after-pop-delete").unwrap();
    stack.deliver(&pop_delete.address, &msgs).unwrap();
    process(
        stack,
        &pop_delete,
        IncomingProtocol::Pop3,
        |s| s.after_processing = Some(AfterProcessing::Delete),
        3,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stack
        .messages(&pop_delete.address, "INBOX")
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "POP3 Delete left mail behind");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let pop_keep = stack.create_user("after-pop-keep").unwrap();
    stack.deliver(&pop_keep.address, &msgs).unwrap();
    process(stack, &pop_keep, IncomingProtocol::Pop3, |_| {}, 3).await;
    assert_eq!(stack.messages(&pop_keep.address, "INBOX").unwrap().len(), 3);
}

/// A worker in IDLE whose poll interval (10 minutes) cannot explain a ticket.
async fn idle_worker(
    stack: &Stack,
    user: &User,
    options: WorkerOptions,
) -> (Run, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let s = settings(
        stack,
        user,
        IncomingProtocol::Imap,
        SecurityType::Ssl,
        |s| {
            s.scan_interval = Duration::from_secs(600).into();
        },
    );
    let store = Arc::new(FileCursorStore::new(out.path().join("state")));
    let mut run = start(s, dir_sink(&out.path().join("t")), store, options);
    run.until("IDLE", |e| {
        matches!(e, WorkerEvent::Scanning(Scanning::Idle))
    })
    .await;
    (run, out)
}

#[tokio::test]
async fn idle_turns_a_delivery_into_a_ticket_without_waiting_for_a_poll() {
    let stack = Stack::shared();
    let user = stack.create_user("idle").unwrap();
    let (run, out) = idle_worker(stack, &user, fast()).await;
    // Give the worker a moment to enter IDLE after it announced it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = Instant::now();
    stack.deliver(&user.address, &[message(1)]).unwrap();
    wait_tickets(&out.path().join("t"), 1).await;
    let took = sent.elapsed();
    eprintln!("delivery to ticket with IDLE: {} ms", took.as_millis());
    assert!(
        took < Duration::from_secs(5),
        "{took:?}: that was a poll, not IDLE"
    );
    run.handle.stop().await;
}

#[tokio::test]
async fn a_restart_fetches_only_new_mail_and_duplicates_nothing() {
    let stack = Stack::shared();
    for protocol in [IncomingProtocol::Imap, IncomingProtocol::Pop3] {
        let user = stack.create_user("restart").unwrap();
        stack
            .deliver(&user.address, &(0..3).map(message).collect::<Vec<_>>())
            .unwrap();
        let out = tempfile::tempdir().unwrap();
        let store: Arc<dyn CursorStore> = Arc::new(FileCursorStore::new(out.path().join("state")));
        let s = settings(stack, &user, protocol, SecurityType::Ssl, |_| {});
        let mut run = start(
            s.clone(),
            dir_sink(&out.path().join("t")),
            store.clone(),
            fast(),
        );
        wait_tickets(&out.path().join("t"), 3).await;
        run.until("the cursor", |e| {
            matches!(e, WorkerEvent::CursorAdvanced(_))
        })
        .await;
        run.handle.stop().await;

        stack
            .deliver(&user.address, &(3..5).map(message).collect::<Vec<_>>())
            .unwrap();
        let run = start(s, dir_sink(&out.path().join("t")), store, fast());
        wait_tickets(&out.path().join("t"), 5).await;
        let stats = run.stats.clone();
        run.handle.stop().await;
        assert_eq!(tickets(&out.path().join("t")).len(), 5, "{protocol:?}");
        assert_eq!(
            stats.fetched.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "{protocol:?}: the second run fetched old mail again"
        );
    }
}

#[tokio::test]
async fn a_uidvalidity_change_neither_loses_nor_floods() {
    let stack = Stack::shared();
    let user = stack.create_user("uidvalidity").unwrap();
    stack
        .deliver(&user.address, &(0..3).map(message).collect::<Vec<_>>())
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let store: Arc<dyn CursorStore> = Arc::new(FileCursorStore::new(out.path().join("state")));
    let s = settings(
        stack,
        &user,
        IncomingProtocol::Imap,
        SecurityType::Ssl,
        |_| {},
    );
    process_with(&s, &store, out.path(), 3).await;

    // The server renumbers the mailbox: the stored UIDVALIDITY no longer matches.
    let mut cursor = store.load("helpdesk/support").await.unwrap().unwrap();
    cursor.imap.as_mut().unwrap().uid_validity ^= 0x5a5a;
    store.save("helpdesk/support", &cursor).await.unwrap();
    stack.deliver(&user.address, &[message(9)]).unwrap();

    let run = start(s, dir_sink(&out.path().join("t")), store.clone(), fast());
    wait_tickets(&out.path().join("t"), 4).await;
    let stats = run.stats.clone();
    run.handle.stop().await;
    // Only the unseen message was taken, not the three already processed.
    assert_eq!(stats.fetched.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(tickets(&out.path().join("t")).len(), 4);
}

/// A worker on `user`'s IMAPS mailbox with maxMessageSize 4Ki, its tickets
/// in `<folder>/t`.
fn start_with_4k_limit(
    stack: &Stack,
    user: &User,
    options: WorkerOptions,
) -> (tempfile::TempDir, Run) {
    start_imaps(
        stack,
        user,
        |s| s.max_message_size = "4Ki".into(),
        ticket_dir,
        options,
    )
}

async fn process_with(s: &IncomingSettings, store: &Arc<dyn CursorStore>, out: &Path, n: usize) {
    let mut run = start(s.clone(), dir_sink(&out.join("t")), store.clone(), fast());
    wait_tickets(&out.join("t"), n).await;
    run.until("the cursor", |e| {
        matches!(e, WorkerEvent::CursorAdvanced(_))
    })
    .await;
    run.handle.stop().await;
}

#[tokio::test]
async fn oversized_and_unparseable_mail_is_quarantined_while_the_rest_flows() {
    let stack = Stack::shared();
    let user = stack.create_user("quarantine").unwrap();
    let big = format!("{}{}\r\n", message(100), "x".repeat(8 * 1024));
    stack
        .deliver(&user.address, &[message(1), big.clone(), message(2)])
        .unwrap();
    stack
        .save(
            &user.address,
            "INBOX",
            b"no header section at all\r\n\r\njust text\r\n",
        )
        .unwrap();
    let (out, mut run) = start_with_4k_limit(stack, &user, fast());
    let mut quarantined = Vec::new();
    run.until("two quarantined", |e| {
        if let WorkerEvent::Quarantined { reason, .. } = e {
            quarantined.push(reason.clone());
        }
        quarantined.len() == 2
    })
    .await;
    wait_tickets(&out.path().join("t"), 2).await;
    run.handle.stop().await;
    // The oversized message is never downloaded; its size comes from the
    // server and is named in the record.
    let oversized = quarantined
        .iter()
        .find(|r| r.contains("over maxMessageSize (4096 bytes)"))
        .unwrap_or_else(|| panic!("{quarantined:?}"));
    let size: u64 = oversized
        .split("message of ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{oversized}"));
    assert!(size > 8 * 1024, "{oversized}");
    assert!(
        quarantined
            .iter()
            .any(|r| r.contains("could not be parsed")),
        "{quarantined:?}"
    );
    assert_eq!(
        stack.messages(&user.address, "Quarantine").unwrap().len(),
        2
    );
    let inbox = stack.messages(&user.address, "INBOX").unwrap();
    assert_eq!(inbox.len(), 2);
    assert!(inbox.iter().all(|m| m.has_flag("\\Seen")));

    // POP3 has no folders: the oversized message is skipped, kept, and not retried.
    let pop_user = stack.create_user("quarantine-pop").unwrap();
    stack
        .deliver(&pop_user.address, &[message(1), big])
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let store = Arc::new(FileCursorStore::new(out.path().join("state")));
    let s = settings(
        stack,
        &pop_user,
        IncomingProtocol::Pop3,
        SecurityType::Ssl,
        |s| {
            s.max_message_size = "4Ki".into();
            s.after_processing = Some(AfterProcessing::Delete);
        },
    );
    let mut run = start(s, dir_sink(&out.path().join("t")), store, fast());
    run.until("the skip", |e| matches!(e, WorkerEvent::Quarantined { .. }))
        .await;
    run.until("the cursor", |e| {
        matches!(e, WorkerEvent::CursorAdvanced(_))
    })
    .await;
    run.handle.stop().await;
    assert_eq!(tickets(&out.path().join("t")).len(), 1);
    assert_eq!(
        stack.messages(&pop_user.address, "INBOX").unwrap().len(),
        1,
        "the oversized message stays"
    );
}

#[tokio::test]
async fn polling_picks_up_new_mail_when_real_time_is_off() {
    let stack = Stack::shared();
    let user = stack.create_user("polling").unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut s = settings(
        stack,
        &user,
        IncomingProtocol::Imap,
        SecurityType::Ssl,
        |s| s.real_time_scanning = false,
    );
    // The CRD's floor is 10s; the core takes any interval, which keeps this test short.
    s.scan_interval = Duration::from_millis(300);
    let store = Arc::new(FileCursorStore::new(out.path().join("state")));
    let mut run = start(s, dir_sink(&out.path().join("t")), store, fast());
    let e = run
        .until("polling", |e| matches!(e, WorkerEvent::Scanning(_)))
        .await;
    assert!(
        matches!(&e, WorkerEvent::Scanning(Scanning::Polling { reason, .. }) if reason.contains("realTimeScanning is off")),
        "{e:?}"
    );
    stack.deliver(&user.address, &[message(1)]).unwrap();
    wait_tickets(&out.path().join("t"), 1).await;
    run.handle.stop().await;
}

#[tokio::test]
async fn idle_is_reissued_and_keeps_delivering() {
    let stack = Stack::shared();
    let user = stack.create_user("idle-refresh").unwrap();
    let options = WorkerOptions {
        idle_refresh: Duration::from_millis(150),
        ..fast()
    };
    let (run, out) = idle_worker(stack, &user, options).await;
    // Several refresh periods pass without mail; the session must survive them.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stack.deliver(&user.address, &[message(1)]).unwrap();
    wait_tickets(&out.path().join("t"), 1).await;
    run.handle.stop().await;
}

#[tokio::test]
async fn first_start_takes_unseen_mail_and_never_read_mail_later() {
    let stack = Stack::shared();
    let user = stack.create_user("first-start").unwrap();
    stack
        .deliver(&user.address, &(0..3).map(message).collect::<Vec<_>>())
        .unwrap();
    // The newest message was read in a mail client before mailroom started.
    stack.add_flag(&user.address, "INBOX", 3, "\\Seen").unwrap();
    let out = tempfile::tempdir().unwrap();
    let store: Arc<dyn CursorStore> = Arc::new(FileCursorStore::new(out.path().join("state")));
    let s = settings(
        stack,
        &user,
        IncomingProtocol::Imap,
        SecurityType::Ssl,
        |_| {},
    );
    process_with(&s, &store, out.path(), 2).await;
    assert_eq!(
        store
            .load("helpdesk/support")
            .await
            .unwrap()
            .unwrap()
            .imap
            .unwrap()
            .last_uid,
        3
    );

    stack.deliver(&user.address, &[message(4)]).unwrap();
    let run = start(s, dir_sink(&out.path().join("t")), store, fast());
    wait_tickets(&out.path().join("t"), 3).await;
    let stats = run.stats.clone();
    run.handle.stop().await;
    assert_eq!(
        stats.fetched.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the new message"
    );
    let subjects: Vec<String> = tickets(&out.path().join("t"))
        .into_iter()
        .filter_map(|t| t.subject)
        .collect();
    assert!(
        !subjects.contains(&"request 2".to_owned()),
        "read mail became a ticket: {subjects:?}"
    );
}

#[tokio::test]
async fn many_batches_are_completed_in_fetch_order() {
    let stack = Stack::shared();
    let user = stack.create_user("batches").unwrap();
    let mut messages: Vec<String> = (0..20).map(message).collect();
    messages[9] = format!("{}{}\r\n", message(9), "x".repeat(8 * 1024));
    stack.deliver(&user.address, &messages).unwrap();
    // Batches of three: several are judged and written while the next is fetched.
    let options = WorkerOptions { batch: 3, ..fast() };
    let (out, mut run) = start_with_4k_limit(stack, &user, options);
    // UID n holds message n - 1 (one LMTP session delivers in order).
    let index = |id: &str| -> usize {
        id.strip_prefix('m')
            .and_then(|r| r.split('-').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{id}"))
    };
    let mut created = std::collections::HashSet::new();
    let mut cursors = Vec::new();
    run.until("the cursor past the last message", |e| match e {
        WorkerEvent::TicketCreated {
            message_id: Some(id),
            ..
        } => {
            created.insert(index(id));
            false
        }
        WorkerEvent::CursorAdvanced(c) => {
            let last = c.imap.as_ref().unwrap().last_uid;
            for uid in 1..=last {
                let i = uid as usize - 1;
                assert!(
                    i == 9 || created.contains(&i),
                    "cursor at UID {last} before the ticket of UID {uid}"
                );
            }
            cursors.push(last);
            last == 20
        }
        _ => false,
    })
    .await;
    run.handle.stop().await;
    assert!(
        cursors.len() >= 7 && cursors.windows(2).all(|w| w[0] < w[1]),
        "one step per batch, forward only: {cursors:?}"
    );
    assert_eq!(tickets(&out.path().join("t")).len(), 19);
    let inbox = stack.messages(&user.address, "INBOX").unwrap();
    assert_eq!(inbox.len(), 19);
    assert!(inbox.iter().all(|m| m.has_flag("\\Seen")));
    assert_eq!(
        stack.messages(&user.address, "Quarantine").unwrap().len(),
        1
    );
}

#[tokio::test]
async fn pop3_deletes_processed_mail_whose_dele_an_earlier_session_never_committed() {
    let stack = Stack::shared();
    let user = stack.create_user("pop-dele-lost").unwrap();
    let big = format!(
        "From: Ann <ann@customer.example>\r\nTo: x@mailroom.test\r\nSubject: huge\r\nMessage-ID: <huge-dele@customer.example>\r\n\r\n{}\r\n",
        "x".repeat(8 * 1024)
    );
    let mut first: Vec<String> = (0..3).map(message).collect();
    first.push(big);
    stack.deliver(&user.address, &first).unwrap();
    let out = tempfile::tempdir().unwrap();
    let store: Arc<dyn CursorStore> = Arc::new(FileCursorStore::new(out.path().join("state")));
    let edit = |delete: bool| {
        move |s: &mut mailroom::api::IncomingEmailServerSpec| {
            s.max_message_size = "4Ki".into();
            if delete {
                s.after_processing = Some(AfterProcessing::Delete);
            }
        }
    };
    // The state a crash between the cursor's save and QUIT leaves: every
    // message processed and in the cursor, and still on the server. (Keep
    // makes it without a crash.)
    let s = settings(
        stack,
        &user,
        IncomingProtocol::Pop3,
        SecurityType::Ssl,
        edit(false),
    );
    let mut run = start(s, dir_sink(&out.path().join("t")), store.clone(), fast());
    wait_tickets(&out.path().join("t"), 3).await;
    run.until("the cursor", |e| {
        matches!(e, WorkerEvent::CursorAdvanced(_))
    })
    .await;
    run.handle.stop().await;
    assert_eq!(stack.messages(&user.address, "INBOX").unwrap().len(), 4);

    stack
        .deliver(&user.address, &(3..5).map(message).collect::<Vec<_>>())
        .unwrap();
    let s = settings(
        stack,
        &user,
        IncomingProtocol::Pop3,
        SecurityType::Ssl,
        edit(true),
    );
    let run = start(s, dir_sink(&out.path().join("t")), store, fast());
    wait_tickets(&out.path().join("t"), 5).await;
    // The three processed ones are deleted unread, the two new ones after
    // their tickets; the oversized one was set aside and stays.
    let deadline = Instant::now() + Duration::from_secs(10);
    let left = loop {
        let left = stack.messages(&user.address, "INBOX").unwrap();
        if left.len() == 1 || Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stats = run.stats.clone();
    run.handle.stop().await;
    assert_eq!(left.len(), 1, "processed mail left on the server");
    assert_eq!(
        tickets(&out.path().join("t")).len(),
        5,
        "no duplicate ticket"
    );
    assert_eq!(
        stats.fetched.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "processed mail was fetched again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_arriving_during_a_pass_is_taken_right_after_it_not_at_the_next_idle_refresh() {
    let stack = Stack::shared();
    let user = stack.create_user("mid-pass").unwrap();
    const N: usize = 2000;
    let mails: Vec<String> = (0..N)
        .map(|i| support::cluster::mail(&format!("mid-pass-{i}-{}", std::process::id())))
        .collect();
    stack.seed(&user.address, &mails).unwrap();
    let out = tempfile::tempdir().unwrap();
    let t = out.path().join("t");
    let s = settings(
        stack,
        &user,
        IncomingProtocol::Imap,
        SecurityType::Ssl,
        |_| {},
    );
    let options = WorkerOptions {
        batch: 20,
        idle_refresh: Duration::from_secs(600),
        ..fast()
    };
    let store: Arc<dyn CursorStore> = Arc::new(FileCursorStore::new(out.path().join("state")));
    let mut run = start(s, dir_sink(&t), store, options);
    // The pass searched before this delivery: the server announces it while
    // the pass is still fetching and marking, before IDLE begins.
    wait_tickets(&t, 50).await;
    let late = support::cluster::mail(&format!("late-{}", std::process::id()));
    stack.deliver(&user.address, &[late]).unwrap();
    assert!(tickets(&t).len() < N, "delivered during the pass");
    wait_tickets(&t, N + 1).await;
    // Then it waits in IDLE, not searching again and again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while run.events.try_recv().is_ok() {}
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut passes = 0;
    while let Ok(e) = run.events.try_recv() {
        passes += usize::from(matches!(e, WorkerEvent::CaughtUp { .. }));
    }
    assert_eq!(passes, 0, "no pass while nothing arrives");
    run.handle.stop().await;
}
