//! End to end in a cluster: the real `mailroom controller` binary, with a
//! kubeconfig for the chart's ServiceAccount, against the test bed's Kubernetes
//! API double (RBAC from the rendered chart, admission from `crds/`), driven by
//! the real `kubectl`, with the real Dovecot and Postfix for the mail.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use mailroom::api::validation::{ManifestValidator, ValidationError};
use serde_json::{Value, json};
use support::cluster::{
    Cluster, IES, NS, chart_rbac, condition, incoming_yaml, mail, outgoing_yaml, root,
    secrets_yaml, with_mailbox,
};
use testbed::Stack;
use testbed::kube::Logged;

/// A cluster with the chart's RBAC, a mailbox, and one running controller
/// whose IncomingEmailServer is Ready.
fn ready_cluster(stack: &Stack) -> (Cluster, testbed::User) {
    let (mut cluster, user) = with_mailbox(stack, chart_rbac());
    cluster.start_controller("pod-a", &[]);
    cluster.wait_ready();
    (cluster, user)
}

#[test]
fn the_controller_binary_makes_a_kubectl_applied_mailbox_ready_and_its_mail_tickets() {
    let stack = Stack::start(Default::default()).unwrap();
    let (cluster, user) = ready_cluster(&stack);

    stack.deliver(&user.address, &[mail("first")]).unwrap();
    cluster.wait_for("the ticket", Duration::from_secs(30), |c| {
        c.ticket_count() == 1
    });
    let tickets: Vec<Value> = support::json_files(&cluster.tickets());
    assert_eq!(tickets[0]["subject"], "first");

    let out = cluster.kubectl(&["get", "ies", "-n", NS], None);
    let table = String::from_utf8_lossy(&out.stdout);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "REASON", "PROTOCOL", "SERVER", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row[..5],
        ["support", "True", "Connected", "IMAP", "127.0.0.1"],
        "{table}"
    );

    // Every request the controller made was one the chart's RBAC grants.
    let refused: Vec<Logged> = cluster
        .requests_of_controller()
        .into_iter()
        .filter(|r| r.code == 403)
        .collect();
    assert!(refused.is_empty(), "the chart's RBAC refused: {refused:#?}");
}

