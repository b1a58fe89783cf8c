//! Resources that sign in to one account share its session cap, against the
//! real Dovecot: the ones without a free session wait (and say why) instead
//! of being refused by the server.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom::api::{IncomingProtocol, SecurityType};
use mailroom_core::connection::Reason;
use mailroom_core::connection::limits::SessionLimits;
use mailroom_core::incoming::IncomingSettings;
use mailroom_core::incoming::worker::{Worker, WorkerEvent, WorkerHandle, WorkerOptions};
use mailroom_core::sinks::{DirectorySink, Sink};
use mailroom_core::state::FileCursorStore;
use support::{incoming_spec, resolve};
use testbed::Stack;
use tokio::sync::mpsc;

async fn next(events: &mut Events) -> WorkerEvent {
    tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .expect("no worker event within 20 s")
        .expect("the worker ended")
}

/// Whether the worker's next connection event is Connected (else the reason).
async fn connected(events: &mut Events) -> Result<(), Reason> {
    loop {
        match next(events).await {
            WorkerEvent::Connected(_) => return Ok(()),
            WorkerEvent::ConnectionFailed { report, .. } => return Err(report.reason),
            _ => {}
        }
    }
}

type Events = mpsc::UnboundedReceiver<WorkerEvent>;

/// A worker for one resource, with a sink and cursor of its own under `dir`.
fn spawn(
    settings: &IncomingSettings,
    options: &WorkerOptions,
    dir: &Path,
) -> (WorkerHandle, Events) {
    let (tx, events) = mpsc::unbounded_channel();
    let handle = Worker::spawn(
        settings.clone(),
        Arc::new(Sink::Directory(
            DirectorySink::open(dir.join("tickets")).unwrap(),
        )),
        Arc::new(FileCursorStore::new(dir.join("state"))),
        Arc::new(tx),
        options.clone(),
    );
    (handle, events)
}

#[tokio::test]
async fn resources_of_one_account_share_its_session_cap_and_the_third_waits_for_a_free_one() {
    let stack = Stack::shared();
    let user = stack.create_user("capped").unwrap();
    let (spec, secrets) = incoming_spec(stack, &user, IncomingProtocol::Imap, SecurityType::Ssl);
    let settings = resolve(&spec, &secrets);
    let options = WorkerOptions {
        limits: SessionLimits::new(4, Some(2)),
        ..WorkerOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut workers: Vec<(WorkerHandle, Events)> = Vec::new();
    for i in 0..3 {
        let (handle, mut events) = spawn(&settings, &options, &dir.path().join(format!("r{i}")));
        let outcome = connected(&mut events).await;
        if i < 2 {
            assert_eq!(outcome, Ok(()), "worker {i}");
        } else {
            assert_eq!(
                outcome,
                Err(Reason::SessionLimit),
                "the third resource is told it waits for a session"
            );
        }
        workers.push((handle, events));
    }
    let imap_sessions = || support::imap_sessions(stack, &user);
    let deadline = Instant::now() + Duration::from_secs(5);
    while imap_sessions() != 2 {
        assert!(Instant::now() < deadline, "{} sessions", imap_sessions());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // One resource goes: the waiting one takes its session.
    let (first, _) = workers.remove(0);
    first.stop().await;
    let (_, waiting) = workers.last_mut().unwrap();
    assert_eq!(connected(waiting).await, Ok(()));
    assert!(imap_sessions() <= 2, "{} sessions", imap_sessions());
    for (w, _) in workers {
        w.stop().await;
    }
}

#[tokio::test]
async fn a_pop3_resource_lets_its_session_go_between_passes() {
    let stack = Stack::shared();
    let user = stack.create_user("pop-capped").unwrap();
    let (mut spec, secrets) =
        incoming_spec(stack, &user, IncomingProtocol::Pop3, SecurityType::Ssl);
    // Passes ten minutes apart: a session held through the wait would keep
    // the other resource out for that long.
    spec.scan_interval = Duration::from_secs(600).into();
    let settings = resolve(&spec, &secrets);
    let options = WorkerOptions {
        limits: SessionLimits::new(4, Some(1)),
        ..WorkerOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut workers = Vec::new();
    for i in 0..2 {
        let (handle, mut events) = spawn(&settings, &options, &dir.path().join(format!("r{i}")));
        // The second may first be told to wait; it must connect all the same.
        let mut outcome = connected(&mut events).await;
        if outcome == Err(Reason::SessionLimit) {
            outcome = connected(&mut events).await;
        }
        assert_eq!(outcome, Ok(()), "POP3 resource {i}");
        workers.push((handle, events));
    }
    for (w, _) in workers {
        w.stop().await;
    }
}
