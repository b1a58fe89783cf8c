//! The webhook sink against a receiver in the test, fed by the fetch worker
//! from the real Dovecot: Standard Webhooks signatures checked with the
//! reference library, retries and `Retry-After`, tickets refused for good,
//! and several tickets under way at once without losing or repeating one.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use mailroom_core::incoming::worker::WorkerEvent;
use mailroom_core::sinks::{Sink, WebhookSink};
use mailroom_core::ticket::Ticket;
use support::worker::*;
use support::*;
use testbed::Stack;

/// The Standard Webhooks specification's example key.
const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn verifier() -> standardwebhooks::Webhook {
    standardwebhooks::Webhook::new(KEY).unwrap()
}

fn sink(url: &str, max_in_flight: usize) -> WebhookSink {
    WebhookSink::new(url, Some(KEY), Duration::from_secs(5), &Default::default())
        .unwrap()
        .with_max_in_flight(max_in_flight)
}

#[tokio::test]
async fn a_sink_failing_then_recovering_gives_exactly_one_ticket_per_message() {
    let stack = Stack::shared();
    let user = stack.create_user("webhook").unwrap();
    stack
        .deliver(&user.address, &(0..3).map(message).collect::<Vec<_>>())
        .unwrap();
    // The first five requests fail: more than one delivery's retries.
    let receiver = WebhookReceiver::start(|n| if n < 5 { 500 } else { 200 }).await;
    let webhook = WebhookSink::new(
        &receiver.url,
        Some(KEY),
        Duration::from_secs(5),
        &Default::default(),
    )
    .unwrap()
    .with_retries(2, Duration::from_millis(10))
    // One at a time, so that every request's answer is known in advance.
    .with_max_in_flight(1);
    let (_out, mut run) = start_imaps(stack, &user, |_| {}, |_| Sink::Webhook(webhook), fast());
    run.until("the sink to fail", |e| {
        matches!(e, WorkerEvent::SinkUnavailable { .. })
    })
    .await;
    // Nothing was marked processed while the sink was down.
    assert!(inbox_seen(stack, &user.address).iter().all(|seen| !*seen));
    let mut created = 0;
    run.until("three tickets", |e| {
        created += usize::from(matches!(e, WorkerEvent::TicketCreated { .. }));
        created == 3
    })
    .await;
    run.handle.stop().await;

    let requests = receiver.requests();
    let mut accepted: Vec<String> = requests
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.header("Idempotency-Key").unwrap().to_owned())
        .collect();
    accepted.sort();
    let before = accepted.len();
    accepted.dedup();
    assert_eq!(
        (before, accepted.len()),
        (3, 3),
        "one accepted request per message: {requests:?}"
    );
    for r in &requests {
        let ticket: Ticket = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            r.header("Idempotency-Key"),
            Some(ticket.idempotency_key.as_str())
        );
        assert_eq!(r.header("ce-type"), Some("dev.mailroom.ticket.created"));
        assert_eq!(r.header("ce-specversion"), Some("1.0"));
        assert_eq!(
            r.header("webhook-id"),
            Some(ticket.idempotency_key.as_str())
        );
        verifier().verify(&r.body, &r.header_map()).unwrap();
    }
    // The timestamp is signed: a captured request replayed with a fresh one
    // is refused, and one replayed as it was is refused once it is old.
    let mut replayed = requests[0].header_map();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    replayed.insert("webhook-timestamp", (now + 1).to_string().parse().unwrap());
    assert!(verifier().verify(&requests[0].body, &replayed).is_err());
    replayed.insert(
        "webhook-timestamp",
        (now - 600).to_string().parse().unwrap(),
    );
    assert!(verifier().verify(&requests[0].body, &replayed).is_err());
    assert!(inbox_seen(stack, &user.address).iter().all(|seen| *seen));
}

#[tokio::test]
async fn a_ticket_refused_with_4xx_is_recorded_and_its_mail_left_in_place() {
    let stack = Stack::shared();
    let user = stack.create_user("webhook-422").unwrap();
    stack.deliver(&user.address, &[message(1)]).unwrap();
    let receiver = WebhookReceiver::start(|_| 422).await;
    let webhook = WebhookSink::new(
        &receiver.url,
        None,
        Duration::from_secs(5),
        &Default::default(),
    )
    .unwrap();
    let (_out, mut run) = start_imaps(stack, &user, |_| {}, |_| Sink::Webhook(webhook), fast());
    let e = run
        .until("the refusal", |e| {
            matches!(e, WorkerEvent::TicketRejected { .. })
        })
        .await;
    run.until("the cursor", |e| {
        matches!(e, WorkerEvent::CursorAdvanced(_))
    })
    .await;
    run.handle.stop().await;
    let WorkerEvent::TicketRejected { reason, .. } = e else {
        unreachable!()
    };
    assert!(reason.contains("422"), "{reason}");
    assert_eq!(receiver.requests().len(), 1, "a 4xx is not retried");
    let inbox = stack.messages(&user.address, "INBOX").unwrap();
    assert_eq!(inbox.len(), 1);
    assert!(
        !inbox[0].has_flag("\\Seen"),
        "refused mail must stay unprocessed"
    );
}