#[test]
fn a_changed_secret_restarts_the_worker_deletion_stops_it_and_foreign_conditions_survive() {
    let stack = Stack::start(Default::default()).unwrap();
    let (cluster, _user) = ready_cluster(&stack);

    // Another controller owns a condition of its own on the same status.
    let foreign = json!({
        "apiVersion": "mailroom.dev/v1alpha1",
        "kind": "IncomingEmailServer",
        "metadata": {"name": "support", "namespace": NS},
        "status": {"conditions": [{
            "type": "Audited", "status": "True", "reason": "Reviewed",
            "message": "checked by the audit controller",
            "lastTransitionTime": "2026-11-30T10:00:00Z",
        }]},
    });
    let out = cluster.kubectl(
        &[
            "apply",
            "--server-side",
            "--subresource=status",
            "--field-manager=audit",
            "-f",
            "-",
        ],
        Some(&foreign.to_string()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = cluster.log().matches("worker started").count();

    // A wrong password in the Secret: the worker restarts with it and fails.
    cluster.apply(&secrets_yaml(&stack, "not-the-password"));
    cluster.wait_for(
        "AuthenticationFailed after the Secret changed",
        Duration::from_secs(30),
        |c| {
            c.object("support")
                .and_then(|o| condition(&o, "Ready"))
                .is_some_and(|r| r["status"] == "False" && r["reason"] == "AuthenticationFailed")
        },
    );
    let object = cluster.object("support").unwrap();
    assert!(cluster.log().matches("worker started").count() > started);
    let audited = condition(&object, "Audited").expect("the foreign condition was removed");
    assert_eq!(audited["message"], "checked by the audit controller");
    let managers: Vec<&str> = object["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(managers.contains(&"audit"), "{managers:?}");

    // Deleting the resource: the controller stops the worker and lets it go.
    let out = cluster.kubectl(&["delete", "ies/support", "-n", NS, "--timeout=30s"], None);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.log()
    );
    assert!(cluster.object("support").is_none());
    cluster.wait_for("the stop event", Duration::from_secs(10), |c| {
        c.events()
            .iter()
            .any(|n| n.contains("fetch worker stopped"))
    });
}

#[test]
fn an_expired_watch_makes_the_controller_relist_without_restarting_its_worker() {
    let stack = Stack::start(Default::default()).unwrap();
    let (cluster, user) = ready_cluster(&stack);
    let lists = |c: &Cluster| {
        c.requests_of_controller()
            .iter()
            .filter(|r| r.verb == "list" && r.resource == IES)
            .count()
    };
    let watches = |c: &Cluster| {
        c.requests_of_controller()
            .iter()
            .filter(|r| r.verb == "watch" && r.resource == IES)
            .count()
    };
    let started = cluster.log().matches("worker started").count();
    let ready_since =
        condition(&cluster.object("support").unwrap(), "Ready").unwrap()["lastTransitionTime"]
            .clone();

    // A dropped watch with history still retained resumes without a list.
    let (listed, watched) = (lists(&cluster), watches(&cluster));
    cluster.api.drop_watches();
    cluster.wait_for("the watch to resume", Duration::from_secs(20), |c| {
        watches(c) > watched
    });
    assert_eq!(lists(&cluster), listed, "a resumable watch was relisted");

    // History compacted: resuming gets 410 Gone, and the watcher lists again.
    cluster.api.compact();
    cluster.api.drop_watches();
    cluster.wait_for("the relist after 410 Gone", Duration::from_secs(30), |c| {
        lists(c) > listed
    });

    stack
        .deliver(&user.address, &[mail("after-relist")])
        .unwrap();
    cluster.wait_for("the ticket", Duration::from_secs(30), |c| {
        c.ticket_count() == 1
    });
    assert_eq!(
        cluster.log().matches("worker started").count(),
        started,
        "the relist restarted a healthy worker"
    );
    assert_eq!(
        condition(&cluster.object("support").unwrap(), "Ready").unwrap()["lastTransitionTime"],
        ready_since
    );
}

#[test]
fn a_verb_missing_from_the_charts_rules_fails_the_controller_with_its_403() {
    let stack = Stack::start(Default::default()).unwrap();
    let user = stack
        .add_user("support@mailroom.test", "s3cret-pass")
        .unwrap();
    // The chart's rules, less `patch` on the status subresources.
    let mut rbac = chart_rbac();
    for doc in &mut rbac {
        for rule in doc["rules"].as_array_mut().into_iter().flatten() {
            let on_status = rule["resources"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|x| x.as_str().is_some_and(|s| s.ends_with("/status")))
            });
            if on_status {
                rule["verbs"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|v| v != "patch");
            }
        }
    }
    let mut cluster = Cluster::start(rbac);
    cluster.apply(&secrets_yaml(&stack, &user.password));
    cluster.apply(&incoming_yaml(&stack, &user.address, &cluster.tickets()));
    cluster.start_controller("pod-a", &[]);

    cluster.wait_for("a refused status write", Duration::from_secs(30), |c| {
        c.requests_of_controller()
            .iter()
            .any(|r| r.code == 403 && r.verb == "patch" && r.resource == format!("{IES}/status"))
    });
    cluster.wait_for("the 403 in the log", Duration::from_secs(10), |c| {
        c.log()
            .contains("cannot patch resource \"incomingemailservers/status\"")
    });
    assert!(condition(&cluster.object("support").unwrap(), "Ready").is_none());
}

#[test]
fn kubectl_apply_of_a_manifest_the_crd_rejects_is_refused_naming_the_field() {
    let cluster = Cluster::start(chart_rbac());
    let validator = ManifestValidator::new().unwrap();
    let dir = root().join("tests/fixtures/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() > 10);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let manifest: Value = serde_yaml::from_str(&text).unwrap();
        let Err(ValidationError::Invalid(errors)) = validator.validate(&manifest) else {
            panic!("{} is not invalid", file.display());
        };
        let out = cluster.kubectl(&["apply", "-n", NS, "-f", file.to_str().unwrap()], None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} was accepted", file.display());
        assert!(
            errors.iter().any(|e| stderr.contains(&e.field)),
            "{}: kubectl said {stderr:?}, expected one of {:?}",
            file.display(),
            errors.iter().map(|e| &e.field).collect::<Vec<_>>()
        );
        let name = manifest["metadata"]["name"].as_str().unwrap_or_default();
        assert!(
            cluster.object(name).is_none(),
            "{} was stored",
            file.display()
        );
    }
}

