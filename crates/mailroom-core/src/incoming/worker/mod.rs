//! The fetch worker behind an IncomingEmailServer: fetch new mail, map it to
//! tickets, hand them to the sink, and only after the sink accepted them apply
//! afterProcessing and move the durable cursor. Real time with IMAP IDLE, else
//! polling. Connection and sink failures retry with capped exponential backoff
//! and jitter; one bad message is quarantined (IMAP) or skipped (POP3) and never
//! blocks the rest. This file keeps the run loop, the cursor and settling; the
//! IMAP and POP3 passes are beside it.

mod imap_pass;
mod pop3_pass;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::judging::Judging;
use super::plan::Backoff;
use super::settings::IncomingSettings;
use crate::connection::limits::{SessionLimits, SessionSlot};
use crate::connection::{ConnectionReport, Failure, Probe, Reason};
use crate::filter::Verdict;
use crate::sinks::{Delivery, Sink, SinkError};
use crate::state::{Cursor, CursorStore, ImapCursor, ThreadMap};
use crate::ticket::Ticket;
use crate::vocab::{ConnectionStage, IncomingProtocol, Mode};
pub use stats::{Counted, WorkerStats};

/// How new mail is noticed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scanning {
    Idle,
    Polling { every: Duration, reason: String },
}

/// What a worker reports, for status, events and metrics.
#[derive(Clone, Debug)]
pub enum WorkerEvent {
    Connected(ConnectionReport),
    ConnectionFailed {
        report: ConnectionReport,
        retry_in: Duration,
    },
    Scanning(Scanning),
    /// Messages taken from the server (judged, or set aside as oversized).
    Fetched {
        count: usize,
        at: jiff::Timestamp,
    },
    /// Every message is judged once: what became (or, in DryRun, would become)
    /// of it and which rule decided.
    Judged {
        message_id: Option<String>,
        sender: Option<String>,
        verdict: Verdict,
        dry_run: bool,
        at: jiff::Timestamp,
    },
    TicketCreated {
        key: String,
        message_id: Option<String>,
        /// When the mail server received the message, where it says.
        arrived: Option<jiff::Timestamp>,
    },
    /// A reply was added to the ticket it answers.
    ReplyDelivered {
        key: String,
        message_id: Option<String>,
        /// The sink's name for the ticket, where known.
        ticket: Option<String>,
        arrived: Option<jiff::Timestamp>,
    },
    /// The sink refused the ticket for good; the mail is left in place.
    TicketRejected {
        message_id: Option<String>,
        reason: String,
    },
    /// Unparseable or oversized: moved to the quarantine folder (IMAP) or
    /// skipped (POP3). Neither kind has a Message-ID to report.
    Quarantined {
        kind: QuarantineKind,
        reason: String,
    },
    SinkUnavailable {
        message: String,
        retry_in: Duration,
    },
    CursorAdvanced(Cursor),
    /// Everything the mailbox held has been taken; `idle`: the session now
    /// waits in IDLE, so new mail is taken as it arrives.
    CaughtUp {
        at: jiff::Timestamp,
        idle: bool,
    },
}

/// Why a message was set aside without a ticket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuarantineKind {
    Oversized,
    Unparseable,
}

impl QuarantineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oversized => "oversized",
            Self::Unparseable => "unparseable",
        }
    }
}

/// Where a worker's events go: the one path of its facts to status, events,
/// metrics and the log. Called from the worker's tasks; must not block.
pub trait Observer: Send + Sync {
    fn observe(&self, event: WorkerEvent);
}

/// A channel observes by forwarding, for whoever follows a worker by hand.
impl Observer for mpsc::UnboundedSender<WorkerEvent> {
    fn observe(&self, event: WorkerEvent) {
        // Nobody listening is not an error.
        let _ = self.send(event);
    }
}

/// Told of every new ticket (not of re-deliveries of an old one, nor of
/// replies added to a ticket): the adapters hang acknowledgements here.
pub trait TicketHook: Send + Sync + std::fmt::Debug {
    /// `reference`: the sink's name for the ticket, when it gave one.
    fn ticket_created(&self, ticket: &Ticket, reference: Option<&str>);
}

/// Every worker spawned with it, to be aborted at once: a leader that can no
/// longer renew its Lease stops fetching before another replica may start.
/// An abort is safe: the cursor moves only after the sink took a ticket, and
/// sinks take the same ticket twice as one.
#[derive(Clone, Debug, Default)]
pub struct Fence(Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>);

