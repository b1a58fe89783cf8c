//! Durable fetch cursors behind a small interface: a file implementation here,
//! one backed by the cluster in the controller.

mod threads;
mod uidls;

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use threads::{ACK_PREFIX, CAPACITY as THREAD_CAPACITY, Thread, ThreadMap, acknowledged_key};
pub use uidls::UidlSet;

/// How far a mailbox has been processed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cursor {
    /// IMAP: the mailbox's UIDVALIDITY and the highest UID processed under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imap: Option<ImapCursor>,
    /// POP3: the UIDLs of messages already processed that are still on the server.
    #[serde(default, skip_serializing_if = "UidlSet::is_empty")]
    pub pop3_seen: UidlSet,
    /// POP3: those of `pop3_seen` left on the server on purpose (oversized,
    /// unparseable, or refused by the sink). With `afterProcessing: Delete`
    /// every other seen message still on the server is deleted: its DELE was
    /// lost (the session ended before QUIT committed it).
    #[serde(default, skip_serializing_if = "UidlSet::is_empty")]
    pub pop3_kept: UidlSet,
    /// Which ticket each recently delivered message belongs to, for replies
    /// that name it in `In-Reply-To`/`References`.
    #[serde(default, skip_serializing_if = "ThreadMap::is_empty")]
    pub threads: ThreadMap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImapCursor {
    pub uid_validity: u32,
    pub last_uid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "cannot read the cursor {path}: {message}; fix or remove the file (mail is then judged again, without duplicate tickets)"
    )]
    Read { path: String, message: String },
    #[error("cannot save the cursor {path}: {message}")]
    Write { path: String, message: String },
}

/// What a store's operations return: the cluster store talks to the API server.
pub type StoreFuture<'a, T> =
    std::pin::Pin<Box<dyn Future<Output = Result<T, StateError>> + Send + 'a>>;

/// Where cursors are kept, by key (`namespace/name`). A save returns once the
/// cursor is durable.
pub trait CursorStore: Send + Sync {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Cursor>>;
    fn save<'a>(&'a self, key: &'a str, cursor: &'a Cursor) -> StoreFuture<'a, ()>;
}

/// Cursors as JSON files `DIR/<namespace>/<name>.json`, replaced atomically.
#[derive(Clone, Debug)]
pub struct FileCursorStore {
    dir: PathBuf,
}

impl FileCursorStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, key: &str) -> PathBuf {
        let safe: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '/') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir
            .join(format!("{}.json", safe.trim_start_matches(['/', '.'])))
    }
}

impl CursorStore for FileCursorStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Cursor>> {
        Box::pin(async move { self.read(key) })
    }

    fn save<'a>(&'a self, key: &'a str, cursor: &'a Cursor) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.write(key, cursor) })
    }
}

impl FileCursorStore {
    fn read(&self, key: &str) -> Result<Option<Cursor>, StateError> {
        let path = self.path(key);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StateError::Read {
                    path: path.display().to_string(),
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StateError::Read {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
        }
    }

    fn write(&self, key: &str, cursor: &Cursor) -> Result<(), StateError> {
        let path = self.path(key);
        let err = |e: &dyn std::fmt::Display| StateError::Write {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let parent = path.parent().ok_or_else(|| err(&"no parent folder"))?;
        fs::create_dir_all(parent).map_err(|e| err(&e))?;
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec(cursor).map_err(|e| err(&e))?;
        let mut f = fs::File::create(&tmp).map_err(|e| err(&e))?;
        f.write_all(&body).map_err(|e| err(&e))?;
        f.sync_all().map_err(|e| err(&e))?;
        fs::rename(&tmp, &path).map_err(|e| err(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cursors_round_trip_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCursorStore::new(dir.path());
        assert_eq!(store.load("helpdesk/support").await.unwrap(), None);
        let cursor = Cursor {
            imap: Some(ImapCursor {
                uid_validity: 7,
                last_uid: 42,
            }),
            pop3_seen: ["a"].into_iter().collect(),
            pop3_kept: ["a"].into_iter().collect(),
            threads: ThreadMap::default(),
        };
        store.save("helpdesk/support", &cursor).await.unwrap();
        assert_eq!(store.load("helpdesk/support").await.unwrap(), Some(cursor));
        assert!(dir.path().join("helpdesk/support.json").exists());
    }

    #[tokio::test]
    async fn a_corrupt_cursor_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ns")).unwrap();
        std::fs::write(dir.path().join("ns/x.json"), b"{oops").unwrap();
        let err = FileCursorStore::new(dir.path())
            .load("ns/x")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("ns/x.json"), "{err}");
    }
}
