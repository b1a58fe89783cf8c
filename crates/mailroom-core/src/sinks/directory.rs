//! One JSON file per ticket, named by its idempotency key, written atomically.
//! Each ticket is written to an anonymous file (`O_TMPFILE`), which a crash
//! simply discards, and linked under its name once durable; `linkat` refuses a
//! name that exists, so a key is claimed once even by concurrent batches or
//! processes. Where the filesystem has no anonymous files (or the process runs
//! out of descriptors) a ticket is written to a named temporary file and
//! renamed instead. Durability is batched: one `syncfs` makes a whole batch
//! durable before any file takes its final name, so a crash leaves either the
//! complete ticket or none.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::{Delivery, SinkError};
use crate::ticket::Ticket;

/// How a ticket's file is written before it takes its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemporaryFiles {
    /// An anonymous file linked into place, falling back to `Named` where
    /// the filesystem lacks anonymous files. The default.
    Anonymous,
    /// A hidden named file renamed into place.
    Named,
}

#[derive(Debug, Clone)]
pub struct DirectorySink {
    dir: PathBuf,
    /// Held while a batch's files take their final names.
    naming: Arc<Mutex<()>>,
    /// Cleared the first time the filesystem refuses an anonymous file.
    anonymous: Arc<AtomicBool>,
}

fn unavailable(what: &str, path: &Path, e: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable(format!("{what} {}: {e}", path.display()))
}

/// Makes temporary names unique, so that concurrent batches carrying the same
/// key never write into each other's file.
static TEMPORARY: AtomicU64 = AtomicU64::new(0);

/// A ticket's body, written but not yet named. Named files are closed once
/// written; anonymous ones stay open until named (closing discards them).
enum Written {
    Anonymous(fs::File),
    Named(PathBuf),
}

/// Whether an `O_TMPFILE` open failed because this filesystem (or kernel)
/// has no anonymous files, rather than for this one file.
fn lacks_anonymous_files(e: Errno) -> bool {
    matches!(
        e,
        Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOENT
    )
}

/// Whether an open failed for want of descriptors: this ticket is written to
/// a named file, which is closed at once.
fn out_of_descriptors(e: Errno) -> bool {
    matches!(e, Errno::MFILE | Errno::NFILE)
}

