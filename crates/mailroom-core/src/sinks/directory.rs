//! One JSON file per ticket, named by its idempotency key, written atomically
//! (temporary file, then rename). Durability is batched: one `syncfs` makes a
//! whole batch durable before any file takes its final name, so a crash leaves
//! either the complete ticket or none. Batches may be written concurrently;
//! only the naming step is taken one batch at a time, so a key is claimed once.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::{Delivery, SinkError};
use crate::ticket::Ticket;

#[derive(Debug, Clone)]
pub struct DirectorySink {
    dir: PathBuf,
    /// Held while a batch's files take their final names.
    naming: Arc<Mutex<()>>,
}

fn unavailable(what: &str, path: &Path, e: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable(format!("{what} {}: {e}", path.display()))
}

/// Makes temporary names unique, so that concurrent batches carrying the same
/// key never write into each other's file.
static TEMPORARY: AtomicU64 = AtomicU64::new(0);

impl DirectorySink {
    /// Opens (creates) the directory and removes temporary files a crash left.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, SinkError> {
        let dir = dir.into();
        fs::create_dir_all(&dir)
            .map_err(|e| SinkError::Setup(format!("cannot create {}: {e}", dir.display())))?;
        let entries = fs::read_dir(&dir)
            .map_err(|e| SinkError::Setup(format!("cannot read {}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            dir,
            naming: Arc::default(),
        })
    }

