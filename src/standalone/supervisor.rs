//! Keeps one worker per IncomingEmailServer and one registered sender per
//! OutgoingEmailServer in line with the latest snapshot of the folder: a new
//! or changed resource (spec, or a Secret it references) is (re)started, an
//! unchanged one keeps running, a removed one is stopped after the message in
//! flight. Status is computed by `crate::status` and written when it changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::Serialize;

use super::manifests::{Key, Loaded, Snapshot};
use super::writeback::SecretFiles;
use crate::incoming::worker::WorkerOptions;
use crate::oauth2::Tokens;
use crate::outgoing::Outbox;
use crate::runtime::{IncomingInputs, IncomingRuntime, OutgoingRuntime, Runtime, config_hash};
use crate::state::FileCursorStore;
use crate::status;

/// Rejections this recent keep `FilterRejecting` True.
const REJECTING_WINDOW: Duration = Duration::from_secs(3600);

pub const INCOMING_KIND: &str = "IncomingEmailServer";
pub const OUTGOING_KIND: &str = "OutgoingEmailServer";

/// Where standalone mode keeps what it writes.
#[derive(Clone, Debug)]
pub struct Paths {
    pub status: PathBuf,
    pub tickets: PathBuf,
    pub state: PathBuf,
}

impl Paths {
    /// `DIR/.status/<kind>/<namespace>/<name>.yaml`.
    pub fn status_file(&self, kind: &str, key: &Key) -> PathBuf {
        self.status
            .join(kind.to_ascii_lowercase())
            .join(&key.0)
            .join(format!("{}.yaml", key.1))
    }
}

/// A running resource and what standalone mode keeps beside it.
#[derive(Debug)]
struct Entry<R> {
    runtime: R,
    hash: [u8; 32],
    file: PathBuf,
    generation: Option<i64>,
    conditions: Vec<Condition>,
    written: Option<String>,
}

impl<R> Entry<R> {
    fn new<K: kube::Resource>(
        runtime: R,
        hash: [u8; 32],
        loaded: &Loaded<K>,
        conditions: Vec<Condition>,
    ) -> Self {
        Self {
            runtime,
            hash,
            file: loaded.file.clone(),
            generation: loaded.object.meta().generation,
            conditions,
            written: None,
        }
    }
}

/// The running state of a manifests folder.
#[derive(Debug)]
pub struct Supervisor {
    paths: Paths,
    outbox: Arc<Outbox>,
    incoming: BTreeMap<Key, Entry<IncomingRuntime>>,
    outgoing: BTreeMap<Key, Entry<OutgoingRuntime>>,
    options: WorkerOptions,
    /// OAuth2 grants; rotated refresh tokens go back into the manifests.
    tokens: Tokens,
}

