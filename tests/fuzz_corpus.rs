//! Every seed of the fuzz corpus (`fuzz/corpus/TARGET/`) and every finding
//! kept as a regression (`fuzz/regressions/TARGET/`) through the same code as
//! its fuzz target: each returns, none panics. `scripts/fuzz` runs the
//! targets themselves.

use std::path::Path;
use std::time::{Duration, Instant};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("mail", mailroom_core::fuzzing::mail),
    ("manifest", mailroom::fuzzing::manifest),
    ("submission", mailroom_core::fuzzing::submission),
    ("pop3", mailroom_core::fuzzing::pop3),
    ("imap", mailroom_core::fuzzing::imap),
];

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_seed_and_finding_goes_through_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut seen = 0;
    for (name, target) in TARGETS {
        let seeds = inputs(&root.join("corpus").join(name));
        assert!(!seeds.is_empty(), "no seeds for {name}");
        for file in seeds
            .iter()
            .chain(&inputs(&root.join("regressions").join(name)))
        {
            let data = std::fs::read(file).unwrap();
            let began = Instant::now();
            target(&data);
            // Hostile input is handled, and in reasonable time.
            assert!(
                began.elapsed() < Duration::from_secs(20),
                "{} took {:?}",
                file.display(),
                began.elapsed()
            );
            seen += 1;
        }
    }
    assert!(seen >= 25, "{seen} inputs");
}
