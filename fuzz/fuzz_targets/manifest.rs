//! SignedManifest::decode on a manifest file from anyone.
//! The checks are in `flotilla_fuzz::manifest` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_fuzz::manifest(data));
