//! Field ownership as the API server tracks it (structured-merge-diff, FieldsV1):
//! which manager owns which fields, what an apply conflicts with, how an applied
//! configuration merges into the live object, and which fields a manager's
//! apply removes when it stops naming them.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// One step of a field path, as FieldsV1 spells it: `f:name`, `k:{"type":"Ready"}`,
/// `v:"value"`, `i:0`, or `.` for the node itself.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Step {
    Field(String),
    Key(String),
    Value(String),
    Index(usize),
    Dot,
}

pub(crate) type Path = Vec<Step>;
pub(crate) type FieldSet = BTreeSet<Path>;

/// How a list merges: replaced whole, a set of scalars, or items keyed by fields.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ListKind {
    Atomic,
    Set,
    Map(Vec<String>),
}

/// Metadata fields the server owns; no manager owns them.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

/// The schema at a node (CRD OpenAPI), or none (built-ins: maps granular, lists atomic).
#[derive(Clone, Copy)]
pub(crate) struct Schema<'a> {
    node: Option<&'a Value>,
    /// Field names from the root, for the metadata rules every kind shares.
    in_metadata: bool,
    depth: usize,
}

impl<'a> Schema<'a> {
    pub fn root(schema: Option<&'a Value>) -> Self {
        Self {
            node: schema,
            in_metadata: false,
            depth: 0,
        }
    }

    fn field(&self, name: &str) -> Self {
        let node = self.node.and_then(|n| {
            n.get("properties")
                .and_then(|p| p.get(name))
                .or_else(|| n.get("additionalProperties").filter(|a| a.is_object()))
        });
        Self {
            node,
            in_metadata: self.depth == 0 && name == "metadata",
            depth: self.depth + 1,
        }
    }

    fn items(&self) -> Self {
        Self {
            node: self.node.and_then(|n| n.get("items")),
            in_metadata: false,
            depth: self.depth + 1,
        }
    }

    /// How the list in field `name` of this node merges.
    fn list_kind_of(&self, name: &str) -> ListKind {
        if self.in_metadata {
            return match name {
                "finalizers" => ListKind::Set,
                "ownerReferences" => ListKind::Map(vec!["uid".into()]),
                _ => ListKind::Atomic,
            };
        }
        let Some(node) = self.field(name).node else {
            return ListKind::Atomic;
        };
        match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => ListKind::Set,
            Some("map") => ListKind::Map(
                node.get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|keys| {
                        keys.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            _ => ListKind::Atomic,
        }
    }
}

fn key_of(item: &Value, keys: &[String]) -> String {
    let key: BTreeMap<&str, &Value> = keys
        .iter()
        .map(|k| (k.as_str(), item.get(k).unwrap_or(&Value::Null)))
        .collect();
    serde_json::to_string(&key).unwrap_or_default()
}

/// Every field of `value` as a set of paths (leaves, and `.` for each node).
pub(crate) fn fields_of(value: &Value, schema: Schema) -> FieldSet {
    let mut out = FieldSet::new();
    if let Value::Object(map) = value {
        walk_object(map, schema, &mut Vec::new(), &mut out);
    }
    out
}

fn walk_object(map: &Map<String, Value>, schema: Schema, path: &mut Path, out: &mut FieldSet) {
    for (k, child) in map {
        if schema.depth == 0 && (k == "apiVersion" || k == "kind") {
            continue;
        }
        if schema.in_metadata && SERVER_METADATA.contains(&k.as_str()) {
            continue;
        }
        path.push(Step::Field(k.clone()));
        walk_node(child, schema.field(k), &schema.list_kind_of(k), path, out);
        path.pop();
    }
}

fn walk_node(value: &Value, schema: Schema, list: &ListKind, path: &mut Path, out: &mut FieldSet) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.insert(with(path, Step::Dot));
            walk_object(map, schema, path, out);
        }
        Value::Array(items) if !items.is_empty() && *list != ListKind::Atomic => {
            out.insert(with(path, Step::Dot));
            for item in items {
                match list {
                    ListKind::Set => {
                        out.insert(with(path, Step::Value(item.to_string())));
                    }
                    ListKind::Map(keys) => {
                        path.push(Step::Key(key_of(item, keys)));
                        out.insert(with(path, Step::Dot));
                        if let Value::Object(fields) = item {
                            walk_object(fields, schema.items(), path, out);
                        }
                        path.pop();
                    }
                    ListKind::Atomic => {}
                }
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

fn with(path: &Path, step: Step) -> Path {
    let mut p = path.clone();
    p.push(step);
    p
}

/// The value at a path; `.` is the node itself.
pub(crate) fn value_at<'v>(root: &'v Value, path: &[Step]) -> Option<&'v Value> {
    let mut node = root;
    for step in path {
        node = match step {
            Step::Field(name) => node.get(name)?,
            Step::Dot => node,
            Step::Index(i) => node.get(i)?,
            Step::Key(key) => {
                let key: Map<String, Value> = serde_json::from_str(key).ok()?;
                node.as_array()?.iter().find(|item| {
                    key.iter()
                        .all(|(k, v)| item.get(k).unwrap_or(&Value::Null) == v)
                })?
            }
            Step::Value(v) => {
                let v: Value = serde_json::from_str(v).ok()?;
                node.as_array()?.iter().find(|item| **item == v)?
            }
        };
    }
    Some(node)
}

