//! The controller against a mocked Kubernetes API (tower-test, as controller-rs
//! does) that records every request, while the mail servers are the real ones:
//! the exact requests of a reconcile, the status it writes for success, a wrong
//! password and a missing Secret, the finalizer, no write when nothing changed,
//! the Secret mapper, the watch filter, and a rotated OAuth2
//! refresh token written back to its Secret.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use mailroom::api::{IncomingEmailServer, IncomingProtocol, OutgoingEmailServer, SecurityType};
use mailroom::controller::references::{Kind, References};
use mailroom::controller::{
    Context, ContextParts, FINALIZER, StatusWork, TEST_ANNOTATION, Timing, reconcile_incoming,
    reconcile_outgoing, servers_referencing, trigger_hash,
};
use mailroom::engine::Names;
use mailroom::runtime::Runtime;
use mailroom_core::incoming::worker::WorkerOptions;
use mailroom_core::vocab::ResourceId;
use serde_json::{Value, json};
use testbed::{Stack, User};
use tokio::sync::mpsc;

const NS: &str = "helpdesk";

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: String,
    body: Value,
}

/// An API server in memory: Secrets and ConfigMaps by name, the object to
/// answer finalizer patches with, and the record of every request.
#[derive(Clone, Default)]
struct FakeApi {
    seen: Arc<Mutex<Vec<Seen>>>,
    secrets: Arc<Mutex<HashMap<String, Value>>>,
    config_maps: Arc<Mutex<HashMap<String, Value>>>,
    object: Arc<Mutex<Value>>,
}

fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "not found", "reason": "NotFound", "code": 404}),
    )
}

impl FakeApi {
    fn answer(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let last = path.rsplit('/').next().unwrap_or_default().to_owned();
        match method {
            "GET" if path.contains("/secrets/") => self
                .secrets
                .lock()
                .unwrap()
                .get(&last)
                .cloned()
                .map_or_else(not_found, |s| (200, s)),
            "GET" if path.contains("/configmaps/") => self
                .config_maps
                .lock()
                .unwrap()
                .get(&last)
                .cloned()
                .map_or_else(not_found, |c| (200, c)),
            "PUT" if path.contains("/secrets/") => {
                self.secrets.lock().unwrap().insert(last, body.clone());
                (200, body.clone())
            }
            "PATCH" if path.contains("/configmaps/") => {
                self.config_maps.lock().unwrap().insert(last, body.clone());
                (200, body.clone())
            }
            "PATCH" if path.ends_with("/status") => {
                let mut o = self.object.lock().unwrap().clone();
                o["status"] = body["status"].clone();
                (200, o)
            }
            "PATCH" => (200, self.object.lock().unwrap().clone()),
            "POST" if path.contains("/events") => (201, body.clone()),
            _ => not_found(),
        }
    }

    fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let path = request.uri().path().to_owned();
                let query = request.uri().query().unwrap_or_default().to_owned();
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let (status, answer) = api.answer(&method, &path, &body);
                api.seen.lock().unwrap().push(Seen {
                    method,
                    path,
                    query,
                    body,
                });
                send.send_response(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                        .unwrap(),
                );
            }
        });
        Client::new(service, "default")
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn secret(name: &str, key: &str, value: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "data": {key: base64::engine::general_purpose::STANDARD.encode(value)},
    })
}

/// An IncomingEmailServer on the test Dovecot, with our finalizer already on.
fn object(stack: &Stack, user: &User, uid: &str) -> IncomingEmailServer {
    let (spec, _) = support::incoming_spec(stack, user, IncomingProtocol::Imap, SecurityType::Ssl);
    serde_json::from_value(json!({
        "apiVersion": "mailroom.dev/v1alpha1", "kind": "IncomingEmailServer",
        "metadata": {"name": "support", "namespace": NS, "uid": uid, "generation": 3, "finalizers": [FINALIZER]},
        "spec": spec,
    }))
    .unwrap()
}