impl Fence {
    fn register(&self, worker: tokio::task::AbortHandle) {
        let mut all = crate::sync::unpoisoned(&self.0);
        all.retain(|w| !w.is_finished());
        all.push(worker);
    }

    /// Aborts every worker still running; returns how many there were.
    pub fn abort_all(&self) -> usize {
        let all = std::mem::take(&mut *crate::sync::unpoisoned(&self.0));
        let running = all.iter().filter(|w| !w.is_finished()).count();
        for w in all {
            w.abort();
        }
        running
    }
}

/// Tuning that tests and benchmarks change; the defaults suit production.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Messages fetched, delivered and marked per round trip.
    pub batch: usize,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// IDLE is re-issued before the server's 29-minute limit.
    pub idle_refresh: Duration,
    pub on_ticket: Option<Arc<dyn TicketHook>>,
    /// Where the worker registers to be aborted at once.
    pub fence: Option<Fence>,
    /// Sign-ins at once and sessions per account (default: the process's).
    pub limits: SessionLimits,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            batch: 500,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            idle_refresh: Duration::from_secs(25 * 60),
            on_ticket: None,
            fence: None,
            limits: SessionLimits::default(),
        }
    }
}

/// A running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    shutdown: watch::Sender<bool>,
    join: JoinHandle<()>,
}

impl WorkerHandle {
    /// Stops taking new work, lets the message in flight finish, persists the
    /// cursor, and returns when the worker has ended.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.join.await;
    }
}

/// The least wait after a server turned a sign-in away as throttled: 30 to
/// 60 s, drawn at random so that the mailboxes of one account spread out.
fn throttled_wait() -> Duration {
    Duration::from_secs(30).mul_f64(1.0 + fastrand::f64())
}

/// Why a session ended early.
enum SessionEnd {
    Connect(Box<ConnectionReport>),
    /// The sink failed; `wait` is the pause it asked for, if any.
    Sink {
        message: String,
        wait: Option<Duration>,
    },
    Lost(Failure),
}

impl From<Failure> for SessionEnd {
    fn from(f: Failure) -> Self {
        Self::Lost(f)
    }
}

pub struct Worker {
    settings: IncomingSettings,
    sink: Arc<Sink>,
    store: Arc<dyn CursorStore>,
    key: String,
    observer: Arc<dyn Observer>,
    shutdown: watch::Receiver<bool>,
    options: WorkerOptions,
    backoff: Backoff,
    /// Locked by each batch in fetch order, released when it is judged.
    judging: Arc<tokio::sync::Mutex<Judging>>,
    /// Message-ID → ticket, filled by judging, saved with the cursor.
    threads: Arc<std::sync::Mutex<ThreadMap>>,
    /// DryRun keeps its cursor here, never on disk: switching to Active later
    /// starts where the last Active run stopped.
    dry_cursor: Option<Cursor>,
}

impl Worker {
    /// Starts a worker; its events go to `observer`.
    pub fn spawn(
        settings: IncomingSettings,
        sink: Arc<Sink>,
        store: Arc<dyn CursorStore>,
        observer: Arc<dyn Observer>,
        options: WorkerOptions,
    ) -> WorkerHandle {
        let (tx, rx) = watch::channel(false);
        let threads = Arc::new(std::sync::Mutex::new(ThreadMap::default()));
        let worker = Worker {
            judging: Arc::new(tokio::sync::Mutex::new(Judging::new(
                &settings,
                threads.clone(),
            ))),
            threads,
            dry_cursor: None,
            key: settings.ticket.mailbox.clone(),
            backoff: Backoff {
                attempt: 0,
                base: options.backoff_base,
                cap: options.backoff_cap,
            },
            settings,
            sink,
            store,
            observer,
            shutdown: rx,
            options,
        };
        let fence = worker.options.fence.clone();
        let join = tokio::spawn(worker.run());
        if let Some(fence) = fence {
            fence.register(join.abort_handle());
        }
        WorkerHandle { shutdown: tx, join }
    }

    fn emit(&self, event: WorkerEvent) {
        self.observer.observe(event);
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Sleeps, returning early (true) when asked to stop.
    async fn pause(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => self.stopping(),
            _ = self.shutdown.changed() => true,
        }
    }

