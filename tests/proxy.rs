//! Proxies, for real: Dante (SOCKS5) and tinyproxy (HTTP CONNECT) from Debian on
//! loopback, in front of the real Dovecot and Postfix. TLS runs end to end
//! through the tunnel; the proxies' logs prove the traffic went through them.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom::api::{ConnectionStage, IncomingProtocol, OutgoingEmailServerSpec, SecurityType};
use mailroom_core::connection::Reason;
use mailroom_core::incoming::worker::{Scanning, Worker, WorkerEvent, WorkerOptions};
use mailroom_core::outgoing::{OutgoingSettings, smtp};
use mailroom_core::sinks::{DirectorySink, Sink};
use mailroom_core::state::FileCursorStore;
use support::Secrets;
use testbed::Stack;
use testbed::proxy::{Proxy, SOCKS_USER};

fn with_proxy(
    secrets: Secrets,
    url: &str,
    credentials: Option<(&str, &str)>,
) -> (serde_json::Value, Secrets) {
    let mut proxy = serde_json::json!({"url": url});
    let secrets = match credentials {
        Some((user, password)) => {
            proxy["credentialsSecretRef"] = serde_json::json!({"name": "proxy"});
            secrets
                .with("proxy", "username", user)
                .with("proxy", "password", password)
        }
        None => secrets,
    };
    (proxy, secrets)
}

async fn incoming_test(
    stack: &Stack,
    protocol: IncomingProtocol,
    url: &str,
    credentials: Option<(&str, &str)>,
) -> mailroom_core::connection::ConnectionReport {
    let user = stack.create_user("proxied").unwrap();
    let (mut spec, secrets) = support::incoming_spec(stack, &user, protocol, SecurityType::Ssl);
    let (proxy, secrets) = with_proxy(secrets, url, credentials);
    spec.proxy = Some(serde_json::from_value(proxy).unwrap());
    mailroom_core::incoming::test_connection(&support::resolve(&spec, &secrets)).await
}

fn outgoing_settings(
    stack: &Stack,
    url: &str,
    credentials: Option<(&str, &str)>,
) -> OutgoingSettings {
    let user = stack.create_user("proxied-sender").unwrap();
    let secrets = Secrets::default()
        .with("mail", "password", &user.password)
        .with("ca", "ca.crt", stack.ca_pem());
    let (proxy, secrets) = with_proxy(secrets, url, credentials);
    let spec: OutgoingEmailServerSpec = serde_json::from_value(serde_json::json!({
        "email": user.address, "provider": "Other", "server": "127.0.0.1",
        "port": stack.ports().submission, "securityType": "TLS",
        "authentication": {"passwordSecretRef": {"name": "mail", "key": "password"}},
        "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}},
        "proxy": proxy,
    }))
    .unwrap();
    mailroom::resolve::outgoing(&spec, support::sources("helpdesk", &secrets)).unwrap()
}

fn went_through(report: &mailroom_core::connection::ConnectionReport) -> bool {
    report
        .stages
        .iter()
        .any(|s| s.stage == ConnectionStage::Proxy && s.ok)
}

#[tokio::test]
async fn imap_pop3_and_smtp_connect_through_socks5_with_a_password() {
    let stack = Stack::shared();
    let proxy = Proxy::socks5(Some("socksproxypasswd")).unwrap();
    let creds = Some((SOCKS_USER, "socksproxypasswd"));
    for protocol in [IncomingProtocol::Imap, IncomingProtocol::Pop3] {
        let report = incoming_test(stack, protocol, &proxy.url(), creds).await;
        assert_eq!(report.reason, Reason::Connected, "{protocol:?}: {report:?}");
        assert!(went_through(&report));
    }
    let report = smtp::test_connection(&outgoing_settings(stack, &proxy.url(), creds)).await;
    assert_eq!(report.reason, Reason::Connected, "{report:?}");
    assert!(went_through(&report));
    let log = proxy.log();
    for port in [
        stack.ports().imaps,
        stack.ports().pop3s,
        stack.ports().submission,
    ] {
        assert!(
            log.contains(&format!("127.0.0.1.{port}")),
            "no tunnel to {port} in the Dante log:\n{log}"
        );
    }
}

