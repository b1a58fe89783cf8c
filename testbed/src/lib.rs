//! Real mail servers for mailroom's tests and local runs: Dovecot (IMAP, POP3,
//! IDLE, LMTP) and Postfix (submission with STARTTLS, SMTPS, SASL through Dovecot)
//! started as plain processes on loopback, under one folder, with a private CA.
//!
//! Postfix delivers into Dovecot over LMTP, so a message sent through the stack
//! can be fetched back from it; mail to any other domain lands in the sink
//! mailbox, so nothing leaves the machine. The plain ports answer on ::1 too,
//! there with no STARTTLS and passwords accepted in clear: tests use that to
//! prove that a client refuses to log in there.
//!
//! `kube` is a Kubernetes API server double on loopback, for the controller.
//!
//! Cleanup does not depend on the test process ending well: a watchdog process
//! holds a pipe from it and kills the servers' process groups (and removes the
//! folder) when that pipe closes, whether by drop, exit, panic or kill -9.

mod client;
pub mod kube;
pub mod oauth;
mod policy;
pub mod proxy;
pub mod rt;
mod tls;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream,
};
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

pub use client::{LineClient, tls_config};
pub use tls::{TestCerts, acceptor as tls_acceptor, generate as test_certificates};

/// The mail domain every test user lives in.
pub const DOMAIN: &str = "mailroom.test";
/// Loopback address whose listeners offer no STARTTLS and accept passwords in
/// clear: IPv6's, since tests talk to 127.0.0.1 and ::1 only.
pub const CLEARTEXT_HOST: Ipv6Addr = Ipv6Addr::LOCALHOST;
/// Mailbox that receives every message addressed outside [`DOMAIN`].
pub const SINK: &str = "sink@mailroom.test";
/// Postfix accepts mail for this local part and throws it away.
pub const DISCARD: &str = "discard";
/// Postfix refuses any recipient with this local part, for good (550 5.1.1).
pub const REFUSED: &str = "refused";
/// Postfix refuses any recipient with this local part for now (450 4.2.1).
pub const DEFERRED: &str = "deferred";
/// System user that owns the maildirs: Dovecot refuses uid 0 for mail access.
const MAIL_USER: &str = "mailroom-test";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{0}")]
    Setup(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("mail servers not ready after {waited:?}: {what}\n{logs}")]
    NotReady {
        waited: Duration,
        what: String,
        logs: String,
    },
}

/// Raises this process's open-file limit to its hard limit, for the servers
/// it starts (which inherit it) and for its own sockets: many mailboxes mean
/// a socket each on both sides.
pub fn raise_fd_limit() -> Result<(), Error> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .map_err(|e| Error::Setup(format!("cannot raise the open-file limit: {e}")))
}

/// A port free on 127.0.0.1 right now, for a server a test starts later.
/// Taken below the kernel's ephemeral range (32768–60999 by default): a port
/// from that range can become, between this check and the server's bind, the
/// source port of an outgoing connection (tests open thousands), and the
/// server then fails to start.
pub fn free_port() -> Result<u16, Error> {
    free_port_on(&[IpAddr::V4(Ipv4Addr::LOCALHOST)])
}

fn free_port_on(hosts: &[IpAddr]) -> Result<u16, Error> {
    const FIRST: u16 = 20000;
    const SPAN: u16 = 12000;
    // Callers of one process take turns through the span, so no two get the
    // same port; another process starts elsewhere in it.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id() % u32::from(SPAN),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = FIRST + (NEXT.fetch_add(1, Ordering::SeqCst) % u32::from(SPAN)) as u16;
        if hosts.iter().all(|h| TcpListener::bind((*h, port)).is_ok()) {
            return Ok(port);
        }
    }
    Err(Error::Setup(format!(
        "no port free on {hosts:?} in {FIRST}–{}",
        FIRST + SPAN - 1
    )))
}

/// Ports of one stack. IMAP, POP3 and submission serve STARTTLS on 127.0.0.1 and
/// no TLS at all on [`CLEARTEXT_HOST`], on the same port number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub imap: u16,
    pub imaps: u16,
    pub pop3: u16,
    pub pop3s: u16,
    pub submission: u16,
    pub smtps: u16,
}

impl Ports {
    /// Fixed ports around a base, for a stack a person starts: base 10000 gives
    /// 10143, 10993, 10110, 10995, 10587, 10465.
    pub fn from_base(base: u16) -> Self {
        Self {
            imap: base + 143,
            imaps: base + 993,
            pop3: base + 110,
            pop3s: base + 995,
            submission: base + 587,
            smtps: base + 465,
        }
    }

