//! The data file of one release and its resume state on disk.
//!
//! A release whose final path is `FILE` lives in `FILE.part` while it is fetched, with the set of
//! durable chunks in `FILE.state`; `FILE` itself appears only by renaming a whole, verified
//! `.part`, so a file with the final name is always the release. The agent may die at any
//! instant, so nothing here relies on a shutdown path: a chunk reaches the state file only after
//! its data is synced, the state file is replaced atomically and carries a crc32, and `open`
//! re-hashes every chunk the state claims. This module owns those files and their format; it does
//! not decide what to fetch, check blocks as they arrive, or verify manifests (the swarm and
//! manifest modules do).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use log::{debug, warn};
use sha2::{Digest, Sha256};

use crate::core::bitfield::Bitfield;
use crate::core::manifest::{Hash, SignedManifest, SwarmId};

/// First bytes of a state file; the digit is the format version.
const STATE_MAGIC: &[u8; 8] = b"FLOTST01";
/// Magic, swarm id and chunk count come before the bitfield.
const STATE_HEADER: usize = 8 + 32 + 4;
/// Read size when hashing: large enough for few syscalls, small enough for a router's RAM.
const HASH_BUF: usize = 64 * 1024;

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
fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { op, path: path.to_path_buf(), source }
}

/// `FILE.part`: where data is written until the release is whole.
pub fn part_path(path: &Path) -> PathBuf {
    with_suffix(path, ".part")
}

/// `FILE.state`: the set of durable chunks of `FILE.part`.
pub fn state_path(path: &Path) -> PathBuf {
    with_suffix(path, ".state")
}

// Appends rather than `set_extension`, which would turn `fw.img` into `fw.part`.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The on-disk data of one release: a `.part` being filled, or the final file being served.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    part: PathBuf,
    state: PathBuf,
    state_tmp: PathBuf,
    dir: PathBuf,
    /// `.part` (read-write) until complete, then the final file (read-only).
    file: File,
    swarm_id: SwarmId,
    file_size: u64,
    chunk_size: u32,
    have: Bitfield,
    pending: Bitfield,
    complete: bool,
    /// Reused for every state write, so commits do not allocate per call.
    state_buf: Vec<u8>,
}

