//! The test bed's Kubernetes API double, through kube-rs as the controller uses
//! it: versions and generations, the status subresource, conflicts,
//! server-side apply with managed fields, list and watch (selectors, bookmarks,
//! 410 Gone), finalizers, namespaces, RBAC, TokenReview, faults, and state
//! that survives a restart.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Client, Config};
use serde_json::{Value, json};
use testbed::kube::{KubeApi, KubeOptions, User};

const NS: &str = "helpdesk";

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn start(options: KubeOptions) -> KubeApi {
    KubeApi::start(KubeOptions {
        crds: testbed::kube::read_documents(&root().join("crds")).unwrap(),
        ..options
    })
    .unwrap()
}

async fn client(api: &KubeApi, token: &str) -> Client {
    client_with(api, token, true).await
}

/// `retry`: kube-rs's default layer that retries 429 and 503 after Retry-After.
async fn client_with(api: &KubeApi, token: &str, retry: bool) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&api.kubeconfig(token, NS)).unwrap();
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.default_retry = retry;
    Client::try_from(config).unwrap()
}

/// An admin client, with the `helpdesk` namespace created.
async fn admin(api: &KubeApi) -> Client {
    let c = client(api, api.admin_token()).await;
    let namespaces: Api<Namespace> = Api::all(c.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    c
}

fn servers(c: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("mailroom.dev", "v1alpha1", "IncomingEmailServer");
    Api::namespaced_with(c.clone(), NS, &ApiResource::from_gvk(&gvk))
}

fn server(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "mailroom.dev/v1alpha1",
        "kind": "IncomingEmailServer",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "email": "support@example.com",
            "provider": "Gmail",
            "auth": {"passwordSecretRef": {"name": "gmail", "key": "password"}},
        },
    }))
    .unwrap()
}

fn code(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("not an API error: {other}"),
    }
}