#[tokio::test]
async fn http_connect_with_and_without_basic_auth() {
    let stack = Stack::shared();
    let open = Proxy::http(None).unwrap();
    let report = incoming_test(stack, IncomingProtocol::Imap, &open.url(), None).await;
    assert_eq!(report.reason, Reason::Connected, "{report:?}");
    let guarded = Proxy::http(Some(("proxyuser", "proxypass"))).unwrap();
    let report = smtp::test_connection(&outgoing_settings(
        stack,
        &guarded.url(),
        Some(("proxyuser", "proxypass")),
    ))
    .await;
    assert_eq!(report.reason, Reason::Connected, "{report:?}");
    assert!(went_through(&report));
    for (proxy, port) in [
        (&open, stack.ports().imaps),
        (&guarded, stack.ports().submission),
    ] {
        let log = proxy.log();
        assert!(
            log.contains(&format!("127.0.0.1:{port}")),
            "no CONNECT to {port} in the tinyproxy log:\n{log}"
        );
    }
}

#[tokio::test]
async fn refused_or_unreachable_proxies_are_proxy_failed_with_their_answer() {
    let stack = Stack::shared();
    let socks = Proxy::socks5(Some("socksproxypasswd")).unwrap();
    let report = incoming_test(
        stack,
        IncomingProtocol::Imap,
        &socks.url(),
        Some((SOCKS_USER, "wrongwrong")),
    )
    .await;
    assert_eq!(report.reason, Reason::ProxyFailed, "{report:?}");
    assert_eq!(report.stage_reached, ConnectionStage::Proxy);
    assert!(report.message.contains("SOCKS5"), "{}", report.message);
    assert!(!report.message.contains("wrongwrong"));

    let http = Proxy::http(Some(("proxyuser", "proxypass"))).unwrap();
    let report = incoming_test(
        stack,
        IncomingProtocol::Imap,
        &http.url(),
        Some(("proxyuser", "nope")),
    )
    .await;
    assert_eq!(report.reason, Reason::ProxyFailed, "{report:?}");
    // tinyproxy answers a wrong password with 401 Unauthorized.
    assert!(
        report.message.contains("401 Unauthorized"),
        "the proxy's own answer: {}",
        report.message
    );

    let closed = support::free_port();
    let report = incoming_test(
        stack,
        IncomingProtocol::Imap,
        &format!("socks5://127.0.0.1:{closed}"),
        None,
    )
    .await;
    assert_eq!(report.reason, Reason::ProxyFailed, "{report:?}");
}

#[tokio::test]
async fn a_proxy_killed_mid_idle_is_survived_and_nothing_is_lost() {
    let stack = Stack::shared();
    let mut proxy = Proxy::socks5(None).unwrap();
    let user = stack.create_user("proxy-idle").unwrap();
    let (mut spec, secrets) =
        support::incoming_spec(stack, &user, IncomingProtocol::Imap, SecurityType::Ssl);
    spec.proxy = Some(serde_json::from_value(serde_json::json!({"url": proxy.url()})).unwrap());
    let out = tempfile::tempdir().unwrap();
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let handle = Worker::spawn(
        support::resolve(&spec, &secrets),
        Arc::new(Sink::Directory(
            DirectorySink::open(out.path().join("t")).unwrap(),
        )),
        Arc::new(FileCursorStore::new(out.path().join("state"))),
        Arc::new(tx),
        WorkerOptions {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(500),
            ..WorkerOptions::default()
        },
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut until = async |what: &str, f: &dyn Fn(&WorkerEvent) -> bool| loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(e)) if f(&e) => return e,
            Ok(Some(_)) => {}
            _ => panic!("timed out waiting for {what}"),
        }
    };
    until("IDLE", &|e| {
        matches!(e, WorkerEvent::Scanning(Scanning::Idle))
    })
    .await;
    proxy.kill();
    let failed = until("the broken connection", &|e| {
        matches!(e, WorkerEvent::ConnectionFailed { .. })
    })
    .await;
    if let WorkerEvent::ConnectionFailed { report, .. } = failed {
        assert!(
            matches!(
                report.reason,
                Reason::ProxyFailed | Reason::Timeout | Reason::ProtocolError
            ),
            "{report:?}"
        );
    }
    // Mail arrives while the proxy is down; it must not be lost.
    stack
        .deliver(&user.address, &["From: Ann <ann@customer.example>\r\nTo: x@mailroom.test\r\nSubject: while the proxy was down\r\nMessage-ID: <proxy-down@customer.example>\r\n\r\nhello\r\n"])
        .unwrap();
    proxy.resume().unwrap();
    until("the ticket", &|e| {
        matches!(e, WorkerEvent::TicketCreated { .. })
    })
    .await;
    let tickets: Vec<serde_json::Value> = support::json_files(&out.path().join("t"));
    assert_eq!(tickets.len(), 1);
    handle.stop().await;
}
