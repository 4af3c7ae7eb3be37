//! wire::decode_message (and decode_peers) on a frame payload, with a re-encoding round trip.
//! The checks are in `flotilla_fuzz::message` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_fuzz::message(data));
