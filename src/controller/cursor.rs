//! Fetch cursors in the cluster: one ConfigMap per IncomingEmailServer, owned
//! by it (so it is garbage-collected with it), so that a restarted or moved
//! pod neither loses nor repeats mail. The ConfigMap is named after the
//! resource, but a cursor counts only for the resource whose UID owns it: a
//! resource deleted and created again under its name starts afresh.

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use mailroom_core::state::{Cursor, CursorStore, StateError, StoreFuture};

const KEY: &str = "cursor.json";
/// The most a cursor may take: a ConfigMap holds 1 MiB with its metadata.
const MAX_BYTES: usize = 1_000_000;

/// Why a cursor cannot be saved when it has outgrown its ConfigMap: only a
/// POP3 cursor can, by the messages processed and kept on the server.
fn too_large(cursor: &Cursor, bytes: usize) -> String {
    format!(
        "the cursor takes {bytes} bytes, more than the {MAX_BYTES} a ConfigMap holds: the POP3 server keeps {} processed messages. Let mailroom delete them (afterProcessing: Delete), move them off the server, or read the mailbox over IMAP; until then new mail is fetched again each pass and no ticket is made twice",
        cursor.pop3_seen.len()
    )
}

/// The ConfigMap name of a resource's cursor.
pub(crate) fn config_map_name(resource: &str) -> String {
    format!("mailroom-cursor-{resource}")
}

pub(crate) struct ConfigMapCursorStore {
    api: Api<ConfigMap>,
    name: String,
    owner: OwnerReference,
    manager: String,
}

impl ConfigMapCursorStore {
    /// The store of one resource; `owner` points at the IncomingEmailServer.
    pub fn new(
        client: Client,
        namespace: &str,
        resource: &str,
        owner: OwnerReference,
        manager: &str,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: config_map_name(resource),
            owner,
            manager: manager.to_owned(),
        }
    }

    fn error(&self, read: bool, e: impl std::fmt::Display) -> StateError {
        let path = format!("ConfigMap {}", self.name);
        if read {
            StateError::Read {
                path,
                message: e.to_string(),
            }
        } else {
            StateError::Write {
                path,
                message: e.to_string(),
            }
        }
    }
}

impl CursorStore for ConfigMapCursorStore {
    fn load<'a>(&'a self, _key: &'a str) -> StoreFuture<'a, Option<Cursor>> {
        Box::pin(async move {
            let Some(cm) = self
                .api
                .get_opt(&self.name)
                .await
                .map_err(|e| self.error(true, e))?
            else {
                return Ok(None);
            };
            // A cursor left by an earlier resource of the same name (deleted,
            // not yet garbage-collected) is not this one's: it starts afresh.
            let ours = cm
                .metadata
                .owner_references
                .as_ref()
                .is_some_and(|refs| refs.iter().any(|r| r.uid == self.owner.uid));
            if !ours {
                tracing::info!(config_map = %self.name, "the cursor belongs to an earlier resource of this name; starting afresh");
                return Ok(None);
            }
            match cm.data.as_ref().and_then(|d| d.get(KEY)) {
                Some(text) => serde_json::from_str(text)
                    .map(Some)
                    .map_err(|e| self.error(true, e)),
                None => Ok(None),
            }
        })
    }

    fn save<'a>(&'a self, _key: &'a str, cursor: &'a Cursor) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let text = serde_json::to_string(cursor).map_err(|e| self.error(false, e))?;
            if text.len() > MAX_BYTES {
                return Err(self.error(false, too_large(cursor, text.len())));
            }
            let body = serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": self.name,
                    "ownerReferences": [self.owner],
                    "labels": {
                        "app.kubernetes.io/managed-by": "mailroom",
                        super::references::CURSOR_LABEL: "true",
                    },
                },
                "data": {KEY: text},
            });
            self.api
                .patch(
                    &self.name,
                    &PatchParams::apply(&self.manager).force(),
                    &Patch::Apply(body),
                )
                .await
                .map(drop)
                .map_err(|e| self.error(false, e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pop3_cursor_fits_some_ninety_thousand_messages_then_says_what_to_do() {
        let uidls: Vec<String> = (0..150_000)
            .map(|i| format!("UID{i:08}-1701234567.M123456P7890.mail.example.org"))
            .collect();
        let fits = |n: usize| {
            let cursor = Cursor {
                pop3_seen: uidls[..n].iter().map(String::as_str).collect(),
                ..Cursor::default()
            };
            let bytes = serde_json::to_string(&cursor).unwrap().len();
            (bytes <= MAX_BYTES, bytes, cursor)
        };
        assert!(fits(90_000).0, "{} bytes", fits(90_000).1);
        let (fit, bytes, cursor) = fits(100_000);
        assert!(!fit);
        let message = too_large(&cursor, bytes);
        assert!(message.contains("100000 processed messages"), "{message}");
        assert!(message.contains("afterProcessing: Delete"), "{message}");
    }
}
