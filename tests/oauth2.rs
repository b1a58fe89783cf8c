//! OAuth2 sign-in, for real: Dovecot's oauth2 passdb checks every bearer token
//! by introspection against the testbed's provider, for IMAP, POP3 and (through
//! Dovecot SASL) Postfix. The provider refreshes, rotates and revokes tokens as
//! Google and Microsoft do.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom::api::{
    IncomingEmailServerSpec, IncomingProtocol, OutgoingEmailServerSpec, SecurityType,
};
use mailroom::resolve::Sources;
use mailroom_core::connection::Reason;
use mailroom_core::incoming::IncomingSettings;
use mailroom_core::incoming::worker::{Worker, WorkerEvent, WorkerOptions};
use mailroom_core::oauth2::Tokens;
use mailroom_core::outgoing::{OutgoingSettings, smtp};
use mailroom_core::sinks::{DirectorySink, Sink};
use mailroom_core::state::FileCursorStore;
use support::Secrets;
use testbed::oauth::ClientOptions;
use testbed::{Stack, User};

const NS: &str = "helpdesk";

/// The Secret `oauth` of an OAuth2 grant, with the CA beside it.
fn grant_secrets(stack: &Stack, client: &(String, String), refresh: &str) -> Secrets {
    named_grant(stack, "oauth", client, refresh)
}

fn named_grant(stack: &Stack, name: &str, client: &(String, String), refresh: &str) -> Secrets {
    Secrets::default()
        .with(name, "client_id", &client.0)
        .with(name, "client_secret", &client.1)
        .with(name, "refresh_token", refresh)
        .with("ca", "ca.crt", stack.ca_pem())
}

fn auth(stack: &Stack) -> serde_json::Value {
    named_auth(stack, "oauth")
}

fn named_auth(stack: &Stack, secret: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "OAuth2",
        "oauth2": {"secretRef": {"name": secret}, "tokenUrl": stack.oauth().token_url()},
    })
}

fn sources<'a>(secrets: &'a Secrets, tokens: &'a Tokens) -> Sources<'a> {
    static NONE: std::sync::LazyLock<Secrets> = std::sync::LazyLock::new(Secrets::default);
    Sources {
        namespace: NS,
        secrets,
        config_maps: &*NONE,
        tokens,
    }
}

fn incoming(
    stack: &Stack,
    user: &User,
    protocol: IncomingProtocol,
    secrets: &Secrets,
    tokens: &Tokens,
) -> IncomingSettings {
    incoming_named(stack, user, protocol, "oauth", secrets, tokens)
}

fn incoming_named(
    stack: &Stack,
    user: &User,
    protocol: IncomingProtocol,
    secret: &str,
    secrets: &Secrets,
    tokens: &Tokens,
) -> IncomingSettings {
    let (mut spec, _) = support::incoming_spec(stack, user, protocol, SecurityType::Ssl);
    spec.auth = serde_json::from_value(named_auth(stack, secret)).unwrap();
    mailroom::resolve::incoming_settings(
        &mailroom_core::vocab::ResourceId::new("helpdesk", "support"),
        &spec,
        sources(secrets, tokens),
    )
    .unwrap()
}

fn outgoing(
    stack: &Stack,
    user: &User,
    port: u16,
    security: &str,
    secrets: &Secrets,
    tokens: &Tokens,
) -> OutgoingSettings {
    let mut authentication = auth(stack);
    authentication["required"] = true.into();
    let spec: OutgoingEmailServerSpec = serde_json::from_value(serde_json::json!({
        "email": user.address, "provider": "Other", "server": "127.0.0.1",
        "port": port, "securityType": security,
        "authentication": authentication,
        "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}},
    }))
    .unwrap();
    mailroom::resolve::outgoing(&spec, sources(secrets, tokens)).unwrap()
}

fn token_info(settings: &IncomingSettings) -> mailroom_core::oauth2::TokenInfo {
    settings
        .server
        .credentials
        .token_info()
        .expect("OAuth2 credentials")
}

fn log(stack: &Stack, file: &str) -> String {
    std::fs::read_to_string(stack.dir().join("log").join(file)).unwrap_or_default()
}

