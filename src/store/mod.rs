//! Where a release's bytes are kept.
//!
//! [`file::FileStore`] keeps them on disk (crash-only: `FILE.part`, `FILE.state`, `FILE`);
//! the in-memory store keeps them in RAM for simulation. Both implement the core's
//! [`Storage`](crate::core::release::Storage) interface. Manifest and key files and the
//! no-rollback history live here too: every file the agent reads or writes has its owner in
//! this folder.
pub mod atomic;
pub mod device_id;
pub mod file;
pub mod fleet_secret;
pub mod history;
pub mod manifest_file;
pub mod memory;
pub mod model_fs;
pub mod pending_hooks;
pub mod root_file;
pub mod safe_fs;
