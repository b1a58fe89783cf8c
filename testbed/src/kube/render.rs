//! What a client asked to see: discovery documents, and objects as stored, as
//! metadata only (`PartialObjectMetadata`), or as the rows of `kubectl get`
//! (`Table`, printer columns evaluated on the server).

use serde_json::{Value, json};

use super::kinds::{Kind, Kinds};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Render {
    Full,
    Metadata,
    Table { full_object: bool },
}

impl Render {
    pub fn from_request(accept: &str, include_object: Option<&str>) -> Self {
        // The first media type the double can produce wins, as content negotiation goes.
        for media in accept.split(',') {
            let media = media.trim();
            if media.contains("as=Table") && media.contains("g=meta.k8s.io") {
                return Self::Table {
                    full_object: include_object == Some("Object"),
                };
            }
            if media.contains("as=PartialObjectMetadata") {
                return Self::Metadata;
            }
            if media.starts_with("application/json") || media.starts_with("*/*") || media.is_empty()
            {
                return Self::Full;
            }
        }
        Self::Full
    }

    pub fn object(&self, kind: &Kind, object: &Value) -> Value {
        match self {
            Self::Full => object.clone(),
            Self::Metadata => partial(object),
            Self::Table { full_object } => table(kind, &[object], *full_object, None, None),
        }
    }

    pub fn list(&self, kind: &Kind, items: &[&Value], rv: u64, next: Option<String>) -> Value {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if let Some(token) = &next {
            meta["continue"] = json!(token);
        }
        match self {
            Self::Full => json!({
                "kind": format!("{}List", kind.kind),
                "apiVersion": kind.api_version(),
                "metadata": meta,
                "items": items.iter().map(|o| full_item(kind, o)).collect::<Vec<_>>(),
            }),
            Self::Metadata => json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
                "items": items.iter().map(|o| partial(o)).collect::<Vec<_>>(),
            }),
            Self::Table { full_object } => table(kind, items, *full_object, Some(rv), next),
        }
    }
}

fn full_item(kind: &Kind, object: &Value) -> Value {
    let mut o = object.clone();
    o["kind"] = json!(kind.kind);
    o["apiVersion"] = json!(kind.api_version());
    o
}

pub(crate) fn partial(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object["metadata"],
    })
}

fn table(
    kind: &Kind,
    items: &[&Value],
    full_object: bool,
    rv: Option<u64>,
    next: Option<String>,
) -> Value {
    let mut columns = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace.",
    })];
    columns.extend(kind.columns.iter().map(|c| {
        json!({"name": c.name, "type": c.kind, "format": "", "priority": c.priority, "description": c.description})
    }));
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            for c in &kind.columns {
                let found = json_path(o, &c.json_path);
                cells.push(match (c.kind.as_str(), found) {
                    ("date", Some(Value::String(t))) => json!(age(&t)),
                    (_, Some(v)) => v,
                    (_, None) => Value::Null,
                });
            }
            let object = if full_object {
                full_item(kind, o)
            } else {
                partial(o)
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    let mut meta = json!({});
    if let Some(rv) = rv {
        meta["resourceVersion"] = json!(rv.to_string());
    }
    if let Some(token) = next {
        meta["continue"] = json!(token);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// The JSONPath subset printer columns use: `.a.b`, `[0]`, `[*]` and
/// `[?(@.key=="value")]`; several results are joined with commas.
pub(crate) fn json_path(object: &Value, path: &str) -> Option<Value> {
    let mut current: Vec<&Value> = vec![object];
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let name = &r[..end];
            current = current.iter().filter_map(|v| v.get(name)).collect();
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            // A filter's quoted value may hold ']'; filters end with ")]".
            let end = if r.starts_with("?(") {
                r.find(")]").map(|e| e + 1)?
            } else {
                end
            };
            let selector = &r[..end];
            current = current.iter().flat_map(|v| select(v, selector)).collect();
            rest = &r[end + 1..];
        } else {
            return None;
        }
    }
    match current.as_slice() {
        [] => None,
        [one] => Some((*one).clone()),
        many => Some(json!(
            many.iter()
                .map(|v| v
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string()))
                .collect::<Vec<_>>()
                .join(",")
        )),
    }
}

