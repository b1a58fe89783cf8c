//! Raw mail → parse → loop and filter judgement → ticket → JSON.
//! The work is in `mailroom_core::fuzzing`, shared with the regression test over
//! the corpus (`tests/fuzz_corpus.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailroom_core::fuzzing::mail(data));
