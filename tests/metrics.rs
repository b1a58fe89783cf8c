//! `/metrics` after real mail went through a real Dovecot and Postfix: every
//! family named in docs/operations.md is served with its type, by
//! `mailroom run --metrics-listen` and by the controller; the fetch lag rises
//! while the mail server is down.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use support::cluster::{Cluster, chart_rbac, mail, outgoing_yaml, with_mailbox};
use support::standalone::*;
use testbed::{Options, Stack};

/// A GET on loopback; the body.
fn get(port: u16, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    body.to_owned()
}

/// `# TYPE` of every family.
fn types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, t)| (name.to_owned(), t.to_owned()))
        .collect()
}

/// The value of the first sample whose name and labels start with `series`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn assert_types(text: &str, expected: &[(&str, &str)]) {
    let types = types(text);
    for (name, t) in expected {
        assert_eq!(
            types.get(*name).map(String::as_str),
            Some(*t),
            "{name} should be a {t}:\n{text}"
        );
    }
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
}

/// Families every mailroom serves (described even before they have samples).
const RESOURCE_FAMILIES: &[(&str, &str)] = &[
    ("mailroom_ready", "gauge"),
    ("mailroom_fetch_lag_seconds", "gauge"),
    ("mailroom_messages_fetched", "counter"),
    ("mailroom_tickets_created", "counter"),
    ("mailroom_messages", "counter"),
    ("mailroom_sink_failures", "counter"),
    ("mailroom_sent", "counter"),
    ("mailroom_send_failures", "counter"),
    ("mailroom_failovers", "counter"),
    ("mailroom_recipients_blocked", "counter"),
    ("mailroom_send_duration_seconds", "histogram"),
    ("mailroom_ticket_latency_seconds", "histogram"),
    ("mailroom_reconcile_duration_seconds", "histogram"),
    ("mailroom_login_failures", "counter"),
    (
        "mailroom_oauth2_access_token_expiry_timestamp_seconds",
        "gauge",
    ),
    ("mailroom_oauth2_last_refresh_timestamp_seconds", "gauge"),
];

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn standalone_serves_every_family_and_the_fetch_lag_rises_while_the_server_is_down() {
    // A stack of its own: this test stops its Dovecot.
    let stack = Stack::start(Options::default()).unwrap();
    let mailbox = stack.create_user("metrics").unwrap();
    let sender = stack.create_user("metrics-sender").unwrap();
    let dir = tempfile::tempdir().unwrap();
    setup(&stack, dir.path(), &mailbox, &sender, "");
    put(dir.path(), "outgoing.yaml", &apps_sender(&stack, &sender));
    put(
        dir.path(),
        "wrong.yaml",
        &format!(
            "{}---\n{}",
            password_secret("wrong", "not-the-password"),
            incoming("wrong", &mailbox, stack.ports().imaps, "wrong", "")
        ),
    );
    let port = support::free_port();
    let mailroom = Mailroom::start_with(
        dir.path(),
        &["--metrics-listen", &format!("127.0.0.1:{port}")],
    );
    mailroom.wait("incomingemailserver", "support", "Ready", ready);
    let notifier = dir
        .path()
        .join(".status/outgoingemailserver/apps/notifier.yaml");
    wait_until("the sender Ready", Duration::from_secs(30), || {
        std::fs::read_to_string(&notifier)
            .ok()
            .and_then(|s| serde_yaml::from_str(&s).ok())
            .is_some_and(|s| ready(&s))
    });

    // One mail through the submission endpoint (a send) to the mailbox (a
    // ticket), one the filter rejects.
    let body = serde_json::json!({
        "to": [mailbox.address], "subject": "metrics", "text": "counted",
    })
    .to_string();
    let (status, answer) = post(mailroom.listen, "/v1/namespaces/apps/messages", &body);
    assert_eq!(status, 200, "{answer}");
    stack
        .deliver(
            &mailbox.address,
            &["To: x@mailroom.test\r\nSubject: nobody\r\nMessage-ID: <nobody@example.org>\r\n\r\nno sender\r\n"],
        )
        .unwrap();
    mailroom.wait_tickets(1);

    let series = |name: &str| format!("{name}{{namespace=\"{NS}\",name=\"support\"");
    let mut text = String::new();
    wait_until(
        "the rejection and the sign-in failure counted",
        Duration::from_secs(30),
        || {
            text = get(port, "/metrics");
            value(&text, &format!("{}{}", series("mailroom_messages_total"), ",outcome=\"rejected\",reason=\"sender:missing\"}")) == Some(1.0)
            && text.contains("mailroom_login_failures_total{kind=\"IncomingEmailServer\",namespace=\"helpdesk\",name=\"wrong\",reason=\"AuthenticationFailed\"}")
        },
    );
    assert_types(&text, RESOURCE_FAMILIES);
    assert_eq!(
        value(
            &text,
            &format!(
                "{}{}",
                series("mailroom_messages_total"),
                ",outcome=\"ticket\",reason=\"accepted\"}"
            )
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            &format!("{}}}", series("mailroom_tickets_created_total"))
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "mailroom_sent_total{namespace=\"apps\",name=\"notifier\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "mailroom_send_duration_seconds_count{namespace=\"apps\",name=\"notifier\"}"
        ),
        Some(1.0)
    );
    // The ticket's latency was observed from the server's INTERNALDATE.
    assert_eq!(
        value(
            &text,
            &format!("mailroom_ticket_latency_seconds_count{{namespace=\"{NS}\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, &format!("{}}}", series("mailroom_ready"))),
        None,
        "ready carries the kind first"
    );
    assert_eq!(
        value(
            &text,
            &format!(
                "mailroom_ready{{kind=\"IncomingEmailServer\",namespace=\"{NS}\",name=\"support\"}}"
            )
        ),
        Some(1.0)
    );
    let lag = |text: &str| value(text, &format!("{}}}", series("mailroom_fetch_lag_seconds")));
    // Between two passes the lag is the few milliseconds since the last
    // one; once the session waits in IDLE nothing is behind.
    wait_until("no lag in IDLE", Duration::from_secs(30), || {
        lag(&get(port, "/metrics")) == Some(0.0)
    });

    stack.stop_dovecot().unwrap();
    let mut first = 0.0;
    wait_until(
        "a fetch lag while Dovecot is down",
        Duration::from_secs(30),
        || {
            first = lag(&get(port, "/metrics")).unwrap_or(0.0);
            first > 1.0
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let later = lag(&get(port, "/metrics")).unwrap();
    assert!(later >= first + 1.5, "the lag rises: {first} then {later}");

    stack.start_dovecot().unwrap();
    wait_until(
        "the lag back to 0 once Dovecot is back",
        Duration::from_secs(60),
        || lag(&get(port, "/metrics")) == Some(0.0),
    );
    assert_eq!(mailroom.terminate(), Some(0));
}

#[test]
fn the_controller_serves_every_family_after_mail_went_through() {
    let stack = Stack::start(Options::default()).unwrap();
    let (mut cluster, user): (Cluster, _) = with_mailbox(&stack, chart_rbac());
    let sender = stack.create_user("metrics-sender").unwrap();
    cluster.apply(&outgoing_yaml(&stack, "helpdesk", NS, &sender));
    cluster.start_controller("pod-a", &[]);
    stack.deliver(&user.address, &[mail("metrics")]).unwrap();
    wait_until("a ticket", Duration::from_secs(60), || {
        cluster.ticket_count() == 1
    });

    let mut text = String::new();
    wait_until("the ticket counted", Duration::from_secs(30), || {
        text = get(cluster.replicas[0].health, "/metrics");
        value(&text, "mailroom_tickets_created_total{") == Some(1.0)
    });
    assert_types(
        &text,
        &[
            RESOURCE_FAMILIES,
            &[
                ("mailroom_leader", "gauge"),
                ("mailroom_leader_fenced", "counter"),
                ("mailroom_reconciles", "counter"),
            ],
        ]
        .concat(),
    );
    assert_eq!(value(&text, "mailroom_leader "), Some(1.0));
    assert_eq!(
        value(
            &text,
            "mailroom_reconcile_duration_seconds_count{kind=\"IncomingEmailServer\"}"
        )
        .map(|n| n >= 1.0),
        Some(true),
        "{text}"
    );
}