    /// Ports free on both loopback addresses right now (see [`free_port`]).
    pub fn free() -> Result<Self, Error> {
        let next = || free_port_on(&[IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(CLEARTEXT_HOST)]);
        Ok(Self {
            imap: next()?,
            imaps: next()?,
            pop3: next()?,
            pop3s: next()?,
            submission: next()?,
            smtps: next()?,
        })
    }
}

/// How to start a stack.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Fixed ports; free ones when absent.
    pub ports: Option<Ports>,
    /// Folder to run in, emptied first and kept afterwards; a fresh temporary
    /// folder (removed afterwards) when absent.
    pub dir: Option<PathBuf>,
    /// Offer XOAUTH2 only, not OAUTHBEARER, as Microsoft 365 does: clients
    /// that prefer OAUTHBEARER must fall back to XOAUTH2.
    pub xoauth2_only: bool,
    /// How Dovecot stores mail.
    pub mail_store: MailStore,
    /// Tune Dovecot to hold this many IMAP sessions at once (login processes
    /// that each proxy many TLS sessions, mail processes that each serve many
    /// users), and raise this process's open-file limit for them (Dovecot
    /// inherits it); none: one process per session, the default.
    pub sessions: Option<usize>,
}

/// Dovecot's mail storage format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MailStore {
    /// One file per message, flags in the file name: a flag change renames
    /// the file. What the tests read directly.
    #[default]
    Maildir,
    /// One file per message, flags in Dovecot's index: a flag change writes
    /// no message file.
    Sdbox,
}

/// A mailbox user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub address: String,
    pub password: String,
}

/// One message as stored, for assertions on after-processing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub uid: u32,
    pub flags: Vec<String>,
}

impl StoredMessage {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
    }
}

