//! One POP3 session of the worker: sign in, list what is new by UIDL, judge
//! and deliver it in batches, DELE what afterProcessing says, QUIT to commit,
//! then wait for the next poll.

use std::collections::HashMap;

use super::{QuarantineKind, Scanning, SessionEnd, Worker, WorkerEvent};
use crate::connection::Probe;
use crate::incoming::judging::Outcome;
use crate::incoming::pop3::Pop3;
use crate::vocab::{AfterProcessing, ConnectionStage, FirstStart};

impl Worker {
    pub(super) async fn pop3_session(&mut self) -> Result<(), SessionEnd> {
        let mut probe = Probe::new();
        let turn = self.options.limits.connecting().await;
        let mut pop = match Pop3::connect(&self.settings.server, &mut probe).await {
            Ok(p) => p,
            Err(f) => return Err(SessionEnd::Connect(Box::new(probe.finish(Err(f))))),
        };
        if let Err(f) = probe.stage(ConnectionStage::Mailbox, pop.stat()).await {
            return Err(SessionEnd::Connect(Box::new(probe.finish(Err(f)))));
        }
        drop(turn);
        self.emit(WorkerEvent::Connected(probe.finish(Ok(()))));
        self.backoff.reset();
        self.emit(WorkerEvent::Scanning(Scanning::Polling {
            every: self.settings.scan_interval,
            reason: "POP3 has no IDLE".into(),
        }));

        let (mut cursor, first_start) = self.load_cursor().await?;
        let uidl = pop.uidl().await?;
        if first_start && self.settings.first_start == FirstStart::NewOnly {
            // What is there already counts as processed and kept on purpose:
            // never fetched, and never deleted by afterProcessing.
            for (_, u) in &uidl {
                cursor.pop3_seen.insert(u);
                cursor.pop3_kept.insert(u);
            }
            self.save_cursor(&mut cursor).await?;
        }
        let sizes: HashMap<u32, u64> = pop.list().await?.into_iter().collect();
        // Forget messages that are gone from the server: the sets stay small.
        let present = || uidl.iter().map(|(_, u)| u.as_str());
        cursor.pop3_seen.retain_present(present());
        cursor.pop3_kept.retain_present(present());
        let delete = self.settings.after_processing == AfterProcessing::Delete && !self.dry_run();
        if delete {
            // Processed in an earlier session whose DELE was never committed:
            // they are tickets (or rejections) already, so they are deleted
            // without being fetched or judged again.
            for (n, uid) in &uidl {
                if cursor.pop3_seen.contains(uid) && !cursor.pop3_kept.contains(uid) {
                    pop.dele(*n).await?;
                }
            }
        }
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
                    self.quarantined(QuarantineKind::Oversized, format!("POP3 message {uid} of {size} bytes is over maxMessageSize ({max} bytes): skipped, left on the server"));
                    cursor.pop3_kept.insert(uid);
                    continue;
                }
                let raw = pop.retr(*n, size).await?;
                let (outcome, verdict) = self.judging.lock().await.message(&raw, now, None);
                if let Some(event) = verdict {
                    self.emit(event);
                }
                match outcome {
                    Outcome::Ticket(t) => {
                        tickets.push(*t);
                        numbers.push((*n, uid.clone()));
                    }
                    Outcome::Rejected => rejected.push(*n),
                    Outcome::Unparseable(e) => {
                        self.quarantined(
                            QuarantineKind::Unparseable,
                            format!("POP3 message {uid}: {e}: skipped, left on the server"),
                        );
                        cursor.pop3_kept.insert(uid);
                    }
                }
            }
            self.fetched(chunk.len());
            if !self.dry_run() {
                let accepted = self.deliver(tickets.into()).await?;
                // What the sink refused stays on the server.
                let refused = (0..numbers.len()).filter(|i| !accepted.contains(i));
                cursor
                    .pop3_kept
                    .extend(refused.map(|i| numbers[i].1.as_str()));
                if delete {
                    let done = accepted.iter().map(|i| numbers[*i].0).chain(rejected);
                    for n in done {
                        pop.dele(n).await?;
                    }
                }
            }
            // Every message of the chunk has been judged once: accepted, refused
            // by the sink, or skipped. None is taken again.
            cursor
                .pop3_seen
                .extend(chunk.iter().map(|(_, uid)| uid.as_str()));
            self.save_cursor(&mut cursor).await?;
        }
        let complete = !self.stopping();
        // QUIT commits the deletions.
        pop.quit().await?;
        if complete {
            self.emit(WorkerEvent::CaughtUp {
                at: jiff::Timestamp::now(),
                idle: false,
            });
        }
        Ok(())
    }
}
