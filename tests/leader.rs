//! Leader election against the test bed's API double, with client-go's rules:
//! a Lease is judged by when we saw it change, never by its holder's clock; a
//! leader cut off from the API server gives up within its renew deadline, before
//! anyone may take over; a released Lease is taken at the next attempt.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Config};
use mailroom::controller::leader::{ElectionConfig, Elector, Held, Outcome};
use serde_json::json;
use testbed::kube::{KubeApi, KubeOptions, MASTERS, User};

const NS: &str = "mailroom";

async fn client(api: &KubeApi, token: &str) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&api.kubeconfig(token, NS)).unwrap();
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.default_retry = false;
    Client::try_from(config).unwrap()
}

/// The double, the namespace, and a client of its own per replica (so that a
/// fault can hit one replica only).
async fn setup() -> (KubeApi, Client) {
    let api = KubeApi::start(KubeOptions::default()).unwrap();
    let admin = client(&api, api.admin_token()).await;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap();
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    (api, admin)
}

async fn replica(api: &KubeApi, identity: &str) -> Elector {
    let token = api.add_user(User {
        name: identity.into(),
        uid: identity.into(),
        groups: vec![MASTERS.into()],
        audiences: Vec::new(),
    });
    Elector::new(
        client(api, &token).await,
        ElectionConfig {
            lease_duration: Duration::from_millis(2000),
            renew_deadline: Duration::from_millis(1200),
            retry_period: Duration::from_millis(200),
            ..ElectionConfig::new(NS, "mailroom-test", identity)
        },
    )
}

#[tokio::test]
async fn a_lease_is_judged_by_when_it_was_seen_to_change_not_by_the_holders_clock() {
    let (api, admin) = setup().await;
    let mut a = replica(&api, "pod-a").await;
    let mut b = replica(&api, "pod-b").await;
    assert_eq!(a.try_acquire_or_renew().await.unwrap(), Outcome::Held);

    // The holder's clock is years behind: its renewTime says nothing to us.
    let leases: Api<Lease> = Api::namespaced(admin, NS);
    leases
        .patch(
            "mailroom-test",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"renewTime": "2020-01-01T00:00:00.000000Z"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        b.try_acquire_or_renew().await.unwrap(),
        Outcome::Other("pod-a".into())
    );

    // The holder keeps renewing: the Lease stays its own.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(a.try_acquire_or_renew().await.unwrap(), Outcome::Held);
        assert_eq!(
            b.try_acquire_or_renew().await.unwrap(),
            Outcome::Other("pod-a".into())
        );
    }

    // It stops: the other takes it once the Lease has not changed for its duration.
    let silent = Instant::now();
    let taken = loop {
        if b.try_acquire_or_renew().await.unwrap() == Outcome::Held {
            break silent.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        taken >= Duration::from_millis(1900) && taken < Duration::from_millis(3000),
        "taken after {taken:?}"
    );
    assert_eq!(
        a.try_acquire_or_renew().await.unwrap(),
        Outcome::Other("pod-b".into())
    );
    let lease = leases.get("mailroom-test").await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("pod-b"));
    assert_eq!(lease.lease_transitions, Some(1));
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_gives_up_before_anyone_may_take_over() {
    let (api, _) = setup().await;
    let mut a = replica(&api, "pod-a").await;
    let mut b = replica(&api, "pod-b").await;
    assert_eq!(a.try_acquire_or_renew().await.unwrap(), Outcome::Held);
    let (_release, mut release_rx) = tokio::sync::watch::channel(false);
    let holding = tokio::spawn(async move {
        let held = a.hold(&mut release_rx).await;
        (held, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Its requests hang from now on; the last renewal was at most 200 ms ago.
    api.faults().partition("pod-a");
    let cut = Instant::now();
    assert_eq!(
        b.try_acquire_or_renew().await.unwrap(),
        Outcome::Other("pod-a".into())
    );
    let taken_at = loop {
        if b.try_acquire_or_renew().await.unwrap() == Outcome::Held {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (held, gave_up_at) = holding.await.unwrap();
    assert!(matches!(held, Held::Lost(_)), "{held:?}");
    assert!(
        gave_up_at < taken_at,
        "the old leader gave up {:?} after the new one took over",
        gave_up_at - taken_at
    );
    assert!(
        gave_up_at - cut <= Duration::from_millis(1300),
        "gave up {:?} after the cut",
        gave_up_at - cut
    );
    api.faults().heal("pod-a");
}

#[tokio::test]
async fn a_released_lease_is_taken_at_the_next_attempt() {
    let (api, _) = setup().await;
    let mut a = replica(&api, "pod-a").await;
    let mut b = replica(&api, "pod-b").await;
    assert_eq!(a.try_acquire_or_renew().await.unwrap(), Outcome::Held);
    assert_eq!(
        b.try_acquire_or_renew().await.unwrap(),
        Outcome::Other("pod-a".into())
    );
    let (release, mut release_rx) = tokio::sync::watch::channel(false);
    let holding = tokio::spawn(async move { a.hold(&mut release_rx).await });
    release.send(true).unwrap();
    assert_eq!(holding.await.unwrap(), Held::Released);
    assert_eq!(b.try_acquire_or_renew().await.unwrap(), Outcome::Held);
}