#[tokio::test]
async fn imap_pop3_and_smtp_sign_in_with_one_refreshed_token() {
    let stack = Stack::shared();
    let user = stack.create_user("oauth-all").unwrap();
    let oauth = stack.oauth();
    let client = oauth.register_client(ClientOptions::default());
    let secrets = grant_secrets(stack, &client, &oauth.grant(&client.0, &user.address));
    let tokens = Tokens::default();

    let imap = incoming(stack, &user, IncomingProtocol::Imap, &secrets, &tokens);
    let pop3 = incoming(stack, &user, IncomingProtocol::Pop3, &secrets, &tokens);
    for settings in [&imap, &pop3] {
        let report = mailroom_core::incoming::test_connection(settings).await;
        assert_eq!(report.reason, Reason::Connected, "{report:?}");
    }
    let ports = stack.ports();
    let mut smtps_caps = Vec::new();
    for (port, security) in [(ports.submission, "TLS"), (ports.smtps, "SSL")] {
        let settings = outgoing(stack, &user, port, security, &secrets, &tokens);
        let report = smtp::test_connection(&settings).await;
        assert_eq!(report.reason, Reason::Connected, "{security}: {report:?}");
        smtps_caps = report.capabilities;
    }

    // One refresh served all four sign-ins, and the servers took every token.
    let stats = oauth.stats(&client.0);
    assert_eq!(
        (stats.refreshes, stats.accepted, stats.rejected),
        (1, 4, 0),
        "{stats:?}"
    );
    let info = token_info(&imap);
    assert!(info.expires_at.unwrap() > jiff::Timestamp::now());
    assert!(info.last_refresh.is_some());

    // OAUTHBEARER where offered; XOAUTH2 on SMTPS, which hides OAUTHBEARER.
    let dovecot = log(stack, "dovecot.log");
    for protocol in ["imap", "pop3"] {
        assert!(
            dovecot.lines().any(|l| l.contains(&format!(
                "{protocol}-login: Info: Login: user=<{}>",
                user.address
            )) && l.contains("method=OAUTHBEARER")),
            "no OAUTHBEARER {protocol} login in:\n{dovecot}"
        );
    }
    // SMTPS offers XOAUTH2 and hides OAUTHBEARER (the testbed's smoke test
    // shows it), so the sign-in there above went through XOAUTH2.
    assert!(
        smtps_caps.iter().any(|c| c == "AUTH=XOAUTH2"),
        "{smtps_caps:?}"
    );
}

#[tokio::test]
async fn a_token_is_renewed_before_it_expires_and_reused_until_then() {
    let stack = Stack::shared();
    let user = stack.create_user("oauth-expiry").unwrap();
    let oauth = stack.oauth();
    let client = oauth.register_client(ClientOptions {
        lifetime: Duration::from_secs(3),
        ..ClientOptions::default()
    });
    let secrets = grant_secrets(stack, &client, &oauth.grant(&client.0, &user.address));
    let tokens = Tokens::default();
    let imap = incoming(stack, &user, IncomingProtocol::Imap, &secrets, &tokens);
    let connect = || async {
        let report = mailroom_core::incoming::test_connection(&imap).await;
        assert_eq!(report.reason, Reason::Connected, "{report:?}");
    };
    connect().await;
    connect().await;
    assert_eq!(
        oauth.stats(&client.0).refreshes,
        1,
        "the cached token was reused"
    );
    let first_expiry = token_info(&imap).expires_at.unwrap();

    tokio::time::sleep(Duration::from_millis(2900)).await;
    connect().await;
    let stats = oauth.stats(&client.0);
    assert_eq!(stats.refreshes, 2, "{stats:?}");
    // Renewed ahead of expiry: no server ever saw an expired token.
    assert_eq!(stats.rejected, 0, "{stats:?}");
    assert!(token_info(&imap).expires_at.unwrap() > first_expiry);
}

#[tokio::test]
async fn a_token_the_server_refuses_is_refreshed_once_and_the_sign_in_goes_through() {
    let stack = Stack::shared();
    let user = stack.create_user("oauth-refused").unwrap();
    let oauth = stack.oauth();
    let client = oauth.register_client(ClientOptions::default());
    let secrets = grant_secrets(stack, &client, &oauth.grant(&client.0, &user.address));
    let tokens = Tokens::default();
    let pop3 = incoming(stack, &user, IncomingProtocol::Pop3, &secrets, &tokens);
    let report = mailroom_core::incoming::test_connection(&pop3).await;
    assert_eq!(report.reason, Reason::Connected, "{report:?}");

    // The provider ends the session early: the cached token is now refused.
    oauth.revoke_access_tokens(&client.0);
    let report = mailroom_core::incoming::test_connection(&pop3).await;
    assert_eq!(report.reason, Reason::Connected, "{report:?}");
    assert_eq!(oauth.stats(&client.0).refreshes, 2);
}

