//! Fleet secret files: 32 random bytes, readable by their owner only.
//!
//! `flotilla keygen --fleet-secret FILE` creates one; `--fleet-secret FILE` loads one. A file
//! that others can read, or that is too short to resist guessing, is refused: the secret is what
//! keeps strangers out of the fleet's channel.

use crate::core::auth::{fleet_key, FleetKey, MIN_SECRET_LEN};
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Largest fleet secret file read.
const MAX_SECRET_FILE: u64 = 4096;

/// Why a fleet secret file was refused.
#[derive(Debug)]
pub enum SecretError {
    /// It could not be read or written.
    Io(String, io::Error),
    /// Group or others may read it.
    Readable(String, u32),
    /// It holds fewer than `MIN_SECRET_LEN` bytes (or is not a regular file of sane size).
    TooShort(String, u64),
    /// `keygen` would overwrite it.
    Exists(String),
}

impl std::fmt::Display for SecretError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretError::Io(p, e) => write!(f, "cannot use the fleet secret {p}: {e}"),
            SecretError::Readable(p, mode) => {
                write!(f, "the fleet secret {p} is readable by others (mode {mode:o}); chmod 600 it")
            }
            SecretError::TooShort(p, n) => write!(
                f,
                "the fleet secret {p} holds {n} bytes; it needs at least {MIN_SECRET_LEN} random ones \
                 (flotilla keygen --fleet-secret FILE makes one)"
            ),
            SecretError::Exists(p) => write!(f, "{p} already exists: refusing to overwrite a fleet secret"),
        }
    }
}

impl std::error::Error for SecretError {}

/// Writes a new fleet secret of `MIN_SECRET_LEN` random bytes to `path`, mode 0600, never over
/// an existing file.
pub fn create(path: &Path) -> Result<(), SecretError> {
    let name = path.display().to_string();
    let io = |e| SecretError::Io(name.clone(), e);
    let mut secret = [0u8; MIN_SECRET_LEN];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut secret)).map_err(io)?;
    let mut file = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(SecretError::Exists(name)),
        other => other.map_err(io)?,
    };
    file.write_all(&secret).and_then(|()| file.sync_all()).map_err(io)
}

/// Loads the fleet key from the secret file at `path`, refusing a file others may read or one
/// too short.
pub fn load(path: &Path) -> Result<FleetKey, SecretError> {
    let name = path.display().to_string();
    let io = |e| SecretError::Io(name.clone(), e);
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if meta.mode() & 0o077 != 0 {
        return Err(SecretError::Readable(name, meta.mode() & 0o777));
    }
    let mut secret = Vec::new();
    file.take(MAX_SECRET_FILE).read_to_end(&mut secret).map_err(io)?;
    if !meta.is_file() || secret.len() < MIN_SECRET_LEN {
        return Err(SecretError::TooShort(name, secret.len() as u64));
    }
    Ok(fleet_key(&secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_secrets_load_and_weak_or_readable_ones_are_refused() {
        let dir = std::env::temp_dir().join(format!("flotilla-fleet-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fleet.secret");
        create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), MIN_SECRET_LEN);
        let key = load(&path).unwrap();
        assert!(matches!(create(&path), Err(SecretError::Exists(_))), "never overwritten");
        assert_eq!(load(&path).unwrap(), key, "the same file gives the same key");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(load(&path), Err(SecretError::Readable(_, 0o640))));

        let short = dir.join("short.secret");
        std::fs::write(&short, [1u8; MIN_SECRET_LEN - 1]).unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = load(&short).unwrap_err();
        assert!(err.to_string().contains("at least 32"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
