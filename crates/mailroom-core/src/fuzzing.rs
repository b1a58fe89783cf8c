//! What the fuzz targets of the mail side (`fuzz/`) do with their input,
//! here so that the regression test (`tests/fuzz_corpus.rs`) runs the same
//! code over the seed corpus and every finding on each `cargo test`. Each
//! function must return for any input; a panic is a finding.

use std::sync::OnceLock;
use std::time::Instant;

use crate::config::server::refused_sign_in;
use crate::filter::{Filter, Judge, LoopProtection, MessageFacts, OwnAddresses, RateLimit};
use crate::incoming::pop3::parse;
use crate::incoming::settings::TicketSettings;
use crate::outgoing::message::{Identity, OutgoingMessage};
use crate::vocab::{FilterType, Provider};

/// Raw mail → parse → loop and filter judgement → ticket → JSON.
pub fn mail(raw: &[u8]) {
    static SETTINGS: OnceLock<TicketSettings> = OnceLock::new();
    let settings = SETTINGS.get_or_init(|| TicketSettings {
        mailbox: "helpdesk/support".into(),
        technician_group: Some("Service Desk".into()),
        category: Some("Hardware".into()),
        reference: regex::Regex::new(r"\[#(\d+)\]").expect("a valid pattern"),
        sink_tag: None,
    });
    let Ok(message) = crate::ticket::parse(raw) else {
        return;
    };
    let facts = MessageFacts::from_message(&message, true);
    let mut judge = Judge {
        filter: Some(Filter::compile(
            FilterType::Ignore,
            &["spam@example.org".into()],
            &["*.example.net".into(), "bad.test".into()],
            &["unsubscribe".into(), "prize".into()],
        )),
        loops: LoopProtection::new(
            OwnAddresses::new(&["support@example.org".into()]),
            RateLimit::default(),
        ),
    };
    let _ = judge.judge(&facts, Instant::now());
    let ticket = crate::ticket::from_message(raw, &message, settings, jiff::Timestamp::UNIX_EPOCH);
    serde_json::to_vec(&ticket).expect("a ticket serialises");
}

/// Submission JSON → message → the bytes sent over SMTP.
pub fn submission(body: &[u8]) {
    let Ok(message) = serde_json::from_slice::<OutgoingMessage>(body) else {
        return;
    };
    let from = Identity {
        email: "helpdesk@example.org".into(),
        sender_name: Some("Help \"Desk\"".into()),
        reply_to: None,
    };
    if let Ok(built) = message.build(&from, "<fuzz@example.org>") {
        assert!(
            !built.recipients.is_empty(),
            "a built message has recipients"
        );
    }
}

/// A POP3 server's answers: a status line, then a multi-line body read as
/// a CAPA, LIST or UIDL listing.
pub fn pop3(data: &[u8]) {
    let mut lines = data.split_inclusive(|b| *b == b'\n');
    if let Some(first) = lines.next() {
        let first = String::from_utf8_lossy(first);
        let _ = parse::reply(first.trim_end());
        let _ = parse::stat(&first);
    }
    let mut body = Vec::new();
    for line in lines {
        match parse::body_line(line) {
            Some(content) => body.extend_from_slice(content),
            None => break,
        }
    }
    let _ = parse::capabilities(&body);
    if let Ok(listing) = parse::listing(&body, "LIST") {
        let _ = parse::sizes(listing);
    }
}

/// IMAP responses as async-imap's parser (imap-proto) reads them, and the
/// text of a refused sign-in, which decides between a wrong password and a
/// busy server.
pub fn imap(data: &[u8]) {
    let mut rest = data;
    // imap-proto 0.17 panics when a response code is followed at once by a
    // multi-byte character (it slices the text after `]` one byte in). The
    // worker turns that panic into a protocol error and reconnects
    // (tests/faults.rs); inputs that reach it are skipped here so that the
    // fuzzer looks for other findings.
    if data.windows(2).any(|w| w[0] == b']' && w[1] >= 0x80) {
        rest = &[];
    }
    while let Ok((left, _)) = imap_proto::Response::parse(rest) {
        if left.len() >= rest.len() {
            break;
        }
        rest = left;
    }
    let text = String::from_utf8_lossy(data);
    for provider in [Provider::Gmail, Provider::Microsoft365, Provider::Other] {
        let _ = refused_sign_in(provider, &text);
    }
}
