//! Tickets into a real Request Tracker 5 (REST 2, SQLite, Starlet on
//! loopback): new mail becomes tickets with queue, requestor, subject,
//! content, attachments and category; replies (by RT's subject tag, by
//! `In-Reply-To`) become correspondence on their ticket; filters and loop
//! protection still decide; a delivery retried after a crash (a cursor
//! lost, mailroom killed -9) adds nothing twice.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mailroom::api::{IncomingProtocol, SecurityType};
use mailroom_core::connection::TlsOptions;
use mailroom_core::incoming::worker::WorkerEvent;
use mailroom_core::sinks::{RequestTrackerSink, RtFields, Sink};
use testbed::Stack;
use testbed::rt::{RT_NAME, RequestTracker, RtOptions};

use support::standalone::{Mailroom, mailbox_folder, put, ready};
use support::worker::{fast, start_imaps};

/// The sink as a spec names it (the token's Secret is not read here).
fn rt_spec(rt: &RequestTracker) -> mailroom::api::SinkSpec {
    serde_json::from_value(serde_json::json!({"requestTracker": {
        "url": rt.url,
        "rtName": RT_NAME,
        "tokenSecretRef": {"name": "rt", "key": "token"},
    }}))
    .unwrap()
}

fn sink(rt: &RequestTracker, queue: &str) -> Sink {
    Sink::RequestTracker(
        RequestTrackerSink::new(
            &rt.url,
            &rt.token,
            RtFields {
                queue: queue.into(),
                category: "Category".into(),
                message: "Mailroom Message".into(),
            },
            Duration::from_secs(30),
            &TlsOptions::default(),
        )
        .unwrap()
        .with_retries(3, Duration::from_millis(100)),
    )
}

const MULTIPART: &str = "From: Ann Example <ann@customer.example>\r\nTo: support@mailroom.test\r\nSubject: Printer on fire\r\nMessage-ID: <fire@customer.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: multipart/alternative; boundary=\"b2\"\r\n\r\n--b2\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe printer is on fire.\r\n--b2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>The printer is <b>on fire</b>.</p>\r\n--b2--\r\n--b1\r\nContent-Type: application/pdf; name=\"log.pdf\"\r\nContent-Disposition: attachment; filename=\"log.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nSGVsbG8gUERG\r\n--b1--\r\n";

fn plain(i: usize) -> String {
    format!(
        "From: Customer {i} <c{i}@customer.example>\r\nTo: support@mailroom.test\r\nSubject: request {i}\r\nMessage-ID: <req{i}@customer.example>\r\n\r\nbody of request {i}\r\n"
    )
}

fn correspondences(rt: &RequestTracker, ticket: u64) -> Vec<Vec<(String, String, Vec<u8>)>> {
    rt.transactions(ticket, "Correspond")
        .into_iter()
        // RT's own outgoing mail (autoreplies) is recorded apart; what the
        // API user added has content.
        .filter(|parts| !parts.is_empty())
        .collect()
}

