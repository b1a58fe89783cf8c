//! The Helm chart, the plain install manifest and the Argo CD health check,
//! checked with real tools: helm (lint, template), the Kubernetes 1.35 JSON
//! schemas (kubernetes-validate) and a Lua interpreter. `scripts/install-tools`
//! puts helm and the validator in `.tools/`; `scripts/install-deps` installs Lua.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::{Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool(rel: &str) -> PathBuf {
    let path = root().join(".tools").join(rel);
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-tools",
        path.display()
    );
    path
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const ALL_ON: &str = r#"
replicaCount: 2
shards: [a]
watchNamespaces: [helpdesk, hr]
submission:
  tokensSecret: mailroom-tokens
defaultSink:
  persistentVolumeClaim: mailroom-tickets
serviceMonitor:
  enabled: true
prometheusRule:
  enabled: true
grafanaDashboard:
  enabled: true
podDisruptionBudget:
  enabled: true
networkPolicy:
  enabled: true
  apiServer:
    cidrs: [10.0.0.1/32]
  extraEgress:
    - to: [{ipBlock: {cidr: 10.0.0.5/32}}]
      ports: [{port: 3128, protocol: TCP}]
  ingressFrom:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: monitoring
rbac:
  secretUpdate: [helpdesk]
extraEnv:
  - {name: HTTPS_PROXY, value: "http://10.0.0.5:3128"}
extraVolumes:
  - {name: corporate-ca, configMap: {name: corporate-ca}}
extraVolumeMounts:
  - {name: corporate-ca, mountPath: /etc/ssl/corporate, readOnly: true}
strategy:
  type: RollingUpdate
  rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
priorityClassName: system-cluster-critical
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels: {app.kubernetes.io/name: mailroom}
"#;

/// What the chart README tells OpenShift users to set: no fixed UIDs.
const OPENSHIFT: [&str; 2] = [
    "--set",
    "podSecurityContext.runAsUser=null,podSecurityContext.runAsGroup=null,podSecurityContext.fsGroup=null",
];

/// The Prometheus Operator's kinds, which the schema validator does not know.
const MONITORING: [&str; 4] = [
    "--api-versions",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "--api-versions",
    "monitoring.coreos.com/v1/PrometheusRule",
];

/// `helm template` with extra arguments; the documents, parsed.
fn template(args: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("all-on.yaml");
    std::fs::write(&values, ALL_ON).unwrap();
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace("@all-on", values.to_str().unwrap()))
        .collect();
    let out = run(Command::new(tool("bin/helm"))
        .args([
            "template",
            "mailroom",
            "charts/mailroom",
            "--namespace",
            "mailroom",
        ])
        .args(&args)
        .current_dir(root()));
    documents(&out)
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn helm_lint_is_clean_with_defaults_and_with_every_option() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("all-on.yaml");
    std::fs::write(&values, ALL_ON).unwrap();
    for extra in [vec![], vec!["-f".to_owned(), values.display().to_string()]] {
        let out = run(Command::new(tool("bin/helm"))
            .args(["lint", "charts/mailroom", "--strict"])
            .args(&extra)
            .current_dir(root()));
        assert!(out.contains("0 chart(s) failed"), "{out}");
        assert!(
            !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "{out}"
        );
    }
    // An unknown value is refused by values.schema.json.
    let out = Command::new(tool("bin/helm"))
        .args(["template", "charts/mailroom", "--set", "replicas=2"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("replicas"));
}

