//! The verbs on stored objects: get, list, create, update, patch (JSON, merge,
//! strategic, apply), delete — with resourceVersion preconditions, the status
//! subresource, generation, finalizers, namespaces, admission and ownership.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::{Value, json};

use super::admission::Admission;
use super::fields::{self, Schema};
use super::kinds::{Kind, Kinds};
use super::rbac::{Rbac, User};
use super::render::Render;
use super::select::Selector;
use super::status::ApiError;
use super::store::Store;

pub(crate) const CRDS: &str = "customresourcedefinitions.apiextensions.k8s.io";
const NAMESPACES: &str = "namespaces";
/// The API server's own audience, implied by a TokenReview that names none.
pub(crate) const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

pub(crate) struct State {
    pub kinds: Kinds,
    pub store: Store,
    pub rbac: Rbac,
    /// Bearer token → user.
    pub users: HashMap<String, User>,
    pub admission: Admission,
    pub state_file: Option<PathBuf>,
}

/// One resource request, parsed.
pub(crate) struct Call {
    pub verb: String,
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: String,
    pub query: HashMap<String, String>,
    pub body: Vec<u8>,
    pub content_type: String,
    pub render: Render,
    pub user: User,
    /// The bearer token: faults can single out one client of a shared user.
    pub token: String,
    pub user_agent: String,
}

impl Call {
    pub(super) fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or_default()
    }

    pub(super) fn manager(&self) -> String {
        self.query.get("fieldManager").cloned().unwrap_or_else(|| {
            self.user_agent
                .split('/')
                .next()
                .unwrap_or("unknown")
                .to_owned()
        })
    }

    pub(super) fn dry_run(&self) -> bool {
        self.query.get("dryRun").is_some_and(|d| d == "All")
    }

    pub(super) fn strict(&self) -> bool {
        self.query
            .get("fieldValidation")
            .is_some_and(|v| v == "Strict")
    }

    pub(super) fn status_only(&self) -> bool {
        self.subresource == "status"
    }

    /// The request's label and field selectors.
    pub(super) fn selector(&self) -> Result<Selector, ApiError> {
        Selector::parse(
            self.query.get("labelSelector").map(String::as_str),
            self.query.get("fieldSelector").map(String::as_str),
            &self.kind.kind,
        )
        .map_err(ApiError::bad_request)
    }

    pub(super) fn stamp(&self) -> (String, String) {
        (self.kind.api_version(), now())
    }
}

