//! Replacing a small file so that a crash leaves either the old one or the new one, whole.
//!
//! Write a temporary beside it, sync it, rename it over the old one, then sync the directory so
//! the rename itself survives a power cut. The resume state, the no-rollback history and the
//! manifests `publish` writes all go through [`replace_file`]. The temporary has a random name
//! and is created with `O_EXCL` and `O_NOFOLLOW` ([`safe_fs`]): nothing planted in a shared
//! directory is written through. The `_in` variants take the filesystem ([`Fs`]); the others
//! are them on the real disk.

use crate::store::safe_fs::{create_fresh_in, Fs, FsFile, RealFs};
use std::io;
use std::path::{Path, PathBuf};

/// `path` with `suffix` appended to its file name (`fw.img` -> `fw.img.part`); unlike
/// `set_extension`, which would turn `fw.img` into `fw.part`.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Replaces `path` with `bytes`, leaving it with `mode`: write a fresh temporary beside it, sync
/// it, rename it over `path`, sync the directory.
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    replace_file_in(&RealFs, path, bytes, mode)
}

/// [`replace_file`] on `fs`, through a temporary that `fs` names ([`Fs::temp_name`]: random on
/// the real disk). The no-rollback history and the hooks owed are written so.
pub fn replace_file_in<F: Fs>(fs: &F, path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    replace_file_via_in(fs, path, &fs.temp_name(path)?, bytes, mode)
}

/// [`replace_file`] through a temporary path the caller computed once (with
/// [`safe_fs::random_temp_name`](crate::store::safe_fs::random_temp_name)), so that a caller
/// replacing the same file often (the resume state) does not allocate each time.
pub fn replace_file_via(path: &Path, tmp: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    replace_file_via_in(&RealFs, path, tmp, bytes, mode)
}

/// [`replace_file_via`] on `fs`. The order is the point: the temporary's bytes are durable before
/// its name can replace the old file's, and the caller hears Ok only once the rename is durable.
pub fn replace_file_via_in<F: Fs>(fs: &F, path: &Path, tmp: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let written = create_fresh_in(fs, tmp, mode).and_then(|f| {
        f.write_all_at(bytes, 0)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| fs.rename(tmp, path)) {
        // A full disk must not leave temporaries behind to fill it further.
        let _ = fs.remove_file(tmp);
        return Err(e);
    }
    fs.sync_dir(parent_dir(path))
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a rename or creation in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    RealFs.sync_dir(dir)
}

/// Best effort: used for leftovers that are harmless if they stay (a stale state file is
/// ignored once the final file exists).
pub fn remove_if_present(path: &Path) {
    remove_if_present_in(&RealFs, path)
}

/// [`remove_if_present`] on `fs`.
pub fn remove_if_present_in<F: Fs>(fs: &F, path: &Path) {
    match fs.remove_file(path) {
        Ok(()) => log::debug!("removed {}", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("cannot remove {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_leaves_the_new_bytes_and_no_temporary() {
        let dir = std::env::temp_dir().join(format!("flotilla-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        replace_file(&path, b"old", 0o600).unwrap();
        replace_file(&path, b"new", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, [std::ffi::OsString::from("f")], "no temporary is left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_and_parents() {
        assert_eq!(with_suffix(Path::new("/d/fw.img"), ".part"), Path::new("/d/fw.img.part"));
        assert_eq!(parent_dir(Path::new("fw.img")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/d/fw.img")), Path::new("/d"));
    }
}