fn rv(o: &DynamicObject) -> u64 {
    o.metadata
        .resource_version
        .as_ref()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn objects_get_versions_uids_generations_defaults_and_a_separate_status() {
    let api = start(KubeOptions::default());
    let c = admin(&api).await;
    let servers = servers(&c);
    let created = servers
        .create(&PostParams::default(), &server("support"))
        .await
        .unwrap();
    assert!(created.metadata.uid.as_ref().is_some_and(|u| u.len() == 36));
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    // The CRD's schema defaults are applied on admission.
    assert_eq!(created.data["spec"]["mailbox"], "INBOX");

    // A label: new version, same generation.
    let mut labelled = created.clone();
    labelled
        .metadata
        .labels
        .get_or_insert_default()
        .insert("team".into(), "blue".into());
    let labelled = servers
        .replace("support", &PostParams::default(), &labelled)
        .await
        .unwrap();
    assert!(rv(&labelled) > rv(&created));
    assert_eq!(labelled.metadata.generation, Some(1));

    // A spec change with a status in the body: generation counts it, status is ignored.
    let mut changed = labelled.clone();
    changed.data["spec"]["mailbox"] = json!("Support");
    changed.data["status"] = json!({"conditions": []});
    let changed = servers
        .replace("support", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_eq!(changed.metadata.generation, Some(2));
    assert!(changed.data.get("status").is_none());

    // Through /status: the status is written, a spec change in the body is not.
    let mut status = changed.clone();
    status.data["spec"]["mailbox"] = json!("Elsewhere");
    status.data["status"] = json!({"observedGeneration": 2});
    let written = servers
        .replace_status("support", &PostParams::default(), &status)
        .await
        .unwrap();
    assert_eq!(written.data["status"]["observedGeneration"], 2);
    assert_eq!(written.data["spec"]["mailbox"], "Support");
    assert_eq!(written.metadata.generation, Some(2));
}

#[tokio::test]
async fn stale_writes_conflict_duplicates_already_exist_and_admission_names_the_field() {
    let api = start(KubeOptions::default());
    let c = admin(&api).await;
    let servers = servers(&c);
    let first = servers
        .create(&PostParams::default(), &server("support"))
        .await
        .unwrap();
    let (status, reason, _) = code(
        servers
            .create(&PostParams::default(), &server("support"))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, reason.as_str()), (409, "AlreadyExists"));

    let mut newer = first.clone();
    newer.data["spec"]["mailbox"] = json!("A");
    servers
        .replace("support", &PostParams::default(), &newer)
        .await
        .unwrap();
    let mut stale = first.clone();
    stale.data["spec"]["mailbox"] = json!("B");
    let (status, reason, message) = code(
        servers
            .replace("support", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((status, reason.as_str()), (409, "Conflict"), "{message}");

    let mut bad = server("bad");
    bad.data["spec"]["email"] = json!("not-an-address");
    let (status, reason, message) = code(
        servers
            .create(&PostParams::default(), &bad)
            .await
            .unwrap_err(),
    );
    assert_eq!((status, reason.as_str()), (422, "Invalid"));
    assert!(message.contains("spec.email"), "{message}");
}

fn conditions(o: &DynamicObject) -> Vec<(String, String)> {
    o.data["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["type"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn condition(type_: &str, status: &str) -> Value {
    json!({"type": type_, "status": status, "reason": "Test", "message": "m",
           "lastTransitionTime": "2026-11-30T10:00:00Z"})
}

#[tokio::test]
async fn server_side_apply_owns_fields_per_manager_merges_conditions_and_removes_dropped_ones() {
    let api = start(KubeOptions::default());
    let c = admin(&api).await;
    let maps: Api<ConfigMap> = Api::namespaced(c.clone(), NS);
    let map = |data: Value| {
        Patch::Apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "s", "namespace": NS},
            "data": data,
        }))
    };
    maps.patch(
        "s",
        &PatchParams::apply("a"),
        &map(json!({"x": "1", "y": "2"})),
    )
    .await
    .unwrap();
    // The same value: shared ownership, no conflict.
    maps.patch("s", &PatchParams::apply("b"), &map(json!({"x": "1"})))
        .await
        .unwrap();
    // Another value of a field someone else owns: 409 naming it, unless forced.
    let (status, reason, message) = code(
        maps.patch("s", &PatchParams::apply("c"), &map(json!({"y": "3"})))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, reason.as_str()), (409, "Conflict"));
    assert!(
        message.contains("conflict with \"a\"") && message.contains(".data.y"),
        "{message}"
    );
    maps.patch(
        "s",
        &PatchParams::apply("c").force(),
        &map(json!({"y": "3"})),
    )
    .await
    .unwrap();

    // "a" stops applying x and y: y (now c's) and x (still b's) stay.
    maps.patch("s", &PatchParams::apply("a"), &map(json!({"z": "4"})))
        .await
        .unwrap();
    let data = maps.get("s").await.unwrap().data.unwrap();
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(keys, ["x", "y", "z"]);
    assert_eq!(data["y"], "3");
    // "b" stops applying x, its last owner: x goes.
    maps.patch("s", &PatchParams::apply("b"), &map(json!({})))
        .await
        .unwrap();
    let data = maps.get("s").await.unwrap().data.unwrap();
    assert!(!data.contains_key("x"), "{data:?}");

    // Conditions are a list keyed by type: each manager keeps its own.
    let servers = servers(&c);
    servers
        .create(&PostParams::default(), &server("support"))
        .await
        .unwrap();
    let status = |conds: Vec<Value>| {
        Patch::Apply(json!({
            "apiVersion": "mailroom.dev/v1alpha1", "kind": "IncomingEmailServer",
            "metadata": {"name": "support"},
            "status": {"conditions": conds},
        }))
    };
    servers
        .patch_status(
            "support",
            &PatchParams::apply("mailroom").force(),
            &status(vec![condition("Ready", "False")]),
        )
        .await
        .unwrap();
    servers
        .patch_status(
            "support",
            &PatchParams::apply("audit"),
            &status(vec![condition("Audited", "True")]),
        )
        .await
        .unwrap();
    let after = servers
        .patch_status(
            "support",
            &PatchParams::apply("mailroom").force(),
            &status(vec![
                condition("Ready", "True"),
                condition("Connected", "True"),
            ]),
        )
        .await
        .unwrap();
    let mut got = conditions(&after);
    got.sort();
    assert_eq!(
        got,
        [
            ("Audited".to_owned(), "True".to_owned()),
            ("Connected".to_owned(), "True".to_owned()),
            ("Ready".to_owned(), "True".to_owned())
        ]
    );
    // mailroom drops Connected: it goes; audit's condition stays.
    let after = servers
        .patch_status(
            "support",
            &PatchParams::apply("mailroom").force(),
            &status(vec![condition("Ready", "True")]),
        )
        .await
        .unwrap();
    let mut got = conditions(&after);
    got.sort();
    assert_eq!(
        got,
        [
            ("Audited".to_owned(), "True".to_owned()),
            ("Ready".to_owned(), "True".to_owned())
        ]
    );
    let managers: Vec<(String, Option<String>)> = after
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .map(|m| (m.manager.unwrap(), m.subresource))
        .collect();
    assert!(
        managers.contains(&("audit".into(), Some("status".into()))),
        "{managers:?}"
    );
}

