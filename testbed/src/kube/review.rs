//! TokenReview, answered for the tokens the test bed registered.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::handlers::{API_AUDIENCE, Call, parse_body};
use super::rbac::User;
use super::status::ApiError;

pub(super) fn token_review(users: &HashMap<String, User>, call: &Call) -> Result<Value, ApiError> {
    let review = parse_body(call)?;
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    let wanted = if wanted.is_empty() {
        vec![API_AUDIENCE.to_owned()]
    } else {
        wanted
    };
    let status = match users.get(token) {
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
        Some(user) => {
            let held: Vec<&String> = if user.audiences.is_empty() {
                vec![]
            } else {
                user.audiences.iter().collect()
            };
            let granted: Vec<&String> = wanted
                .iter()
                .filter(|a| held.contains(a) || (held.is_empty() && a.as_str() == API_AUDIENCE))
                .collect();
            if granted.is_empty() {
                json!({
                    "authenticated": false,
                    "error": format!("token audiences {:?} is invalid for the target audiences {wanted:?}", user.audiences),
                })
            } else {
                json!({
                    "authenticated": true,
                    "user": {"username": user.name, "uid": user.uid, "groups": user.groups},
                    "audiences": granted,
                })
            }
        }
    };
    Ok(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "metadata": {"creationTimestamp": null},
        "spec": review["spec"],
        "status": status,
    }))
}