    /// One of the account's sessions, waiting (and saying so) while other
    /// resources hold them all; none when asked to stop meanwhile.
    async fn session_slot(&mut self) -> Option<SessionSlot> {
        let limits = self.options.limits.clone();
        let server = &self.settings.server;
        let account = format!(
            "{:?}:{}@{}:{}",
            self.settings.protocol,
            server.credentials.username(),
            server.endpoint.host,
            server.endpoint.port
        )
        .to_lowercase();
        let provider = server.provider;
        let cap = match limits.try_session(&account, provider) {
            Ok(slot) => return Some(slot),
            Err(cap) => cap,
        };
        let failure = Failure::new(
            Reason::SessionLimit,
            format!(
                "all {cap} sessions this account allows on {} are in use by other resources signed in as {}; waiting for one to end",
                server.endpoint.host,
                server.credentials.username()
            ),
        );
        self.emit(WorkerEvent::ConnectionFailed {
            report: Probe::new().finish(Err(failure)),
            retry_in: Duration::ZERO,
        });
        tokio::select! {
            slot = limits.session(&account, provider) => Some(slot),
            _ = self.shutdown.changed() => None,
        }
    }

    /// One session. A panic in it — a parser meeting an answer it cannot
    /// handle (imap-proto slices some malformed status texts inside a
    /// character) — ends the session as a protocol error, to be retried like
    /// any other, instead of ending the worker.
    async fn session(&mut self) -> Result<(), SessionEnd> {
        let session = async {
            match self.settings.protocol {
                IncomingProtocol::Imap => self.imap_session().await,
                IncomingProtocol::Pop3 => self.pop3_session().await,
            }
        };
        std::panic::AssertUnwindSafe(session)
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(SessionEnd::Lost(Failure::new(
                    Reason::ProtocolError,
                    format!(
                        "the server sent an answer that could not be read ({what}); reconnecting"
                    ),
                )))
            })
    }

    async fn run(mut self) {
        while !self.stopping() {
            let Some(slot) = self.session_slot().await else {
                break;
            };
            let outcome = self.session().await;
            // Not held through the backoff or a POP3 poll's wait: another
            // resource may use it.
            drop(slot);
            let end = match outcome {
                // POP3 signs out after each pass and waits for the next.
                Ok(()) if self.settings.protocol == IncomingProtocol::Pop3 => {
                    if self.pause(self.settings.scan_interval).await {
                        break;
                    }
                    continue;
                }
                Ok(()) => continue,
                Err(end) => end,
            };
            let mut retry_in = self.backoff.next();
            if let SessionEnd::Connect(report) = &end
                && report.reason == Reason::Throttled
            {
                retry_in = retry_in.max(throttled_wait());
            }
            if let SessionEnd::Sink { wait: Some(w), .. } = &end {
                retry_in = retry_in.max(*w);
            }
            match end {
                SessionEnd::Connect(report) => self.emit(WorkerEvent::ConnectionFailed {
                    report: *report,
                    retry_in,
                }),
                SessionEnd::Sink { message, .. } => {
                    self.emit(WorkerEvent::SinkUnavailable { message, retry_in })
                }
                SessionEnd::Lost(failure) => {
                    let mut probe = Probe::new();
                    let _ = probe
                        .stage(ConnectionStage::Mailbox, async {
                            Err::<(), _>(failure.clone())
                        })
                        .await;
                    self.emit(WorkerEvent::ConnectionFailed {
                        report: probe.finish(Err(failure)),
                        retry_in,
                    });
                }
            }
            if self.pause(retry_in).await {
                break;
            }
        }
    }

    fn dry_run(&self) -> bool {
        self.settings.mode == Mode::DryRun
    }

    fn cursor_failure(e: impl std::fmt::Display) -> SessionEnd {
        SessionEnd::Lost(Failure::new(
            Reason::CursorStoreFailed,
            format!("the fetch cursor could not be read or saved, retrying: {e}"),
        ))
    }

    /// The saved cursor, and whether this is the first start (none saved).
    async fn load_cursor(&self) -> Result<(Cursor, bool), SessionEnd> {
        let saved = if self.dry_run() {
            self.dry_cursor.clone()
        } else {
            self.store
                .load(&self.key)
                .await
                .map_err(Self::cursor_failure)?
        };
        let first = saved.is_none();
        let cursor = saved.unwrap_or_default();
        // What this worker judged since it started is newer than what any
        // saved cursor holds.
        let mut threads = crate::sync::unpoisoned(&self.threads);
        if threads.is_empty() {
            *threads = cursor.threads.clone();
        }
        Ok((cursor, first))
    }

    async fn save_cursor(&mut self, cursor: &mut Cursor) -> Result<(), SessionEnd> {
        cursor.threads = crate::sync::unpoisoned(&self.threads).clone();
        if self.dry_run() {
            self.dry_cursor = Some(cursor.clone());
            return Ok(());
        }
        self.store
            .save(&self.key, cursor)
            .await
            .map_err(Self::cursor_failure)?;
        self.emit(WorkerEvent::CursorAdvanced(cursor.clone()));
        Ok(())
    }

    /// Moves the IMAP cursor to at least `uid` and saves it.
    async fn advance(
        &mut self,
        cursor: &mut Cursor,
        uid_validity: u32,
        last_uid: &mut Option<u32>,
        uid: u32,
    ) -> Result<(), SessionEnd> {
        let newest = last_uid.unwrap_or(0).max(uid);
        *last_uid = Some(newest);
        cursor.imap = Some(ImapCursor {
            uid_validity,
            last_uid: newest,
        });
        self.save_cursor(cursor).await
    }

    fn fetched(&self, count: usize) {
        self.emit(WorkerEvent::Fetched {
            count,
            at: jiff::Timestamp::now(),
        });
    }

    /// Hands tickets to the sink and waits; returns the indexes accepted.
    async fn deliver(&self, tickets: Arc<[Ticket]>) -> Result<Vec<usize>, SessionEnd> {
        let result = if tickets.is_empty() {
            Ok(Vec::new())
        } else {
            self.sink.deliver(tickets.clone()).await
        };
        self.settle(&tickets, result)
    }

    /// Reports each ticket of a delivered batch; returns the indexes the sink
    /// accepted.
    fn settle(
        &self,
        tickets: &[Ticket],
        result: Result<Vec<Delivery>, SinkError>,
    ) -> Result<Vec<usize>, SessionEnd> {
        let deliveries = result.map_err(|e| SessionEnd::Sink {
            message: e.to_string(),
            wait: e.retry_after(),
        })?;
        let mut accepted = Vec::new();
        for (i, (ticket, delivery)) in tickets.iter().zip(deliveries).enumerate() {
            // The sink's name for the ticket, for later replies by In-Reply-To.
            if let Delivery::Created { reference } = &delivery {
                crate::sync::unpoisoned(&self.threads).learn(ticket.root_key(), reference);
            }
            match delivery {
                Delivery::Accepted | Delivery::Created { .. } if ticket.reply_to.is_some() => {
                    let answered = match &delivery {
                        Delivery::Created { reference } => Some(reference.clone()),
                        _ => ticket.reply_to.as_ref().and_then(|r| r.ticket.clone()),
                    };
                    self.emit(WorkerEvent::ReplyDelivered {
                        key: ticket.idempotency_key.clone(),
                        message_id: ticket.message_id.clone(),
                        ticket: answered,
                        arrived: ticket.arrived_at.as_deref().and_then(|t| t.parse().ok()),
                    });
                    accepted.push(i);
                }
                Delivery::Accepted | Delivery::Created { .. } => {
                    self.emit(WorkerEvent::TicketCreated {
                        key: ticket.idempotency_key.clone(),
                        message_id: ticket.message_id.clone(),
                        arrived: ticket.arrived_at.as_deref().and_then(|t| t.parse().ok()),
                    });
                    if let Some(hook) = &self.options.on_ticket {
                        let reference = match &delivery {
                            Delivery::Created { reference } => Some(reference.as_str()),
                            _ => None,
                        };
                        hook.ticket_created(ticket, reference);
                    }
                    accepted.push(i);
                }
                // Taken before (a crash between delivery and marking): mark it
                // processed now, without a second ticket or acknowledgement.
                Delivery::Duplicate => accepted.push(i),
                Delivery::Rejected { reason } => self.emit(WorkerEvent::TicketRejected {
                    message_id: ticket.message_id.clone(),
                    reason,
                }),
            }
        }
        Ok(accepted)
    }

    fn quarantined(&self, kind: QuarantineKind, reason: String) {
        self.emit(WorkerEvent::Quarantined { kind, reason });
    }
}
