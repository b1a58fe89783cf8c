//! End to end: the real `mailroom` binary in standalone mode on a folder of
//! manifests, against the real Dovecot and Postfix. Mail goes in through the
//! submission endpoint and comes out as ticket files; status files tell the
//! truth; the folder is watched; SIGTERM stops cleanly.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::Stack;

use support::standalone::*;

#[test]
fn mail_through_the_endpoint_becomes_a_ticket_ignored_mail_a_rejection_and_a_restart_no_duplicate()
{
    let stack = Stack::shared();
    let mailbox = stack.create_user("e2e-box").unwrap();
    let sender = stack.create_user("e2e-sender").unwrap();
    let dir = tempfile::tempdir().unwrap();
    setup(
        stack,
        dir.path(),
        &mailbox,
        &sender,
        "  filter: {type: Ignore, domains: [ignored.test]}\n",
    );
    put(dir.path(), "outgoing.yaml", &apps_sender(stack, &sender));
    let mailroom = Mailroom::start(dir.path());
    mailroom.wait("incomingemailserver", "support", "Ready", ready);

    let body = serde_json::json!({
        "to": [mailbox.address],
        "subject": "Printer on fire [#77]",
        "text": "It is really on fire.",
    })
    .to_string();
    let (status, answer) = post(mailroom.listen, "/v1/namespaces/apps/messages", &body);
    assert_eq!(status, 200, "{answer}");
    let tickets = mailroom.wait_tickets(1);
    let t = &tickets[0];
    assert_eq!(t["subject"], "Printer on fire [#77]");
    assert_eq!(t["from"]["address"], sender.address.as_str());
    assert_eq!(t["from"]["name"], "Helpdesk");
    assert_eq!(t["mailbox"], format!("{NS}/support"));
    assert_eq!(t["ticketReference"], "77");
    assert!(t["text"].as_str().unwrap().contains("really on fire"));

    stack
        .deliver(
            &mailbox.address,
            &["From: Spammer <win@ignored.test>\r\nTo: x@mailroom.test\r\nSubject: prize\r\nMessage-ID: <prize@ignored.test>\r\n\r\nclick\r\n"],
        )
        .unwrap();
    let s = mailroom.wait(
        "incomingemailserver",
        "support",
        "a recorded rejection",
        |s| s["status"]["recentRejections"][0]["sender"] == "win@ignored.test",
    );
    assert!(is(&s, "FilterRejecting", "True"), "{s:#?}");
    assert_eq!(s["status"]["recentRejections"][0]["rule"], "domains[0]");
    assert_eq!(mailroom.tickets().len(), 1, "the ignored mail is no ticket");

    let table = Command::new(env!("CARGO_BIN_EXE_mailroom"))
        .args(["status", "--manifests"])
        .arg(dir.path())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("support") && table.contains("IncomingEmailServer"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("support") && l.contains("True") && l.ends_with('1')),
        "{table}"
    );

    let log = mailroom.log.clone();
    assert_eq!(
        mailroom.terminate(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(std::fs::read_to_string(&log).unwrap().contains("stopped"));
    let cursor = dir.path().join(".state").join(NS).join("support.json");
    assert!(
        cursor.exists(),
        "the cursor was saved at {}",
        cursor.display()
    );

    // Restarted on the same folder: the cursor is where it was; nothing twice.
    let again = Mailroom::start(dir.path());
    again.wait(
        "incomingemailserver",
        "support",
        "Ready after restart",
        |s| ready(s) && s["status"]["stats"]["fetched"].as_i64().is_some(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        again.tickets().len(),
        1,
        "no duplicate ticket after a restart"
    );
    assert!(!mailroom_secret_leaked(
        dir.path(),
        &[&mailbox.password, &sender.password]
    ));
}

/// Whether any status file or log holds one of the passwords.
fn mailroom_secret_leaked(dir: &Path, secrets: &[&str]) -> bool {
    let mut files = Vec::new();
    let mut stack = vec![dir.join(".status")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    files.extend(
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log")),
    );
    files.iter().any(|f| {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        secrets.iter().any(|s| text.contains(s))
    })
}

#[test]
fn a_wrong_password_stalls_within_seconds_and_the_fix_brings_the_waiting_mail_in() {
    let stack = Stack::shared();
    let mailbox = stack.create_user("e2e-pw").unwrap();
    let sender = stack.create_user("e2e-pw-sender").unwrap();
    let dir = tempfile::tempdir().unwrap();
    setup(stack, dir.path(), &mailbox, &sender, "");
    let mailroom = Mailroom::start(dir.path());
    mailroom.wait("incomingemailserver", "support", "Ready", ready);

    let changed = Instant::now();
    put(
        dir.path(),
        "secrets.yaml",
        &format!(
            "{}---\n{}",
            password_secret("mailbox", "wrongwrongwrongw"),
            password_secret("sender", &sender.password)
        ),
    );
    let s = mailroom.wait(
        "incomingemailserver",
        "support",
        "AuthenticationFailed",
        |s| {
            condition(s, "ConnectionVerified")
                .is_some_and(|c| c["reason"] == "AuthenticationFailed")
        },
    );
    let took = changed.elapsed();
    assert!(is(&s, "Stalled", "True"), "{s:#?}");
    assert!(is(&s, "Ready", "False"));
    assert!(took < Duration::from_secs(10), "{took:?}");
    eprintln!("wrong password to Stalled status: {} ms", took.as_millis());

    // Mail arriving meanwhile waits on the server.
    stack
        .deliver(
            &mailbox.address,
            &["From: Ann <ann@customer.example>\r\nTo: x@mailroom.test\r\nSubject: while broken\r\nMessage-ID: <broken@customer.example>\r\n\r\nhello\r\n"],
        )
        .unwrap();
    put(
        dir.path(),
        "secrets.yaml",
        &format!(
            "{}---\n{}",
            password_secret("mailbox", &mailbox.password),
            password_secret("sender", &sender.password)
        ),
    );
    let s = mailroom.wait("incomingemailserver", "support", "Ready again", ready);
    assert!(
        condition(&s, "Stalled").is_none(),
        "Stalled is gone once fixed: {s:#?}"
    );
    let tickets = mailroom.wait_tickets(1);
    assert_eq!(tickets[0]["subject"], "while broken");
}

#[test]
fn a_spec_that_cannot_be_used_is_stalled_naming_the_field_until_fixed() {
    let stack = Stack::shared();
    let mailbox = stack.create_user("e2e-invalid").unwrap();
    let sender = stack.create_user("e2e-invalid-sender").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The schema takes any pattern; only compiling it tells it is broken.
    setup(
        stack,
        dir.path(),
        &mailbox,
        &sender,
        "  ticket: {referencePattern: \"[#(\"}\n",
    );
    stack
        .deliver(
            &mailbox.address,
            &["From: Ann <ann@customer.example>\r\nTo: x@mailroom.test\r\nSubject: waiting\r\nMessage-ID: <invalid@customer.example>\r\n\r\nhello\r\n"],
        )
        .unwrap();
    let mailroom = Mailroom::start(dir.path());
    let s = mailroom.wait("incomingemailserver", "support", "InvalidConfig", |s| {
        condition(s, "Ready").is_some_and(|c| c["reason"] == "InvalidConfig")
    });
    assert!(is(&s, "Ready", "False"), "{s:#?}");
    assert!(is(&s, "Stalled", "True"), "{s:#?}");
    assert!(condition(&s, "Reconciling").is_none(), "{s:#?}");
    let message = condition(&s, "Ready").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.starts_with("spec.ticket.referencePattern:"),
        "{message}"
    );
    assert!(
        mailroom.tickets().is_empty(),
        "nothing is fetched meanwhile"
    );

    put(
        dir.path(),
        "incoming.yaml",
        &incoming("support", &mailbox, stack.ports().imaps, "mailbox", ""),
    );
    mailroom.wait("incomingemailserver", "support", "Ready once fixed", ready);
    assert_eq!(mailroom.wait_tickets(1)[0]["subject"], "waiting");
}

#[test]
fn an_invalid_manifest_is_reported_the_rest_runs_and_a_removed_one_stops() {
    let stack = Stack::shared();
    let first = stack.create_user("e2e-first").unwrap();
    let second = stack.create_user("e2e-second").unwrap();
    let sender = stack.create_user("e2e-inv-sender").unwrap();
    let dir = tempfile::tempdir().unwrap();
    setup(stack, dir.path(), &first, &sender, "");
    put(
        dir.path(),
        "second.yaml",
        &format!(
            "{}---\n{}",
            password_secret("second", &second.password),
            incoming("second", &second, stack.ports().imaps, "second", "")
        ),
    );
    put(
        dir.path(),
        "broken.yaml",
        &incoming("broken", &second, stack.ports().imaps, "second", "")
            .replace(&format!("port: {}", stack.ports().imaps), "port: 99999"),
    );
    put(
        dir.path(),
        "other.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
    );
    let mailroom = Mailroom::start(dir.path());
    mailroom.wait("incomingemailserver", "support", "Ready", ready);
    mailroom.wait("incomingemailserver", "second", "Ready", ready);
    let problems = std::fs::read_to_string(dir.path().join(".status/problems.yaml")).unwrap();
    assert!(
        problems.contains("broken.yaml") && problems.contains("spec.port"),
        "{problems}"
    );
    assert!(mailroom.status("incomingemailserver", "broken").is_none());
    let log = mailroom.log();
    assert!(log.contains("broken.yaml (document 1): spec.port"), "{log}");
    assert!(log.contains("ignoring apps/v1/Deployment"), "{log}");

    std::fs::remove_file(dir.path().join("second.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while mailroom.status("incomingemailserver", "second").is_some() {
        assert!(
            Instant::now() < deadline,
            "second never stopped\n{}",
            mailroom.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = mailroom.log();
    assert!(
        log.lines()
            .any(|l| l.contains("removed; its worker stopped") && l.contains("helpdesk/second")),
        "{log}"
    );
    let started = |name: &str| {
        log.lines()
            .filter(|l| l.contains("worker started") && l.contains(&format!("helpdesk/{name}")))
            .count()
    };
    assert_eq!(
        started("support"),
        1,
        "an unchanged resource keeps its worker: {log}"
    );

    // The first keeps running.
    stack
        .deliver(
            &first.address,
            &["From: Ann <ann@customer.example>\r\nTo: x@mailroom.test\r\nSubject: still here\r\nMessage-ID: <still@customer.example>\r\n\r\nhello\r\n"],
        )
        .unwrap();
    assert_eq!(mailroom.wait_tickets(1)[0]["subject"], "still here");
}

#[test]
fn test_connection_exits_0_when_all_pass_and_1_naming_the_failed_stage() {
    let stack = Stack::shared();
    let mailbox = stack.create_user("e2e-tc").unwrap();
    let sender = stack.create_user("e2e-tc-sender").unwrap();
    let dir = tempfile::tempdir().unwrap();
    setup(stack, dir.path(), &mailbox, &sender, "");
    let run = |files: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailroom"));
        cmd.arg("test-connection");
        for f in files {
            cmd.arg(f).current_dir(dir.path());
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&[
        "-f",
        "incoming.yaml",
        "-f",
        "outgoing.yaml",
        "--secret-file",
        "secrets.yaml",
        "--secret-file",
        "ca.yaml",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("✓ Login") && out.contains("✓ Mailbox") && out.contains("result: Connected"),
        "{out}"
    );
    assert!(out.contains("expires"), "certificate expiry shown: {out}");

    put(
        dir.path(),
        "bad.yaml",
        &password_secret("mailbox", "wrongwrongwrongw"),
    );
    let (code, out) = run(&[
        "-f",
        "incoming.yaml",
        "--secret-file",
        "bad.yaml",
        "--secret-file",
        "ca.yaml",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("✗ Login") && out.contains("AuthenticationFailed"),
        "{out}"
    );
    assert!(!out.contains(&mailbox.password));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mailroom = Mailroom::start_with(dir.path(), &["--log-format", "json"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !mailroom.log().contains("watching the folder") {
        assert!(Instant::now() < deadline, "{}", mailroom.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = mailroom.log.clone();
    assert_eq!(mailroom.terminate(), Some(0));
    let text = std::fs::read_to_string(log).unwrap();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
}

#[test]
fn kill_9_at_random_moments_during_intake_loses_and_duplicates_nothing() {
    let stack = Stack::shared();
    let mailbox = stack.create_user("e2e-kill").unwrap();
    let total = 3000;
    let messages: Vec<String> = (0..total)
        .map(|i| {
            format!(
                "From: Customer {i} <c{i}@customer.example>\r\nTo: {}\r\nSubject: request {i}\r\nMessage-ID: <kill-{i}@customer.example>\r\n\r\n{}\r\n",
                mailbox.address,
                "the printer is broken again ".repeat(20)
            )
        })
        .collect();
    stack.seed(&mailbox.address, &messages).unwrap();
    let dir = tempfile::tempdir().unwrap();
    mailbox_folder(stack, dir.path(), &mailbox, "");

    // SIGKILL while batches are fetched, judged, written and marked; the seed
    // is printed so that a failing run can be repeated.
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut kills = 0;
    while kills < 6 && mailroom_tickets(dir.path()) < total {
        let mut mailroom = Mailroom::start(dir.path());
        std::thread::sleep(Duration::from_millis(rng.u64(150..900)));
        mailroom.child.kill().unwrap();
        mailroom.child.wait().unwrap();
        kills += 1;
    }
    // The killed runs' status says Ready too: wait for this run's own.
    let _ = std::fs::remove_dir_all(dir.path().join(".status"));
    let mailroom = Mailroom::start(dir.path());
    mailroom.wait("incomingemailserver", "support", "Ready", ready);
    let tickets = mailroom.wait_tickets(total);
    // The last batch is marked seen after its tickets are written.
    let deadline = Instant::now() + Duration::from_secs(30);
    let unseen = || {
        let inbox = stack.messages(&mailbox.address, "INBOX").unwrap();
        assert_eq!(inbox.len(), total);
        inbox.iter().filter(|m| !m.has_flag("\\Seen")).count()
    };
    while unseen() > 0 {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: {} messages never marked seen\n{}",
            unseen(),
            mailroom.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(mailroom.terminate(), Some(0));

    // Every ticket file is whole (each parsed above), one per message.
    assert_eq!(tickets.len(), total, "seed {seed}, {kills} kills");
    let mut ids: Vec<String> = tickets
        .iter()
        .map(|t| t["messageId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        total,
        "seed {seed}: a message became two tickets"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join(".tickets"))
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".json"))
        .collect();
    assert!(leftovers.is_empty(), "seed {seed}: {leftovers:?}");
}

/// Ticket files written so far (not counting temporary ones).
fn mailroom_tickets(dir: &Path) -> usize {
    std::fs::read_dir(dir.join(".tickets")).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count()
    })
}

/// Every form a password takes on the wire: as it is, base64, and inside the
/// SASL PLAIN and LOGIN responses.
fn wire_forms(user: &str, password: &str) -> Vec<String> {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    vec![
        password.to_owned(),
        b64(password),
        b64(&format!("\0{user}\0{password}")),
        b64(&format!("{user}\0{user}\0{password}")),
    ]
}

#[test]
fn no_log_level_prints_a_password_of_any_protocol() {
    let stack = Stack::shared();
    let mailbox = stack.create_user("e2e-trace").unwrap();
    let sender = stack.create_user("e2e-trace-sender").unwrap();
    let dir = tempfile::tempdir().unwrap();
    setup(stack, dir.path(), &mailbox, &sender, "");
    put(
        dir.path(),
        "pop3.yaml",
        &incoming(
            "support-pop",
            &mailbox,
            stack.ports().pop3s,
            "mailbox",
            "  protocol: POP3\n",
        ),
    );
    for filter in [
        "trace",
        "async_imap=trace,lettre=trace,imap_proto=trace,trace",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mailroom"))
            .args([
                "test-connection",
                "-f",
                "incoming.yaml",
                "-f",
                "pop3.yaml",
                "-f",
                "outgoing.yaml",
                "--secret-file",
                "secrets.yaml",
                "--secret-file",
                "ca.yaml",
            ])
            .current_dir(dir.path())
            .env("RUST_LOG", filter)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{text}");
        // The log really is at trace: the TLS library's handshake shows.
        assert!(text.contains("TRACE"), "{text}");
        for (user, password) in [
            (&mailbox.address, &mailbox.password),
            (&sender.address, &sender.password),
        ] {
            for form in wire_forms(user, password) {
                assert!(
                    !text.contains(&form),
                    "RUST_LOG={filter} printed a password (as {form:?})"
                );
            }
        }
    }
}
