//! Sending through the real Postfix (SASL through Dovecot, STARTTLS and implicit
//! TLS), fetched back from the real Dovecot: message building, the connection
//! test, recipient filters, fallback to the primary, the submission endpoint and
//! acknowledgements.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use mail_parser::{MessageParser, MimeHeaders};
use mailroom::api::{OutgoingEmailServerSpec, SecurityType};
use mailroom::submission::{self, SubmissionTokens};
use mailroom_core::connection::Reason;
use mailroom_core::outgoing::ack::{AckSettings, Acknowledger};
use mailroom_core::outgoing::message::OutgoingAttachment;
use mailroom_core::outgoing::{
    DEFAULT_POOL_SIZE, Outbox, Outcome, OutgoingMessage, OutgoingServer, OutgoingSettings,
    SendStats, smtp,
};
use support::{Recorder, Secrets};
use testbed::{Stack, User};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "helpdesk";

fn spec(
    stack: &Stack,
    user: &User,
    security: SecurityType,
    port: u16,
) -> (OutgoingEmailServerSpec, Secrets) {
    let spec: OutgoingEmailServerSpec = serde_json::from_value(serde_json::json!({
        "email": user.address,
        "senderName": "Mailroom Help",
        "provider": "Other",
        "server": "127.0.0.1",
        "port": port,
        "securityType": security,
        "authentication": {"passwordSecretRef": {"name": "mail", "key": "password"}},
        "replyTo": "tickets@mailroom.test",
        "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}},
    }))
    .unwrap();
    let secrets = Secrets::default()
        .with("mail", "password", &user.password)
        .with("ca", "ca.crt", stack.ca_pem());
    (spec, secrets)
}

fn settings(spec: &OutgoingEmailServerSpec, secrets: &Secrets) -> OutgoingSettings {
    mailroom::resolve::outgoing(spec, support::sources(NS, secrets)).unwrap()
}

fn server(name: &str, settings: OutgoingSettings) -> OutgoingServer {
    OutgoingServer::new(
        NS,
        name,
        settings,
        Arc::new(SendStats::default()),
        DEFAULT_POOL_SIZE,
    )
}

/// An Outbox with one server on the submission port (STARTTLS).
fn outbox_with(
    stack: &Stack,
    hint: &str,
    edit: impl FnOnce(&mut OutgoingEmailServerSpec),
) -> (Arc<Outbox>, User) {
    let sender = stack.create_user(hint).unwrap();
    let (mut s, secrets) = spec(stack, &sender, SecurityType::Tls, stack.ports().submission);
    edit(&mut s);
    let outbox = Arc::new(Outbox::new());
    outbox.insert(server("support-out", settings(&s, &secrets)));
    (outbox, sender)
}

fn text_to(to: &[&str], subject: &str) -> OutgoingMessage {
    OutgoingMessage {
        to: to.iter().map(|s| s.to_string()).collect(),
        subject: subject.into(),
        text: Some("Hello from the helpdesk".into()),
        ..OutgoingMessage::default()
    }
}

