//! Reading a manifests folder: every `*.yaml`/`*.yml` file directly in it,
//! every document in each, validated exactly as the API server would with the
//! CRDs (schema, defaults, CEL). A bad document is reported with its file,
//! document number and field; the rest of the folder still loads.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use crate::api::validation::{ManifestValidator, ValidationError};
use crate::api::{IncomingEmailServer, OutgoingEmailServer};
use mailroom_core::vocab::ResourceId;

/// Namespace of a manifest without `metadata.namespace`, as kubectl would use.
pub(crate) const DEFAULT_NAMESPACE: &str = "default";

/// `(namespace, name)`.
pub(crate) type Key = ResourceId;

/// One document that could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based number of the document in its file.
    pub document: usize,
    /// The field at fault, e.g. `spec.port`; empty when the whole document is.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {})", self.file.display(), self.document)?;
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A resource as read, and the file it came from.
#[derive(Clone, Debug)]
pub struct Loaded<T> {
    pub object: T,
    pub file: PathBuf,
}

pub(crate) use crate::runtime::{Data, Lookup};

/// Everything read from the folder at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub incoming: BTreeMap<Key, Loaded<IncomingEmailServer>>,
    pub outgoing: BTreeMap<Key, Loaded<OutgoingEmailServer>>,
    /// Secrets by namespace, then name.
    pub secrets: BTreeMap<String, BTreeMap<String, Data>>,
    /// ConfigMaps by namespace, then name.
    pub config_maps: BTreeMap<String, BTreeMap<String, Data>>,
    pub problems: Vec<Problem>,
    /// Documents of other kinds, skipped: `(file, document, apiVersion/kind)`.
    pub ignored: Vec<(PathBuf, usize, String)>,
}

impl Snapshot {
    /// Files with at least one bad document.
    pub(crate) fn files_with_problems(&self) -> BTreeSet<PathBuf> {
        self.problems.iter().map(|p| p.file.clone()).collect()
    }

    /// Secrets of one namespace, for resolving a spec.
    pub fn secrets_in(&self, namespace: &str) -> Lookup<'_> {
        Lookup::new(self.secrets.get(namespace), "Secret")
    }

    pub(crate) fn config_maps_in(&self, namespace: &str) -> Lookup<'_> {
        Lookup::new(self.config_maps.get(namespace), "ConfigMap")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the manifests folder {path}: {message}")]
    Folder { path: String, message: String },
    #[error("{0}")]
    Schema(#[from] crate::api::validation::SchemaError),
}

/// The YAML files directly in `dir`, sorted; hidden files are skipped (the
/// status, tickets and state folders live there).
pub(crate) fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LoadError::Folder {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_manifest(p) && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Whether a path names a manifest file (by name only).
pub(crate) fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    !hidden && path.extension().is_some_and(|x| x == "yaml" || x == "yml")
}

/// Reads the folder.
pub fn load_dir(dir: &Path, validator: &ManifestValidator) -> Result<Snapshot, LoadError> {
    let files = manifest_files(dir)?;
    Ok(load_files(&files, validator))
}

/// Reads the given files into one snapshot.
pub(crate) fn load_files(files: &[PathBuf], validator: &ManifestValidator) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for file in files {
        load_file(file, validator, &mut snapshot);
    }
    snapshot
}

fn load_file(file: &Path, validator: &ManifestValidator, out: &mut Snapshot) {
    match std::fs::read_to_string(file) {
        Ok(text) => load_text(file, &text, validator, out),
        Err(e) => out.problems.push(Problem {
            file: file.to_owned(),
            document: 0,
            field: String::new(),
            message: format!("cannot read: {e}"),
        }),
    }
}

/// Reads the documents of one file's text (named `file` in problems) into
/// `out`. Any text gives problems, never a panic (a fuzz target holds it to
/// that).
pub fn load_text(file: &Path, text: &str, validator: &ManifestValidator, out: &mut Snapshot) {
    let problem = |document: usize, field: &str, message: String| Problem {
        file: file.to_owned(),
        document,
        field: field.to_owned(),
        message,
    };
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let value = match Value::deserialize(doc) {
            Ok(Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                out.problems
                    .push(problem(n, "", format!("not valid YAML: {e}")));
                // The parser cannot go on past a syntax error.
                return;
            }
        };
        let api_version = value["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        let result = match (api_version.as_str(), kind.as_str()) {
            ("mailroom.dev/v1alpha1", "IncomingEmailServer" | "OutgoingEmailServer") => {
                resource(&value, validator, file, out)
            }
            ("v1", "Secret") => data_object(&value, true).map(|(key, data)| {
                out.secrets
                    .entry(key.namespace)
                    .or_default()
                    .insert(key.name, data);
            }),
            ("v1", "ConfigMap") => data_object(&value, false).map(|(key, data)| {
                out.config_maps
                    .entry(key.namespace)
                    .or_default()
                    .insert(key.name, data);
            }),
            _ => {
                tracing::warn!(
                    file = %file.display(), document = n,
                    "ignoring {api_version}/{kind}: mailroom reads IncomingEmailServer, OutgoingEmailServer, Secret and ConfigMap"
                );
                out.ignored
                    .push((file.to_owned(), n, format!("{api_version}/{kind}")));
                Ok(())
            }
        };
        if let Err(errors) = result {
            out.problems.extend(
                errors
                    .into_iter()
                    .map(|(field, message)| problem(n, &field, message)),
            );
        }
    }
}