struct Harness {
    api: FakeApi,
    ctx: Arc<Context>,
    /// Status-only writes the runtimes ask for.
    triggers: mpsc::UnboundedReceiver<StatusWork>,
    incoming_writer: reflector::store::Writer<IncomingEmailServer>,
    _tickets: tempfile::TempDir,
}

fn harness(
    stack: &Stack,
    password: &str,
    obj: &impl serde::Serialize,
    outgoing: &[OutgoingEmailServer],
) -> Harness {
    harness_with_sink(stack, password, obj, outgoing, true)
}

/// As `harness`, with `incoming` in the IncomingEmailServer watch cache.
fn harness_with_cache(
    stack: &Stack,
    password: &str,
    obj: &IncomingEmailServer,
    incoming: &[IncomingEmailServer],
) -> Harness {
    let mut h = harness_with_sink(stack, password, obj, &[], true);
    for i in incoming {
        h.incoming_writer
            .apply_watcher_event(&kube::runtime::watcher::Event::Apply(i.clone()));
    }
    h
}

/// As `harness`; without `default_sink` the operator has no sink of its own.
fn harness_with_sink(
    stack: &Stack,
    password: &str,
    obj: &impl serde::Serialize,
    outgoing: &[OutgoingEmailServer],
    default_sink: bool,
) -> Harness {
    let api = FakeApi::default();
    api.secrets
        .lock()
        .unwrap()
        .insert("mail".into(), secret("mail", "password", password));
    api.secrets
        .lock()
        .unwrap()
        .insert("ca".into(), secret("ca", "ca.crt", stack.ca_pem()));
    *api.object.lock().unwrap() = serde_json::to_value(obj).unwrap();
    let client = api.client();
    let (incoming_store, incoming_writer) = reflector::store();
    let (outgoing_store, mut writer) = reflector::store();
    for o in outgoing {
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(o.clone()));
    }
    let (incoming_trigger, _) = mpsc::unbounded_channel();
    let (status_trigger, triggers) = mpsc::unbounded_channel();
    let tickets = tempfile::tempdir().unwrap();
    let ctx = Arc::new(Context::new(ContextParts {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "mailroom".into(),
                instance: None,
            },
        ),
        outbox: Arc::new(mailroom_core::outgoing::Outbox::new()),
        incoming_store,
        outgoing_store,
        incoming_trigger,
        status_trigger,
        // Stores that never sync: every value is read from the API.
        references: References::new(client.clone(), reflector::store().0, reflector::store().0),
        timing: Timing::default(),
        reconciles: Default::default(),
        metrics: Default::default(),
        shard: Default::default(),
        lease: None,
        default_sink: default_sink.then(|| tickets.path().to_owned()),
        options: WorkerOptions {
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_millis(500),
            ..WorkerOptions::default()
        },
        writes: true,
    }));
    Harness {
        api,
        ctx,
        triggers,
        incoming_writer,
        _tickets: tickets,
    }
}

impl Harness {
    /// Waits for the runtime to ask for a status write (its health changed).
    async fn triggered(&mut self) {
        tokio::time::timeout(Duration::from_secs(20), self.triggers.recv())
            .await
            .expect("the runtime asked for a status write")
            .unwrap();
    }

    fn status_patches(&self) -> Vec<Value> {
        self.api
            .seen()
            .into_iter()
            .filter(|s| s.method == "PATCH" && s.path.ends_with("/status"))
            .map(|s| s.body)
            .collect()
    }
}

fn condition<'a>(status: &'a Value, t: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
}

