//! wire::parse_frame over a receive buffer, then decode_message on every payload.
//! The checks are in `flotilla_fuzz::frame` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_fuzz::frame(data));
