//! A cluster for end-to-end tests: the test bed's Kubernetes API double with
//! the CRDs and the chart's RBAC, kubectl as an admin, and `mailroom controller`
//! replicas as processes, each with its own token of the chart's ServiceAccount.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::Stack;
use testbed::kube::{KubeApi, KubeOptions, Logged, User};

pub const NS: &str = "helpdesk";
pub const SERVICE_ACCOUNT: &str = "system:serviceaccount:mailroom:mailroom";
pub const IES: &str = "incomingemailservers.mailroom.dev";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The chart's RBAC as `helm template` renders it (kept fresh by tests/chart.rs).
pub fn chart_rbac() -> Vec<Value> {
    testbed::kube::read_documents(&root().join("deploy/install.yaml")).unwrap()
}

/// One `mailroom controller` process.
pub struct Replica {
    pub identity: String,
    /// Its own bearer token: faults can single it out.
    pub token: String,
    pub log: PathBuf,
    pub submission: u16,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub health: u16,
    child: Option<Child>,
}

impl Replica {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([signal, &c.id().to_string()])
                .status();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Resident memory of the running process, in KiB.
    pub fn resident_kib(&self) -> Option<u64> {
        super::resident_kib(self.child.as_ref()?.id())
    }

    /// "running", "exited: …", or "stopped by the test".
    fn state(&self) -> String {
        match &self.child {
            None => "stopped by the test".into(),
            Some(c) => {
                let mut probe = Command::new("ps");
                probe.args(["-o", "stat=", "-p", &c.id().to_string()]);
                match probe.output() {
                    Ok(o) if o.status.success() => {
                        // Where each thread waits, and whether it still answers.
                        let threads: Vec<String> =
                            std::fs::read_dir(format!("/proc/{}/task", c.id()))
                                .into_iter()
                                .flatten()
                                .flatten()
                                .map(|t| {
                                    let read = |f: &str| {
                                        std::fs::read_to_string(t.path().join(f))
                                            .unwrap_or_default()
                                            .trim()
                                            .to_owned()
                                    };
                                    format!("{}:{}", read("comm"), read("wchan"))
                                })
                                .collect();
                        let health = self.answers_health();
                        format!(
                            "running, ps state {}, /healthz answered: {health}, threads {}",
                            String::from_utf8_lossy(&o.stdout).trim(),
                            threads.join(" ")
                        )
                    }
                    _ => "exited".into(),
                }
            }
        }
    }

    /// Whether `/healthz` answers within two seconds (the runtime is alive).
    fn answers_health(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.health)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200")
    }

    /// SIGTERM, as Kubernetes stops a pod.
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    pub fn kill_9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to end; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            assert!(start.elapsed() < timeout, "{} did not exit", self.identity);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A GET on the health listener: status code and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.health)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        let code = response
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (code, body)
    }

    /// When this replica logged `what` first, from its log's timestamps.
    pub fn logged_at(&self, what: &str) -> Option<jiff::Timestamp> {
        self.log()
            .lines()
            .find(|l| l.contains(what))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill_9();
    }
}

pub struct Cluster {
    pub api: KubeApi,
    pub dir: tempfile::TempDir,
    admin: PathBuf,
    pub replicas: Vec<Replica>,
}