#[tokio::test]
async fn patches_merge_as_kubectl_and_kube_send_them() {
    let api = start(KubeOptions::default());
    let c = admin(&api).await;
    let maps: Api<ConfigMap> = Api::namespaced(c.clone(), NS);
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "m"}, "data": {"a": "1", "b": "2"}
    }))
    .unwrap();
    maps.create(&PostParams::default(), &cm).await.unwrap();
    let patched = maps
        .patch(
            "m",
            &PatchParams::default(),
            &Patch::Strategic(json!({"data": {"b": null, "c": "3"}})),
        )
        .await
        .unwrap();
    let keys: Vec<String> = patched.data.unwrap().into_keys().collect();
    assert_eq!(keys, ["a", "c"]);
    // JSON patch: `test` guards the replace, as an optimistic client writes it.
    let replace_if_one = |value: &str| {
        Patch::<()>::Json(
            serde_json::from_value(json!([
                {"op": "test", "path": "/data/a", "value": "1"},
                {"op": "replace", "path": "/data/a", "value": value}
            ]))
            .unwrap(),
        )
    };
    let patched = maps
        .patch("m", &PatchParams::default(), &replace_if_one("9"))
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["a"], "9");
    let failed = maps
        .patch("m", &PatchParams::default(), &replace_if_one("0"))
        .await
        .unwrap_err();
    assert_eq!(code(failed).0, 422);

    // A custom resource takes merge patches, not strategic ones.
    let servers = servers(&c);
    servers
        .create(&PostParams::default(), &server("support"))
        .await
        .unwrap();
    let merged = servers
        .patch(
            "support",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mailbox": "Other"}})),
        )
        .await
        .unwrap();
    assert_eq!(merged.data["spec"]["mailbox"], "Other");
    let (status, _, _) = code(
        servers
            .patch(
                "support",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"mailbox": "X"}})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 415);
}

