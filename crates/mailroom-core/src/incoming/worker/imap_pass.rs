//! One IMAP session of the worker: sign in, open the mailbox, then take new
//! mail pass after pass, waiting in IDLE (or polling) between passes. While one
//! batch is judged (on a blocking thread) and written, the next is fetched;
//! batches complete in fetch order, so the cursor only moves forward over
//! batches whose tickets were all accepted.

use std::collections::VecDeque;

use tokio::task::JoinHandle;

use super::{QuarantineKind, Scanning, SessionEnd, Worker, WorkerEvent};
use crate::connection::Probe;
use crate::incoming::imap::{self, ImapMailbox};
use crate::incoming::judging::Judged;
use crate::incoming::plan::{BATCH_BYTES, batches};
use crate::sinks::{Delivery, SinkError};
use crate::vocab::{AfterProcessing, ConnectionStage, FirstStart};

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
    quarantine: Vec<(u32, QuarantineKind, String)>,
    newest: u32,
}

impl Worker {
    pub(super) async fn imap_session(&mut self) -> Result<(), SessionEnd> {
        let io = self.settings.server.timeouts.io;
        let mut probe = Probe::new();
        let turn = self.options.limits.connecting().await;
        let session = match imap::connect(&self.settings.server, &mut probe).await {
            Ok(s) => s,
            Err(f) => return Err(SessionEnd::Connect(Box::new(probe.finish(Err(f))))),
        };
        let mut mailbox = ImapMailbox::new(session, io, &probe.capabilities);
        let name = self.settings.mailbox.clone();
        // DryRun opens the mailbox read-only: nothing can change.
        let dry_run = self.dry_run();
        let selected = probe
            .stage(ConnectionStage::Mailbox, mailbox.open(&name, dry_run))
            .await;
        let selected = match selected {
            Ok(s) => s,
            Err(f) => return Err(SessionEnd::Connect(Box::new(probe.finish(Err(f))))),
        };
        drop(turn);
        self.emit(WorkerEvent::Connected(probe.finish(Ok(()))));
        self.backoff.reset();

        let uid_validity = selected.uid_validity.unwrap_or(0);
        let uid_next = selected.uid_next.unwrap_or(1);
        let (mut cursor, first_start) = self.load_cursor().await?;
        // First start, or the server renumbered the mailbox (UIDVALIDITY changed):
        // what was processed can no longer be told by UID, so take what
        // afterProcessing has not touched (unseen mail, or everything left when
        // processed mail is moved or deleted). Idempotency keys keep the sink
        // free of duplicates either way.
        let mut last_uid = cursor
            .imap
            .filter(|c| c.uid_validity == uid_validity)
            .map(|c| c.last_uid);
        let first_start = first_start.then_some(self.settings.first_start);
        if first_start == Some(FirstStart::NewOnly) {
            // Nothing already there is taken: the cursor starts past it.
            self.advance(
                &mut cursor,
                uid_validity,
                &mut last_uid,
                uid_next.saturating_sub(1),
            )
            .await?;
        }

        let idle = self.settings.real_time && mailbox.offers("IDLE");
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

        loop {
            let query = match last_uid {
                Some(last) => format!("UID {}:*", last.saturating_add(1)),
                None if self.settings.after_processing == AfterProcessing::MarkSeen
                    && first_start != Some(FirstStart::All) =>
                {
                    "UNSEEN".into()
                }
                None => "ALL".into(),
            };
            let mut uids: Vec<u32> = mailbox
                .search(&query)
                .await?
                .into_iter()
                // `UID n:*` also returns the last message when n is past it.
                .filter(|uid| last_uid.is_none_or(|last| *uid > last))
                .collect();
            uids.sort_unstable();

            let initial_pass = last_uid.is_none();
            let sizes = mailbox.sizes(&uids).await?;
            let mut in_flight: VecDeque<FetchedChunk> = VecDeque::new();
            let max = self.settings.max_message_size;
            let mut chunks = batches(&sizes, self.options.batch, BATCH_BYTES, max).into_iter();
            loop {
                let next = if self.stopping() { None } else { chunks.next() };
                let last = next.is_none();
                if let Some(chunk) = next {
                    let fetched = self.fetch_chunk(&mut mailbox, chunk).await?;
                    in_flight.push_back(fetched);
                }
                while in_flight.len() > IN_FLIGHT || (last && !in_flight.is_empty()) {
                    let Some(oldest) = in_flight.pop_front() else {
                        break;
                    };
                    let newest = oldest.newest;
                    self.complete_chunk(&mut mailbox, oldest).await?;
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
                mailbox.logout().await;
                return Ok(());
            }
            self.emit(WorkerEvent::CaughtUp {
                at: jiff::Timestamp::now(),
                idle,
            });
            mailbox = if idle {
                mailbox
                    .idle(self.options.idle_refresh, self.shutdown.clone())
                    .await?
            } else {
                if self.pause(self.settings.scan_interval).await {
                    return Ok(());
                }
                mailbox.noop().await?;
                mailbox
            };
        }
    }

    /// Fetches a batch (never its oversized messages), and judges and delivers
    /// it in the background.
    async fn fetch_chunk(
        &mut self,
        mailbox: &mut ImapMailbox,
        chunk: &[(u32, u64)],
    ) -> Result<FetchedChunk, SessionEnd> {
        let max = self.settings.max_message_size;
        let (too_big, fits): (Vec<_>, Vec<_>) =
            chunk.iter().copied().partition(|(_, size)| *size > max);
        let quarantine: Vec<(u32, QuarantineKind, String)> = too_big
            .iter()
            .map(|(uid, size)| {
                (
                    *uid,
                    QuarantineKind::Oversized,
                    format!("message of {size} bytes is over maxMessageSize ({max} bytes)"),
                )
            })
            .collect();
        let fits: Vec<u32> = fits.into_iter().map(|(uid, _)| uid).collect();
        let bodies = mailbox.bodies(&fits).await?;
        self.fetched(bodies.len() + too_big.len());

        // Waits for the previous batch's judging (normally long done): batches
        // are judged in fetch order.
        let mut judging = self.judging.clone().lock_owned().await;
        let sink = self.sink.clone();
        let observer = self.observer.clone();
        let dry_run = self.dry_run();
        let work = tokio::spawn(async move {
            let judged = tokio::task::spawn_blocking(move || {
                let messages = bodies.iter().map(|m| (m.uid, &m.raw[..], m.arrived));
                judging.batch(messages, jiff::Timestamp::now())
            })
            .await
            .map_err(|e| format!("judging a batch stopped: {e}"))?;
            for event in judged.verdicts.iter().cloned() {
                observer.observe(event);
            }
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
        mailbox: &mut ImapMailbox,
        fetched: FetchedChunk,
    ) -> Result<(), SessionEnd> {
        let (judged, delivered) = fetched
            .work
            .await
            .map_err(|e| format!("ticket delivery stopped: {e}"))
            .and_then(|r| r)
            .map_err(|message| SessionEnd::Sink {
                message,
                wait: None,
            })?;
        let mut quarantine = fetched.quarantine;
        quarantine.extend(
            judged
                .unparseable
                .into_iter()
                .map(|(uid, reason)| (uid, QuarantineKind::Unparseable, reason)),
        );
        if self.dry_run() {
            let folder = &self.settings.quarantine_folder;
            for (uid, kind, reason) in quarantine {
                self.quarantined(
                    kind,
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
                AfterProcessing::MarkSeen => mailbox.mark_seen(&done).await?,
                AfterProcessing::Move => {
                    let folder = self.settings.move_to.clone().unwrap_or_default();
                    mailbox.move_to(&done, &folder).await?;
                }
                AfterProcessing::Delete => mailbox.delete(&done).await?,
                AfterProcessing::Keep => {}
            }
        }
        if !quarantine.is_empty() {
            let folder = self.settings.quarantine_folder.clone();
            let uids: Vec<u32> = quarantine.iter().map(|(uid, _, _)| *uid).collect();
            mailbox.move_to(&uids, &folder).await?;
            for (uid, kind, reason) in quarantine {
                self.quarantined(kind, format!("UID {uid} moved to {folder:?}: {reason}"));
            }
        }
        Ok(())
    }
}
