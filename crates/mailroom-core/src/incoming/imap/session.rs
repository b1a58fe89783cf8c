//! The IMAP commands the fetch worker sends, as methods of a signed-in
//! session: open the mailbox, search, read sizes and bodies, mark seen, move,
//! delete, create folders, IDLE. Each command runs within the I/O timeout and
//! fails with a `Failure` that names it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_imap::types::{Fetch, Mailbox};
use futures::TryStreamExt;
use tokio::sync::watch;

use super::{IMAP, ImapSession, mailbox_failure};
use crate::connection::{Failure, protocol_error, within};
use crate::incoming::plan::{uid_set, uid_sets};

/// A signed-in IMAP session and what it knows of the server.
pub(crate) struct ImapMailbox {
    session: ImapSession,
    io: Duration,
    /// Capabilities, upper-case.
    caps: HashSet<String>,
    /// Folders created (or found) in this session.
    created: HashSet<String>,
}

impl ImapMailbox {
    pub fn new(session: ImapSession, io: Duration, capabilities: &[String]) -> Self {
        Self {
            session,
            io,
            caps: capabilities
                .iter()
                .map(|c| c.to_ascii_uppercase())
                .collect(),
            created: HashSet::new(),
        }
    }

    pub(crate) fn offers(&self, capability: &str) -> bool {
        self.caps.contains(capability)
    }

    /// SELECT, or EXAMINE (read-only) when nothing may change.
    pub async fn open(&mut self, mailbox: &str, read_only: bool) -> Result<Mailbox, Failure> {
        let session = &mut self.session;
        within(self.io, "selecting the mailbox", async {
            if read_only {
                session.examine(mailbox).await
            } else {
                session.select(mailbox).await
            }
            .map_err(|e| mailbox_failure(mailbox, e))
        })
        .await
    }

    /// `UID SEARCH query`.
    pub(crate) async fn search(&mut self, query: &str) -> Result<Vec<u32>, Failure> {
        let session = &mut self.session;
        within(self.io, "searching new mail", async {
            session
                .uid_search(query)
                .await
                .map(|found| found.into_iter().collect())
                .map_err(|e| protocol_error(IMAP, "UID SEARCH", e))
        })
        .await
    }

    /// `UID FETCH` of `set` with `items`, every answer collected.
    pub(crate) async fn fetch(
        &mut self,
        set: &str,
        items: &str,
        what: &str,
    ) -> Result<Vec<Fetch>, Failure> {
        let session = &mut self.session;
        within(self.io, what, async {
            session
                .uid_fetch(set, items)
                .await
                .map_err(|e| protocol_error(IMAP, "UID FETCH", e))?
                .try_collect()
                .await
                .map_err(|e| protocol_error(IMAP, "UID FETCH", e))
        })
        .await
    }

    /// The sizes of `uids`, in their order, from the server's index: no
    /// message is downloaded to learn its size. A message the answer leaves
    /// out counts 0, so it is still fetched (and judged by its body).
    pub(crate) async fn sizes(&mut self, uids: &[u32]) -> Result<Vec<(u32, u64)>, Failure> {
        let mut known: HashMap<u32, u64> = HashMap::with_capacity(uids.len());
        for set in uid_sets(uids) {
            let fetched = self
                .fetch(&set, "(UID RFC822.SIZE)", "reading message sizes")
                .await?;
            known.extend(
                fetched
                    .iter()
                    .filter_map(|f| Some((f.uid?, u64::from(f.size?)))),
            );
        }
        Ok(uids
            .iter()
            .map(|uid| (*uid, known.get(uid).copied().unwrap_or(0)))
            .collect())
    }