#[tokio::test]
async fn list_and_watch_follow_versions_selectors_bookmarks_and_expire_with_410() {
    let api = start(KubeOptions {
        bookmark_every: Duration::from_millis(200),
        ..KubeOptions::default()
    });
    let c = admin(&api).await;
    let maps: Api<ConfigMap> = Api::namespaced(c.clone(), NS);
    for (name, app) in [("one", "x"), ("two", "x"), ("three", "y")] {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": app}}
        }))
        .unwrap();
        maps.create(&PostParams::default(), &cm).await.unwrap();
    }
    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items
            .into_iter()
            .map(|o| o.metadata.name.unwrap())
            .collect()
    };
    let list = maps
        .list(&ListParams::default().labels("app=x"))
        .await
        .unwrap();
    let from = list.metadata.resource_version.clone().unwrap();
    assert_eq!(names(list), ["one", "two"]);
    let list = maps
        .list(&ListParams::default().fields("metadata.name=three"))
        .await
        .unwrap();
    assert_eq!(names(list), ["three"]);
    let list = maps
        .list(&ListParams::default().labels("app in (x,y),app!=x"))
        .await
        .unwrap();
    assert_eq!(names(list), ["three"]);
    let page = maps.list(&ListParams::default().limit(2)).await.unwrap();
    let token = page.metadata.continue_.clone().unwrap();
    assert_eq!(page.items.len(), 2);
    let rest = maps
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(rest), ["two"]);
    let (status, _, message) = code(
        maps.list(&ListParams::default().fields("data.a=1"))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 400, "{message}");

    // From the list's version: what changed since, as seen through the selector.
    let mut events = maps
        .watch(&WatchParams::default().labels("app=x"), &from)
        .await
        .unwrap()
        .boxed();
    let mut two = maps.get("two").await.unwrap();
    two.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("app".into(), "z".into());
    maps.replace("two", &PostParams::default(), &two)
        .await
        .unwrap();
    let four: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "four", "labels": {"app": "x"}}}))
            .unwrap();
    maps.create(&PostParams::default(), &four).await.unwrap();
    maps.delete("one", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    let mut bookmark = false;
    while seen.len() < 3 || !bookmark {
        let e = tokio::time::timeout(Duration::from_secs(5), events.try_next())
            .await
            .expect("watch went quiet")
            .unwrap()
            .unwrap();
        match e {
            WatchEvent::Added(o) => seen.push(format!("ADDED {}", o.metadata.name.unwrap())),
            WatchEvent::Modified(o) => seen.push(format!("MODIFIED {}", o.metadata.name.unwrap())),
            WatchEvent::Deleted(o) => seen.push(format!("DELETED {}", o.metadata.name.unwrap())),
            WatchEvent::Bookmark(_) => bookmark = true,
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    // "two" left the selection when relabelled: DELETED for this watch.
    assert_eq!(seen, ["DELETED two", "ADDED four", "DELETED one"]);

    // History compacted: a watch from before is answered 410 Gone.
    api.compact();
    let mut expired = maps
        .watch(&WatchParams::default(), &from)
        .await
        .unwrap()
        .boxed();
    match expired.try_next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!(e.code, 410, "{e:?}"),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}

#[tokio::test]
async fn finalizers_hold_deletion_and_objects_need_their_namespace() {
    let api = start(KubeOptions::default());
    let c = admin(&api).await;
    let maps: Api<ConfigMap> = Api::namespaced(c.clone(), NS);
    let held: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "held", "finalizers": ["mailroom.dev/cleanup"]}
    }))
    .unwrap();
    maps.create(&PostParams::default(), &held).await.unwrap();
    maps.delete("held", &DeleteParams::default()).await.unwrap();
    let deleting = maps.get("held").await.unwrap();
    assert!(deleting.metadata.deletion_timestamp.is_some());
    let (status, _, message) = code(
        maps.patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["mailroom.dev/cleanup", "other"]}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(status, 422, "{message}");
    maps.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(code(maps.get("held").await.unwrap_err()).0, 404);

    let elsewhere: Api<ConfigMap> = Api::namespaced(c.clone(), "nowhere");
    let (status, _, message) = code(
        elsewhere
            .create(&PostParams::default(), &held)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 404);
    assert_eq!(message, "namespaces \"nowhere\" not found");
}

