//! Patches: JSON patch, JSON merge patch, strategic merge patch for
//! built-ins, and server-side apply with field ownership.

use serde_json::{Value, json};

use super::fields;
use super::handlers::{Call, State, builtin_defaults, check_type, parse_body, rv_of, schema};
use super::kinds::Kind;
use super::status::ApiError;

impl State {
    pub fn patch(&mut self, call: &Call) -> Result<Value, ApiError> {
        if call.content_type.starts_with("application/apply-patch") {
            return self.apply(call);
        }
        let old = self.existing(call)?;
        let patch = parse_body(call)?;
        let mut new = old.clone();
        if call.content_type.starts_with("application/json-patch+json") {
            let json_patch::Patch(mut ops) = serde_json::from_value(patch)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            // As in the API server's JSON patch library, `test` of a missing
            // path against null passes (kube-rs's finalizer helper relies on it).
            ops.retain(|op| match op {
                json_patch::PatchOperation::Test(t) => {
                    !(t.value.is_null() && new.pointer(t.path.as_str()).is_none())
                }
                _ => true,
            });
            json_patch::patch(&mut new, &ops).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the JSON patch cannot be applied: {e}"),
                )
            })?;
        } else if call
            .content_type
            .starts_with("application/merge-patch+json")
        {
            json_patch::merge(&mut new, &patch);
        } else if call
            .content_type
            .starts_with("application/strategic-merge-patch+json")
        {
            if call.kind.custom {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                ));
            }
            json_patch::merge(&mut new, &without_directives(patch));
        } else {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("the media type {:?} is not a patch type", call.content_type),
            ));
        }
        let new = builtin_defaults(&call.kind, new);
        if let (Some(wanted), Some(current)) = (rv_of(&new), rv_of(&old))
            && wanted != current
        {
            return Err(ApiError::conflict(
                &call.kind.group_resource(),
                call.name.as_deref().unwrap_or_default(),
            ));
        }
        self.update_with(call, &old, new)
    }

    fn apply(&mut self, call: &Call) -> Result<Value, ApiError> {
        let Some(manager) = call.query.get("fieldManager").cloned() else {
            return Err(ApiError::bad_request(
                "fieldManager is required for apply requests",
            ));
        };
        let force = call.query.get("force").is_some_and(|f| f == "true");
        let mut config = parse_body(call)?;
        check_type(&call.kind, &config)?;
        let name = call.name.clone().unwrap_or_default();
        match config["metadata"]["name"].as_str() {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
            Some(_) => {}
            None => config["metadata"]["name"] = json!(name),
        }
        let existing = self
            .store
            .get(&call.kind.group_resource(), call.ns(), &name)
            .cloned();
        if let (Some(wanted), Some(old)) = (rv_of(&config), &existing)
            && Some(wanted) != rv_of(old)
        {
            return Err(ApiError::conflict(&call.kind.group_resource(), &name));
        }
        if existing.is_none() && call.status_only() {
            return Err(ApiError::not_found(&call.kind.group_resource(), &name));
        }
        if let Some(meta) = config["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        if call.kind.status {
            if call.status_only() {
                let status = config.get("status").cloned().unwrap_or(json!({}));
                config = json!({"metadata": {"name": name}, "status": status});
            } else if let Some(map) = config.as_object_mut() {
                map.remove("status");
            }
        }
        let live = existing.clone().unwrap_or_else(|| {
            let mut skeleton = json!({
                "apiVersion": call.kind.api_version(),
                "kind": call.kind.kind,
                "metadata": {"name": name},
            });
            if call.kind.namespaced {
                skeleton["metadata"]["namespace"] = json!(call.ns());
            }
            skeleton
        });
        let (api_version, now) = call.stamp();
        let sub = call.status_only().then_some("status");
        let merged = fields::apply(
            &live,
            &config,
            schema(&call.kind),
            &manager,
            sub,
            force,
            (&api_version, &now),
        )
        .map_err(|c| conflicts(&call.kind, &name, &c.0))?;
        match existing {
            Some(old) => self.replace(call, &old, merged),
            None => {
                self.require_namespace(call)?;
                self.store_new(call, merged)
            }
        }
    }
}

/// Strategic merge patch directives (`$setElementOrder/…`, `$retainKeys`,
/// `$patch`, `$deleteFromPrimitiveList/…`) dropped: for the map-shaped
/// built-ins served here the rest merges like a JSON merge patch.
fn without_directives(patch: Value) -> Value {
    match patch {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k, without_directives(v)))
                .collect(),
        ),
        other => other,
    }
}

fn conflicts(kind: &Kind, name: &str, list: &[(String, String)]) -> ApiError {
    let causes: Vec<Value> = list
        .iter()
        .map(|(manager, field)| {
            json!({"type": "FieldManagerConflict", "message": format!("conflict with {manager:?}"), "field": field})
        })
        .collect();
    let described: Vec<String> = list
        .iter()
        .map(|(manager, field)| format!("conflict with {manager:?}: {field}"))
        .collect();
    let n = list.len();
    let plural = if n == 1 { "" } else { "s" };
    ApiError::new(
        409,
        "Conflict",
        format!(
            "Apply failed with {n} conflict{plural}: {}",
            described.join("\n")
        ),
    )
    .with_details(json!({"name": name, "group": kind.group, "kind": kind.plural, "causes": causes}))
}
