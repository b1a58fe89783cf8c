//! Label and field selectors as list and watch take them.

use serde_json::Value;

#[derive(Clone, Debug)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

/// Both selectors of one request; empty ones select everything.
#[derive(Clone, Debug, Default)]
pub(crate) struct Selector {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

/// Splits on commas outside parentheses.
fn terms(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out.push(current);
    out.into_iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

fn set(values: &str) -> Result<Vec<String>, String> {
    let inner = values
        .trim()
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised set, found {values:?}"))?;
    Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
}

fn parse(s: &str, set_based: bool) -> Result<Vec<Requirement>, String> {
    let mut out = Vec::new();
    for term in terms(s) {
        let req = if let Some((k, v)) = term.split_once("!=") {
            Requirement::NotEquals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = term.split_once("==") {
            Requirement::Equals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = term.split_once('=') {
            Requirement::Equals(k.trim().into(), v.trim().into())
        } else if set_based && let Some((k, v)) = term.split_once(" notin ") {
            Requirement::NotIn(k.trim().into(), set(v)?)
        } else if set_based && let Some((k, v)) = term.split_once(" in ") {
            Requirement::In(k.trim().into(), set(v)?)
        } else if set_based && let Some(k) = term.strip_prefix('!') {
            Requirement::Absent(k.trim().into())
        } else if set_based {
            Requirement::Exists(term)
        } else {
            return Err(format!("invalid selector term {term:?}"));
        };
        out.push(req);
    }
    Ok(out)
}

fn matches(req: &Requirement, value: impl Fn(&str) -> Option<String>) -> bool {
    match req {
        Requirement::Equals(k, v) => value(k).as_deref() == Some(v),
        Requirement::NotEquals(k, v) => value(k).as_deref() != Some(v),
        Requirement::In(k, vs) => value(k).is_some_and(|x| vs.contains(&x)),
        Requirement::NotIn(k, vs) => !value(k).is_some_and(|x| vs.contains(&x)),
        Requirement::Exists(k) => value(k).is_some(),
        Requirement::Absent(k) => value(k).is_none(),
    }
}

fn key(req: &Requirement) -> &str {
    match req {
        Requirement::Equals(k, _)
        | Requirement::NotEquals(k, _)
        | Requirement::In(k, _)
        | Requirement::NotIn(k, _)
        | Requirement::Exists(k)
        | Requirement::Absent(k) => k,
    }
}

/// Fields a kind can be selected by, beyond `metadata.name` and `metadata.namespace`.
fn selectable(kind: &str) -> &'static [&'static str] {
    match kind {
        "Secret" => &["type"],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.name",
            "involvedObject.namespace",
            "involvedObject.uid",
            "regarding.kind",
            "regarding.name",
            "regarding.namespace",
            "regarding.uid",
            "reason",
            "type",
        ],
        "Namespace" => &["status.phase"],
        _ => &[],
    }
}

impl Selector {
    pub fn parse(labels: Option<&str>, fields: Option<&str>, kind: &str) -> Result<Self, String> {
        let labels = parse(labels.unwrap_or_default(), true)?;
        let fields = parse(fields.unwrap_or_default(), false)?;
        for f in &fields {
            let k = key(f);
            if !["metadata.name", "metadata.namespace"].contains(&k)
                && !selectable(kind).contains(&k)
            {
                return Err(format!("field label not supported: {k}"));
            }
        }
        Ok(Self { labels, fields })
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.labels.iter().all(|r| {
            matches(r, |k| {
                labels.get(k).and_then(Value::as_str).map(str::to_owned)
            })
        }) && self.fields.iter().all(|r| {
            matches(r, |k| {
                let mut node = object;
                for part in k.split('.') {
                    node = node.get(part)?;
                }
                // An unset field selects as the empty string, as on a real server.
                Some(node.as_str().map(str::to_owned).unwrap_or_default())
            })
        })
    }
}
