//! The IMAP commands the fetch worker sends, as methods of a signed-in
//! session: open the mailbox, search, read sizes and bodies, mark seen, move,
//! delete, create folders, IDLE. Each command runs within the I/O timeout and
//! fails with a `Failure` that names it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use async_imap::imap_proto::{AttributeValue, MailboxDatum, Response, Status};
use async_imap::types::{Mailbox, UnsolicitedResponse};
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
    /// The server announced new mail (EXISTS or RECENT) while answering a
    /// command.
    arrived: bool,
}

/// A message as UID FETCH returned it.
pub(crate) struct FetchedMessage {
    pub uid: u32,
    /// INTERNALDATE: when the server received it.
    pub arrived: Option<jiff::Timestamp>,
    pub raw: Vec<u8>,
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
            arrived: false,
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

    /// Sends `command` and reads its answer up to the tagged completion,
    /// handing each untagged response to `take`. The answer counts only when
    /// that completion is OK. async-imap's streamed commands (SEARCH, FETCH,
    /// STORE, EXPUNGE) end quietly on a NO and on a closed connection alike,
    /// which reads as success: a STORE lost to a restarting server left mail
    /// unmarked behind the cursor, and a FETCH cut short skipped mail.
    async fn tagged<T>(
        &mut self,
        command: &str,
        verb: &str,
        what: &str,
        mut take: impl FnMut(&Response<'_>) -> Option<T>,
    ) -> Result<Vec<T>, Failure> {
        let Self {
            session,
            io,
            arrived,
            ..
        } = self;
        let fail = |e: &dyn fmt::Display| protocol_error(IMAP, verb, e);
        within(*io, what, async {
            let tag = session.run_command(command).await.map_err(|e| fail(&e))?;
            let mut taken = Vec::new();
            loop {
                let response = session
                    .read_response()
                    .await
                    .map_err(|e| fail(&e))?
                    .ok_or_else(|| fail(&"the server closed the connection before answering"))?;
                match response.parsed() {
                    Response::Done {
                        tag: done,
                        status,
                        outcome,
                    } if *done == tag => {
                        return match status {
                            Status::Ok => Ok(taken),
                            other => Err(fail(&format!(
                                "the server answered {}: {}",
                                format!("{other:?}").to_ascii_uppercase(),
                                outcome.information.as_deref().unwrap_or("").trim()
                            ))),
                        };
                    }
                    Response::MailboxData(MailboxDatum::Exists(_) | MailboxDatum::Recent(_)) => {
                        *arrived = true;
                    }
                    parsed => taken.extend(take(parsed)),
                }
            }
        })
        .await
    }

    /// `UID SEARCH query`.
    pub(crate) async fn search(&mut self, query: &str) -> Result<Vec<u32>, Failure> {
        let found = self
            .tagged(
                &format!("UID SEARCH {query}"),
                "UID SEARCH",
                "searching new mail",
                |r| match r {
                    Response::MailboxData(MailboxDatum::Search(uids)) => Some(uids.clone()),
                    _ => None,
                },
            )
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// The sizes of `uids`, in their order, from the server's index: no
    /// message is downloaded to learn its size. A message the answer leaves
    /// out counts 0, so it is still fetched (and judged by its body).
    pub(crate) async fn sizes(&mut self, uids: &[u32]) -> Result<Vec<(u32, u64)>, Failure> {
        let mut known: HashMap<u32, u64> = HashMap::with_capacity(uids.len());
        for set in uid_sets(uids) {
            let fetched = self
                .tagged(
                    &format!("UID FETCH {set} (UID RFC822.SIZE)"),
                    "UID FETCH",
                    "reading message sizes",
                    |r| {
                        let attrs = fetch_attributes(r)?;
                        let size = attrs.iter().find_map(|a| match a {
                            AttributeValue::Rfc822Size(size) => Some(u64::from(*size)),
                            _ => None,
                        })?;
                        Some((uid_of(attrs)?, size))
                    },
                )
                .await?;
            known.extend(fetched);
        }
        Ok(uids
            .iter()
            .map(|uid| (*uid, known.get(uid).copied().unwrap_or(0)))
            .collect())
    }

    /// The whole messages `uids`, without setting `\Seen`. Only answers that
    /// carry a body count: a flag change the server reports for another
    /// message meanwhile is not a message.
    pub(crate) async fn bodies(&mut self, uids: &[u32]) -> Result<Vec<FetchedMessage>, Failure> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        self.tagged(
            &format!("UID FETCH {} (UID INTERNALDATE BODY.PEEK[])", uid_set(uids)),
            "UID FETCH",
            "fetching messages",
            |r| {
                let attrs = fetch_attributes(r)?;
                let raw = attrs.iter().find_map(|a| match a {
                    AttributeValue::BodySection {
                        section: None,
                        data: Some(raw),
                        ..
                    } => Some(raw.to_vec()),
                    _ => None,
                })?;
                let arrived = attrs.iter().find_map(|a| match a {
                    AttributeValue::InternalDate(date) => internal_date(date),
                    _ => None,
                });
                Some(FetchedMessage {
                    uid: uid_of(attrs)?,
                    arrived,
                    raw,
                })
            },
        )
        .await
    }

    /// Sets `\Seen` on `uids`.
    pub(crate) async fn mark_seen(&mut self, uids: &[u32]) -> Result<(), Failure> {
        self.store(uids, "+FLAGS.SILENT (\\Seen)", "marking mail seen")
            .await
    }

    async fn store(&mut self, uids: &[u32], change: &str, what: &str) -> Result<(), Failure> {
        let command = format!("UID STORE {} {change}", uid_set(uids));
        self.tagged(&command, "UID STORE", what, |_| None::<()>)
            .await
            .map(drop)
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
        let command = if self.caps.contains("UIDPLUS") {
            format!("UID EXPUNGE {}", uid_set(uids))
        } else {
            "EXPUNGE".to_owned()
        };
        let verb = command.split(' ').take(2).collect::<Vec<_>>().join(" ");
        self.tagged(&command, &verb, "deleting mail", |_| None::<()>)
            .await
            .map(drop)
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
            mut arrived,
        } = self;
        // Responses the server volunteered during the last commands (EXISTS,
        // FLAGS, …) each hold a 4 KiB read buffer while queued: drain them.
        // An EXISTS or RECENT among them is mail that arrived after the last
        // search; the server announced it already and will not again in
        // IDLE, so the worker searches again at once instead.
        while let Ok(response) = session.unsolicited_responses.try_recv() {
            arrived |= matches!(
                response,
                UnsolicitedResponse::Exists(_) | UnsolicitedResponse::Recent(_)
            );
        }
        if arrived {
            return Ok(Self {
                session,
                io,
                caps,
                created,
                arrived: false,
            });
        }
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
            arrived: false,
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

/// The attributes of a FETCH answer.
fn fetch_attributes<'a>(response: &'a Response<'_>) -> Option<&'a [AttributeValue<'a>]> {
    match response {
        Response::Fetch(_, attrs) => Some(attrs),
        _ => None,
    }
}

fn uid_of(attrs: &[AttributeValue<'_>]) -> Option<u32> {
    attrs.iter().find_map(|a| match a {
        AttributeValue::Uid(uid) => Some(*uid),
        _ => None,
    })
}

/// An IMAP date-time (`" 1-Dec-2026 10:16:44 +0000"`: the day may be padded
/// with a space).
fn internal_date(date: &str) -> Option<jiff::Timestamp> {
    jiff::fmt::strtime::parse("%d-%b-%Y %H:%M:%S %z", date.trim())
        .and_then(|t| t.to_timestamp())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_dates_read_with_either_day_form() {
        let padded = internal_date(" 1-Dec-2026 10:16:44 +0100").unwrap();
        assert_eq!(padded.to_string(), "2026-12-01T09:16:44Z");
        let two = internal_date("17-Jul-1996 02:44:25 -0700").unwrap();
        assert_eq!(two.to_string(), "1996-07-17T09:44:25Z");
        assert_eq!(internal_date("yesterday"), None);
    }
}
