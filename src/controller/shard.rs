//! Shards, the Flux way: a resource labelled `mailroom.dev/shard: NAME` is
//! handled by the controller started with `--shard NAME`, an unlabelled one by
//! the controller started without. Each shard elects its own leader.
//!
//! Mailboxes move between shards by relabelling, and never have two fetch
//! workers on the way: the controller running a worker names itself in
//! `status.worker` (its shard and Lease); the one losing the mailbox (its
//! label watch reports it gone) stops the worker after its message in flight
//! and clears that claim; the one gaining it starts only once the claim is
//! cleared, or once the claimant's Lease has stopped changing for its
//! duration (a shard that no longer runs).

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tokio::time::Instant;

use super::leader::Record;
use crate::api::{IncomingEmailServer, WorkerHolder};
use mailroom_core::sync::unpoisoned;
use mailroom_core::vocab::ResourceId;

pub const SHARD_LABEL: &str = "mailroom.dev/shard";

/// The shard a controller serves: a name, or the unlabelled resources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shard(Option<String>);

impl Shard {
    /// A shard by the label value that selects it (none: the unlabelled
    /// resources); refused unless Kubernetes accepts it as a label value.
    pub fn new(name: Option<String>) -> Result<Self, String> {
        if let Some(n) = &name {
            let edges = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
            let valid = n.len() <= 63
                && edges(n.chars().next())
                && edges(n.chars().last())
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid {
                return Err(format!(
                    "shard {n:?} is not a label value: up to 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit"
                ));
            }
        }
        Ok(Self(name))
    }

    pub fn name(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// The label selector of this shard's watches.
    pub fn selector(&self) -> String {
        match &self.0 {
            Some(name) => format!("{SHARD_LABEL}={name}"),
            None => format!("!{SHARD_LABEL}"),
        }
    }

    /// Whether an object's labels send it to this shard.
    pub fn handles(&self, meta: &ObjectMeta) -> bool {
        meta.labels.as_ref().and_then(|l| l.get(SHARD_LABEL)) == self.0.as_ref()
    }
}

/// Who this controller is, as `status.worker` names it, and how it judges
/// another's claim.
pub(crate) struct Claims {
    client: Client,
    me: WorkerHolder,
    /// Lease records of other claimants, with when they were seen to change.
    observed: std::sync::Mutex<HashMap<String, (Record, Instant)>>,
}

impl Claims {
    /// `lease` is this controller's election Lease (`namespace/name`), none
    /// without leader election.
    pub(crate) fn new(client: Client, shard: &Shard, lease: Option<String>) -> Self {
        Self {
            client,
            me: WorkerHolder {
                shard: shard.0.clone(),
                lease,
            },
            observed: std::sync::Mutex::default(),
        }
    }

    pub(crate) fn me(&self) -> &WorkerHolder {
        &self.me
    }

    /// Another controller's claim on the mailbox that still stands: its
    /// holder, whose Lease changed within its duration as seen here. A claim
    /// without a Lease (a controller without leader election) never stands.
    pub(crate) async fn standing(
        &self,
        obj: &IncomingEmailServer,
    ) -> Result<Option<WorkerHolder>, kube::Error> {
        let Some(claim) = obj.status.as_ref().and_then(|s| s.worker.clone()) else {
            return Ok(None);
        };
        if claim == self.me {
            return Ok(None);
        }
        let Some((namespace, name)) = claim.lease.as_deref().and_then(|l| l.split_once('/')) else {
            return Ok(None);
        };
        let lease = Api::<Lease>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await?;
        let record = Record::of(lease.as_ref().and_then(|l| l.spec.as_ref()));
        if record.holder.is_empty() {
            return Ok(None);
        }
        let key = format!("{namespace}/{name}");
        let mut observed = unpoisoned(&self.observed);
        let at = match observed.get(&key) {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                let now = Instant::now();
                observed.insert(key, (record.clone(), now));
                now
            }
        };
        let duration =
            Duration::from_secs(u64::try_from(record.duration.unwrap_or(15)).unwrap_or(15));
        Ok((at.elapsed() < duration).then_some(claim))
    }

    /// Clears the mailbox's claim if it is still ours (a JSON patch whose
    /// `test` fails when another controller claimed it since). A mailbox
    /// that is gone has nothing to clear.
    pub(crate) async fn release(&self, id: &ResourceId) {
        let api: Api<IncomingEmailServer> = Api::namespaced(self.client.clone(), &id.namespace);
        let me = match serde_json::to_value(&self.me) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(resource = %id, "cannot encode this controller's claim: {e}");
                return;
            }
        };
        let patch = serde_json::json!([
            {"op": "test", "path": "/status/worker", "value": me},
            {"op": "remove", "path": "/status/worker"},
        ]);
        let patch = match serde_json::from_value(patch) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(resource = %id, "cannot build the claim's release: {e}");
                return;
            }
        };
        match api
            .patch_status(&id.name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
        {
            Ok(_) => {
                tracing::info!(resource = %id, "released the mailbox to the shard it is labelled for")
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 422 => {
                tracing::debug!(resource = %id, "no claim of ours to release: {}", e.message)
            }
            Err(e) => {
                tracing::warn!(resource = %id, "could not release the mailbox's claim ({e}); the shard it moved to takes over once this controller's Lease lapses")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_shard_name_must_be_a_label_value() {
        assert!(Shard::new(Some("eu-west.1".into())).is_ok());
        for bad in ["", "-a", "a-", "a b", "ä", &"x".repeat(64)] {
            let e = Shard::new(Some(bad.to_owned())).unwrap_err();
            assert!(e.contains("not a label value"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_shard_selects_and_handles_exactly_its_label() {
        let a = Shard::new(Some("a".into())).unwrap();
        let default = Shard::default();
        assert_eq!(a.selector(), "mailroom.dev/shard=a");
        assert_eq!(default.selector(), "!mailroom.dev/shard");
        assert!(a.handles(&meta(&[(SHARD_LABEL, "a")])));
        assert!(!a.handles(&meta(&[(SHARD_LABEL, "b")])));
        assert!(!a.handles(&meta(&[])));
        assert!(default.handles(&meta(&[("team", "x")])));
        assert!(default.handles(&ObjectMeta::default()));
        assert!(!default.handles(&meta(&[(SHARD_LABEL, "a")])));
    }
}
