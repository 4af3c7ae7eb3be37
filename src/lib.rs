//! Flotilla: peer-to-peer distribution of operator-signed releases to fleets of small devices.
pub mod bitfield;
pub mod wire;
