//! Who may do what: bearer tokens to users, and RBAC over the Roles,
//! ClusterRoles and bindings of a rendered chart.

use std::collections::HashMap;

use serde_json::Value;

/// The group whose members may do everything, as on a real cluster.
pub const MASTERS: &str = "system:masters";

/// A user a bearer token stands for.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    /// Audiences the token was issued for (TokenReview answers with them).
    pub audiences: Vec<String>,
}

impl User {
    pub fn service_account(namespace: &str, name: &str, audiences: &[&str]) -> Self {
        Self {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            uid: format!("sa-{namespace}-{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
        }
    }
}

/// What a request does, as the authorizer sees it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

#[derive(Clone, Debug)]
struct Rule {
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    names: Vec<String>,
}

#[derive(Clone, Debug)]
struct Binding {
    /// None for a ClusterRoleBinding.
    namespace: Option<String>,
    role_kind: String,
    role: String,
    subjects: Vec<Value>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Rbac {
    roles: HashMap<(String, String), Vec<Rule>>,
    cluster_roles: HashMap<String, Vec<Rule>>,
    bindings: Vec<Binding>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

fn rules(doc: &Value) -> Vec<Rule> {
    doc["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| Rule {
            groups: strings(&r["apiGroups"]),
            resources: strings(&r["resources"]),
            verbs: strings(&r["verbs"]),
            names: strings(&r["resourceNames"]),
        })
        .collect()
}

fn any(list: &[String], wanted: &str) -> bool {
    list.iter().any(|x| x == "*" || x == wanted)
}

impl Rule {
    fn allows(&self, a: &Attributes) -> bool {
        let resource_ok = self.resources.iter().any(|r| {
            if a.subresource.is_empty() {
                r == "*" || *r == a.resource
            } else {
                r == "*"
                    || *r == format!("{}/{}", a.resource, a.subresource)
                    || *r == format!("*/{}", a.subresource)
            }
        });
        let name_ok =
            self.names.is_empty() || a.name.as_ref().is_some_and(|n| self.names.contains(n));
        any(&self.verbs, &a.verb) && any(&self.groups, &a.group) && resource_ok && name_ok
    }
}

impl Rbac {
    /// Reads every Role, ClusterRole, RoleBinding and ClusterRoleBinding in
    /// `documents`; other kinds are skipped.
    pub fn from_documents(documents: &[Value]) -> Self {
        let mut rbac = Self::default();
        for doc in documents {
            let name = doc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let namespace = doc["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned();
            match doc["kind"].as_str().unwrap_or_default() {
                "ClusterRole" => {
                    rbac.cluster_roles.insert(name, rules(doc));
                }
                "Role" => {
                    rbac.roles.insert((namespace, name), rules(doc));
                }
                kind @ ("RoleBinding" | "ClusterRoleBinding") => rbac.bindings.push(Binding {
                    namespace: (kind == "RoleBinding").then_some(namespace),
                    role_kind: doc["roleRef"]["kind"].as_str().unwrap_or_default().into(),
                    role: doc["roleRef"]["name"].as_str().unwrap_or_default().into(),
                    subjects: doc["subjects"].as_array().cloned().unwrap_or_default(),
                }),
                _ => {}
            }
        }
        rbac
    }

    fn subject_is(subject: &Value, user: &User) -> bool {
        let name = subject["name"].as_str().unwrap_or_default();
        match subject["kind"].as_str().unwrap_or_default() {
            "ServiceAccount" => {
                let ns = subject["namespace"].as_str().unwrap_or_default();
                user.name == format!("system:serviceaccount:{ns}:{name}")
            }
            "User" => user.name == name,
            "Group" => user.groups.iter().any(|g| g == name),
            _ => false,
        }
    }

    pub fn allows(&self, user: &User, a: &Attributes) -> bool {
        if user.groups.iter().any(|g| g == MASTERS) {
            return true;
        }
        self.bindings.iter().any(|b| {
            if !b.subjects.iter().any(|s| Self::subject_is(s, user)) {
                return false;
            }
            if let Some(ns) = &b.namespace
                && a.namespace.as_ref() != Some(ns)
            {
                return false;
            }
            let rules = match (b.role_kind.as_str(), &b.namespace) {
                ("ClusterRole", _) => self.cluster_roles.get(&b.role),
                ("Role", Some(ns)) => self.roles.get(&(ns.clone(), b.role.clone())),
                _ => None,
            };
            rules.is_some_and(|rules| rules.iter().any(|r| r.allows(a)))
        })
    }
}

/// The API server's wording of a refusal.
pub(crate) fn forbidden_message(user: &User, a: &Attributes, group_resource: &str) -> String {
    let resource = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let object = match &a.name {
        Some(n) => format!("{group_resource} {n:?} is forbidden"),
        None => format!("{group_resource} is forbidden"),
    };
    let scope = match &a.namespace {
        Some(ns) => format!("in the namespace {ns:?}"),
        None => "at the cluster scope".into(),
    };
    format!(
        "{object}: User {:?} cannot {} resource {resource:?} in API group {:?} {scope}",
        user.name, a.verb, a.group
    )
}
