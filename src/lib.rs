//! Flotilla: peer-to-peer distribution of operator-signed releases to fleets of small devices.
pub mod agent;
pub mod auth;
pub mod bitfield;
pub mod discovery;
pub mod history;
pub mod manifest;
pub mod session;
pub mod status;
pub mod store;
pub mod swarm;
mod sys;
pub mod wire;