/// Waits until `user`'s INBOX holds `n` messages (Postfix delivers on its own time).
async fn wait_inbox(stack: &Stack, user: &str, n: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let inbox = stack.inbox(user).unwrap();
        if inbox.len() >= n {
            return inbox;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} messages for {user}",
            inbox.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn starttls_and_implicit_tls_both_send_and_the_message_comes_back_intact() {
    let stack = Stack::shared();
    for (security, port) in [
        (SecurityType::Tls, stack.ports().submission),
        (SecurityType::Ssl, stack.ports().smtps),
    ] {
        let sender = stack.create_user("sender").unwrap();
        let rcpt = stack.create_user("rcpt").unwrap();
        let hidden = stack.create_user("hidden").unwrap();
        let (s, secrets) = spec(stack, &sender, security, port);
        let outbox = Outbox::new();
        outbox.insert(server("support-out", settings(&s, &secrets)));
        let attachment: Vec<u8> = (0u8..=255).collect();
        let message = OutgoingMessage {
            to: vec![rcpt.address.clone()],
            bcc: vec![hidden.address.clone()],
            subject: "Your ticket [#42] — ünïcode".into(),
            text: Some("Plain text body".into()),
            html: Some("<p>HTML body</p>".into()),
            attachments: vec![OutgoingAttachment {
                filename: "bytes.bin".into(),
                content_type: "application/octet-stream".into(),
                content: base64::engine::general_purpose::STANDARD.encode(&attachment),
            }],
            ..OutgoingMessage::default()
        };
        let report = outbox
            .send(NS, Some("support-out"), &message)
            .await
            .unwrap();
        assert_eq!(report.count(Outcome::Sent), 2, "{security:?}: {report:?}");
        assert!(!report.failover);
        assert!(
            report.message_id.ends_with("@mailroom.test>"),
            "{}",
            report.message_id
        );

        let raw = wait_inbox(stack, &rcpt.address, 1).await;
        let m = MessageParser::default().parse(&raw[0]).unwrap();
        let from = m.from().unwrap().first().unwrap();
        assert_eq!(from.name(), Some("Mailroom Help"));
        assert_eq!(from.address(), Some(sender.address.as_str()));
        assert_eq!(
            m.reply_to().unwrap().first().unwrap().address(),
            Some("tickets@mailroom.test")
        );
        assert_eq!(
            format!("<{}>", m.message_id().unwrap()),
            report.message_id,
            "the Message-ID on the From domain, as reported"
        );
        assert_eq!(m.subject(), Some("Your ticket [#42] — ünïcode"));
        assert_eq!(
            m.body_text(0).as_deref().map(str::trim),
            Some("Plain text body")
        );
        assert!(m.body_html(0).unwrap().contains("<p>HTML body</p>"));
        let att = m.attachments().next().expect("the attachment");
        assert_eq!(att.attachment_name(), Some("bytes.bin"));
        assert_eq!(att.contents(), attachment.as_slice());
        assert!(m.header("Bcc").is_none(), "Bcc stays out of the headers");
        // The Bcc recipient got it too.
        wait_inbox(stack, &hidden.address, 1).await;
    }
}

#[tokio::test]
async fn connection_test_passes_and_a_wrong_password_gets_the_app_password_hint() {
    let stack = Stack::shared();
    let sender = stack.create_user("probe").unwrap();
    for (security, port) in [
        (SecurityType::Tls, stack.ports().submission),
        (SecurityType::Ssl, stack.ports().smtps),
    ] {
        let (s, secrets) = spec(stack, &sender, security, port);
        let report = smtp::test_connection(&settings(&s, &secrets)).await;
        assert_eq!(report.reason, Reason::Connected, "{report:?}");
        assert!(report.certificate.is_some(), "certificate recorded");
        assert!(
            report.capabilities.iter().any(|c| c == "AUTH=PLAIN"),
            "{report:?}"
        );
    }
    let (mut s, secrets) = spec(stack, &sender, SecurityType::Tls, stack.ports().submission);
    s.provider = mailroom::api::Provider::Gmail;
    let wrong = secrets.with("mail", "password", "abcd efgh ijkl mnop");
    let report = smtp::test_connection(&settings(&s, &wrong)).await;
    assert_eq!(report.reason, Reason::AuthenticationFailed, "{report:?}");
    assert!(
        report.message.contains("App Password"),
        "{}",
        report.message
    );
    assert!(
        report.message.contains("535"),
        "the server's own answer: {}",
        report.message
    );
    assert!(!report.message.contains("abcdefghijklmnop"));
}

#[tokio::test]
async fn starttls_required_but_not_offered_is_refused_before_any_auth() {
    let stack = Stack::shared();
    let sender = stack.create_user("clear").unwrap();
    let relay = Recorder::start(stack.cleartext(stack.ports().submission)).await;
    let (s, secrets) = spec(stack, &sender, SecurityType::Tls, relay.addr.port());
    let settings = settings(&s, &secrets);
    let report = smtp::test_connection(&settings).await;
    assert_eq!(report.reason, Reason::StartTlsUnavailable, "{report:?}");
    let outbox = Outbox::new();
    outbox.insert(server("support-out", settings));
    let sent = outbox
        .send(
            NS,
            Some("support-out"),
            &text_to(&["x@mailroom.test"], "hi"),
        )
        .await
        .unwrap();
    assert_eq!(sent.count(Outcome::Deferred), 1, "{sent:?}");
    let wire = relay.sent();
    assert!(wire.contains("EHLO"), "{wire}");
    assert!(
        !wire.to_ascii_uppercase().contains("AUTH"),
        "AUTH in clear: {wire}"
    );
    assert!(!wire.contains(&sender.password));
}

#[tokio::test]
async fn recipient_filters_block_some_and_send_the_rest() {
    let stack = Stack::shared();
    let allowed = stack.create_user("allowed").unwrap();
    let (outbox, _) = outbox_with(stack, "allow", |s| {
        s.filter = Some(
            serde_json::from_value(
                serde_json::json!({"type": "Allow", "domains": ["mailroom.test"]}),
            )
            .unwrap(),
        );
    });
    let report = outbox
        .send(
            NS,
            Some("support-out"),
            &text_to(&[&allowed.address, "someone@example.org"], "allow"),
        )
        .await
        .unwrap();
    let outcome = |a: &str| {
        report
            .recipients
            .iter()
            .find(|r| r.address == a)
            .unwrap()
            .outcome
    };
    assert_eq!(outcome(&allowed.address), Outcome::Sent);
    assert_eq!(outcome("someone@example.org"), Outcome::Blocked);
    wait_inbox(stack, &allowed.address, 1).await;
    let server = outbox.get(NS, "support-out").unwrap();
    assert_eq!(
        server
            .stats
            .blocked
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let log = server.stats.rejections.lock().unwrap().clone();
    let last = log.recent().next().unwrap();
    assert_eq!(last.recipient.as_deref(), Some("someone@example.org"));
    assert_eq!(last.rule, "noMatch", "{last:?}");

    // Ignore: the listed address is dropped; with nobody left nothing is sent.
    let relay = Recorder::start(stack.submission()).await;
    let (outbox, _) = outbox_with(stack, "ignore", |s| {
        s.port = Some(i32::from(relay.addr.port()));
        s.filter = Some(
            serde_json::from_value(
                serde_json::json!({"type": "Ignore", "emails": ["ceo@mailroom.test"]}),
            )
            .unwrap(),
        );
    });
    let report = outbox
        .send(
            NS,
            Some("support-out"),
            &text_to(&["CEO@mailroom.test"], "ignored"),
        )
        .await
        .unwrap();
    assert_eq!(report.count(Outcome::Blocked), 1, "{report:?}");
    assert_eq!(report.count(Outcome::Sent), 0);
    assert!(relay.sent().is_empty(), "nothing reached Postfix");
}

#[tokio::test]
async fn an_unreachable_server_fails_over_to_the_primary() {
    let stack = Stack::shared();
    let rcpt = stack.create_user("failover").unwrap();
    let (outbox, primary_user) = outbox_with(stack, "primary", |s| s.primary = true);
    // The primary was inserted as "support-out"; the chosen one is unreachable.
    let chosen_user = stack.create_user("chosen").unwrap();
    let (mut s, secrets) = spec(stack, &chosen_user, SecurityType::Tls, support::free_port());
    s.reply_to = Some("sales@mailroom.test".into());
    outbox.insert(server("sales-out", settings(&s, &secrets)));

    let report = outbox
        .send(
            NS,
            Some("sales-out"),
            &text_to(&[&rcpt.address], "failover"),
        )
        .await
        .unwrap();
    assert!(report.failover, "{report:?}");
    assert_eq!(report.recipients[0].outcome, Outcome::Sent);
    assert_eq!(report.recipients[0].server.as_deref(), Some("support-out"));
    let chosen = outbox.get(NS, "sales-out").unwrap();
    assert_eq!(
        chosen
            .stats
            .failovers
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        chosen
            .stats
            .failed
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    let raw = wait_inbox(stack, &rcpt.address, 1).await;
    let m = MessageParser::default().parse(&raw[0]).unwrap();
    assert_eq!(
        m.from().unwrap().first().unwrap().address(),
        Some(primary_user.address.as_str())
    );
    assert_eq!(
        m.reply_to().unwrap().first().unwrap().address(),
        Some("sales@mailroom.test"),
        "replies still reach the chosen server's mailbox"
    );
}

#[tokio::test]
async fn a_550_for_one_recipient_does_not_fail_over_but_a_450_does() {
    let stack = Stack::shared();
    let good = stack.create_user("good").unwrap();
    let (outbox, _) = outbox_with(stack, "chosen550", |_| {});
    let primary_user = stack.create_user("primary550").unwrap();
    let (mut p, secrets) = spec(stack, &primary_user, SecurityType::Ssl, stack.ports().smtps);
    p.primary = true;
    outbox.insert(server("primary-out", settings(&p, &secrets)));

    let refused = format!("{}@mailroom.test", testbed::REFUSED);
    let report = outbox
        .send(
            NS,
            Some("support-out"),
            &text_to(&[&good.address, &refused], "550"),
        )
        .await
        .unwrap();
    assert!(!report.failover, "{report:?}");
    let r = report
        .recipients
        .iter()
        .find(|r| r.address == refused)
        .unwrap();
    assert_eq!(r.outcome, Outcome::Refused);
    assert!(
        r.detail.as_deref().unwrap_or_default().contains("550"),
        "{r:?}"
    );
    assert_eq!(r.server.as_deref(), Some("support-out"));
    wait_inbox(stack, &good.address, 1).await;

    let deferred = format!("{}@mailroom.test", testbed::DEFERRED);
    let report = outbox
        .send(NS, Some("support-out"), &text_to(&[&deferred], "450"))
        .await
        .unwrap();
    assert!(report.failover, "a 4xx goes to the primary: {report:?}");
    assert_eq!(report.recipients[0].outcome, Outcome::Deferred);
    assert_eq!(report.recipients[0].server.as_deref(), Some("primary-out"));
}

/// A minimal HTTP/1.1 POST; returns the status and the body.
async fn post(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let json = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (
        status,
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

async fn endpoint(outbox: Arc<Outbox>, tokens: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = submission::router(outbox, Arc::new(SubmissionTokens::parse(tokens).unwrap()));
    tokio::spawn(submission::serve(listener, router, std::future::pending()));
    addr
}

#[tokio::test]
async fn the_endpoint_sends_and_refuses_bad_input_and_bad_tokens() {
    let stack = Stack::shared();
    let rcpt = stack.create_user("endpoint").unwrap();
    let relay = Recorder::start(stack.submission()).await;
    let (outbox, _) = outbox_with(stack, "endpoint-sender", |s| {
        s.port = Some(i32::from(relay.addr.port()));
        s.primary = true;
    });
    let addr = endpoint(outbox, "app-token\nhr-token hr\n").await;
    let named = format!("/v1/namespaces/{NS}/outgoingemailservers/support-out/messages");
    let primary = format!("/v1/namespaces/{NS}/messages");

    let crlf_subject = serde_json::json!({"to": [rcpt.address], "subject": "hi\r\nBcc: victim@example.org", "text": "x"}).to_string();
    let (status, body) = post(addr, &named, Some("app-token"), &crlf_subject).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("subject")),
        "{body}"
    );
    let crlf_address = serde_json::json!({"to": [format!("{}\r\nRCPT TO:<victim@example.org>", rcpt.address)], "subject": "hi", "text": "x"}).to_string();
    let (status, body) = post(addr, &named, Some("app-token"), &crlf_address).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("to[0]")),
        "{body}"
    );
    let (status, body) = post(addr, &named, Some("app-token"), r#"{"to": "not-a-list"}"#).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("to")),
        "{body}"
    );
    assert!(relay.sent().is_empty(), "bad input never reaches Postfix");

    let good =
        serde_json::json!({"to": [rcpt.address], "subject": "from the endpoint", "text": "x"})
            .to_string();
    assert_eq!(post(addr, &named, None, &good).await.0, 401);
    assert_eq!(post(addr, &named, Some("nope"), &good).await.0, 401);
    assert_eq!(post(addr, &named, Some("hr-token"), &good).await.0, 403);
    let missing = format!("/v1/namespaces/{NS}/outgoingemailservers/nope/messages");
    assert_eq!(post(addr, &missing, Some("app-token"), &good).await.0, 404);
    assert_eq!(
        post(
            addr,
            "/v1/namespaces/empty/messages",
            Some("app-token"),
            &good
        )
        .await
        .0,
        503
    );
    assert!(relay.sent().is_empty());

    let (status, body) = post(addr, &primary, Some("app-token"), &good).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["recipients"][0]["outcome"], "Sent");
    assert!(
        body["messageId"]
            .as_str()
            .unwrap()
            .ends_with("@mailroom.test>")
    );
    wait_inbox(stack, &rcpt.address, 1).await;
}

