//! The fetch worker behind an IncomingEmailServer: fetch new mail, map it to
//! tickets, hand them to the sink, and only after the sink accepted them apply
//! afterProcessing and move the durable cursor. Real time with IMAP IDLE, else
//! polling. Connection and sink failures retry with capped exponential backoff
//! and jitter; one bad message is quarantined (IMAP) or skipped (POP3) and never
//! blocks the rest.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::imap::{self, ImapSession};
use super::judging::{Judged, Judging, Outcome};
use super::pop3::Pop3;
use super::settings::IncomingSettings;
use crate::api::{AfterProcessing, ConnectionStage, IncomingProtocol, Mode};
use crate::connection::{ConnectionReport, Failure, Probe, Reason, within};
use crate::filter::{RejectionLog, Verdict};
use crate::sinks::{Delivery, Sink, SinkError};
use crate::state::{Cursor, CursorStore, ImapCursor};
use crate::ticket::Ticket;

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
    Fetched {
        count: usize,
    },
    /// Every message is judged once: what became (or, in DryRun, would become)
    /// of it and which rule decided.
    Judged {
        message_id: Option<String>,
        sender: Option<String>,
        verdict: Verdict,
        dry_run: bool,
    },
    TicketCreated {
        key: String,
        message_id: Option<String>,
    },
    /// The sink refused the ticket for good; the mail is left in place.
    TicketRejected {
        message_id: Option<String>,
        reason: String,
    },
    /// Unparseable or oversized: moved to the quarantine folder (IMAP) or skipped (POP3).
    Quarantined {
        message_id: Option<String>,
        reason: String,
    },
    SinkUnavailable {
        message: String,
        retry_in: Duration,
    },
    CursorAdvanced(Cursor),
    Stopped,
}

/// Counters of one worker.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub fetched: AtomicU64,
    pub tickets_created: AtomicU64,
    pub rejected: AtomicU64,
    pub failed: AtomicU64,
    pub last_fetch_at: Mutex<Option<jiff::Timestamp>>,
    /// Rejections (filter, loop protection, sender), with counts per rule.
    pub rejections: Mutex<RejectionLog>,
}

/// Told of every new ticket (not of re-deliveries of an old one): the adapters
/// hang acknowledgements here.
pub trait TicketHook: Send + Sync + std::fmt::Debug {
    fn ticket_created(&self, ticket: &Ticket);
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
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            batch: 500,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            idle_refresh: Duration::from_secs(25 * 60),
            on_ticket: None,
        }
    }
}

/// A running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    shutdown: watch::Sender<bool>,
    join: JoinHandle<()>,
    pub stats: Arc<WorkerStats>,
}

impl WorkerHandle {
    /// Stops taking new work, lets the message in flight finish, persists the
    /// cursor, and returns when the worker has ended.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.join.await;
    }
}

/// Most message bytes fetched in one batch (a single larger message, within
/// maxMessageSize, is a batch of its own): bounds memory with big mail.
const BATCH_BYTES: u64 = 8 * 1024 * 1024;

/// Splits `(UID, size)` pairs, in order, into batches of at most `count`
/// messages and, apart from a single large message, `bytes` bytes. Messages
/// over `max` are never fetched and count nothing.
fn batches(sizes: &[(u32, u64)], count: usize, bytes: u64, max: u64) -> Vec<&[(u32, u64)]> {
    let mut out = Vec::new();
    let (mut start, mut held) = (0, 0u64);
    for (i, (_, size)) in sizes.iter().enumerate() {
        let size = if *size > max { 0 } else { *size };
        let full = i - start >= count.max(1) || (i > start && held + size > bytes);
        if full {
            out.push(&sizes[start..i]);
            (start, held) = (i, 0);
        }
        held += size;
    }
    if start < sizes.len() {
        out.push(&sizes[start..]);
    }
    out
}

/// Batches judged and written while the next one is fetched: two, so that
/// the ticket writer works on one while the other waits for the disk.
const IN_FLIGHT: usize = 2;

