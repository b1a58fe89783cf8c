//! Admission of custom resources as the API server does it: unknown fields
//! pruned (or refused under strict field validation), then schema defaults,
//! the OpenAPI schema and the CEL rules of the installed CRDs — with the very
//! validator mailroom's standalone mode uses.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use mailroom::api::validation::{ManifestValidator, ValidationError, prune_unknown_fields};
use serde_json::Value;

use super::kinds::Kind;
use super::status::ApiError;

pub(crate) struct Admission {
    validator: Result<ManifestValidator, String>,
}

impl Admission {
    pub fn for_crds<'a>(crds: impl IntoIterator<Item = &'a Value>) -> Self {
        let typed: Result<Vec<CustomResourceDefinition>, String> = crds
            .into_iter()
            .map(|c| serde_json::from_value(c.clone()).map_err(|e| e.to_string()))
            .collect();
        let validator =
            typed.and_then(|t| ManifestValidator::for_crds(&t).map_err(|e| e.to_string()));
        Self { validator }
    }

    /// The object as it will be stored (pruned, defaulted), or why not.
    pub fn admit(&self, kind: &Kind, mut object: Value, strict: bool) -> Result<Value, ApiError> {
        if !kind.custom {
            return Ok(object);
        }
        let unknown = kind
            .schema
            .as_ref()
            .map(|schema| prune_unknown_fields(schema, &mut object))
            .unwrap_or_default();
        if strict && !unknown.is_empty() {
            let fields: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field {f:?}"))
                .collect();
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                fields.join(", ")
            )));
        }
        let validator = self
            .validator
            .as_ref()
            .map_err(|e| ApiError::new(500, "InternalError", format!("CRD schemas: {e}")))?;
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match validator.validate(&object) {
            Ok(defaulted) => Ok(defaulted),
            Err(ValidationError::Invalid(errors)) => {
                let causes: Vec<(String, String)> =
                    errors.into_iter().map(|e| (e.field, e.message)).collect();
                Err(ApiError::invalid(&kind.kind, &kind.group, &name, &causes))
            }
            Err(e) => Err(ApiError::bad_request(e.to_string())),
        }
    }
}
