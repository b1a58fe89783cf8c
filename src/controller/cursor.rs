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
