//! `crds/` holds exactly what `mailroom crd` prints, and the CRDs carry the shape the
//! design promises.

use std::path::PathBuf;
use std::process::Command;

use mailroom::api::{crd_yaml, crds};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn crds_folder_matches_generated_crds() {
    for crd in crds() {
        let name = crd.metadata.name.clone().unwrap();
        let path = root().join("crds").join(format!("{name}.yaml"));
        let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; regenerate with `cargo run -- crd --dir crds`",
                path.display()
            )
        });
        assert_eq!(
            on_disk,
            crd_yaml(&crd).unwrap(),
            "{} is stale: regenerate it with `cargo run -- crd --dir crds`",
            path.display()
        );
    }
}

#[test]
fn crd_command_prints_both_crds() {
    let out = Command::new(env!("CARGO_BIN_EXE_mailroom"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut expected = String::new();
    for crd in crds() {
        let name = crd.metadata.name.clone().unwrap();
        expected.push_str("---\n");
        expected.push_str(
            &std::fs::read_to_string(root().join("crds").join(format!("{name}.yaml"))).unwrap(),
        );
    }
    assert_eq!(text, expected);
}

fn version(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]
}

/// Every property at every depth has a description: that is what `kubectl explain` shows.
fn undescribed(schema: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            let child_path = format!("{path}.{name}");
            // apiVersion, kind and metadata are the API server's own.
            let standard =
                path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&name.as_str());
            if !standard && child.get("description").is_none() {
                out.push(child_path.clone());
            }
            undescribed(child, &child_path, out);
        }
    }
    if let Some(items) = schema.get("items") {
        undescribed(items, &format!("{path}[]"), out);
    }
}

#[test]
fn crds_have_names_columns_status_and_descriptions() {
    for (crd, short) in crds().iter().zip(["ies", "oes"]) {
        let crd = serde_json::to_value(crd).unwrap();
        assert_eq!(crd["spec"]["group"], "mailroom.dev");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["shortNames"][0], short);
        assert_eq!(crd["spec"]["names"]["categories"][0], "mailroom");
        let v = version(&crd);
        assert_eq!(v["name"], "v1alpha1");
        assert!(
            v["subresources"]["status"].is_object(),
            "no status subresource"
        );
        let columns: Vec<(&str, i64)> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap(),
                    c["priority"].as_i64().unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(
            columns,
            [
                ("Ready", 0),
                ("Reason", 0),
                ("Protocol", 0),
                ("Server", 0),
                ("Age", 0),
                ("Message", 1)
            ]
        );
        let schema = &v["schema"]["openAPIV3Schema"];
        let conditions = &schema["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(conditions["x-kubernetes-list-map-keys"][0], "type");
        let mut missing = Vec::new();
        undescribed(schema, "", &mut missing);
        assert!(
            missing.is_empty(),
            "fields without description: {missing:?}"
        );
    }
}
