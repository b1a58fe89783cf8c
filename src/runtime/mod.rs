//! One running resource, whoever runs it: the worker (or the registered
//! sender), what its connection last told, and the status computed from that.
//! The standalone supervisor and the controller both keep these; neither
//! starts workers or computes status any other way.

pub mod incoming;
pub mod outgoing;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use sha2::{Digest, Sha256};

use crate::config::Credentials;
use crate::connection::ConnectionReport;
use crate::status::Health;
pub use incoming::{IncomingInputs, IncomingRuntime};
pub use outgoing::OutgoingRuntime;

/// Key/value data of a Secret or ConfigMap.
pub type Data = BTreeMap<String, Vec<u8>>;

/// Secrets (or ConfigMaps) of one namespace by name, looked up by reference.
/// References never leave the namespace, so there is no other to look in.
pub struct Lookup<'a> {
    objects: Option<&'a BTreeMap<String, Data>>,
    what: &'static str,
}

impl<'a> Lookup<'a> {
    /// `what` names the kind in errors: "Secret" or "ConfigMap".
    pub fn new(objects: Option<&'a BTreeMap<String, Data>>, what: &'static str) -> Self {
        Self { objects, what }
    }
}

impl crate::config::SecretSource for Lookup<'_> {
    fn get(&self, name: &str, key: &str) -> Result<Vec<u8>, crate::config::SecretError> {
        let data = self.objects.and_then(|o| o.get(name)).ok_or_else(|| {
            crate::config::SecretError::NotFound {
                name: format!("{name}\" ({}", self.what),
            }
        })?;
        data.get(key)
            .cloned()
            .ok_or_else(|| crate::config::SecretError::KeyMissing {
                name: name.to_owned(),
                key: key.to_owned(),
            })
    }
}

/// What both kinds of running resource offer their adapters.
pub trait Runtime {
    type Status: serde::Serialize;
    /// The resource's kind, e.g. `IncomingEmailServer`.
    const KIND: &'static str;
    /// The full status, with transition times carried over from `previous`.
    fn status(
        &self,
        generation: Option<i64>,
        previous: &[Condition],
        rejecting_since: jiff::Timestamp,
        now: jiff::Timestamp,
    ) -> Self::Status;
    fn conditions(status: &Self::Status) -> &[Condition];
    fn conditions_mut(status: &mut Self::Status) -> &mut Vec<Condition>;
}

/// Called when a resource's health changed, so that an adapter can write its
/// status at once rather than at its next periodic pass.
pub type OnChange = Arc<dyn Fn() + Send + Sync>;

/// What the latest connection told.
#[derive(Debug)]
pub struct Live {
    pub health: Health,
    pub report: Option<ConnectionReport>,
    pub next_retry_at: Option<jiff::Timestamp>,
    pub scanning: Option<String>,
}

/// `Live`, shared with the task that follows a worker or a connection test.
#[derive(Clone)]
pub struct Shared {
    live: Arc<Mutex<Live>>,
    on_change: Option<OnChange>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("live", &self.live).finish()
    }
}

impl Shared {
    pub fn new(health: Health, on_change: Option<OnChange>) -> Self {
        Self {
            live: Arc::new(Mutex::new(Live {
                health,
                report: None,
                next_retry_at: None,
                scanning: None,
            })),
            on_change,
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change`; tells the adapter when the health or the way of
    /// scanning changed (status shows both).
    pub fn update(&self, change: impl FnOnce(&mut Live)) {
        let changed = {
            let mut live = self.lock();
            let before = (live.health.clone(), live.scanning.clone());
            change(&mut live);
            (&live.health, &live.scanning) != (&before.0, &before.1)
        };
        if changed && let Some(notify) = &self.on_change {
            notify();
        }
    }
}

/// A digest of everything a resource's configuration depends on: its kind and
/// spec, the data of the Secrets and ConfigMaps (of its namespace, by name)
/// that the spec names, and `extra`. Equal digests: nothing to restart.
pub fn config_hash(
    kind: &str,
    spec: &serde_json::Value,
    secrets: &BTreeMap<String, Data>,
    config_maps: &BTreeMap<String, Data>,
    extra: &[String],
) -> [u8; 32] {
    let mut names = BTreeSet::new();
    collect_strings(spec, &mut names);
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update(spec.to_string().as_bytes());
    for (what, objects) in [("Secret", secrets), ("ConfigMap", config_maps)] {
        for name in &names {
            if let Some(data) = objects.get(name) {
                h.update(what.as_bytes());
                h.update(name.as_bytes());
                for (k, v) in data {
                    h.update((k.len() as u64).to_le_bytes());
                    h.update(k.as_bytes());
                    h.update((v.len() as u64).to_le_bytes());
                    h.update(v);
                }
            }
        }
    }
    for e in extra {
        h.update(e.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

/// Every string in a spec: the names it may reference are among them.
pub fn collect_strings(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::String(s) => {
            out.insert(s.clone());
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_strings(v, out)),
        serde_json::Value::Object(o) => o.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

fn username(credentials: Option<&Credentials>) -> Option<String> {
    credentials.map(|c| c.username().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_follows_named_secrets_only() {
        let spec =
            serde_json::json!({"auth": {"passwordSecretRef": {"name": "mail", "key": "password"}}});
        let secret = |v: &str| -> BTreeMap<String, Data> {
            [(
                "mail".to_owned(),
                [("password".to_owned(), v.as_bytes().to_vec())].into(),
            )]
            .into()
        };
        let mut other = secret("a");
        let base = config_hash("K", &spec, &secret("a"), &BTreeMap::new(), &[]);
        assert_eq!(
            base,
            config_hash("K", &spec, &secret("a"), &BTreeMap::new(), &[])
        );
        assert_ne!(
            base,
            config_hash("K", &spec, &secret("b"), &BTreeMap::new(), &[])
        );
        other.insert("unrelated".into(), [("x".to_owned(), b"y".to_vec())].into());
        assert_eq!(base, config_hash("K", &spec, &other, &BTreeMap::new(), &[]));
        assert_ne!(
            base,
            config_hash(
                "K",
                &spec,
                &secret("a"),
                &BTreeMap::new(),
                &["own@x.y".into()]
            )
        );
    }
}
