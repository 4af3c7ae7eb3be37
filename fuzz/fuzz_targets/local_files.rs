//! The files a device keeps: history, hooks owed, key files, trust roots.
//! The checks are in `flotilla_fuzz::local_files` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_fuzz::local_files(data));