#[test]
fn rendered_manifests_pass_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let all_on: Vec<&str> = [&["-f", "@all-on"][..], &MONITORING].concat();
    let matrix: Vec<(&str, Vec<&str>)> = vec![
        ("defaults", vec![]),
        ("all-on", all_on.clone()),
        // Each toggle the other way round from its default.
        (
            "toggles-off",
            vec![
                "--set",
                "crds.enabled=false,rbac.secretUpdate=none,rbac.aggregateToDefaultRoles=false",
                "--set",
                "submission.enabled=false,leaderElection.enabled=false,serviceAccount.create=false",
                "--set",
                "networkPolicy.enabled=true,networkPolicy.httpsEgress=false",
            ],
        ),
        // As a subchart: the parent's globals arrive as `global`.
        (
            "subchart",
            vec!["--set", "global.imageRegistry=registry.example.org"],
        ),
        // OpenShift's restricted-v2 assigns the UIDs.
        ("openshift", OPENSHIFT.to_vec()),
        (
            "shards",
            vec!["--set", "shards={a,b},podDisruptionBudget.enabled=true"],
        ),
    ];
    for (name, args) in matrix {
        let docs = template(&args);
        // The validator has no schema for the Prometheus Operator's kinds.
        let core: Vec<&Value> = docs
            .iter()
            .filter(|d| d["kind"] != "ServiceMonitor" && d["kind"] != "PrometheusRule")
            .collect();
        let text: String = core
            .iter()
            .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
            .collect();
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, text).unwrap();
        let out = run(Command::new(tool("venv/bin/kubernetes-validate"))
            .args(["-k", "1.35.0", "--strict", "--quiet"])
            .arg(&file));
        assert!(!out.contains("ERROR"), "{name}: {out}");
    }
    let openshift = template(&OPENSHIFT);
    let pod = &openshift
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap()["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"],
        json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}),
        "no fixed UIDs"
    );
}

#[test]
fn the_optional_parts_appear_only_when_asked_for() {
    const OPTIONAL: [&str; 5] = [
        "ServiceMonitor",
        "PrometheusRule",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ConfigMap",
    ];
    let defaults = kinds(&template(&[]));
    for k in OPTIONAL {
        assert!(!defaults.contains(&k.to_owned()), "{k} is off by default");
    }
    assert!(defaults.contains(&"ClusterRole".to_owned()));
    let all = kinds(&template(&[&["-f", "@all-on"][..], &MONITORING].concat()));
    for k in OPTIONAL {
        assert!(all.contains(&k.to_owned()), "{k} when enabled");
    }
    let docs = template(&["-f", "@all-on"]);
    assert_eq!(
        bound(&docs, "ClusterRoleBinding"),
        ["mailroom-tokenreview"],
        "namespaced Roles instead; only TokenReview is cluster-wide"
    );
    let without_crd = kinds(&template(&[
        "--set",
        "serviceMonitor.enabled=true,prometheusRule.enabled=true",
    ]));
    for k in ["ServiceMonitor", "PrometheusRule"] {
        assert!(
            !without_crd.contains(&k.to_owned()),
            "{k} skipped when its CRD is absent"
        );
    }
}

