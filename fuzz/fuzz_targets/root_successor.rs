//! Root::check_successor (and advance) on a fuzzed root body re-signed with fixed keys, against
//! fixed roots, reaching the checks behind the signatures.
//! The checks are in `fuzz/src/root_successor.rs`.
#![no_main]

#[path = "../src/root_successor.rs"]
#[allow(dead_code)] // seeds() and the key list serve the seed tests
mod root_successor;

libfuzzer_sys::fuzz_target!(|data: &[u8]| root_successor::root_successor(data));
