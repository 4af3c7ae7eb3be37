//! A whole connection driven by a peer: handshake (with and without a fleet secret), honest
//! traffic, time, and injected messages. The checks are in `flotilla_fuzz::session`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_fuzz::session(data));