#[tokio::test]
async fn success_reads_the_secret_writes_ready_by_apply_and_then_nothing() {
    let stack = Stack::shared();
    let user = stack.create_user("ctl-ok").unwrap();
    let mut obj = object(stack, &user, "uid-ok");
    let mut h = harness(stack, &user.password, &obj, &[]);

    reconcile_incoming(Arc::new(obj.clone()), h.ctx.clone())
        .await
        .unwrap();
    let first = h.api.take();
    let gets: Vec<&str> = first
        .iter()
        .filter(|s| s.method == "GET")
        .map(|s| s.path.as_str())
        .collect();
    assert_eq!(
        gets,
        [
            format!("/api/v1/namespaces/{NS}/secrets/ca"),
            format!("/api/v1/namespaces/{NS}/secrets/mail"),
        ],
        "the Secrets named by the spec, read in reconcile"
    );
    let patch = first
        .iter()
        .find(|s| s.path.ends_with("/status"))
        .expect("a status write");
    assert_eq!(
        patch.path,
        format!("/apis/mailroom.dev/v1alpha1/namespaces/{NS}/incomingemailservers/support/status")
    );
    assert!(
        patch.query.contains("fieldManager=mailroom") && patch.query.contains("force=true"),
        "{}",
        patch.query
    );
    assert_eq!(patch.body["kind"], "IncomingEmailServer");
    assert!(first.iter().any(|s| s.method == "POST"
        && s.path.contains("/events")
        && s.body["reason"] == "WorkerStarted"));

    // The worker connects, then enters IDLE; each asks for a reconcile.
    h.triggered().await;
    h.triggered().await;
    obj.status = serde_json::from_value(patch.body["status"].clone()).unwrap();
    reconcile_incoming(Arc::new(obj.clone()), h.ctx.clone())
        .await
        .unwrap();
    let patches = h.status_patches();
    let status = &patches.last().unwrap()["status"];
    let ready = condition(status, "Ready").unwrap();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("True"), Some("Connected")),
        "{status:#}"
    );
    assert_eq!(ready["observedGeneration"], 3);
    assert_eq!(
        condition(status, "ConnectionVerified").unwrap()["status"],
        "True"
    );
    assert!(condition(status, "Stalled").is_none() && condition(status, "Reconciling").is_none());
    assert_eq!(status["connection"]["stageReached"], "Done");
    assert_eq!(status["observedGeneration"], 3);
    // The same function standalone mode uses computed it.
    {
        let engine = h.ctx.engine.lock().await;
        let r = engine.incoming(&ResourceId::new(NS, "support")).unwrap();
        let now = jiff::Timestamp::now();
        let again = r.status(Some(3), &[], now, now);
        let types = |c: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
            c.iter()
                .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
                .collect::<Vec<_>>()
        };
        let written: mailroom::api::IncomingEmailServerStatus =
            serde_json::from_value(status.clone()).unwrap();
        assert_eq!(types(&again.conditions), types(&written.conditions));
    }
    assert!(
        h.api
            .seen()
            .iter()
            .any(|s| s.body["reason"] == "ConnectionVerified"),
        "an event for the verified connection"
    );

    // Status as written: another reconcile writes nothing and restarts nothing.
    obj.status = serde_json::from_value(status.clone()).unwrap();
    h.api.take();
    reconcile_incoming(Arc::new(obj.clone()), h.ctx.clone())
        .await
        .unwrap();
    // The running worker may save its cursor meanwhile: that write is not the reconcile's.
    let third: Vec<_> = h
        .api
        .take()
        .into_iter()
        .filter(|s| !s.path.contains("/configmaps/mailroom-cursor-"))
        .collect();
    assert!(!third.is_empty());
    assert!(
        third.iter().all(|s| s.method == "GET"),
        "no write: {third:?}"
    );

    let metrics = mailroom::controller::http::render(std::slice::from_ref(&h.ctx)).await;
    assert!(
        metrics.contains(&format!(
            "mailroom_ready{{kind=\"IncomingEmailServer\",namespace=\"{NS}\",name=\"support\"}} 1"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE mailroom_messages_fetched counter"));
    assert!(metrics.contains(&format!(
        "mailroom_messages_fetched_total{{namespace=\"{NS}\",name=\"support\"}}"
    )));

    // The cursor lives in a ConfigMap owned by the resource; the worker saves
    // it at the end of its first pass, which may come after IDLE was announced.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let cm = loop {
        let found = h
            .api
            .config_maps
            .lock()
            .unwrap()
            .get("mailroom-cursor-support")
            .cloned();
        if let Some(cm) = found {
            break cm;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cursor was never saved"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(cm["metadata"]["ownerReferences"][0]["uid"], "uid-ok");
    assert!(
        cm["data"]["cursor.json"]
            .as_str()
            .unwrap()
            .contains("uidValidity")
    );

    // Deletion: the worker stops, then the finalizer goes.
    obj.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::now(),
    ));
    reconcile_incoming(Arc::new(obj), h.ctx.clone())
        .await
        .unwrap();
    let last = h.api.take();
    let fin = last
        .iter()
        .find(|s| {
            s.method == "PATCH"
                && s.path
                    == format!(
                        "/apis/mailroom.dev/v1alpha1/namespaces/{NS}/incomingemailservers/support"
                    )
        })
        .expect("finalizer removed");
    assert!(fin.body.to_string().contains("remove"), "{}", fin.body);
    assert!(
        h.ctx.engine.lock().await.incoming_ids().is_empty(),
        "the worker is gone"
    );
}

#[tokio::test]
async fn a_new_object_gets_the_finalizer_before_anything_else() {
    let stack = Stack::shared();
    let user = stack.create_user("ctl-fin").unwrap();
    let mut obj = object(stack, &user, "uid-fin");
    obj.metadata.finalizers = None;
    let h = harness(stack, &user.password, &obj, &[]);
    reconcile_incoming(Arc::new(obj), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.api.take();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "PATCH");
    assert!(
        seen[0].body.to_string().contains(FINALIZER),
        "{}",
        seen[0].body
    );
    assert!(
        h.ctx.engine.lock().await.incoming_ids().is_empty(),
        "no worker before the finalizer is on"
    );
}

#[tokio::test]
async fn a_wrong_password_is_stalled_and_a_missing_secret_is_secret_not_found() {
    let stack = Stack::shared();
    let user = stack.create_user("ctl-bad").unwrap();
    let mut obj = object(stack, &user, "uid-bad");
    let mut h = harness(stack, "wrongwrongwrongw", &obj, &[]);
    reconcile_incoming(Arc::new(obj.clone()), h.ctx.clone())
        .await
        .unwrap();
    h.triggered().await;
    obj.status =
        serde_json::from_value(h.status_patches().last().unwrap()["status"].clone()).unwrap();
    reconcile_incoming(Arc::new(obj.clone()), h.ctx.clone())
        .await
        .unwrap();
    let status = h.status_patches().last().unwrap()["status"].clone();
    let verified = condition(&status, "ConnectionVerified").unwrap();
    assert_eq!(verified["reason"], "AuthenticationFailed", "{status:#}");
    assert_eq!(condition(&status, "Stalled").unwrap()["status"], "True");
    assert!(!status.to_string().contains("wrongwrongwrongw"));
    assert!(h.api.seen().iter().any(|s| s.path.contains("/events")
        && s.body["type"] == "Warning"
        && s.body["reason"] == "AuthenticationFailed"));
    h.ctx.stop_all().await;

    let other = stack.create_user("ctl-missing").unwrap();
    let obj = object(stack, &other, "uid-missing");
    let h = harness(stack, &other.password, &obj, &[]);
    h.api.secrets.lock().unwrap().remove("mail");
    reconcile_incoming(Arc::new(obj), h.ctx.clone())
        .await
        .unwrap();
    let status = h.status_patches().last().unwrap()["status"].clone();
    assert_eq!(
        condition(&status, "ConnectionVerified").unwrap()["reason"],
        "SecretNotFound",
        "{status:#}"
    );
    assert_eq!(condition(&status, "Ready").unwrap()["status"], "False");
    assert_eq!(condition(&status, "Stalled").unwrap()["status"], "True");
    assert!(
        condition(&status, "ConnectionVerified").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("mail")
    );
}

#[tokio::test]
async fn a_health_change_is_a_status_only_write_that_reads_no_secret() {
    let stack = Stack::shared();
    let user = stack.create_user("ctl-status-only").unwrap();
    let obj = object(stack, &user, "uid-status-only");
    let mut h = harness_with_cache(stack, &user.password, &obj, std::slice::from_ref(&obj));
    reconcile_incoming(Arc::new(obj), h.ctx.clone())
        .await
        .unwrap();
    let first = h.api.take();
    assert!(
        first.iter().any(|s| s.path.contains("/secrets/")),
        "reconcile reads its Secrets"
    );
    let (_, idle) = mpsc::unbounded_channel();
    let work = std::mem::replace(&mut h.triggers, idle);
    let follower = tokio::spawn(mailroom::controller::status::follow(h.ctx.clone(), work));
    // The worker connects: its health changes, and the status says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let ready = loop {
        if let Some(status) = h.status_patches().last().map(|p| p["status"].clone())
            && condition(&status, "Ready").is_some_and(|c| c["status"] == "True")
        {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no status-only write: {:?}",
            h.api.seen().iter().map(|s| &s.path).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready["connection"]["stageReached"], "Done");
    // (The worker itself reads its cursor ConfigMap; that is not the write's.)
    let after = h.api.seen();
    assert!(
        after
            .iter()
            .all(|s| !(s.method == "GET" && s.path.contains("/secrets/"))),
        "the status-only write read no Secret: {:?}",
        after
            .iter()
            .map(|s| (&s.method, &s.path))
            .collect::<Vec<_>>()
    );
    follower.abort();
    h.ctx.stop_all().await;
}

#[tokio::test]
async fn no_sink_and_an_invalid_spec_are_stalled_and_fetch_nothing() {
    let stack = Stack::shared();
    let user = stack.create_user("ctl-nosink").unwrap();
    let obj = object(stack, &user, "uid-nosink");
    let h = harness_with_sink(stack, &user.password, &obj, &[], false);
    reconcile_incoming(Arc::new(obj), h.ctx.clone())
        .await
        .unwrap();
    let status = h.status_patches().last().unwrap()["status"].clone();
    let ready = condition(&status, "Ready").unwrap();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("NoSink")),
        "{status:#}"
    );
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("spec.ticket.sink")
    );
    assert_eq!(condition(&status, "Stalled").unwrap()["status"], "True");
    assert!(condition(&status, "Reconciling").is_none());
    assert!(
        status.get("connection").is_none(),
        "no connection was made: {status:#}"
    );
    h.ctx.stop_all().await;

    let mut obj = object(stack, &user, "uid-invalid");
    obj.spec.ticket.reference_pattern = Some("[#(\\d+".into());
    let h = harness(stack, &user.password, &obj, &[]);
    reconcile_incoming(Arc::new(obj), h.ctx.clone())
        .await
        .unwrap();
    let status = h.status_patches().last().unwrap()["status"].clone();
    let ready = condition(&status, "Ready").unwrap();
    assert_eq!(ready["reason"], "InvalidConfig", "{status:#}");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.ticket.referencePattern:"),
        "{status:#}"
    );
    assert_eq!(condition(&status, "Stalled").unwrap()["status"], "True");
    assert!(h.api.seen().iter().any(|s| s.path.contains("/events")
        && s.body["type"] == "Warning"
        && s.body["reason"] == "InvalidConfig"));
    h.ctx.stop_all().await;
}