    /// Path of a ticket's file.
    pub(crate) fn path_of(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    pub async fn deliver(&self, tickets: Arc<[Ticket]>) -> Result<Vec<Delivery>, SinkError> {
        let sink = self.clone();
        tokio::task::spawn_blocking(move || sink.deliver_blocking(&tickets))
            .await
            .map_err(|e| SinkError::Unavailable(format!("ticket writer stopped: {e}")))?
    }

    fn deliver_blocking(&self, tickets: &[Ticket]) -> Result<Vec<Delivery>, SinkError> {
        let mut pending = Vec::new();
        let result = self
            .write(tickets, &mut pending)
            .and_then(|()| self.name(tickets, &mut pending));
        // What did not take its final name is of no use any more.
        for (_, tmp) in &pending {
            let _ = fs::remove_file(tmp);
        }
        result
    }

    /// Writes each new key of the batch to a temporary file, listed in
    /// `pending` with its ticket's index.
    fn write(
        &self,
        tickets: &[Ticket],
        pending: &mut Vec<(usize, PathBuf)>,
    ) -> Result<(), SinkError> {
        // Keys of this batch so far, by value: comparing paths is slow, and a
        // batch has hundreds of tickets.
        let mut keys = HashSet::with_capacity(tickets.len());
        for (i, ticket) in tickets.iter().enumerate() {
            if !keys.insert(ticket.idempotency_key.as_str()) {
                continue;
            }
            let body = serde_json::to_vec(ticket)
                .map_err(|e| SinkError::Unavailable(format!("cannot serialise a ticket: {e}")))?;
            let tmp = self.dir.join(format!(
                ".{}.{}-{}.tmp",
                ticket.idempotency_key,
                std::process::id(),
                TEMPORARY.fetch_add(1, Ordering::Relaxed)
            ));
            pending.push((i, tmp.clone()));
            let mut file =
                fs::File::create_new(&tmp).map_err(|e| unavailable("cannot create", &tmp, e))?;
            file.write_all(&body)
                .map_err(|e| unavailable("cannot write", &tmp, e))?;
        }
        Ok(())
    }

    /// Makes the written files durable and gives them their final names; a
    /// key already taken (re-delivery, or a concurrent batch) is a no-op.
    /// Leaves in `pending` what was not renamed.
    fn name(
        &self,
        tickets: &[Ticket],
        pending: &mut Vec<(usize, PathBuf)>,
    ) -> Result<Vec<Delivery>, SinkError> {
        let mut deliveries = vec![Delivery::Duplicate; tickets.len()];
        let dir =
            fs::File::open(&self.dir).map_err(|e| unavailable("cannot open", &self.dir, e))?;
        if !pending.is_empty() {
            rustix::fs::syncfs(&dir).map_err(|e| unavailable("cannot sync", &self.dir, e))?;
        }
        let _naming = self.naming.lock().unwrap_or_else(PoisonError::into_inner);
        let mut left = Vec::new();
        let mut failure = None;
        for (i, tmp) in std::mem::take(pending) {
            let target = self.path_of(&tickets[i].idempotency_key);
            if failure.is_some() || target.exists() {
                left.push((i, tmp));
                continue;
            }
            match fs::rename(&tmp, &target) {
                Ok(()) => deliveries[i] = Delivery::Accepted,
                Err(e) => {
                    failure = Some(unavailable("cannot rename", &tmp, e));
                    left.push((i, tmp));
                }
            }
        }
        *pending = left;
        if let Some(e) = failure {
            return Err(e);
        }
        // Even with nothing renamed: a name an earlier, failed attempt gave is
        // durable before its mail is marked processed.
        dir.sync_all()
            .map_err(|e| unavailable("cannot sync", &self.dir, e))?;
        Ok(deliveries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incoming::settings::TicketSettings;

    fn ticket(message_id: &str, subject: &str) -> Ticket {
        let settings = TicketSettings {
            mailbox: "helpdesk/support".into(),
            technician_group: None,
            category: None,
            reference: regex::Regex::new(r"\[#(\d+)\]").unwrap(),
        };
        let raw = format!(
            "From: a@example.org\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\n\r\nbody\r\n"
        );
        crate::ticket::map(raw.as_bytes(), &settings, jiff::Timestamp::now()).unwrap()
    }

    #[tokio::test]
    async fn a_key_is_written_once_within_a_batch_and_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let sink = DirectorySink::open(dir.path()).unwrap();
        let first = ticket("one@example.org", "first");
        let batch = [
            first.clone(),
            ticket("one@example.org", "second copy"),
            ticket("two@example.org", "other"),
        ];
        let got = sink.deliver(batch.into()).await.unwrap();
        assert_eq!(
            got,
            [Delivery::Accepted, Delivery::Duplicate, Delivery::Accepted]
        );
        let again = sink
            .deliver(Arc::new([ticket("one@example.org", "third copy")]))
            .await
            .unwrap();
        assert_eq!(again, [Delivery::Duplicate]);
        let stored: Ticket =
            serde_json::from_slice(&fs::read(sink.path_of(&first.idempotency_key)).unwrap())
                .unwrap();
        assert_eq!(stored.subject, first.subject, "the first ticket stands");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 2, "no temporary files left");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_batches_claim_a_shared_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let sink = DirectorySink::open(dir.path()).unwrap();
        for round in 0..20 {
            let id = format!("shared-{round}@example.org");
            let batch = |subject: &str| -> Arc<[Ticket]> {
                (0..50)
                    .map(|i| ticket(&format!("{subject}-{round}-{i}@example.org"), subject))
                    .chain([ticket(&id, subject)])
                    .collect()
            };
            let (a, b) = tokio::join!(sink.deliver(batch("a")), sink.deliver(batch("b")));
            let (a, b) = (a.unwrap(), b.unwrap());
            let claimed = [a[50].clone(), b[50].clone()];
            assert!(
                claimed.contains(&Delivery::Accepted) && claimed.contains(&Delivery::Duplicate),
                "{claimed:?}"
            );
            let winner = if a[50] == Delivery::Accepted {
                "a"
            } else {
                "b"
            };
            let stored: Ticket = serde_json::from_slice(
                &fs::read(sink.path_of(&ticket(&id, "").idempotency_key)).unwrap(),
            )
            .unwrap();
            assert_eq!(
                stored.subject.as_deref(),
                Some(winner),
                "the accepted one stands"
            );
        }
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 20 * 101, "one file per key");
        assert!(
            names
                .iter()
                .all(|n| n.ends_with(".json") && !n.starts_with('.'))
        );
    }
}
