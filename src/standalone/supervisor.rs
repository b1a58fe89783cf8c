//! Keeps one worker per IncomingEmailServer and one registered sender per
//! OutgoingEmailServer in line with the latest snapshot of the folder: a new
//! or changed resource (spec, or a Secret it references) is (re)started, an
//! unchanged one keeps running, a removed one is stopped after the message in
//! flight. Status is computed by `crate::status` and written when it changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::manifests::{Key, Snapshot};
use crate::api::{EffectiveSettings, IncomingEmailServerStatus, Mode, OutgoingEmailServerStatus};
use crate::config::Credentials;
use crate::connection::ConnectionReport;
use crate::incoming::IncomingSettings;
use crate::incoming::worker::{
    Scanning, Worker, WorkerEvent, WorkerHandle, WorkerOptions, WorkerStats,
};
use crate::outgoing::ack::Acknowledger;
use crate::outgoing::{DEFAULT_POOL_SIZE, Outbox, OutgoingServer, OutgoingSettings, SendStats};
use crate::sinks::Sink;
use crate::state::FileCursorStore;
use crate::status::{self, Health};

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

/// What the latest connection told, shared with the task that follows a worker.
#[derive(Debug)]
struct Live {
    health: Health,
    report: Option<ConnectionReport>,
    next_retry_at: Option<jiff::Timestamp>,
    scanning: Option<String>,
}

impl Live {
    fn new(health: Health) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            health,
            report: None,
            next_retry_at: None,
            scanning: None,
        }))
    }
}

fn lock(live: &Mutex<Live>) -> std::sync::MutexGuard<'_, Live> {
    live.lock().unwrap_or_else(|p| p.into_inner())
}

/// Bookkeeping common to both kinds.
#[derive(Debug)]
struct Common {
    hash: [u8; 32],
    file: PathBuf,
    generation: Option<i64>,
    live: Arc<Mutex<Live>>,
    effective: Option<EffectiveSettings>,
    conditions: Vec<Condition>,
    written: Option<String>,
}

#[derive(Debug)]
struct IncomingEntry {
    common: Common,
    worker: Option<WorkerHandle>,
    /// The worker's counters; kept after it stopped, for the last status.
    stats: Option<Arc<WorkerStats>>,
    follower: Option<JoinHandle<()>>,
    dry_run: bool,
}

#[derive(Debug)]
struct OutgoingEntry {
    common: Common,
    stats: Arc<SendStats>,
    test: Option<JoinHandle<()>>,
}

/// The running state of a manifests folder.
#[derive(Debug)]
pub struct Supervisor {
    paths: Paths,
    outbox: Arc<Outbox>,
    incoming: BTreeMap<Key, IncomingEntry>,
    outgoing: BTreeMap<Key, OutgoingEntry>,
    options: WorkerOptions,
}

