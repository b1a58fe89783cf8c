//! A real Request Tracker 5 (Debian's `request-tracker5` with SQLite and the
//! standalone Starlet server) on loopback: a fresh database in a temporary
//! folder, an API user with an auth token, rights for mail senders. Nothing
//! under /etc is read: RT's site configuration points at the folder.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Error, run};

const RT_LIB: &str = "/usr/share/request-tracker5/lib";
const RT_SERVER: &str = "/usr/share/request-tracker5/libexec/rt-server";
const SETUP_DATABASE: &str = "/usr/sbin/rt-setup-database-5";
/// RT's `$rtname`: its subject tags read `[rt.test #123]`.
pub const RT_NAME: &str = "rt.test";

/// Creates the API user (SuperUser) and its token, lets mail senders open
/// and answer tickets, and (with 1 as the second argument) turns every scrip
/// off. REST 2 has no endpoint for rights or tokens.
const BOOTSTRAP: &str = r#"
use strict; use warnings;
use RT -init;
my ($pw, $no_scrips) = @ARGV;
my $u = RT::User->new(RT->SystemUser);
my ($ok, $msg) = $u->Create(Name => 'api', EmailAddress => 'api@rt.test',
                            RealName => 'API client', Password => $pw, Privileged => 1);
die "api user: $msg\n" unless $ok;
($ok, $msg) = $u->PrincipalObj->GrantRight(Right => 'SuperUser', Object => RT->System);
die "SuperUser: $msg\n" unless $ok;
my $everyone = RT::Group->new(RT->SystemUser);
$everyone->LoadSystemInternalGroup('Everyone');
for my $right (qw(CreateTicket ReplyToTicket CommentOnTicket)) {
    ($ok, $msg) = $everyone->PrincipalObj->GrantRight(Right => $right, Object => RT->System);
    die "$right: $msg\n" unless $ok;
}
if ($no_scrips) {
    my $scrips = RT::Scrips->new(RT->SystemUser);
    $scrips->UnLimit;
    while (my $s = $scrips->Next) { $s->SetDisabled(1) }
}
my $tok = RT::AuthToken->new(RT->SystemUser);
my ($id, $m, $authstring) = $tok->Create(Owner => $u->id, Description => 'test bed');
die "token: $m\n" unless $id;
print "$authstring\n";
"#;

/// How the instance runs.
#[derive(Clone, Copy, Debug)]
pub struct RtOptions {
    /// Starlet worker processes.
    pub workers: u32,
    /// Scrips off: no autoreply or notification mail, RT as a pure store.
    pub no_scrips: bool,
}

impl Default for RtOptions {
    fn default() -> Self {
        Self {
            workers: 4,
            no_scrips: false,
        }
    }
}

/// A running Request Tracker; dropping it stops the server.
pub struct RequestTracker {
    dir: tempfile::TempDir,
    pub url: String,
    pub token: String,
    server: Child,
}

/// Whether the packages are there (scripts/install-deps installs them).
pub fn installed() -> bool {
    Path::new(RT_SERVER).exists()
}

