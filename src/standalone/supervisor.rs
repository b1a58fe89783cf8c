//! Keeps one worker per IncomingEmailServer and one registered sender per
//! OutgoingEmailServer in line with the latest snapshot of the folder: a new
//! or changed resource (spec, or a Secret it references) is (re)started, an
//! unchanged one keeps running, a removed one is stopped after the message in
//! flight — all of that by the engine (`crate::engine`); this file keeps the
//! snapshot diffing and the status files, written when they changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use kube::Resource;
use kube::core::object::HasSpec;
use serde::Serialize;

use super::manifests::{Data, Key, Loaded, Snapshot};
use super::writeback::SecretFiles;
use crate::engine::{Applied, Computed, Desired, Engine, Environment, own_addresses};
use crate::metrics::{Metrics, Sample};
use mailroom_core::incoming::worker::WorkerOptions;
use mailroom_core::oauth2::Tokens;
use mailroom_core::outgoing::Outbox;
use mailroom_core::state::FileCursorStore;
use mailroom_core::sync::write_unpoisoned;

pub(crate) const INCOMING_KIND: &str = "IncomingEmailServer";
pub(crate) const OUTGOING_KIND: &str = "OutgoingEmailServer";

/// Where standalone mode keeps what it writes.
#[derive(Clone, Debug)]
pub struct Paths {
    pub status: PathBuf,
    pub tickets: PathBuf,
    pub state: PathBuf,
}

impl Paths {
    /// `DIR/.status/<kind>/<namespace>/<name>.yaml`.
    pub(crate) fn status_file(&self, kind: &str, key: &Key) -> PathBuf {
        self.status
            .join(kind.to_ascii_lowercase())
            .join(&key.namespace)
            .join(format!("{}.yaml", key.name))
    }
}

/// What standalone mode keeps beside a running resource: its file, and the
/// status text last written.
#[derive(Debug, Default)]
struct Written {
    file: PathBuf,
    text: Option<String>,
}

/// The resources' metric samples, shared with the metrics endpoint.
pub(crate) type Published = Arc<RwLock<Vec<Sample>>>;

/// The running state of a manifests folder.
#[derive(Debug)]
pub struct Supervisor {
    paths: Paths,
    engine: Engine,
    metrics: Arc<Metrics>,
    published: Published,
    incoming: BTreeMap<Key, Written>,
    outgoing: BTreeMap<Key, Written>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusDocument<'a, S> {
    api_version: &'static str,
    kind: &'static str,
    metadata: StatusMeta<'a>,
    status: S,
}

#[derive(Serialize)]
struct StatusMeta<'a> {
    name: &'a str,
    namespace: &'a str,
}

/// A resource of the folder as the engine takes it. Files carry no status
/// and no re-test annotation; Secrets and ConfigMaps are the namespace's.
fn desired<'a, K: Resource + HasSpec>(
    snapshot: &'a Snapshot,
    key: &'a Key,
    loaded: &'a Loaded<K>,
) -> Desired<'a, K::Spec> {
    static NONE: BTreeMap<String, Data> = BTreeMap::new();
    Desired {
        id: key,
        spec: loaded.object.spec(),
        generation: loaded.object.meta().generation,
        retest: "",
        secrets: snapshot.secrets.get(&key.namespace).unwrap_or(&NONE),
        config_maps: snapshot.config_maps.get(&key.namespace).unwrap_or(&NONE),
        conditions: &[],
        on_change: None,
    }
}