impl Store {
    /// Opens storage for `m` at final path `path`.
    ///
    /// An existing `path` is hashed against the manifest: if it is the release the store is
    /// complete (serving only); otherwise `ExistingFileDiffers`, and the file is not touched.
    /// Else `path.part` is opened or created and `path.state` is read; every chunk the state
    /// claims is hashed again and dropped if it no longer matches. A `.part` found whole is
    /// finished at once.
    pub fn open(path: &Path, m: &SignedManifest) -> Result<Store, StoreError> {
        match File::open(path) {
            Ok(file) => Self::open_existing(path, file, m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Self::open_part(path, m),
            Err(e) => Err(io_err("open", path)(e)),
        }
    }

    fn new(path: &Path, file: File, m: &SignedManifest) -> Store {
        let count = m.manifest.chunk_count();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Store {
            path: path.to_path_buf(),
            part: part_path(path),
            state: state_path(path),
            state_tmp: with_suffix(path, ".state.tmp"),
            dir,
            file,
            swarm_id: m.swarm_id,
            file_size: m.manifest.file_size,
            chunk_size: m.manifest.chunk_size,
            have: Bitfield::new(count),
            pending: Bitfield::new(count),
            complete: false,
            state_buf: Vec::with_capacity(STATE_HEADER + Bitfield::byte_len(count) + 4),
        }
    }

    fn open_existing(path: &Path, file: File, m: &SignedManifest) -> Result<Store, StoreError> {
        let differs = |diff| StoreError::ExistingFileDiffers { path: path.to_path_buf(), diff };
        let meta = file.metadata().map_err(io_err("inspect", path))?;
        if !meta.is_file() {
            return Err(differs(Difference::NotAFile));
        }
        if meta.len() != m.manifest.file_size {
            return Err(differs(Difference::Size(meta.len())));
        }
        let mut store = Self::new(path, file, m);
        let mut buf = vec![0; HASH_BUF];
        for c in 0..store.have.len() {
            if m.manifest.chunk_hashes.get(c as usize) != Some(&store.hash_with(c, &mut buf)?) {
                return Err(differs(Difference::Chunk(c)));
            }
            store.have.set(c);
        }
        store.complete = true;
        // A crash between the final rename and the state's removal leaves a stale state behind.
        remove_if_present(&store.state);
        Ok(store)
    }

    fn open_part(path: &Path, m: &SignedManifest) -> Result<Store, StoreError> {
        let part = part_path(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part)
            .map_err(io_err("open", &part))?;
        let len = file.metadata().map_err(io_err("inspect", &part))?.len();
        if len != m.manifest.file_size {
            file.set_len(m.manifest.file_size).map_err(io_err("resize", &part))?;
        }
        let mut store = Self::new(path, file, m);
        if let Some(claimed) = store.load_state() {
            store.reverify(&claimed, m)?;
        }
        if store.have.is_full() {
            store.finish()?;
        }
        Ok(store)
    }

    /// Keeps only the claimed chunks whose data in `.part` still hashes right.
    fn reverify(&mut self, claimed: &Bitfield, m: &SignedManifest) -> Result<(), StoreError> {
        let mut buf = vec![0; HASH_BUF];
        for c in claimed.iter_ones() {
            if m.manifest.chunk_hashes.get(c as usize) == Some(&self.hash_with(c, &mut buf)?) {
                self.have.set(c);
            } else {
                warn!("{}: chunk {c} changed on disk; fetching it again", self.part.display());
            }
        }
        Ok(())
    }

    /// Reads the state file; anything unusable means "start over", which is always safe.
    fn load_state(&self) -> Option<Bitfield> {
        let bytes = match fs::read(&self.state) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!("ignoring {}: {e}; starting over", self.state.display());
                return None;
            }
        };
        match parse_state(&bytes, &self.swarm_id, self.have.len()) {
            Ok(b) => Some(b),
            Err(why) => {
                warn!("ignoring {}: {why}; starting over", self.state.display());
                None
            }
        }
    }

    /// Chunks durably present (marked in the state file, or the whole final file).
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// True once the final file is in place.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The final path of the release.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads exactly `buf.len()` bytes of the release at `offset`, without allocating.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.check_range(offset, buf.len())?;
        self.file.read_exact_at(buf, offset).map_err(io_err("read", self.data_path()))
    }

    /// Writes a received block at `offset` into `.part`, without allocating.
    ///
    /// Once complete the final file is open read-only, so this fails rather than alter it.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        self.check_range(offset, data.len())?;
        self.file.write_all_at(data, offset).map_err(io_err("write", self.data_path()))
    }

    /// Records that `chunk` was written and verified by the caller; it is not yet durable.
    pub fn mark_verified(&mut self, chunk: u32) {
        if !self.have.get(chunk) {
            self.pending.set(chunk);
        }
    }

    /// True if `commit` has work to do: verified chunks not yet durable, or a finish to retry.
    /// Verified chunks not yet durable.
    pub fn pending_count(&self) -> u32 {
        self.pending.count()
    }

    /// True if there are verified chunks not yet committed (or a finish to retry).
    pub fn has_pending(&self) -> bool {
        self.pending.count() > 0 || (self.have.is_full() && !self.complete)
    }

    /// Makes pending chunks durable and, if that completes the release, puts the final file in
    /// place. `newly` is cleared, then receives the chunks that joined `have()`.
    ///
    /// On error nothing that is not durable is marked present: pending chunks stay pending, so a
    /// later call retries (say once space is freed). If only the finish failed, `newly` still
    /// lists the chunks that did become durable.
    pub fn commit(&mut self, newly: &mut Vec<u32>) -> Result<(), StoreError> {
        newly.clear();
        if self.complete {
            return Ok(());
        }
        if self.pending.count() > 0 {
            // Data first: a state naming unsynced chunks could outlive them in a power cut.
            self.file.sync_data().map_err(io_err("sync", &self.part))?;
            self.write_state()?;
            for c in 0..self.pending.len() {
                if self.pending.clear(c) {
                    self.have.set(c);
                    newly.push(c);
                }
            }
        }
        if self.have.is_full() {
            self.finish()?;
        }
        Ok(())
    }

    /// Hashes one chunk as it is on disk (the check `open` uses); allocates a read buffer.
    pub fn hash_chunk(&self, chunk: u32) -> Result<Hash, StoreError> {
        let mut buf = vec![0; HASH_BUF];
        self.hash_with(chunk, &mut buf)
    }

    fn hash_with(&self, chunk: u32, buf: &mut [u8]) -> Result<Hash, StoreError> {
        let offset = chunk as u64 * self.chunk_size as u64;
        if chunk >= self.have.len() {
            let (len, size) = (self.chunk_size as u64, self.file_size);
            return Err(StoreError::OutOfRange { offset, len, size });
        }
        let end = (offset + self.chunk_size as u64).min(self.file_size);
        let mut hasher = Sha256::new();
        let mut at = offset;
        while at < end {
            let n = buf.len().min((end - at) as usize);
            self.read_at(at, &mut buf[..n])?;
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        Ok(hasher.finalize().into())
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), StoreError> {
        let len = len as u64;
        match offset.checked_add(len) {
            Some(end) if end <= self.file_size => Ok(()),
            _ => Err(StoreError::OutOfRange { offset, len, size: self.file_size }),
        }
    }

    fn data_path(&self) -> &Path {
        if self.complete {
            &self.path
        } else {
            &self.part
        }
    }

    /// Replaces the state file with have ∪ pending: write a temporary, sync, rename, sync dir.
    fn write_state(&mut self) -> Result<(), StoreError> {
        let buf = &mut self.state_buf;
        buf.clear();
        buf.extend_from_slice(STATE_MAGIC);
        buf.extend_from_slice(&self.swarm_id);
        buf.extend_from_slice(&self.have.len().to_le_bytes());
        let chunks = self.have.as_bytes().iter().zip(self.pending.as_bytes());
        buf.extend(chunks.map(|(h, p)| h | p));
        let crc = crc32fast::hash(buf);
        buf.extend_from_slice(&crc.to_le_bytes());

        let tmp = &self.state_tmp;
        let mut f = File::create(tmp).map_err(io_err("create", tmp))?;
        f.write_all(&self.state_buf).map_err(io_err("write", tmp))?;
        f.sync_all().map_err(io_err("sync", tmp))?;
        fs::rename(tmp, &self.state).map_err(io_err("replace", &self.state))?;
        sync_dir(&self.dir)
    }

    /// Puts the whole `.part` in place as the final file and drops the state.
    fn finish(&mut self) -> Result<(), StoreError> {
        self.file.sync_all().map_err(io_err("sync", &self.part))?;
        fs::rename(&self.part, &self.path).map_err(io_err("rename into place", &self.part))?;
        self.complete = true;
        // The open handle already is the final file (rename keeps the inode); reopening it
        // read-only makes an in-place write impossible rather than merely unlikely.
        match File::open(&self.path) {
            Ok(f) => self.file = f,
            Err(e) => warn!("cannot reopen {} read-only: {e}", self.path.display()),
        }
        sync_dir(&self.dir)?;
        remove_if_present(&self.state);
        Ok(())
    }
}

