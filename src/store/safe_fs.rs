//! Opening files so that a directory shared with others cannot turn our writes against us, and
//! the filesystem interface ([`Fs`]) through which the store reaches the disk.
//!
//! An agent often runs as root and writes beside files others can create (a `fetch --out` into
//! `/tmp`, a data directory an operator's tools also write). A symlink planted at `FILE.part`,
//! `FILE.state` or a temporary name would make a plain `open(O_CREAT|O_TRUNC)` truncate and
//! overwrite whatever it points at. So every file we write is opened with `O_NOFOLLOW`; a file
//! we expect to be ours must be a regular file owned by our user; temporary files get a random
//! name and `O_EXCL`, so nobody can have placed anything there first; and modes are explicit,
//! never left to the umask.
//!
//! The store performs a handful of filesystem operations (open with flags, pread, pwrite,
//! set_len, fsync, rename, fsync of a directory, unlink, list a directory). They go through
//! [`Fs`] so that a test can put a filesystem that loses unsynced data in a power cut
//! ([`crate::store::model_fs`]) under the very code the agent runs; [`RealFs`], the default, is
//! std and libc, one call each.

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of a release's data file: any user may read a release, only we may change it.
pub const DATA_MODE: u32 = 0o644;
/// Mode of private state: resume state, history, secrets.
pub const PRIVATE_MODE: u32 = 0o600;

/// How a file is opened: the few combinations the store uses, named by their constructors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFlags {
    /// Open for reading.
    pub read: bool,
    /// Open for writing.
    pub write: bool,
    /// `O_CREAT`: create the file if it is missing, with `mode`.
    pub create: bool,
    /// `O_EXCL` (with `create`): fail with `AlreadyExists` if the name is taken.
    pub exclusive: bool,
    /// Follow a symlink at the last component; everything we write is opened without.
    pub follow: bool,
    /// Mode of a created file.
    pub mode: u32,
}

impl OpenFlags {
    /// Read-only, following symlinks: `File::open`.
    pub const READ: OpenFlags =
        OpenFlags { read: true, write: false, create: false, exclusive: false, follow: true, mode: 0 };
    /// Read-only, `O_NOFOLLOW`.
    pub const READ_NOFOLLOW: OpenFlags = OpenFlags { follow: false, ..OpenFlags::READ };

    /// Write-only, created anew: `O_CREAT|O_EXCL|O_NOFOLLOW`.
    pub const fn create_new(mode: u32) -> OpenFlags {
        OpenFlags { read: false, write: true, create: true, exclusive: true, follow: false, mode }
    }

    /// Read-write, created if missing, never truncated: `O_CREAT|O_NOFOLLOW`.
    pub const fn read_write_create(mode: u32) -> OpenFlags {
        OpenFlags { read: true, write: true, create: true, exclusive: false, follow: false, mode }
    }
}

/// What the store asks of an open file's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// Size in bytes.
    pub len: u64,
    /// A regular file (not a directory, device, ...).
    pub is_file: bool,
    /// Owner's user id.
    pub uid: u32,
}

/// A filesystem as the store uses it: names in directories, and durability on request.
pub trait Fs: fmt::Debug {
    /// An open file.
    type File: FsFile;
    /// Opens `path` as `flags` say.
    fn open(&self, path: &Path, flags: OpenFlags) -> io::Result<Self::File>;
    /// Renames `from` over `to` (atomic replacement); durable only once the directory is synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Unlinks `path` (never follows a symlink).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the creations, renames and unlinks in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// The names in `dir`, for the stale-temporary cleanup.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// A temporary name beside `path` nobody can guess ([`random_temp_name`] on a real disk; a
    /// model may pick its own, to stay deterministic).
    fn temp_name(&self, path: &Path) -> io::Result<PathBuf> {
        random_temp_name(path)
    }
}

/// An open file of an [`Fs`].
pub trait FsFile: fmt::Debug {
    /// `pread`: reads at most `buf.len()` bytes at `offset`; 0 at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// `pwrite` until all of `data` is written at `offset`; durable only after a sync.
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// `ftruncate`: sets the length, zero-filling an extension.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// `fsync`: the data and all metadata of the file (not its name) are durable.
    fn sync_all(&self) -> io::Result<()>;
    /// `fdatasync`: the data and what is needed to read it back (its length) are durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Starts writing the file's dirty pages back without waiting for them
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that a later sync has less to wait for.
    /// Promises nothing about durability: only the syncs above do.
    fn start_writeback(&self) -> io::Result<()> {
        Ok(())
    }
    /// `fstat`.
    fn metadata(&self) -> io::Result<FileMeta>;
    /// `fchmod`.
    fn set_mode(&self, mode: u32) -> io::Result<()>;

    /// Fills `buf` from `offset`, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file is shorter")),
                Ok(n) => (buf, offset) = (&mut buf[n..], offset + n as u64),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads the whole file, but never more than `cap` bytes: a small file such as the state.
    fn read_capped(&self, cap: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0; cap];
        let mut len = 0;
        while len < cap {
            match self.read_at(&mut out[len..], len as u64) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        out.truncate(len);
        Ok(out)
    }
}

/// The disk, through std and libc: what the agent runs on.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