/// A receiver that answers 503 with `Retry-After: 2` is asked again after two
/// seconds, not after the sink's own 10 ms backoff.
#[tokio::test]
async fn retry_after_on_503_is_waited_for() {
    let stack = Stack::shared();
    let user = stack.create_user("webhook-retry-after").unwrap();
    stack.deliver(&user.address, &[message(1)]).unwrap();
    let behaviour = Behaviour {
        retry_after: Some("2"),
        ..Default::default()
    };
    let receiver = WebhookReceiver::serve(behaviour, |n| if n == 0 { 503 } else { 200 }).await;
    let webhook = sink(&receiver.url, 1).with_retries(3, Duration::from_millis(10));
    let (_out, mut run) = start_imaps(stack, &user, |_| {}, |_| Sink::Webhook(webhook), fast());
    run.until("the ticket", |e| {
        matches!(e, WorkerEvent::TicketCreated { .. })
    })
    .await;
    run.handle.stop().await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(5),
        "asked again after {waited:?}"
    );
}

/// 40 messages to a receiver that answers after 100 ms: one at a time with
/// `maxInFlight: 1`, eight at once by default; either way each message is
/// one ticket, delivered once, and all of them are marked processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_go_several_at_once_and_each_arrives_once() {
    const N: usize = 40;
    let stack = Stack::shared();
    for (max, expected) in [(1, 1), (mailroom_core::sinks::DEFAULT_MAX_IN_FLIGHT, 8)] {
        let user = stack.create_user("webhook-parallel").unwrap();
        stack
            .deliver(&user.address, &(0..N).map(customer).collect::<Vec<_>>())
            .unwrap();
        let behaviour = Behaviour {
            delay: Duration::from_millis(100),
            ..Default::default()
        };
        let receiver = WebhookReceiver::serve(behaviour, |_| 200).await;
        let sink = sink(&receiver.url, max);
        let (_out, mut run) = start_imaps(stack, &user, |_| {}, |_| Sink::Webhook(sink), fast());
        let mut created = 0;
        run.until("every ticket", |e| {
            created += usize::from(matches!(e, WorkerEvent::TicketCreated { .. }));
            created == N
        })
        .await;
        run.handle.stop().await;
        assert_eq!(
            receiver.most_in_flight.load(Ordering::SeqCst),
            expected,
            "maxInFlight {max}"
        );
        let mut keys: Vec<String> = receiver
            .requests()
            .iter()
            .map(|r| r.header("webhook-id").unwrap().to_owned())
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!((receiver.requests().len(), keys.len()), (N, N));
        assert!(inbox_seen(stack, &user.address).iter().all(|seen| *seen));
    }
}

/// A `Retry-After` longer than the sink waits in place (10 s) ends the
/// delivery: the worker reports the sink unavailable, waits at least that
/// long before it tries again — in a pause a stop cuts short — and marks
/// nothing processed.
#[tokio::test]
async fn a_long_retry_after_is_waited_out_by_the_worker_not_the_sink() {
    let stack = Stack::shared();
    let user = stack.create_user("webhook-busy").unwrap();
    stack.deliver(&user.address, &[message(1)]).unwrap();
    let behaviour = Behaviour {
        retry_after: Some("120"),
        ..Default::default()
    };
    let receiver = WebhookReceiver::serve(behaviour, |_| 429).await;
    let (_out, mut run) = start_imaps(
        stack,
        &user,
        |_| {},
        |_| Sink::Webhook(sink(&receiver.url, 1)),
        fast(),
    );
    let e = run
        .until("the sink to be reported", |e| {
            matches!(e, WorkerEvent::SinkUnavailable { .. })
        })
        .await;
    let WorkerEvent::SinkUnavailable { message, retry_in } = e else {
        unreachable!()
    };
    assert!(retry_in >= Duration::from_secs(120), "{retry_in:?}");
    assert!(message.contains("pause of 120 s"), "{message}");
    assert_eq!(receiver.requests().len(), 1, "asked once, then left alone");
    let stopping = std::time::Instant::now();
    run.handle.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "the pause ends at a stop"
    );
    assert!(
        !stack.messages(&user.address, "INBOX").unwrap()[0].has_flag("\\Seen"),
        "nothing marked processed"
    );
}

/// Records what the worker hands its ticket hook (acknowledgements use it).
#[derive(Debug, Default)]
struct Hooked(std::sync::Mutex<Vec<Option<String>>>);

