//! Manifest YAML → validation → a snapshot.
//! The work is in `mailroom::fuzzing`, shared with the regression test over
//! the corpus (`tests/fuzz_corpus.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailroom::fuzzing::manifest(data));