/// Removes the node at `path` (a field, a keyed item, a set value).
fn remove_at(root: &mut Value, path: &[Step]) {
    let path: Vec<&Step> = path.iter().filter(|s| **s != Step::Dot).collect();
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = root;
    for step in parents {
        let next = match step {
            Step::Field(name) => node.get_mut(name.as_str()),
            Step::Index(i) => node.get_mut(*i),
            Step::Key(_) | Step::Value(_) => {
                let found = value_at(node, std::slice::from_ref(*step)).cloned();
                node.as_array_mut()
                    .and_then(|items| items.iter_mut().find(|i| Some(&**i) == found.as_ref()))
            }
            Step::Dot => Some(node),
        };
        match next {
            Some(n) => node = n,
            None => return,
        }
    }
    match last {
        Step::Field(name) => {
            if let Some(map) = node.as_object_mut() {
                map.remove(name);
            }
        }
        Step::Key(_) | Step::Value(_) | Step::Index(_) => {
            let found = value_at(node, std::slice::from_ref(*last)).cloned();
            if let Some(items) = node.as_array_mut() {
                items.retain(|i| Some(i) != found.as_ref());
            }
        }
        Step::Dot => {}
    }
}

/// Merges an applied configuration into the live object: maps field by field,
/// keyed lists item by item, sets by value, everything else replaced.
pub(crate) fn merge(live: &mut Value, config: &Value, schema: Schema) {
    match (live, config) {
        (Value::Object(l), Value::Object(c)) => {
            for (k, cv) in c {
                let child = schema.field(k);
                let list = schema.list_kind_of(k);
                match l.get_mut(k) {
                    Some(lv) => merge_node(lv, cv, child, &list),
                    None => {
                        l.insert(k.clone(), cv.clone());
                    }
                }
            }
        }
        (live, config) => *live = config.clone(),
    }
}

fn merge_node(live: &mut Value, config: &Value, schema: Schema, list: &ListKind) {
    match (&mut *live, config, list) {
        (Value::Object(_), Value::Object(_), _) => merge(live, config, schema),
        (Value::Array(l), Value::Array(c), ListKind::Set) => {
            for item in c {
                if !l.contains(item) {
                    l.push(item.clone());
                }
            }
        }
        (Value::Array(l), Value::Array(c), ListKind::Map(keys)) => {
            for item in c {
                let key = key_of(item, keys);
                match l.iter_mut().find(|i| key_of(i, keys) == key) {
                    Some(existing) => merge(existing, item, schema.items()),
                    None => l.push(item.clone()),
                }
            }
        }
        _ => *live = config.clone(),
    }
}

/// `.spec.port`, `.status.conditions[type="Ready"].status`: paths in messages.
pub(crate) fn display(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Field(name) => {
                out.push('.');
                out.push_str(name);
            }
            Step::Key(key) => {
                let map: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
                let inner: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("[{}]", inner.join(",")));
            }
            Step::Value(v) => out.push_str(&format!("[={v}]")),
            Step::Index(i) => out.push_str(&format!("[{i}]")),
            Step::Dot => {}
        }
    }
    out
}

