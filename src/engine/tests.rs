//! The engine on its own: no adapter, no mail server (the resources here
//! never connect: they are disabled or cannot resolve).

use std::collections::BTreeMap;

use super::*;
use crate::status::conditions::STALLED;

fn engine(default_sink: Option<PathBuf>) -> Engine {
    Engine::new(Environment {
        outbox: Arc::new(Outbox::new()),
        tokens: Tokens::new(None),
        default_sink,
        options: WorkerOptions::default(),
        metrics: Default::default(),
    })
}

fn spec(extra: serde_json::Value) -> IncomingEmailServerSpec {
    let mut v = serde_json::json!({
        "email": "support@example.com",
        "server": "127.0.0.1",
        "auth": {"passwordSecretRef": {"name": "mail", "key": "password"}},
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    serde_json::from_value(v).unwrap()
}

fn secrets(password: &str) -> BTreeMap<String, Data> {
    [(
        "mail".to_owned(),
        [("password".to_owned(), password.as_bytes().to_vec())].into(),
    )]
    .into()
}

fn no_cursors() -> Arc<dyn CursorStore> {
    Arc::new(mailroom_core::state::FileCursorStore::new(
        std::env::temp_dir().join("mailroom-engine-tests"),
    ))
}

async fn apply(
    e: &mut Engine,
    spec: &IncomingEmailServerSpec,
    secrets: &BTreeMap<String, Data>,
    own: &[String],
) -> Applied {
    let id = ResourceId::new("helpdesk", "support");
    e.apply_incoming(
        Desired {
            id: &id,
            spec,
            generation: Some(1),
            retest: "",
            secrets,
            config_maps: &BTreeMap::new(),
            conditions: &[],
            on_change: None,
        },
        own,
        no_cursors,
    )
    .await
}

fn find<'a>(c: &'a [Condition], t: &str) -> Option<&'a Condition> {
    c.iter().find(|c| c.type_ == t)
}

fn at(s: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_800_000_000 + s).unwrap()
}

#[tokio::test]
async fn unchanged_is_kept_and_a_changed_secret_restarts_with_conditions_carried() {
    let mut e = engine(Some(std::env::temp_dir()));
    let disabled = spec(serde_json::json!({"enabled": false}));
    let id = ResourceId::new("helpdesk", "support");
    assert_eq!(
        apply(&mut e, &disabled, &secrets("a"), &[]).await,
        Applied::Started
    );
    let first = e.incoming_status(&id, at(0)).unwrap();
    let ready = first.ready_changed.expect("the first status is a change");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "Disabled")
    );
    assert_eq!(
        apply(&mut e, &disabled, &secrets("a"), &[]).await,
        Applied::Kept
    );
    // Another password: restarted, and the Ready condition keeps the time it
    // last flipped.
    assert_eq!(
        apply(&mut e, &disabled, &secrets("b"), &[]).await,
        Applied::Restarted
    );
    let again = e.incoming_status(&id, at(60)).unwrap();
    assert!(again.ready_changed.is_none());
    assert_eq!(
        find(&again.status.conditions, READY)
            .unwrap()
            .last_transition_time
            .0,
        at(0)
    );
    // A new own address goes to the running worker: nothing restarts.
    let own = vec!["out@example.com".to_owned()];
    assert_eq!(
        apply(&mut e, &disabled, &secrets("b"), &own).await,
        Applied::Kept
    );
    assert!(e.remove_incoming(&id).await);
    assert!(e.incoming_status(&id, at(120)).is_none());
}

#[test]
fn own_addresses_are_the_namespaces_sorted_without_repeats() {
    let one = own_addresses(
        "helpdesk",
        [
            ("helpdesk", "b@example.com"),
            ("other", "c@example.com"),
            ("helpdesk", "a@example.com"),
            ("helpdesk", "b@example.com"),
        ],
    );
    let other_order = own_addresses(
        "helpdesk",
        [
            ("helpdesk", "a@example.com"),
            ("helpdesk", "b@example.com"),
            ("other", "c@example.com"),
        ],
    );
    assert_eq!(one, ["a@example.com", "b@example.com"]);
    assert_eq!(one, other_order);
}

#[tokio::test]
async fn own_addresses_in_another_order_restart_nothing() {
    let mut e = engine(Some(std::env::temp_dir()));
    let disabled = spec(serde_json::json!({"enabled": false}));
    let a = own_addresses(
        "helpdesk",
        [("helpdesk", "x@e.com"), ("helpdesk", "y@e.com")],
    );
    let b = own_addresses(
        "helpdesk",
        [("helpdesk", "y@e.com"), ("helpdesk", "x@e.com")],
    );
    apply(&mut e, &disabled, &secrets("a"), &a).await;
    assert_eq!(
        apply(&mut e, &disabled, &secrets("a"), &b).await,
        Applied::Kept
    );
}

/// The conditions of a resource started from `spec` by `e`.
async fn conditions_of(mut e: Engine, spec: &IncomingEmailServerSpec) -> Vec<Condition> {
    apply(&mut e, spec, &secrets("a"), &[]).await;
    e.incoming_status(&ResourceId::new("helpdesk", "support"), at(0))
        .unwrap()
        .status
        .conditions
}

#[tokio::test]
async fn no_sink_is_stalled() {
    let c = conditions_of(engine(None), &spec(serde_json::json!({}))).await;
    let ready = find(&c, READY).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "NoSink")
    );
    assert!(
        ready.message.contains("spec.ticket.sink"),
        "{}",
        ready.message
    );
    assert_eq!(find(&c, STALLED).unwrap().status, "True");
    assert!(find(&c, "Reconciling").is_none());
}

#[tokio::test]
async fn an_invalid_spec_is_stalled_naming_the_field() {
    let bad = spec(serde_json::json!({"ticket": {"referencePattern": "[#(\\d+"}}));
    let c = conditions_of(engine(Some(std::env::temp_dir())), &bad).await;
    let ready = find(&c, READY).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidConfig")
    );
    assert!(
        ready.message.starts_with("spec.ticket.referencePattern:"),
        "{}",
        ready.message
    );
    assert_eq!(find(&c, STALLED).unwrap().status, "True");
}