/// A running Dovecot + Postfix pair.
pub struct Stack {
    dir: PathBuf,
    ports: Ports,
    ca_pem: String,
    startup: Duration,
    watchdog: Option<Child>,
    children: Mutex<Vec<Child>>,
    /// The running Dovecot's process group (its master's pid).
    dovecot: AtomicU32,
    mail_owner: (u32, u32),
    next_user: AtomicU32,
    oauth: oauth::OAuthProvider,
    policy: policy::PolicyService,
    xoauth2_only: bool,
    sessions: Option<usize>,
    mail_store: MailStore,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("dir", &self.dir)
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

type ReadyCheck = dyn Fn(&Stack) -> Result<(), Error>;

const WATCHDOG: &str = r#"trap '' INT TERM HUP
cat >/dev/null
for g in $(cat "$1/pgids" 2>/dev/null); do kill -9 "-$g" 2>/dev/null; done
if [ "$2" = remove ]; then rm -rf -- "$1"; fi
"#;

fn render(template: &str, vars: &[(&str, String)]) -> String {
    vars.iter().fold(template.to_owned(), |text, (key, value)| {
        text.replace(&format!("{{{{{key}}}}}"), value)
    })
}

pub(crate) fn run(command: &mut Command) -> Result<String, Error> {
    let out = command.stdin(Stdio::null()).output().map_err(|e| {
        Error::Setup(format!(
            "cannot run {:?}: {e} (are Dovecot and Postfix installed? run scripts/install-deps)",
            command.get_program()
        ))
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("{command:?}"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn id_of(flag: &str, user: &str) -> Result<u32, Error> {
    run(Command::new("id").args([flag, user]))?
        .trim()
        .parse()
        .map_err(|e| Error::Setup(format!("id {flag} {user}: {e}")))
}

/// Creates the system user that owns the maildirs, once per machine.
fn ensure_mail_user() -> Result<(u32, u32), Error> {
    if id_of("-u", MAIL_USER).is_err() {
        // Another test process may create it at the same moment: check again on failure.
        let created = run(Command::new("useradd").args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            MAIL_USER,
        ]));
        if let Err(e) = created
            && id_of("-u", MAIL_USER).is_err()
        {
            return Err(e);
        }
    }
    Ok((id_of("-u", MAIL_USER)?, id_of("-g", MAIL_USER)?))
}

/// Postfix sleeps before its first greeting when main.cf or a table is younger
/// than a couple of seconds; back-dating them spares every test that wait.
fn backdate(path: &Path) -> Result<(), Error> {
    let past = SystemTime::now() - Duration::from_secs(60);
    fs::File::options()
        .write(true)
        .open(path)?
        .set_modified(past)?;
    Ok(())
}

impl Stack {
    /// The stack shared by every test of this process, started on first use and
    /// stopped by the watchdog when the process ends. Tests keep apart by using
    /// their own users.
    pub fn shared() -> &'static Stack {
        static SHARED: OnceLock<Stack> = OnceLock::new();
        SHARED.get_or_init(|| match Stack::start(Options::default()) {
            Ok(stack) => stack,
            Err(e) => panic!("cannot start the test mail servers: {e}"),
        })
    }

    /// Starts Dovecot and Postfix and waits until every port greets (after a
    /// verified TLS handshake where TLS is implicit).
    pub fn start(options: Options) -> Result<Stack, Error> {
        let began = Instant::now();
        let (dir, remove) = match options.dir {
            Some(dir) => {
                if dir.exists() {
                    fs::remove_dir_all(&dir)?;
                }
                fs::create_dir_all(&dir)?;
                (fs::canonicalize(dir)?, false)
            }
            // Short path: Dovecot's unix socket names must stay under about 100 bytes.
            None => (
                tempfile::Builder::new()
                    .prefix("mrtb-")
                    .tempdir_in("/tmp")?
                    .keep(),
                true,
            ),
        };
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        if options.sessions.is_some() {
            // Dovecot inherits it, and holds a socket per session.
            raise_fd_limit()?;
        }

        let watchdog = Command::new("sh")
            .args(["-c", WATCHDOG, "watchdog"])
            .arg(&dir)
            .arg(if remove { "remove" } else { "keep" })
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        // From here on, dropping `stack` stops whatever has started.
        let mut stack = Stack {
            dir,
            ports: match options.ports {
                Some(p) => p,
                None => Ports::free()?,
            },
            ca_pem: String::new(),
            startup: Duration::ZERO,
            watchdog: Some(watchdog),
            children: Mutex::new(Vec::new()),
            dovecot: AtomicU32::new(0),
            mail_owner: (0, 0),
            next_user: AtomicU32::new(1),
            oauth: oauth::OAuthProvider::start()?,
            policy: policy::PolicyService::start()?,
            xoauth2_only: options.xoauth2_only,
            sessions: options.sessions,
            mail_store: options.mail_store,
        };
        stack.configure()?;
        stack.spawn_servers()?;
        stack.wait_ready(began)?;
        stack.startup = began.elapsed();
        Ok(stack)
    }

    fn configure(&mut self) -> Result<(), Error> {
        let (uid, gid) = ensure_mail_user()?;
        self.mail_owner = (uid, gid);
        let d = &self.dir;
        for sub in [
            "run",
            "log",
            "tls",
            "mail",
            "dovecot-state",
            "postfix/etc",
            "postfix/queue",
            "postfix/data",
        ] {
            fs::create_dir_all(d.join(sub))?;
            fs::set_permissions(d.join(sub), fs::Permissions::from_mode(0o755))?;
        }
        chown(d.join("mail"), Some(uid), Some(gid))?;
        let postfix_uid = id_of("-u", "postfix")?;
        chown(d.join("postfix/data"), Some(postfix_uid), None)?;

        let certs = tls::generate()?;
        fs::write(d.join("tls/ca.crt"), &certs.ca_pem)?;
        fs::write(d.join("tls/server.crt"), &certs.server_pem)?;
        fs::write(d.join("tls/server.key"), &certs.server_key_pem)?;
        // Postfix's smtpd runs as user postfix and reads the key itself.
        fs::set_permissions(d.join("tls/server.key"), fs::Permissions::from_mode(0o644))?;
        self.ca_pem = certs.ca_pem;

        let p = self.ports;
        let vars = [
            ("DIR", d.display().to_string()),
            ("RUN", d.join("run").display().to_string()),
            ("ID", std::process::id().to_string()),
            ("MAIL_USER", MAIL_USER.to_owned()),
            (
                "MAIL_LOCATION",
                match self.mail_store {
                    MailStore::Maildir => format!("maildir:{}/mail/%d/%n/Maildir", d.display()),
                    MailStore::Sdbox => format!("sdbox:{}/mail/%d/%n/sdbox", d.display()),
                },
            ),
            ("DOMAIN", DOMAIN.to_owned()),
            ("IMAP", p.imap.to_string()),
            ("IMAPS", p.imaps.to_string()),
            ("POP3", p.pop3.to_string()),
            ("POP3S", p.pop3s.to_string()),
            ("SUBMISSION", p.submission.to_string()),
            ("SMTPS", p.smtps.to_string()),
            ("INTROSPECTION_URL", self.oauth.introspection_url()),
            ("POLICY", self.policy.endpoint()),
            (
                "TOKEN_MECHANISMS",
                if self.xoauth2_only {
                    "xoauth2"
                } else {
                    "xoauth2 oauthbearer"
                }
                .to_owned(),
            ),
        ];
        let mut dovecot = render(include_str!("../templates/dovecot.conf"), &vars);
        if let Some(n) = self.sessions {
            const PER_PROCESS: usize = 250;
            let processes = n.div_ceil(PER_PROCESS) + 4;
            dovecot.push_str(&render(
                include_str!("../templates/dovecot-many.conf"),
                &[
                    ("SESSIONS", n.to_string()),
                    ("PER_PROCESS", PER_PROCESS.to_string()),
                    ("PROCESSES", processes.to_string()),
                    // Every login and mail process of every service may ask.
                    ("AUTH_CLIENTS", (n + 2 * 2048 + 4 * processes).to_string()),
                ],
            ));
        }
        fs::write(d.join("dovecot.conf"), dovecot)?;
        fs::write(
            d.join("dovecot-oauth2.conf.ext"),
            render(include_str!("../templates/dovecot-oauth2.conf.ext"), &vars),
        )?;
        let etc = d.join("postfix/etc");
        fs::write(
            etc.join("main.cf"),
            render(include_str!("../templates/postfix-main.cf"), &vars),
        )?;
        fs::write(
            etc.join("master.cf"),
            render(include_str!("../templates/postfix-master.cf"), &vars),
        )?;
        fs::write(
            etc.join("sink"),
            format!("!/@{}$/ {SINK}\n", DOMAIN.replace('.', "\\.")),
        )?;
        fs::write(
            etc.join("refuse"),
            format!(
                "/^{REFUSED}@/ 550 5.1.1 Recipient address rejected: mailbox unavailable\n/^{DEFERRED}@/ 450 4.2.1 Recipient address rejected: try again later\n"
            ),
        )?;
        fs::write(etc.join("transport"), format!("/^{DISCARD}@/ discard:\n"))?;
        for f in ["main.cf", "master.cf", "sink", "refuse", "transport"] {
            backdate(&etc.join(f))?;
        }
        let users = d.join("users").join(DOMAIN);
        fs::create_dir_all(&users)?;
        fs::set_permissions(d.join("users"), fs::Permissions::from_mode(0o755))?;
        fs::set_permissions(&users, fs::Permissions::from_mode(0o755))?;
        self.add_user(SINK, &random_password())?;
        Ok(())
    }

    fn spawn_dovecot(&self) -> Result<(), Error> {
        let log = |name: &str| {
            fs::File::options()
                .create(true)
                .append(true)
                .open(self.dir.join("log").join(name))
        };
        // Dovecot keeps the caller's stderr open: give it a file, never a pipe.
        let dovecot = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(self.dir.join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(log("dovecot.stdout")?)
            .stderr(log("dovecot.stderr")?)
            .process_group(0)
            .spawn()
            .map_err(|e| {
                Error::Setup(format!(
                    "cannot start dovecot: {e}; run scripts/install-deps"
                ))
            })?;
        self.dovecot.store(dovecot.id(), Ordering::Relaxed);
        self.track(dovecot)
    }

    /// Sends `signal` to every Dovecot process (master, login and mail
    /// processes share its process group).
    fn signal_dovecot(&self, signal: rustix::process::Signal) -> Result<(), Error> {
        let pgid = rustix::process::Pid::from_raw(self.dovecot.load(Ordering::Relaxed) as i32)
            .ok_or_else(|| Error::Setup("dovecot is not running".into()))?;
        rustix::process::kill_process_group(pgid, signal)
            .map_err(|e| Error::Setup(format!("cannot signal dovecot: {e}")))
    }

    /// Makes Postfix answer `451 4.3.2` to every recipient of mail sent by
    /// the SASL login `login` (`true`) or take it again (`false`), from the
    /// next recipient on, open sessions included: a server saying "try again
    /// later" for a while.
    pub fn defer_mail_from(&self, login: &str, deferred: bool) {
        self.policy.set_deferred(login, deferred);
    }

    /// Freezes Dovecot (SIGSTOP): connections stay open and nothing answers,
    /// as with a hung server, until `resume_dovecot`.
    pub fn pause_dovecot(&self) -> Result<(), Error> {
        self.signal_dovecot(rustix::process::Signal::STOP)
    }

    pub fn resume_dovecot(&self) -> Result<(), Error> {
        self.signal_dovecot(rustix::process::Signal::CONT)
    }

    /// Stops Dovecot (every session ends, nothing listens on its ports) until
    /// `start_dovecot`: a mail server outage. SIGTERM goes to every Dovecot
    /// process at once, as systemd's `restart` does to a service's cgroup.
    pub fn stop_dovecot(&self) -> Result<(), Error> {
        self.signal_dovecot(rustix::process::Signal::TERM)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(self.imaps()).is_ok() {
            if Instant::now() > deadline {
                return Err(Error::Setup("dovecot did not stop within 30 s".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Starts Dovecot again after `stop_dovecot`; returns once it greets.
    pub fn start_dovecot(&self) -> Result<(), Error> {
        self.spawn_dovecot()?;
        let began = Instant::now();
        while LineClient::tls(self.imaps(), &self.ca_pem)
            .and_then(|c| self.greets(c, "* OK"))
            .is_err()
        {
            if began.elapsed() > Duration::from_secs(30) {
                return Err(self.not_ready(began, "IMAPS greeting after a restart".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn spawn_servers(&mut self) -> Result<(), Error> {
        let d = self.dir.clone();
        let log = |name: &str| fs::File::create(d.join("log").join(name));
        self.spawn_dovecot()?;

        let etc = d.join("postfix/etc");
        // `postfix check` creates the queue directories with their owners.
        run(Command::new("postfix").arg("-c").arg(&etc).arg("check"))?;
        let daemon_dir = run(Command::new("postconf").args(["-d", "-h", "daemon_directory"]))?;
        let master = Command::new(Path::new(daemon_dir.trim()).join("master"))
            .arg("-c")
            .arg(&etc)
            .arg("-d")
            .stdin(Stdio::null())
            .stdout(log("postfix.stdout")?)
            .stderr(log("postfix.stderr")?)
            .process_group(0)
            .spawn()
            .map_err(|e| {
                Error::Setup(format!(
                    "cannot start postfix: {e}; run scripts/install-deps"
                ))
            })?;
        self.track(master)
    }

    /// Records a server's process group for the watchdog.
    fn track(&self, child: Child) -> Result<(), Error> {
        let mut f = fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("pgids"))?;
        writeln!(f, "{}", child.id())?;
        self.children
            .lock()
            .map_err(|_| Error::Setup("children lock poisoned".into()))?
            .push(child);
        Ok(())
    }

    fn wait_ready(&mut self, began: Instant) -> Result<(), Error> {
        let deadline = began + Duration::from_secs(30);
        let checks: [(&str, &ReadyCheck); 7] = [
            ("IMAPS greeting", &|s| {
                s.greets(LineClient::tls(s.imaps(), &s.ca_pem)?, "* OK")
            }),
            ("IMAP greeting", &|s| {
                s.greets(LineClient::plain(s.imap(), &s.ca_pem)?, "* OK")
            }),
            ("POP3S greeting", &|s| {
                s.greets(LineClient::tls(s.pop3s(), &s.ca_pem)?, "+OK")
            }),
            ("POP3 greeting", &|s| {
                s.greets(LineClient::plain(s.pop3(), &s.ca_pem)?, "+OK")
            }),
            ("SMTPS greeting", &|s| {
                s.greets(LineClient::tls(s.smtps(), &s.ca_pem)?, "220")
            }),
            ("submission greeting", &|s| {
                s.greets(LineClient::plain(s.submission(), &s.ca_pem)?, "220")
            }),
            ("LMTP socket", &|s| {
                UnixStream::connect(s.dir.join("run/lmtp"))
                    .map(drop)
                    .map_err(Error::from)
            }),
        ];
        for (what, check) in checks {
            loop {
                let failure = match check(self) {
                    Ok(()) => break,
                    Err(e) => e,
                };
                if let Some(exited) = self.exited_server() {
                    return Err(self.not_ready(began, format!("{what}: {exited}")));
                }
                if Instant::now() > deadline {
                    return Err(self.not_ready(began, format!("{what}: {failure}")));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    fn greets(&self, mut client: LineClient, prefix: &str) -> Result<(), Error> {
        let line = client.line()?;
        if line.starts_with(prefix) {
            Ok(())
        } else {
            Err(Error::Protocol(format!("unexpected greeting {line:?}")))
        }
    }

    fn exited_server(&mut self) -> Option<String> {
        let children = self.children.get_mut().ok()?;
        children.iter_mut().find_map(|c| match c.try_wait() {
            Ok(Some(status)) => Some(format!("server process {} exited: {status}", c.id())),
            _ => None,
        })
    }

    fn not_ready(&self, began: Instant, what: String) -> Error {
        Error::NotReady {
            waited: began.elapsed(),
            what,
            logs: self.log_tail(),
        }
    }

    /// The last lines of every server log, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for name in [
            "dovecot.log",
            "dovecot.stderr",
            "postfix.log",
            "postfix.stderr",
        ] {
            let text = fs::read_to_string(self.dir.join("log").join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            if !tail.is_empty() {
                out.push_str(&format!("--- {name}\n{}\n", tail.join("\n")));
            }
        }
        out
    }

    /// How long the start took, until every port had greeted.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// The private CA (PEM) that signed the servers' certificate.
    /// The OAuth2 provider that Dovecot checks bearer tokens with.
    pub fn oauth(&self) -> &oauth::OAuthProvider {
        &self.oauth
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A Secret manifest holding the CA under `ca.crt`, for `tls.caSecretRef`.
    pub fn ca_secret_yaml(&self, name: &str, namespace: &str) -> String {
        let pem: String = self.ca_pem.lines().map(|l| format!("    {l}\n")).collect();
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\nstringData:\n  ca.crt: |\n{pem}"
        )
    }

    /// Path of the CA certificate file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("tls/ca.crt")
    }

    fn local(port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
    }

    /// IMAP with STARTTLS.
    pub fn imap(&self) -> SocketAddr {
        Self::local(self.ports.imap)
    }
    /// IMAP with implicit TLS.
    pub fn imaps(&self) -> SocketAddr {
        Self::local(self.ports.imaps)
    }
    /// POP3 with STLS.
    pub fn pop3(&self) -> SocketAddr {
        Self::local(self.ports.pop3)
    }
    /// POP3 with implicit TLS.
    pub fn pop3s(&self) -> SocketAddr {
        Self::local(self.ports.pop3s)
    }
    /// SMTP submission, STARTTLS required before AUTH.
    pub fn submission(&self) -> SocketAddr {
        Self::local(self.ports.submission)
    }
    /// SMTP with implicit TLS.
    pub fn smtps(&self) -> SocketAddr {
        Self::local(self.ports.smtps)
    }
    /// The listener for `port` that offers no STARTTLS (IMAP, POP3 or submission port).
    pub fn cleartext(&self, port: u16) -> SocketAddr {
        SocketAddr::V6(SocketAddrV6::new(CLEARTEXT_HOST, port, 0, 0))
    }

    /// Adds a user with the given password (e.g. a 16-letter app password).
    pub fn add_user(&self, address: &str, password: &str) -> Result<User, Error> {
        if !address.ends_with(&format!("@{DOMAIN}"))
            || address.contains(':')
            || password.contains(':')
        {
            return Err(Error::Setup(format!(
                "user {address:?} must be in @{DOMAIN} and neither it nor the password may contain ':'"
            )));
        }
        let local = address.split('@').next().unwrap_or_default();
        if local.is_empty() || local.contains('/') {
            return Err(Error::Setup(format!(
                "user {address:?} has no usable local part"
            )));
        }
        // Written under another name and renamed, so Dovecot never reads half a line.
        let users = self.dir.join("users").join(DOMAIN);
        let tmp = users.join(format!(".{local}.tmp"));
        fs::write(&tmp, format!("{address}:{{PLAIN}}{password}::::::\n"))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
        fs::rename(&tmp, users.join(local))?;
        Ok(User {
            address: address.to_owned(),
            password: password.to_owned(),
        })
    }

    /// Adds a user with a unique address built from `hint` and a random
    /// 16-letter password, like a Gmail App Password.
    pub fn create_user(&self, hint: &str) -> Result<User, Error> {
        let n = self.next_user.fetch_add(1, Ordering::Relaxed);
        self.add_user(&format!("{hint}-{n}@{DOMAIN}"), &random_password())
    }

    /// Delivers raw messages into a user's INBOX over LMTP, in one session.
    pub fn deliver<M: AsRef<[u8]>>(&self, to: &str, messages: &[M]) -> Result<(), Error> {
        let stream = UnixStream::connect(self.dir.join("run/lmtp"))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let mut expect = |code: &str| -> Result<(), Error> {
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 {
                    return Err(Error::Protocol("LMTP connection closed".into()));
                }
                if !line.starts_with(code) {
                    return Err(Error::Protocol(format!(
                        "LMTP: expected {code}, got {}",
                        line.trim_end()
                    )));
                }
                if line.as_bytes().get(3) != Some(&b'-') {
                    return Ok(());
                }
            }
        };
        expect("220")?;
        writer.write_all(b"LHLO testbed\r\n")?;
        expect("250")?;
        for message in messages {
            writer.write_all(
                format!("MAIL FROM:<testbed@{DOMAIN}>\r\nRCPT TO:<{to}>\r\nDATA\r\n").as_bytes(),
            )?;
            expect("250")?;
            expect("250")?;
            expect("354")?;
            writer.write_all(&dot_stuff(message.as_ref()))?;
            expect("250")?;
        }
        writer.write_all(b"QUIT\r\n")?;
        Ok(())
    }

    fn doveadm(&self, args: &[&str]) -> Result<String, Error> {
        run(Command::new("doveadm")
            .arg("-c")
            .arg(self.dir.join("dovecot.conf"))
            .args(["-f", "tab"])
            .args(args))
    }

    /// The IMAP and POP3 sessions `user` holds now, as Dovecot counts them
    /// (`doveadm who`): `(service, pid)` pairs.
    pub fn sessions(&self, user: &str) -> Result<Vec<(String, String)>, Error> {
        let out = self.doveadm(&["who", "-1", user])?;
        Ok(out
            .lines()
            .skip(1)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split('\t').collect();
                match cols.as_slice() {
                    [name, service, pid, ..] if *name == user => {
                        Some(((*service).to_owned(), (*pid).to_owned()))
                    }
                    _ => None,
                }
            })
            .collect())
    }

    /// The messages of a folder, by UID, with their flags.
    pub fn messages(&self, user: &str, folder: &str) -> Result<Vec<StoredMessage>, Error> {
        // `fetch` answers an unknown folder with nothing at all; `status` fails.
        self.doveadm(&["mailbox", "status", "-u", user, "messages", folder])?;
        let out = self.doveadm(&["fetch", "-u", user, "uid flags", "mailbox", folder])?;
        out.lines()
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (uid, flags) = l.split_once('\t').unwrap_or((l, ""));
                Ok(StoredMessage {
                    uid: uid
                        .parse()
                        .map_err(|_| Error::Protocol(format!("doveadm fetch line {l:?}")))?,
                    flags: flags.split_whitespace().map(str::to_owned).collect(),
                })
            })
            .collect()
    }

    /// Adds a flag (e.g. `\\Seen`) to one message.
    pub fn add_flag(&self, user: &str, folder: &str, uid: u32, flag: &str) -> Result<(), Error> {
        let uid = uid.to_string();
        self.doveadm(&[
            "flags", "add", "-u", user, flag, "mailbox", folder, "uid", &uid,
        ])
        .map(drop)
    }

    /// Every folder of a user.
    pub fn folders(&self, user: &str) -> Result<Vec<String>, Error> {
        let out = self.doveadm(&["mailbox", "list", "-u", user])?;
        Ok(out
            .lines()
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// The raw messages in a user's INBOX, oldest first, read from the maildir.
    pub fn inbox(&self, user: &str) -> Result<Vec<Vec<u8>>, Error> {
        if self.mail_store != MailStore::Maildir {
            return Err(Error::Setup(
                "inbox() reads maildirs; this stack stores mail as sdbox".into(),
            ));
        }
        let (local, domain) = user
            .split_once('@')
            .ok_or_else(|| Error::Setup(format!("{user:?} is not an address")))?;
        let maildir = self
            .dir
            .join("mail")
            .join(domain)
            .join(local)
            .join("Maildir");
        let mut files = Vec::new();
        for sub in ["new", "cur"] {
            match fs::read_dir(maildir.join(sub)) {
                Ok(entries) => {
                    for e in entries {
                        files.push(e?.path());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Maildir names start with the delivery time.
        files.sort_by_key(|p| p.file_name().map(|n| n.to_owned()));
        files.iter().map(|p| Ok(fs::read(p)?)).collect()
    }

    /// Writes messages straight into a user's maildir (`new/`), much faster than
    /// delivery for seeding benchmarks; Dovecot takes them in at the next sync.
    /// With sdbox, the maildir is a staging copy that Dovecot imports (and that
    /// stays, so that no mass deletion slows the disk down for what follows).
    pub fn seed<M: AsRef<[u8]>>(&self, user: &str, messages: &[M]) -> Result<(), Error> {
        let (local, domain) = user
            .split_once('@')
            .ok_or_else(|| Error::Setup(format!("{user:?} is not an address")))?;
        let (uid, gid) = self.mail_owner;
        let leaf = match self.mail_store {
            MailStore::Maildir => "Maildir",
            MailStore::Sdbox => "seed",
        };
        let mut dir = self.dir.join("mail");
        for part in [domain, local, leaf] {
            dir.push(part);
            if !dir.exists() {
                fs::create_dir(&dir)?;
                chown(&dir, Some(uid), Some(gid))?;
            }
        }
        for sub in ["cur", "new", "tmp"] {
            let p = dir.join(sub);
            if !p.exists() {
                fs::create_dir(&p)?;
                chown(&p, Some(uid), Some(gid))?;
            }
        }
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        for (i, m) in messages.iter().enumerate() {
            let name = format!("{stamp}.M{i}P{}.testbed", std::process::id());
            let tmp = dir.join("tmp").join(&name);
            fs::write(&tmp, m.as_ref())?;
            chown(&tmp, Some(uid), Some(gid))?;
            fs::rename(&tmp, dir.join("new").join(&name))?;
        }
        if self.mail_store == MailStore::Sdbox {
            let source = format!("maildir:{}", dir.display());
            self.doveadm(&["import", "-u", user, &source, "", "all"])?;
        }
        Ok(())
    }

    /// Stores a message into a folder exactly as given (no headers added, unlike
    /// delivery), e.g. a message without any header section.
    pub fn save(&self, user: &str, folder: &str, raw: &[u8]) -> Result<(), Error> {
        let mut child = Command::new("doveadm")
            .arg("-c")
            .arg(self.dir.join("dovecot.conf"))
            .args(["save", "-u", user, "-m", folder])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(raw)?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("doveadm save -u {user} -m {folder}"),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }

    /// Creates a folder for a user.
    pub fn create_folder(&self, user: &str, folder: &str) -> Result<(), Error> {
        self.doveadm(&["mailbox", "create", "-u", user, folder])
            .map(drop)
    }

    /// Deletes a folder and its mail (`-r`: with its subfolders, `-s`: even
    /// if subscribed).
    pub fn delete_folder(&self, user: &str, folder: &str) -> Result<(), Error> {
        self.doveadm(&["mailbox", "delete", "-r", "-s", "-u", user, folder])
            .map(drop)
    }

    pub fn rename_folder(&self, user: &str, from: &str, to: &str) -> Result<(), Error> {
        self.doveadm(&["mailbox", "rename", "-u", user, from, to])
            .map(drop)
    }

    /// Gives a folder a new UIDVALIDITY, as a server does when it rebuilds
    /// its index: every UID a client knew is void.
    pub fn renumber_folder(
        &self,
        user: &str,
        folder: &str,
        uid_validity: u32,
    ) -> Result<(), Error> {
        self.doveadm(&[
            "mailbox",
            "update",
            "-u",
            user,
            "--uid-validity",
            &uid_validity.to_string(),
            folder,
        ])
        .map(drop)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Closing the pipe tells the watchdog to stop the servers; wait for it so
        // that the ports are free when drop returns.
        if let Some(mut watchdog) = self.watchdog.take() {
            drop(watchdog.stdin.take());
            let _ = watchdog.wait();
        }
        if let Ok(children) = self.children.get_mut() {
            // Reaps the leaders; kill() only matters if the watchdog could not run.
            for child in children.iter_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub(crate) fn random_password() -> String {
    (0..16).map(|_| fastrand::lowercase()).collect()
}

/// CRLF line endings, dot-stuffing and the final "." line of SMTP/LMTP DATA.
fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    let mut at_line_start = true;
    let mut prev = 0u8;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        at_line_start = b == b'\n';
        prev = b;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_and_line_endings() {
        assert_eq!(dot_stuff(b"a\n.b\r\n..c"), b"a\r\n..b\r\n...c\r\n.\r\n");
    }
}