#[tokio::test]
async fn a_revoked_grant_asks_for_re_consent_without_a_refresh_loop_and_spares_the_others() {
    let stack = Stack::shared();
    let oauth = stack.oauth();
    let revoked_user = stack.create_user("oauth-revoked").unwrap();
    let revoked = oauth.register_client(ClientOptions::default());
    let secrets = grant_secrets(
        stack,
        &revoked,
        &oauth.grant(&revoked.0, &revoked_user.address),
    );
    oauth.revoke(&revoked.0);
    let healthy_user = stack.create_user("oauth-healthy").unwrap();
    let healthy = oauth.register_client(ClientOptions::default());
    let healthy_secrets = named_grant(
        stack,
        "healthy",
        &healthy,
        &oauth.grant(&healthy.0, &healthy_user.address),
    );
    stack
        .deliver(
            &healthy_user.address,
            &[b"From: a@example.org\r\nTo: support@mailroom.test\r\nSubject: hello\r\nMessage-ID: <oauth-healthy@example.org>\r\n\r\nstill working?\r\n"],
        )
        .unwrap();

    // Both in one process, sharing one registry, as in the operator.
    let tokens = Tokens::default();
    let dir = tempfile::tempdir().unwrap();
    let options = WorkerOptions {
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(100),
        ..WorkerOptions::default()
    };
    let spawn = |settings: IncomingSettings, name: &str| {
        let sink = Arc::new(Sink::Directory(
            DirectorySink::open(dir.path().join(name)).unwrap(),
        ));
        let store = Arc::new(FileCursorStore::new(
            dir.path().join(format!("{name}-state")),
        ));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            Worker::spawn(settings, sink, store, Arc::new(tx), options.clone()),
            rx,
        )
    };
    let (failing, mut failing_events) = spawn(
        incoming(
            stack,
            &revoked_user,
            IncomingProtocol::Imap,
            &secrets,
            &tokens,
        ),
        "revoked",
    );
    let (working, mut working_events) = spawn(
        incoming_named(
            stack,
            &healthy_user,
            IncomingProtocol::Imap,
            "healthy",
            &healthy_secrets,
            &tokens,
        ),
        "healthy",
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut failures = Vec::new();
    while failures.len() < 5 && Instant::now() < deadline {
        if let Ok(Some(WorkerEvent::ConnectionFailed { report, .. })) =
            tokio::time::timeout(Duration::from_secs(1), failing_events.recv()).await
        {
            failures.push(report);
        }
    }
    assert!(
        failures.len() >= 5,
        "the worker kept retrying: {failures:?}"
    );
    for report in &failures {
        assert_eq!(report.reason, Reason::AuthenticationFailed, "{report:?}");
        assert!(
            report.message.contains("invalid_grant"),
            "{}",
            report.message
        );
        assert!(report.message.contains("Re-consent"), "{}", report.message);
        assert!(!report.message.contains("refresh-"), "no token in messages");
    }
    // Five sign-ins, one question to the provider: the refusal is remembered.
    let stats = oauth.stats(&revoked.0);
    assert_eq!((stats.invalid_grants, stats.refreshes), (1, 0), "{stats:?}");

    let created = loop {
        match tokio::time::timeout_at(deadline.into(), working_events.recv()).await {
            Ok(Some(WorkerEvent::TicketCreated { .. })) => break true,
            Ok(Some(_)) => continue,
            _ => break false,
        }
    };
    assert!(created, "the other OAuth2 mailbox kept working");
    failing.stop().await;
    working.stop().await;

    // New consent in the Secret: a fresh grant starts over and signs in.
    let reconsented = grant_secrets(
        stack,
        &revoked,
        &oauth.grant(&revoked.0, &revoked_user.address),
    );
    let settings = incoming(
        stack,
        &revoked_user,
        IncomingProtocol::Imap,
        &reconsented,
        &tokens,
    );
    let report = mailroom_core::incoming::test_connection(&settings).await;
    assert_eq!(report.reason, Reason::Connected, "{report:?}");
}

