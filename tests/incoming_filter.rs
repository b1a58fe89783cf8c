//! Filters and DryRun against the real Dovecot: DryRun judges every message and
//! touches nothing; Active then turns only the accepted ones into tickets and
//! gives the rejected ones the same afterProcessing.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom::api::{
    AfterProcessing, FilterType, IncomingFilter, IncomingProtocol, Mode, SecurityType,
};
use mailroom_core::incoming::IncomingSettings;
use mailroom_core::incoming::worker::{
    Counted, Worker, WorkerEvent, WorkerHandle, WorkerOptions, WorkerStats,
};
use mailroom_core::sinks::{DirectorySink, Sink};
use mailroom_core::state::{CursorStore, FileCursorStore};
use support::*;
use testbed::{Stack, User};
use tokio::sync::mpsc;

fn mix() -> Vec<(&'static str, String)> {
    let m = |id: &str, headers: &str| {
        format!(
            "{headers}Message-ID: <{id}@mix.example>\r\nSubject: printer\r\n\r\nplease help\r\n"
        )
    };
    vec![
        ("ok", m("ok", "From: Ann <ann@company.com>\r\n")),
        ("yahoo", m("yahoo", "From: spam@yahoo.com\r\n")),
        (
            "auto",
            m(
                "auto",
                "From: bob@company.com\r\nAuto-Submitted: auto-replied\r\n",
            ),
        ),
        ("nofrom", m("nofrom", "")),
        (
            "suppress",
            m(
                "suppress",
                "From: carol@company.com\r\nX-Auto-Response-Suppress: All\r\n",
            ),
        ),
        (
            "bounce",
            m("bounce", "From: MAILER-DAEMON@mx.company.com\r\n"),
        ),
    ]
}

fn expected() -> BTreeMap<String, (bool, &'static str)> {
    [
        ("ok", (true, "noMatch")),
        ("yahoo", (false, "domains[0]")),
        ("auto", (false, "loop:autoSubmitted")),
        ("nofrom", (false, "sender:missing")),
        ("suppress", (true, "noMatch")),
        ("bounce", (false, "loop:systemSender")),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{k}@mix.example"), v))
    .collect()
}

fn settings(
    stack: &Stack,
    user: &User,
    protocol: IncomingProtocol,
    mode: Mode,
    after: AfterProcessing,
) -> IncomingSettings {
    let (mut spec, secrets) = incoming_spec(stack, user, protocol, SecurityType::Ssl);
    spec.mode = mode;
    spec.after_processing = Some(after);
    spec.filter = Some(IncomingFilter {
        type_: FilterType::Ignore,
        emails: vec![],
        domains: vec!["yahoo.com".into()],
        keywords: vec![],
    });
    resolve(&spec, &secrets)
}

struct Run {
    handle: WorkerHandle,
    events: mpsc::UnboundedReceiver<WorkerEvent>,
    /// Counters folded from the worker's events, as a runtime keeps them.
    stats: Arc<WorkerStats>,
}

async fn judged(run: &mut Run, n: usize) -> BTreeMap<String, (bool, String, bool)> {
    let mut out = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, run.events.recv()).await {
            Ok(Some(WorkerEvent::Judged {
                message_id,
                verdict,
                dry_run,
                ..
            })) => {
                out.insert(
                    message_id.unwrap(),
                    (verdict.accepted, verdict.rule, dry_run),
                );
            }
            Ok(Some(_)) => {}
            _ => panic!("only {} of {n} messages judged: {out:?}", out.len()),
        }
    }
    out
}

fn start(s: IncomingSettings, tickets: &std::path::Path, store: Arc<dyn CursorStore>) -> Run {
    let (tx, events) = mpsc::unbounded_channel();
    let sink = Arc::new(Sink::Directory(DirectorySink::open(tickets).unwrap()));
    let stats = Arc::new(WorkerStats::default());
    let observer = Arc::new(Counted {
        stats: stats.clone(),
        inner: tx,
    });
    Run {
        handle: Worker::spawn(s, sink, store, observer, WorkerOptions::default()),
        events,
        stats,
    }
}

