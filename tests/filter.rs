//! Every sentence of the help page's filter rows, made exact (docs/filters.md), and
//! loop protection, judged on real parsed messages.

use std::time::{Duration, Instant};

use mail_parser::MessageParser;
use mailroom::api::{FilterType, IncomingFilter};
use mailroom_core::filter::{
    Filter, Judge, LoopProtection, MessageFacts, OwnAddresses, RateLimit, Verdict,
};
use proptest::prelude::*;

fn facts(raw: &str) -> MessageFacts {
    MessageFacts::from_message(
        &MessageParser::default().parse(raw.as_bytes()).unwrap(),
        true,
    )
}

fn mail(from: &str, subject: &str, body: &str) -> MessageFacts {
    facts(&format!(
        "From: {from}\r\nTo: support@mailroom.test\r\nSubject: {subject}\r\nMessage-ID: <x@y.z>\r\n\r\n{body}\r\n"
    ))
}

fn filter(
    kind: FilterType,
    emails: &[&str],
    domains: &[&str],
    keywords: &[&str],
) -> IncomingFilter {
    let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    IncomingFilter {
        type_: kind,
        emails: v(emails),
        domains: v(domains),
        keywords: v(keywords),
    }
}

fn judge(f: Option<&IncomingFilter>, m: &MessageFacts) -> Verdict {
    Judge {
        filter: f.map(|f| Filter::compile(f.type_, &f.emails, &f.domains, &f.keywords)),
        loops: LoopProtection::new(
            OwnAddresses::new(&["helpdesk@mailroom.test".into()]),
            RateLimit::default(),
        ),
    }
    .judge(m, Instant::now())
}

use FilterType::{Allow, Ignore};

#[test]
fn seed_sentences_table() {
    let hr = mail("HR <hr@company.com>", "Leave request", "hello");
    let yahoo = mail("x@yahoo.com", "Hello", "hi");
    let other = mail("someone@other.org", "Printer on fire", "help");
    // (filter, message, accepted, rule)
    let table: Vec<(Option<IncomingFilter>, &MessageFacts, bool, &str)> = vec![
        // "If no filter is configured, ServiceOps accepts emails from all senders by default."
        (None, &other, true, "noFilter"),
        // "With Allow, only these addresses can create tickets."
        (
            Some(filter(Allow, &["hr@company.com"], &[], &[])),
            &hr,
            true,
            "emails[0]",
        ),
        (
            Some(filter(Allow, &["hr@company.com"], &[], &[])),
            &other,
            false,
            "noMatch",
        ),
        // "With Allow, only emails from these domains create tickets."
        (
            Some(filter(Allow, &[], &["yahoo.com"], &[])),
            &yahoo,
            true,
            "domains[0]",
        ),
        (
            Some(filter(Allow, &[], &["yahoo.com"], &[])),
            &hr,
            false,
            "noMatch",
        ),
        // "With Allow, only emails containing these keywords create tickets."
        (
            Some(filter(Allow, &[], &[], &["printer"])),
            &other,
            true,
            "keywords[0]",
        ),
        (
            Some(filter(Allow, &[], &[], &["printer"])),
            &hr,
            false,
            "noMatch",
        ),
        // "With Ignore, emails from these addresses are silently discarded."
        (
            Some(filter(Ignore, &["hr@company.com"], &[], &[])),
            &hr,
            false,
            "emails[0]",
        ),
        (
            Some(filter(Ignore, &["hr@company.com"], &[], &[])),
            &other,
            true,
            "noMatch",
        ),
        // "With Ignore, all emails from these domains are silently discarded."
        (
            Some(filter(Ignore, &[], &["yahoo.com"], &[])),
            &yahoo,
            false,
            "domains[0]",
        ),
        // "With Ignore, matching emails are silently discarded." (keywords)
        (
            Some(filter(Ignore, &[], &[], &["on fire"])),
            &other,
            false,
            "keywords[0]",
        ),
        // "Multiple entries work as OR conditions."
        (
            Some(filter(
                Allow,
                &["a@b.example", "hr@company.com"],
                &["x.example"],
                &["nothing"],
            )),
            &hr,
            true,
            "emails[1]",
        ),
        (
            Some(filter(
                Allow,
                &["a@b.example"],
                &["x.example", "yahoo.com"],
                &[],
            )),
            &yahoo,
            true,
            "domains[1]",
        ),
        (
            Some(filter(
                Allow,
                &["a@b.example"],
                &["x.example"],
                &["zzz", "printer"],
            )),
            &other,
            true,
            "keywords[1]",
        ),
    ];
    for (i, (f, m, accepted, rule)) in table.iter().enumerate() {
        let v = judge(f.as_ref(), m);
        assert_eq!(
            (v.accepted, v.rule.as_str()),
            (*accepted, *rule),
            "row {i}: {v:?}"
        );
        assert!(!v.reason.is_empty());
    }
}