impl Cluster {
    pub fn start(rbac: Vec<Value>) -> Self {
        let api = KubeApi::start(KubeOptions {
            crds: testbed::kube::read_documents(&root().join("crds")).unwrap(),
            rbac,
            ..KubeOptions::default()
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let admin = dir.path().join("admin.kubeconfig");
        api.write_kubeconfig(&admin, api.admin_token(), NS).unwrap();
        let cluster = Self {
            api,
            dir,
            admin,
            replicas: Vec::new(),
        };
        cluster.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: mailroom}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n"
        ));
        cluster
    }

    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        testbed::kube::kubectl(&self.admin, args, stdin).unwrap()
    }

    /// `kubectl apply -f -`; panics with kubectl's words when it fails.
    pub fn apply(&self, yaml: &str) -> String {
        let out = self.kubectl(&["apply", "-f", "-"], Some(yaml));
        assert!(
            out.status.success(),
            "kubectl apply failed: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn tickets(&self) -> PathBuf {
        self.dir.path().join("tickets")
    }

    pub fn ticket_count(&self) -> usize {
        super::json_files::<Value>(&self.tickets()).len()
    }

    /// Every replica's log, each under its name.
    pub fn log(&self) -> String {
        self.replicas
            .iter()
            .map(|r| format!("--- {}\n{}", r.identity, r.log()))
            .collect()
    }

    /// For a failure message: every replica's log and how its process stands,
    /// then the controllers' last requests as the API server saw them.
    pub fn report(&self) -> String {
        let mut out: String = self
            .replicas
            .iter()
            .map(|r| format!("--- {} ({})\n{}", r.identity, r.state(), r.log()))
            .collect();
        out.push_str("--- last requests of the controllers\n");
        for r in self.requests_of_controller().iter().rev().take(12).rev() {
            out.push_str(&format!(
                "{} {} {}/{} {} -> {}\n",
                r.verb, r.resource, r.namespace, r.name, r.query, r.code
            ));
        }
        out
    }

    /// Starts a replica named `identity` with `extra` arguments.
    pub fn start_controller(&mut self, identity: &str, extra: &[&str]) -> usize {
        let token = self
            .api
            .add_user(User::service_account("mailroom", "mailroom", &[]));
        let kubeconfig = self.dir.path().join(format!("{identity}.kubeconfig"));
        self.api
            .write_kubeconfig(&kubeconfig, &token, "mailroom")
            .unwrap();
        let log = self.dir.path().join(format!("{identity}.log"));
        let submission = super::free_port();
        let health = super::free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_mailroom"))
            .arg("controller")
            .args(["--health-listen", &format!("127.0.0.1:{health}")])
            .args(if extra.contains(&"--listen") {
                Vec::new()
            } else {
                vec!["--listen".to_owned(), format!("127.0.0.1:{submission}")]
            })
            .args(["--lease-namespace", "mailroom", "--identity", identity])
            .args(extra)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.replicas.push(Replica {
            identity: identity.to_owned(),
            token,
            log,
            submission,
            health,
            child: Some(child),
        });
        self.replicas.len() - 1
    }

    pub fn object(&self, name: &str) -> Option<Value> {
        self.api.object(IES, NS, name)
    }

    pub fn wait_for(&self, what: &str, timeout: Duration, check: impl Fn(&Cluster) -> bool) {
        let start = Instant::now();
        while !check(self) {
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}\nobject: {:#}\ncontroller logs:\n{}",
                self.object("support").unwrap_or_default(),
                self.report()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn requests_of_controller(&self) -> Vec<Logged> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| r.user == SERVICE_ACCOUNT)
            .collect()
    }

    pub fn events(&self) -> Vec<String> {
        let out = self.kubectl(
            &["get", "events.events.k8s.io", "-n", NS, "-o", "json"],
            None,
        );
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["note"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// `kubectl wait --for=condition=Ready` on the mailbox.
    pub fn wait_ready(&self) {
        let out = self.kubectl(
            &[
                "wait",
                "--for=condition=Ready",
                "ies/support",
                "-n",
                NS,
                "--timeout=60s",
            ],
            None,
        );
        assert!(
            out.status.success(),
            "kubectl wait failed: {}\nobject: {:#}\ncontroller logs:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.object("support").unwrap_or_default(),
            self.report()
        );
    }
}

pub fn condition(object: &Value, type_: &str) -> Option<Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

pub fn secrets_yaml(stack: &Stack, password: &str) -> String {
    format!(
        "{}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: mailbox, namespace: {NS}}}\nstringData: {{password: {password:?}}}\n",
        stack.ca_secret_yaml("ca", NS)
    )
}

pub fn incoming_yaml(stack: &Stack, address: &str, tickets: &Path) -> String {
    format!(
        r#"apiVersion: mailroom.dev/v1alpha1
kind: IncomingEmailServer
metadata: {{name: support, namespace: {NS}}}
spec:
  email: {address}
  provider: Other
  server: 127.0.0.1
  port: {port}
  securityType: SSL
  auth: {{passwordSecretRef: {{name: mailbox, key: password}}}}
  tls: {{caSecretRef: {{name: ca, key: ca.crt}}}}
  ticket:
    sink:
      directory: {{path: {tickets:?}}}
"#,
        port = stack.ports().imaps,
    )
}

/// Delivers a mail to `user` every `every` (subjects `{prefix}0`, `{prefix}1`,
/// …) while `during` runs; returns how many were sent, and what `during`
/// returned.
pub fn while_mail_arrives<R>(
    stack: &Stack,
    user: &testbed::User,
    prefix: &str,
    every: Duration,
    during: impl FnOnce() -> R,
) -> (usize, R) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let delivering = AtomicBool::new(true);
    let sent = AtomicUsize::new(0);
    let result = std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            while delivering.load(Ordering::Relaxed) {
                let n = sent.load(Ordering::Relaxed);
                stack
                    .deliver(&user.address, &[mail(&format!("{prefix}{n}"))])
                    .unwrap();
                sent.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(every);
            }
        });
        let result = during();
        delivering.store(false, Ordering::Relaxed);
        sender.join().unwrap();
        result
    });
    (sent.load(Ordering::Relaxed), result)
}