#[tokio::test]
async fn rbac_follows_the_charts_rules_and_token_reviews_check_audiences() {
    let api = start(KubeOptions {
        rbac: testbed::kube::read_documents(&root().join("deploy/install.yaml")).unwrap(),
        ..KubeOptions::default()
    });
    let c = admin(&api).await;
    servers(&c)
        .create(&PostParams::default(), &server("support"))
        .await
        .unwrap();
    let token = api.add_user(User::service_account("mailroom", "mailroom", &[]));
    let controller = client(&api, &token).await;
    let sa_servers = servers(&controller);
    sa_servers.get("support").await.unwrap();
    let (status, reason, message) = code(
        sa_servers
            .delete("support", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!((status, reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        message,
        "incomingemailservers.mailroom.dev \"support\" is forbidden: User \"system:serviceaccount:mailroom:mailroom\" cannot delete resource \"incomingemailservers\" in API group \"mailroom.dev\" in the namespace \"helpdesk\""
    );
    // The leader Role is bound in the release namespace only.
    let leases: Api<DynamicObject> = Api::namespaced_with(
        controller.clone(),
        NS,
        &ApiResource::from_gvk(&GroupVersionKind::gvk("coordination.k8s.io", "v1", "Lease")),
    );
    assert_eq!(code(leases.get("x").await.unwrap_err()).0, 403);

    let submitter = api.add_user(User::service_account(NS, "helpdesk-app", &["mailroom"]));
    let reviews: Api<TokenReview> = Api::all(controller.clone());
    let review = |token: &str, audiences: &[&str]| -> TokenReview {
        serde_json::from_value(json!({"spec": {"token": token, "audiences": audiences}})).unwrap()
    };
    let ok = reviews
        .create(&PostParams::default(), &review(&submitter, &["mailroom"]))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(ok.authenticated, Some(true));
    assert_eq!(
        ok.user.unwrap().username.unwrap(),
        "system:serviceaccount:helpdesk:helpdesk-app"
    );
    for (t, aud) in [(submitter.as_str(), "other"), ("no-such-token", "mailroom")] {
        let refused = reviews
            .create(&PostParams::default(), &review(t, &[aud]))
            .await
            .unwrap()
            .status
            .unwrap();
        assert_eq!(refused.authenticated, Some(false), "{t} {aud}");
    }
}

#[tokio::test]
async fn faults_throttle_fail_slow_and_partition_one_client() {
    let api = start(KubeOptions::default());
    let c = admin(&api).await;
    let token = api.add_user(User {
        name: "victim".into(),
        uid: "victim".into(),
        groups: vec![testbed::kube::MASTERS.into()],
        audiences: Vec::new(),
    });
    let victim: Api<ConfigMap> = Api::namespaced(client_with(&api, &token, false).await, NS);
    let bystander: Api<ConfigMap> = Api::namespaced(c, NS);

    api.faults().throttle("victim", 1, 7);
    let request = http::Request::get(format!("/api/v1/namespaces/{NS}/configmaps"))
        .body(kube::client::Body::from(Vec::new()))
        .unwrap();
    let raw = client_with(&api, &token, false)
        .await
        .send(request)
        .await
        .unwrap();
    assert_eq!(raw.status(), 429);
    assert_eq!(raw.headers()["retry-after"], "7");
    victim.list(&ListParams::default()).await.unwrap();
    // kube-rs's own retry waits as long as the server asks.
    api.faults().throttle("victim", 1, 1);
    let t = std::time::Instant::now();
    Api::<ConfigMap>::namespaced(client(&api, &token).await, NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_secs(1));

    api.faults().fail("victim", 1);
    assert_eq!(
        code(victim.list(&ListParams::default()).await.unwrap_err()).0,
        500
    );

    api.faults().latency("victim", Duration::from_millis(400));
    let t = std::time::Instant::now();
    victim.list(&ListParams::default()).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(400));

    api.faults().partition("victim");
    let hung = tokio::time::timeout(
        Duration::from_millis(700),
        victim.list(&ListParams::default()),
    )
    .await;
    assert!(hung.is_err(), "a partitioned client's request was answered");
    bystander.list(&ListParams::default()).await.unwrap();
    api.faults().heal("victim");
    victim.list(&ListParams::default()).await.unwrap();
}

#[tokio::test]
async fn objects_survive_a_restart_from_the_state_folder() {
    let dir = tempfile::tempdir().unwrap();
    let options = KubeOptions {
        state_dir: Some(dir.path().to_owned()),
        ..KubeOptions::default()
    };
    let (uid, version) = {
        let api = start(options.clone());
        let c = admin(&api).await;
        let created = servers(&c)
            .create(&PostParams::default(), &server("support"))
            .await
            .unwrap();
        (created.metadata.uid.clone().unwrap(), rv(&created))
    };
    let api = start(options);
    let c = client(&api, api.admin_token()).await;
    let found = servers(&c).get("support").await.unwrap();
    assert_eq!(found.metadata.uid.clone().unwrap(), uid);
    assert_eq!(rv(&found), version);
    // Versions go on from where they were.
    let maps: Api<ConfigMap> = Api::namespaced(c, NS);
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "later"}})).unwrap();
    let later = maps.create(&PostParams::default(), &cm).await.unwrap();
    assert!(
        later
            .metadata
            .resource_version
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > version
    );
}