impl DirectorySink {
    /// Opens (creates) the directory and removes temporary files a crash left.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, SinkError> {
        Self::open_with(dir, TemporaryFiles::Anonymous)
    }

    /// `open`, choosing how files are written (the benchmark compares both).
    pub fn open_with(
        dir: impl Into<PathBuf>,
        temporary: TemporaryFiles,
    ) -> Result<Self, SinkError> {
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
        // An anonymous file is named through its /proc link: without /proc
        // it could never be named.
        let anonymous =
            temporary == TemporaryFiles::Anonymous && Path::new("/proc/self/fd").is_dir();
        Ok(Self {
            dir,
            naming: Arc::default(),
            anonymous: Arc::new(AtomicBool::new(anonymous)),
        })
    }

    /// Path of a ticket's file.
    pub(crate) fn path_of(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// Whether tickets are written as anonymous files now.
    pub fn writes_anonymous_files(&self) -> bool {
        self.anonymous.load(Ordering::Relaxed)
    }

    pub async fn deliver(&self, tickets: Arc<[Ticket]>) -> Result<Vec<Delivery>, SinkError> {
        let sink = self.clone();
        tokio::task::spawn_blocking(move || sink.deliver_blocking(&tickets))
            .await
            .map_err(|e| SinkError::Unavailable(format!("ticket writer stopped: {e}")))?
    }

    fn deliver_blocking(&self, tickets: &[Ticket]) -> Result<Vec<Delivery>, SinkError> {
        let dir =
            fs::File::open(&self.dir).map_err(|e| unavailable("cannot open", &self.dir, e))?;
        let mut pending = Vec::new();
        let result = self
            .write(&dir, tickets, &mut pending)
            .and_then(|()| self.name(&dir, tickets, &mut pending));
        // What did not take its final name is of no use any more (anonymous
        // files vanish when closed).
        for (_, written) in pending {
            if let Written::Named(tmp) = written {
                let _ = fs::remove_file(tmp);
            }
        }
        result
    }

    /// Writes each new key of the batch to a temporary file, listed in
    /// `pending` with its ticket's index.
    fn write(
        &self,
        dir: &fs::File,
        tickets: &[Ticket],
        pending: &mut Vec<(usize, Written)>,
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
            let cannot_write = |e| unavailable("cannot write a ticket in", &self.dir, e);
            match self.anonymous_file(dir)? {
                Some(fd) => {
                    let mut file = fs::File::from(fd);
                    file.write_all(&body).map_err(cannot_write)?;
                    pending.push((i, Written::Anonymous(file)));
                }
                None => {
                    let tmp = self.dir.join(format!(
                        ".{}.{}-{}.tmp",
                        ticket.idempotency_key,
                        std::process::id(),
                        TEMPORARY.fetch_add(1, Ordering::Relaxed)
                    ));
                    let mut file = fs::File::create_new(&tmp)
                        .map_err(|e| unavailable("cannot create", &tmp, e))?;
                    pending.push((i, Written::Named(tmp)));
                    file.write_all(&body).map_err(cannot_write)?;
                }
            }
        }
        Ok(())
    }

    /// An anonymous file in the directory, or none where a named one is to
    /// be written instead.
    fn anonymous_file(&self, dir: &fs::File) -> Result<Option<OwnedFd>, SinkError> {
        if !self.anonymous.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
        match rustix::fs::openat(dir, ".", flags, Mode::from_raw_mode(0o644)) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if lacks_anonymous_files(e) => {
                self.anonymous.store(false, Ordering::Relaxed);
                tracing::info!(
                    dir = %self.dir.display(),
                    "this filesystem has no anonymous files ({e}): tickets are written to temporary files and renamed"
                );
                Ok(None)
            }
            Err(e) if out_of_descriptors(e) => Ok(None),
            Err(e) => Err(unavailable(
                "cannot create an anonymous file in",
                &self.dir,
                e,
            )),
        }
    }

    /// Makes the written files durable and gives them their final names; a
    /// key already taken (re-delivery, or a concurrent batch) is a no-op.
    /// Leaves in `pending` what was not named.
    fn name(
        &self,
        dir: &fs::File,
        tickets: &[Ticket],
        pending: &mut Vec<(usize, Written)>,
    ) -> Result<Vec<Delivery>, SinkError> {
        let mut deliveries = vec![Delivery::Duplicate; tickets.len()];
        if !pending.is_empty() {
            rustix::fs::syncfs(dir).map_err(|e| unavailable("cannot sync", &self.dir, e))?;
        }
        // `linkat` claims a name atomically; a rename would replace one, so
        // renames check first, under this lock.
        let _naming = self.naming.lock().unwrap_or_else(PoisonError::into_inner);
        let mut left = Vec::new();
        let mut failure = None;
        for (i, written) in std::mem::take(pending) {
            if failure.is_some() {
                left.push((i, written));
                continue;
            }
            let target = self.path_of(&tickets[i].idempotency_key);
            let named = match &written {
                Written::Anonymous(file) => {
                    let link = format!("/proc/self/fd/{}", file.as_raw_fd());
                    let cwd = rustix::fs::CWD;
                    rustix::fs::linkat(cwd, &link, cwd, &target, AtFlags::SYMLINK_FOLLOW)
                        .map(|()| true)
                        .or_else(|e| {
                            if e == Errno::EXIST {
                                Ok(false)
                            } else {
                                Err(e.into())
                            }
                        })
                }
                Written::Named(tmp) => {
                    if target.exists() {
                        Ok(false)
                    } else {
                        fs::rename(tmp, &target).map(|()| true)
                    }
                }
            };
            match named {
                Ok(true) => deliveries[i] = Delivery::Accepted,
                Ok(false) => left.push((i, written)),
                Err(e) => {
                    failure = Some(unavailable("cannot name a ticket", &target, e));
                    left.push((i, written));
                }
            }
        }
        *pending = left;
        if let Some(e) = failure {
            return Err(e);
        }
        // Even with nothing named: a name an earlier, failed attempt gave is
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
            sink_tag: None,
        };
        let raw = format!(
            "From: a@example.org\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\n\r\nbody\r\n"
        );
        crate::ticket::map(raw.as_bytes(), &settings, jiff::Timestamp::now()).unwrap()
    }

    const MODES: [TemporaryFiles; 2] = [TemporaryFiles::Anonymous, TemporaryFiles::Named];

    #[tokio::test]
    async fn a_key_is_written_once_within_a_batch_and_across_batches() {
        for mode in MODES {
            written_once(mode).await;
        }
    }

    async fn written_once(mode: TemporaryFiles) {
        let dir = tempfile::tempdir().unwrap();
        let sink = DirectorySink::open_with(dir.path(), mode).unwrap();
        assert_eq!(
            sink.writes_anonymous_files(),
            mode == TemporaryFiles::Anonymous
        );
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
        claimed_once(dir.path(), &sink, &sink).await;
        let dir = tempfile::tempdir().unwrap();
        let sink = DirectorySink::open_with(dir.path(), TemporaryFiles::Named).unwrap();
        claimed_once(dir.path(), &sink, &sink).await;
    }

    /// Two sinks on one folder share no lock, as two processes would not:
    /// only `linkat`'s refusal of an existing name keeps a key claimed once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn anonymous_files_claim_a_key_once_across_sinks_on_one_folder() {
        let dir = tempfile::tempdir().unwrap();
        let one = DirectorySink::open(dir.path()).unwrap();
        let other = DirectorySink::open(dir.path()).unwrap();
        claimed_once(dir.path(), &one, &other).await;
    }

    async fn claimed_once(dir: &Path, sink: &DirectorySink, other: &DirectorySink) {
        for round in 0..20 {
            let id = format!("shared-{round}@example.org");
            let batch = |subject: &str| -> Arc<[Ticket]> {
                (0..50)
                    .map(|i| ticket(&format!("{subject}-{round}-{i}@example.org"), subject))
                    .chain([ticket(&id, subject)])
                    .collect()
            };
            let (a, b) = tokio::join!(sink.deliver(batch("a")), other.deliver(batch("b")));
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
        let names: Vec<String> = fs::read_dir(dir)
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

    /// A writer that stops between writing and naming (a crash) leaves no
    /// anonymous file behind, and named leftovers are removed at the next
    /// open.
    #[test]
    fn a_batch_never_named_leaves_nothing() {
        for mode in MODES {
            let dir = tempfile::tempdir().unwrap();
            let sink = DirectorySink::open_with(dir.path(), mode).unwrap();
            let tickets = [ticket("a@example.org", "a"), ticket("b@example.org", "b")];
            let folder = fs::File::open(dir.path()).unwrap();
            let mut pending = Vec::new();
            sink.write(&folder, &tickets, &mut pending).unwrap();
            assert_eq!(pending.len(), 2);
            let entries = || fs::read_dir(dir.path()).unwrap().count();
            let left = entries();
            drop(pending);
            match mode {
                TemporaryFiles::Anonymous => assert_eq!(left, 0, "nothing visible before naming"),
                TemporaryFiles::Named => {
                    assert_eq!(left, 2, "two temporary files");
                    DirectorySink::open_with(dir.path(), mode).unwrap();
                    assert_eq!(entries(), 0, "removed at the next open");
                }
            }
        }
    }
}