#[test]
fn status_writes_do_not_pass_the_watch_filter_but_spec_annotation_and_deletion_do() {
    let base: IncomingEmailServer = serde_json::from_value(json!({
        "apiVersion": "mailroom.dev/v1alpha1", "kind": "IncomingEmailServer",
        "metadata": {"name": "s", "namespace": NS, "generation": 1, "resourceVersion": "10"},
        "spec": {"email": "a@example.com", "provider": "Gmail", "auth": {"passwordSecretRef": {"name": "p", "key": "k"}}},
    }))
    .unwrap();
    let h = trigger_hash(&base);
    let mut status_only = base.clone();
    status_only.metadata.resource_version = Some("11".into());
    status_only.status = Some(Default::default());
    assert_eq!(
        trigger_hash(&status_only),
        h,
        "a status write is filtered out"
    );
    let mut spec = base.clone();
    spec.metadata.generation = Some(2);
    assert_ne!(trigger_hash(&spec), h);
    let mut retest = base.clone();
    retest.metadata.annotations = Some([(TEST_ANNOTATION.to_owned(), "1".to_owned())].into());
    assert_ne!(trigger_hash(&retest), h);
    let mut fin = base.clone();
    fin.metadata.finalizers = Some(vec![FINALIZER.into()]);
    assert_ne!(trigger_hash(&fin), h);
    let mut deleting = base;
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
    );
    assert_ne!(trigger_hash(&deleting), h);
}

