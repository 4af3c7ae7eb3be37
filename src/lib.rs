//! Flotilla: peer-to-peer distribution of operator-signed releases to fleets of small devices.
//!
//! Three layers, each in its own folder:
//! - [`core`]: the protocol as state machines that do no I/O and read no clock: frames,
//!   manifests, sessions, the swarm of one release, and [`core::release::Release`], the one
//!   owner of a release's chunk state, generic over where its bytes are kept.
//! - [`store`]: where the bytes are kept: the data file and its resume state on disk, an
//!   in-memory store for simulation, manifest and key files, the no-rollback history.
//! - [`agent`]: the mio shell: sockets, timers, the data directory, hooks, the status socket.
pub mod agent;
pub mod core;
/// The fleet simulator (`examples/fleet.rs`); not part of the agent's binary.
pub mod sim;
pub mod store;
