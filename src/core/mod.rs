//! The protocol core: everything that decides, nothing that does I/O.
//!
//! Nothing under `core` opens a socket or a file or reads a clock: time comes in as
//! `now: Instant`, bytes come in as `&[u8]`, randomness comes from a seeded [`rng::Rng`] the
//! caller owns, and what to send, what to write and when to wake up come out of `poll_*` calls.
//! That is what lets the same code run inside the mio agent and inside a deterministic
//! simulation with fake time (see `tests/protocol.rs`).
pub mod auth;
pub mod bitfield;
pub mod discovery;
pub mod http;
pub mod manifest;
pub mod rate;
pub mod release;
pub mod rng;
pub mod scope;
pub mod session;
pub mod signed;
pub mod storage;
pub mod swarm;
pub mod tracker;
pub mod trust;
pub mod wire;
