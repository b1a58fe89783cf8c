//! `mailroom status --manifests DIR`: a `kubectl get`-like table of the status
//! files that `mailroom run` writes.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
struct Document {
    kind: String,
    metadata: Meta,
    #[serde(default)]
    status: Value,
}

#[derive(Debug, Deserialize)]
struct Meta {
    name: String,
    namespace: String,
}

/// One row: Namespace, Name, Kind, Ready, Reason, Server, Rejected.
pub(crate) type Row = [String; 7];

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "yaml") {
            out.push(path);
        }
    }
    Ok(())
}

/// The rows of every status file under `status_dir`, sorted.
pub fn rows(status_dir: &Path) -> std::io::Result<Vec<Row>> {
    let mut files = Vec::new();
    if status_dir.exists() {
        walk(status_dir, &mut files)?;
    }
    let mut rows = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let Ok(doc) = serde_yaml::from_str::<Document>(&text) else {
            continue;
        };
        let ready = doc.status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .cloned()
            .unwrap_or_default();
        let text_of = |v: &Value| v.as_str().unwrap_or("-").to_owned();
        let server = match (
            doc.status["effective"]["server"].as_str(),
            doc.status["effective"]["port"].as_i64(),
        ) {
            (Some(s), Some(p)) => format!("{s}:{p}"),
            _ => "-".to_owned(),
        };
        let stats = &doc.status["stats"];
        let rejected = stats["rejected"]
            .as_i64()
            .or_else(|| stats["blocked"].as_i64())
            .map(|n| n.to_string())
            .unwrap_or_else(|| "-".into());
        rows.push([
            doc.metadata.namespace,
            doc.metadata.name,
            doc.kind,
            text_of(&ready["status"]),
            text_of(&ready["reason"]),
            server,
            rejected,
        ]);
    }
    rows.sort();
    Ok(rows)
}

/// The table, columns padded to their widest cell.
pub fn render(rows: &[Row]) -> String {
    let header: Row = [
        "NAMESPACE",
        "NAME",
        "KIND",
        "READY",
        "REASON",
        "SERVER",
        "REJECTED",
    ]
    .map(str::to_owned);
    let mut widths = [0usize; 7];
    for row in std::iter::once(&header).chain(rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}
