//! The submission endpoint (HTTP in front of the Outbox) and acknowledgements
//! of new tickets, sent through the real Postfix and fetched back from the
//! real Dovecot.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mail_parser::MessageParser;
use mailroom::api::SecurityType;
use mailroom::submission::{self, SubmissionTokens};
use mailroom_core::outgoing::Outbox;
use mailroom_core::outgoing::ack::{AckSettings, Acknowledger};
use support::Recorder;
use support::outgoing::*;
use testbed::Stack;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
            max_age: std::time::Duration::from_secs(3600),
            tag: "[#{reference}]".into(),
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

    // The requester answers the acknowledgement with a subject of their own:
    // the answer names the acknowledgement, which names the ticket.
    let ack_id = m.message_id().unwrap().to_owned();
    let first = tickets
        .iter()
        .find(|t| t["messageId"] == original.as_str())
        .unwrap();
    assert_eq!(
        ack_id.split('@').next().unwrap(),
        format!("mailroom-ack.{}", first["idempotencyKey"].as_str().unwrap())
    );
    let answer = format!(
        "From: {}\r\nTo: {}\r\nSubject: one more thing\r\nMessage-ID: <answer-{}@example.org>\r\nIn-Reply-To: <{ack_id}>\r\n\r\nIt smokes too.\r\n",
        requester.address,
        mailbox.address,
        std::process::id()
    );
    stack.deliver(&mailbox.address, &[answer.as_str()]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(WorkerEvent::ReplyDelivered { .. })) => break,
            Ok(Some(WorkerEvent::TicketCreated { message_id, .. }))
                if message_id
                    .as_deref()
                    .is_some_and(|id| id.starts_with("answer-")) =>
            {
                panic!("the answer opened a ticket")
            }
            Ok(Some(_)) => {}
            _ => panic!("the answer was not delivered as a reply"),
        }
    }
    let reply: serde_json::Value = std::fs::read_dir(out.path().join("t"))
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .find(|t: &serde_json::Value| t["subject"] == "one more thing")
        .unwrap();
    assert_eq!(reply["replyTo"]["originalKey"], first["idempotencyKey"]);
    assert_eq!(reply["replyTo"]["matchedBy"], "thread");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        stack.inbox(&requester.address).unwrap().len(),
        1,
        "a reply gets no acknowledgement"
    );
    handle.stop().await;
}