#[test]
fn a_resource_gone_without_its_cleanup_loses_its_worker_within_one_sweep() {
    let stack = Stack::start(Default::default()).unwrap();
    let (cluster, user) = ready_cluster(&stack);
    // The controller misses the deletion: cut off while the finalizer is
    // removed by hand and the resource deleted, and its watch history gone.
    let token = cluster.replicas[0].token.clone();
    cluster.api.faults().partition(&token);
    // Its open watches end too: it must not see the deletion as an event.
    cluster.api.drop_watches();
    for args in [
        &[
            "patch",
            "ies",
            "support",
            "-n",
            NS,
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ][..],
        &["delete", "ies", "support", "-n", NS][..],
    ] {
        let out = cluster.kubectl(args, None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    cluster.api.compact();
    cluster.api.drop_watches();
    cluster.api.faults().heal(&token);

    cluster.wait_for("the sweep", Duration::from_secs(15), |c| {
        c.log()
            .contains("stopped: the resource is gone from this controller's watch")
    });
    assert!(
        !cluster.log().contains("fetch worker stopped"),
        "the deletion was seen after all; this test would not test the sweep"
    );
    stack
        .deliver(&user.address, &[mail("after-the-sweep")])
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cluster.ticket_count(), 0, "a stopped worker fetched");
}

#[test]
fn a_resource_created_again_under_its_name_does_not_take_the_old_ones_cursor() {
    let stack = Stack::start(Default::default()).unwrap();
    let (cluster, user) = ready_cluster(&stack);
    stack.deliver(&user.address, &[mail("first")]).unwrap();
    cluster.wait_for("the ticket", Duration::from_secs(30), |c| {
        c.ticket_count() == 1
    });
    let cursor = || {
        cluster
            .api
            .object("configmaps", NS, "mailroom-cursor-support")
    };
    let old_uid = cluster.object("support").unwrap()["metadata"]["uid"].clone();
    cluster.wait_for("the cursor", Duration::from_secs(10), |_| {
        cursor().is_some_and(|c| c["metadata"]["ownerReferences"][0]["uid"] == old_uid)
    });

    // Deleted and created again before the garbage collector took the cursor.
    let out = cluster.kubectl(&["delete", "ies/support", "-n", NS, "--timeout=30s"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(cursor().is_some());
    cluster.apply(&incoming_yaml(&stack, &user.address, &cluster.tickets()));
    cluster.wait_ready();
    let new_uid = cluster.object("support").unwrap()["metadata"]["uid"].clone();
    assert_ne!(new_uid, old_uid);
    assert!(
        cluster
            .log()
            .contains("the cursor belongs to an earlier resource of this name; starting afresh"),
        "{}",
        cluster.log()
    );
    stack.deliver(&user.address, &[mail("second")]).unwrap();
    cluster.wait_for("the new resource's ticket", Duration::from_secs(30), |c| {
        c.ticket_count() == 2
    });
    cluster.wait_for(
        "the cursor, now the new resource's",
        Duration::from_secs(10),
        |_| {
            cursor().is_some_and(|c| {
                let owners = c["metadata"]["ownerReferences"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                owners.len() == 1 && owners[0]["uid"] == new_uid
            })
        },
    );
}

#[test]
fn a_mailbox_whose_server_hangs_holds_up_no_other_resource_nor_metrics() {
    let stack = Stack::start(Default::default()).unwrap();
    let (cluster, user) = ready_cluster(&stack);
    // A server that accepts connections and never says a word.
    let tarpit = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tarpit.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in tarpit.incoming() {
            held.push(conn);
        }
    });
    let slow = |password: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: slow, namespace: {NS}}}\nstringData: {{password: {password}}}\n---\n{}",
            incoming_yaml(&stack, &user.address, &cluster.tickets())
                .replace("name: support,", "name: slow,")
                .replace(
                    &format!("port: {}", stack.ports().imaps),
                    &format!("port: {port}")
                )
                .replace("name: mailbox, key", "name: slow, key")
        )
    };
    cluster.apply(&slow("first"));
    cluster.wait_for("the slow worker", Duration::from_secs(10), |c| {
        c.log().matches("worker started").count() == 2
    });
    // A new password: the slow worker must stop first, and it is stuck in its
    // TLS handshake until its I/O timeout.
    std::thread::sleep(Duration::from_millis(500));
    cluster.apply(&slow("second"));
    std::thread::sleep(Duration::from_millis(500));

    let asked = std::time::Instant::now();
    let (code, metrics) = cluster.replicas[0].get("/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("mailroom_leader 1"), "{metrics}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "/metrics took {:?}",
        asked.elapsed()
    );
    // Another resource reconciles meanwhile.
    let started = std::time::Instant::now();
    cluster.apply(
        &incoming_yaml(&stack, &user.address, &cluster.tickets())
            .replace("name: support,", "name: other,"),
    );
    cluster.wait_for("the other resource Ready", Duration::from_secs(5), |c| {
        c.api
            .object(IES, NS, "other")
            .and_then(|o| condition(&o, "Ready"))
            .is_some_and(|r| r["status"] == "True")
    });
    assert!(
        cluster.log().matches("worker started").count() < 4,
        "the slow worker had already restarted: this test would not test the lock\n{}",
        cluster.log()
    );
    eprintln!("another resource became Ready in {:?}", started.elapsed());
}

