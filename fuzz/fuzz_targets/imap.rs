//! The IMAP answers mailroom interprets.
//! The work is in `mailroom_core::fuzzing`, shared with the regression test over
//! the corpus (`tests/fuzz_corpus.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailroom_core::fuzzing::imap(data));