/// A mail from a sender of its own (loop protection counts per sender).
pub fn mail(subject: &str) -> String {
    format!(
        "From: Customer <{subject}@customers.example.org>\r\nTo: support@mailroom.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.org>\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\n\r\nPlease help.\r\n"
    )
}

/// The mailbox and its resources applied (no controller yet).
pub fn with_mailbox(stack: &Stack, rbac: Vec<Value>) -> (Cluster, testbed::User) {
    let user = stack
        .add_user("support@mailroom.test", "s3cret-pass")
        .unwrap();
    let cluster = Cluster::start(rbac);
    cluster.apply(&secrets_yaml(stack, &user.password));
    cluster.apply(&incoming_yaml(stack, &user.address, &cluster.tickets()));
    (cluster, user)
}

/// A Secret with `sender`'s password and a primary OutgoingEmailServer
/// `name` sending as `sender` through the stack's submission port, in
/// `namespace` (whose Secret `ca` holds the stack's CA).
pub fn outgoing_yaml(stack: &Stack, name: &str, namespace: &str, sender: &testbed::User) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: {namespace}}}
stringData: {{password: {password}}}
---
apiVersion: mailroom.dev/v1alpha1
kind: OutgoingEmailServer
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  email: {email}
  provider: Other
  server: 127.0.0.1
  port: {port}
  securityType: TLS
  primary: true
  authentication: {{passwordSecretRef: {{name: {name}, key: password}}}}
  tls: {{caSecretRef: {{name: ca, key: ca.crt}}}}
"#,
        password = sender.password,
        email = sender.address,
        port = stack.ports().submission,
    )
}

impl Cluster {
    /// Waits until `sent` messages are tickets, then checks none is two.
    pub fn assert_each_message_one_ticket(&self, sent: usize) {
        self.wait_for("every message a ticket", Duration::from_secs(30), |c| {
            c.ticket_count() >= sent
        });
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(self.ticket_count(), sent, "a message became two tickets");
    }
}

/// The CA Secret, one Secret with every password, and an IncomingEmailServer
/// `box-N` per user (over IMAPS), labelled for the shard `shard(N)` names.
pub fn mailboxes_yaml(
    stack: &Stack,
    users: &[testbed::User],
    shard: impl Fn(usize) -> Option<String>,
) -> String {
    let mut out = stack.ca_secret_yaml("ca", NS);
    out.push_str(&format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: passwords, namespace: {NS}}}\nstringData:\n"
    ));
    for (i, u) in users.iter().enumerate() {
        out.push_str(&format!("  p{i}: {:?}\n", u.password));
    }
    for (i, u) in users.iter().enumerate() {
        let labels = shard(i)
            .map(|s| format!(", labels: {{mailroom.dev/shard: {s}}}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "---\napiVersion: mailroom.dev/v1alpha1\nkind: IncomingEmailServer\nmetadata: {{name: box-{i}, namespace: {NS}{labels}}}\nspec:\n  email: {}\n  provider: Other\n  server: 127.0.0.1\n  port: {}\n  securityType: SSL\n  auth: {{passwordSecretRef: {{name: passwords, key: p{i}}}}}\n  tls: {{caSecretRef: {{name: ca, key: ca.crt}}}}\n",
            u.address,
            stack.ports().imaps
        ));
    }
    out
}