    /// The whole messages `uids`, without setting `\Seen`.
    pub(crate) async fn bodies(&mut self, uids: &[u32]) -> Result<Vec<Fetch>, Failure> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        self.fetch(&uid_set(uids), "(UID BODY.PEEK[])", "fetching messages")
            .await
    }

    /// Sets `\Seen` on `uids`.
    pub(crate) async fn mark_seen(&mut self, uids: &[u32]) -> Result<(), Failure> {
        self.store(uids, "+FLAGS.SILENT (\\Seen)", "marking mail seen")
            .await
    }

    async fn store(&mut self, uids: &[u32], change: &str, what: &str) -> Result<(), Failure> {
        let set = uid_set(uids);
        let session = &mut self.session;
        within(self.io, what, async {
            session
                .uid_store(&set, change)
                .await
                .map_err(|e| protocol_error(IMAP, "UID STORE", e))?
                .try_collect::<Vec<_>>()
                .await
                .map(drop)
                .map_err(|e| protocol_error(IMAP, "UID STORE", e))
        })
        .await
    }

    /// Creates `folder` once per session. CREATE of an existing folder fails
    /// harmlessly; the MOVE that follows tells.
    async fn ensure_folder(&mut self, folder: &str) {
        if self.created.contains(folder) {
            return;
        }
        let session = &mut self.session;
        let _ = within(self.io, "creating a folder", async {
            session
                .create(folder)
                .await
                .map_err(|e| protocol_error(IMAP, "CREATE", e))
        })
        .await;
        self.created.insert(folder.to_owned());
    }

    /// Moves `uids` to `folder` (created when missing): MOVE where offered,
    /// else COPY and delete.
    pub(crate) async fn move_to(&mut self, uids: &[u32], folder: &str) -> Result<(), Failure> {
        if uids.is_empty() {
            return Ok(());
        }
        self.ensure_folder(folder).await;
        let set = uid_set(uids);
        let session = &mut self.session;
        if self.caps.contains("MOVE") {
            return within(self.io, "moving mail", async {
                session
                    .uid_mv(&set, folder)
                    .await
                    .map_err(|e| protocol_error(IMAP, &format!("UID MOVE to {folder:?}"), e))
            })
            .await;
        }
        within(self.io, "copying mail", async {
            session
                .uid_copy(&set, folder)
                .await
                .map_err(|e| protocol_error(IMAP, &format!("UID COPY to {folder:?}"), e))
        })
        .await?;
        self.delete(uids).await
    }

    /// Deletes `uids`: `\Deleted`, then UID EXPUNGE of only these (UIDPLUS),
    /// else a plain EXPUNGE.
    pub(crate) async fn delete(&mut self, uids: &[u32]) -> Result<(), Failure> {
        self.store(uids, "+FLAGS.SILENT (\\Deleted)", "deleting mail")
            .await?;
        let set = uid_set(uids);
        let uidplus = self.caps.contains("UIDPLUS");
        let session = &mut self.session;
        within(self.io, "deleting mail", async {
            if uidplus {
                let _: Vec<_> = session
                    .uid_expunge(&set)
                    .await
                    .map_err(|e| protocol_error(IMAP, "UID EXPUNGE", e))?
                    .try_collect()
                    .await
                    .map_err(|e| protocol_error(IMAP, "UID EXPUNGE", e))?;
            } else {
                let _: Vec<_> = session
                    .expunge()
                    .await
                    .map_err(|e| protocol_error(IMAP, "EXPUNGE", e))?
                    .try_collect()
                    .await
                    .map_err(|e| protocol_error(IMAP, "EXPUNGE", e))?;
            }
            Ok(())
        })
        .await
    }

    /// NOOP: lets the server report new mail while polling.
    pub(crate) async fn noop(&mut self) -> Result<(), Failure> {
        let session = &mut self.session;
        within(self.io, "polling", async {
            session
                .noop()
                .await
                .map_err(|e| protocol_error(IMAP, "NOOP", e))
        })
        .await
    }

    /// Waits in IDLE until the server reports a change, `refresh` passes, or
    /// `shutdown` turns true.
    pub(crate) async fn idle(
        self,
        refresh: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<Self, Failure> {
        let Self {
            session,
            io,
            caps,
            created,
        } = self;
        // Responses the server volunteered during the last commands (EXISTS,
        // FLAGS, …): the worker finds new mail by UID search and never reads
        // them, and each one holds its 4 KiB read buffer while queued.
        while session.unsolicited_responses.try_recv().is_ok() {}
        let mut handle = session.idle();
        within(io, "starting IDLE", async {
            handle
                .init()
                .await
                .map_err(|e| protocol_error(IMAP, "IDLE", e))
        })
        .await?;
        {
            let (wait, stop) = handle.wait_with_timeout(refresh);
            tokio::pin!(wait);
            let result = tokio::select! {
                r = &mut wait => r,
                _ = shutdown.changed() => {
                    drop(stop);
                    wait.await
                }
            };
            result.map_err(|e| protocol_error(IMAP, "IDLE", e))?;
        }
        let session = within(io, "ending IDLE", async {
            handle
                .done()
                .await
                .map_err(|e| protocol_error(IMAP, "DONE", e))
        })
        .await?;
        Ok(Self {
            session,
            io,
            caps,
            created,
        })
    }

    /// LOGOUT, best effort: the session ends either way.
    pub(crate) async fn logout(mut self) {
        let session = &mut self.session;
        let _ = within(self.io, "logging out", async {
            session
                .logout()
                .await
                .map_err(|e| protocol_error(IMAP, "LOGOUT", e))
        })
        .await;
    }
}
