//! The staged connection test against the real Dovecot: IMAP and POP3, implicit
//! TLS and STARTTLS; wrong passwords, missing STARTTLS, unknown mailboxes,
//! untrusted certificates and closed ports each give their own reason.

mod support;

use mailroom::api::{AuthSpec, ConnectionStage, IncomingProtocol, Provider, SecurityType};
use mailroom_core::connection::Reason;
use mailroom_core::incoming::test_connection;
use support::*;
use testbed::Stack;

const PROTOCOLS: [IncomingProtocol; 2] = [IncomingProtocol::Imap, IncomingProtocol::Pop3];
const SECURITIES: [SecurityType; 2] = [SecurityType::Ssl, SecurityType::Tls];

#[tokio::test]
async fn every_protocol_and_security_type_connects() {
    let stack = Stack::shared();
    let user = stack.create_user("conn-ok").unwrap();
    for protocol in PROTOCOLS {
        for security in SECURITIES {
            let (spec, secrets) = incoming_spec(stack, &user, protocol, security);
            let report = test_connection(&resolve(&spec, &secrets)).await;
            assert_eq!(
                report.reason,
                Reason::Connected,
                "{protocol:?}/{security:?}: {report:?}"
            );
            assert_eq!(report.stage_reached, ConnectionStage::Done);
            use ConnectionStage::*;
            // STARTTLS puts the TLS stage after the greeting.
            let expected = match security {
                SecurityType::Ssl => [Dns, Tcp, Tls, Greeting, Login, Mailbox],
                SecurityType::Tls => [Dns, Tcp, Greeting, Tls, Login, Mailbox],
            };
            let stages: Vec<ConnectionStage> = report.stages.iter().map(|s| s.stage).collect();
            assert_eq!(stages, expected, "{protocol:?}/{security:?}");
            let cert = report.certificate.expect("certificate recorded");
            assert!(cert.subject.contains("localhost"), "{}", cert.subject);
            assert!(cert.not_after > std::time::SystemTime::now());
            if protocol == IncomingProtocol::Imap {
                assert!(
                    report.capabilities.iter().any(|c| c == "IDLE"),
                    "{:?}",
                    report.capabilities
                );
            }
        }
    }
    // The test changed nothing: no flags, no folders.
    assert!(stack.messages(&user.address, "INBOX").unwrap().is_empty());
}

#[tokio::test]
async fn wrong_password_is_an_authentication_failure_with_the_gmail_hint() {
    let stack = Stack::shared();
    let user = stack.create_user("conn-wrong").unwrap();
    for protocol in PROTOCOLS {
        for security in SECURITIES {
            let (spec, secrets) = incoming_spec(stack, &user, protocol, security);
            let secrets = secrets.with("mail", "password", "abcd efgh ijkl mnop");
            let spec = with_provider(spec, Provider::Gmail);
            let report = test_connection(&resolve(&spec, &secrets)).await;
            assert_eq!(
                report.reason,
                Reason::AuthenticationFailed,
                "{protocol:?}/{security:?}: {report:?}"
            );
            assert_eq!(report.stage_reached, ConnectionStage::Login);
            assert!(
                report.message.contains("16-character App Password"),
                "{}",
                report.message
            );
            assert!(
                report.message.contains("2-Step Verification"),
                "{}",
                report.message
            );
            assert!(
                !report.message.contains("abcdefghijklmnop"),
                "password leaked: {}",
                report.message
            );
            assert!(Reason::AuthenticationFailed.is_permanent());
        }
    }
}

#[tokio::test]
async fn gmail_app_password_with_spaces_signs_in() {
    let stack = Stack::shared();
    let user = stack.create_user("conn-spaces").unwrap();
    let spaced: String = user
        .password
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    let (spec, secrets) = incoming_spec(stack, &user, IncomingProtocol::Imap, SecurityType::Ssl);
    let secrets = secrets.with("mail", "password", &format!("{spaced}\n"));
    let report = test_connection(&resolve(&with_provider(spec, Provider::Gmail), &secrets)).await;
    assert_eq!(report.reason, Reason::Connected, "{report:?}");
}

