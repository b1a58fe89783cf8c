//! Webhook delivery: mail from a local Dovecot through the fetch worker to a
//! receiver that answers each ticket after 20 ms, with `maxInFlight: 1` and
//! with the default (8), in the same run. Prints tickets per second and the
//! ratio.
//!
//!     cargo bench --bench webhook            (MESSAGES=N to change the count)

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use mailroom_core::incoming::worker::WorkerEvent;
use mailroom_core::sinks::{DEFAULT_MAX_IN_FLIGHT, Sink, WebhookSink};
use support::worker::*;
use support::{Behaviour, WebhookReceiver};
use testbed::{Options, Stack};

async fn run(stack: &Stack, total: usize, max_in_flight: usize) -> f64 {
    let user = stack.create_user("webhook-bench").unwrap();
    stack
        .seed(&user.address, &(0..total).map(customer).collect::<Vec<_>>())
        .unwrap();
    let behaviour = Behaviour {
        delay: Duration::from_millis(20),
        ..Default::default()
    };
    let receiver = WebhookReceiver::serve(behaviour, |_| 200).await;
    let sink = WebhookSink::new(
        &receiver.url,
        Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        Duration::from_secs(10),
        &Default::default(),
    )
    .unwrap()
    .with_max_in_flight(max_in_flight);
    let began = Instant::now();
    let (_out, mut run) = start_imaps(
        stack,
        &user,
        |_| {},
        |_| Sink::Webhook(sink),
        Default::default(),
    );
    let mut created = 0;
    run.until("every ticket", |e| {
        created += usize::from(matches!(e, WorkerEvent::TicketCreated { .. }));
        created == total
    })
    .await;
    let secs = began.elapsed().as_secs_f64();
    run.handle.stop().await;
    assert_eq!(receiver.requests().len(), total, "each ticket posted once");
    let rate = total as f64 / secs;
    println!(
        "webhook, receiver answering in 20 ms, maxInFlight {max_in_flight}: {rate:.0} tickets/s ({total} in {secs:.2} s)"
    );
    rate
}

#[tokio::main]
async fn main() {
    let total: usize = std::env::var("MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let stack = Stack::start(Options::default()).unwrap();
    let one = run(&stack, total, 1).await;
    let default = run(&stack, total, DEFAULT_MAX_IN_FLIGHT).await;
    println!(
        "maxInFlight {DEFAULT_MAX_IN_FLIGHT} / maxInFlight 1: {:.1}x",
        default / one
    );
}
