//! discovery::Announcement::decode on one multicast datagram.
//! The checks are in `flotilla_fuzz::announcement` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_fuzz::announcement(data));
