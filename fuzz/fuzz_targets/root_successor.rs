//! Root::check_successor (and advance) on a fuzzed root body re-signed with fixed keys, against
//! fixed roots, reaching the checks behind the signatures.
//! The checks are in `fuzz/src/root_successor.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_fuzz::root_successor(data));
