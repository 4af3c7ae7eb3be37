//! SignedManifest::decode on a fuzzed body signed with a fixed key, reaching the field checks.
//! The checks are in `flotilla_fuzz::manifest_resigned` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_fuzz::manifest_resigned(data));