/// A digest of everything a resource's configuration depends on: its spec,
/// the Secrets and ConfigMaps of its namespace it names, and `extra`.
fn config_hash(
    kind: &str,
    key: &Key,
    spec: &serde_json::Value,
    snapshot: &Snapshot,
    extra: &[String],
) -> [u8; 32] {
    let mut names = BTreeSet::new();
    collect_strings(spec, &mut names);
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update(spec.to_string().as_bytes());
    for (what, objects) in [
        ("Secret", &snapshot.secrets),
        ("ConfigMap", &snapshot.config_maps),
    ] {
        for name in &names {
            if let Some(data) = objects.get(&(key.0.clone(), name.clone())) {
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

fn collect_strings(v: &serde_json::Value, out: &mut BTreeSet<String>) {
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
    credentials.map(|Credentials::Basic { username, .. }| username.clone())
}

/// Follows a worker's events: status facts into `live`, the rest into the log.
fn follow(
    kind_key: String,
    live: Arc<Mutex<Live>>,
    mut events: mpsc::UnboundedReceiver<WorkerEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                WorkerEvent::Connected(report) => {
                    let mut l = lock(&live);
                    if l.health != Health::Connected {
                        tracing::info!(resource = %kind_key, "connected");
                    }
                    l.health = Health::Connected;
                    l.report = Some(report);
                    l.next_retry_at = None;
                }
                WorkerEvent::ConnectionFailed { report, retry_in } => {
                    tracing::warn!(
                        resource = %kind_key, reason = %report.reason,
                        retry_in_ms = retry_in.as_millis() as u64,
                        "connection failed: {}", report.message
                    );
                    let mut l = lock(&live);
                    l.health = status::health_of(&report);
                    l.report = Some(report);
                    l.next_retry_at = jiff::Timestamp::now()
                        .checked_add(jiff::SignedDuration::try_from(retry_in).unwrap_or_default())
                        .ok();
                }
                WorkerEvent::Scanning(s) => {
                    lock(&live).scanning = Some(match s {
                        Scanning::Idle => "IDLE".to_owned(),
                        Scanning::Polling { every, reason } => {
                            format!("Polling every {every:?} ({reason})")
                        }
                    });
                }
                WorkerEvent::TicketCreated { key, message_id } => {
                    tracing::info!(resource = %kind_key, ticket = %key, message_id = message_id.as_deref().unwrap_or("-"), "ticket created");
                }
                WorkerEvent::Judged {
                    verdict,
                    sender,
                    message_id,
                    dry_run,
                } if !verdict.accepted || dry_run => {
                    tracing::info!(
                        resource = %kind_key, rule = %verdict.rule, dry_run,
                        sender = sender.as_deref().unwrap_or("-"),
                        message_id = message_id.as_deref().unwrap_or("-"),
                        "{}", verdict.reason
                    );
                }
                WorkerEvent::Quarantined { message_id, reason } => {
                    tracing::warn!(resource = %kind_key, message_id = message_id.as_deref().unwrap_or("-"), "quarantined: {reason}");
                }
                WorkerEvent::TicketRejected { message_id, reason } => {
                    tracing::warn!(resource = %kind_key, message_id = message_id.as_deref().unwrap_or("-"), "the sink refused the ticket: {reason}");
                }
                WorkerEvent::SinkUnavailable { message, retry_in } => {
                    tracing::warn!(resource = %kind_key, retry_in_ms = retry_in.as_millis() as u64, "{message}");
                }
                _ => {}
            }
        }
    })
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
    pub fn new(paths: Paths, outbox: Arc<Outbox>, options: WorkerOptions) -> Self {
        Self {
            paths,
            outbox,
            incoming: BTreeMap::new(),
            outgoing: BTreeMap::new(),
            options,
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
        let gone: Vec<Key> = self
            .outgoing
            .iter()
            .filter(|(k, e)| {
                !snapshot.outgoing.contains_key(*k) && !broken.contains(&e.common.file)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(entry) = self.outgoing.remove(&key) {
                if let Some(t) = entry.test {
                    t.abort();
                }
                self.outbox.remove(&key.0, &key.1);
                self.forget_status(OUTGOING_KIND, &key);
                tracing::info!(resource = %format!("{OUTGOING_KIND} {}/{}", key.0, key.1), "removed");
            }
        }
        for (key, loaded) in &snapshot.outgoing {
            let spec = &loaded.object.spec;
            let spec_json = serde_json::to_value(spec).unwrap_or_default();
            let hash = config_hash(OUTGOING_KIND, key, &spec_json, snapshot, &[]);
            if self
                .outgoing
                .get(key)
                .is_some_and(|e| e.common.hash == hash)
            {
                continue;
            }
            let name = format!("{OUTGOING_KIND} {}/{}", key.0, key.1);
            let previous = self.outgoing.remove(key);
            if let Some(t) = previous.as_ref().and_then(|e| e.test.as_ref()) {
                t.abort();
            }
            let stats = previous
                .as_ref()
                .map(|e| e.stats.clone())
                .unwrap_or_default();
            let conditions = previous.map(|e| e.common.conditions).unwrap_or_default();
            let resolved = OutgoingSettings::resolve(
                spec,
                &snapshot.secrets_in(&key.0),
                &snapshot.config_maps_in(&key.0),
            );
            let (health, effective, test) = match resolved {
                Err(f) => {
                    tracing::warn!(resource = %name, reason = %f.reason, "{}", f.message);
                    self.outbox.remove(&key.0, &key.1);
                    (Health::Failing(f), None, None)
                }
                Ok(settings) => {
                    let effective = EffectiveSettings {
                        server: settings.endpoint.host.clone(),
                        port: i32::from(settings.endpoint.port),
                        security_type: Some(settings.endpoint.security),
                        username: username(settings.credentials.as_ref()),
                        scanning: None,
                        after_processing: None,
                    };
                    let enabled = settings.enabled;
                    let test_settings = settings.clone();
                    self.outbox.insert(OutgoingServer::new(
                        &key.0,
                        &key.1,
                        settings,
                        stats.clone(),
                        DEFAULT_POOL_SIZE,
                    ));
                    if enabled {
                        (Health::Connecting, Some(effective), Some(test_settings))
                    } else {
                        (Health::Disabled, Some(effective), None)
                    }
                }
            };
            let live = Live::new(health);
            let test = test.map(|settings| {
                let live = live.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let report = crate::outgoing::smtp::test_connection(&settings).await;
                    if report.reason == crate::connection::Reason::Connected {
                        tracing::info!(resource = %name, "connection test passed");
                    } else {
                        tracing::warn!(resource = %name, reason = %report.reason, "connection test failed: {}", report.message);
                    }
                    let mut l = lock(&live);
                    l.health = status::health_of(&report);
                    l.report = Some(report);
                })
            });
            tracing::info!(resource = %name, "configured");
            self.outgoing.insert(
                key.clone(),
                OutgoingEntry {
                    common: Common {
                        hash,
                        file: loaded.file.clone(),
                        generation: loaded.object.metadata.generation,
                        live,
                        effective,
                        conditions,
                        written: None,
                    },
                    stats,
                    test,
                },
            );
        }
    }

    async fn reconcile_incoming(&mut self, snapshot: &Snapshot, broken: &BTreeSet<PathBuf>) {
        let gone: Vec<Key> = self
            .incoming
            .iter()
            .filter(|(k, e)| {
                !snapshot.incoming.contains_key(*k) && !broken.contains(&e.common.file)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(entry) = self.incoming.remove(&key) {
                stop_incoming(entry).await;
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
            let spec_json = serde_json::to_value(spec).unwrap_or_default();
            let hash = config_hash(INCOMING_KIND, key, &spec_json, snapshot, &own);
            if self
                .incoming
                .get(key)
                .is_some_and(|e| e.common.hash == hash)
            {
                continue;
            }
            let name = format!("{INCOMING_KIND} {}/{}", key.0, key.1);
            let conditions = match self.incoming.remove(key) {
                Some(previous) => {
                    let c = previous.common.conditions.clone();
                    stop_incoming(previous).await;
                    c
                }
                None => Vec::new(),
            };
            let secrets = snapshot.secrets_in(&key.0);
            let resolved = IncomingSettings::resolve(
                &key.0,
                &key.1,
                spec,
                &secrets,
                &snapshot.config_maps_in(&key.0),
            )
            .and_then(|settings| {
                let sink =
                    Sink::from_spec(spec.ticket.sink.as_ref(), &self.paths.tickets, &secrets)?;
                Ok((settings, sink))
            });
            let mut entry = IncomingEntry {
                common: Common {
                    hash,
                    file: loaded.file.clone(),
                    generation: loaded.object.metadata.generation,
                    live: Live::new(Health::Connecting),
                    effective: None,
                    conditions,
                    written: None,
                },
                worker: None,
                stats: None,
                follower: None,
                dry_run: spec.mode == Mode::DryRun,
            };
            match resolved {
                Err(f) => {
                    tracing::warn!(resource = %name, reason = %f.reason, "{}", f.message);
                    lock(&entry.common.live).health = Health::Failing(f);
                }
                Ok((mut settings, sink)) => {
                    settings.own_addresses = own;
                    entry.common.effective = Some(EffectiveSettings {
                        server: settings.server.endpoint.host.clone(),
                        port: i32::from(settings.server.endpoint.port),
                        security_type: Some(settings.server.endpoint.security),
                        username: username(Some(&settings.server.credentials)),
                        scanning: None,
                        after_processing: Some(format!("{:?}", settings.after_processing)),
                    });
                    if !spec.enabled {
                        lock(&entry.common.live).health = Health::Disabled;
                    } else {
                        let mut options = self.options.clone();
                        if spec.acknowledgements.enabled
                            && let Some(out) = &spec.outgoing_server_ref
                        {
                            options.on_ticket = Some(Arc::new(Acknowledger::new(
                                self.outbox.clone(),
                                &key.0,
                                &out.name,
                                &spec.acknowledgements,
                            )));
                        }
                        let store = Arc::new(FileCursorStore::new(&self.paths.state));
                        let (tx, rx) = mpsc::unbounded_channel();
                        let worker = Worker::spawn(settings, Arc::new(sink), store, tx, options);
                        entry.stats = Some(worker.stats.clone());
                        entry.worker = Some(worker);
                        entry.follower = Some(follow(name.clone(), entry.common.live.clone(), rx));
                        tracing::info!(resource = %name, "worker started");
                    }
                }
            }
            self.incoming.insert(key.clone(), entry);
        }
    }

    fn forget_status(&self, kind: &str, key: &Key) {
        let _ = std::fs::remove_file(self.paths.status_file(kind, key));
    }

    /// Computes every resource's status and writes those that changed.
    pub fn write_status(&mut self) -> std::io::Result<()> {
        let now = jiff::Timestamp::now();
        let window_start = now
            .checked_sub(jiff::SignedDuration::try_from(REJECTING_WINDOW).unwrap_or_default())
            .unwrap_or(now);
        for (key, entry) in &mut self.incoming {
            let stats = entry.stats.clone();
            let filter = stats.as_ref().map(|s| {
                let log = s.rejections.lock().unwrap_or_else(|p| p.into_inner());
                status::filter_rejecting(&log, window_start, entry.common.generation, now)
            });
            let (conditions, connection, next_retry_at, scanning) = {
                let l = lock(&entry.common.live);
                (
                    status::conditions(
                        &l.health,
                        filter,
                        entry.common.generation,
                        &entry.common.conditions,
                        now,
                    ),
                    l.report.as_ref().map(status::connection_status),
                    l.next_retry_at.map(Time),
                    l.scanning.clone(),
                )
            };
            let effective = entry.common.effective.clone().map(|mut e| {
                e.scanning = scanning;
                e
            });
            let status = IncomingEmailServerStatus {
                observed_generation: entry.common.generation,
                conditions: conditions.clone(),
                effective,
                connection,
                next_retry_at,
                stats: stats.as_deref().map(status::incoming_stats),
                dry_run: stats
                    .as_deref()
                    .filter(|_| entry.dry_run)
                    .map(status::dry_run_report),
                recent_rejections: stats
                    .as_ref()
                    .map(|s| {
                        status::recent_rejections(
                            &s.rejections.lock().unwrap_or_else(|p| p.into_inner()),
                        )
                    })
                    .unwrap_or_default(),
            };
            write_if_changed(
                &self.paths,
                INCOMING_KIND,
                key,
                &mut entry.common,
                conditions,
                status,
            )?;
        }
        for (key, entry) in &mut self.outgoing {
            let filter = {
                let log = entry
                    .stats
                    .rejections
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                status::filter_rejecting(&log, window_start, entry.common.generation, now)
            };
            let (conditions, connection) = {
                let l = lock(&entry.common.live);
                (
                    status::conditions(
                        &l.health,
                        Some(filter),
                        entry.common.generation,
                        &entry.common.conditions,
                        now,
                    ),
                    l.report.as_ref().map(status::connection_status),
                )
            };
            let status = OutgoingEmailServerStatus {
                observed_generation: entry.common.generation,
                conditions: conditions.clone(),
                effective: entry.common.effective.clone(),
                connection,
                next_retry_at: None,
                stats: Some(status::outgoing_stats(&entry.stats)),
                recent_rejections: status::recent_rejections(
                    &entry
                        .stats
                        .rejections
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()),
                ),
            };
            write_if_changed(
                &self.paths,
                OUTGOING_KIND,
                key,
                &mut entry.common,
                conditions,
                status,
            )?;
        }
        Ok(())
    }

    /// Stops every worker; each finishes its message in flight and saves its
    /// cursor. Their last counters stay for the final status.
    pub async fn shutdown(&mut self) {
        for entry in self.incoming.values_mut() {
            if let Some(worker) = entry.worker.take() {
                worker.stop().await;
            }
            if let Some(follower) = entry.follower.take() {
                let _ = follower.await;
            }
        }
        for entry in self.outgoing.values() {
            if let Some(t) = &entry.test {
                t.abort();
            }
        }
    }
}

async fn stop_incoming(entry: IncomingEntry) {
    if let Some(worker) = entry.worker {
        worker.stop().await;
    }
    if let Some(follower) = entry.follower {
        // The worker's end closes the event channel; the follower then ends too.
        let _ = follower.await;
    }
}

fn write_if_changed<S: Serialize>(
    paths: &Paths,
    kind: &'static str,
    key: &Key,
    common: &mut Common,
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
    if common.written.as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    let ready = |c: &[Condition]| {
        c.iter()
            .find(|c| c.type_ == status::conditions::READY)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let before = ready(&common.conditions);
    let after = ready(&conditions);
    if before.as_ref().map(|b| (&b.0, &b.1)) != after.as_ref().map(|a| (&a.0, &a.1))
        && let Some((s, reason, message)) = after
    {
        tracing::info!(resource = %format!("{kind} {}/{}", key.0, key.1), ready = %s, reason = %reason, "{message}");
    }
    write_atomic(&paths.status_file(kind, key), &text)?;
    common.conditions = conditions;
    common.written = Some(text);
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
