//! A Kubernetes API server double, served over HTTPS on loopback so that the
//! real `mailroom controller` binary and the real `kubectl` reach it through a
//! kubeconfig: discovery, list and watch (resourceVersion, bookmarks, selectors,
//! `410 Gone`), optimistic concurrency, server-side apply with managed fields,
//! JSON, merge and strategic patches, the status subresource, finalizers,
//! namespaces, admission with the CRDs' schemas and CEL rules, RBAC from the
//! chart's rules, TokenReview, and faults on demand.
//!
//! What a real API server checks that this double does not is listed in
//! `docs/testing.md`.

mod admission;
mod faults;
mod fields;
mod handlers;
mod kinds;
mod patch;
mod rbac;
mod render;
mod review;
mod select;
mod server;
mod status;
mod store;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

pub use faults::Faults;
pub use rbac::{MASTERS, User};

use crate::Error;
use admission::Admission;
use handlers::{CRDS, State};
use kinds::Kinds;
use rbac::Rbac;
use store::Store;

/// Namespaces every cluster starts with.
const INITIAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

#[derive(Clone, Debug)]
pub struct KubeOptions {
    pub listen: SocketAddr,
    /// CRDs served from the start (YAML or JSON documents of kind CustomResourceDefinition).
    pub crds: Vec<Value>,
    /// Roles, ClusterRoles and bindings (e.g. `helm template` output) that decide
    /// what every user outside `system:masters` may do.
    pub rbac: Vec<Value>,
    /// Objects survive a restart in `DIR/state.json`.
    pub state_dir: Option<PathBuf>,
    /// Changes kept for watches to resume from; older versions get 410 Gone.
    pub history: usize,
    pub bookmark_every: Duration,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            crds: Vec::new(),
            rbac: Vec::new(),
            state_dir: None,
            history: 10_000,
            bookmark_every: Duration::from_secs(5),
        }
    }
}

/// One request as served: who, what, and the answer's code.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Logged {
    pub user: String,
    pub verb: String,
    /// `secrets`, `incomingemailservers.mailroom.dev/status`.
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub query: String,
    pub code: u16,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    pub faults: Faults,
    pub log: Mutex<Vec<Logged>>,
    pub drop_watches: tokio::sync::watch::Sender<u64>,
    pub bookmark_every: Duration,
    pub address: String,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, mut entry: Logged, code: u16) {
        entry.code = code;
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry);
    }
}

/// Reads every YAML document of the files in `dir` (or of the file `dir`).
pub fn read_documents(path: &Path) -> Result<Vec<Value>, Error> {
    let mut files = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let p = entry?.path();
            if p.extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            {
                files.push(p);
            }
        }
        files.sort();
    } else {
        files.push(path.to_owned());
    }
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        docs.extend(
            parse_documents(&text).map_err(|e| Error::Setup(format!("{}: {e}", file.display())))?,
        );
    }
    Ok(docs)
}

/// The non-empty YAML documents of a text.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).map_err(|e| e.to_string())?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// The kubectl that `scripts/install-tools` puts in `.tools/bin`.
pub fn kubectl_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/kubectl")
}

