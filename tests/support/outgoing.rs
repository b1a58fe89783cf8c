//! Outgoing servers for the tests: specs pointing at the test Postfix, the
//! Outbox holding them, and waiting for what Postfix delivers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom::api::{OutgoingEmailServerSpec, SecurityType};
use mailroom_core::outgoing::{
    DEFAULT_POOL_SIZE, Outbox, OutgoingMessage, OutgoingServer, OutgoingSettings, SendStats,
};
use testbed::{Stack, User};

use super::Secrets;

pub const NS: &str = "helpdesk";

pub fn spec(
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

pub fn settings(spec: &OutgoingEmailServerSpec, secrets: &Secrets) -> OutgoingSettings {
    mailroom::resolve::outgoing(spec, super::sources(NS, secrets)).unwrap()
}

pub fn server(name: &str, settings: OutgoingSettings) -> OutgoingServer {
    OutgoingServer::new(
        NS,
        name,
        settings,
        Arc::new(SendStats::default()),
        DEFAULT_POOL_SIZE,
    )
}

/// An Outbox with one server on the submission port (STARTTLS).
pub fn outbox_with(
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

pub fn text_to(to: &[&str], subject: &str) -> OutgoingMessage {
    OutgoingMessage {
        to: to.iter().map(|s| s.to_string()).collect(),
        subject: subject.into(),
        text: Some("Hello from the helpdesk".into()),
        ..OutgoingMessage::default()
    }
}

/// Waits until `user`'s INBOX holds `n` messages (Postfix delivers on its own time).
pub async fn wait_inbox(stack: &Stack, user: &str, n: usize) -> Vec<Vec<u8>> {
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
