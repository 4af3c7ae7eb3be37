//! The interface between a release and wherever its bytes are kept.
//!
//! A [`Storage`] holds one release's data. It knows nothing of chunks, hashes or peers: the
//! release ([`crate::core::release::Release`]) decides what is written, when it is made
//! durable and when the whole is put in place, and owns which chunks are present. The file
//! store on disk and the in-memory store of the simulator both implement it, so the code that
//! decides is the same in both.

use crate::core::bitfield::Bitfield;
use std::fmt;
use std::io;
use std::path::PathBuf;

/// Where one release's bytes are kept.
pub trait Storage {
    /// Reads exactly `buf.len()` bytes of the release at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError>;
    /// Writes `data` at `offset`; not durable until [`Storage::commit`].
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError>;
    /// Makes everything written so far durable, then records `present` as the chunks that are
    /// there, atomically: after a crash, the record names only chunks whose data survived.
    fn commit(&mut self, present: &Bitfield) -> Result<(), StoreError>;
    /// Puts the whole, committed release in place under its final name.
    fn finish(&mut self) -> Result<(), StoreError>;
    /// True once [`Storage::finish`] has succeeded (or the release was found whole).
    fn is_finished(&self) -> bool;
    /// Where the release is (or will be), for messages and the install hook.
    fn path(&self) -> &std::path::Path;
}

/// What went wrong with the files of a release.
#[derive(Debug)]
pub enum StoreError {
    /// An operation on `path` failed at the OS level.
    Io {
        /// What was being done, as a verb ("write", "sync", ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The final path already holds something that is not this release; it is left untouched.
    ExistingFileDiffers {
        /// The final path.
        path: PathBuf,
        /// The first difference found.
        diff: Difference,
    },
    /// A byte range (from a peer or a caller) lies outside the release.
    OutOfRange {
        /// First byte of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// Size of the release.
        size: u64,
    },
}

/// How an existing file differs from the release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Difference {
    /// It is a directory or another non-regular file.
    NotAFile,
    /// It is a symbolic link, which is never followed: in a shared directory it could point
    /// anywhere, and the install hook would be handed that path.
    Symlink,
    /// Its size is not the release's.
    Size(u64),
    /// This chunk's hash does not match the manifest.
    Chunk(u32),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io { op, path, source } => {
                write!(f, "cannot {op} {}: {source}", path.display())
            }
            StoreError::ExistingFileDiffers { path, diff } => {
                write!(f, "{} exists and is not this release (", path.display())?;
                match diff {
                    Difference::NotAFile => write!(f, "not a regular file")?,
                    Difference::Symlink => write!(f, "a symbolic link, not followed")?,
                    Difference::Size(n) => write!(f, "size {n} bytes differs")?,
                    Difference::Chunk(c) => write!(f, "chunk {c} differs")?,
                }
                write!(f, "); move it away or choose another --out")
            }
            StoreError::OutOfRange { offset, len, size } => {
                write!(f, "{len} bytes at offset {offset} lie outside the release ({size} bytes)")
            }
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Wraps an OS error with what was being done to which path, for a message a user can act on.
pub fn io_err<'a>(op: &'static str, path: &'a std::path::Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { op, path: path.to_path_buf(), source }
}
