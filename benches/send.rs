//! Sending benchmark: messages/s through mailroom's session pool to the local
//! Postfix (STARTTLS + AUTH on the submission port), beside, in the same run,
//! a single-session ceiling (one signed-in session, messages one after another)
//! and a session-per-message baseline (connect, STARTTLS, AUTH, send, QUIT).
//! The recipient's mail is accepted and discarded by Postfix, so that what is
//! measured is submission, not delivery.
//!
//!     cargo bench --bench send            (MESSAGES=N to change the count)

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use lettre::Address;
use mailroom_core::connection::Probe;
use mailroom_core::outgoing::{
    DEFAULT_POOL_SIZE, Identity, Outbox, Outcome, OutgoingMessage, OutgoingServer, SendStats, smtp,
};
use testbed::{Options, Stack};

mod support;

use support::Secrets;

fn message(to: &str, i: usize) -> OutgoingMessage {
    OutgoingMessage {
        to: vec![to.to_owned()],
        subject: format!("Update on your request {i}"),
        text: Some("Your request was updated. ".repeat(80)),
        ..OutgoingMessage::default()
    }
}

#[tokio::main]
async fn main() {
    let total: usize = std::env::var("MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let stack = Stack::start(Options::default()).unwrap();
    let sender = stack.create_user("sender").unwrap();
    let spec: mailroom::api::OutgoingEmailServerSpec = serde_json::from_value(serde_json::json!({
        "email": sender.address,
        "senderName": "Bench",
        "provider": "Other",
        "server": "127.0.0.1",
        "port": stack.ports().submission,
        "securityType": "TLS",
        "authentication": {"passwordSecretRef": {"name": "mail", "key": "password"}},
        "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}},
    }))
    .unwrap();
    let secrets = Secrets(vec![
        ("mail".into(), "password".into(), sender.password.clone()),
        ("ca".into(), "ca.crt".into(), stack.ca_pem().to_owned()),
    ]);
    // Accepted and discarded: delivery into Dovecot would compete for the CPU.
    let rcpt = format!("{}@mailroom.test", testbed::DISCARD);
    let settings = mailroom::resolve::outgoing(&spec, support::sources(&secrets)).unwrap();
    let identity = Identity {
        email: sender.address.clone(),
        sender_name: Some("Bench".into()),
        reply_to: None,
    };
    let from: Address = sender.address.parse().unwrap();
    let built = |i: usize| {
        message(&rcpt, i)
            .build(
                &identity,
                &mailroom_core::outgoing::new_message_id("mailroom.test"),
            )
            .unwrap()
    };

    // Single-session ceiling.
    let mut session = smtp::connect(&settings, &mut Probe::new()).await.unwrap();
    let began = Instant::now();
    for i in 0..total {
        let b = built(i);
        session
            .transaction(&from, &b.recipients, &b.bytes)
            .await
            .unwrap();
    }
    let single = total as f64 / began.elapsed().as_secs_f64();
    session.quit().await;
    println!("single session, one message after another: {single:.0} messages/s");

    // Session per message.
    let per_message_count = (total / 4).max(1);
    let began = Instant::now();
    for i in 0..per_message_count {
        let b = built(i);
        let mut session = smtp::connect(&settings, &mut Probe::new()).await.unwrap();
        session
            .transaction(&from, &b.recipients, &b.bytes)
            .await
            .unwrap();
        session.quit().await;
    }
    let per_message = per_message_count as f64 / began.elapsed().as_secs_f64();
    println!(
        "a new session per message: {per_message:.0} messages/s ({per_message_count} messages)"
    );

    // mailroom: the Outbox with its pool, requests arriving concurrently.
    let outbox = Arc::new(Outbox::new());
    outbox.insert(OutgoingServer::new(
        "bench",
        "out",
        settings.clone(),
        Arc::new(SendStats::default()),
        DEFAULT_POOL_SIZE,
    ));
    let began = Instant::now();
    let sent: usize = futures::stream::iter(0..total)
        .map(|i| {
            let outbox = outbox.clone();
            let m = message(&rcpt, i);
            async move {
                let report = outbox.send("bench", Some("out"), &m).await.unwrap();
                report.count(Outcome::Sent)
            }
        })
        .buffer_unordered(DEFAULT_POOL_SIZE * 4)
        .fold(0, |a, n| async move { a + n })
        .await;
    let pooled = total as f64 / began.elapsed().as_secs_f64();
    assert_eq!(sent, total);
    println!(
        "mailroom pool ({DEFAULT_POOL_SIZE} sessions): {pooled:.0} messages/s = {:.2}x the single session, {:.1}x a session per message",
        pooled / single,
        pooled / per_message
    );
}