#[test]
fn the_reference_mapper_finds_the_servers_that_name_the_secret_or_config_map() {
    let server = |ns: &str, name: &str, secret: &str, ca: &str| -> Arc<IncomingEmailServer> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "mailroom.dev/v1alpha1", "kind": "IncomingEmailServer",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "email": "a@example.com", "provider": "Gmail",
                    "auth": {"passwordSecretRef": {"name": secret, "key": "k"}},
                    "tls": {"caConfigMapRef": {"name": ca, "key": "ca.crt"}},
                },
            }))
            .unwrap(),
        )
    };
    let servers = [
        server(NS, "a", "shared", "ca"),
        server(NS, "b", "other", "shared"),
        server(NS, "c", "shared", "ca"),
        server("elsewhere", "d", "shared", "shared"),
    ];
    let found = |kind: Kind| -> Vec<String> {
        servers_referencing(&servers, (kind, NS, "shared"), |s: &IncomingEmailServer| {
            Names::incoming(&s.spec)
        })
        .into_iter()
        .map(|r| r.name)
        .collect()
    };
    assert_eq!(
        found(Kind::Secret),
        ["a", "c"],
        "same namespace only, and only those that name a Secret so called"
    );
    assert_eq!(
        found(Kind::ConfigMap),
        ["b"],
        "a ConfigMap of the same name is another object"
    );
}