#[test]
fn a_new_outgoing_server_restarts_no_mailbox_and_its_address_is_a_loop_at_once() {
    let stack = Stack::start(Default::default()).unwrap();
    let (cluster, user) = ready_cluster(&stack);
    let started = cluster.log().matches("worker started").count();
    let sender = stack
        .add_user("replies@mailroom.test", "r3plies-pass")
        .unwrap();
    cluster.apply(&outgoing_yaml(&stack, "replies", NS, &sender));
    let out = cluster.kubectl(
        &[
            "wait",
            "--for=condition=Ready",
            "oes/replies",
            "-n",
            NS,
            "--timeout=30s",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_secs(1));

    stack
        .deliver(
            &user.address,
            &["From: Helpdesk <replies@mailroom.test>\r\nTo: support@mailroom.test\r\nSubject: Re: your ticket\r\nMessage-ID: <own@mailroom.test>\r\n\r\nOur own reply.\r\n"],
        )
        .unwrap();
    cluster.wait_for("the loop verdict", Duration::from_secs(20), |c| {
        c.log()
            .contains("mail from our own outgoing address replies@mailroom.test")
    });
    assert_eq!(cluster.ticket_count(), 0);
    assert_eq!(
        cluster.log().matches("worker started").count(),
        started,
        "the mailbox restarted"
    );
}

/// POSTs to the submission endpoint over TLS, trusting `ca_pem` only; the
/// status code, or None when the handshake fails.
fn post_tls(port: u16, ca_pem: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let config = testbed::tls_config(ca_pem).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let body = r#"{"to":["a@example.com"],"subject":"x","text":"y"}"#;
    write!(
        tls,
        "POST /v1/namespaces/apps/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    tls.read_to_string(&mut response).ok()?;
    response.get(9..12)?.parse().ok()
}

#[test]
fn the_submission_endpoint_serves_tls_from_files_renewed_in_place_and_refuses_plain_http_off_loopback()
 {
    let mut cluster = Cluster::start(chart_rbac());
    // Plain HTTP on the pod network is refused unless asked for.
    cluster.start_controller("plain", &["--listen", "0.0.0.0:0"]);
    assert_ne!(
        cluster.replicas[0].wait_exit(Duration::from_secs(20)),
        Some(0)
    );
    assert!(
        cluster.replicas[0]
            .log()
            .contains("over plain HTTP on 0.0.0.0:0"),
        "{}",
        cluster.log()
    );

    let dir = cluster.dir.path().to_owned();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let first = testbed::test_certificates().unwrap();
    std::fs::write(&cert, &first.server_pem).unwrap();
    std::fs::write(&key, &first.server_key_pem).unwrap();
    let i = cluster.start_controller(
        "tls",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let port = cluster.replicas[i].submission;
    cluster.wait_for("the TLS endpoint", Duration::from_secs(20), |_| {
        post_tls(port, &first.ca_pem).is_some()
    });
    // Over TLS, a request without a token is answered (401), not dropped.
    assert_eq!(post_tls(port, &first.ca_pem), Some(401));
    // Plain HTTP to the TLS port gets no HTTP answer.
    {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer);
        assert!(
            !answer.starts_with(b"HTTP/"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }

    // cert-manager renews the Secret: the files change, the endpoint follows.
    let renewed = testbed::test_certificates().unwrap();
    std::fs::write(&cert, &renewed.server_pem).unwrap();
    std::fs::write(&key, &renewed.server_key_pem).unwrap();
    cluster.wait_for("the renewed certificate", Duration::from_secs(20), |_| {
        post_tls(port, &renewed.ca_pem) == Some(401)
    });
    assert_eq!(
        post_tls(port, &first.ca_pem),
        None,
        "the old certificate is still served"
    );
}

/// `mailroom_reconciles_total` of a replica.
fn reconciles(replica: &support::cluster::Replica) -> u64 {
    let (_, body) = replica.get("/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("mailroom_reconciles_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_steady_cluster_costs_the_api_server_no_reads_and_a_changed_ca_config_map_restarts_the_worker()
{
    let stack = Stack::start(Default::default()).unwrap();
    let user = stack
        .add_user("support@mailroom.test", "s3cret-pass")
        .unwrap();
    let mut cluster = Cluster::start(chart_rbac());
    let bundle = |pem: &str| {
        let indented: String = pem.lines().map(|l| format!("    {l}\n")).collect();
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ca-bundle, namespace: {NS}}}\ndata:\n  ca.crt: |\n{indented}"
        )
    };
    cluster.apply(&secrets_yaml(&stack, &user.password));
    cluster.apply(&bundle(stack.ca_pem()));
    cluster.apply(
        &incoming_yaml(&stack, &user.address, &cluster.tickets()).replace(
            "tls: {caSecretRef: {name: ca, key: ca.crt}}",
            "tls: {caConfigMapRef: {name: ca-bundle, key: ca.crt}}",
        ),
    );
    cluster.start_controller("pod-a", &["--resync", "1", "--status-counters-every", "1"]);
    cluster.wait_ready();

    // Steady (the counters of the first pass written): resyncs run (about
    // every second here), and not one of them reads a Secret or ConfigMap or
    // writes anything.
    std::thread::sleep(Duration::from_secs(2));
    let seen = cluster.requests_of_controller().len();
    let before = reconciles(&cluster.replicas[0]);
    std::thread::sleep(Duration::from_secs(6));
    let resynced = reconciles(&cluster.replicas[0]) - before;
    assert!(resynced >= 3, "only {resynced} resyncs in 6 s");
    let window = cluster.requests_of_controller()[seen..].to_vec();
    let requests: Vec<&Logged> = window
        .iter()
        .filter(|r| r.verb != "watch" && !r.resource.starts_with("leases"))
        .collect();
    assert!(
        requests.is_empty(),
        "{resynced} resyncs of a steady cluster made requests: {requests:#?}"
    );
    // The leader renews every two seconds, each renewal one write.
    let lease: Vec<&str> = window
        .iter()
        .filter(|r| r.resource.starts_with("leases"))
        .map(|r| r.verb.as_str())
        .collect();
    assert!(
        lease.iter().all(|v| *v == "update") && (2..=4).contains(&lease.len()),
        "Lease requests in 6 s: {lease:?}"
    );

    // A CA bundle that no longer holds the server's CA: the watch sees the
    // ConfigMap change, the value is read once, and the worker restarts with it.
    let started = cluster.log().matches("worker started").count();
    let other = testbed::test_certificates().unwrap();
    cluster.apply(&bundle(&other.ca_pem));
    cluster.wait_for(
        "the worker to fail on the new CA bundle",
        Duration::from_secs(30),
        |c| {
            c.object("support")
                .and_then(|o| condition(&o, "Ready"))
                .is_some_and(|r| r["status"] == "False")
        },
    );
    assert!(cluster.log().matches("worker started").count() > started);
    let reads = cluster.requests_of_controller()[seen..]
        .iter()
        .filter(|r| r.verb == "get" && r.resource == "configmaps" && r.name == "ca-bundle")
        .count();
    assert_eq!(reads, 1, "the changed ConfigMap is read once");
}

#[test]
fn counters_reach_status_within_their_interval_without_waiting_for_a_resync() {
    let stack = Stack::start(Default::default()).unwrap();
    let (mut cluster, user) = with_mailbox(&stack, chart_rbac());
    // Resyncs ten minutes apart: only the counters' own flush can write them.
    cluster.start_controller("pod-a", &["--status-counters-every", "2"]);
    cluster.wait_ready();
    stack.deliver(&user.address, &[mail("counted")]).unwrap();
    cluster.wait_for("the ticket", Duration::from_secs(30), |c| {
        c.ticket_count() == 1
    });
    cluster.wait_for("the counters in status", Duration::from_secs(10), |c| {
        c.object("support")
            .is_some_and(|o| o["status"]["stats"]["ticketsCreated"] == 1)
    });
}