impl RequestTracker {
    pub fn start(options: RtOptions) -> Result<Self, Error> {
        if !installed() {
            return Err(Error::Setup(
                "Request Tracker is not installed: run scripts/install-deps".into(),
            ));
        }
        let dir = tempfile::Builder::new().prefix("mailroom-rt-").tempdir()?;
        let root = dir.path().to_path_buf();
        for sub in [
            "var",
            "log",
            "mason_data",
            "session_data",
            "RT_SiteConfig.d",
        ] {
            fs::create_dir_all(root.join(sub))?;
        }
        let port = crate::free_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let r = root.display();
        fs::write(
            root.join("RT_SiteConfig.pm"),
            format!(
                "Set($rtname, '{RT_NAME}');\nSet($Organization, '{RT_NAME}');\n\
                 Set($CorrespondAddress, 'rt@{RT_NAME}');\nSet($CommentAddress, 'rt-comment@{RT_NAME}');\n\
                 Set($OwnerEmail, 'rt-owner@{RT_NAME}');\nSet($Timezone, 'UTC');\n\
                 Set($DatabaseType, 'SQLite');\nSet($DatabaseName, '{r}/rt.db');\n\
                 Set($WebDomain, '127.0.0.1');\nSet($WebPort, {port});\nSet($WebPath, '');\n\
                 Set($WebBaseURL, '{url}');\nSet($BcryptCost, 4);\nSet($HTMLFormatter, 'core');\n\
                 $RT::VarPath = '{r}/var';\n$RT::MasonDataDir = '{r}/mason_data';\n\
                 $RT::MasonSessionDir = '{r}/session_data';\n\
                 Set($LogToSyslog, undef);\nSet($LogToSTDERR, 'error');\nSet($LogToFile, 'info');\n\
                 Set($LogDir, '{r}/log');\nSet($LogToFileNamed, 'rt.log');\n\
                 Set($MailCommand, 'mbox');\n1;\n"
            ),
        )?;
        fs::write(root.join("root.password"), crate::random_password())?;
        let env = |c: &mut Command| {
            c.env("RT_SITE_CONFIG", root.join("RT_SiteConfig.pm"))
                .env("RT_SITE_CONFIG_DIR", root.join("RT_SiteConfig.d"));
        };
        let mut setup = Command::new(SETUP_DATABASE);
        setup
            .args([
                "--action",
                "init",
                "--dba-password",
                "unused",
                "--root-password-file",
            ])
            .arg(root.join("root.password"));
        env(&mut setup);
        run(&mut setup)?;
        let mut bootstrap = Command::new("perl");
        bootstrap
            .arg(format!("-I{RT_LIB}"))
            .arg("-e")
            .arg(BOOTSTRAP)
            .arg(crate::random_password())
            .arg(if options.no_scrips { "1" } else { "0" });
        env(&mut bootstrap);
        let token = run(&mut bootstrap)?.trim().to_owned();

        let mut server = Command::new(RT_SERVER);
        server
            .args(["--server", "Starlet", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .arg("--max-workers")
            .arg(options.workers.to_string())
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(fs::File::create(root.join("server.log"))?)
            .stderr(fs::File::create(root.join("server.err"))?);
        env(&mut server);
        // Its own process group: a stop reaches the Starlet workers too.
        std::os::unix::process::CommandExt::process_group(&mut server, 0);
        let server = server.spawn()?;
        let rt = Self {
            dir,
            url,
            token,
            server,
        };
        let started = Instant::now();
        loop {
            if let Ok((200, _)) = rt.api("GET", "/rt", None) {
                return Ok(rt);
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err(Error::NotReady {
                    waited: started.elapsed(),
                    what: "Request Tracker".into(),
                    logs: fs::read_to_string(rt.dir.path().join("server.err")).unwrap_or_default(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// One REST 2 call (`path` after `/REST/2.0`): status and JSON answer.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), Error> {
        let addr = self.url.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            stream,
            "{method} /REST/2.0{path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: token {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.token,
            body.len()
        )?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let text = String::from_utf8_lossy(&answer);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Protocol(format!("not an HTTP answer: {text:.200}")))?;
        let json = text
            .split_once("\r\n\r\n")
            .and_then(|(_, b)| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null);
        Ok((status, json))
    }

    /// `api`, which must answer 2xx.
    pub fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        match self.api(method, path, body) {
            Ok((status, json)) if (200..300).contains(&status) => json,
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    /// Creates a queue.
    pub fn create_queue(&self, name: &str) -> u64 {
        let answer = self.ok(
            "POST",
            "/queue",
            Some(&serde_json::json!({"Name": name, "CorrespondAddress": format!("{}@{RT_NAME}", name.to_lowercase())})),
        );
        id(&answer)
    }

    /// Creates a Select ticket custom field with `values`, applied to queue `queue`.
    pub fn create_select_field(&self, name: &str, queue: u64, values: &[&str]) -> u64 {
        let cf = id(&self.ok(
            "POST",
            "/customfield",
            Some(&serde_json::json!({"Name": name, "Type": "Select", "MaxValues": 1, "LookupType": "RT::Queue-RT::Ticket", "Queue": queue})),
        ));
        for (i, v) in values.iter().enumerate() {
            self.ok(
                "POST",
                &format!("/customfield/{cf}/value"),
                Some(&serde_json::json!({"Name": v, "SortOrder": i})),
            );
        }
        cf
    }

    /// Ids of the tickets a TicketSQL query finds, ascending.
    pub fn search(&self, query: &str) -> Vec<u64> {
        let q: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
        let mut ids = Vec::new();
        for page in 1.. {
            let answer = self.ok(
                "GET",
                &format!("/tickets?per_page=100&page={page}&orderby=id&query={q}"),
                None,
            );
            ids.extend(answer["items"].as_array().into_iter().flatten().map(id));
            if answer["pages"].as_u64().is_none_or(|pages| page >= pages) {
                break;
            }
        }
        ids.sort_unstable();
        ids
    }

    /// A ticket's transactions of `type_` (Create, Correspond, ...), with
    /// their attachments' content decoded: (content type, file name, bytes).
    pub fn transactions(&self, ticket: u64, type_: &str) -> Vec<Vec<(String, String, Vec<u8>)>> {
        let history = self.ok(
            "GET",
            &format!("/ticket/{ticket}/history?per_page=100&fields=Type"),
            None,
        );
        let mut out = Vec::new();
        for txn in history["items"].as_array().into_iter().flatten() {
            if txn["Type"] != type_ {
                continue;
            }
            let tid = id(txn);
            let atts = self.ok(
                "GET",
                &format!("/transaction/{tid}/attachments?per_page=100&fields=ContentType"),
                None,
            );
            let parts = atts["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    // Listings leave the content out.
                    let a = self.ok("GET", &format!("/attachment/{}", id(a)), None);
                    let content = a["Content"].as_str().unwrap_or_default();
                    let bytes = base64::Engine::decode(
                        &base64::engine::general_purpose::STANDARD,
                        content.replace(['\n', '\r'], ""),
                    )
                    .unwrap_or_default();
                    (
                        a["ContentType"].as_str().unwrap_or_default().to_owned(),
                        a["Filename"].as_str().unwrap_or_default().to_owned(),
                        bytes,
                    )
                })
                .collect();
            out.push(parts);
        }
        out
    }
}

/// The numeric id of a REST 2 record or reference.
pub fn id(v: &Value) -> u64 {
    match &v["id"] {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

impl Drop for RequestTracker {
    fn drop(&mut self) {
        // TERM, not INT: rt-server's INT handler chowns RT's system folders.
        let group = rustix::process::Pid::from_raw(self.server.id() as i32);
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.server.try_wait() {
                    let _ =
                        rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.server.wait();
    }
}
