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
