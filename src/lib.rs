//! Flotilla: peer-to-peer distribution of operator-signed releases to fleets of small devices.
pub mod agent;
pub mod bitfield;
pub mod manifest;
pub mod session;
pub mod store;
pub mod swarm;
pub mod wire;
