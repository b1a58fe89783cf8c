//! One JSON file per ticket, named by its idempotency key, written atomically
//! (temporary file, then rename). Durability is batched: one `syncfs` makes a
//! whole batch durable before any file takes its final name, so a crash leaves
//! either the complete ticket or none.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Delivery, SinkError};
use crate::ticket::Ticket;

#[derive(Debug, Clone)]
pub struct DirectorySink {
    dir: PathBuf,
}

fn unavailable(what: &str, path: &Path, e: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable(format!("{what} {}: {e}", path.display()))
}

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
        Ok(Self { dir })
    }

    /// Path of a ticket's file.
    pub fn path_of(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    pub async fn deliver(&self, tickets: &[Ticket]) -> Result<Vec<Delivery>, SinkError> {
        let sink = self.clone();
        let tickets = tickets.to_vec();
        tokio::task::spawn_blocking(move || sink.deliver_blocking(&tickets))
            .await
            .map_err(|e| SinkError::Unavailable(format!("ticket writer stopped: {e}")))?
    }

    fn deliver_blocking(&self, tickets: &[Ticket]) -> Result<Vec<Delivery>, SinkError> {
        let mut pending = Vec::new();
        // Keys of this batch so far, by value: comparing paths is slow, and a
        // batch has hundreds of tickets.
        let mut keys = HashSet::with_capacity(tickets.len());
        let mut deliveries = Vec::with_capacity(tickets.len());
        for ticket in tickets {
            let target = self.path_of(&ticket.idempotency_key);
            // Re-delivery of a key is a no-op: the first ticket stands.
            if target.exists() || !keys.insert(ticket.idempotency_key.as_str()) {
                deliveries.push(Delivery::Duplicate);
                continue;
            }
            deliveries.push(Delivery::Accepted);
            let tmp = self
                .dir
                .join(format!(".{}.json.tmp", ticket.idempotency_key));
            let body = serde_json::to_vec(ticket)
                .map_err(|e| SinkError::Unavailable(format!("cannot serialise a ticket: {e}")))?;
            let mut file =
                fs::File::create(&tmp).map_err(|e| unavailable("cannot create", &tmp, e))?;
            file.write_all(&body)
                .map_err(|e| unavailable("cannot write", &tmp, e))?;
            pending.push((tmp, target));
        }
        if !pending.is_empty() {
            let dir =
                fs::File::open(&self.dir).map_err(|e| unavailable("cannot open", &self.dir, e))?;
            rustix::fs::syncfs(&dir).map_err(|e| unavailable("cannot sync", &self.dir, e))?;
            for (tmp, target) in &pending {
                fs::rename(tmp, target).map_err(|e| unavailable("cannot rename", tmp, e))?;
            }
            dir.sync_all()
                .map_err(|e| unavailable("cannot sync", &self.dir, e))?;
        }
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
        let got = sink.deliver(&batch).await.unwrap();
        assert_eq!(
            got,
            [Delivery::Accepted, Delivery::Duplicate, Delivery::Accepted]
        );
        let again = sink
            .deliver(&[ticket("one@example.org", "third copy")])
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
}