/// The Secrets a manifest file's text defines; documents that do not parse are
/// skipped (the loader reports them).
pub(crate) fn secrets_in_text(text: &str) -> Vec<(Key, Data)> {
    serde_yaml::Deserializer::from_str(text)
        .map_while(|doc| Value::deserialize(doc).ok())
        .filter(|v| v["apiVersion"] == "v1" && v["kind"] == "Secret")
        .filter_map(|v| data_object(&v, true).ok())
        .collect()
}

type FieldErrors = Vec<(String, String)>;

fn resource(
    value: &Value,
    validator: &ManifestValidator,
    file: &Path,
    out: &mut Snapshot,
) -> Result<(), FieldErrors> {
    let defaulted = validator.validate(value).map_err(|e| match e {
        ValidationError::Invalid(errors) => {
            errors.into_iter().map(|e| (e.field, e.message)).collect()
        }
        other => vec![(String::new(), other.to_string())],
    })?;
    let decode_error = |e: serde_json::Error| vec![(String::new(), e.to_string())];
    let kind = defaulted["kind"].as_str().unwrap_or_default().to_owned();
    let kind = kind.as_str();
    if kind == "IncomingEmailServer" {
        let mut object: IncomingEmailServer =
            serde_json::from_value(defaulted).map_err(decode_error)?;
        let key = key_of(&mut object.metadata);
        duplicate(&out.incoming, &key, kind)?;
        out.incoming.insert(
            key,
            Loaded {
                object,
                file: file.to_owned(),
            },
        );
    } else {
        let mut object: OutgoingEmailServer =
            serde_json::from_value(defaulted).map_err(decode_error)?;
        let key = key_of(&mut object.metadata);
        duplicate(&out.outgoing, &key, kind)?;
        out.outgoing.insert(
            key,
            Loaded {
                object,
                file: file.to_owned(),
            },
        );
    }
    Ok(())
}

fn duplicate<T>(map: &BTreeMap<Key, Loaded<T>>, key: &Key, kind: &str) -> Result<(), FieldErrors> {
    match map.get(key) {
        Some(first) => Err(vec![(
            "metadata.name".into(),
            format!(
                "{kind} {}/{} is already defined in {}; names are unique per kind and namespace",
                key.namespace,
                key.name,
                first.file.display()
            ),
        )]),
        None => Ok(()),
    }
}

/// The namespace (defaulted) and name; the namespace is written back.
fn key_of(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    let ns = meta
        .namespace
        .get_or_insert_with(|| DEFAULT_NAMESPACE.to_owned())
        .clone();
    ResourceId::new(ns, meta.name.clone().unwrap_or_default())
}

/// A Secret (`data` base64 and `stringData`) or a ConfigMap (`data` text and
/// `binaryData` base64).
fn data_object(value: &Value, secret: bool) -> Result<(Key, Data), FieldErrors> {
    let name = value["metadata"]["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        return Err(vec![(
            "metadata.name".into(),
            "required field is missing".into(),
        )]);
    }
    let ns = value["metadata"]["namespace"]
        .as_str()
        .unwrap_or(DEFAULT_NAMESPACE);
    let (encoded, plain) = if secret {
        ("data", "stringData")
    } else {
        ("binaryData", "data")
    };
    let mut data = Data::new();
    let mut errors = Vec::new();
    if let Some(map) = value[encoded].as_object() {
        for (k, v) in map {
            let decoded = v
                .as_str()
                .map(|s| base64::engine::general_purpose::STANDARD.decode(s.trim()));
            match decoded {
                Some(Ok(bytes)) => {
                    data.insert(k.clone(), bytes);
                }
                _ => errors.push((format!("{encoded}.{k}"), "not base64 text".to_owned())),
            }
        }
    }
    if let Some(map) = value[plain].as_object() {
        for (k, v) in map {
            match v.as_str() {
                Some(s) => {
                    data.insert(k.clone(), s.as_bytes().to_vec());
                }
                None => errors.push((format!("{plain}.{k}"), "must be a string".to_owned())),
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok((ResourceId::new(ns, name), data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::SecretSource;

    const GOOD: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: mail, namespace: helpdesk}
data: {password: c3VwcG9ydGFwcHBhc3N3ZA==}
stringData: {other: plain}
---
apiVersion: mailroom.dev/v1alpha1
kind: IncomingEmailServer
metadata: {name: support, namespace: helpdesk}
spec:
  email: support@example.com
  provider: Gmail
  auth: {passwordSecretRef: {name: mail, key: password}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
---
apiVersion: mailroom.dev/v1alpha1
kind: OutgoingEmailServer
metadata: {name: out}
spec:
  email: support@example.com
  provider: Gmail
  port: 99999
  authentication: {passwordSecretRef: {name: mail, key: password}}
"#;

    #[test]
    fn loads_good_documents_and_names_the_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "not: [valid").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let validator = ManifestValidator::new().unwrap();
        let s = load_dir(dir.path(), &validator).unwrap();
        let key = ResourceId::new("helpdesk", "support");
        assert!(s.incoming.contains_key(&key));
        let secret = &s.secrets["helpdesk"]["mail"];
        assert_eq!(secret["password"], b"supportapppasswd");
        assert_eq!(secret["other"], b"plain");
        assert_eq!(s.ignored.len(), 1);
        assert!(s.outgoing.is_empty());
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        let p = &s.problems[0];
        assert_eq!((p.document, p.field.as_str()), (4, "spec.port"));
        assert!(
            p.to_string().contains("a.yaml (document 4): spec.port"),
            "{p}"
        );
        let found = s.secrets_in("helpdesk").get("mail", "password").unwrap();
        assert_eq!(found, b"supportapppasswd");
        assert!(
            s.secrets_in("default").get("mail", "password").is_err(),
            "same namespace only"
        );
    }
}
