//! Request Tracker delivery: mail from a local Dovecot through the fetch
//! worker into a local RT 5 (SQLite, 4 Starlet workers, its default scrips
//! on, so each ticket also makes RT's autoreply), next to RT's own ceiling:
//! the same number of tickets created by the same number of parallel
//! clients posting straight to REST 2. A fresh RT for each figure.
//!
//!     cargo bench --bench request_tracker    (MESSAGES=N, CLIENTS=C, NO_SCRIPS=1)

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom_core::connection::TlsOptions;
use mailroom_core::incoming::worker::WorkerEvent;
use mailroom_core::sinks::{RequestTrackerSink, RtFields, Sink};
use support::worker::*;
use testbed::rt::{RequestTracker, RtOptions};
use testbed::{Options, Stack};

fn rt(options: RtOptions) -> RequestTracker {
    let rt = RequestTracker::start(options).unwrap();
    let queue = rt.create_queue("Support");
    rt.create_select_field("Category", queue, &["Hardware"]);
    rt
}

/// RT's ceiling: `clients` threads posting tickets like the mail would make.
fn ceiling(options: RtOptions, total: usize, clients: usize) -> f64 {
    let rt = Arc::new(rt(options));
    let began = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let rt = rt.clone();
            std::thread::spawn(move || {
                for i in (c..total).step_by(clients) {
                    let body = serde_json::json!({
                        "Queue": "Support",
                        "Subject": format!("request {i}"),
                        "Requestor": [format!("c{i}@customers.example.org")],
                        "Content": format!("body {i}\n"),
                        "ContentType": "text/plain",
                        "CustomFields": {"Category": "Hardware"},
                    });
                    let (status, answer) = rt.api("POST", "/ticket", Some(&body)).unwrap();
                    assert_eq!(status, 201, "{answer}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let secs = began.elapsed().as_secs_f64();
    let rate = total as f64 / secs;
    println!(
        "RT's own ceiling, {clients} clients posting to REST 2: {rate:.1} tickets/s ({total} in {secs:.1} s)"
    );
    rate
}

async fn mailroom(stack: &Stack, options: RtOptions, total: usize, clients: usize) -> f64 {
    let rt = rt(options);
    let user = stack.create_user("rt-bench").unwrap();
    stack
        .seed(&user.address, &(0..total).map(customer).collect::<Vec<_>>())
        .unwrap();
    let sink = RequestTrackerSink::new(
        &rt.url,
        &rt.token,
        RtFields {
            queue: "Support".into(),
            category: "Category".into(),
            message: "Mailroom Message".into(),
        },
        Duration::from_secs(60),
        &TlsOptions::default(),
    )
    .unwrap()
    .with_max_in_flight(clients);
    let began = Instant::now();
    let (_out, mut run) = start_imaps(
        stack,
        &user,
        |_| {},
        |_| Sink::RequestTracker(sink),
        Default::default(),
    );
    // A batch's tickets are reported when the whole batch is in RT, which
    // at RT's pace takes longer than the test helper waits.
    let mut created = 0;
    while created < total {
        let event = tokio::time::timeout(Duration::from_secs(300), run.events.recv())
            .await
            .expect("no progress for 5 minutes")
            .expect("the worker ended");
        match event {
            WorkerEvent::SinkUnavailable { message, .. } => panic!("{message}"),
            WorkerEvent::TicketCreated { .. } => created += 1,
            _ => {}
        }
    }
    let secs = began.elapsed().as_secs_f64();
    run.handle.stop().await;
    assert_eq!(
        rt.search("Queue = 'Support'").len(),
        total,
        "each message one ticket"
    );
    let rate = total as f64 / secs;
    println!(
        "mailroom into RT, maxInFlight {clients}: {rate:.1} tickets/s ({total} in {secs:.1} s, from the first fetch)"
    );
    rate
}

#[tokio::main]
async fn main() {
    let total = support::env_count("MESSAGES", 200);
    let clients = support::env_count("CLIENTS", 4);
    let options = RtOptions {
        workers: 4,
        no_scrips: support::env_count("NO_SCRIPS", 0) == 1,
    };
    println!(
        "RT scrips {}",
        if options.no_scrips {
            "off"
        } else {
            "on (autoreply per ticket)"
        }
    );
    let stack = Stack::start(Options::default()).unwrap();
    let own = tokio::task::spawn_blocking(move || ceiling(options, total, clients))
        .await
        .unwrap();
    let ours = mailroom(&stack, options, total, clients).await;
    println!("mailroom / RT's ceiling: {:.0} %", 100.0 * ours / own);
}