#[test]
fn case_unicode_and_idn() {
    let f = filter(
        Allow,
        &["HR@Company.COM"],
        &["Bücher.example"],
        &["STRASSE"],
    );
    assert!(judge(Some(&f), &mail("hr@company.com", "x", "y")).accepted);
    assert_eq!(
        judge(Some(&f), &mail("a@xn--bcher-kva.example", "x", "y")).rule,
        "domains[0]"
    );
    let idn = facts("From: a@B\u{fc}cher.example\r\nSubject: x\r\n\r\ny\r\n");
    assert_eq!(judge(Some(&f), &idn).rule, "domains[0]");
    assert_eq!(
        judge(Some(&f), &mail("z@other.org", "Die Straße ist nass", "")).rule,
        "keywords[0]"
    );
}

#[test]
fn wildcard_domains_match_subdomains_and_exact_ones_do_not() {
    let f = filter(Allow, &[], &["*.company.com", "exact.org"], &[]);
    assert_eq!(
        judge(Some(&f), &mail("a@mail.eu.company.com", "x", "")).rule,
        "domains[0]"
    );
    assert_eq!(
        judge(Some(&f), &mail("a@company.com", "x", "")).rule,
        "domains[0]"
    );
    assert!(!judge(Some(&f), &mail("a@notcompany.com", "x", "")).accepted);
    assert!(judge(Some(&f), &mail("a@exact.org", "x", "")).accepted);
    assert!(!judge(Some(&f), &mail("a@sub.exact.org", "x", "")).accepted);
}

#[test]
fn the_display_name_never_counts() {
    let f = filter(Allow, &["hr@company.com"], &["company.com"], &[]);
    let spoof = mail("\"hr@company.com\" <evil@x.example>", "x", "");
    let v = judge(Some(&f), &spoof);
    assert!(!v.accepted, "{v:?}");
    assert!(v.reason.contains("evil@x.example"), "{}", v.reason);
}

#[test]
fn missing_or_garbled_from_is_its_own_reason() {
    let none = facts("To: support@mailroom.test\r\nSubject: x\r\n\r\ny\r\n");
    assert_eq!(judge(None, &none).rule, "sender:missing");
    for garbled in [
        "From: not an address\r\n",
        "From: <@>\r\n",
        "From: \"\" <>\r\n",
        "From: =?x?q?broken\r\n",
    ] {
        let m = facts(&format!("{garbled}Subject: x\r\n\r\ny\r\n"));
        let v = judge(None, &m);
        assert_eq!(v.rule, "sender:malformed", "{garbled:?}: {v:?}");
    }
}

#[test]
fn keywords_in_html_only_mail_and_across_line_breaks() {
    let f = filter(Allow, &[], &[], &["printer on fire"]);
    let html = facts(
        "From: a@b.example\r\nSubject: help\r\nContent-Type: text/html\r\n\r\n<p>The <b>printer</b>\r\n on <i>fire</i></p>\r\n",
    );
    assert_eq!(judge(Some(&f), &html).rule, "keywords[0]");
    let wrapped = mail("a@b.example", "help", "the printer\r\non\r\n   fire again");
    assert_eq!(judge(Some(&f), &wrapped).rule, "keywords[0]");
}

#[test]
fn loop_protection_one_test_per_rule() {
    let cases = [
        ("Auto-Submitted: auto-replied\r\n", "loop:autoSubmitted"),
        ("Auto-Submitted: auto-generated\r\n", "loop:autoSubmitted"),
        ("X-Autoreply: yes\r\n", "loop:autoReply"),
        ("X-Autorespond: yes\r\n", "loop:autoReply"),
        ("Precedence: bulk\r\n", "loop:precedence"),
        ("Precedence: junk\r\n", "loop:precedence"),
        ("Precedence: list\r\n", "loop:precedence"),
        (
            "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n",
            "loop:deliveryReport",
        ),
    ];
    for (header, rule) in cases {
        let m = facts(&format!(
            "From: a@b.example\r\n{header}Subject: x\r\n\r\n--b\r\n\r\ny\r\n--b--\r\n"
        ));
        assert_eq!(judge(None, &m).rule, rule, "{header:?}");
    }
    assert_eq!(
        judge(None, &mail("MAILER-DAEMON@b.example", "x", "")).rule,
        "loop:systemSender"
    );
    assert_eq!(
        judge(None, &mail("postmaster@b.example", "x", "")).rule,
        "loop:systemSender"
    );
    assert_eq!(
        judge(None, &mail("Helpdesk@MailRoom.test", "x", "")).rule,
        "loop:ownAddress"
    );
    // Loop protection comes before the filter: an Allow entry does not let it through.
    let f = filter(Allow, &["a@b.example"], &[], &[]);
    let auto =
        facts("From: a@b.example\r\nAuto-Submitted: auto-replied\r\nSubject: x\r\n\r\ny\r\n");
    assert_eq!(judge(Some(&f), &auto).rule, "loop:autoSubmitted");
}

