//! Validation of a manifest as the API server would do it: schema defaults, the
//! OpenAPI schema of the generated CRD, then its CEL `x-kubernetes-validations`.
//! Standalone mode uses it in place of an API server; tests use it to prove that
//! the rules in the CRDs reject what they should.

use std::fmt;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

use super::crds;

/// One problem with one field of a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `spec.auth.passwordSecretRef` or `spec.filter.domains[0]`.
    pub field: String,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error(
        "kind {kind:?} of apiVersion {api_version:?} is not a mailroom resource; expected IncomingEmailServer or OutgoingEmailServer of mailroom.dev/v1alpha1"
    )]
    UnknownKind { api_version: String, kind: String },
    #[error("{}", join(.0))]
    Invalid(Vec<FieldError>),
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The generated schema of a CRD could not be compiled: a bug in mailroom itself.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("CRD {crd} has no openAPIV3Schema")]
    Missing { crd: String },
    #[error("CRD {crd} does not serialise to JSON: {source}")]
    Json {
        crd: String,
        source: serde_json::Error,
    },
    #[error("the OpenAPI schema of CRD {crd} does not compile: {message}")]
    Schema { crd: String, message: String },
    #[error("a CEL rule of CRD {crd} does not compile: {message}")]
    Cel { crd: String, message: String },
}

struct KindSchema {
    api_version: String,
    kind: String,
    schema: Value,
    json_schema: jsonschema::Validator,
    cel: kube_cel::CompiledSchema,
}

/// Validates manifests of both kinds against the CRDs that `mailroom crd` prints.
pub struct ManifestValidator {
    kinds: Vec<KindSchema>,
    cel: kube_cel::Validator,
}

impl fmt::Debug for ManifestValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManifestValidator").finish_non_exhaustive()
    }
}

impl ManifestValidator {
    /// Compiles the schemas and CEL rules of both CRDs once.
    pub fn new() -> Result<Self, SchemaError> {
        Self::for_crds(&crds())
    }

    /// The same validation for any CRDs: what an API server holding them would
    /// admit (the test bed's API server admits with it).
    pub fn for_crds(crds: &[CustomResourceDefinition]) -> Result<Self, SchemaError> {
        let kinds = crds
            .iter()
            .map(compile_crd)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            kinds,
            cel: kube_cel::Validator::new(),
        })
    }

    /// Validates one object (a parsed YAML document). On success returns it with
    /// the schema defaults applied, as an API server would store it.
    pub fn validate(&self, object: &Value) -> Result<Value, ValidationError> {
        let api_version = str_at(object, "apiVersion");
        let kind = str_at(object, "kind");
        let Some(target) = self
            .kinds
            .iter()
            .find(|k| k.api_version == api_version && k.kind == kind)
        else {
            return Err(ValidationError::UnknownKind {
                api_version: api_version.to_owned(),
                kind: kind.to_owned(),
            });
        };

        let defaulted = kube_cel::apply_defaults(&target.schema, object);
        let mut errors = metadata_errors(&defaulted);
        errors.extend(
            prune_unknown_fields(&target.schema, &mut defaulted.clone())
                .into_iter()
                .map(|field| FieldError {
                    field,
                    message: "unknown field: check its spelling against `kubectl explain`".into(),
                }),
        );
        errors.extend(target.json_schema.iter_errors(&defaulted).map(|e| {
            let mut field = pointer_to_path(e.instance_path().as_str());
            if let jsonschema::error::ValidationErrorKind::Required { property } = e.kind() {
                let name = property.as_str().unwrap_or_default();
                field = if field.is_empty() {
                    name.to_owned()
                } else {
                    format!("{field}.{name}")
                };
                return FieldError {
                    field,
                    message: "required field is missing".into(),
                };
            }
            FieldError {
                field,
                message: e.to_string(),
            }
        }));
        // Like the API server, CEL rules run only on an object that fits the schema:
        // they assume the types it declares.
        if errors.is_empty()
            && let Err(cel_errors) = self.cel.validate_compiled(&target.cel, &defaulted, None)
        {
            errors.extend(cel_errors.into_vec().into_iter().map(|e| FieldError {
                field: e.field_path.trim_start_matches('.').to_owned(),
                message: e.message,
            }));
        }
        if errors.is_empty() {
            Ok(defaulted)
        } else {
            Err(ValidationError::Invalid(errors))
        }
    }
}

