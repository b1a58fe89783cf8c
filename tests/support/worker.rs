//! The fetch worker as the worker tests drive it: fast retries, a run whose
//! events can be awaited, ticket folders.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom::api::{IncomingProtocol, SecurityType};
use mailroom_core::incoming::IncomingSettings;
use mailroom_core::incoming::worker::{
    Counted, Worker, WorkerEvent, WorkerHandle, WorkerOptions, WorkerStats,
};
use mailroom_core::sinks::{DirectorySink, Sink};
use mailroom_core::state::CursorStore;
use mailroom_core::ticket::Ticket;
use testbed::{Stack, User};
use tokio::sync::mpsc;

use super::{incoming_spec, resolve};

pub fn fast() -> WorkerOptions {
    WorkerOptions {
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(500),
        ..WorkerOptions::default()
    }
}

pub fn message(i: usize) -> String {
    format!(
        "From: Ann <ann@company.com>\r\nTo: support@mailroom.test\r\nSubject: request {i}\r\nMessage-ID: <m{i}-{}@company.com>\r\n\r\nbody {i}\r\n",
        std::process::id()
    )
}

/// Mail from a sender of its own per message: loop protection's rate limit
/// counts per sender.
pub fn customer(i: usize) -> String {
    format!(
        "From: Customer {i} <c{i}@customers.example.org>\r\nTo: support@mailroom.test\r\nSubject: request {i}\r\nMessage-ID: <c{i}-{}@customers.example.org>\r\n\r\nbody {i}\r\n",
        std::process::id()
    )
}

pub struct Run {
    pub handle: WorkerHandle,
    pub events: mpsc::UnboundedReceiver<WorkerEvent>,
    /// Counters folded from the worker's events, as a runtime keeps them.
    pub stats: Arc<WorkerStats>,
}

pub fn start(
    settings: IncomingSettings,
    sink: Sink,
    store: Arc<dyn CursorStore>,
    options: WorkerOptions,
) -> Run {
    let (tx, events) = mpsc::unbounded_channel();
    let stats = Arc::new(WorkerStats::default());
    let observer = Arc::new(Counted {
        stats: stats.clone(),
        inner: tx,
    });
    Run {
        handle: Worker::spawn(settings, Arc::new(sink), store, observer, options),
        events,
        stats,
    }
}

impl Run {
    pub async fn until(
        &mut self,
        what: &str,
        mut f: impl FnMut(&WorkerEvent) -> bool,
    ) -> WorkerEvent {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(e)) if f(&e) => return e,
                Ok(Some(_)) => {}
                _ => panic!("timed out waiting for {what}"),
            }
        }
    }
}

pub fn tickets(dir: &Path) -> Vec<Ticket> {
    super::json_files(dir)
}

/// Waits until `dir` holds `n` tickets. The deadline is a hang detector, not
/// a speed test: a loaded machine takes 10,000 small batches in about 30 s.
pub async fn wait_tickets(dir: &Path, n: usize) -> Vec<Ticket> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let t = tickets(dir);
        if t.len() >= n {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} tickets in {}",
            t.len(),
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn settings(
    stack: &Stack,
    user: &User,
    protocol: IncomingProtocol,
    security: SecurityType,
    edit: impl FnOnce(&mut mailroom::api::IncomingEmailServerSpec),
) -> IncomingSettings {
    let (mut spec, secrets) = incoming_spec(stack, user, protocol, security);
    spec.ticket.technician_group = Some("Service Desk".into());
    spec.ticket.category = Some("Hardware".into());
    edit(&mut spec);
    resolve(&spec, &secrets)
}

/// IMAPS settings for `user` aimed at a server the test runs itself on
/// 127.0.0.1:`port` (a scripted server or a relay), trusted through `ca_pem`.
pub fn imaps_at(stack: &Stack, user: &User, port: u16, ca_pem: &str) -> IncomingSettings {
    let mut s = settings(
        stack,
        user,
        IncomingProtocol::Imap,
        SecurityType::Ssl,
        |_| {},
    );
    s.server.endpoint.host = "127.0.0.1".into();
    s.server.endpoint.port = port;
    s.server.tls.extra_ca_pem = Some(ca_pem.to_owned());
    s
}

pub fn dir_sink(dir: &Path) -> Sink {
    Sink::Directory(DirectorySink::open(dir).unwrap())
}

/// A worker on `user`'s INBOX over IMAPS, `edit` applied to its spec, with
/// its cursors in a fresh folder that `sink` may use too (tickets in
/// `out/t`). The folder is returned so that it outlives the run.
pub fn start_imaps(
    stack: &Stack,
    user: &User,
    edit: impl FnOnce(&mut mailroom::api::IncomingEmailServerSpec),
    sink: impl FnOnce(&Path) -> Sink,
    options: WorkerOptions,
) -> (tempfile::TempDir, Run) {
    let out = tempfile::tempdir().unwrap();
    let store = Arc::new(mailroom_core::state::FileCursorStore::new(
        out.path().join("state"),
    ));
    let s = settings(stack, user, IncomingProtocol::Imap, SecurityType::Ssl, edit);
    let run = start(s, sink(out.path()), store, options);
    (out, run)
}

/// Whether each message in `address`'s INBOX is marked seen, by UID.
pub fn inbox_seen(stack: &Stack, address: &str) -> Vec<bool> {
    stack
        .messages(address, "INBOX")
        .unwrap()
        .iter()
        .map(|m| m.has_flag("\\Seen"))
        .collect()
}

/// The ticket folder of `start_imaps`.
pub fn ticket_dir(out: &Path) -> Sink {
    dir_sink(&out.join("t"))
}
