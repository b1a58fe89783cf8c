//! One running resource, whoever runs it: the worker (or the registered
//! sender), what its connection last told, and the status computed from that.
//! The standalone supervisor and the controller both keep these; neither
//! starts workers or computes status any other way.

pub mod incoming;
pub mod outgoing;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::status::Health;
pub use incoming::{IncomingInputs, IncomingRuntime};
use mailroom_core::config::Credentials;
use mailroom_core::connection::ConnectionReport;
use mailroom_core::sync::unpoisoned;
pub(crate) use outgoing::OutgoingRuntime;

/// Key/value data of a Secret or ConfigMap.
pub(crate) type Data = BTreeMap<String, Vec<u8>>;

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

impl crate::resolve::SecretSource for Lookup<'_> {
    fn get(&self, name: &str, key: &str) -> Result<Vec<u8>, crate::resolve::SecretError> {
        let data = self.objects.and_then(|o| o.get(name)).ok_or_else(|| {
            crate::resolve::SecretError::NotFound {
                name: format!("{name}\" ({}", self.what),
            }
        })?;
        data.get(key)
            .cloned()
            .ok_or_else(|| crate::resolve::SecretError::KeyMissing {
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
pub(crate) type OnChange = Arc<dyn Fn() + Send + Sync>;

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
        unpoisoned(&self.live)
    }

    /// Applies `change`; tells the adapter when the health or the way of
    /// scanning changed (status shows both).
    pub(crate) fn update(&self, change: impl FnOnce(&mut Live)) {
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

fn username(credentials: Option<&Credentials>) -> Option<String> {
    credentials.map(|c| c.username().to_owned())
}