fn select<'v>(value: &'v Value, selector: &str) -> Vec<&'v Value> {
    let Some(items) = value.as_array() else {
        return Vec::new();
    };
    if selector == "*" {
        return items.iter().collect();
    }
    if let Ok(i) = selector.parse::<usize>() {
        return items.get(i).into_iter().collect();
    }
    let Some(filter) = selector
        .strip_prefix("?(@.")
        .and_then(|f| f.strip_suffix(')'))
    else {
        return Vec::new();
    };
    let Some((key, wanted)) = filter.split_once("==") else {
        return Vec::new();
    };
    let wanted = wanted.trim().trim_matches(['"', '\'']);
    items
        .iter()
        .filter(|item| {
            let mut node = Some(*item);
            for part in key.trim().split('.') {
                node = node.and_then(|n| n.get(part));
            }
            node.is_some_and(|v| {
                v.as_str().map_or_else(
                    || serde_json::from_str::<Value>(wanted).is_ok_and(|w| w == *v),
                    |s| s == wanted,
                )
            })
        })
        .collect()
}

/// `kubectl`'s short ages: 45s, 3m12s, 5h, 2d.
fn age(timestamp: &str) -> String {
    let Ok(then) = timestamp.parse::<jiff::Timestamp>() else {
        return "<invalid>".into();
    };
    let secs = (jiff::Timestamp::now().as_second() - then.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "35",
        "gitVersion": "v1.35.0-mailroom-testbed",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

pub(crate) fn core_versions(address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
    })
}

pub(crate) fn groups(kinds: &Kinds) -> Value {
    let groups: Vec<Value> = kinds
        .groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": vs, "preferredVersion": vs[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub(crate) fn group(kinds: &Kinds, name: &str) -> Option<Value> {
    let (_, versions) = kinds.groups().into_iter().find(|(g, _)| g == name)?;
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    Some(
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": vs, "preferredVersion": vs[0]}),
    )
}

pub(crate) fn resources(kinds: &Kinds, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for k in kinds
        .all()
        .iter()
        .filter(|k| k.group == group && k.version == version)
    {
        let mut r = json!({
            "name": k.plural,
            "singularName": k.singular,
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": k.verbs(),
        });
        if !k.short_names.is_empty() {
            r["shortNames"] = json!(k.short_names);
        }
        if !k.categories.is_empty() {
            r["categories"] = json!(k.categories);
        }
        resources.push(r);
        if k.status {
            resources.push(json!({
                "name": format!("{}/status", k.plural),
                "singularName": "",
                "namespaced": k.namespaced,
                "kind": k.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: where each group version's document is.
pub(crate) fn openapi_root(kinds: &Kinds) -> Value {
    let mut paths = serde_json::Map::new();
    for (group, versions) in kinds.groups() {
        for version in versions {
            let gv = group_version_path(&group, &version);
            paths.insert(
                gv.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{gv}")}),
            );
        }
    }
    json!({"paths": paths})
}

/// The document of one group version: just the operations, each saying which
/// kind it serves and that it takes `fieldValidation`, which is what kubectl
/// reads before it leaves validation to the server.
pub(crate) fn openapi_group_version(kinds: &Kinds, group: &str, version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    let params = json!([
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
    ]);
    for k in kinds
        .all()
        .iter()
        .filter(|k| k.group == group && k.version == version)
    {
        let gvk = json!({"group": k.group, "version": k.version, "kind": k.kind});
        let op =
            json!({"parameters": params, "x-kubernetes-group-version-kind": gvk, "responses": {}});
        let base = format!("/{}", group_version_path(group, version));
        let collection = if k.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", k.plural)
        } else {
            format!("{base}/{}", k.plural)
        };
        paths.insert(collection.clone(), json!({"post": op}));
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({"get": op, "put": op, "patch": op, "delete": op}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.35.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
