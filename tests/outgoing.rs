//! Sending through the real Postfix (SASL through Dovecot, STARTTLS and implicit
//! TLS), fetched back from the real Dovecot: message building, the connection
//! test, recipient filters, fallback to the primary, and a server that says
//! "try again later" for a while.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use mail_parser::{MessageParser, MimeHeaders};
use mailroom::api::SecurityType;
use mailroom_core::connection::Reason;
use mailroom_core::outgoing::message::OutgoingAttachment;
use mailroom_core::outgoing::{Outbox, Outcome, OutgoingMessage, smtp};
use support::Recorder;
use support::outgoing::*;
use testbed::Stack;

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

/// Postfix answers 451 to every recipient of the chosen server's login for a
/// while (its policy service defers it, as a busy or greylisting server
/// does), then takes its mail again. Meanwhile the primary sends, each report
/// says what the chosen server answered and the server counts the failures;
/// afterwards the chosen server sends again over its pooled session. A
/// recipient the chosen server took is never offered to the primary. Every
/// message arrives once.
#[tokio::test]
async fn a_server_answering_4xx_for_a_while_fails_over_and_sends_nothing_twice() {
    let stack = Stack::shared();
    let rcpt = stack.create_user("busy-rcpt").unwrap();
    let (outbox, chosen_user) = outbox_with(stack, "busy", |_| {});
    let primary_user = stack.create_user("busy-primary").unwrap();
    let (mut p, secrets) = spec(stack, &primary_user, SecurityType::Ssl, stack.ports().smtps);
    p.primary = true;
    outbox.insert(server("primary-out", settings(&p, &secrets)));
    let chosen = outbox.get(NS, "support-out").unwrap();
    let deferred = format!("{}@mailroom.test", testbed::DEFERRED);
    let mut ids = Vec::new();

    let report = outbox
        .send(
            NS,
            Some("support-out"),
            &text_to(&[&rcpt.address], "busy 0"),
        )
        .await
        .unwrap();
    assert!(!report.failover, "{report:?}");
    ids.push(report.message_id);
    // One recipient taken, one deferred: only the deferred one goes on.
    let report = outbox
        .send(
            NS,
            Some("support-out"),
            &text_to(&[&rcpt.address, &deferred], "busy 1"),
        )
        .await
        .unwrap();
    assert!(report.failover, "{report:?}");
    let by = |r: &mailroom_core::outgoing::SendReport, a: &str| {
        r.recipients
            .iter()
            .filter(|x| x.address == a)
            .map(|x| (x.outcome, x.server.clone().unwrap_or_default()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        by(&report, &rcpt.address),
        [(Outcome::Sent, "support-out".to_owned())]
    );
    assert_eq!(
        by(&report, &deferred),
        [(Outcome::Deferred, "primary-out".to_owned())]
    );
    ids.push(report.message_id);

    stack.defer_mail_from(&chosen_user.address, true);
    for i in 2..5 {
        let report = outbox
            .send(
                NS,
                Some("support-out"),
                &text_to(&[&rcpt.address], &format!("busy {i}")),
            )
            .await
            .unwrap();
        assert!(report.failover, "{report:?}");
        let r = &report.recipients[0];
        assert_eq!(
            (r.outcome, r.server.as_deref()),
            (Outcome::Sent, Some("primary-out")),
            "{report:?}"
        );
        let detail = r.detail.as_deref().unwrap_or_default();
        assert!(
            detail.contains("support-out could not take it") && detail.contains("451"),
            "the chosen server's answer is reported: {detail}"
        );
        ids.push(report.message_id);
    }
    assert_eq!(chosen.stats.failed.load(Ordering::Relaxed), 3);
    assert_eq!(chosen.stats.failovers.load(Ordering::Relaxed), 4);

    stack.defer_mail_from(&chosen_user.address, false);
    for i in 5..7 {
        let report = outbox
            .send(
                NS,
                Some("support-out"),
                &text_to(&[&rcpt.address], &format!("busy {i}")),
            )
            .await
            .unwrap();
        assert!(!report.failover, "Postfix takes mail again: {report:?}");
        assert_eq!(report.recipients[0].outcome, Outcome::Sent);
        ids.push(report.message_id);
    }
    assert_eq!(chosen.stats.failovers.load(Ordering::Relaxed), 4);

    wait_inbox(stack, &rcpt.address, 7).await;
    // Give a message sent twice time to arrive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let inbox = stack.inbox(&rcpt.address).unwrap();
    let mut got: Vec<String> = inbox
        .iter()
        .map(|raw| {
            let m = MessageParser::default().parse(raw).unwrap();
            format!("<{}>", m.message_id().unwrap())
        })
        .collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids, "every message once, none twice");
}