impl mailroom_core::incoming::worker::TicketHook for Hooked {
    fn ticket_created(&self, _: &Ticket, reference: Option<&str>) {
        self.0.lock().unwrap().push(reference.map(str::to_owned));
    }
}

/// A receiver answering `{"ticketId": 4711}` names the ticket it made: the
/// worker hands that reference on, for the acknowledgement's subject.
#[tokio::test]
async fn the_receivers_ticket_id_reaches_the_acknowledgement() {
    let stack = Stack::shared();
    let user = stack.create_user("webhook-ticket-id").unwrap();
    stack.deliver(&user.address, &[message(1)]).unwrap();
    let behaviour = Behaviour {
        body: Some(r#"{"ticketId": 4711}"#),
        ..Default::default()
    };
    let receiver = WebhookReceiver::serve(behaviour, |_| 201).await;
    let hooked = std::sync::Arc::new(Hooked::default());
    let options = mailroom_core::incoming::worker::WorkerOptions {
        on_ticket: Some(hooked.clone()),
        ..fast()
    };
    let sink = sink(&receiver.url, 1);
    let (_out, mut run) = start_imaps(stack, &user, |_| {}, |_| Sink::Webhook(sink), options);
    run.until("the ticket", |e| {
        matches!(e, WorkerEvent::TicketCreated { .. })
    })
    .await;
    run.handle.stop().await;
    assert_eq!(*hooked.0.lock().unwrap(), [Some("4711".to_owned())]);
}

/// A new ticket and two replies to it, all in one batch with eight under
/// way at once: the replies come after their ticket and in their order,
/// typed as replies and naming the ticket's key; other tickets go alongside.
#[tokio::test]
async fn replies_follow_their_ticket_in_order_with_their_own_event_type() {
    let stack = Stack::shared();
    let user = stack.create_user("webhook-replies").unwrap();
    let thread = |i: usize, prev: Option<usize>| {
        format!(
            "From: Ann <ann@customer.example>\r\nSubject: printer {i}\r\nMessage-ID: <t{i}@customer.example>\r\n{}\r\nbody {i}\r\n",
            prev.map(|p| format!("In-Reply-To: <t{p}@customer.example>\r\n"))
                .unwrap_or_default()
        )
    };
    let mut mail = vec![thread(0, None), thread(1, Some(0)), thread(2, Some(1))];
    mail.extend((10..16).map(customer));
    stack.deliver(&user.address, &mail).unwrap();
    let behaviour = Behaviour {
        delay: Duration::from_millis(100),
        ..Default::default()
    };
    let receiver = WebhookReceiver::serve(behaviour, |_| 200).await;
    let sink = sink(&receiver.url, 8);
    let (_out, mut run) = start_imaps(stack, &user, |_| {}, |_| Sink::Webhook(sink), fast());
    let (mut created, mut replies) = (0, 0);
    run.until("every message", |e| {
        created += usize::from(matches!(e, WorkerEvent::TicketCreated { .. }));
        replies += usize::from(matches!(e, WorkerEvent::ReplyDelivered { .. }));
        created == 7 && replies == 2
    })
    .await;
    run.handle.stop().await;
    let requests = receiver.requests();
    let of_thread: Vec<(Ticket, String)> = requests
        .iter()
        .map(|r| {
            let t: Ticket = serde_json::from_slice(&r.body).unwrap();
            (t, r.header("ce-type").unwrap().to_owned())
        })
        .filter(|(t, _)| {
            t.subject
                .as_deref()
                .is_some_and(|s| s.starts_with("printer"))
        })
        .collect();
    let subjects: Vec<_> = of_thread
        .iter()
        .map(|(t, _)| t.subject.clone().unwrap())
        .collect();
    assert_eq!(subjects, ["printer 0", "printer 1", "printer 2"]);
    assert_eq!(of_thread[0].1, "dev.mailroom.ticket.created");
    for (reply, event) in &of_thread[1..] {
        assert_eq!(event, "dev.mailroom.ticket.replied");
        let to = reply.reply_to.as_ref().unwrap();
        assert_eq!(
            to.original_key.as_deref(),
            Some(of_thread[0].0.idempotency_key.as_str())
        );
    }
    // Each reply was sent only once the one before it was answered.
    let at: Vec<_> = requests
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("\"printer "))
        .map(|r| r.at)
        .collect();
    for pair in at.windows(2) {
        assert!(
            pair[1].duration_since(pair[0]) >= Duration::from_millis(90),
            "{:?}",
            pair[1].duration_since(pair[0])
        );
    }
    assert!(
        receiver.most_in_flight.load(Ordering::SeqCst) > 1,
        "the other tickets went alongside"
    );
}
