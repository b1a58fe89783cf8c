//! Faults on the mail side, against real servers: each test ends with
//! nothing lost (every message one ticket), nothing duplicated (the worker
//! reported each ticket created once), the worker telling the truth while the
//! fault lasts (its events are what status is made of), and recovery without
//! a restart of mailroom.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mailroom::api::{IncomingProtocol, SecurityType};
use mailroom_core::connection::Reason;
use mailroom_core::incoming::worker::{WorkerEvent, WorkerOptions};
use mailroom_core::state::{CursorStore, FileCursorStore};
use support::worker::*;
use testbed::{Options, Stack};

fn store(dir: &Path) -> Arc<dyn CursorStore> {
    Arc::new(FileCursorStore::new(dir.join("state")))
}

/// Every message one ticket: as many tickets as messages, each Message-ID
/// once, and never more reported created than there are (a ticket the sink
/// took just before the session broke is found again as a duplicate, and
/// reported once at most).
fn assert_each_message_one_ticket(dir: &Path, run: &Run, n: usize) {
    let tickets = tickets(dir);
    let mut ids: Vec<_> = tickets.iter().map(|t| t.message_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(tickets.len(), n, "one ticket per message");
    assert_eq!(ids.len(), n, "no Message-ID twice");
    assert!(
        run.stats.tickets_created.load(Ordering::Relaxed) <= n as u64,
        "no ticket created twice"
    );
}

fn failed_with(event: &WorkerEvent, reasons: &[Reason]) -> bool {
    matches!(event, WorkerEvent::ConnectionFailed { report, .. } if reasons.contains(&report.reason))
}

/// Many small batches, so that a fault lands in the middle of the intake.
fn slow_intake() -> WorkerOptions {
    WorkerOptions {
        batch: 20,
        ..fast()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dovecot_restarted_mid_fetch_and_during_idle_loses_and_duplicates_nothing() {
    // A stack of its own: this test stops its Dovecot.
    let stack = Stack::start(Options::default()).unwrap();
    let user = stack.create_user("restart").unwrap();
    const N: usize = 10_000;
    stack
        .seed(&user.address, &(0..N).map(customer).collect::<Vec<_>>())
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let t = out.path().join("t");
    let s = settings(
        &stack,
        &user,
        IncomingProtocol::Imap,
        SecurityType::Ssl,
        |_| {},
    );
    let options = WorkerOptions { batch: 5, ..fast() };
    let mut run = start(s, dir_sink(&t), store(out.path()), options);

    wait_tickets(&t, 20).await;
    stack.stop_dovecot().unwrap();
    run.until("the outage reported", |e| {
        failed_with(e, &[Reason::ConnectionRefused, Reason::ProtocolError])
    })
    .await;
    let during = tickets(&t).len();
    assert!(during < N, "the restart came in the middle of the intake");
    stack.start_dovecot().unwrap();
    wait_tickets(&t, N).await;
    run.until("IDLE after the intake", |e| {
        matches!(e, WorkerEvent::CaughtUp { idle: true, .. })
    })
    .await;

    stack.stop_dovecot().unwrap();
    run.until("the outage during IDLE reported", |e| {
        failed_with(e, &[Reason::ConnectionRefused, Reason::ProtocolError])
    })
    .await;
    stack.start_dovecot().unwrap();
    stack
        .deliver(&user.address, &[customer(N), customer(N + 1)])
        .unwrap();
    wait_tickets(&t, N + 2).await;
    assert_each_message_one_ticket(&t, &run, N + 2);
    run.handle.stop().await;
    let unseen: Vec<u32> = stack
        .messages(&user.address, "INBOX")
        .unwrap()
        .iter()
        .filter(|m| !m.has_flag("\\Seen"))
        .map(|m| m.uid)
        .collect();
    assert!(
        unseen.is_empty(),
        "every message marked processed; unseen UIDs {unseen:?}, the restart came after {during} tickets\n{}",
        stack.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_times_out_and_the_worker_recovers_once_it_answers() {
    let stack = Stack::start(Options::default()).unwrap();
    let user = stack.create_user("hung").unwrap();
    const N: usize = 3000;
    stack
        .seed(&user.address, &(0..N).map(customer).collect::<Vec<_>>())
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let t = out.path().join("t");
    let mut s = settings(
        &stack,
        &user,
        IncomingProtocol::Imap,
        SecurityType::Ssl,
        |_| {},
    );
    s.server.timeouts.io = Duration::from_secs(2);
    s.server.timeouts.connect = Duration::from_secs(2);
    let mut run = start(s, dir_sink(&t), store(out.path()), slow_intake());

    wait_tickets(&t, 100).await;
    stack.pause_dovecot().unwrap();
    run.until("a read timeout", |e| failed_with(e, &[Reason::Timeout]))
        .await;
    // Signing in again meets the same silence.
    run.until("a timeout on reconnecting", |e| {
        failed_with(e, &[Reason::Timeout])
    })
    .await;
    assert!(
        tickets(&t).len() < N,
        "the hang came in the middle of the intake"
    );
    assert!(
        run.stats.fetch_lag(jiff::Timestamp::now()) >= Duration::from_secs(2),
        "the fetch lag shows the hang"
    );
    stack.resume_dovecot().unwrap();
    wait_tickets(&t, N).await;
    assert_each_message_one_ticket(&t, &run, N);
    run.handle.stop().await;
}

/// A tmpfs of `size` mounted at a fresh folder, unmounted when dropped
/// (before the folder itself goes).
struct Tmpfs {
    at: PathBuf,
    _folder: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("disk");
        std::fs::create_dir(&at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { at, _folder: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}

/// Fills the file system of `dir` to the last block.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ticket_disk_holds_the_mail_back_until_space_returns() {
    let stack = Stack::shared();
    let user = stack.create_user("full-disk").unwrap();
    // As many from one sender as loop protection's rate limit allows: the
    // retries judge the same messages again, which must not count them twice.
    const N: usize = 20;
    stack
        .deliver(&user.address, &(0..N).map(message).collect::<Vec<_>>())
        .unwrap();
    let disk = Tmpfs::mount("256k");
    let t = disk.at.join("tickets");
    let sink = dir_sink(&t);
    let filler = fill(&disk.at);
    let out = tempfile::tempdir().unwrap();
    let s = settings(
        stack,
        &user,
        IncomingProtocol::Imap,
        SecurityType::Ssl,
        |_| {},
    );
    let mut run = start(s, sink, store(out.path()), fast());

    let refused = run
        .until("the sink refusing", |e| {
            matches!(e, WorkerEvent::SinkUnavailable { .. })
        })
        .await;
    let WorkerEvent::SinkUnavailable { message, .. } = refused else {
        unreachable!()
    };
    assert!(message.contains("No space left"), "{message}");
    run.until("a retry refused again", |e| {
        matches!(e, WorkerEvent::SinkUnavailable { .. })
    })
    .await;
    assert!(tickets(&t).is_empty(), "no partial ticket");
    let unseen = stack
        .messages(&user.address, "INBOX")
        .unwrap()
        .iter()
        .filter(|m| !m.has_flag("\\Seen"))
        .count();
    assert_eq!(unseen, N, "nothing marked processed meanwhile");

    std::fs::remove_file(filler).unwrap();
    wait_tickets(&t, N).await;
    assert_each_message_one_ticket(&t, &run, N);
    assert!(run.stats.sink_failures.load(Ordering::Relaxed) >= 2);
    run.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_folder_deleted_or_renamed_is_reported_and_picked_up_again() {
    // A stack of its own: this test restarts its Dovecot.
    let stack = Stack::start(Options::default()).unwrap();
    let user = stack.create_user("folder-gone").unwrap();
    stack.create_folder(&user.address, "Support").unwrap();
    stack
        .save(&user.address, "Support", customer(0).as_bytes())
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let t = out.path().join("t");
    let s = settings(
        &stack,
        &user,
        IncomingProtocol::Imap,
        SecurityType::Ssl,
        |spec| spec.mailbox = "Support".into(),
    );
    let mut run = start(s, dir_sink(&t), store(out.path()), fast());
    wait_tickets(&t, 1).await;
    let idle = |e: &WorkerEvent| matches!(e, WorkerEvent::CaughtUp { idle: true, .. });
    run.until("IDLE", idle).await;

    // Deleted: the server ends the selected session; the folder is missing
    // until it is created again.
    stack.delete_folder(&user.address, "Support").unwrap();
    run.until("the folder reported missing", |e| {
        failed_with(e, &[Reason::MailboxNotFound])
    })
    .await;
    stack.create_folder(&user.address, "Support").unwrap();
    stack
        .save(&user.address, "Support", customer(1).as_bytes())
        .unwrap();
    wait_tickets(&t, 2).await;
    run.until("IDLE again", idle).await;

    // Renamed: Dovecot keeps a selected session on the folder under its new
    // name; the next sign-in finds the configured name missing.
    stack
        .rename_folder(&user.address, "Support", "Archive")
        .unwrap();
    stack.stop_dovecot().unwrap();
    stack.start_dovecot().unwrap();
    run.until("the renamed folder reported missing", |e| {
        failed_with(e, &[Reason::MailboxNotFound])
    })
    .await;
    stack
        .rename_folder(&user.address, "Archive", "Support")
        .unwrap();
    stack
        .save(&user.address, "Support", customer(2).as_bytes())
        .unwrap();
    wait_tickets(&t, 3).await;
    assert_each_message_one_ticket(&t, &run, 3);
    run.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uidvalidity_change_under_a_running_worker_neither_loses_nor_floods() {
    let stack = Stack::shared();
    let user = stack.create_user("renumbered").unwrap();
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
        |_| {},
    );
    let mut run = start(s, dir_sink(&t), store(out.path()), fast());
    wait_tickets(&t, 3).await;
    run.until("IDLE", |e| {
        matches!(e, WorkerEvent::CaughtUp { idle: true, .. })
    })
    .await;

    stack
        .renumber_folder(&user.address, "INBOX", 0x5a5a_0001)
        .unwrap();
    stack.deliver(&user.address, &[customer(3)]).unwrap();
    wait_tickets(&t, 4).await;
    // Only the new message was taken again, not the three already processed.
    assert_eq!(run.stats.fetched.load(Ordering::Relaxed), 4);
    assert_each_message_one_ticket(&t, &run, 4);
    run.handle.stop().await;
}

/// An IMAPS server that greets, lists its capabilities, and answers the
/// sign-in with the untagged `answer` before its OK; counts the sessions.
async fn serve_imaps(
    certs: &testbed::TestCerts,
    answer: Vec<u8>,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let acceptor = testbed::tls_acceptor(certs, &[]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sessions = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = sessions.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            let (acceptor, answer) = (acceptor.clone(), answer.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut conn = BufReader::new(tls);
                let _ = conn.write_all(b"* OK ready\r\n").await;
                let mut line = String::new();
                while conn.read_line(&mut line).await.is_ok_and(|n| n > 0) {
                    let tag = line.split(' ').next().unwrap_or("*").to_owned();
                    let reply = if line.contains("CAPABILITY") {
                        format!("* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n{tag} OK done\r\n")
                            .into_bytes()
                    } else {
                        [&answer[..], format!("{tag} OK done\r\n").as_bytes()].concat()
                    };
                    let _ = conn.write_all(&reply).await;
                    let _ = conn.flush().await;
                    line.clear();
                }
            });
        }
    });
    (port, sessions)
}

/// The answer the imap fuzz target found to panic imap-proto 0.17, as a
/// whole response (`fuzz/regressions/imap/`), sent at sign-in: the worker
/// reports it as a protocol error and tries again, instead of dying with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_panics_the_imap_parser_is_a_protocol_error_and_the_worker_goes_on() {
    let greeting = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions/imap/imap-proto-status-text-inside-a-character-minimal"),
    )
    .unwrap();
    let certs = testbed::test_certificates().unwrap();
    let (port, sessions) = serve_imaps(&certs, greeting).await;
    let stack = Stack::shared();
    let user = stack.create_user("parser-panic").unwrap();
    let s = imaps_at(stack, &user, port, &certs.ca_pem);
    let out = tempfile::tempdir().unwrap();
    let mut run = start(
        s,
        dir_sink(&out.path().join("t")),
        store(out.path()),
        fast(),
    );
    for attempt in ["first", "second"] {
        let failed = run
            .until(&format!("the {attempt} attempt refused"), |e| {
                failed_with(e, &[Reason::ProtocolError])
            })
            .await;
        let WorkerEvent::ConnectionFailed { report, .. } = failed else {
            unreachable!()
        };
        assert!(
            report.message.contains("could not be read"),
            "{}",
            report.message
        );
    }
    assert!(sessions.load(Ordering::Relaxed) >= 2, "it signed in again");
    run.handle.stop().await;
}

/// The Secret rotated while a fetch runs, in `mailroom run` with a slow
/// helpdesk behind the webhook sink (one ticket at a time): the provider takes the new password
/// first (the open session stays signed in and goes on), then the Secret
/// gets it, and mailroom restarts the worker with it after the message in
/// flight. Every message is one ticket, none is delivered twice, status never
/// says the password was wrong, and neither password reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_rotated_during_a_fetch_loses_and_duplicates_nothing() {
    use support::WebhookReceiver;
    use support::standalone::*;

    const N: usize = 200;
    let stack = Stack::shared();
    let mailbox = stack.create_user("rotated").unwrap();
    stack
        .deliver(&mailbox.address, &(0..N).map(customer).collect::<Vec<_>>())
        .unwrap();
    let slow = support::Behaviour {
        delay: Duration::from_millis(40),
        ..Default::default()
    };
    let receiver = WebhookReceiver::serve(slow, |_| 200).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "  ticket:\n    sink:\n      webhook:\n        url: {}\n        maxInFlight: 1\n",
        receiver.url
    );
    let manifests = |password: &str| {
        format!(
            "{}---\n{}",
            password_secret("mailbox", password),
            incoming("support", &mailbox, stack.ports().imaps, "mailbox", &sink)
        )
    };
    put(dir.path(), "ca.yaml", &ca_secret(stack));
    put(dir.path(), "incoming.yaml", &manifests(&mailbox.password));
    let accepted = || {
        let mut keys: Vec<String> = receiver
            .requests()
            .iter()
            .filter(|r| r.status == 200)
            .filter_map(|r| r.header("Idempotency-Key").map(str::to_owned))
            .collect();
        let all = keys.len();
        keys.sort();
        keys.dedup();
        (all, keys.len())
    };
    let reasons = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let wait_for = |what: &str, run: &Mailroom, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !done() {
            if let Some(s) = run.status("incomingemailserver", "support")
                && let Some(c) = condition(&s, "ConnectionVerified")
            {
                reasons
                    .lock()
                    .unwrap()
                    .insert(c["reason"].as_str().unwrap_or_default().to_owned());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: {:?} of {N} delivered\n{}",
                accepted(),
                run.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    let run = Mailroom::start(dir.path());
    wait_for("the intake to begin", &run, &|| accepted().1 >= 20);
    let old = mailbox.password.clone();
    let new = "rotatedrotatedrx";
    stack.add_user(&mailbox.address, new).unwrap();
    let before = accepted().1;
    wait_for("the signed-in session to go on", &run, &|| {
        accepted().1 >= before + 10
    });
    let at_rotation = accepted().1;
    put(dir.path(), "incoming.yaml", &manifests(new));
    wait_for("every ticket", &run, &|| accepted().1 == N);
    assert!(
        at_rotation < N,
        "the Secret changed while the fetch ran ({at_rotation} of {N} delivered)"
    );
    run.wait("incomingemailserver", "support", "Ready", ready);
    // Give a ticket delivered twice time to show.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(accepted(), (N, N), "each message delivered once");
    assert!(
        inbox_seen(stack, &mailbox.address).iter().all(|seen| *seen),
        "every message marked processed"
    );
    let seen = reasons.lock().unwrap().clone();
    assert!(
        !seen.contains("AuthenticationFailed"),
        "status stayed truthful: {seen:?}"
    );
    let log = run.log();
    assert_eq!(
        log.matches("fetch worker restarted with the new configuration")
            .count(),
        1,
        "one restart, for the new Secret:\n{log}"
    );
    assert!(
        !log.contains(&old) && !log.contains(new),
        "no password in the log"
    );
}

/// A fuzz finding delivered as mail: MIME nested five levels deep through
/// message/rfc822 parts with a boundary that never closes, on which
/// mail-parser 0.11 asserts (in builds with debug assertions, as the tests
/// are). The message is quarantined with the reason; the mail around it
/// becomes tickets.
#[tokio::test]
async fn mail_that_panics_the_mail_parser_is_quarantined_and_the_rest_flows() {
    let stack = Stack::shared();
    let user = stack.create_user("parser-panic").unwrap();
    let hostile = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions/mail/mime-nesting-debug-assert"),
    )
    .unwrap();
    stack.deliver(&user.address, &[customer(1)]).unwrap();
    stack.save(&user.address, "INBOX", &hostile).unwrap();
    stack.deliver(&user.address, &[customer(2)]).unwrap();
    let (out, mut run) = start_imaps(stack, &user, |_| {}, ticket_dir, fast());
    let t = out.path().join("t");
    let e = run
        .until("the quarantine", |e| {
            matches!(e, WorkerEvent::Quarantined { .. })
        })
        .await;
    wait_tickets(&t, 2).await;
    assert_each_message_one_ticket(&t, &run, 2);
    run.handle.stop().await;
    let WorkerEvent::Quarantined { reason, .. } = e else {
        unreachable!()
    };
    assert!(reason.contains("mail parser failed"), "{reason}");
    assert_eq!(
        stack.messages(&user.address, "Quarantine").unwrap().len(),
        1
    );
}
