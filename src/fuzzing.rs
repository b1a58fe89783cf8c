//! What the manifest fuzz target (`fuzz/`) does with its input, shared with
//! the regression test over the corpus (`tests/fuzz_corpus.rs`); the mail
//! side's targets are in `mailroom_core::fuzzing`.

use std::path::Path;
use std::sync::OnceLock;

use crate::api::validation::ManifestValidator;
use crate::standalone::manifests::{Snapshot, load_text};

/// Manifest YAML → validation (schema, defaults, CEL rules) → a snapshot.
pub fn manifest(text: &[u8]) {
    static VALIDATOR: OnceLock<ManifestValidator> = OnceLock::new();
    let validator =
        VALIDATOR.get_or_init(|| ManifestValidator::new().expect("the CRD schemas compile"));
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let mut snapshot = Snapshot::default();
    load_text(Path::new("fuzz.yaml"), text, validator, &mut snapshot);
}