fn ticket_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
async fn dry_run_reports_every_verdict_and_touches_nothing_then_active_applies_them() {
    let stack = Stack::shared();
    let user = stack.create_user("dryrun").unwrap();
    let messages: Vec<String> = mix().into_iter().map(|(_, m)| m).collect();
    stack.deliver(&user.address, &messages).unwrap();
    let before = stack.messages(&user.address, "INBOX").unwrap();
    let folders_before = stack.folders(&user.address).unwrap();
    let out = tempfile::tempdir().unwrap();
    let store: Arc<dyn CursorStore> = Arc::new(FileCursorStore::new(out.path().join("state")));

    let mut run = start(
        settings(
            stack,
            &user,
            IncomingProtocol::Imap,
            Mode::DryRun,
            AfterProcessing::MarkSeen,
        ),
        &out.path().join("tickets"),
        store.clone(),
    );
    let verdicts = judged(&mut run, messages.len()).await;
    let stats = run.stats.clone();
    run.handle.stop().await;
    for (id, (accepted, rule)) in expected() {
        let (got_accepted, got_rule, dry) = verdicts
            .get(&id)
            .unwrap_or_else(|| panic!("{id} not judged"));
        assert_eq!(
            (*got_accepted, got_rule.as_str(), *dry),
            (accepted, rule, true),
            "{id}"
        );
    }
    assert_eq!(
        stack.messages(&user.address, "INBOX").unwrap(),
        before,
        "DryRun changed flags"
    );
    assert_eq!(stack.folders(&user.address).unwrap(), folders_before);
    assert_eq!(
        ticket_count(&out.path().join("tickets")),
        0,
        "DryRun created tickets"
    );
    assert_eq!(
        store.load("helpdesk/support").await.unwrap(),
        None,
        "DryRun wrote the cursor"
    );
    let log = stats.rejections.lock().unwrap().clone();
    assert_eq!(log.total(), 4);
    assert!(log.recent().all(|r| r.reason.starts_with("(dry run)")));
    // What status shows for the DryRun: every message judged, two would be tickets.
    let report = mailroom::status::dry_run_report(&stats);
    assert_eq!(
        (
            report.judged,
            report.would_create_tickets,
            report.would_reject,
            report.would_quarantine
        ),
        (6, 2, 4, 0)
    );
    let recent = mailroom::status::recent_rejections(&log);
    assert_eq!(recent.len(), 4);
    assert!(
        recent
            .iter()
            .any(|r| r.rule == "domains[0]" && r.sender.as_deref() == Some("spam@yahoo.com"))
    );

    let mut run = start(
        settings(
            stack,
            &user,
            IncomingProtocol::Imap,
            Mode::Active,
            AfterProcessing::MarkSeen,
        ),
        &out.path().join("tickets"),
        store.clone(),
    );
    let verdicts = judged(&mut run, messages.len()).await;
    assert!(verdicts.values().all(|(_, _, dry)| !dry));
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack
        .messages(&user.address, "INBOX")
        .unwrap()
        .iter()
        .any(|m| !m.has_flag("\\Seen"))
    {
        assert!(
            Instant::now() < deadline,
            "rejected mail was not given the afterProcessing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = run.stats.clone();
    run.handle.stop().await;
    assert_eq!(
        ticket_count(&out.path().join("tickets")),
        2,
        "only ok and suppress become tickets"
    );
    let log = stats.rejections.lock().unwrap().clone();
    let counts: Vec<(&str, u64)> = log.counts().iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        counts,
        [
            ("domains[0]", 1),
            ("loop:autoSubmitted", 1),
            ("loop:systemSender", 1),
            ("sender:missing", 1)
        ]
    );
    let message = log.condition_message();
    assert!(
        message.starts_with("4 rejected (domains[0]: 1, "),
        "{message}"
    );
    assert!(
        log.recent()
            .all(|r| r.message_id.is_some() && !r.reason.contains("please help"))
    );
}

#[tokio::test]
async fn pop3_dry_run_deletes_nothing() {
    let stack = Stack::shared();
    let user = stack.create_user("dryrun-pop").unwrap();
    let messages: Vec<String> = mix().into_iter().map(|(_, m)| m).collect();
    stack.deliver(&user.address, &messages).unwrap();
    let out = tempfile::tempdir().unwrap();
    let store: Arc<dyn CursorStore> = Arc::new(FileCursorStore::new(out.path().join("state")));
    let mut run = start(
        settings(
            stack,
            &user,
            IncomingProtocol::Pop3,
            Mode::DryRun,
            AfterProcessing::Delete,
        ),
        &out.path().join("tickets"),
        store,
    );
    let verdicts = judged(&mut run, messages.len()).await;
    run.handle.stop().await;
    assert_eq!(
        verdicts
            .values()
            .filter(|(accepted, _, _)| *accepted)
            .count(),
        2
    );
    assert_eq!(
        stack.messages(&user.address, "INBOX").unwrap().len(),
        messages.len()
    );
    assert_eq!(ticket_count(&out.path().join("tickets")), 0);
}
