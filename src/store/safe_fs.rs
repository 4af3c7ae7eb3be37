//! Opening files so that a directory shared with others cannot turn our writes against us.
//!
//! An agent often runs as root and writes beside files others can create (a `fetch --out` into
//! `/tmp`, a data directory an operator's tools also write). A symlink planted at `FILE.part`,
//! `FILE.state` or a temporary name would make a plain `open(O_CREAT|O_TRUNC)` truncate and
//! overwrite whatever it points at. So every file we write is opened with `O_NOFOLLOW`; a file
//! we expect to be ours must be a regular file owned by our user; temporary files get a random
//! name and `O_EXCL`, so nobody can have placed anything there first; and modes are explicit,
//! never left to the umask.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of a release's data file: any user may read a release, only we may change it.
pub const DATA_MODE: u32 = 0o644;
/// Mode of private state: resume state, history, secrets.
pub const PRIVATE_MODE: u32 = 0o600;

/// Fills `buf` from the kernel's CSPRNG (`getrandom(2)`); an error if it cannot, never a weaker
/// source in its place.
pub fn os_random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: writes at most `rest.len()` bytes into `rest`, which we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr() as *mut libc::c_void, rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

/// `path` with `.tmp.` and 16 random hex digits appended: a name nobody can guess in advance.
pub fn random_temp_name(path: &Path) -> io::Result<PathBuf> {
    let mut r = [0u8; 8];
    os_random(&mut r)?;
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".tmp.{:016x}", u64::from_le_bytes(r)));
    Ok(PathBuf::from(s))
}

/// Removes the temporaries of `path` ([`random_temp_name`]) that a crash left behind: each run
/// picks a new name, so without this every kill mid-write would leave one more file.
pub fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else { return };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let prefix = format!("{name}.tmp.");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)) {
            // unlink never follows a symlink: only the name goes.
            crate::store::atomic::remove_if_present(&e.path());
        }
    }
}

/// Creates `path` anew (`O_EXCL`, `O_NOFOLLOW`) with `mode`, for writing. If something is
/// there already (a temporary a crash left behind, or something planted), it is unlinked, never
/// followed, and creation is tried once more.
pub fn create_fresh(path: &Path, mode: u32) -> io::Result<File> {
    let open = || OpenOptions::new().write(true).create_new(true).mode(mode).custom_flags(libc::O_NOFOLLOW).open(path);
    let file = match open() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(path)?;
            open()?
        }
        other => other?,
    };
    // The umask may have taken bits away; the mode is ours to say.
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(file)
}

/// Opens `path` for reading without following a symlink at its last component.
pub fn open_read(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// Opens or creates `path` for reading and writing with `mode`, without following a symlink,
/// and checks that what it opened is a regular file owned by our user: a `.part` someone else
/// put there is refused, not written through.
pub fn open_own_rw(path: &Path, mode: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    check_own_regular(&file, path)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(file)
}

/// Ok if `file` (opened from `path`) is a regular file owned by our effective user.
pub fn check_own_regular(file: &File, path: &Path) -> io::Result<()> {
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a regular file", path.display())));
    }
    if meta.uid() != uid {
        let why = format!("{} belongs to user {}, not to us ({uid}): refusing to use it", path.display(), meta.uid());
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flotilla-safefs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_planted_symlink_is_never_written_through() {
        let d = dir("symlink");
        let victim = d.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let part = d.join("fw.img.part");
        std::os::unix::fs::symlink(&victim, &part).unwrap();
        assert!(open_own_rw(&part, DATA_MODE).is_err(), "O_NOFOLLOW refuses the link");
        assert!(open_read(&part).is_err());
        // create_fresh removes the link itself and creates a file in its place.
        let mut f = create_fresh(&part, PRIVATE_MODE).unwrap();
        std::io::Write::write_all(&mut f, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "the link's target is untouched");
        assert_eq!(std::fs::metadata(&part).unwrap().permissions().mode() & 0o777, PRIVATE_MODE);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_directory_is_not_a_part_file_and_temp_names_differ() {
        let d = dir("dir");
        let part = d.join("x.part");
        std::fs::create_dir(&part).unwrap();
        assert!(open_own_rw(&part, DATA_MODE).is_err());
        let a = random_temp_name(&d.join("s")).unwrap();
        let b = random_temp_name(&d.join("s")).unwrap();
        assert_ne!(a, b);
        std::fs::write(&a, b"left by a crash").unwrap();
        std::fs::write(d.join("s.tmp"), b"not ours").unwrap();
        remove_stale_temps(&d.join("s"));
        assert!(!a.exists(), "a stale temporary is removed");
        assert!(d.join("s.tmp").exists(), "only names of the temporary pattern are");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_part_owned_by_someone_else_is_refused() {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // only root can give a file away; CI runs as root
        }
        let d = dir("owner");
        let part = d.join("fw.img.part");
        std::fs::write(&part, b"theirs").unwrap();
        std::os::unix::fs::chown(&part, Some(65534), None).unwrap();
        let e = open_own_rw(&part, DATA_MODE).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