fn outgoing_object(stack: &Stack, user: &User, name: &str, uid: &str) -> OutgoingEmailServer {
    serde_json::from_value(json!({
        "apiVersion": "mailroom.dev/v1alpha1", "kind": "OutgoingEmailServer",
        "metadata": {"name": name, "namespace": NS, "uid": uid, "generation": 1, "finalizers": [FINALIZER]},
        "spec": {
            "email": user.address, "provider": "Other", "server": "127.0.0.1",
            "port": stack.ports().submission, "securityType": "TLS", "primary": true,
            "authentication": {"passwordSecretRef": {"name": "mail", "key": "password"}},
            "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}},
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn an_outgoing_server_is_tested_against_postfix_and_two_primaries_conflict() {
    let stack = Stack::shared();
    let user = stack.create_user("ctl-out").unwrap();
    let mut obj = outgoing_object(stack, &user, "helpdesk", "uid-out");
    let other = outgoing_object(stack, &user, "backup", "uid-backup");
    let h = harness(stack, &user.password, &obj, &[obj.clone(), other]);
    reconcile_outgoing(Arc::new(obj.clone()), h.ctx.clone())
        .await
        .unwrap();
    // Wait for the SMTP test (DNS, TCP, STARTTLS, EHLO, AUTH) to finish.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let done = {
            let engine = h.ctx.engine.lock().await;
            engine
                .outgoing(&ResourceId::new(NS, "helpdesk"))
                .is_some_and(|r| r.shared.lock().report.is_some())
        };
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the SMTP test never finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    obj.status =
        serde_json::from_value(h.status_patches().last().unwrap()["status"].clone()).unwrap();
    reconcile_outgoing(Arc::new(obj), h.ctx.clone())
        .await
        .unwrap();
    let status = h.status_patches().last().unwrap()["status"].clone();
    assert_eq!(
        condition(&status, "Ready").unwrap()["status"],
        "True",
        "{status:#}"
    );
    assert!(
        status["connection"]["capabilities"]
            .to_string()
            .contains("AUTH=PLAIN")
    );
    let conflict = condition(&status, "PrimaryConflict").expect("two primaries are reported");
    assert!(
        conflict["message"].as_str().unwrap().contains("backup"),
        "{conflict}"
    );
    assert!(
        h.ctx
            .engine
            .lock()
            .await
            .outbox()
            .get(NS, "helpdesk")
            .is_some(),
        "registered for sending"
    );
}

#[tokio::test]
async fn startup_names_missing_crds_and_missing_rbac() {
    for (code, expect) in [(404, "kubectl apply -f crds/"), (403, "RBAC")] {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(async move {
            while let Some((_, send)) = handle.next_request().await {
                let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "no", "reason": "x", "code": code});
                send.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                );
            }
        });
        let client = Client::new(service, "default");
        let err = mailroom::controller::run::check_startup(&client, None)
            .await
            .unwrap_err();
        assert!(
            err.contains(expect) && err.contains("IncomingEmailServer"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn service_account_tokens_are_reviewed_for_our_audience_and_kept_to_their_namespace() {
    use mailroom::controller::review::ServiceAccounts;
    use mailroom::submission::{Authenticator, Denied, SubmissionTokens};
    use testbed::kube::{KubeApi, KubeOptions, User};
    let api = KubeApi::start(KubeOptions::default()).unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(&api.kubeconfig(api.admin_token(), NS)).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let ours = api.add_user(User::service_account(NS, "app", &["mailroom"]));
    let elsewhere = api.add_user(User::service_account(NS, "app", &["https://vault.example"]));
    let auth = ServiceAccounts::new(
        Some(SubmissionTokens::parse("file-token hr\n").unwrap()),
        client,
        "mailroom",
    );
    let reviews = || {
        api.requests()
            .iter()
            .filter(|r| r.resource == "tokenreviews.authentication.k8s.io")
            .count()
    };
    assert_eq!(auth.check(Some(&ours), NS).await, Ok(()));
    assert_eq!(
        auth.check(Some(&ours), "hr").await,
        Err(Denied::Forbidden),
        "another namespace"
    );
    assert_eq!(
        auth.check(Some(&elsewhere), NS).await,
        Err(Denied::Unauthenticated),
        "a token issued for another audience"
    );
    assert_eq!(
        auth.check(Some("forged"), NS).await,
        Err(Denied::Unauthenticated)
    );
    assert_eq!(auth.check(None, NS).await, Err(Denied::Unauthenticated));
    // Answers are reused for a while: three tokens, three reviews.
    assert_eq!(reviews(), 3);
    assert_eq!(auth.check(Some(&ours), NS).await, Ok(()));
    assert_eq!(reviews(), 3);
    // A file token decides without asking the API server.
    assert_eq!(auth.check(Some("file-token"), "hr").await, Ok(()));
    assert_eq!(
        auth.check(Some("file-token"), NS).await,
        Err(Denied::Forbidden)
    );
    assert_eq!(reviews(), 3);
}

#[tokio::test]
async fn a_rotated_refresh_token_goes_back_into_the_secret_and_restarts_nothing() {
    let stack = Stack::shared();
    let user = stack.create_user("ctl-oauth").unwrap();
    let oauth = stack.oauth();
    let client = oauth.register_client(testbed::oauth::ClientOptions {
        rotate: true,
        ..Default::default()
    });
    let first = oauth.grant(&client.0, &user.address);
    let mut obj = object(stack, &user, "uid-oauth");
    obj.spec.auth = serde_json::from_value(json!({
        "type": "OAuth2",
        "oauth2": {"secretRef": {"name": "oauth"}, "tokenUrl": oauth.token_url()},
    }))
    .unwrap();
    let mut h = harness(stack, "unused", &obj, &[]);
    let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    h.api.secrets.lock().unwrap().insert(
        "oauth".into(),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "oauth", "namespace": NS, "resourceVersion": "7"},
            "data": {
                "client_id": b64(&client.0),
                "client_secret": b64(&client.1),
                "refresh_token": b64(&first),
            },
        }),
    );

    reconcile_incoming(Arc::new(obj.clone()), h.ctx.clone())
        .await
        .unwrap();
    h.triggered().await;
    let put = h
        .api
        .seen()
        .into_iter()
        .find(|s| s.method == "PUT")
        .expect("the Secret was updated");
    assert_eq!(put.path, format!("/api/v1/namespaces/{NS}/secrets/oauth"));
    assert!(put.query.contains("fieldManager=mailroom"), "{}", put.query);
    assert_eq!(
        put.body["metadata"]["resourceVersion"], "7",
        "optimistic concurrency"
    );
    let written = put.body["data"]["refresh_token"].as_str().unwrap();
    let written = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(written)
            .unwrap(),
    )
    .unwrap();
    assert!(written != first && oauth.is_valid(&written) && !oauth.is_valid(&first));
    assert_eq!(
        put.body["data"]["client_id"],
        b64(&client.0),
        "other keys kept"
    );

    // The next reconcile reads the Secret with the new token: no restart.
    h.api.take();
    reconcile_incoming(Arc::new(obj.clone()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.api.take();
    assert!(
        !seen.iter().any(|s| s.body["reason"] == "WorkerStarted"),
        "{seen:?}"
    );
    assert_eq!(oauth.stats(&client.0).refreshes, 1);

    let patch = seen
        .iter()
        .rfind(|s| s.method == "PATCH" && s.path.ends_with("/status"))
        .expect("the connected status is written");
    let status = &patch.body["status"];
    assert!(
        status["oauth2"]["accessTokenExpiry"].is_string()
            && status["oauth2"]["lastRotationTime"].is_string(),
        "{status:#}"
    );
    let metrics = mailroom::controller::http::render(std::slice::from_ref(&h.ctx)).await;
    let labels = format!("{{kind=\"IncomingEmailServer\",namespace=\"{NS}\",name=\"support\"}}");
    for family in [
        "mailroom_oauth2_access_token_expiry_timestamp_seconds",
        "mailroom_oauth2_last_refresh_timestamp_seconds",
    ] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("{family}{labels}")))
            .unwrap_or_else(|| panic!("no {family} in {metrics}"));
        let value: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(
            (value - jiff::Timestamp::now().as_second()).abs() < 3700,
            "{line}"
        );
    }

    // An admin's new token in the Secret is news: the worker restarts with it.
    let reconsented = oauth.grant(&client.0, &user.address);
    h.api.secrets.lock().unwrap().get_mut("oauth").unwrap()["data"]["refresh_token"] =
        b64(&reconsented).into();
    obj.metadata.uid = Some("uid-oauth".into());
    reconcile_incoming(Arc::new(obj.clone()), h.ctx.clone())
        .await
        .unwrap();
    assert!(
        h.api
            .take()
            .iter()
            .any(|s| s.body["reason"] == "WorkerStarted"),
        "a new token restarts the worker"
    );
}

#[tokio::test]
async fn a_write_back_never_overwrites_a_token_changed_meanwhile() {
    use mailroom_core::oauth2::WriteBack;
    use secrecy::SecretString;
    let api = FakeApi::default();
    api.secrets.lock().unwrap().insert(
        "oauth".into(),
        secret("oauth", "refresh_token", "set-by-admin"),
    );
    let writer = mailroom::controller::writeback::SecretUpdate {
        client: api.client(),
    };
    let token = |v: &str| SecretString::from(v.to_owned());
    let e = writer
        .write(
            NS,
            "oauth",
            "refresh_token",
            &token("ours-old"),
            &token("ours-new"),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no longer holds"), "{e}");
    assert!(!e.to_string().contains("ours") && !e.to_string().contains("set-by-admin"));
    assert!(api.seen().iter().all(|s| s.method == "GET"), "no write");
}
