//! `mailroom run` against a manifests folder: the manifests the tests write,
//! and the process they start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::{Stack, User};

pub const NS: &str = "helpdesk";

pub fn ca_secret(stack: &Stack) -> String {
    stack.ca_secret_yaml("ca", NS)
}

pub fn password_secret(name: &str, password: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {NS}}}\nstringData: {{password: {password}}}\n"
    )
}

pub fn incoming(name: &str, user: &User, port: u16, secret: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: mailroom.dev/v1alpha1
kind: IncomingEmailServer
metadata: {{name: {name}, namespace: {NS}}}
spec:
  email: {email}
  provider: Other
  server: 127.0.0.1
  port: {port}
  securityType: SSL
  auth: {{passwordSecretRef: {{name: {secret}, key: password}}}}
  tls: {{caSecretRef: {{name: ca, key: ca.crt}}}}
{extra}"#,
        email = user.address
    )
}

pub fn outgoing(name: &str, user: &User, port: u16, secret: &str) -> String {
    format!(
        r#"apiVersion: mailroom.dev/v1alpha1
kind: OutgoingEmailServer
metadata: {{name: {name}, namespace: {NS}}}
spec:
  email: {email}
  senderName: Helpdesk
  provider: Other
  server: 127.0.0.1
  port: {port}
  securityType: TLS
  primary: true
  authentication: {{passwordSecretRef: {{name: {secret}, key: password}}}}
  tls: {{caSecretRef: {{name: ca, key: ca.crt}}}}
"#,
        email = user.address
    )
}

/// Writes a file whole, as an editor saving it would (new content, then rename).
/// An application team's sender, OutgoingEmailServer `notifier` in
/// namespace `apps`: mail from a sender of the mailbox's own namespace would
/// be taken for a loop.
pub fn apps_sender(stack: &Stack, sender: &User) -> String {
    [
        ca_secret(stack),
        password_secret("sender", &sender.password),
        outgoing("notifier", sender, stack.ports().submission, "sender"),
    ]
    .join("---\n")
    .replace(&format!("namespace: {NS}}}"), "namespace: apps}")
}

pub fn put(dir: &Path, file: &str, text: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

pub struct Mailroom {
    pub child: Child,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub listen: u16,
}

impl Mailroom {
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    pub fn start_with(dir: &Path, extra: &[&str]) -> Self {
        let listen = super::free_port();
        let tokens = dir.join("tokens.txt");
        std::fs::write(&tokens, "e2e-token\n").unwrap();
        let log = dir.join(format!("mailroom-{listen}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_mailroom"))
            .args(["run", "--manifests"])
            .arg(dir)
            .args(["--listen", &format!("127.0.0.1:{listen}"), "--token-file"])
            .arg(&tokens)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            dir: dir.to_owned(),
            log,
            listen,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn status(&self, kind: &str, name: &str) -> Option<Value> {
        let path = self
            .dir
            .join(".status")
            .join(kind)
            .join(NS)
            .join(format!("{name}.yaml"));
        let text = std::fs::read_to_string(path).ok()?;
        serde_yaml::from_str(&text).ok()
    }

    /// Waits until `check` holds for the resource's status document.
    pub fn wait(
        &self,
        kind: &str,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.status(kind, name)
                && check(&s)
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{kind} {name}: {what} never happened; status {:?}\nlog:\n{}",
                self.status(kind, name),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn tickets(&self) -> Vec<Value> {
        super::json_files(&self.dir.join(".tickets"))
    }

    pub fn wait_tickets(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let t = self.tickets();
            if t.len() >= n {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} tickets\nlog:\n{}",
                t.len(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM; returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mailroom {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

pub fn is(status: &Value, type_: &str, value: &str) -> bool {
    condition(status, type_).is_some_and(|c| c["status"] == value)
}

pub fn ready(s: &Value) -> bool {
    is(s, "Ready", "True")
}

/// A blocking HTTP POST with a bearer token; returns status and body.
pub fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer e2e-token\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    (
        status,
        response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    )
}

/// A folder with the CA, the mailbox's password Secret and IncomingEmailServer
/// `support` on it over IMAPS, `extra` appended to its spec.
pub fn mailbox_folder(stack: &Stack, dir: &Path, mailbox: &User, extra: &str) {
    put(dir, "ca.yaml", &ca_secret(stack));
    put(
        dir,
        "secrets.yaml",
        &password_secret("mailbox", &mailbox.password),
    );
    put(
        dir,
        "incoming.yaml",
        &incoming("support", mailbox, stack.ports().imaps, "mailbox", extra),
    );
}

pub fn setup(stack: &Stack, dir: &Path, mailbox: &User, sender: &User, filter: &str) {
    put(dir, "ca.yaml", &ca_secret(stack));
    put(
        dir,
        "secrets.yaml",
        &format!(
            "{}---\n{}",
            password_secret("mailbox", &mailbox.password),
            password_secret("sender", &sender.password)
        ),
    );
    put(
        dir,
        "incoming.yaml",
        &incoming("support", mailbox, stack.ports().imaps, "mailbox", filter),
    );
    put(
        dir,
        "outgoing.yaml",
        &outgoing("helpdesk", sender, stack.ports().submission, "sender"),
    );
}
