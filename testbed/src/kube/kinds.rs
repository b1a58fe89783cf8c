//! The resource types the double serves: the built-in ones mailroom and kubectl
//! use, and one per served version of every CustomResourceDefinition it holds.

use serde_json::{Value, json};

/// A column of `kubectl get`, as the server's table printer renders it.
#[derive(Clone, Debug)]
pub(crate) struct Column {
    pub name: String,
    pub kind: String,
    pub json_path: String,
    pub priority: i64,
    pub description: String,
}

#[derive(Clone, Debug)]
pub(crate) struct Kind {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// A `status` subresource: writes to the object ignore status and the reverse.
    pub status: bool,
    /// Defined by a CRD: admission validates it, `generation` counts spec changes.
    pub custom: bool,
    /// Only `create` (TokenReview): nothing is stored.
    pub virtual_only: bool,
    pub columns: Vec<Column>,
    /// The OpenAPI schema (CRDs), for list types and map keys in server-side apply.
    pub schema: Option<Value>,
}

impl Kind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `secrets`, `incomingemailservers.mailroom.dev`: the store's key and the
    /// name in error messages.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        if self.virtual_only {
            vec!["create"]
        } else {
            vec![
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
        }
    }
}

struct Builtin {
    group: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
    virtual_only: bool,
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        group: "",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
        short: &["ns"],
        status: true,
        virtual_only: false,
    },
    Builtin {
        group: "",
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
        short: &[],
        status: false,
        virtual_only: false,
    },
    Builtin {
        group: "",
        plural: "configmaps",
        kind: "ConfigMap",
        namespaced: true,
        short: &["cm"],
        status: false,
        virtual_only: false,
    },
    Builtin {
        group: "",
        plural: "events",
        kind: "Event",
        namespaced: true,
        short: &["ev"],
        status: false,
        virtual_only: false,
    },
    Builtin {
        group: "",
        plural: "serviceaccounts",
        kind: "ServiceAccount",
        namespaced: true,
        short: &["sa"],
        status: false,
        virtual_only: false,
    },
    Builtin {
        group: "events.k8s.io",
        plural: "events",
        kind: "Event",
        namespaced: true,
        short: &["ev"],
        status: false,
        virtual_only: false,
    },
    Builtin {
        group: "coordination.k8s.io",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        short: &[],
        status: false,
        virtual_only: false,
    },
    Builtin {
        group: "authentication.k8s.io",
        plural: "tokenreviews",
        kind: "TokenReview",
        namespaced: false,
        short: &[],
        status: false,
        virtual_only: true,
    },
    Builtin {
        group: "apiextensions.k8s.io",
        plural: "customresourcedefinitions",
        kind: "CustomResourceDefinition",
        namespaced: false,
        short: &["crd", "crds"],
        status: true,
        virtual_only: false,
    },
];

fn builtin_columns(kind: &str) -> Vec<Column> {
    let col = |name: &str, kind: &str, path: &str| Column {
        name: name.into(),
        kind: kind.into(),
        json_path: path.into(),
        priority: 0,
        description: String::new(),
    };
    let mut columns = match kind {
        "Secret" => vec![col("Type", "string", ".type")],
        "Namespace" => vec![col("Status", "string", ".status.phase")],
        "Lease" => vec![col("Holder", "string", ".spec.holderIdentity")],
        "Event" => vec![col("Reason", "string", ".reason")],
        _ => Vec::new(),
    };
    columns.push(col("Age", "date", ".metadata.creationTimestamp"));
    columns
}

/// Every type served: the built-ins first, then the CRDs' in the order given.
#[derive(Clone, Debug, Default)]
pub(crate) struct Kinds {
    all: Vec<Kind>,
}

impl Kinds {
    pub fn builtin() -> Self {
        let all = BUILTINS
            .iter()
            .map(|b| Kind {
                group: b.group.into(),
                version: "v1".into(),
                plural: b.plural.into(),
                singular: b.kind.to_ascii_lowercase(),
                kind: b.kind.into(),
                namespaced: b.namespaced,
                short_names: b.short.iter().map(|s| (*s).to_owned()).collect(),
                categories: Vec::new(),
                status: b.status,
                custom: false,
                virtual_only: b.virtual_only,
                columns: builtin_columns(b.kind),
                schema: None,
            })
            .collect();
        Self { all }
    }

    /// The served types with these CRDs (objects of kind CustomResourceDefinition).
    pub fn with_crds<'a>(crds: impl IntoIterator<Item = &'a Value>) -> Self {
        let mut kinds = Self::builtin();
        for crd in crds {
            kinds.all.extend(from_crd(crd));
        }
        kinds
    }

    pub fn all(&self) -> &[Kind] {
        &self.all
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&Kind> {
        self.all
            .iter()
            .find(|k| k.group == group && k.version == version && k.plural == plural)
    }

    /// Groups in order of first appearance, each with its versions.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for k in &self.all {
            match groups.iter_mut().find(|(g, _)| *g == k.group) {
                Some((_, versions)) if !versions.contains(&k.version) => {
                    versions.push(k.version.clone())
                }
                Some(_) => {}
                None => groups.push((k.group.clone(), vec![k.version.clone()])),
            }
        }
        groups
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn from_crd(crd: &Value) -> Vec<Kind> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut kinds = Vec::new();
    for version in spec["versions"].as_array().into_iter().flatten() {
        if version["served"] == Value::Bool(false) {
            continue;
        }
        let mut columns: Vec<Column> = version["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| Column {
                name: text(&c["name"]),
                kind: text(&c["type"]),
                json_path: text(&c["jsonPath"]),
                priority: c["priority"].as_i64().unwrap_or(0),
                description: text(&c["description"]),
            })
            .collect();
        if columns.is_empty() {
            columns.push(Column {
                name: "Age".into(),
                kind: "date".into(),
                json_path: ".metadata.creationTimestamp".into(),
                priority: 0,
                description: String::new(),
            });
        }
        kinds.push(Kind {
            group: text(&spec["group"]),
            version: text(&version["name"]),
            plural: text(&names["plural"]),
            singular: names["singular"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| text(&names["kind"]).to_ascii_lowercase()),
            kind: text(&names["kind"]),
            namespaced: spec["scope"] != json!("Cluster"),
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            status: version["subresources"].get("status").is_some(),
            custom: true,
            virtual_only: false,
            columns,
            schema: version["schema"].get("openAPIV3Schema").cloned(),
        });
    }
    kinds
}