/// Keys of running entries that the snapshot no longer has, except those whose
/// file is broken (they keep their last valid configuration).
fn gone(
    entries: &BTreeMap<Key, Written>,
    present: impl Fn(&Key) -> bool,
    broken: &BTreeSet<PathBuf>,
) -> Vec<Key> {
    entries
        .iter()
        .filter(|(k, e)| !present(k) && !broken.contains(&e.file))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Writes `text` to `path` atomically (temporary file, then rename).
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

impl Supervisor {
    /// `manifests` is the folder the Secrets come from.
    pub fn new(
        paths: Paths,
        manifests: &Path,
        outbox: Arc<Outbox>,
        options: WorkerOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        let engine = Engine::new(Environment {
            outbox,
            tokens: Tokens::new(Some(Arc::new(SecretFiles::Folder(manifests.to_owned())))),
            default_sink: Some(paths.tickets.clone()),
            options,
            metrics: metrics.clone(),
        });
        Self {
            paths,
            engine,
            metrics,
            published: Published::default(),
            incoming: BTreeMap::new(),
            outgoing: BTreeMap::new(),
        }
    }

    /// Brings the running state in line with `snapshot`. Resources that came
    /// from a file that now has a bad document and are missing from it keep
    /// running as they were, as an API server keeps the last valid object.
    pub async fn reconcile(&mut self, snapshot: &Snapshot) {
        let broken = snapshot.files_with_problems();
        self.reconcile_outgoing(snapshot, &broken);
        self.reconcile_incoming(snapshot, &broken).await;
        *write_unpoisoned(&self.published) = self.engine.samples();
    }

    /// The running resources as of the last reconcile, for metrics.
    pub(crate) fn published(&self) -> Published {
        self.published.clone()
    }

    fn reconcile_outgoing(&mut self, snapshot: &Snapshot, broken: &BTreeSet<PathBuf>) {
        let gone = gone(
            &self.outgoing,
            |k| snapshot.outgoing.contains_key(k),
            broken,
        );
        for key in gone {
            self.outgoing.remove(&key);
            self.engine.remove_outgoing(&key);
            self.forget_status(OUTGOING_KIND, &key);
            tracing::info!(resource = %format!("{OUTGOING_KIND} {}", key), "removed");
        }
        for (key, loaded) in &snapshot.outgoing {
            let began = Instant::now();
            self.engine.apply_outgoing(desired(snapshot, key, loaded));
            self.metrics.reconciled(OUTGOING_KIND, began.elapsed());
            self.outgoing.entry(key.clone()).or_default().file = loaded.file.clone();
        }
    }

    async fn reconcile_incoming(&mut self, snapshot: &Snapshot, broken: &BTreeSet<PathBuf>) {
        let gone = gone(
            &self.incoming,
            |k| snapshot.incoming.contains_key(k),
            broken,
        );
        for key in gone {
            self.incoming.remove(&key);
            self.engine.remove_incoming(&key).await;
            self.forget_status(INCOMING_KIND, &key);
            tracing::info!(resource = %format!("{INCOMING_KIND} {}", key), "removed; its worker stopped");
        }
        for (key, loaded) in &snapshot.incoming {
            // Mail from our own outgoing addresses is a loop.
            let own = own_addresses(
                &key.namespace,
                snapshot
                    .outgoing
                    .iter()
                    .map(|(k, o)| (k.namespace.as_str(), o.object.spec.email.as_str())),
            );
            let state = self.paths.state.clone();
            let began = Instant::now();
            let applied = self
                .engine
                .apply_incoming(desired(snapshot, key, loaded), &own, || {
                    Arc::new(FileCursorStore::new(&state))
                })
                .await;
            self.metrics.reconciled(INCOMING_KIND, began.elapsed());
            // The counterpart of the controller's WorkerStarted event.
            if applied == Applied::Restarted {
                tracing::info!(resource = %format!("{INCOMING_KIND} {}", key), "fetch worker restarted with the new configuration");
            }
            self.incoming.entry(key.clone()).or_default().file = loaded.file.clone();
        }
    }

    fn forget_status(&self, kind: &str, key: &Key) {
        let _ = std::fs::remove_file(self.paths.status_file(kind, key));
    }

    /// Computes every resource's status and writes those that changed.
    pub fn write_status(&mut self) -> std::io::Result<()> {
        let now = jiff::Timestamp::now();
        for (key, written) in &mut self.incoming {
            if let Some(c) = self.engine.incoming_status(key, now) {
                write_if_changed(&self.paths, INCOMING_KIND, key, written, c)?;
            }
        }
        for (key, written) in &mut self.outgoing {
            if let Some(c) = self.engine.outgoing_status(key, &[], now) {
                write_if_changed(&self.paths, OUTGOING_KIND, key, written, c)?;
            }
        }
        Ok(())
    }

    /// Stops every worker; each finishes its message in flight and saves its
    /// cursor. Their last counters stay for the final status.
    pub async fn shutdown(&mut self) {
        self.engine.shutdown().await;
    }
}

fn write_if_changed<S: Serialize>(
    paths: &Paths,
    kind: &'static str,
    key: &Key,
    written: &mut Written,
    computed: Computed<S>,
) -> std::io::Result<()> {
    let doc = StatusDocument {
        api_version: "mailroom.dev/v1alpha1",
        kind,
        metadata: StatusMeta {
            name: &key.name,
            namespace: &key.namespace,
        },
        status: computed.status,
    };
    let text = serde_yaml::to_string(&doc).map_err(std::io::Error::other)?;
    if let Some(ready) = computed.ready_changed {
        tracing::info!(resource = %format!("{kind} {}", key), ready = %ready.status, reason = %ready.reason, "{}", ready.message);
    }
    if written.text.as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    write_atomic(&paths.status_file(kind, key), &text)?;
    written.text = Some(text);
    Ok(())
}

/// Writes the list of bad documents (or removes it when there is none).
pub(crate) fn write_problems(paths: &Paths, snapshot: &Snapshot) -> std::io::Result<()> {
    let file = paths.status.join("problems.yaml");
    if snapshot.problems.is_empty() {
        return match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    #[derive(Serialize)]
    struct P<'a> {
        file: String,
        document: usize,
        field: &'a str,
        message: &'a str,
    }
    let list: Vec<P<'_>> = snapshot
        .problems
        .iter()
        .map(|p| P {
            file: p.file.display().to_string(),
            document: p.document,
            field: &p.field,
            message: &p.message,
        })
        .collect();
    let text = serde_yaml::to_string(&list).map_err(std::io::Error::other)?;
    write_atomic(&file, &text)
}