impl Fs for RealFs {
    type File = File;

    fn open(&self, path: &Path, f: OpenFlags) -> io::Result<File> {
        let mut o = OpenOptions::new();
        o.read(f.read).write(f.write).truncate(false);
        if f.create {
            // create_new is O_CREAT|O_EXCL; create alone is O_CREAT.
            o.create(!f.exclusive).create_new(f.exclusive).mode(f.mode);
        }
        if !f.follow {
            // O_NONBLOCK too: opening a FIFO or a device someone planted at one of our names
            // returns at once instead of hanging the loop; on regular files it changes nothing.
            o.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
        }
        o.open(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        Ok(std::fs::read_dir(dir)?.flatten().map(|e| e.file_name()).collect())
    }
}

// `File` has inherent methods of the same names: the paths below call those, not these.
impl FsFile for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, data, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn start_writeback(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: a descriptor this File owns; offset 0 and length 0 mean the whole file.
        let rc = unsafe { libc::sync_file_range(self.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn metadata(&self) -> io::Result<FileMeta> {
        let m = File::metadata(self)?;
        Ok(FileMeta { len: m.len(), is_file: m.is_file(), uid: m.uid() })
    }

    fn set_mode(&self, mode: u32) -> io::Result<()> {
        File::set_permissions(self, std::fs::Permissions::from_mode(mode))
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

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
    Ok(temp_name_with(path, u64::from_le_bytes(r)))
}

/// `path` with `.tmp.` and `n` as 16 hex digits appended: the pattern [`remove_stale_temps`]
/// recognises.
pub fn temp_name_with(path: &Path, n: u64) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".tmp.{n:016x}"));
    PathBuf::from(s)
}

/// Removes the temporaries of `path` ([`random_temp_name`]) that a crash left behind: each run
/// picks a new name, so without this every kill mid-write would leave one more file.
pub fn remove_stale_temps(path: &Path) {
    remove_stale_temps_in(&RealFs, path)
}

/// [`remove_stale_temps`] on `fs`.
pub fn remove_stale_temps_in<F: Fs>(fs: &F, path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else { return };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let prefix = format!("{name}.tmp.");
    let Ok(names) = fs.list_dir(dir) else { return };
    for n in names {
        if n.to_str().is_some_and(|n| n.starts_with(&prefix)) {
            // unlink never follows a symlink: only the name goes.
            crate::store::atomic::remove_if_present_in(fs, &dir.join(n));
        }
    }
}

/// Creates the directory `path` and any missing parents, mode 0700 (the state directory holds
/// records no one else should read or replace); an existing directory is left as it is. The
/// error names the path.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create the state directory {}: {e}", path.display())))
}

/// Creates `path` anew (`O_EXCL`, `O_NOFOLLOW`) with `mode`, for writing. If something is
/// there already (a temporary a crash left behind, or something planted), it is unlinked, never
/// followed, and creation is tried once more.
pub fn create_fresh(path: &Path, mode: u32) -> io::Result<File> {
    create_fresh_in(&RealFs, path, mode)
}

/// [`create_fresh`] on `fs`.
pub fn create_fresh_in<F: Fs>(fs: &F, path: &Path, mode: u32) -> io::Result<F::File> {
    let open = || fs.open(path, OpenFlags::create_new(mode));
    let file = match open() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs.remove_file(path)?;
            open()?
        }
        other => other?,
    };
    // The umask may have taken bits away; the mode is ours to say.
    file.set_mode(mode)?;
    Ok(file)
}

/// Opens `path` for reading without following a symlink at its last component.
pub fn open_read(path: &Path) -> io::Result<File> {
    open_read_in(&RealFs, path)
}

/// [`open_read`] on `fs`.
pub fn open_read_in<F: Fs>(fs: &F, path: &Path) -> io::Result<F::File> {
    fs.open(path, OpenFlags::READ_NOFOLLOW)
}

/// Opens or creates `path` for reading and writing with `mode`, without following a symlink,
/// and checks that what it opened is a regular file owned by our user: a `.part` someone else
/// put there is refused, not written through.
pub fn open_own_rw(path: &Path, mode: u32) -> io::Result<File> {
    open_own_rw_in(&RealFs, path, mode)
}

/// [`open_own_rw`] on `fs`.
pub fn open_own_rw_in<F: Fs>(fs: &F, path: &Path, mode: u32) -> io::Result<F::File> {
    let file = fs.open(path, OpenFlags::read_write_create(mode))?;
    check_own_meta(&file.metadata()?, path)?;
    file.set_mode(mode)?;
    Ok(file)
}

/// Ok if `file` (opened from `path`) is a regular file owned by our effective user.
pub fn check_own_regular(file: &File, path: &Path) -> io::Result<()> {
    check_own_meta(&FsFile::metadata(file)?, path)
}

/// Ok if `meta` (of a file opened from `path`) is a regular file owned by our effective user.
fn check_own_meta(meta: &FileMeta, path: &Path) -> io::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if !meta.is_file {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a regular file", path.display())));
    }
    if meta.uid != uid {
        let why = format!("{} belongs to user {}, not to us ({uid}): refusing to use it", path.display(), meta.uid);
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