#[tokio::test]
async fn starttls_required_but_missing_sends_no_login() {
    let stack = Stack::shared();
    let user = stack.create_user("conn-starttls").unwrap();
    for protocol in PROTOCOLS {
        let (mut spec, secrets) = incoming_spec(stack, &user, protocol, SecurityType::Tls);
        let plain_port = spec.port.unwrap() as u16;
        let recorder = Recorder::start(stack.cleartext(plain_port)).await;
        spec.port = Some(i32::from(recorder.addr.port()));
        let report = test_connection(&resolve(&spec, &secrets)).await;
        assert_eq!(
            report.reason,
            Reason::StartTlsUnavailable,
            "{protocol:?}: {report:?}"
        );
        assert!(
            report.message.contains("never sends a password in clear"),
            "{}",
            report.message
        );
        let wire = recorder.sent();
        assert!(
            !wire.contains(&user.password),
            "{protocol:?}: password sent in clear: {wire}"
        );
        for verb in ["LOGIN", "AUTH", "USER", "PASS"] {
            assert!(
                !wire.to_uppercase().contains(verb),
                "{protocol:?}: {verb} on the wire: {wire}"
            );
        }
    }
}

#[tokio::test]
async fn unknown_mailbox_is_mailbox_not_found() {
    let stack = Stack::shared();
    let user = stack.create_user("conn-mailbox").unwrap();
    let (mut spec, secrets) =
        incoming_spec(stack, &user, IncomingProtocol::Imap, SecurityType::Ssl);
    spec.mailbox = "Nope".into();
    let report = test_connection(&resolve(&spec, &secrets)).await;
    assert_eq!(report.reason, Reason::MailboxNotFound, "{report:?}");
    assert_eq!(report.stage_reached, ConnectionStage::Mailbox);
    assert!(report.message.contains("\"Nope\""), "{}", report.message);
    assert!(
        !stack
            .folders(&user.address)
            .unwrap()
            .contains(&"Nope".to_owned())
    );
}

#[tokio::test]
async fn untrusted_certificate_fails_the_tls_handshake() {
    let stack = Stack::shared();
    let user = stack.create_user("conn-ca").unwrap();
    let (spec, secrets) = incoming_spec(stack, &user, IncomingProtocol::Imap, SecurityType::Ssl);
    let report = test_connection(&resolve(&without_ca(spec), &secrets)).await;
    assert_eq!(report.reason, Reason::TlsHandshakeFailed, "{report:?}");
    assert!(report.message.contains("caSecretRef"), "{}", report.message);
}

#[tokio::test]
async fn closed_port_is_connection_refused_and_missing_secret_is_named() {
    let stack = Stack::shared();
    let user = stack.create_user("conn-closed").unwrap();
    let (mut spec, secrets) =
        incoming_spec(stack, &user, IncomingProtocol::Imap, SecurityType::Ssl);
    let closed = support::free_port();
    spec.port = Some(i32::from(closed));
    let report = test_connection(&resolve(&spec, &secrets)).await;
    assert_eq!(report.reason, Reason::ConnectionRefused, "{report:?}");

    let spec = with_auth(
        spec,
        AuthSpec {
            password_secret_ref: Some(mailroom::api::SecretKeyRef {
                name: "mail".into(),
                key: "app-password".into(),
            }),
            ..AuthSpec::default()
        },
    );
    let failure = mailroom::resolve::incoming_settings(
        &mailroom_core::vocab::ResourceId::new("helpdesk", "support"),
        &spec,
        support::sources("helpdesk", &secrets),
    )
    .unwrap_err();
    assert_eq!(failure.reason, Reason::SecretNotFound);
    assert!(
        failure.message.contains("app-password"),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn the_sni_override_is_the_name_checked_against_the_certificate() {
    let stack = Stack::shared();
    let user = stack.create_user("conn-sni").unwrap();
    let (mut spec, secrets) =
        incoming_spec(stack, &user, IncomingProtocol::Imap, SecurityType::Ssl);
    spec.tls.as_mut().unwrap().server_name = Some("localhost".into());
    assert_eq!(
        test_connection(&resolve(&spec, &secrets)).await.reason,
        Reason::Connected
    );
    spec.tls.as_mut().unwrap().server_name = Some("imap.elsewhere.example".into());
    let report = test_connection(&resolve(&spec, &secrets)).await;
    assert_eq!(report.reason, Reason::TlsHandshakeFailed, "{report:?}");
    assert!(
        report.message.contains("imap.elsewhere.example"),
        "{}",
        report.message
    );
}