/// A batch being judged and delivered: the judged batch and what the sink
/// said (nothing in DryRun).
type BatchWork = JoinHandle<Result<(Judged, Result<Vec<Delivery>, SinkError>), String>>;

/// A fetched IMAP batch, judged and delivered in the background.
struct FetchedChunk {
    work: BatchWork,
    /// Oversized messages, never downloaded.
    quarantine: Vec<(u32, String)>,
    newest: u32,
}

/// Why a session ended early.
enum SessionEnd {
    Connect(Box<ConnectionReport>),
    Sink(String),
    Lost(Failure),
}

struct Backoff {
    attempt: u32,
    base: Duration,
    cap: Duration,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        // Jitter keeps many mailboxes of one server from retrying in lockstep.
        exp.min(self.cap).mul_f64(0.8 + fastrand::f64() * 0.4)
    }
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

pub struct Worker {
    settings: IncomingSettings,
    sink: Arc<Sink>,
    store: Arc<dyn CursorStore>,
    key: String,
    events: mpsc::UnboundedSender<WorkerEvent>,
    stats: Arc<WorkerStats>,
    shutdown: watch::Receiver<bool>,
    options: WorkerOptions,
    backoff: Backoff,
    /// Locked by each batch in fetch order, released when it is judged.
    judging: Arc<tokio::sync::Mutex<Judging>>,
    /// DryRun keeps its cursor here, never on disk: switching to Active later
    /// starts where the last Active run stopped.
    dry_cursor: Option<Cursor>,
}

fn lost(what: &str, e: impl std::fmt::Display) -> SessionEnd {
    SessionEnd::Lost(imap::protocol_error(what, e))
}

/// `1,2,3,7` → `1:3,7`.
fn uid_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        });
        i += 1;
    }
    out.join(",")
}

/// UID sets covering sorted `uids`, each short enough for one command
/// (servers must take lines of 8,192 octets): a run of UIDs costs a few
/// octets, scattered UIDs up to eleven each.
fn uid_sets(uids: &[u32]) -> Vec<String> {
    let mut sets: Vec<String> = Vec::new();
    // 500 UIDs are at most 5,500 octets, however scattered.
    for part in uids.chunks(500) {
        let set = uid_set(part);
        match sets.last_mut() {
            Some(last) if last.len() + 1 + set.len() <= 4000 => {
                last.push(',');
                last.push_str(&set);
            }
            _ => sets.push(set),
        }
    }
    sets
}

impl Worker {
    /// Starts a worker; events go to `events`.
    pub fn spawn(
        settings: IncomingSettings,
        sink: Arc<Sink>,
        store: Arc<dyn CursorStore>,
        events: mpsc::UnboundedSender<WorkerEvent>,
        options: WorkerOptions,
    ) -> WorkerHandle {
        let (tx, rx) = watch::channel(false);
        let stats = Arc::new(WorkerStats::default());
        let judging = Judging::new(&settings, stats.clone(), events.clone());
        let worker = Worker {
            judging: Arc::new(tokio::sync::Mutex::new(judging)),
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
            events,
            stats: stats.clone(),
            shutdown: rx,
            options,
        };
        WorkerHandle {
            shutdown: tx,
            join: tokio::spawn(worker.run()),
            stats,
        }
    }