/// One entry of `metadata.managedFields`.
#[derive(Clone, Debug)]
pub(crate) struct Managed {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

impl Managed {
    fn same_slot(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
    }
}

pub(crate) fn read_managed(object: &Value) -> Vec<Managed> {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| Managed {
            manager: e["manager"].as_str().unwrap_or_default().to_owned(),
            operation: e["operation"].as_str().unwrap_or("Update").to_owned(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_owned(),
            time: e["time"].as_str().unwrap_or_default().to_owned(),
            subresource: e["subresource"].as_str().map(str::to_owned),
            fields: from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

pub(crate) fn write_managed(object: &mut Value, managed: &[Managed]) {
    let entries: Vec<Value> = managed
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut e = json!({
                "manager": m.manager,
                "operation": m.operation,
                "apiVersion": m.api_version,
                "time": m.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&m.fields),
            });
            if let Some(sub) = &m.subresource {
                e["subresource"] = json!(sub);
            }
            e
        })
        .collect();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if entries.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(entries));
        }
    }
}

fn step_name(step: &Step) -> String {
    match step {
        Step::Field(n) => format!("f:{n}"),
        Step::Key(k) => format!("k:{k}"),
        Step::Value(v) => format!("v:{v}"),
        Step::Index(i) => format!("i:{i}"),
        Step::Dot => ".".into(),
    }
}