fn mailroom(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mailroom"))
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

fn secret_manifest(client: &(String, String), refresh: &str) -> String {
    format!(
        "# OAuth2 grant of the support mailbox\napiVersion: v1\nkind: Secret\nmetadata:\n  name: oauth\n  namespace: {NS}\nstringData:\n  client_id: {}\n  client_secret: {}\n  refresh_token: {refresh}\n",
        client.0, client.1
    )
}

fn server_manifest(stack: &Stack, user: &User) -> String {
    let spec: IncomingEmailServerSpec = serde_json::from_value(serde_json::json!({
        "email": user.address, "protocol": "IMAP", "provider": "Other",
        "server": "127.0.0.1", "port": stack.ports().imaps, "securityType": "SSL",
        "auth": auth(stack),
        "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}},
    }))
    .unwrap();
    let object = serde_json::json!({
        "apiVersion": "mailroom.dev/v1alpha1", "kind": "IncomingEmailServer",
        "metadata": {"name": "support", "namespace": NS},
        "spec": spec,
    });
    let ca = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "ca", "namespace": NS},
        "stringData": {"ca.crt": stack.ca_pem()},
    });
    format!(
        "{}---\n{}",
        serde_yaml::to_string(&object).unwrap(),
        serde_yaml::to_string(&ca).unwrap()
    )
}

/// A manifests folder with the server (`server.yaml`) and its OAuth2 Secret
/// (`secret.yaml`, as given).
struct Folder {
    dir: tempfile::TempDir,
    server: std::path::PathBuf,
    secret: std::path::PathBuf,
}

fn folder(stack: &Stack, user: &User, secret_yaml: &str) -> Folder {
    let dir = tempfile::tempdir().unwrap();
    let server = dir.path().join("server.yaml");
    let secret = dir.path().join("secret.yaml");
    std::fs::write(&server, server_manifest(stack, user)).unwrap();
    std::fs::write(&secret, secret_yaml).unwrap();
    Folder {
        dir,
        server,
        secret,
    }
}

/// A user whose grant belongs to a client whose refresh tokens rotate: the
/// user, the client and the first refresh token.
fn rotating_grant(stack: &Stack, hint: &str) -> (User, (String, String), String) {
    let user = stack.create_user(hint).unwrap();
    let oauth = stack.oauth();
    let client = oauth.register_client(ClientOptions {
        rotate: true,
        ..ClientOptions::default()
    });
    let first = oauth.grant(&client.0, &user.address);
    (user, client, first)
}

fn refresh_token_in(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let line = text.lines().find(|l| l.contains("refresh_token:")).unwrap();
    line.split_once(':').unwrap().1.trim().to_owned()
}

#[test]
fn a_rotated_refresh_token_is_written_back_into_the_secret_file() {
    let stack = Stack::shared();
    let oauth = stack.oauth();
    let (user, client, first) = rotating_grant(stack, "oauth-rotate");
    let Folder { server, secret, .. } = &folder(stack, &user, &secret_manifest(&client, &first));
    let args = [
        "test-connection",
        "-f",
        server.to_str().unwrap(),
        "--secret-file",
        secret.to_str().unwrap(),
    ];

    let out = mailroom(&args);
    let printed = String::from_utf8_lossy(&out.stdout);
    let logged = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{printed}\n{logged}");
    let second = refresh_token_in(secret);
    assert_ne!(second, first, "the rotated token is in the file");
    assert!(oauth.is_valid(&second) && !oauth.is_valid(&first));
    let text = std::fs::read_to_string(secret).unwrap();
    assert!(
        text.starts_with("# OAuth2 grant of the support mailbox\n"),
        "{text}"
    );
    assert!(
        !logged.contains(&first) && !logged.contains(&second),
        "no token in logs"
    );

    // The next run signs in with what was written back, and rotates again.
    let out = mailroom(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let third = refresh_token_in(secret);
    assert!(third != second && oauth.is_valid(&third));
    assert_eq!(oauth.stats(&client.0).refreshes, 2);
}

#[test]
fn standalone_run_writes_back_without_restarting_and_shows_token_times() {
    let stack = Stack::shared();
    let oauth = stack.oauth();
    let (user, client, first) = rotating_grant(stack, "oauth-run");
    let Folder { dir, secret, .. } = &folder(stack, &user, &secret_manifest(&client, &first));
    let log = dir.path().join("run.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailroom"))
        .args([
            "run",
            "--manifests",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let status_file = dir
        .path()
        .join(".status/incomingemailserver/helpdesk/support.yaml");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let status: Option<serde_json::Value> = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|t| serde_yaml::from_str(&t).ok());
        if let Some(s) = status.filter(|s| s["status"]["oauth2"]["lastRotationTime"].is_string()) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no rotation in status:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Give the folder watch time to see the rewritten Secret file.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    );
    let _ = child.wait();
    let logged = std::fs::read_to_string(&log).unwrap();
    let oauth2 = &status["status"]["oauth2"];
    assert!(oauth2["accessTokenExpiry"].is_string(), "{status:#}");
    assert!(oauth2["lastRefreshTime"].is_string(), "{status:#}");
    assert!(oauth2.get("writeBackError").is_none(), "{status:#}");
    let now_in_file = refresh_token_in(secret);
    assert!(now_in_file != first && oauth.is_valid(&now_in_file));
    assert_eq!(
        logged.matches("worker started").count(),
        1,
        "writing the token back restarted nothing:\n{logged}"
    );
    assert_eq!(oauth.stats(&client.0).refreshes, 1, "{logged}");
}