fn text_of(parts: &[(String, String, Vec<u8>)]) -> String {
    parts
        .iter()
        .filter(|(ct, name, _)| ct.starts_with("text/") && name.is_empty())
        .map(|(_, _, b)| String::from_utf8_lossy(b).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_becomes_rt_tickets_and_replies_become_correspondence_filters_still_decide() {
    let stack = Stack::shared();
    let rt = RequestTracker::start(RtOptions::default()).unwrap();
    let queue = rt.create_queue("Service Desk");
    rt.create_select_field("Category", queue, &["Hardware", "Software"]);
    let user = stack.create_user("rt-intake").unwrap();
    let mut mail = vec![MULTIPART.to_owned()];
    mail.extend((1..=4).map(plain));
    stack
        .deliver(
            &user.address,
            &mail.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .unwrap();

    // The spec names RT with its rtName: RT's tag is a reference too.
    let (_cursors, mut run) = start_imaps(
        stack,
        &user,
        |spec| {
            spec.ticket.sink = Some(rt_spec(&rt));
            spec.filter = Some(mailroom::api::IncomingFilter {
                type_: mailroom::api::FilterType::Ignore,
                emails: vec![],
                domains: vec!["ignored.example".into()],
                keywords: vec![],
            });
        },
        |_| sink(&rt, "Service Desk"),
        fast(),
    );
    let mut created = 0;
    run.until("five tickets", |e| {
        created += matches!(e, WorkerEvent::TicketCreated { .. }) as usize;
        created == 5
    })
    .await;

    let ids = rt.search("Queue = 'Service Desk'");
    assert_eq!(ids.len(), 5, "{ids:?}");
    let fire = rt.search("Subject = 'Printer on fire'");
    assert_eq!(fire.len(), 1);
    let ticket = rt.ok("GET", &format!("/ticket/{}", fire[0]), None);
    assert_eq!(
        ticket["Requestor"][0]["id"], "ann@customer.example",
        "{ticket}"
    );
    let category = ticket["CustomFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "Category")
        .unwrap();
    assert_eq!(category["values"], serde_json::json!(["Hardware"]));
    let create = rt.transactions(fire[0], "Create");
    let parts = &create[0];
    assert!(text_of(parts).contains("<b>on fire</b>"), "{parts:?}");
    let pdf = parts.iter().find(|(_, name, _)| name == "log.pdf").unwrap();
    assert_eq!(pdf.0, "application/pdf");
    assert_eq!(pdf.2, b"Hello PDF");
    for i in 1..=4 {
        let found = rt.search(&format!(
            "Subject = 'request {i}' AND Requestor.EmailAddress = 'c{i}@customer.example'"
        ));
        assert_eq!(found.len(), 1, "request {i}");
        let text = text_of(&rt.transactions(found[0], "Create")[0]);
        assert!(text.contains(&format!("body of request {i}")), "{text}");
    }

    // A reply by RT's tag, one by In-Reply-To alone (its subject lost the
    // tag), an auto-reply carrying the tag (loop protection), and one from an
    // ignored domain (the filter).
    let second = rt.search("Subject = 'request 2'")[0];
    let replies = [
        format!("From: Ann Example <ann@customer.example>\r\nTo: support@mailroom.test\r\nSubject: Re: [{RT_NAME} #{}] Printer on fire\r\nMessage-ID: <fire-2@customer.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nStill burning.\r\n--b\r\nContent-Type: image/png; name=\"smoke.png\"\r\nContent-Disposition: attachment; filename=\"smoke.png\"\r\nContent-Transfer-Encoding: base64\r\n\r\naW1hZ2U=\r\n--b--\r\n", fire[0]),
        "From: Customer 2 <c2@customer.example>\r\nTo: support@mailroom.test\r\nSubject: more details\r\nMessage-ID: <req2-b@customer.example>\r\nIn-Reply-To: <req2@customer.example>\r\n\r\nHere are more details.\r\n".to_owned(),
        format!("From: Robot <robot@customer.example>\r\nTo: support@mailroom.test\r\nSubject: Out of office: [{RT_NAME} #{}]\r\nAuto-Submitted: auto-replied\r\nMessage-ID: <ooo@customer.example>\r\n\r\nI am away.\r\n", fire[0]),
        format!("From: Spam <x@ignored.example>\r\nTo: support@mailroom.test\r\nSubject: Re: [{RT_NAME} #{}]\r\nMessage-ID: <spam@ignored.example>\r\n\r\nbuy\r\n", fire[0]),
    ];
    stack
        .deliver(
            &user.address,
            &replies.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .unwrap();
    let mut answered = Vec::new();
    let mut judged = 0;
    run.until("two replies and two rejections", |e| {
        match e {
            WorkerEvent::ReplyDelivered { ticket, .. } => answered.push(ticket.clone()),
            WorkerEvent::Judged { verdict, .. } if !verdict.accepted => judged += 1,
            WorkerEvent::TicketCreated { .. } => panic!("a reply opened a ticket"),
            _ => {}
        }
        answered.len() == 2 && judged == 2
    })
    .await;
    answered.sort();
    let mut expected = vec![Some(fire[0].to_string()), Some(second.to_string())];
    expected.sort();
    assert_eq!(answered, expected);
    assert_eq!(
        rt.search("Queue = 'Service Desk'").len(),
        5,
        "no new ticket"
    );

    let on_fire = correspondences(&rt, fire[0]);
    assert_eq!(on_fire.len(), 1, "only the customer's reply: {on_fire:?}");
    assert!(text_of(&on_fire[0]).contains("Still burning."));
    let png = on_fire[0]
        .iter()
        .find(|(_, n, _)| n == "smoke.png")
        .unwrap();
    assert_eq!(png.2, b"image");
    let on_second = correspondences(&rt, second);
    assert_eq!(on_second.len(), 1);
    assert!(text_of(&on_second[0]).contains("Here are more details."));
    run.handle.stop().await;
}

/// Mail for the kill test: new requests, and replies (by tag) to tickets
/// that were in RT before.
fn kill_mail(total: usize, earlier: &[u64]) -> Vec<String> {
    (0..total)
        .map(|i| match i % 5 {
            4 => format!(
                "From: Customer {i} <k{i}@customer.example>\r\nSubject: Re: [{RT_NAME} #{}] earlier\r\nMessage-ID: <kill-{i}@customer.example>\r\n\r\nreply {i}\r\n",
                earlier[i % earlier.len()]
            ),
            _ => format!(
                "From: Customer {i} <k{i}@customer.example>\r\nSubject: kill request {i}\r\nMessage-ID: <kill-{i}@customer.example>\r\n\r\nrequest {i}\r\n"
            ),
        })
        .collect()
}

#[test]
fn kill_9_during_delivery_and_a_lost_cursor_leave_no_duplicate_in_rt() {
    let stack = Stack::shared();
    let rt = RequestTracker::start(RtOptions::default()).unwrap();
    rt.create_queue("Support");
    let earlier: Vec<u64> = (0..3)
        .map(|i| {
            testbed::rt::id(&rt.ok(
                "POST",
                "/ticket",
                Some(&serde_json::json!({"Queue": "Support", "Subject": format!("earlier {i}"), "Content": "x", "ContentType": "text/plain"})),
            ))
        })
        .collect();
    let mailbox = stack.create_user("rt-kill").unwrap();
    let total = 60;
    let mail = kill_mail(total, &earlier);
    stack.seed(&mailbox.address, &mail).unwrap();
    let replies = total / 5;
    let requests = total - replies;

    let dir = tempfile::tempdir().unwrap();
    put(
        dir.path(),
        "rt.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: rt, namespace: {}}}\nstringData: {{token: {}}}\n",
            support::standalone::NS,
            rt.token
        ),
    );
    let extra = format!(
        "  firstStart: All\n  ticket:\n    sink:\n      requestTracker:\n        url: {}\n        queue: Support\n        rtName: {RT_NAME}\n        tokenSecretRef: {{name: rt, key: token}}\n",
        rt.url
    );
    mailbox_folder(stack, dir.path(), &mailbox, &extra);

    let count = || {
        let tickets = rt
            .search("Queue = 'Support' AND Subject LIKE 'kill request'")
            .len();
        let correspondences: usize = earlier.iter().map(|t| correspondences(&rt, *t).len()).sum();
        (tickets, correspondences)
    };
    // Killed while tickets go into RT: at moments spread over the intake.
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut kills = 0;
    while kills < 4 && count() != (requests, replies) {
        let mut mailroom = Mailroom::start(dir.path());
        std::thread::sleep(Duration::from_millis(rng.u64(800..2500)));
        mailroom.child.kill().unwrap();
        mailroom.child.wait().unwrap();
        // RT finishes the requests it had begun: what it answers is what it
        // accepted, and the next run must find it.
        std::thread::sleep(Duration::from_secs(2));
        kills += 1;
    }
    let mailroom = Mailroom::start(dir.path());
    let deadline = Instant::now() + Duration::from_secs(120);
    while count() != (requests, replies) {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: {:?} of {:?}\n{}",
            count(),
            (requests, replies),
            mailroom.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    mailroom.wait("incomingemailserver", "support", "Ready", ready);
    assert_eq!(mailroom.terminate(), Some(0));

    // The cursor lost: every message is delivered again, as after a crash
    // between RT's answer and the cursor's save. RT finds each one's key.
    std::fs::remove_dir_all(dir.path().join(".state")).unwrap();
    let _ = std::fs::remove_dir_all(dir.path().join(".status"));
    let mailroom = Mailroom::start(dir.path());
    let cursor = dir.path().join(".state/helpdesk/support.json");
    let deadline = Instant::now() + Duration::from_secs(120);
    let judged_again = || {
        std::fs::read(&cursor)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|c| c["imap"]["lastUid"].as_u64())
            .is_some_and(|uid| uid >= total as u64)
    };
    while !judged_again() {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: not judged again\n{}",
            mailroom.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(mailroom.terminate(), Some(0));
    assert_eq!(count(), (requests, replies), "seed {seed}, {kills} kills");
    // Each message's key is on exactly one ticket, once.
    let mut keys = BTreeSet::new();
    for t in rt.search("Queue = 'Support'") {
        let ticket = rt.ok("GET", &format!("/ticket/{t}"), None);
        for f in ticket["CustomFields"].as_array().unwrap() {
            if f["name"] == "Mailroom Message" {
                for v in f["values"].as_array().unwrap() {
                    assert!(
                        keys.insert(v.as_str().unwrap().to_owned()),
                        "seed {seed}: {v} twice"
                    );
                }
            }
        }
    }
    assert_eq!(keys.len(), total, "seed {seed}");
}

/// The queue defaults to the technician group, else General; `rtName` makes
/// RT's tag a reference and the acknowledgements' tag; the token comes from
/// its Secret and stays out of what the sink shows.
#[test]
fn the_spec_resolves_queue_tag_and_token() {
    let stack = Stack::shared();
    let user = stack.create_user("rt-resolve").unwrap();
    let (mut spec, secrets) =
        support::incoming_spec(stack, &user, IncomingProtocol::Imap, SecurityType::Ssl);
    let secrets = secrets.with("rt", "token", "1-2-abcdefsecret");
    spec.outgoing_server_ref = Some(mailroom::api::LocalObjectRef { name: "out".into() });
    spec.acknowledgements.enabled = true;
    let id = mailroom_core::vocab::ResourceId::new("helpdesk", "support");
    let resolve = |spec: &mailroom::api::IncomingEmailServerSpec| {
        mailroom::resolve::incoming(&id, spec, support::sources("helpdesk", &secrets), None)
            .unwrap()
    };
    let rt: mailroom::api::RequestTrackerSinkSpec = serde_json::from_value(serde_json::json!({
        "url": "https://rt.example.com",
        "rtName": "rt.example",
        "tokenSecretRef": {"name": "rt", "key": "token"},
    }))
    .unwrap();
    spec.ticket.sink = Some(mailroom::api::SinkSpec {
        webhook: None,
        directory: None,
        request_tracker: Some(rt),
    });

    let general = resolve(&spec);
    let shown = format!("{:?}", general.sink);
    assert!(shown.contains("queue: \"General\""), "{shown}");
    assert!(!shown.contains("abcdefsecret"), "{shown}");
    assert_eq!(
        general.acknowledgements.unwrap().1.tag,
        "[rt.example #{reference}]"
    );
    let tag = general.settings.ticket.sink_tag.unwrap();
    assert_eq!(
        tag.captures("Re: [RT.example  #31 ] x")
            .and_then(|c| c.get(1))
            .map(|m| m.as_str()),
        Some("31")
    );

    spec.ticket.technician_group = Some("Service Desk".into());
    let group = format!("{:?}", resolve(&spec).sink);
    assert!(group.contains("queue: \"Service Desk\""), "{group}");
}

/// A queue without the category's custom field: nothing is created, the mail
/// stays unseen, and the sink says what to fix; once the field exists the
/// same mail goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_category_field_is_named_and_nothing_is_lost() {
    let stack = Stack::shared();
    let rt = RequestTracker::start(RtOptions::default()).unwrap();
    let queue = rt.create_queue("Service Desk");
    let user = stack.create_user("rt-no-field").unwrap();
    stack.deliver(&user.address, &[plain(1).as_str()]).unwrap();
    let (_cursors, mut run) =
        start_imaps(stack, &user, |_| {}, |_| sink(&rt, "Service Desk"), fast());
    let event = run
        .until("the sink's complaint", |e| {
            matches!(e, WorkerEvent::SinkUnavailable { .. })
        })
        .await;
    let WorkerEvent::SinkUnavailable { message, .. } = event else {
        unreachable!()
    };
    assert!(
        message.contains("\"Category\"") && message.contains("categoryField"),
        "{message}"
    );
    assert!(rt.search("Queue = 'Service Desk'").is_empty());
    assert!(!support::worker::inbox_seen(stack, &user.address)[0]);

    rt.create_select_field("Category", queue, &["Hardware"]);
    run.until("the ticket", |e| {
        matches!(e, WorkerEvent::TicketCreated { .. })
    })
    .await;
    assert_eq!(rt.search("Queue = 'Service Desk'").len(), 1);
    run.handle.stop().await;
}