pub(crate) fn now() -> String {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn uid() -> String {
    let hex: String = (0..32)
        .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap_or('0'))
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

pub(super) fn parse_body(call: &Call) -> Result<Value, ApiError> {
    let parsed = if call.content_type.contains("yaml") {
        serde_yaml::from_slice::<Value>(&call.body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<Value>(&call.body).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))
}

pub(super) fn rv_of(object: &Value) -> Option<&str> {
    object["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
}

/// Everything but metadata and status: what `generation` counts.
fn spec_part(object: &Value) -> Value {
    let mut o = object.clone();
    if let Some(map) = o.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    o
}

impl State {
    fn persist(&self) {
        if let Some(file) = &self.state_file {
            let tmp = file.with_extension("tmp");
            let text = self.store.snapshot().to_string();
            if std::fs::write(&tmp, text).is_ok() {
                let _ = std::fs::rename(&tmp, file);
            }
        }
    }

    /// CRDs changed: what is served and what is admitted follow.
    fn reload_crds(&mut self) {
        let crds: Vec<Value> = self.store.list(CRDS, None).cloned().collect();
        self.kinds = Kinds::with_crds(&crds);
        self.admission = Admission::for_crds(&crds);
    }

    pub(super) fn require_namespace(&self, call: &Call) -> Result<(), ApiError> {
        if !call.kind.namespaced {
            return Ok(());
        }
        match self.store.get(NAMESPACES, "", call.ns()) {
            Some(_) => Ok(()),
            None => Err(ApiError::not_found(NAMESPACES, call.ns())),
        }
    }

    pub(super) fn existing(&self, call: &Call) -> Result<Value, ApiError> {
        let name = call.name.as_deref().unwrap_or_default();
        self.store
            .get(&call.kind.group_resource(), call.ns(), name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&call.kind.group_resource(), name))
    }

    pub fn get(&self, call: &Call) -> Result<Value, ApiError> {
        let object = self.existing(call)?;
        Ok(call.render.object(&call.kind, &object))
    }

    pub fn list(&self, call: &Call) -> Result<Value, ApiError> {
        let selector = call.selector()?;
        let resource = call.kind.group_resource();
        let after = call.query.get("continue").cloned().unwrap_or_default();
        let limit = call
            .query
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0);
        let mut items: Vec<&Value> = self
            .store
            .list(&resource, call.namespace.as_deref())
            .filter(|o| selector.matches(o))
            .filter(|o| after.is_empty() || position(o) > after)
            .collect();
        let mut next = None;
        if let Some(limit) = limit
            && items.len() > limit
        {
            items.truncate(limit);
            next = items.last().map(|o| position(o));
        }
        Ok(call
            .render
            .list(&call.kind, &items, self.store.resource_version(), next))
    }

    pub fn create(&mut self, call: &Call) -> Result<Value, ApiError> {
        if call.kind.virtual_only {
            return super::review::token_review(&self.users, call);
        }
        let mut object = builtin_defaults(&call.kind, parse_body(call)?);
        check_type(&call.kind, &object)?;
        if call.kind.namespaced {
            match object["metadata"]["namespace"].as_str() {
                Some(ns) if ns != call.ns() => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => object["metadata"]["namespace"] = json!(call.ns()),
            }
        }
        if object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
        {
            let Some(prefix) = object["metadata"]["generateName"].as_str() else {
                return Err(ApiError::invalid(
                    &call.kind.kind,
                    &call.kind.group,
                    "",
                    &[(
                        "metadata.name".into(),
                        "name or generateName is required".into(),
                    )],
                ));
            };
            let suffix: String = (0..5).map(|_| fastrand::lowercase()).collect();
            object["metadata"]["name"] = json!(format!("{prefix}{suffix}"));
        }
        self.require_namespace(call)?;
        let (api_version, now) = call.stamp();
        fields::record_update(
            None,
            &mut object,
            schema(&call.kind),
            &call.manager(),
            None,
            (&api_version, &now),
        );
        self.store_new(call, object)
    }

    /// Stores a new object: server fields set, status dropped where it is a
    /// subresource, admitted.
    pub(super) fn store_new(&mut self, call: &Call, mut object: Value) -> Result<Value, ApiError> {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let resource = call.kind.group_resource();
        if self.store.get(&resource, call.ns(), &name).is_some() {
            return Err(ApiError::already_exists(&resource, &name));
        }
        if call.kind.status
            && let Some(map) = object.as_object_mut()
        {
            map.remove("status");
        }
        if call.kind.kind == "Namespace" {
            object["status"] = json!({"phase": "Active"});
        }
        let meta = &mut object["metadata"];
        meta["uid"] = json!(uid());
        meta["creationTimestamp"] = json!(now());
        if let Some(m) = meta.as_object_mut() {
            for server_owned in ["resourceVersion", "deletionTimestamp", "generation"] {
                m.remove(server_owned);
            }
        }
        if call.kind.custom {
            meta["generation"] = json!(1);
        }
        let object = self.admission.admit(
            &call.kind,
            builtin_defaults(&call.kind, object),
            call.strict(),
        )?;
        if call.dry_run() {
            return Ok(object);
        }
        let stored = self.store.put(&resource, call.ns(), &name, object);
        self.after_write(&call.kind);
        Ok(stored)
    }

    fn after_write(&mut self, kind: &Kind) {
        if kind.group_resource() == CRDS {
            self.reload_crds();
        }
        self.persist();
    }

    pub fn update(&mut self, call: &Call) -> Result<Value, ApiError> {
        let old = self.existing(call)?;
        let new = builtin_defaults(&call.kind, parse_body(call)?);
        check_type(&call.kind, &new)?;
        let name = call.name.clone().unwrap_or_default();
        if new["metadata"]["name"].as_str() != Some(name.as_str()) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        match rv_of(&new) {
            None if call.kind.custom => {
                return Err(ApiError::invalid(
                    &call.kind.kind,
                    &call.kind.group,
                    &name,
                    &[(
                        "metadata.resourceVersion".into(),
                        "0x0: must be specified for an update".into(),
                    )],
                ));
            }
            Some(rv) if Some(rv) != rv_of(&old) => {
                return Err(ApiError::conflict(&call.kind.group_resource(), &name));
            }
            _ => {}
        }
        self.update_with(call, &old, new)
    }

    /// A non-apply write: scoped to the object or its status, ownership moved
    /// to the writer, stored.
    pub(super) fn update_with(
        &mut self,
        call: &Call,
        old: &Value,
        new: Value,
    ) -> Result<Value, ApiError> {
        let (api_version, now) = call.stamp();
        let sub = call.status_only().then_some("status");
        let mut new = scoped(&call.kind, old, new, call.status_only());
        fields::record_update(
            Some(old),
            &mut new,
            schema(&call.kind),
            &call.manager(),
            sub,
            (&api_version, &now),
        );
        self.replace(call, old, new)
    }

    /// Stores a changed object: server fields kept, generation counted,
    /// finalizers honoured, admitted.
    pub(super) fn replace(
        &mut self,
        call: &Call,
        old: &Value,
        mut new: Value,
    ) -> Result<Value, ApiError> {
        let name = call.name.clone().unwrap_or_default();
        let resource = call.kind.group_resource();
        for kept in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "name",
        ] {
            match old["metadata"].get(kept) {
                Some(v) => new["metadata"][kept] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(kept);
                    }
                }
            }
        }
        new["apiVersion"] = json!(call.kind.api_version());
        new["kind"] = json!(call.kind.kind);
        let finalizers = |o: &Value| -> Vec<String> {
            o["metadata"]["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        };
        let deleting = old["metadata"].get("deletionTimestamp").is_some();
        if deleting {
            let before = finalizers(old);
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    &call.kind.kind,
                    &call.kind.group,
                    &name,
                    &[(
                        "metadata.finalizers".into(),
                        "Forbidden: no new finalizers can be added if the object is being deleted"
                            .into(),
                    )],
                ));
            }
        }
        if call.kind.custom {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
            let bumped = spec_part(old) != spec_part(&new);
            new["metadata"]["generation"] = json!(generation + i64::from(bumped));
        }
        let new =
            self.admission
                .admit(&call.kind, builtin_defaults(&call.kind, new), call.strict())?;
        if call.dry_run() {
            return Ok(new);
        }
        let unchanged = {
            let strip = |o: &Value| {
                let mut o = o.clone();
                if let Some(m) = o["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                // Ownership counts, the time of a write that changed nothing does not.
                for entry in o["metadata"]["managedFields"]
                    .as_array_mut()
                    .into_iter()
                    .flatten()
                {
                    if let Some(e) = entry.as_object_mut() {
                        e.remove("time");
                    }
                }
                o
            };
            strip(old) == strip(&new)
        };
        if unchanged {
            // A no-op write keeps the resourceVersion and emits no event.
            return Ok(old.clone());
        }
        if deleting && finalizers(&new).is_empty() {
            let gone = self.store.remove(&resource, call.ns(), &name);
            self.after_delete(call);
            return Ok(gone.unwrap_or(new));
        }
        let stored = self.store.put(&resource, call.ns(), &name, new);
        self.after_write(&call.kind);
        Ok(stored)
    }

    pub fn delete(&mut self, call: &Call) -> Result<Value, ApiError> {
        let old = self.existing(call)?;
        let name = call.name.clone().unwrap_or_default();
        let options: Value = if call.body.is_empty() {
            json!({})
        } else {
            parse_body(call)?
        };
        let pre = &options["preconditions"];
        if pre["uid"]
            .as_str()
            .is_some_and(|u| Some(u) != old["metadata"]["uid"].as_str())
            || pre["resourceVersion"]
                .as_str()
                .is_some_and(|r| Some(r) != rv_of(&old))
        {
            return Err(ApiError::conflict(&call.kind.group_resource(), &name));
        }
        if call.dry_run() || options["dryRun"].as_array().is_some_and(|d| !d.is_empty()) {
            return Ok(old);
        }
        let resource = call.kind.group_resource();
        if call.kind.kind == "Namespace" {
            return self.delete_namespace(call, old);
        }
        let has_finalizers = old["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if old["metadata"].get("deletionTimestamp").is_some() {
                return Ok(old);
            }
            let mut marked = old.clone();
            marked["metadata"]["deletionTimestamp"] = json!(now());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            let stored = self.store.put(&resource, call.ns(), &name, marked);
            self.persist();
            return Ok(stored);
        }
        let gone = self.store.remove(&resource, call.ns(), &name);
        self.after_delete(call);
        Ok(gone.unwrap_or(old))
    }

    fn after_delete(&mut self, call: &Call) {
        if call.kind.group_resource() == CRDS {
            self.reload_crds();
        }
        // A terminating namespace goes when its last object has.
        let ns = call.ns().to_owned();
        if !ns.is_empty()
            && self
                .store
                .get(NAMESPACES, "", &ns)
                .is_some_and(|n| n["metadata"].get("deletionTimestamp").is_some())
            && self.store.namespaces_in_use(&ns).is_empty()
        {
            self.store.remove(NAMESPACES, "", &ns);
        }
        self.persist();
    }

    fn delete_namespace(&mut self, call: &Call, old: Value) -> Result<Value, ApiError> {
        let ns = call.name.clone().unwrap_or_default();
        let mut marked = old;
        marked["metadata"]["deletionTimestamp"] = json!(now());
        marked["status"]["phase"] = json!("Terminating");
        let marked = self.store.put(NAMESPACES, "", &ns, marked);
        for (resource, name) in self.store.namespaces_in_use(&ns) {
            let Some(object) = self.store.get(&resource, &ns, &name).cloned() else {
                continue;
            };
            if object["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
            {
                let mut o = object;
                if o["metadata"].get("deletionTimestamp").is_none() {
                    o["metadata"]["deletionTimestamp"] = json!(now());
                    self.store.put(&resource, &ns, &name, o);
                }
            } else {
                self.store.remove(&resource, &ns, &name);
            }
        }
        if self.store.namespaces_in_use(&ns).is_empty() {
            self.store.remove(NAMESPACES, "", &ns);
        }
        self.persist();
        Ok(marked)
    }
}