#[test]
fn authorize_prints_a_secret_that_signs_in() {
    let stack = Stack::shared();
    let user = stack.create_user("oauth-consent").unwrap();
    let oauth = stack.oauth();
    let client = oauth.register_client(ClientOptions::default());
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailroom"))
        .args([
            "oauth2",
            "authorize",
            "--provider",
            "other",
            "--client-id",
            &client.0,
            "--login-hint",
            &user.address,
            "--authorize-url",
            &oauth.authorize_url(),
            "--token-url",
            &oauth.token_url(),
            "--scope",
            "mail",
            "--secret-name",
            "oauth",
            "--namespace",
            NS,
        ])
        .env("MAILROOM_OAUTH2_CLIENT_SECRET", &client.1)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Play the browser: open the printed URL, follow the provider's redirect.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let url = loop {
        let mut line = String::new();
        assert!(
            std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0,
            "no URL printed"
        );
        if line.starts_with("http://") {
            break line.trim().to_owned();
        }
    };
    assert!(
        url.contains("code_challenge_method=S256") && url.contains("state="),
        "{url}"
    );
    let (status, location) = http_get(&url);
    assert_eq!(status, 302);
    let (status, _) = http_get(&location);
    assert_eq!(status, 200);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let yaml = String::from_utf8(out.stdout).unwrap();
    let doc: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
    let refresh = doc["stringData"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(oauth.is_valid(&refresh), "{yaml}");
    assert_eq!(doc["stringData"]["client_id"], client.0.as_str());
    assert_eq!(doc["metadata"]["namespace"], NS);
    assert_eq!(oauth.stats(&client.0).code_exchanges, 1);

    // The printed Secret, as is, signs the mailbox in.
    let Folder { server, secret, .. } = &folder(stack, &user, &yaml);
    let out = mailroom(&[
        "test-connection",
        "-f",
        server.to_str().unwrap(),
        "--secret-file",
        secret.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A GET with a plain client: (status, Location header).
fn http_get(url: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut conn = std::net::TcpStream::connect(host).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let status = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    let location = answer
        .lines()
        .find_map(|l| l.strip_prefix("Location: "))
        .unwrap_or_default()
        .trim()
        .to_owned();
    (status, location)
}

#[tokio::test]
async fn servers_without_oauthbearer_get_xoauth2() {
    // A stack of its own whose Dovecot, like Microsoft 365, offers XOAUTH2 only.
    let stack = Stack::start(testbed::Options {
        xoauth2_only: true,
        ..Default::default()
    })
    .unwrap();
    let user = stack.create_user("xoauth2").unwrap();
    let oauth = stack.oauth();
    let client = oauth.register_client(ClientOptions::default());
    let secrets = grant_secrets(&stack, &client, &oauth.grant(&client.0, &user.address));
    let tokens = Tokens::default();
    for protocol in [IncomingProtocol::Imap, IncomingProtocol::Pop3] {
        let settings = incoming(&stack, &user, protocol, &secrets, &tokens);
        let report = mailroom_core::incoming::test_connection(&settings).await;
        assert_eq!(report.reason, Reason::Connected, "{protocol:?}: {report:?}");
        assert!(
            !report
                .capabilities
                .iter()
                .any(|c| c.contains("OAUTHBEARER")),
            "{:?}",
            report.capabilities
        );
    }
    let settings = outgoing(
        &stack,
        &user,
        stack.ports().submission,
        "TLS",
        &secrets,
        &tokens,
    );
    let report = smtp::test_connection(&settings).await;
    assert_eq!(report.reason, Reason::Connected, "{report:?}");
    let dovecot = log(&stack, "dovecot.log");
    for protocol in ["imap", "pop3"] {
        assert!(
            dovecot.lines().any(|l| l.contains(&format!(
                "{protocol}-login: Info: Login: user=<{}>",
                user.address
            )) && l.contains("method=XOAUTH2")),
            "no XOAUTH2 {protocol} login in:\n{dovecot}"
        );
    }
    assert_eq!(oauth.stats(&client.0).accepted, 3);
}

#[tokio::test]
async fn tokens_are_refreshed_through_the_resources_proxy() {
    use testbed::proxy::Proxy;
    let stack = Stack::shared();
    let oauth = stack.oauth();
    for proxy in [Proxy::http(None).unwrap(), Proxy::socks5(None).unwrap()] {
        let user = stack.create_user("oauth-proxied").unwrap();
        let client = oauth.register_client(ClientOptions::default());
        let secrets = grant_secrets(stack, &client, &oauth.grant(&client.0, &user.address));
        let tokens = Tokens::default();
        let (mut spec, _) =
            support::incoming_spec(stack, &user, IncomingProtocol::Imap, SecurityType::Ssl);
        spec.auth = serde_json::from_value(auth(stack)).unwrap();
        spec.proxy = Some(serde_json::from_value(serde_json::json!({"url": proxy.url()})).unwrap());
        let settings = mailroom::resolve::incoming_settings(
            &mailroom_core::vocab::ResourceId::new(NS, "support"),
            &spec,
            sources(&secrets, &tokens),
        )
        .unwrap();
        let report = mailroom_core::incoming::test_connection(&settings).await;
        assert_eq!(report.reason, Reason::Connected, "{report:?}");
        assert_eq!(oauth.stats(&client.0).refreshes, 1);
        // The mail went through the proxy, and so did the token request: the
        // proxy opened a way to the token endpoint's port too.
        let endpoint = stack.oauth().token_url();
        let port = endpoint
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .unwrap()
            .to_owned();
        let log = proxy.log();
        assert!(
            log.contains(&format!(":{port}")) || log.contains(&format!(".{port}")),
            "the token endpoint ({endpoint}) was reached around the proxy:\n{log}"
        );
    }
}

#[test]
fn no_log_level_prints_an_oauth2_secret() {
    use base64::Engine as _;
    let stack = Stack::shared();
    let oauth = stack.oauth();
    let user = stack.create_user("oauth-trace").unwrap();
    let client = oauth.register_client(ClientOptions::default());
    let refresh = oauth.grant(&client.0, &user.address);
    let Folder { server, secret, .. } = &folder(stack, &user, &secret_manifest(&client, &refresh));
    let out = Command::new(env!("CARGO_BIN_EXE_mailroom"))
        .args([
            "test-connection",
            "-f",
            server.to_str().unwrap(),
            "--secret-file",
            secret.to_str().unwrap(),
        ])
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("TRACE"), "the log is at trace: {text}");
    assert_eq!(oauth.stats(&client.0).refreshes, 1);
    // The grant, the token request and answer, and the SASL string built from
    // the access token (as text, and its base64 up to the token, whichever
    // mechanism the server took).
    let b64 = |s: &str| {
        let whole = s.len() / 3 * 3;
        base64::engine::general_purpose::STANDARD.encode(&s.as_bytes()[..whole])
    };
    let port = stack.ports().imaps;
    let forbidden = [
        refresh.clone(),
        client.1.clone(),
        "refresh_token=".to_owned(),
        "access_token".to_owned(),
        "auth=Bearer".to_owned(),
        b64(&format!(
            "n,a={},\x01host=127.0.0.1\x01port={port}\x01auth=Bearer ",
            user.address
        )),
        b64(&format!("user={}\x01auth=Bearer ", user.address)),
    ];
    for f in forbidden {
        assert!(!text.contains(&f), "RUST_LOG=trace printed {f:?}");
    }
}
