//! Real proxies from Debian on loopback: Dante (SOCKS5, with or without
//! username/password) and tinyproxy (HTTP CONNECT, with or without basic
//! auth). Each runs under a small shell guard that holds a pipe from the test
//! process and stops the proxy when the pipe closes, so a proxy never outlives
//! its test, even after a panic or kill -9.

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;

/// The system account Dante checks SOCKS5 usernames against (Dante reads the
/// system's password database).
pub const SOCKS_USER: &str = "mailroom-proxy";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Socks5,
    HttpConnect,
}

pub struct Proxy {
    kind: Kind,
    port: u16,
    dir: tempfile::TempDir,
    guard: Option<(Child, ChildStdin)>,
    credentials: Option<(String, String)>,
}

// The guard leads the proxy's process group; when the pipe closes it kills
// the whole group, the proxy's forked children (and their tunnels) included.
const GUARD: &str = r#""$@" & read _; kill -KILL 0"#;

/// Creates the SOCKS system account with `password` (idempotent).
fn ensure_socks_user(password: &str) -> Result<(), Error> {
    let exists = Command::new("id")
        .arg(SOCKS_USER)
        .output()?
        .status
        .success();
    if !exists {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SOCKS_USER,
            ])
            .output()?;
        if !out.status.success() {
            return Err(Error::Setup(format!(
                "useradd {SOCKS_USER}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    let mut chpasswd = Command::new("chpasswd").stdin(Stdio::piped()).spawn()?;
    if let Some(stdin) = chpasswd.stdin.as_mut() {
        writeln!(stdin, "{SOCKS_USER}:{password}")?;
    }
    if !chpasswd.wait()?.success() {
        return Err(Error::Setup(format!("chpasswd for {SOCKS_USER} failed")));
    }
    Ok(())
}

impl Proxy {
    /// Dante on a free loopback port; with `password`, SOCKS5
    /// username/password authentication as `SOCKS_USER`.
    pub fn socks5(password: Option<&str>) -> Result<Self, Error> {
        if let Some(p) = password {
            ensure_socks_user(p)?;
        }
        Self::start(
            Kind::Socks5,
            password.map(|p| (SOCKS_USER.to_owned(), p.to_owned())),
        )
    }

    /// tinyproxy on a free loopback port; with `credentials`, basic auth.
    pub fn http(credentials: Option<(&str, &str)>) -> Result<Self, Error> {
        Self::start(
            Kind::HttpConnect,
            credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
        )
    }

    fn start(kind: Kind, credentials: Option<(String, String)>) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("mrpx-")
            .tempdir_in("/tmp")?;
        fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )?;
        let mut proxy = Self {
            kind,
            port: crate::free_port()?,
            dir,
            guard: None,
            credentials,
        };
        proxy.write_config()?;
        proxy.resume()?;
        Ok(proxy)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("proxy.log")
    }

    fn write_config(&self) -> Result<(), Error> {
        let log = self.log_path();
        let text = match self.kind {
            Kind::Socks5 => format!(
                "logoutput: {log}\ninternal: 127.0.0.1 port = {port}\nexternal: 127.0.0.1\nsocksmethod: {method}\nclientmethod: none\nuser.privileged: root\nuser.unprivileged: nobody\nclient pass {{\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n  log: connect error\n}}\nsocks pass {{\n  from: 127.0.0.0/8 to: 127.0.0.0/8\n  log: connect error\n}}\n",
                log = log.display(),
                port = self.port,
                method = if self.credentials.is_some() {
                    "username"
                } else {
                    "none"
                },
            ),
            Kind::HttpConnect => {
                let mut t = format!(
                    "Port {port}\nListen 127.0.0.1\nTimeout 3600\nLogFile \"{log}\"\nLogLevel Connect\nMaxClients 100\nAllow 127.0.0.1\nPidFile \"{pid}\"\n",
                    port = self.port,
                    log = log.display(),
                    pid = self.dir.path().join("proxy.pid").display(),
                );
                if let Some((u, p)) = &self.credentials {
                    t.push_str(&format!("BasicAuth {u} {p}\n"));
                }
                t
            }
        };
        fs::write(self.dir.path().join("proxy.conf"), text)?;
        Ok(())
    }

    /// Starts the proxy (again, on the same port).
    pub fn resume(&mut self) -> Result<(), Error> {
        let conf = self.dir.path().join("proxy.conf");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", GUARD, "guard"]);
        match self.kind {
            Kind::Socks5 => cmd
                .arg("danted")
                .arg("-f")
                .arg(&conf)
                .arg("-p")
                .arg(self.dir.path().join("proxy.pid")),
            Kind::HttpConnect => cmd.arg("tinyproxy").arg("-d").arg("-c").arg(&conf),
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| Error::Setup("no guard pipe".into()))?;
        self.guard = Some((child, stdin));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(Error::Setup(format!(
                    "{:?} proxy did not listen on {}: {}",
                    self.kind,
                    self.port,
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops the proxy; every tunnel through it breaks.
    pub fn kill(&mut self) {
        if let Some((mut child, stdin)) = self.guard.take() {
            drop(stdin);
            let _ = child.wait();
            // The port is free again once every process of the group is gone.
            let deadline = Instant::now() + Duration::from_secs(5);
            while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL for `spec.proxy.url`.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Socks5 => format!("socks5://127.0.0.1:{}", self.port),
            Kind::HttpConnect => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// What the proxy logged (each tunnel it opened, each refusal).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill();
    }
}