/// Decodes a state file, naming the first reason it is unusable. Public only for the fuzz
/// target (`fuzz/fuzz_targets/state.rs`); `Store::open` is the way in.
#[doc(hidden)]
pub fn parse_state(bytes: &[u8], swarm_id: &SwarmId, count: u32) -> Result<Bitfield, &'static str> {
    if bytes.len() != STATE_HEADER + Bitfield::byte_len(count) + 4 {
        return Err("wrong length");
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err("bad checksum");
    }
    if &body[..8] != STATE_MAGIC {
        return Err("not a flotilla state file");
    }
    if &body[8..40] != swarm_id {
        return Err("it belongs to another release");
    }
    if body[40..44] != count.to_le_bytes() {
        return Err("wrong chunk count");
    }
    Bitfield::from_bytes(count, &body[STATE_HEADER..]).map_err(|_| "bad bitfield")
}

/// Makes a rename or creation in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("sync directory", dir))
}

/// Best effort: a leftover state file is harmless, since `open` ignores it once `FILE` exists.
fn remove_if_present(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => debug!("removed {}", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warn!("cannot remove {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::manifest::Manifest;

    const CHUNK: u32 = 16 * 1024;

    /// A fresh directory and a release of 5.5 chunks (the last one short).
    fn setup(name: &str) -> (PathBuf, Vec<u8>, SignedManifest) {
        let dir = std::env::temp_dir().join(format!("flotilla-store-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..CHUNK as usize * 11 / 2)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let manifest = Manifest {
            name: name.into(),
            release: 1,
            file_size: data.len() as u64,
            chunk_size: CHUNK,
            file_hash: Sha256::digest(&data).into(),
            chunk_hashes: data.chunks(CHUNK as usize).map(|c| Sha256::digest(c).into()).collect(),
            signer: [7; 32],
        };
        let m = SignedManifest { manifest, bytes: Vec::new(), swarm_id: [1; 32] };
        (dir.join("fw.img"), data, m)
    }

    fn write_chunk(s: &mut Store, m: &Manifest, data: &[u8], c: u32) {
        let (off, len) = (m.chunk_offset(c), m.chunk_len(c) as usize);
        s.write_at(off, &data[off as usize..off as usize + len]).unwrap();
        s.mark_verified(c);
    }

    fn ones(s: &Store) -> Vec<u32> {
        s.have().iter_ones().collect()
    }

    #[test]
    fn fresh_fetch_completes_into_final_file() {
        let (path, data, m) = setup("fresh");
        let mut s = Store::open(&path, &m).unwrap();
        assert_eq!(s.have().count(), 0);
        assert!(!s.is_complete() && !path.exists());
        for c in 0..6 {
            write_chunk(&mut s, &m.manifest, &data, c);
        }
        let mut newly = Vec::new();
        s.commit(&mut newly).unwrap();
        assert_eq!(newly, vec![0, 1, 2, 3, 4, 5]);
        assert!(s.is_complete() && s.have().is_full() && !s.has_pending());
        assert_eq!(fs::read(&path).unwrap(), data);
        assert!(!part_path(&path).exists() && !state_path(&path).exists());
        let mut buf = [0; 100];
        s.read_at(5 * CHUNK as u64, &mut buf).unwrap();
        assert_eq!(&buf[..], &data[5 * CHUNK as usize..][..100]);
        assert!(s.write_at(0, &[0]).is_err(), "the final file is never written in place");
    }

    #[test]
    fn partial_progress_survives_reopen_but_uncommitted_does_not() {
        let (path, data, m) = setup("partial");
        let mut s = Store::open(&path, &m).unwrap();
        for c in [0, 2, 5] {
            write_chunk(&mut s, &m.manifest, &data, c);
        }
        let mut newly = Vec::new();
        s.commit(&mut newly).unwrap();
        assert_eq!(newly, vec![0, 2, 5]);
        write_chunk(&mut s, &m.manifest, &data, 3);
        assert!(s.has_pending() && !s.have().get(3));
        let mut buf = vec![0; CHUNK as usize];
        s.read_at(2 * CHUNK as u64, &mut buf).unwrap();
        assert_eq!(buf, data[2 * CHUNK as usize..3 * CHUNK as usize]);
        drop(s);

        let s = Store::open(&path, &m).unwrap();
        assert_eq!(ones(&s), vec![0, 2, 5]);
        assert!(!s.has_pending() && !s.is_complete());
    }

    #[test]
    fn reopen_finishes_a_part_whose_state_is_full() {
        let (path, data, m) = setup("refinish");
        let mut s = Store::open(&path, &m).unwrap();
        for c in 0..6 {
            write_chunk(&mut s, &m.manifest, &data, c);
        }
        // Simulates a crash after the state write but before the rename.
        s.file.sync_data().unwrap();
        s.write_state().unwrap();
        drop(s);
        let s = Store::open(&path, &m).unwrap();
        assert!(s.is_complete());
        assert_eq!(fs::read(&path).unwrap(), data);
        assert!(!state_path(&path).exists());
    }

    /// Commits chunks 0, 1 and 4, then returns the state file's bytes.
    fn committed_state(path: &Path, data: &[u8], m: &SignedManifest) -> Vec<u8> {
        let mut s = Store::open(path, m).unwrap();
        for c in [0, 1, 4] {
            write_chunk(&mut s, &m.manifest, data, c);
        }
        s.commit(&mut Vec::new()).unwrap();
        fs::read(state_path(path)).unwrap()
    }

    #[test]
    fn corrupt_state_is_ignored_at_every_byte() {
        let (path, data, m) = setup("corrupt");
        let good = committed_state(&path, &data, &m);
        assert_eq!(good.len(), STATE_HEADER + 1 + 4);
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            fs::write(state_path(&path), &bad).unwrap();
            let s = Store::open(&path, &m).unwrap();
            assert_eq!(s.have().count(), 0, "flipped byte {i} was trusted");
        }
        fs::write(state_path(&path), &good[..good.len() - 1]).unwrap();
        assert_eq!(Store::open(&path, &m).unwrap().have().count(), 0);
        fs::write(state_path(&path), &good).unwrap();
        assert_eq!(ones(&Store::open(&path, &m).unwrap()), vec![0, 1, 4]);
    }

    #[test]
    fn state_of_another_swarm_is_ignored() {
        let (path, data, m) = setup("swarm");
        committed_state(&path, &data, &m);
        let newer = SignedManifest { swarm_id: [2; 32], ..m.clone() };
        assert_eq!(Store::open(&path, &newer).unwrap().have().count(), 0);
    }

    #[test]
    fn chunk_changed_underneath_is_dropped() {
        let (path, data, m) = setup("altered");
        committed_state(&path, &data, &m);
        let part = OpenOptions::new().write(true).open(part_path(&path)).unwrap();
        part.write_all_at(&[!data[CHUNK as usize + 9]], CHUNK as u64 + 9).unwrap();
        let s = Store::open(&path, &m).unwrap();
        assert_eq!(ones(&s), vec![0, 4]);
    }

    #[test]
    fn existing_final_file_that_matches_is_served() {
        let (path, data, m) = setup("exists-same");
        fs::write(&path, &data).unwrap();
        let s = Store::open(&path, &m).unwrap();
        assert!(s.is_complete() && s.have().is_full() && !s.has_pending());
        assert!(!part_path(&path).exists());
        assert_eq!(s.hash_chunk(5).unwrap(), m.manifest.chunk_hashes[5]);
    }

    #[test]
    fn existing_final_file_that_differs_is_refused_and_untouched() {
        let (path, mut data, m) = setup("exists-differs");
        data[3 * CHUNK as usize + 1] ^= 1;
        fs::write(&path, &data).unwrap();
        let err = Store::open(&path, &m).unwrap_err();
        assert!(matches!(err, StoreError::ExistingFileDiffers { diff: Difference::Chunk(3), .. }));
        let msg = err.to_string();
        assert!(msg.contains("fw.img exists and is not this release (chunk 3 differs)"), "{msg}");
        assert_eq!(fs::read(&path).unwrap(), data);
        assert!(!part_path(&path).exists());

        fs::write(&path, &data[..100]).unwrap();
        let err = Store::open(&path, &m).unwrap_err();
        assert!(matches!(err, StoreError::ExistingFileDiffers { diff: Difference::Size(100), .. }));
    }

    #[test]
    fn failed_commit_keeps_chunks_pending_then_retries() {
        let (path, data, m) = setup("commit-fails");
        let mut s = Store::open(&path, &m).unwrap();
        write_chunk(&mut s, &m.manifest, &data, 2);
        // A directory where the temporary state goes makes its creation fail, even for root.
        let blocker = with_suffix(&path, ".state.tmp");
        fs::create_dir(&blocker).unwrap();
        let mut newly = Vec::new();
        let err = s.commit(&mut newly).unwrap_err();
        assert!(err.to_string().starts_with("cannot create "), "{err}");
        assert!(newly.is_empty() && s.has_pending() && s.have().count() == 0);

        fs::remove_dir(&blocker).unwrap();
        s.commit(&mut newly).unwrap();
        assert_eq!(newly, vec![2]);
        assert!(!s.has_pending());
        assert_eq!(ones(&Store::open(&path, &m).unwrap()), vec![2]);
    }

    #[test]
    fn ranges_outside_the_release_are_refused() {
        let (path, _, m) = setup("range");
        let s = Store::open(&path, &m).unwrap();
        let size = m.manifest.file_size;
        assert!(matches!(s.write_at(size - 1, &[0, 0]), Err(StoreError::OutOfRange { .. })));
        assert!(matches!(s.read_at(u64::MAX, &mut [0]), Err(StoreError::OutOfRange { .. })));
        assert!(matches!(s.hash_chunk(6), Err(StoreError::OutOfRange { .. })));
        assert_eq!(fs::metadata(part_path(&path)).unwrap().len(), size, ".part did not grow");
    }

    #[test]
    fn side_files_append_to_the_name() {
        assert_eq!(part_path(Path::new("/d/fw.img")), Path::new("/d/fw.img.part"));
        assert_eq!(state_path(Path::new("fw.img")), Path::new("fw.img.state"));
    }
}