fn request(i: u32, requester: &str, extra: &str) -> String {
    format!(
        "From: Requester <{requester}>\r\nTo: support@mailroom.test\r\nSubject: printer {i}\r\nMessage-ID: <req{i}-{}@example.org>\r\n{extra}\r\nThe printer is on fire.\r\n",
        std::process::id()
    )
}

#[tokio::test]
async fn acknowledgements_are_sent_once_per_new_ticket_and_never_to_automatic_mail() {
    use mailroom::api::IncomingProtocol;
    use mailroom_core::incoming::worker::{Worker, WorkerEvent, WorkerOptions};
    use mailroom_core::sinks::{DirectorySink, Sink};
    use mailroom_core::state::FileCursorStore;

    let stack = Stack::shared();
    let mailbox = stack.create_user("acked").unwrap();
    let requester = stack.create_user("requester").unwrap();
    let outlook = stack.create_user("outlook-user").unwrap();
    let (outbox, _) = outbox_with(stack, "ack-sender", |_| {});
    let ack = Arc::new(Acknowledger::new(
        outbox,
        NS,
        "support-out",
        AckSettings {
            subject: "Re: {subject}".into(),
            text: "Thank you for your message.".into(),
            limit: mailroom_core::filter::RateLimit {
                max: 3,
                window: std::time::Duration::from_secs(3600),
            },
        },
    ));
    let (ispec, isecrets) =
        support::incoming_spec(stack, &mailbox, IncomingProtocol::Imap, SecurityType::Ssl);
    let out = tempfile::tempdir().unwrap();
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let handle = Worker::spawn(
        support::resolve(&ispec, &isecrets),
        Arc::new(Sink::Directory(
            DirectorySink::open(out.path().join("t")).unwrap(),
        )),
        Arc::new(FileCursorStore::new(out.path().join("state"))),
        Arc::new(tx),
        WorkerOptions {
            on_ticket: Some(ack),
            ..WorkerOptions::default()
        },
    );
    // The first pass starts from the mailbox's unseen mail.
    stack
        .deliver(
            &mailbox.address,
            &[
                request(1, &requester.address, ""),
                // The same message again (a resend with the same Message-ID): one ticket.
                request(1, &requester.address, ""),
                // An out-of-office answer: never a ticket, never acknowledged.
                request(2, &requester.address, "Auto-Submitted: auto-replied\r\n"),
                // A person's request that asks for no automatic answers: a
                // ticket, and no acknowledgement.
                request(3, &outlook.address, "X-Auto-Response-Suppress: All\r\n"),
            ],
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut judged = 0;
    while judged < 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(WorkerEvent::Judged { .. })) => judged += 1,
            Ok(Some(_)) => {}
            _ => panic!("the worker judged {judged} of 4 messages"),
        }
    }
    let acks = wait_inbox(stack, &requester.address, 1).await;
    // Give a wrong second acknowledgement time to arrive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acks_now = stack.inbox(&requester.address).unwrap();
    assert_eq!(acks_now.len(), 1, "exactly one acknowledgement");
    assert!(
        stack.inbox(&outlook.address).unwrap().is_empty(),
        "X-Auto-Response-Suppress: All gets no acknowledgement"
    );
    let tickets: Vec<serde_json::Value> = std::fs::read_dir(out.path().join("t"))
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    let suppressed = tickets
        .iter()
        .find(|t| t["from"]["address"] == outlook.address.as_str())
        .expect("the suppressing request is still a ticket");
    assert_eq!(suppressed["autoReplySuppressed"], true);
    let m = MessageParser::default().parse(&acks[0]).unwrap();
    assert_eq!(m.subject(), Some("Re: printer 1"));
    assert_eq!(
        m.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-replied")
    );
    let original = format!("req1-{}@example.org", std::process::id());
    assert_eq!(m.in_reply_to().as_text(), Some(original.as_str()));
    handle.stop().await;
}
