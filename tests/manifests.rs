//! The examples stay valid and the CRD rules reject what they should: every example
//! is validated against the generated CRD (schema and CEL) and deserialised into the
//! Rust types; every bad fixture is rejected with its field named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use mailroom::api::validation::{ManifestValidator, ValidationError};
use mailroom::api::{IncomingEmailServer, OutgoingEmailServer, SecretKeyRef};
use serde::Deserialize;
use serde_json::Value;

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_example_is_valid_and_its_secrets_exist() {
    let validator = ManifestValidator::new().unwrap();
    let files = yaml_files(&root().join("examples"));
    assert!(files.len() >= 4, "examples missing: {files:?}");

    let mut secrets: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut references: Vec<(PathBuf, String, SecretKeyRef)> = Vec::new();
    let mut kinds = BTreeSet::new();
    for file in &files {
        for doc in documents(file) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let namespace = doc["metadata"]["namespace"].as_str().unwrap().to_owned();
            match kind.as_str() {
                "Secret" => {
                    let secret: Secret = serde_json::from_value(doc).unwrap();
                    let keys = secret.string_data.unwrap_or_default().into_keys();
                    secrets.insert((namespace, secret.metadata.name.unwrap()), keys.collect());
                }
                "IncomingEmailServer" => {
                    let defaulted = validator
                        .validate(&doc)
                        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                    let ies: IncomingEmailServer = serde_json::from_value(defaulted).unwrap();
                    let spec = &ies.spec;
                    let mut refs: Vec<SecretKeyRef> =
                        spec.auth.password_secret_ref.iter().cloned().collect();
                    if let Some(o) = &spec.auth.oauth2 {
                        refs.push(SecretKeyRef {
                            name: o.secret_ref.name.clone(),
                            key: o.refresh_token_key.clone(),
                        });
                    }
                    if let Some(w) = spec.ticket.sink.as_ref().and_then(|s| s.webhook.as_ref()) {
                        refs.extend(w.signing_secret_ref.iter().cloned());
                    }
                    if let Some(rt) = spec
                        .ticket
                        .sink
                        .as_ref()
                        .and_then(|s| s.request_tracker.as_ref())
                    {
                        refs.push(rt.token_secret_ref.clone());
                    }
                    references.extend(
                        refs.into_iter()
                            .map(|r| (file.clone(), namespace.clone(), r)),
                    );
                    kinds.insert(format!("{kind}/{:?}", spec.protocol));
                }
                "OutgoingEmailServer" => {
                    let defaulted = validator
                        .validate(&doc)
                        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                    let oes: OutgoingEmailServer = serde_json::from_value(defaulted).unwrap();
                    let auth = &oes.spec.authentication;
                    let mut refs: Vec<SecretKeyRef> =
                        auth.password_secret_ref.iter().cloned().collect();
                    if let Some(o) = &auth.oauth2 {
                        refs.push(SecretKeyRef {
                            name: o.secret_ref.name.clone(),
                            key: o.client_id_key.clone(),
                        });
                    }
                    references.extend(
                        refs.into_iter()
                            .map(|r| (file.clone(), namespace.clone(), r)),
                    );
                    kinds.insert(kind);
                }
                other => panic!("{}: unexpected kind {other}", file.display()),
            }
        }
    }
    for (file, namespace, r) in references {
        let keys = secrets
            .get(&(namespace.clone(), r.name.clone()))
            .unwrap_or_else(|| {
                panic!(
                    "{}: Secret {namespace}/{} is not in examples/",
                    file.display(),
                    r.name
                )
            });
        assert!(
            keys.contains(&r.key),
            "{}: Secret {} has no key {}",
            file.display(),
            r.name,
            r.key
        );
    }
    for expected in [
        "IncomingEmailServer/Imap",
        "IncomingEmailServer/Pop3",
        "OutgoingEmailServer",
    ] {
        assert!(
            kinds.contains(expected),
            "no example of {expected}: {kinds:?}"
        );
    }
}

#[test]
fn schema_defaults_are_applied_but_provider_defaults_stay_out_of_spec() {
    let validator = ManifestValidator::new().unwrap();
    let doc = &documents(&root().join("examples/gmail-pop3.yaml"))[1];
    let defaulted = validator.validate(doc).unwrap();
    let spec = &defaulted["spec"];
    assert_eq!(spec["enabled"], true);
    assert_eq!(spec["mailbox"], "INBOX");
    assert_eq!(spec["mode"], "Active");
    assert_eq!(spec["maxMessageSize"], "25Mi");
    assert_eq!(spec["auth"]["type"], "Basic");
    // Server and port depend on other fields: the operator computes them and shows
    // them in status; the schema never writes them into spec.
    assert!(spec.get("server").is_none());
    assert!(spec.get("port").is_none());
}

#[test]
fn every_bad_fixture_is_rejected_with_its_field_named() {
    let validator = ManifestValidator::new().unwrap();
    let files = yaml_files(&root().join("tests/fixtures/invalid"));
    assert!(files.len() >= 30, "fixtures missing: {}", files.len());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let header = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
                .unwrap_or_else(|| panic!("{}: no `# {key}:` line", file.display()))
                .to_owned()
        };
        let (field, message) = (header("expect-field"), header("expect-message"));
        let doc = &documents(&file)[0];
        match validator.validate(doc) {
            Ok(_) => panic!("{}: accepted, expected {field}: {message}", file.display()),
            Err(ValidationError::Invalid(errors)) => assert!(
                errors
                    .iter()
                    .any(|e| e.field == field && e.message.contains(&message)),
                "{}: expected {field}: …{message}…, got {errors:?}",
                file.display()
            ),
            Err(other) => panic!("{}: {other}", file.display()),
        }
    }
}

#[test]
fn unknown_kinds_are_named() {
    let validator = ManifestValidator::new().unwrap();
    let doc =
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
    let err = validator.validate(&doc).unwrap_err();
    assert!(matches!(err, ValidationError::UnknownKind { .. }));
    assert!(err.to_string().contains("ConfigMap"), "{err}");
}

#[test]
fn the_local_example_folder_loads_without_problems() {
    use mailroom::resolve::SecretSource;
    use mailroom::standalone::manifests::load_dir;
    let validator = ManifestValidator::new().unwrap();
    let snapshot = load_dir(&root().join("examples/local"), &validator).unwrap();
    assert!(snapshot.problems.is_empty(), "{:?}", snapshot.problems);
    assert_eq!((snapshot.incoming.len(), snapshot.outgoing.len()), (1, 1));
    let secrets = snapshot.secrets_in("helpdesk");
    for i in snapshot.incoming.values() {
        let r = i.object.spec.auth.password_secret_ref.as_ref().unwrap();
        assert!(secrets.get(&r.name, &r.key).is_ok(), "{r:?}");
        // The CA Secret is written by scripts/mail-servers start.
        let ca = i
            .object
            .spec
            .tls
            .as_ref()
            .unwrap()
            .ca_secret_ref
            .as_ref()
            .unwrap();
        assert_eq!(ca.name, "local-mail-ca");
    }
    for o in snapshot.outgoing.values() {
        let r = o
            .object
            .spec
            .authentication
            .password_secret_ref
            .as_ref()
            .unwrap();
        assert!(secrets.get(&r.name, &r.key).is_ok(), "{r:?}");
    }
}
