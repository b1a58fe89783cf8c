//! `testbed kube-api` as a process, driven only by the real kubectl: it prints
//! when ready, serves both CRDs with their printer columns, refuses what the
//! chart's RBAC refuses, takes faults through its controls, and keeps its
//! objects across a restart with `--state`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the double and waits for its ready line.
fn start(dir: &Path) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .arg("kube-api")
        .arg("--kubeconfig-out")
        .arg(dir.join("admin.kubeconfig"))
        .arg("--crds")
        .arg(repo().join("crds"))
        .arg("--rbac")
        .arg(repo().join("deploy/install.yaml"))
        .arg("--state")
        .arg(dir)
        .arg("--service-account")
        .arg(format!(
            "mailroom/mailroom={}",
            dir.join("mailroom.kubeconfig").display()
        ))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("kube-api ready at https://127.0.0.1:"),
        "{line}"
    );
    Process { child }
}

fn kubectl(dir: &Path, config: &str, args: &[&str], stdin: Option<&str>) -> Output {
    testbed::kube::kubectl(&dir.join(config), args, stdin).unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const MANIFESTS: &str = r#"apiVersion: v1
kind: Namespace
metadata: {name: helpdesk}
---
apiVersion: v1
kind: Secret
metadata: {name: gmail, namespace: helpdesk}
stringData: {password: abcd efgh ijkl mnop}
---
apiVersion: mailroom.dev/v1alpha1
kind: IncomingEmailServer
metadata: {name: support, namespace: helpdesk}
spec:
  email: support@example.com
  provider: Gmail
  auth: {passwordSecretRef: {name: gmail, key: password}}
---
apiVersion: mailroom.dev/v1alpha1
kind: OutgoingEmailServer
metadata: {name: replies, namespace: helpdesk}
spec:
  email: support@example.com
  provider: Gmail
  authentication: {passwordSecretRef: {name: gmail, key: password}}
"#;

#[test]
fn kubectl_drives_the_double_as_a_process_and_its_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let admin = "admin.kubeconfig";
    {
        let _api = start(d);
        let applied = ok(kubectl(d, admin, &["apply", "-f", "-"], Some(MANIFESTS)));
        assert!(
            applied.contains("incomingemailserver.mailroom.dev/support created"),
            "{applied}"
        );
        let again = ok(kubectl(d, admin, &["apply", "-f", "-"], Some(MANIFESTS)));
        assert!(
            again.contains("incomingemailserver.mailroom.dev/support unchanged"),
            "{again}"
        );
        let server_side = ok(kubectl(
            d,
            admin,
            &["apply", "--server-side", "-f", "-"],
            Some(MANIFESTS),
        ));
        assert!(
            server_side.contains("incomingemailserver.mailroom.dev/support serverside-applied"),
            "{server_side}"
        );

        let table = ok(kubectl(d, admin, &["get", "ies,oes", "-A"], None));
        assert!(
            table.contains("READY") && table.contains("PROTOCOL"),
            "{table}"
        );
        assert!(
            table.contains("support") && table.contains("replies"),
            "{table}"
        );
        let yaml = ok(kubectl(
            d,
            admin,
            &["get", "ies", "support", "-n", "helpdesk", "-o", "yaml"],
            None,
        ));
        // Defaults from the CRD schema, as admission applied them.
        assert!(yaml.contains("mailbox: INBOX"), "{yaml}");
        let secret = ok(kubectl(
            d,
            admin,
            &[
                "get",
                "secret",
                "gmail",
                "-n",
                "helpdesk",
                "-o",
                "jsonpath={.data.password}",
            ],
            None,
        ));
        assert_eq!(secret, "YWJjZCBlZmdoIGlqa2wgbW5vcA==");

        // The chart's ServiceAccount may read, not delete.
        let sa = "mailroom.kubeconfig";
        ok(kubectl(d, sa, &["get", "ies", "-A"], None));
        let refused = kubectl(d, sa, &["delete", "oes", "replies", "-n", "helpdesk"], None);
        assert!(!refused.status.success());
        assert!(
            String::from_utf8_lossy(&refused.stderr)
                .contains("cannot delete resource \"outgoingemailservers\"")
        );

        // A fault set through the controls hits the named user only.
        let fault = d.join("fault.json");
        std::fs::write(
            &fault,
            r#"{"user": "system:serviceaccount:mailroom:mailroom", "fail": 1}"#,
        )
        .unwrap();
        ok(kubectl(
            d,
            admin,
            &[
                "create",
                "--raw",
                "/testbed/faults",
                "-f",
                fault.to_str().unwrap(),
            ],
            None,
        ));
        ok(kubectl(d, admin, &["get", "ies", "-A"], None));
        let failed = kubectl(d, sa, &["get", "ies", "-A"], None);
        assert!(String::from_utf8_lossy(&failed.stderr).contains("InternalError"));
        ok(kubectl(d, sa, &["get", "ies", "-A"], None));

        ok(kubectl(
            d,
            admin,
            &["delete", "oes", "replies", "-n", "helpdesk"],
            None,
        ));
    }
    let _api = start(d);
    let after = ok(kubectl(
        d,
        admin,
        &["get", "ies,oes", "-A", "-o", "name"],
        None,
    ));
    assert_eq!(after.trim(), "incomingemailserver.mailroom.dev/support");
}
