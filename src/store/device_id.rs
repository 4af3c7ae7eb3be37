//! This device's id: 16 random bytes made once, kept in `STATE_DIR/.flotilla-device` as one
//! line of hex. It chooses the device's moment in a staged rollout and names it in status and
//! metrics. It is random, never the MAC address or anything else that identifies the hardware
//! to someone who reads it. A damaged file is an error, not a new id: a new id would silently
//! move the device to another place in every rollout.

use crate::core::manifest::{from_hex_bytes, to_hex};
use crate::store::atomic::replace_file;
use crate::store::history::read_record;
use crate::store::safe_fs::{self, RealFs, DATA_MODE};
use std::io;
use std::path::Path;

/// Bytes of a device id.
pub const DEVICE_ID_LEN: usize = 16;

/// A device id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceId(pub [u8; DEVICE_ID_LEN]);

impl DeviceId {
    /// The file name inside a state directory.
    pub const FILE: &'static str = ".flotilla-device";

    /// The id kept in `dir`, made (and kept, atomically) if there is none yet.
    pub fn load_or_create(dir: &Path) -> io::Result<DeviceId> {
        let path = dir.join(DeviceId::FILE);
        let text = read_record(&RealFs, &path, 64)?;
        if !text.is_empty() {
            return DeviceId::parse(&text).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{} is damaged: {text:?}", path.display()))
            });
        }
        let mut id = [0u8; DEVICE_ID_LEN];
        safe_fs::os_random(&mut id)?;
        let id = DeviceId(id);
        replace_file(&path, format!("{}\n", id.to_hex()).as_bytes(), DATA_MODE)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))?;
        Ok(id)
    }

    /// An id from its file's text: 32 hex digits and a newline.
    pub fn parse(text: &str) -> Option<DeviceId> {
        let hex = text.strip_suffix('\n')?;
        let bytes = from_hex_bytes::<DEVICE_ID_LEN>(hex)?;
        Some(DeviceId(bytes))
    }

    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_made_once_and_a_damaged_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("flotilla-device-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let first = DeviceId::load_or_create(&dir).unwrap();
        assert_eq!(DeviceId::load_or_create(&dir).unwrap(), first, "kept across restarts");
        let other = std::env::temp_dir().join(format!("flotilla-device-{}-b", std::process::id()));
        let _ = std::fs::remove_dir_all(&other);
        std::fs::create_dir_all(&other).unwrap();
        assert_ne!(DeviceId::load_or_create(&other).unwrap(), first, "random per device");
        std::fs::write(dir.join(DeviceId::FILE), "not hex\n").unwrap();
        let err = DeviceId::load_or_create(&dir).unwrap_err();
        assert!(err.to_string().contains("is damaged"), "{err}");
        assert_eq!(std::fs::read_to_string(dir.join(DeviceId::FILE)).unwrap(), "not hex\n", "never overwritten");
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&other);
    }
}