/// Names of the roles the chart binds to its ServiceAccount with bindings
/// of `kind`.
fn bound(docs: &[Value], kind: &str) -> Vec<String> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| d["roleRef"]["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_chart_fits_strict_clusters_and_argo_cd() {
    let defaults = template(&[]);
    // Argo CD prunes a CRD that leaves the render despite Helm's keep.
    for crd in defaults
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
    {
        let a = &crd["metadata"]["annotations"];
        assert_eq!(a["helm.sh/resource-policy"], "keep");
        assert!(
            a["argocd.argoproj.io/sync-options"]
                .as_str()
                .unwrap()
                .split(',')
                .any(|o| o == "Prune=false"),
            "{a}"
        );
    }

    let docs = template(&["-f", "@all-on"]);
    let policy = docs.iter().find(|d| d["kind"] == "NetworkPolicy").unwrap();
    let egress = policy["spec"]["egress"].as_array().unwrap();
    let ports = |rule: &Value| -> Vec<i64> {
        rule["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["port"].as_i64().unwrap())
            .collect()
    };
    let api = egress
        .iter()
        .find(|r| r["to"][0]["ipBlock"]["cidr"] == "10.0.0.1/32")
        .unwrap();
    assert_eq!(
        ports(api),
        [443, 6443],
        "the API server before and after DNAT"
    );
    assert!(
        egress
            .iter()
            .any(|r| r["to"].is_null() && ports(r) == [443]),
        "HTTPS (webhooks, OAuth2) stays open when apiServer.cidrs is set: {egress:#?}"
    );
    assert!(egress.iter().any(|r| ports(r) == [3128]), "extraEgress");

    // One budget per Deployment, never blocking a drain at one replica.
    let budgets: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "PodDisruptionBudget")
        .collect();
    assert_eq!(budgets.len(), 2, "main and shard a");
    for b in budgets {
        assert_eq!(b["spec"]["maxUnavailable"], 1);
        assert_eq!(
            b["spec"]["selector"]["matchLabels"]["mailroom.dev/deployment"],
            b["metadata"]["name"]
        );
    }

    let d = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["topologySpreadConstraints"][0]["maxSkew"], 1);
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let c = &pod["containers"][0];
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "HTTPS_PROXY")
    );
    assert!(
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "corporate-ca")
    );
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "corporate-ca")
    );

    // Secret update only where OAuth2 rotation needs it.
    let secret_verbs = |docs: &[Value], kind: &str| -> BTreeSet<(String, String)> {
        docs.iter()
            .filter(|d| d["kind"] == kind)
            .flat_map(|d| {
                let ns = d["metadata"]["namespace"].as_str().unwrap_or("").to_owned();
                grants(&d["rules"])
                    .into_iter()
                    .filter(|g| g.0.is_empty() && g.1 == "secrets")
                    .map(move |g| (ns.clone(), g.2))
            })
            .collect()
    };
    let updates = |docs: &[Value]| -> Vec<String> {
        ["ClusterRole", "Role"]
            .iter()
            .flat_map(|k| secret_verbs(docs, k))
            .filter(|(_, v)| v == "update")
            .map(|(ns, _)| ns)
            .collect()
    };
    assert_eq!(updates(&defaults), [""], "cluster-wide by default");
    assert!(updates(&template(&["--set", "rbac.secretUpdate=none"])).is_empty());
    assert_eq!(updates(&docs), ["helpdesk"], "only the listed namespace");

    // Namespace admins may manage the two kinds through the default roles.
    let aggregated: Vec<&Value> = defaults
        .iter()
        .filter(|d| {
            d["kind"] == "ClusterRole"
                && d["metadata"]["labels"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
        })
        .collect();
    let to = |role: &Value, verb: &str| {
        grants(&role["rules"]).contains(&(
            "mailroom.dev".to_owned(),
            "incomingemailservers".to_owned(),
            verb.to_owned(),
        ))
    };
    assert!(aggregated.iter().any(
        |r| r["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
            && to(r, "list")
            && !to(r, "create")
    ));
    assert!(aggregated.iter().any(
        |r| r["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
            && to(r, "create")
            && to(r, "delete")
    ));
}

fn promtool() -> Command {
    let mut cmd = Command::new("promtool");
    // promtool checks every rule file it is given; no state anywhere else.
    cmd.env_remove("PROMETHEUS_CONFIG");
    cmd
}

#[test]
fn the_alerts_pass_promtool_and_fire_only_on_what_should_fire_them() {
    let dir = tempfile::tempdir().unwrap();
    let docs = template(&[&["--set", "prometheusRule.enabled=true"][..], &MONITORING].concat());
    let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        serde_yaml::to_string(&json!({"groups": rule["spec"]["groups"]})).unwrap(),
    )
    .unwrap();
    let out = run(promtool().arg("check").arg("rules").arg(&rules));
    assert!(out.contains("SUCCESS"), "{out}");
    std::fs::copy(
        root().join("tests/fixtures/alerts.test.yaml"),
        dir.path().join("alerts.test.yaml"),
    )
    .unwrap();
    let out = run(promtool()
        .args(["test", "rules", "alerts.test.yaml"])
        .current_dir(dir.path()));
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert has a runbook section in the operations guide.
    let guide = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    for r in rule["spec"]["groups"][0]["rules"].as_array().unwrap() {
        let name = r["alert"].as_str().unwrap();
        assert!(
            guide.contains(&format!("### {name}")),
            "no runbook section for {name}"
        );
    }
}

#[test]
fn every_dashboard_query_is_valid_promql_on_mailroom_metrics() {
    let docs = template(&["--set", "grafanaDashboard.enabled=true"]);
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: Value =
        serde_json::from_str(cm["data"]["mailroom.json"].as_str().unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().replace("$namespace", ".*"))
        .collect();
    assert!(exprs.len() >= 10);
    // promtool parses each as a recording rule's expression.
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| json!({"record": format!("dashboard:query{i}"), "expr": e}))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(
        &file,
        serde_yaml::to_string(&json!({"groups": [{"name": "dashboard", "rules": rules}]})).unwrap(),
    )
    .unwrap();
    let out = run(promtool().arg("check").arg("rules").arg(&file));
    assert!(out.contains("SUCCESS"), "{out}");
    let guide = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    for e in &exprs {
        for name in e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("mailroom_"))
        {
            let family = name.trim_end_matches("_bucket").trim_end_matches("_total");
            assert!(
                guide.contains(&format!("`{family}")),
                "{name} is not a metric the operations guide lists"
            );
        }
    }
}