    fn emit(&self, event: WorkerEvent) {
        // Nobody listening is not an error: status is then simply not kept.
        let _ = self.events.send(event);
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

    async fn run(mut self) {
        while !self.stopping() {
            let outcome = match self.settings.protocol {
                IncomingProtocol::Imap => self.imap_session().await,
                IncomingProtocol::Pop3 => self.pop3_session().await,
            };
            let retry_in = match outcome {
                Ok(()) => continue,
                Err(SessionEnd::Connect(report)) => {
                    let retry_in = self.backoff.next();
                    self.emit(WorkerEvent::ConnectionFailed {
                        report: *report,
                        retry_in,
                    });
                    retry_in
                }
                Err(SessionEnd::Sink(message)) => {
                    let retry_in = self.backoff.next();
                    self.emit(WorkerEvent::SinkUnavailable { message, retry_in });
                    retry_in
                }
                Err(SessionEnd::Lost(failure)) => {
                    let retry_in = self.backoff.next();
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
                    retry_in
                }
            };
            if self.pause(retry_in).await {
                break;
            }
        }
        self.emit(WorkerEvent::Stopped);
    }

    fn dry_run(&self) -> bool {
        self.settings.mode == Mode::DryRun
    }

    async fn load_cursor(&self) -> Result<Cursor, SessionEnd> {
        if self.dry_run() {
            return Ok(self.dry_cursor.clone().unwrap_or_default());
        }
        self.store
            .load(&self.key)
            .await
            .map(Option::unwrap_or_default)
            .map_err(|e| SessionEnd::Lost(Failure::new(Reason::ProtocolError, e.to_string())))
    }

    async fn save_cursor(&mut self, cursor: &Cursor) -> Result<(), SessionEnd> {
        if self.dry_run() {
            self.dry_cursor = Some(cursor.clone());
            return Ok(());
        }
        self.store
            .save(&self.key, cursor)
            .await
            .map_err(|e| SessionEnd::Lost(Failure::new(Reason::ProtocolError, e.to_string())))?;
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

    fn mark_fetched(&self, count: usize) {
        self.stats
            .fetched
            .fetch_add(count as u64, Ordering::Relaxed);
        if let Ok(mut at) = self.stats.last_fetch_at.lock() {
            *at = Some(jiff::Timestamp::now());
        }
        self.emit(WorkerEvent::Fetched { count });
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
        let deliveries = result.map_err(|e| SessionEnd::Sink(e.to_string()))?;
        let mut accepted = Vec::new();
        for (i, (ticket, delivery)) in tickets.iter().zip(deliveries).enumerate() {
            match delivery {
                Delivery::Accepted => {
                    self.stats.tickets_created.fetch_add(1, Ordering::Relaxed);
                    self.emit(WorkerEvent::TicketCreated {
                        key: ticket.idempotency_key.clone(),
                        message_id: ticket.message_id.clone(),
                    });
                    if let Some(hook) = &self.options.on_ticket {
                        hook.ticket_created(ticket);
                    }
                    accepted.push(i);
                }
                // Taken before (a crash between delivery and marking): mark it
                // processed now, without a second ticket or acknowledgement.
                Delivery::Duplicate => accepted.push(i),
                Delivery::Rejected { reason } => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    self.emit(WorkerEvent::TicketRejected {
                        message_id: ticket.message_id.clone(),
                        reason,
                    });
                }
            }
        }
        Ok(accepted)
    }

    fn quarantined(&self, message_id: Option<String>, reason: String) {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        self.emit(WorkerEvent::Quarantined { message_id, reason });
    }

    async fn imap_session(&mut self) -> Result<(), SessionEnd> {
        let io = self.settings.server.timeouts.io;
        let mut probe = Probe::new();
        let mut session = match imap::connect(&self.settings.server, &mut probe).await {
            Ok(s) => s,
            Err(f) => return Err(SessionEnd::Connect(Box::new(probe.finish(Err(f))))),
        };
        let mailbox = self.settings.mailbox.clone();
        let dry_run = self.dry_run();
        let selected = probe
            .stage(
                ConnectionStage::Mailbox,
                within(io, "selecting the mailbox", async {
                    // DryRun opens the mailbox read-only: nothing can change.
                    if dry_run {
                        session.examine(&mailbox).await
                    } else {
                        session.select(&mailbox).await
                    }
                    .map_err(|e| imap::mailbox_failure(&mailbox, e))
                }),
            )
            .await;
        let caps: HashSet<String> = probe
            .capabilities
            .iter()
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let selected = match selected {
            Ok(s) => s,
            Err(f) => return Err(SessionEnd::Connect(Box::new(probe.finish(Err(f))))),
        };
        self.emit(WorkerEvent::Connected(probe.finish(Ok(()))));
        self.backoff.reset();

        let uid_validity = selected.uid_validity.unwrap_or(0);
        let uid_next = selected.uid_next.unwrap_or(1);
        let mut cursor = self.load_cursor().await?;
        // First start, or the server renumbered the mailbox (UIDVALIDITY changed):
        // what was processed can no longer be told by UID, so take what
        // afterProcessing has not touched (unseen mail, or everything left when
        // processed mail is moved or deleted). Idempotency keys keep the sink
        // free of duplicates either way.
        let mut last_uid = cursor
            .imap
            .filter(|c| c.uid_validity == uid_validity)
            .map(|c| c.last_uid);

        let idle = self.settings.real_time && caps.contains("IDLE");
        self.emit(WorkerEvent::Scanning(if idle {
            Scanning::Idle
        } else {
            Scanning::Polling {
                every: self.settings.scan_interval,
                reason: if self.settings.real_time {
                    "the server does not offer IDLE".into()
                } else {
                    "realTimeScanning is off".into()
                },
            }
        }));

        let mut created_folders = HashSet::new();
        loop {
            let query = match last_uid {
                Some(last) => format!("UID {}:*", last.saturating_add(1)),
                None if self.settings.after_processing == AfterProcessing::MarkSeen => {
                    "UNSEEN".into()
                }
                None => "ALL".into(),
            };
            let mut uids: Vec<u32> = within(io, "searching new mail", async {
                session
                    .uid_search(&query)
                    .await
                    .map_err(|e| imap::protocol_error("UID SEARCH", e))
            })
            .await
            .map_err(SessionEnd::Lost)?
            .into_iter()
            // `UID n:*` also returns the last message when n is past it.
            .filter(|uid| last_uid.is_none_or(|last| *uid > last))
            .collect();
            uids.sort_unstable();

            // While one batch is judged (on a blocking thread) and written, the
            // next one is fetched; a batch is marked processed, and the cursor
            // moved past it, only after its tickets were accepted.
            let initial_pass = last_uid.is_none();
            let sizes = self.sizes(&mut session, &uids).await?;
            let mut in_flight: VecDeque<FetchedChunk> = VecDeque::new();
            let max = self.settings.max_message_size;
            let mut chunks = batches(&sizes, self.options.batch, BATCH_BYTES, max).into_iter();
            loop {
                let next = if self.stopping() { None } else { chunks.next() };
                let last = next.is_none();
                if let Some(chunk) = next {
                    let fetched = self.fetch_chunk(&mut session, chunk).await?;
                    in_flight.push_back(fetched);
                }
                // Completed in fetch order: the cursor only ever moves forward
                // over batches whose tickets were all accepted.
                while in_flight.len() > IN_FLIGHT || (last && !in_flight.is_empty()) {
                    let Some(oldest) = in_flight.pop_front() else {
                        break;
                    };
                    let newest = oldest.newest;
                    self.complete_chunk(&mut session, oldest, &caps, &mut created_folders)
                        .await?;
                    self.advance(&mut cursor, uid_validity, &mut last_uid, newest)
                        .await?;
                }
                if last {
                    break;
                }
            }
            if self.stopping() {
                return Ok(());
            }
            // After the first pass everything below UIDNEXT (as SELECT reported
            // it) has been judged or was deliberately left (already seen): the
            // cursor moves past it, so read mail with a higher UID than the
            // newest unseen one is not taken later.
            if initial_pass {
                self.advance(
                    &mut cursor,
                    uid_validity,
                    &mut last_uid,
                    uid_next.saturating_sub(1),
                )
                .await?;
            }
            if self.stopping() {
                let _ = within(io, "logging out", async {
                    session
                        .logout()
                        .await
                        .map_err(|e| Failure::new(Reason::ProtocolError, e.to_string()))
                })
                .await;
                return Ok(());
            }
            session = if idle {
                self.idle(session).await?
            } else {
                if self.pause(self.settings.scan_interval).await {
                    return Ok(());
                }
                within(io, "polling", async {
                    session
                        .noop()
                        .await
                        .map_err(|e| imap::protocol_error("NOOP", e))
                })
                .await
                .map_err(SessionEnd::Lost)?;
                session
            };
        }
    }

    /// Waits in IDLE until the server reports a change, the refresh time passes,
    /// or the worker is asked to stop.
    async fn idle(&mut self, session: ImapSession) -> Result<ImapSession, SessionEnd> {
        let io = self.settings.server.timeouts.io;
        let mut handle = session.idle();
        within(io, "starting IDLE", async {
            handle
                .init()
                .await
                .map_err(|e| imap::protocol_error("IDLE", e))
        })
        .await
        .map_err(SessionEnd::Lost)?;
        {
            let (wait, stop) = handle.wait_with_timeout(self.options.idle_refresh);
            tokio::pin!(wait);
            let mut shutdown = self.shutdown.clone();
            let result = tokio::select! {
                r = &mut wait => r,
                _ = shutdown.changed() => {
                    drop(stop);
                    wait.await
                }
            };
            result.map_err(|e| lost("IDLE", e))?;
        }
        within(io, "ending IDLE", async {
            handle
                .done()
                .await
                .map_err(|e| imap::protocol_error("DONE", e))
        })
        .await
        .map_err(SessionEnd::Lost)
    }

    async fn ensure_folder(
        &self,
        session: &mut ImapSession,
        folder: &str,
        created: &mut HashSet<String>,
    ) -> Result<(), SessionEnd> {
        if created.contains(folder) {
            return Ok(());
        }
        // CREATE of an existing folder fails harmlessly; the MOVE that follows tells.
        let _ = within(
            self.settings.server.timeouts.io,
            "creating a folder",
            async {
                session
                    .create(folder)
                    .await
                    .map_err(|e| Failure::new(Reason::ProtocolError, e.to_string()))
            },
        )
        .await;
        created.insert(folder.to_owned());
        Ok(())
    }

    async fn move_uids(
        &self,
        session: &mut ImapSession,
        uids: &[u32],
        folder: &str,
        caps: &HashSet<String>,
        created: &mut HashSet<String>,
    ) -> Result<(), SessionEnd> {
        if uids.is_empty() {
            return Ok(());
        }
        self.ensure_folder(session, folder, created).await?;
        let set = uid_set(uids);
        let io = self.settings.server.timeouts.io;
        if caps.contains("MOVE") {
            within(io, "moving mail", async {
                session
                    .uid_mv(&set, folder)
                    .await
                    .map_err(|e| imap::protocol_error(&format!("UID MOVE to {folder:?}"), e))
            })
            .await
            .map_err(SessionEnd::Lost)
        } else {
            within(io, "copying mail", async {
                session
                    .uid_copy(&set, folder)
                    .await
                    .map_err(|e| imap::protocol_error(&format!("UID COPY to {folder:?}"), e))
            })
            .await
            .map_err(SessionEnd::Lost)?;
            self.delete_uids(session, uids, caps).await
        }
    }

    async fn delete_uids(
        &self,
        session: &mut ImapSession,
        uids: &[u32],
        caps: &HashSet<String>,
    ) -> Result<(), SessionEnd> {
        let set = uid_set(uids);
        within(self.settings.server.timeouts.io, "deleting mail", async {
            let flagged: Vec<_> = session
                .uid_store(&set, "+FLAGS.SILENT (\\Deleted)")
                .await
                .map_err(|e| imap::protocol_error("UID STORE", e))?
                .try_collect()
                .await
                .map_err(|e| imap::protocol_error("UID STORE", e))?;
            drop(flagged);
            // UID EXPUNGE removes only our messages; plain EXPUNGE is the fallback.
            if caps.contains("UIDPLUS") {
                let _: Vec<_> = session
                    .uid_expunge(&set)
                    .await
                    .map_err(|e| imap::protocol_error("UID EXPUNGE", e))?
                    .try_collect()
                    .await
                    .map_err(|e| imap::protocol_error("UID EXPUNGE", e))?;
            } else {
                let _: Vec<_> = session
                    .expunge()
                    .await
                    .map_err(|e| imap::protocol_error("EXPUNGE", e))?
                    .try_collect()
                    .await
                    .map_err(|e| imap::protocol_error("EXPUNGE", e))?;
            }
            Ok(())
        })
        .await
        .map_err(SessionEnd::Lost)
    }

    /// The sizes of the new mail, in UID order, from the server's index: no
    /// message is downloaded to learn its size.
    async fn sizes(
        &self,
        session: &mut ImapSession,
        uids: &[u32],
    ) -> Result<Vec<(u32, u64)>, SessionEnd> {
        let mut known: HashMap<u32, u64> = HashMap::with_capacity(uids.len());
        for set in uid_sets(uids) {
            let fetched = self
                .fetch_all(session, &set, "(UID RFC822.SIZE)", "reading message sizes")
                .await?;
            known.extend(
                fetched
                    .iter()
                    .filter_map(|f| Some((f.uid?, u64::from(f.size?)))),
            );
        }
        // A message the answer leaves out is still fetched (and judged by its
        // body): it is never skipped.
        Ok(uids
            .iter()
            .map(|uid| (*uid, known.get(uid).copied().unwrap_or(0)))
            .collect())
    }

    /// `UID FETCH` of `set` with `items`, every answer collected.
    async fn fetch_all(
        &self,
        session: &mut ImapSession,
        set: &str,
        items: &str,
        what: &str,
    ) -> Result<Vec<async_imap::types::Fetch>, SessionEnd> {
        within(self.settings.server.timeouts.io, what, async {
            session
                .uid_fetch(set, items)
                .await
                .map_err(|e| imap::protocol_error("UID FETCH", e))?
                .try_collect()
                .await
                .map_err(|e| imap::protocol_error("UID FETCH", e))
        })
        .await
        .map_err(SessionEnd::Lost)
    }

    /// Fetches a batch (never its oversized messages), and judges and delivers
    /// it in the background.
    async fn fetch_chunk(
        &mut self,
        session: &mut ImapSession,
        chunk: &[(u32, u64)],
    ) -> Result<FetchedChunk, SessionEnd> {
        let max = self.settings.max_message_size;
        let (too_big, fits): (Vec<_>, Vec<_>) =
            chunk.iter().copied().partition(|(_, size)| *size > max);
        let quarantine: Vec<(u32, String)> = too_big
            .iter()
            .map(|(uid, size)| {
                (
                    *uid,
                    format!("message of {size} bytes is over maxMessageSize ({max} bytes)"),
                )
            })
            .collect();
        let fits: Vec<u32> = fits.into_iter().map(|(uid, _)| uid).collect();
        let bodies = if fits.is_empty() {
            Vec::new()
        } else {
            self.fetch_all(
                session,
                &uid_set(&fits),
                "(UID BODY.PEEK[])",
                "fetching messages",
            )
            .await?
        };
        self.mark_fetched(bodies.len() + too_big.len());

        // Waits for the previous batch's judging (normally long done): batches
        // are judged in fetch order.
        let mut judging = self.judging.clone().lock_owned().await;
        let sink = self.sink.clone();
        let dry_run = self.dry_run();
        let work = tokio::spawn(async move {
            let judged = tokio::task::spawn_blocking(move || {
                let messages = bodies
                    .iter()
                    .filter_map(|f| Some((f.uid?, f.body().unwrap_or_default())));
                judging.batch(messages, jiff::Timestamp::now())
            })
            .await
            .map_err(|e| format!("judging a batch stopped: {e}"))?;
            let delivered = if dry_run || judged.tickets.is_empty() {
                Ok(Vec::new())
            } else {
                sink.deliver(judged.tickets.clone()).await
            };
            Ok((judged, delivered))
        });
        Ok(FetchedChunk {
            work,
            quarantine,
            newest: chunk.iter().map(|(uid, _)| *uid).max().unwrap_or(0),
        })
    }

    /// Waits for a batch's tickets, then applies afterProcessing to what the sink
    /// accepted and to what was rejected, and quarantines the bad messages.
    async fn complete_chunk(
        &mut self,
        session: &mut ImapSession,
        fetched: FetchedChunk,
        caps: &HashSet<String>,
        created: &mut HashSet<String>,
    ) -> Result<(), SessionEnd> {
        let io = self.settings.server.timeouts.io;
        let (judged, delivered) = fetched
            .work
            .await
            .map_err(|e| format!("ticket delivery stopped: {e}"))
            .and_then(|r| r)
            .map_err(SessionEnd::Sink)?;
        let mut quarantine = fetched.quarantine;
        quarantine.extend(judged.unparseable);
        // Neither an oversized nor an unparseable message has a Message-ID
        // to report: the one was never downloaded, the other could not be parsed.
        if self.dry_run() {
            let folder = &self.settings.quarantine_folder;
            for (uid, reason) in quarantine {
                self.quarantined(
                    None,
                    format!("(dry run) UID {uid} would be moved to {folder:?}: {reason}"),
                );
            }
            return Ok(());
        }
        let accepted = self.settle(&judged.tickets, delivered)?;
        // Rejected mail gets the same afterProcessing as accepted mail: it is
        // judged once, and a rejection alone never deletes anything.
        let done: Vec<u32> = accepted
            .iter()
            .map(|i| judged.ticket_uids[*i])
            .chain(judged.rejected_uids)
            .collect();
        if !done.is_empty() {
            match self.settings.after_processing {
                AfterProcessing::MarkSeen => {
                    let set = uid_set(&done);
                    within(io, "marking mail seen", async {
                        session
                            .uid_store(&set, "+FLAGS.SILENT (\\Seen)")
                            .await
                            .map_err(|e| imap::protocol_error("UID STORE", e))?
                            .try_collect::<Vec<_>>()
                            .await
                            .map_err(|e| imap::protocol_error("UID STORE", e))
                    })
                    .await
                    .map_err(SessionEnd::Lost)?;
                }
                AfterProcessing::Move => {
                    let folder = self.settings.move_to.clone().unwrap_or_default();
                    self.move_uids(session, &done, &folder, caps, created)
                        .await?;
                }
                AfterProcessing::Delete => self.delete_uids(session, &done, caps).await?,
                AfterProcessing::Keep => {}
            }
        }
        if !quarantine.is_empty() {
            let folder = self.settings.quarantine_folder.clone();
            let uids: Vec<u32> = quarantine.iter().map(|(uid, _)| *uid).collect();
            self.move_uids(session, &uids, &folder, caps, created)
                .await?;
            for (uid, reason) in quarantine {
                self.quarantined(None, format!("UID {uid} moved to {folder:?}: {reason}"));
            }
        }
        Ok(())
    }

    async fn pop3_session(&mut self) -> Result<(), SessionEnd> {
        let mut probe = Probe::new();
        let mut pop = match Pop3::connect(&self.settings.server, &mut probe).await {
            Ok(p) => p,
            Err(f) => return Err(SessionEnd::Connect(Box::new(probe.finish(Err(f))))),
        };
        if let Err(f) = probe.stage(ConnectionStage::Mailbox, pop.stat()).await {
            return Err(SessionEnd::Connect(Box::new(probe.finish(Err(f)))));
        }
        self.emit(WorkerEvent::Connected(probe.finish(Ok(()))));
        self.backoff.reset();
        self.emit(WorkerEvent::Scanning(Scanning::Polling {
            every: self.settings.scan_interval,
            reason: "POP3 has no IDLE".into(),
        }));

        let mut cursor = self.load_cursor().await?;
        let uidl = pop.uidl().await.map_err(SessionEnd::Lost)?;
        let sizes: HashMap<u32, u64> = pop
            .list()
            .await
            .map_err(SessionEnd::Lost)?
            .into_iter()
            .collect();
        // Forget messages that are gone from the server: the set stays small.
        let present: HashSet<&str> = uidl.iter().map(|(_, u)| u.as_str()).collect();
        cursor.pop3_seen.retain(|u| present.contains(u.as_str()));
        let new: Vec<(u32, String)> = uidl
            .iter()
            .filter(|(_, u)| !cursor.pop3_seen.contains(u))
            .cloned()
            .collect();
        let max = self.settings.max_message_size;

        for chunk in new.chunks(self.options.batch.max(1)) {
            if self.stopping() {
                break;
            }
            let mut tickets = Vec::new();
            let mut numbers = Vec::new();
            let mut rejected = Vec::new();
            let now = jiff::Timestamp::now();
            for (n, uid) in chunk {
                let size = sizes.get(n).copied().unwrap_or(0);
                if size > max {
                    self.quarantined(None, format!("POP3 message {uid} of {size} bytes is over maxMessageSize ({max} bytes): skipped, left on the server"));
                    continue;
                }
                let raw = pop.retr(*n, size).await.map_err(SessionEnd::Lost)?;
                let outcome = self.judging.lock().await.message(&raw, now);
                match outcome {
                    Outcome::Ticket(t) => {
                        tickets.push(*t);
                        numbers.push((*n, uid.clone()));
                    }
                    Outcome::Rejected => rejected.push(*n),
                    Outcome::Unparseable(e) => self.quarantined(
                        None,
                        format!("POP3 message {uid}: {e}: skipped, left on the server"),
                    ),
                }
            }
            self.mark_fetched(chunk.len());
            if !self.dry_run() {
                let accepted = self.deliver(tickets.into()).await?;
                if self.settings.after_processing == AfterProcessing::Delete {
                    let done = accepted.iter().map(|i| numbers[*i].0).chain(rejected);
                    for n in done {
                        pop.dele(n).await.map_err(SessionEnd::Lost)?;
                    }
                }
            }
            // Every message of the chunk has been judged once: accepted, refused
            // by the sink, or skipped. None is taken again.
            cursor
                .pop3_seen
                .extend(chunk.iter().map(|(_, uid)| uid.clone()));
            self.save_cursor(&cursor).await?;
        }
        // QUIT commits the deletions.
        pop.quit().await.map_err(SessionEnd::Lost)?;
        self.pause(self.settings.scan_interval).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bounded_by_count_and_bytes() {
        let uids = |b: &[&[(u32, u64)]]| -> Vec<Vec<u32>> {
            b.iter()
                .map(|c| c.iter().map(|(u, _)| *u).collect())
                .collect()
        };
        let small: Vec<(u32, u64)> = (1..=7).map(|u| (u, 10)).collect();
        assert_eq!(
            uids(&batches(&small, 3, 1000, 100)),
            [vec![1, 2, 3], vec![4, 5, 6], vec![7]]
        );
        assert_eq!(
            uids(&batches(&small, 10, 25, 100)),
            [vec![1, 2], vec![3, 4], vec![5, 6], vec![7]]
        );
        // A message larger than a batch's bytes goes alone; one over the
        // maximum is never fetched and takes no room.
        let mixed = [(1, 10), (2, 90), (3, 10), (4, 5000), (5, 10), (6, 10)];
        assert_eq!(
            uids(&batches(&mixed, 10, 50, 100)),
            [vec![1], vec![2], vec![3, 4, 5, 6]]
        );
        assert!(batches(&[], 10, 50, 100).is_empty());
    }

    #[test]
    fn uid_sets_are_compressed() {
        assert_eq!(uid_set(&[7, 1, 2, 3, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set(&[5]), "5");
    }

    #[test]
    fn long_uid_lists_are_split_into_short_commands() {
        let run: Vec<u32> = (1..=10_000).collect();
        assert_eq!(uid_sets(&run).len(), 1, "{:?}", uid_sets(&run));
        let scattered: Vec<u32> = (0..5000).map(|i| 4_000_000_000 + 2 * i).collect();
        let sets = uid_sets(&scattered);
        assert!(sets.len() > 1);
        assert!(
            sets.iter().all(|s| s.len() <= 5500),
            "{:?}",
            sets.iter().map(String::len).collect::<Vec<_>>()
        );
        let covered: Vec<u32> = sets
            .iter()
            .flat_map(|s| s.split(','))
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(covered, scattered);
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff {
            attempt: 0,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(10),
        };
        let first = b.next();
        assert!(
            first >= Duration::from_millis(800) && first <= Duration::from_millis(1200),
            "{first:?}"
        );
        for _ in 0..10 {
            b.next();
        }
        let capped = b.next();
        assert!(
            capped <= Duration::from_secs(12) && capped >= Duration::from_secs(8),
            "{capped:?}"
        );
        b.reset();
        assert!(b.next() <= Duration::from_millis(1200));
    }
}