#[test]
fn own_addresses_change_under_a_running_judge() {
    let own = OwnAddresses::default();
    let mut judge = Judge {
        filter: None,
        loops: LoopProtection::new(own.clone(), RateLimit::default()),
    };
    let m = mail("notifier@mailroom.test", "x", "");
    assert!(judge.judge(&m, Instant::now()).accepted);
    // An OutgoingEmailServer with this address appears: the same judge sees it.
    own.set(&["Notifier@MailRoom.test".into()]);
    assert_eq!(judge.judge(&m, Instant::now()).rule, "loop:ownAddress");
    own.set(&[]);
    assert!(judge.judge(&m, Instant::now()).accepted);
}

#[test]
fn auto_submitted_no_and_auto_response_suppress_alone_still_become_tickets() {
    let m = facts("From: a@b.example\r\nAuto-Submitted: no\r\nSubject: x\r\n\r\ny\r\n");
    assert!(judge(None, &m).accepted);
    let m = facts("From: a@b.example\r\nX-Auto-Response-Suppress: All\r\nSubject: x\r\n\r\ny\r\n");
    let v = judge(None, &m);
    assert!(v.accepted, "{v:?}");
    assert!(
        m.suppress_auto_reply,
        "the request not to auto-reply is kept for acknowledgements"
    );
}

#[test]
fn the_rate_limit_stops_a_loop_that_slips_through() {
    let mut j = Judge {
        filter: None,
        loops: LoopProtection::new(
            OwnAddresses::default(),
            RateLimit {
                max: 3,
                window: Duration::from_secs(60),
            },
        ),
    };
    let looping = |i: u64| {
        facts(&format!(
            "From: looper@b.example\r\nSubject: x\r\nMessage-ID: <loop-{i}@b.example>\r\n\r\nagain\r\n"
        ))
    };
    let t0 = Instant::now();
    let verdicts: Vec<bool> = (0..5)
        .map(|i| j.judge(&looping(i), t0 + Duration::from_secs(i)).accepted)
        .collect();
    assert_eq!(verdicts, [true, true, true, false, false]);
    assert_eq!(
        j.judge(&looping(5), t0 + Duration::from_secs(4)).rule,
        "loop:rateLimit"
    );
    // A message judged again (its delivery failed and is retried) is the
    // same message, not one more from its sender.
    assert!(j.judge(&looping(0), t0 + Duration::from_secs(5)).accepted);
    // Another sender is not affected, and the window slides.
    assert!(j.judge(&mail("other@b.example", "x", ""), t0).accepted);
    assert!(j.judge(&looping(6), t0 + Duration::from_secs(61)).accepted);
}

#[test]
fn outgoing_recipients_are_judged_one_by_one() {
    let allow = Filter::compile(
        Allow,
        &["boss@partner.example".into()],
        &["*.company.com".into()],
        &[],
    );
    assert_eq!(allow.judge_recipient("a@eu.company.com").rule, "domains[0]");
    assert!(allow.judge_recipient("Boss@Partner.example").accepted);
    assert!(!allow.judge_recipient("x@gmail.com").accepted);
    let ignore = Filter::compile(Ignore, &[], &["gmail.com".into()], &[]);
    assert!(!ignore.judge_recipient("x@gmail.com").accepted);
    assert!(ignore.judge_recipient("x@company.com").accepted);
}

proptest! {
    /// Allow and Ignore with the same lists split every message into two
    /// complementary sets, naming the same rule.
    #[test]
    fn allow_and_ignore_partition_every_message(
        local in "[a-z]{1,8}",
        domain in prop::sample::select(vec!["company.com", "eu.company.com", "yahoo.com", "other.org", "b\u{fc}cher.example"]),
        subject in "[a-zA-Z ]{0,30}",
        emails in prop::collection::vec("[a-z]{1,4}@(company\\.com|other\\.org)", 0..4),
        domains in prop::collection::vec(prop::sample::select(vec!["company.com", "*.company.com", "yahoo.com", "xn--bcher-kva.example"]), 0..3),
        keywords in prop::collection::vec("[a-z]{2,5}", 0..3),
    ) {
        let m = mail(&format!("{local}@{domain}"), &subject, "body text");
        let v = |l: &[String]| l.to_vec();
        let domains: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
        let allow = Filter::compile(Allow, &v(&emails), &domains, &v(&keywords)).judge(&m);
        let ignore = Filter::compile(Ignore, &v(&emails), &domains, &v(&keywords)).judge(&m);
        prop_assert_ne!(allow.accepted, ignore.accepted);
        prop_assert_eq!(allow.rule, ignore.rule);
    }
}