#[test]
fn the_deployment_is_locked_down_and_runs_the_controller() {
    let docs = template(&[&["-f", "@all-on"][..], &MONITORING].concat());
    let d = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(
        c["resources"]["limits"]["memory"].is_string()
            && c["resources"]["requests"]["cpu"].is_string()
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "controller");
    for a in [
        "--watch-namespaces=helpdesk,hr",
        "--token-file=/etc/mailroom/tokens/tokens",
        "--default-sink-dir=/var/lib/mailroom/tickets",
        "--leader-election=true",
    ] {
        assert!(args.contains(&a), "{args:?}");
    }
    // Every flag the chart passes is one the binary knows.
    let help = run(Command::new(env!("CARGO_BIN_EXE_mailroom")).args(["controller", "--help"]));
    for a in &args[1..] {
        let flag = a.split('=').next().unwrap();
        assert!(
            help.contains(flag),
            "{flag} is not a flag of `mailroom controller`"
        );
    }
    assert_eq!(d["spec"]["replicas"], 2);
}

#[test]
fn each_shard_gets_a_deployment_of_its_own_with_its_own_lease() {
    let docs = template(&["--set", "shards={a,eu-1}"]);
    let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    let summary: Vec<(String, String, Vec<String>)> = deployments
        .iter()
        .map(|d| {
            let args = d["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .filter(|a| a.starts_with("--shard") || a.starts_with("--lease-name"))
                .collect();
            let selector = d["spec"]["selector"]["matchLabels"]["mailroom.dev/deployment"]
                .as_str()
                .unwrap()
                .to_owned();
            (
                d["metadata"]["name"].as_str().unwrap().to_owned(),
                selector,
                args,
            )
        })
        .collect();
    let expected = |name: &str, args: &[&str]| {
        (
            name.to_owned(),
            name.to_owned(),
            args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        summary,
        [
            expected("mailroom", &["--lease-name=mailroom"]),
            expected("mailroom-a", &["--shard=a", "--lease-name=mailroom-a"]),
            expected(
                "mailroom-eu-1",
                &["--shard=eu-1", "--lease-name=mailroom-eu-1"]
            ),
        ],
        "one Deployment per shard, none selecting another's pods, one Lease each"
    );
    for d in &deployments {
        let pod_labels = &d["spec"]["template"]["metadata"]["labels"];
        for (k, v) in d["spec"]["selector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(&pod_labels[k], v, "{}", d["metadata"]["name"]);
        }
    }
    // The Service reaches every shard's pods: each sends for every server.
    let service = docs.iter().find(|d| d["kind"] == "Service").unwrap();
    assert!(
        service["spec"]["selector"]
            .get("mailroom.dev/deployment")
            .is_none()
    );
}

#[derive(Deserialize)]
struct Rule {
    #[serde(rename = "apiGroups")]
    api_groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
}

type Grants = BTreeSet<(String, String, String)>;

fn grants(rules: &Value) -> Grants {
    let rules: Vec<Rule> = serde_json::from_value(rules.clone()).unwrap();
    let mut out = Grants::new();
    for r in rules {
        for g in &r.api_groups {
            for res in &r.resources {
                for v in &r.verbs {
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

/// The RBAC table of docs/operations.md.
fn documented() -> Grants {
    let text = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let section = text
        .split("## RBAC")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let mut out = Grants::new();
    for line in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || cells[1] == "API group" || cells[1].starts_with("---") {
            continue;
        }
        let group = if cells[1] == "core" {
            String::new()
        } else {
            cells[1].trim_matches('`').to_owned()
        };
        for res in cells[2].split(',').map(|r| r.trim().trim_matches('`')) {
            for verb in cells[3].split(',').map(str::trim) {
                out.insert((group.clone(), res.to_owned(), verb.to_owned()));
            }
        }
    }
    out
}

#[test]
fn rbac_in_the_chart_is_what_the_operations_guide_lists() {
    let docs = template(&[]);
    let mut rendered = Grants::new();
    let bound = [
        bound(&docs, "ClusterRoleBinding"),
        bound(&docs, "RoleBinding"),
    ]
    .concat();
    for d in docs.iter().filter(|d| {
        (d["kind"] == "ClusterRole" || d["kind"] == "Role")
            && bound.iter().any(|b| d["metadata"]["name"] == b.as_str())
    }) {
        rendered.extend(grants(&d["rules"]));
    }
    assert_eq!(rendered, documented());
    // Limited to namespaces: the same rules, in a Role per namespace.
    let docs = template(&["-f", "@all-on", "--set", "rbac.secretUpdate=all"]);
    let roles: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Role" && d["metadata"]["name"] == "mailroom")
        .collect();
    let namespaces: Vec<&str> = roles
        .iter()
        .map(|r| r["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(namespaces, ["helpdesk", "hr"]);
    let leases: Grants = documented()
        .into_iter()
        .filter(|g| g.1 == "leases" || g.1 == "tokenreviews")
        .collect();
    for r in roles {
        let g = grants(&r["rules"]);
        assert_eq!(
            g,
            documented()
                .difference(&leases)
                .cloned()
                .collect::<Grants>()
        );
    }
}

fn generated_crds() -> Vec<(String, Value)> {
    let dir = root().join("crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_owned();
            (
                name,
                documents(&std::fs::read_to_string(p).unwrap()).remove(0),
            )
        })
        .collect()
}

fn numbers_as_f64(v: Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.into_iter().map(numbers_as_f64).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, numbers_as_f64(v))).collect())
        }
        other => other,
    }
}

#[test]
fn the_chart_crds_are_the_generated_ones() {
    for (name, crd) in generated_crds() {
        let copy = root().join("charts/mailroom/files/crds").join(&name);
        assert_eq!(
            std::fs::read(&copy).unwrap_or_default(),
            std::fs::read(root().join("crds").join(&name)).unwrap(),
            "{} differs from crds/{name}: cargo run -- crd --dir charts/mailroom/files/crds",
            copy.display()
        );
        let rendered = template(&[]);
        let mut found = rendered
            .into_iter()
            .find(|d| {
                d["kind"] == "CustomResourceDefinition"
                    && d["metadata"]["name"] == crd["metadata"]["name"]
            })
            .unwrap();
        assert_eq!(
            found["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
        found["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        // helm writes 65535.0 as 65535: compare numbers by value.
        assert!(
            numbers_as_f64(found) == numbers_as_f64(crd),
            "the rendered {name} is not the generated CRD"
        );
    }
    assert!(
        !kinds(&template(&["--set", "crds.enabled=false"]))
            .contains(&"CustomResourceDefinition".to_owned())
    );
    let unkept = template(&["--set", "crds.keep=false"]);
    assert!(
        unkept
            .iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition")
            .all(|d| d["metadata"]["annotations"].is_null())
    );
}

#[test]
fn the_plain_install_manifest_is_the_rendered_chart() {
    let fresh = run(Command::new(tool("bin/helm"))
        .args([
            "template",
            "mailroom",
            "charts/mailroom",
            "--namespace",
            "mailroom",
            "--set",
            "crds.enabled=false",
        ])
        .current_dir(root()));
    let kept = std::fs::read_to_string(root().join("deploy/install.yaml")).unwrap();
    assert_eq!(
        kept, fresh,
        "deploy/install.yaml is stale: helm template mailroom charts/mailroom -n mailroom --set crds.enabled=false > deploy/install.yaml"
    );
}

/// Paths of the values, down to where the schema stops naming properties
/// (free-form objects such as `resources` or `podSecurityContext`).
fn leaf_paths(v: &serde_yaml::Value, schema: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        serde_yaml::Value::Mapping(m) if !m.is_empty() && schema["properties"].is_object() => {
            for (k, v) in m {
                let k = k.as_str().unwrap();
                let p = if prefix.is_empty() {
                    k.to_owned()
                } else {
                    format!("{prefix}.{k}")
                };
                let node = &schema["properties"][k];
                assert!(!node.is_null(), "{p} is not in values.schema.json");
                leaf_paths(v, node, &p, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

#[test]
fn every_value_is_in_the_schema_and_the_chart_readme() {
    let values: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("charts/mailroom/values.yaml")).unwrap(),
    )
    .unwrap();
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("charts/mailroom/values.schema.json")).unwrap(),
    )
    .unwrap();
    let readme = std::fs::read_to_string(root().join("charts/mailroom/README.md")).unwrap();
    let mut paths = Vec::new();
    leaf_paths(&values, &schema, "", &mut paths);
    for path in paths {
        let documented = if path == "resources" {
            "`resources.requests`".to_owned()
        } else {
            format!("`{path}`")
        };
        assert!(
            readme.contains(&documented),
            "{path} is not in the chart README"
        );
    }
}

/// A JSON value as a Lua table constructor.
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!("{{{}}}", a.iter().map(lua).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("[{k:?}] = {}", lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn health(obj: &Value, script: &Path) -> String {
    let program = format!(
        "obj = {}\nlocal hs = dofile({:?})\nio.write(hs.status)",
        lua(obj),
        script.display().to_string()
    );
    let out = Command::new("lua5.4")
        .args(["-e", &program])
        .output()
        .expect("lua5.4: run scripts/install-deps");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cond(t: &str, status: &str, reason: &str) -> Value {
    json!({"type": t, "status": status, "reason": reason, "message": format!("{t} {reason}")})
}

#[test]
fn the_argocd_health_check_maps_every_outcome() {
    let script = root().join("deploy/argocd/health.lua");
    let obj = |generation: i64, observed: Option<i64>, conditions: Vec<Value>| {
        let mut status = json!({"conditions": conditions});
        if let Some(o) = observed {
            status["observedGeneration"] = json!(o);
        }
        json!({"metadata": {"name": "s", "generation": generation}, "status": status})
    };
    let cases = [
        (
            json!({"metadata": {"name": "s", "generation": 1}}),
            "Progressing",
        ),
        (
            obj(2, Some(1), vec![cond("Ready", "True", "Connected")]),
            "Progressing",
        ),
        (
            obj(
                2,
                Some(2),
                vec![
                    cond("Ready", "True", "Connected"),
                    cond("ConnectionVerified", "True", "Connected"),
                ],
            ),
            "Healthy",
        ),
        (
            obj(
                2,
                Some(2),
                vec![
                    cond("Ready", "False", "AuthenticationFailed"),
                    cond("Stalled", "True", "AuthenticationFailed"),
                ],
            ),
            "Degraded",
        ),
        (
            obj(
                2,
                Some(2),
                vec![
                    cond("Ready", "False", "ConnectionRefused"),
                    cond("Reconciling", "True", "ConnectionRefused"),
                ],
            ),
            "Progressing",
        ),
        (
            obj(2, Some(2), vec![cond("Ready", "False", "Disabled")]),
            "Suspended",
        ),
    ];
    for (o, expect) in cases {
        assert_eq!(health(&o, &script), expect, "{o}");
    }
    // The argocd-cm snippet carries the same script for both kinds.
    let cm: Value =
        documents(&std::fs::read_to_string(root().join("deploy/argocd/argocd-cm.yaml")).unwrap())
            .remove(0);
    let lua_text = std::fs::read_to_string(&script).unwrap();
    for kind in ["IncomingEmailServer", "OutgoingEmailServer"] {
        let key = format!("resource.customizations.health.mailroom.dev_{kind}");
        assert_eq!(cm["data"][&key].as_str(), Some(lua_text.as_str()), "{key}");
    }
}
