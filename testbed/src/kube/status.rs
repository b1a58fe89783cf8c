//! Failures in the shape the API server answers them: a `Status` object whose
//! reason and code clients (kube-rs, kubectl) act on.

use serde_json::{Value, json};

#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: Value::Null,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn not_found(group_resource: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{group_resource} {name:?} not found"))
            .with_details(json!({"name": name, "kind": kind_part(group_resource), "group": group_part(group_resource)}))
    }

    pub fn already_exists(group_resource: &str, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{group_resource} {name:?} already exists"))
            .with_details(json!({"name": name, "kind": kind_part(group_resource), "group": group_part(group_resource)}))
    }

    pub fn conflict(group_resource: &str, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {group_resource} {name:?}: the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
        .with_details(json!({"name": name, "kind": kind_part(group_resource), "group": group_part(group_resource)}))
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 422 with one cause per field, as admission answers.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: &[(String, String)]) -> Self {
        let described: Vec<String> = causes
            .iter()
            .map(|(field, message)| {
                if field.is_empty() {
                    message.clone()
                } else {
                    format!("{field}: Invalid value: {message}")
                }
            })
            .collect();
        let qualified = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        let message = match described.as_slice() {
            [one] => format!("{qualified} {name:?} is invalid: {one}"),
            many => format!("{qualified} {name:?} is invalid: [{}]", many.join(", ")),
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|(field, message)| json!({"reason": "FieldValueInvalid", "message": message, "field": field}))
            .collect();
        Self::new(422, "Invalid", message).with_details(json!({
            "name": name, "group": group, "kind": kind, "causes": causes,
        }))
    }

    pub fn body(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !self.details.is_null() {
            status["details"] = self.details.clone();
        }
        status
    }
}

fn kind_part(group_resource: &str) -> &str {
    group_resource.split('.').next().unwrap_or_default()
}

fn group_part(group_resource: &str) -> &str {
    group_resource
        .split_once('.')
        .map(|(_, g)| g)
        .unwrap_or_default()
}