/// Runs kubectl with a kubeconfig, `stdin` fed to it.
pub fn kubectl(
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<std::process::Output, Error> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let path = kubectl_path();
    if !path.exists() {
        return Err(Error::Setup(format!(
            "{} is missing: run scripts/install-tools",
            path.display()
        )));
    }
    let mut child = Command::new(path)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.unwrap_or_default().as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

/// A running double; dropped, it stops.
pub struct KubeApi {
    shared: Arc<Shared>,
    url: String,
    ca_pem: String,
    admin_token: String,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

fn token() -> String {
    (0..40).map(|_| fastrand::alphanumeric()).collect()
}

impl KubeApi {
    pub fn start(opts: KubeOptions) -> Result<Self, Error> {
        let certs = crate::tls::generate()?;
        let tls = crate::tls::acceptor(&certs, &[b"http/1.1"])?;

        let mut store = Store::new(opts.history);
        let state_file = opts.state_dir.as_ref().map(|d| d.join("state.json"));
        let restored = match &state_file {
            Some(f) if f.exists() => {
                let text = std::fs::read_to_string(f)?;
                let snapshot: Value = serde_json::from_str(&text)
                    .map_err(|e| Error::Setup(format!("{}: {e}", f.display())))?;
                store.restore(&snapshot);
                true
            }
            _ => false,
        };
        if !restored {
            for ns in INITIAL_NAMESPACES {
                store.put(
                    "namespaces",
                    "",
                    ns,
                    json!({
                        "apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": ns, "uid": format!("ns-{ns}"), "creationTimestamp": handlers::now()},
                        "status": {"phase": "Active"},
                    }),
                );
            }
        }
        for crd in &opts.crds {
            let name = crd["metadata"]["name"].as_str().unwrap_or_default();
            if store.get(CRDS, "", name).is_none() {
                let mut crd = crd.clone();
                crd["metadata"]["uid"] = json!(format!("crd-{name}"));
                crd["metadata"]["creationTimestamp"] = json!(handlers::now());
                store.put(CRDS, "", name, crd);
            }
        }
        let crds: Vec<Value> = store.list(CRDS, None).cloned().collect();
        let admin_token = token();
        let mut users = HashMap::new();
        users.insert(
            admin_token.clone(),
            User {
                name: "testbed-admin".into(),
                uid: "testbed-admin".into(),
                groups: vec![MASTERS.into(), "system:authenticated".into()],
                audiences: Vec::new(),
            },
        );
        let listener = std::net::TcpListener::bind(opts.listen)?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let host = match address {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        let url = format!("https://{host}:{}", address.port());
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                kinds: Kinds::with_crds(&crds),
                admission: Admission::for_crds(&crds),
                store,
                rbac: Rbac::from_documents(&opts.rbac),
                users,
                state_file,
            }),
            faults: Faults::default(),
            log: Mutex::new(Vec::new()),
            drop_watches: tokio::sync::watch::channel(0).0,
            bookmark_every: opts.bookmark_every,
            address: address.to_string(),
        });
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name("kube-api".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => server::serve(l, tls, serving, stop_rx).await,
                        Err(e) => eprintln!("kube-api: cannot listen: {e}"),
                    }
                });
                runtime.shutdown_background();
            })?;
        Ok(Self {
            shared,
            url,
            ca_pem: certs.ca_pem,
            admin_token,
            stop,
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A token of `system:masters`, for kubectl and test set-up.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Registers a bearer token for `user` and returns it.
    pub fn add_user(&self, user: User) -> String {
        let t = token();
        self.shared.lock().users.insert(t.clone(), user);
        t
    }

    /// A kubeconfig that reaches this server with `token`.
    pub fn kubeconfig(&self, token: &str, namespace: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: testbed\n  user:\n    token: {token}\ncontexts:\n- name: testbed\n  context:\n    cluster: testbed\n    user: testbed\n    namespace: {namespace}\ncurrent-context: testbed\n",
            self.url
        )
    }

    pub fn write_kubeconfig(&self, path: &Path, token: &str, namespace: &str) -> Result<(), Error> {
        std::fs::write(path, self.kubeconfig(token, namespace))?;
        Ok(())
    }

    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Every request served so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ends every open watch now; clients resume from their last version.
    pub fn drop_watches(&self) {
        self.shared.drop_watches.send_modify(|n| *n += 1);
    }

    /// Forgets the change history: a watch resumed from any version seen so far
    /// is answered 410 Gone and the client must list again.
    pub fn compact(&self) {
        self.shared.lock().store.compact();
    }

    /// An object as stored, by resource (`secrets`, `incomingemailservers.mailroom.dev`).
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .lock()
            .store
            .get(resource, namespace, name)
            .cloned()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.drop_watches();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
