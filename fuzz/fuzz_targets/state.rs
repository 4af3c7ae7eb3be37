//! store::parse_state on a resume state file.
//! The checks are in `flotilla_fuzz::state` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_fuzz::state(data));