fn to_fields_v1(fields: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut node = &mut root;
        for step in path {
            let entry = node
                .entry(step_name(step))
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(next) = entry else {
                break;
            };
            node = next;
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    fn walk(v: &Value, path: &mut Path, out: &mut FieldSet) {
        let Some(map) = v.as_object() else {
            return;
        };
        if map.is_empty() && !path.is_empty() {
            out.insert(path.clone());
            return;
        }
        for (name, child) in map {
            let step = if name == "." {
                Step::Dot
            } else if let Some(n) = name.strip_prefix("f:") {
                Step::Field(n.to_owned())
            } else if let Some(k) = name.strip_prefix("k:") {
                Step::Key(k.to_owned())
            } else if let Some(k) = name.strip_prefix("v:") {
                Step::Value(k.to_owned())
            } else if let Some(i) = name.strip_prefix("i:").and_then(|i| i.parse().ok()) {
                Step::Index(i)
            } else {
                continue;
            };
            path.push(step);
            walk(child, path, out);
            path.pop();
        }
    }
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// A keyed list item or a set value (with or without its `.`).
fn is_item(path: &[Step]) -> bool {
    let path: Vec<&Step> = path.iter().filter(|s| **s != Step::Dot).collect();
    matches!(path.last(), Some(Step::Key(_) | Step::Value(_)))
}

/// A field that is part of its list item's key: it goes only with the item.
fn is_key_field(path: &[Step]) -> bool {
    match path {
        [.., Step::Key(key), Step::Field(name)] => {
            serde_json::from_str::<Map<String, Value>>(key).is_ok_and(|k| k.contains_key(name))
        }
        _ => false,
    }
}

fn owns_under(fields: &FieldSet, prefix: &[Step]) -> bool {
    let prefix: Vec<&Step> = prefix.iter().filter(|s| **s != Step::Dot).collect();
    fields.iter().any(|p| {
        let p: Vec<&Step> = p.iter().filter(|s| **s != Step::Dot).collect();
        p.starts_with(&prefix)
    })
}

/// An apply that names fields another manager set to other values.
#[derive(Debug)]
pub(crate) struct Conflicts(pub Vec<(String, String)>);

/// Server-side apply of `config` by `manager` onto `live` (the fields outside
/// the scope — status, or everything but status — are the caller's to drop).
pub(crate) fn apply(
    live: &Value,
    config: &Value,
    schema: Schema,
    manager: &str,
    subresource: Option<&str>,
    force: bool,
    stamp: (&str, &str),
) -> Result<Value, Conflicts> {
    let (api_version, now) = stamp;
    let mut managed = read_managed(live);
    let applied = fields_of(config, schema);

    let mut conflicts = Vec::new();
    for other in managed.iter_mut() {
        if other.same_slot(manager, "Apply", subresource) {
            continue;
        }
        let clashing: Vec<Path> = other
            .fields
            .intersection(&applied)
            .filter(|p| !matches!(p.last(), Some(Step::Dot | Step::Key(_) | Step::Value(_))))
            .filter(|p| value_at(config, p) != value_at(live, p))
            .cloned()
            .collect();
        if force {
            for p in &clashing {
                other.fields.remove(p);
            }
        } else {
            conflicts.extend(clashing.iter().map(|p| (other.manager.clone(), display(p))));
        }
    }
    if !conflicts.is_empty() {
        return Err(Conflicts(conflicts));
    }

    let mut merged = live.clone();
    merge(&mut merged, config, schema);

    let previous = managed
        .iter()
        .find(|m| m.same_slot(manager, "Apply", subresource))
        .map(|m| m.fields.clone())
        .unwrap_or_default();
    let kept = |path: &Path| {
        owns_under(&applied, path)
            || managed
                .iter()
                .filter(|m| !m.same_slot(manager, "Apply", subresource))
                .any(|m| owns_under(&m.fields, path))
    };
    let dropped: Vec<&Path> = previous.difference(&applied).filter(|p| !kept(p)).collect();
    // Whole items first (a keyed item nobody owns any field of goes with its
    // last owner), then fields deepest first, then nodes left empty.
    for path in &dropped {
        if is_item(path) {
            remove_at(&mut merged, path);
        }
    }
    let mut rest: Vec<&&Path> = dropped.iter().filter(|p| !is_item(p)).collect();
    rest.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for path in rest {
        if path.last() == Some(&Step::Dot) {
            let empty = match value_at(&merged, path) {
                Some(Value::Object(m)) => m.is_empty(),
                Some(Value::Array(a)) => a.is_empty(),
                _ => false,
            };
            if empty {
                remove_at(&mut merged, path);
            }
        } else if !is_key_field(path) {
            remove_at(&mut merged, path);
        }
    }

    managed.retain(|m| !m.same_slot(manager, "Apply", subresource));
    managed.push(Managed {
        manager: manager.to_owned(),
        operation: "Apply".into(),
        api_version: api_version.to_owned(),
        time: now.to_owned(),
        subresource: subresource.map(str::to_owned),
        fields: applied,
    });
    write_managed(&mut merged, &managed);
    Ok(merged)
}

/// Ownership after an update (create, PUT, patch): the updater owns what it
/// changed, others lose it, removed fields belong to nobody.
pub(crate) fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    schema: Schema,
    manager: &str,
    subresource: Option<&str>,
    stamp: (&str, &str),
) {
    let (api_version, now) = stamp;
    let before = old.map(|o| fields_of(o, schema)).unwrap_or_default();
    let after = fields_of(new, schema);
    let changed: FieldSet = after
        .iter()
        .filter(|p| {
            !before.contains(*p)
                || (p.last() != Some(&Step::Dot)
                    && old.and_then(|o| value_at(o, p)) != value_at(new, p))
        })
        .cloned()
        .collect();
    let removed: FieldSet = before.difference(&after).cloned().collect();
    let mut managed = old.map(read_managed).unwrap_or_else(|| read_managed(new));
    if old.is_some() && managed_changed_by_client(old, new) {
        // A client that writes managedFields itself (e.g. to reset them) wins.
        managed = read_managed(new);
    }
    for m in managed.iter_mut() {
        m.fields
            .retain(|p| !changed.contains(p) && !removed.contains(p));
    }
    if !changed.is_empty() {
        match managed
            .iter_mut()
            .find(|m| m.same_slot(manager, "Update", subresource))
        {
            Some(m) => {
                m.fields.extend(changed);
                m.time = now.to_owned();
            }
            None => managed.push(Managed {
                manager: manager.to_owned(),
                operation: "Update".into(),
                api_version: api_version.to_owned(),
                time: now.to_owned(),
                subresource: subresource.map(str::to_owned),
                fields: changed,
            }),
        }
    }
    write_managed(new, &managed);
}

fn managed_changed_by_client(old: Option<&Value>, new: &Value) -> bool {
    let theirs = new.pointer("/metadata/managedFields");
    theirs.is_some() && theirs != old.and_then(|o| o.pointer("/metadata/managedFields"))
}