fn compile_crd(crd: &CustomResourceDefinition) -> Result<KindSchema, SchemaError> {
    let crd_name = crd.metadata.name.clone().unwrap_or_default();
    let version = crd
        .spec
        .versions
        .iter()
        .find(|v| v.storage)
        .or(crd.spec.versions.first());
    let schema = version
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .ok_or_else(|| SchemaError::Missing {
            crd: crd_name.clone(),
        })?;
    let schema = serde_json::to_value(schema).map_err(|source| SchemaError::Json {
        crd: crd_name.clone(),
        source,
    })?;
    let json_schema = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(true)
        .build(&schema)
        .map_err(|e| SchemaError::Schema {
            crd: crd_name.clone(),
            message: e.to_string(),
        })?;
    let cel = kube_cel::compile_schema(&schema);
    if let Some(e) = cel.compilation_errors().first() {
        return Err(SchemaError::Cel {
            crd: crd_name,
            message: e.to_string(),
        });
    }
    Ok(KindSchema {
        api_version: format!(
            "{}/{}",
            crd.spec.group,
            version.map(|v| v.name.as_str()).unwrap_or_default()
        ),
        kind: crd.spec.names.kind.clone(),
        schema,
        json_schema,
        cel,
    })
}

fn str_at<'a>(object: &'a Value, key: &str) -> &'a str {
    object.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// The API server checks object names itself; the CRD schema does not cover metadata.
fn metadata_errors(object: &Value) -> Vec<FieldError> {
    let name = object.pointer("/metadata/name").and_then(Value::as_str);
    match name {
        None => vec![FieldError {
            field: "metadata.name".into(),
            message: "required field is missing".into(),
        }],
        Some(n) if !is_dns_subdomain(n) => vec![FieldError {
            field: "metadata.name".into(),
            message: format!(
                "{n:?} is not a valid name: lower-case letters, digits, '-' and '.', at most 253 characters, starting and ending with a letter or digit"
            ),
        }],
        Some(_) => Vec::new(),
    }
}

fn is_dns_subdomain(name: &str) -> bool {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    name.len() <= 253
        && edge_ok(name.chars().next())
        && edge_ok(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// Removes the fields the schema does not declare and returns their paths.
/// An API server prunes them (or, under strict field validation as `kubectl
/// apply` asks, refuses them); here they are refused, because a misspelt field
/// would otherwise be lost without a word.
pub fn prune_unknown_fields(schema: &Value, value: &mut Value) -> Vec<String> {
    let mut pruned = Vec::new();
    prune(schema, value, "", &mut pruned);
    pruned
}

fn prune(schema: &Value, value: &mut Value, path: &str, pruned: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            if properties.is_none() && additional.is_none() {
                return;
            }
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                // The API server declares these itself; the CRD schema leaves them out.
                if path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&key.as_str()) {
                    continue;
                }
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (
                    properties.and_then(|p| p.get(&key)).or(additional),
                    map.get_mut(&key),
                ) {
                    (Some(child_schema), Some(child)) => {
                        prune(child_schema, child, &child_path, pruned)
                    }
                    _ => {
                        map.remove(&key);
                        pruned.push(child_path);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item_schema, item, &format!("{path}[{i}]"), pruned);
                }
            }
        }
        _ => {}
    }
}

/// `/spec/filter/domains/0` → `spec.filter.domains[0]`.
fn pointer_to_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.parse::<usize>().is_ok() {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&segment);
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_becomes_dotted_path() {
        assert_eq!(
            pointer_to_path("/spec/filter/domains/0"),
            "spec.filter.domains[0]"
        );
        assert_eq!(pointer_to_path(""), "");
        assert_eq!(pointer_to_path("/a~1b/c~0d"), "a/b.c~d");
    }

    #[test]
    fn names_follow_rfc1123() {
        assert!(is_dns_subdomain("gmail-support.v1"));
        assert!(!is_dns_subdomain("Gmail"));
        assert!(!is_dns_subdomain("-x"));
        assert!(!is_dns_subdomain(""));
    }
}