fn hash_of(
    kind: &str,
    key: &Key,
    spec: &impl Serialize,
    snapshot: &Snapshot,
    tokens: &Tokens,
    extra: &[String],
) -> [u8; 32] {
    config_hash(
        kind,
        &serde_json::to_value(spec).unwrap_or_default(),
        &tokens.stable_view(
            &key.0,
            snapshot.secrets.get(&key.0).unwrap_or(&BTreeMap::new()),
        ),
        snapshot.config_maps.get(&key.0).unwrap_or(&BTreeMap::new()),
        extra,
    )
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

/// Keys of running entries that the snapshot no longer has, except those whose
/// file is broken (they keep their last valid configuration).
fn gone<R>(
    entries: &BTreeMap<Key, Entry<R>>,
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
    ) -> Self {
        Self {
            paths,
            outbox,
            incoming: BTreeMap::new(),
            outgoing: BTreeMap::new(),
            options,
            tokens: Tokens::new(Some(Arc::new(SecretFiles::Folder(manifests.to_owned())))),
        }
    }

    /// Brings the running state in line with `snapshot`. Resources that came
    /// from a file that now has a bad document and are missing from it keep
    /// running as they were, as an API server keeps the last valid object.
    pub async fn reconcile(&mut self, snapshot: &Snapshot) {
        let broken = snapshot.files_with_problems();
        self.reconcile_outgoing(snapshot, &broken).await;
        self.reconcile_incoming(snapshot, &broken).await;
    }

    async fn reconcile_outgoing(&mut self, snapshot: &Snapshot, broken: &BTreeSet<PathBuf>) {
        let gone = gone(
            &self.outgoing,
            |k| snapshot.outgoing.contains_key(k),
            broken,
        );
        for key in gone {
            if let Some(mut entry) = self.outgoing.remove(&key) {
                entry.runtime.stop();
                self.outbox.remove(&key.0, &key.1);
                self.forget_status(OUTGOING_KIND, &key);
                tracing::info!(resource = %format!("{OUTGOING_KIND} {}/{}", key.0, key.1), "removed");
            }
        }
        for (key, loaded) in &snapshot.outgoing {
            let spec = &loaded.object.spec;
            let hash = hash_of(OUTGOING_KIND, key, spec, snapshot, &self.tokens, &[]);
            if self.outgoing.get(key).is_some_and(|e| e.hash == hash) {
                continue;
            }
            let previous = self.outgoing.remove(key);
            let stats = previous
                .as_ref()
                .map(|e| e.runtime.stats.clone())
                .unwrap_or_default();
            let conditions = previous.map(|e| e.conditions).unwrap_or_default();
            let runtime = OutgoingRuntime::start(
                &key.0,
                &key.1,
                spec,
                &snapshot.secrets_in(&key.0),
                &snapshot.config_maps_in(&key.0),
                &self.tokens,
                &self.outbox,
                stats,
                None,
            );
            // Taken again now that the runtime's OAuth2 grants are known, so
            // that their own refresh-token write-backs leave it unchanged.
            let hash = hash_of(OUTGOING_KIND, key, spec, snapshot, &self.tokens, &[]);
            self.outgoing
                .insert(key.clone(), Entry::new(runtime, hash, loaded, conditions));
        }
    }

    async fn reconcile_incoming(&mut self, snapshot: &Snapshot, broken: &BTreeSet<PathBuf>) {
        let gone = gone(
            &self.incoming,
            |k| snapshot.incoming.contains_key(k),
            broken,
        );
        for key in gone {
            if let Some(mut entry) = self.incoming.remove(&key) {
                entry.runtime.stop().await;
                self.forget_status(INCOMING_KIND, &key);
                tracing::info!(resource = %format!("{INCOMING_KIND} {}/{}", key.0, key.1), "removed; its worker stopped");
            }
        }
        for (key, loaded) in &snapshot.incoming {
            let spec = &loaded.object.spec;
            // Mail from our own outgoing addresses is a loop.
            let own: Vec<String> = snapshot
                .outgoing
                .iter()
                .filter(|((ns, _), _)| *ns == key.0)
                .map(|(_, o)| o.object.spec.email.clone())
                .collect();
            let hash = hash_of(INCOMING_KIND, key, spec, snapshot, &self.tokens, &own);
            if self.incoming.get(key).is_some_and(|e| e.hash == hash) {
                continue;
            }
            let conditions = match self.incoming.remove(key) {
                Some(mut previous) => {
                    previous.runtime.stop().await;
                    previous.conditions
                }
                None => Vec::new(),
            };
            let runtime = IncomingRuntime::start(IncomingInputs {
                namespace: &key.0,
                name: &key.1,
                spec,
                secrets: &snapshot.secrets_in(&key.0),
                config_maps: &snapshot.config_maps_in(&key.0),
                tokens: &self.tokens,
                own_addresses: own.clone(),
                outbox: self.outbox.clone(),
                default_sink: Some(&self.paths.tickets),
                store: Arc::new(FileCursorStore::new(&self.paths.state)),
                options: self.options.clone(),
                on_change: None,
            });
            // As for outgoing: the digest as the started grants see it.
            let hash = hash_of(INCOMING_KIND, key, spec, snapshot, &self.tokens, &own);
            self.incoming
                .insert(key.clone(), Entry::new(runtime, hash, loaded, conditions));
        }
    }

    fn forget_status(&self, kind: &str, key: &Key) {
        let _ = std::fs::remove_file(self.paths.status_file(kind, key));
    }

    /// Computes every resource's status and writes those that changed.
    pub fn write_status(&mut self) -> std::io::Result<()> {
        let now = jiff::Timestamp::now();
        let since = now
            .checked_sub(jiff::SignedDuration::try_from(REJECTING_WINDOW).unwrap_or_default())
            .unwrap_or(now);
        write_all(&self.paths, &mut self.incoming, since, now)?;
        write_all(&self.paths, &mut self.outgoing, since, now)?;
        Ok(())
    }

    /// Stops every worker; each finishes its message in flight and saves its
    /// cursor. Their last counters stay for the final status.
    pub async fn shutdown(&mut self) {
        for entry in self.incoming.values_mut() {
            entry.runtime.stop().await;
        }
        for entry in self.outgoing.values_mut() {
            entry.runtime.stop();
        }
    }
}

/// Computes and writes (when changed) the status of every entry of one kind.
fn write_all<R: Runtime>(
    paths: &Paths,
    entries: &mut BTreeMap<Key, Entry<R>>,
    since: jiff::Timestamp,
    now: jiff::Timestamp,
) -> std::io::Result<()> {
    for (key, e) in entries {
        let status = e.runtime.status(e.generation, &e.conditions, since, now);
        write_if_changed(
            paths,
            R::KIND,
            key,
            e,
            R::conditions(&status).to_vec(),
            &status,
        )?;
    }
    Ok(())
}

fn write_if_changed<R, S: Serialize>(
    paths: &Paths,
    kind: &'static str,
    key: &Key,
    entry: &mut Entry<R>,
    conditions: Vec<Condition>,
    status: S,
) -> std::io::Result<()> {
    let doc = StatusDocument {
        api_version: "mailroom.dev/v1alpha1",
        kind,
        metadata: StatusMeta {
            name: &key.1,
            namespace: &key.0,
        },
        status,
    };
    let text = serde_yaml::to_string(&doc).map_err(std::io::Error::other)?;
    if entry.written.as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    let ready = |c: &[Condition]| {
        c.iter()
            .find(|c| c.type_ == status::conditions::READY)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let before = ready(&entry.conditions);
    let after = ready(&conditions);
    if before.as_ref().map(|b| (&b.0, &b.1)) != after.as_ref().map(|a| (&a.0, &a.1))
        && let Some((s, reason, message)) = after
    {
        tracing::info!(resource = %format!("{kind} {}/{}", key.0, key.1), ready = %s, reason = %reason, "{message}");
    }
    write_atomic(&paths.status_file(kind, key), &text)?;
    entry.conditions = conditions;
    entry.written = Some(text);
    Ok(())
}

/// Writes the list of bad documents (or removes it when there is none).
pub fn write_problems(paths: &Paths, snapshot: &Snapshot) -> std::io::Result<()> {
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
