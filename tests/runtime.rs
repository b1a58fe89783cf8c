//! One running resource as both adapters use it: its status follows what the
//! worker meets, including a ticket sink that refuses for a while.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom::api::{IncomingProtocol, SecurityType};
use mailroom::runtime::{IncomingInputs, IncomingRuntime, Runtime};
use mailroom_core::incoming::worker::WorkerOptions;
use mailroom_core::outgoing::Outbox;
use mailroom_core::state::FileCursorStore;
use support::WebhookReceiver;
use testbed::Stack;

fn ready(runtime: &IncomingRuntime) -> (String, String) {
    let now = jiff::Timestamp::now();
    let status = runtime.status(None, &[], now, now);
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    (c.status.clone(), c.reason.clone())
}

async fn wait_for(runtime: &IncomingRuntime, want: (&str, &str)) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, reason) = ready(runtime);
        if (status.as_str(), reason.as_str()) == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Ready stayed {status}/{reason}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_refusing_sink_shows_as_sink_unavailable_until_it_takes_the_ticket() {
    let stack = Stack::shared();
    let user = stack.create_user("runtime-sink").unwrap();
    stack
        .deliver(&user.address, &["From: Ann <ann@customer.example>\r\nTo: x@mailroom.test\r\nSubject: sink\r\nMessage-ID: <sink@customer.example>\r\n\r\nhello\r\n"])
        .unwrap();
    // More refusals than one delivery's own retries (4 attempts).
    let receiver = WebhookReceiver::start(|n| if n < 6 { 503 } else { 200 }).await;
    let (mut spec, secrets) =
        support::incoming_spec(stack, &user, IncomingProtocol::Imap, SecurityType::Ssl);
    spec.ticket.sink = Some(
        serde_json::from_value(serde_json::json!({"webhook": {"url": receiver.url}})).unwrap(),
    );
    let out = tempfile::tempdir().unwrap();
    let mut runtime = IncomingRuntime::start(IncomingInputs {
        id: &mailroom_core::vocab::ResourceId::new("helpdesk", "support"),
        spec: &spec,
        secrets: &secrets,
        config_maps: &support::Secrets::default(),
        tokens: &Default::default(),
        own_addresses: Default::default(),
        outbox: Arc::new(Outbox::new()),
        default_sink: None,
        store: Arc::new(FileCursorStore::new(out.path())),
        options: WorkerOptions {
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_millis(200),
            ..WorkerOptions::default()
        },
        on_change: None,
        counters: Default::default(),
        metrics: &Default::default(),
    });
    wait_for(&runtime, ("False", "SinkUnavailable")).await;
    let now = jiff::Timestamp::now();
    let status = runtime.status(None, &[], now, now);
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "ConnectionVerified" && c.status == "True")
    );
    assert!(
        status.next_retry_at.is_some(),
        "status says when the next try is"
    );
    wait_for(&runtime, ("True", "Connected")).await;
    assert!(
        receiver.requests().iter().any(|r| r.status == 200),
        "the ticket went through"
    );
    runtime.stop().await;
}