/// What the API server does to built-ins on every write: a Secret's
/// `stringData` is merged into `data` (base64) and its type defaults to Opaque.
pub(super) fn builtin_defaults(kind: &Kind, mut object: Value) -> Value {
    use base64::Engine;
    if kind.kind == "Secret" && kind.group.is_empty() {
        if let Some(Value::Object(plain)) =
            object.as_object_mut().and_then(|o| o.remove("stringData"))
        {
            for (k, v) in plain {
                let encoded = base64::engine::general_purpose::STANDARD
                    .encode(v.as_str().unwrap_or_default());
                object["data"][k] = json!(encoded);
            }
        }
        if object.get("type").is_none() {
            object["type"] = json!("Opaque");
        }
    }
    object
}

fn position(object: &Value) -> String {
    format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    )
}

pub(super) fn schema(kind: &Kind) -> Schema<'_> {
    Schema::root(kind.schema.as_ref())
}

pub(super) fn check_type(kind: &Kind, object: &Value) -> Result<(), ApiError> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let k = object["kind"].as_str().unwrap_or_default();
    if (!api_version.is_empty() && api_version != kind.api_version())
        || (!k.is_empty() && k != kind.kind)
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            kind.api_version()
        )));
    }
    Ok(())
}

/// With a status subresource, a write to the object keeps the old status and a
/// write to `/status` keeps everything but the status.
pub(super) fn scoped(kind: &Kind, old: &Value, new: Value, status_only: bool) -> Value {
    if !kind.status {
        return new;
    }
    if status_only {
        let mut out = old.clone();
        match new.get("status") {
            Some(s) => out["status"] = s.clone(),
            None => {
                if let Some(m) = out.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        out
    } else {
        let mut out = new;
        match old.get("status") {
            Some(s) => out["status"] = s.clone(),
            None => {
                if let Some(m) = out.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        out
    }
}
