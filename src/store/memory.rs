//! A release kept in memory, for simulation: the same [`Storage`] interface as the file store,
//! with faults that a test can inject (a failed write, read or commit) to drive the release's
//! error paths deterministically, in the manner of TigerBeetle's simulated storage.

use crate::core::bitfield::Bitfield;
use crate::core::storage::{Storage, StoreError};
use std::io;
use std::path::{Path, PathBuf};

/// One release's bytes in RAM, and the chunks its last commit recorded.
#[derive(Debug)]
pub struct MemStore {
    path: PathBuf,
    data: Vec<u8>,
    committed: Option<Bitfield>,
    finished: bool,
    /// The next write touching this offset fails (once).
    fail_write_at: Option<u64>,
    /// Every read fails while set.
    fail_reads: bool,
    /// This many next commits fail.
    fail_commits: u32,
    /// Commits that succeeded.
    pub commits: u32,
}

impl MemStore {
    /// An empty store for a release of `size` bytes, named `path` in messages.
    pub fn new(path: impl Into<PathBuf>, size: u64) -> MemStore {
        MemStore::with_data(path, vec![0; size as usize], false)
    }

    /// A store holding `data`; `finished` if it is the whole release already (a seed).
    pub fn with_data(path: impl Into<PathBuf>, data: Vec<u8>, finished: bool) -> MemStore {
        MemStore {
            path: path.into(),
            data,
            committed: None,
            finished,
            fail_write_at: None,
            fail_reads: false,
            fail_commits: 0,
            commits: 0,
        }
    }

    /// The bytes as they are now.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The data, for a test that plays a liar by altering what it serves.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// The chunks the last successful commit recorded.
    pub fn committed(&self) -> Option<&Bitfield> {
        self.committed.as_ref()
    }

    /// Makes the next write that touches byte `offset` fail, as a full disk would.
    pub fn fail_next_write_at(&mut self, offset: u64) {
        self.fail_write_at = Some(offset);
    }

    /// Makes every read fail (`true`) or work again (`false`).
    pub fn fail_reads(&mut self, fail: bool) {
        self.fail_reads = fail;
    }

    /// Makes the next `n` commits fail.
    pub fn fail_next_commits(&mut self, n: u32) {
        self.fail_commits = n;
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>, StoreError> {
        let size = self.data.len() as u64;
        match offset.checked_add(len as u64) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(StoreError::OutOfRange { offset, len: len as u64, size }),
        }
    }

    fn injected(&self, op: &'static str) -> StoreError {
        let source = io::Error::new(io::ErrorKind::StorageFull, "injected fault");
        StoreError::Io { op, path: self.path.clone(), source }
    }
}

impl Storage for MemStore {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let range = self.check_range(offset, buf.len())?;
        if self.fail_reads {
            return Err(self.injected("read"));
        }
        buf.copy_from_slice(&self.data[range]);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let range = self.check_range(offset, data.len())?;
        if self.finished {
            return Err(self.injected("write to a finished release"));
        }
        if self.fail_write_at.is_some_and(|at| range.contains(&(at as usize))) {
            self.fail_write_at = None;
            return Err(self.injected("write"));
        }
        self.data[range].copy_from_slice(data);
        Ok(())
    }

    fn commit(&mut self, present: &Bitfield) -> Result<(), StoreError> {
        if self.fail_commits > 0 {
            self.fail_commits -= 1;
            return Err(self.injected("commit"));
        }
        self.committed = Some(present.clone());
        self.commits += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), StoreError> {
        self.finished = true;
        Ok(())
    }

    fn is_finished(&self) -> bool {
        self.finished
    }

    fn path(&self) -> &Path {
        &self.path
    }
}
