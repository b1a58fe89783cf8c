//! `mailroom test-connection -f FILE`: the help page's Test Connection button
//! outside a cluster. Runs the staged test of every server in FILE and prints
//! each stage with ✓/✗, its time, the certificate's expiry and, on failure,
//! what to do.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::manifests::{Key, Snapshot, load_files};
use super::supervisor::{INCOMING_KIND, OUTGOING_KIND};
use super::writeback::SecretFiles;
use crate::api::validation::ManifestValidator;
use crate::resolve::Sources;
use mailroom_core::connection::{ConnectionReport, Failure, Reason};
use mailroom_core::oauth2::Tokens;

/// One server's result.
#[derive(Debug)]
pub struct Checked {
    pub kind: &'static str,
    pub key: Key,
    pub outcome: Result<ConnectionReport, Failure>,
}

impl Checked {
    pub fn passed(&self) -> bool {
        matches!(&self.outcome, Ok(r) if r.reason == Reason::Connected)
    }
}

/// Tests every server of the files (Secrets may come from other files).
pub async fn check(files: &[PathBuf], validator: &ManifestValidator) -> (Snapshot, Vec<Checked>) {
    let snapshot = load_files(files, validator);
    // A provider may rotate the refresh token even for a test sign-in.
    let tokens = Tokens::new(Some(Arc::new(SecretFiles::Files(files.to_vec()))));
    let mut results = Vec::new();
    for (key, loaded) in &snapshot.incoming {
        let sources = Sources {
            namespace: &key.namespace,
            secrets: &snapshot.secrets_in(&key.namespace),
            config_maps: &snapshot.config_maps_in(&key.namespace),
            tokens: &tokens,
        };
        let outcome = match crate::resolve::incoming_settings(key, &loaded.object.spec, sources) {
            Ok(settings) => Ok(mailroom_core::incoming::test_connection(&settings).await),
            Err(f) => Err(f),
        };
        results.push(Checked {
            kind: INCOMING_KIND,
            key: key.clone(),
            outcome,
        });
    }
    for (key, loaded) in &snapshot.outgoing {
        let sources = Sources {
            namespace: &key.namespace,
            secrets: &snapshot.secrets_in(&key.namespace),
            config_maps: &snapshot.config_maps_in(&key.namespace),
            tokens: &tokens,
        };
        let outcome = match crate::resolve::outgoing(&loaded.object.spec, sources) {
            Ok(settings) => Ok(mailroom_core::outgoing::smtp::test_connection(&settings).await),
            Err(f) => Err(f),
        };
        results.push(Checked {
            kind: OUTGOING_KIND,
            key: key.clone(),
            outcome,
        });
    }
    (snapshot, results)
}

fn days_left(not_after: SystemTime) -> i64 {
    match not_after.duration_since(SystemTime::now()) {
        Ok(d) => (d.as_secs() / 86_400) as i64,
        Err(e) => -((e.duration().as_secs() / 86_400) as i64),
    }
}

/// The printed report of one server.
pub fn render(c: &Checked) -> String {
    let mut out = format!("{} {}/{}\n", c.kind, c.key.namespace, c.key.name);
    match &c.outcome {
        Err(f) => {
            let _ = writeln!(out, "  ✗ Secret    {}: {}", f.reason, f.message);
            let _ = writeln!(out, "  result: {}", f.reason);
        }
        Ok(report) => {
            for stage in &report.stages {
                let mark = if stage.ok { '✓' } else { '✗' };
                let name = serde_json::to_value(stage.stage)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let _ = write!(out, "  {mark} {name:<9} {:>5} ms", stage.latency_ms);
                if !stage.ok
                    && let Some(d) = &stage.detail
                {
                    let _ = write!(out, "  {d}");
                }
                out.push('\n');
            }
            if let Some(cert) = &report.certificate {
                let expiry = jiff::Timestamp::try_from(cert.not_after)
                    .map(|t| t.strftime("%Y-%m-%d").to_string())
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "    certificate {} (issuer {}), expires {expiry} ({} days)",
                    cert.subject,
                    cert.issuer,
                    days_left(cert.not_after)
                );
            }
            if !report.capabilities.is_empty() {
                let _ = writeln!(out, "    capabilities: {}", report.capabilities.join(" "));
            }
            if report.reason == Reason::Connected {
                let _ = writeln!(
                    out,
                    "  result: Connected in {} ms",
                    report.latency.as_millis()
                );
            } else {
                let _ = writeln!(out, "  result: {}: {}", report.reason, report.message);
            }
        }
    }
    out
}
