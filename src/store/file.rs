//! The data file of one release and its resume state on disk.
//!
//! A release whose final path is `FILE` lives in `FILE.part` while it is fetched, with the set of
//! durable chunks in `FILE.state`; `FILE` itself appears only by renaming a whole, verified
//! `.part`, so a file with the final name is always the release. The agent may die at any
//! instant, so nothing here relies on a shutdown path: the release commits a chunk only after
//! its data is synced, the state file is replaced atomically and carries a crc32, and `open`
//! re-hashes every chunk the state claims. This module owns those files and their format; which
//! chunks are present is the release's fact ([`crate::core::release`]), handed in at each commit.
//! Every call reaches the disk through [`Fs`] (the real one by default), so `tests/powercut.rs`
//! can run this very code on a model filesystem that loses unsynced data in a power cut.

use std::io;
use std::path::{Path, PathBuf};

use log::warn;
use sha2::{Digest, Sha256};

use crate::core::bitfield::Bitfield;
use crate::core::manifest::{Geometry, Hash, SignedManifest, SwarmId};
pub use crate::core::storage::{io_err, Difference, Storage, StoreError};
use crate::store::atomic::{remove_if_present_in, replace_file_via_in, with_suffix};
use crate::store::safe_fs::{self, Fs, FsFile, OpenFlags, RealFs, DATA_MODE, PRIVATE_MODE};

/// First bytes of a state file; the digit is the format version.
const STATE_MAGIC: &[u8; 8] = b"FLOTST01";
/// Magic, swarm id and chunk count come before the bitfield.
const STATE_HEADER: usize = STATE_MAGIC.len() + 32 + 4;
/// Where the chunk count sits in the header.
const STATE_COUNT_AT: usize = STATE_MAGIC.len() + 32;
/// Read size when hashing: large enough for few syscalls, small enough for a router's RAM.
const HASH_BUF: usize = 64 * 1024;
/// Bytes written between two starts of writeback: often enough that a commit finds little
/// left to sync, seldom enough to cost nothing (one syscall a MiB).
const WRITEBACK_EVERY: u64 = 1 << 20;

/// `FILE.part`: where data is written until the release is whole.
pub fn part_path(path: &Path) -> PathBuf {
    with_suffix(path, ".part")
}

/// `FILE.state`: the set of durable chunks of `FILE.part`.
pub fn state_path(path: &Path) -> PathBuf {
    with_suffix(path, ".state")
}

/// The on-disk data of one release: a `.part` being filled, or the final file being served.
/// `F` is the filesystem: the real one, or in tests a model that loses unsynced data.
#[derive(Debug)]
pub struct FileStore<F: Fs = RealFs> {
    fs: F,
    path: PathBuf,
    part: PathBuf,
    state: PathBuf,
    state_tmp: PathBuf,
    dir: PathBuf,
    /// `.part` (read-write) until finished, then the final file (read-only).
    file: F::File,
    swarm_id: SwarmId,
    geometry: Geometry,
    finished: bool,
    /// `.part` has been renamed to the final name, though perhaps not durably yet: a retried
    /// `finish` only syncs the directory.
    renamed: bool,
    /// Reused for every state write, so commits do not allocate per call.
    state_buf: Vec<u8>,
    /// Bytes written since writeback was last started.
    unflushed: u64,
}

impl FileStore {
    /// Opens storage for `m` at final path `path`; returns it with the chunks already present.
    ///
    /// An existing `path` is hashed against the manifest: if it is the release the store is
    /// finished (serving only); otherwise `ExistingFileDiffers`, and the file is not touched.
    /// Else `path.part` is opened or created and `path.state` is read; every chunk the state
    /// claims is hashed again and dropped if it no longer matches.
    pub fn open(path: &Path, m: &SignedManifest) -> Result<(FileStore, Bitfield), StoreError> {
        FileStore::open_in(RealFs, path, m)
    }

    /// [`FileStore::open_replacing_in`] on the real disk.
    pub fn open_replacing(path: &Path, m: &SignedManifest) -> Result<(FileStore, Bitfield), StoreError> {
        FileStore::open_replacing_in(RealFs, path, m)
    }
}

impl<F: Fs> FileStore<F> {
    /// [`FileStore::open`] on the filesystem `fs`.
    pub fn open_in(fs: F, path: &Path, m: &SignedManifest) -> Result<(Self, Bitfield), StoreError> {
        Self::open_with(fs, path, m, false)
    }

    /// [`FileStore::open_in`] for a release that supersedes the one at `path`: a regular file
    /// there that is not this release is left in place (still served by the release it is)
    /// while this one is fetched into `.part`, which `finish` renames over it. For a data
    /// directory's own files only, where the caller knows `path` held an older release of this
    /// name; a symlink or a non-regular file is still refused.
    pub fn open_replacing_in(fs: F, path: &Path, m: &SignedManifest) -> Result<(Self, Bitfield), StoreError> {
        Self::open_with(fs, path, m, true)
    }

    fn open_with(fs: F, path: &Path, m: &SignedManifest, replacing: bool) -> Result<(Self, Bitfield), StoreError> {
        // Never followed, and never blocking (a FIFO planted at the name would hang the open).
        match fs.open(path, OpenFlags::READ_NOFOLLOW) {
            Ok(file) => Self::open_existing(fs, path, file, m, replacing),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Self::open_part(fs, path, m),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                Err(StoreError::ExistingFileDiffers { path: path.to_path_buf(), diff: Difference::Symlink })
            }
            Err(e) => Err(io_err("open", path)(e)),
        }
    }

    /// The filesystem the store works on.
    pub fn fs(&self) -> &F {
        &self.fs
    }

    fn new(fs: F, path: &Path, file: F::File, m: &SignedManifest) -> Result<Self, StoreError> {
        let geometry = m.manifest.geometry();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let state = state_path(path);
        safe_fs::remove_stale_temps_in(&fs, &state);
        let state_tmp = fs.temp_name(&state).map_err(io_err("name a temporary for", &state))?;
        Ok(FileStore {
            fs,
            path: path.to_path_buf(),
            part: part_path(path),
            state,
            state_tmp,
            dir,
            file,
            swarm_id: m.swarm_id,
            geometry,
            finished: false,
            renamed: false,
            state_buf: Vec::with_capacity(STATE_HEADER + Bitfield::byte_len(geometry.chunk_count()) + 4),
            unflushed: 0,
        })
    }

    /// `path` is open as `file`: the release whole (finished), or with `replacing` an older one
    /// left in place while this one goes to `.part`, or else `ExistingFileDiffers`.
    fn open_existing(
        fs: F,
        path: &Path,
        file: F::File,
        m: &SignedManifest,
        replacing: bool,
    ) -> Result<(Self, Bitfield), StoreError> {
        let differs = |diff| StoreError::ExistingFileDiffers { path: path.to_path_buf(), diff };
        let meta = file.metadata().map_err(io_err("inspect", path))?;
        if !meta.is_file {
            return Err(differs(Difference::NotAFile));
        }
        let mut diff = (meta.len != m.manifest.file_size).then_some(Difference::Size(meta.len));
        let mut store = Self::new(fs, path, file, m)?;
        let mut buf = vec![0; HASH_BUF];
        for c in 0..store.geometry.chunk_count() {
            if diff.is_some() {
                break;
            }
            if m.manifest.chunk_hashes.get(c as usize) != Some(&store.hash_with(c, &mut buf)?) {
                diff = Some(Difference::Chunk(c));
            }
        }
        match diff {
            Some(_) if replacing => return Self::open_part(store.fs, path, m),
            Some(d) => return Err(differs(d)),
            None => {}
        }
        store.finished = true;
        // A crash between the final rename and the state's removal leaves a stale state behind.
        remove_if_present_in(&store.fs, &store.state);
        let present = Bitfield::full(store.geometry.chunk_count());
        Ok((store, present))
    }

    fn open_part(fs: F, path: &Path, m: &SignedManifest) -> Result<(Self, Bitfield), StoreError> {
        let part = part_path(path);
        // O_NOFOLLOW and an owner check: a `.part` planted in a shared directory is refused.
        let file = safe_fs::open_own_rw_in(&fs, &part, DATA_MODE).map_err(io_err("open", &part))?;
        let len = file.metadata().map_err(io_err("inspect", &part))?.len;
        if len != m.manifest.file_size {
            file.set_len(m.manifest.file_size).map_err(io_err("resize", &part))?;
        }
        let store = Self::new(fs, path, file, m)?;
        // The name `.part` must be durable before any state describing it can be: `commit` syncs
        // the data, then renames the new state into place and syncs the directory, but a
        // filesystem may persist that rename before the (unsynced) creation of `.part`. A power
        // cut there left a state naming chunks of a `.part` that no longer existed (found by
        // tests/powercut.rs; the re-hash below caught it, but the state broke its promise).
        store.fs.sync_dir(&store.dir).map_err(io_err("sync directory", &store.dir))?;
        let mut present = Bitfield::new(store.geometry.chunk_count());
        if let Some(claimed) = store.load_state() {
            store.reverify(&claimed, m, &mut present)?;
        }
        Ok((store, present))
    }

    /// Keeps only the claimed chunks whose data in `.part` still hashes right.
    fn reverify(&self, claimed: &Bitfield, m: &SignedManifest, present: &mut Bitfield) -> Result<(), StoreError> {
        let mut buf = vec![0; HASH_BUF];
        for c in claimed.iter_ones() {
            if m.manifest.chunk_hashes.get(c as usize) == Some(&self.hash_with(c, &mut buf)?) {
                present.set(c);
            } else {
                warn!("{}: chunk {c} changed on disk; fetching it again", self.part.display());
            }
        }
        Ok(())
    }

    /// Reads the state file; anything unusable means "start over", which is always safe.
    fn load_state(&self) -> Option<Bitfield> {
        // A state file is a header, a bitfield and a crc; anything longer is not one.
        let cap = STATE_HEADER + Bitfield::byte_len(self.geometry.chunk_count()) + 4;
        let read = safe_fs::open_read_in(&self.fs, &self.state).and_then(|f| f.read_capped(cap + 1));
        let bytes = match read {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!("ignoring {}: {e}; starting over", self.state.display());
                return None;
            }
        };
        match parse_state(&bytes, &self.swarm_id, self.geometry.chunk_count()) {
            Ok(b) => Some(b),
            Err(why) => {
                warn!("ignoring {}: {why}; starting over", self.state.display());
                None
            }
        }
    }

    /// Hashes one chunk as it is on disk (the check `open` uses); allocates a read buffer.
    pub fn hash_chunk(&self, chunk: u32) -> Result<Hash, StoreError> {
        let mut buf = vec![0; HASH_BUF];
        self.hash_with(chunk, &mut buf)
    }

    fn hash_with(&self, chunk: u32, buf: &mut [u8]) -> Result<Hash, StoreError> {
        let g = self.geometry;
        if chunk >= g.chunk_count() {
            let (offset, len, size) = (g.chunk_offset(chunk), g.chunk_size as u64, g.file_size);
            return Err(StoreError::OutOfRange { offset, len, size });
        }
        let (offset, end) = (g.chunk_offset(chunk), g.chunk_offset(chunk) + g.chunk_len(chunk) as u64);
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
            Some(end) if end <= self.geometry.file_size => Ok(()),
            _ => Err(StoreError::OutOfRange { offset, len, size: self.geometry.file_size }),
        }
    }

    fn data_path(&self) -> &Path {
        if self.finished {
            &self.path
        } else {
            &self.part
        }
    }

    /// Replaces the state file with `present`, through the write-sync-rename helper.
    fn write_state(&mut self, present: &Bitfield) -> Result<(), StoreError> {
        let buf = &mut self.state_buf;
        buf.clear();
        buf.extend_from_slice(STATE_MAGIC);
        buf.extend_from_slice(&self.swarm_id);
        buf.extend_from_slice(&present.len().to_le_bytes());
        buf.extend_from_slice(present.as_bytes());
        let crc = crc32fast::hash(buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        replace_file_via_in(&self.fs, &self.state, &self.state_tmp, &self.state_buf, PRIVATE_MODE)
            .map_err(io_err("replace", &self.state))
    }
}

impl<F: Fs> Storage for FileStore<F> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.check_range(offset, buf.len())?;
        self.file.read_exact_at(buf, offset).map_err(io_err("read", self.data_path()))
    }

    /// Once finished the final file is open read-only, so this fails rather than alter it.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        self.check_range(offset, data.len())?;
        self.file.write_all_at(data, offset).map_err(io_err("write", self.data_path()))?;
        self.unflushed += data.len() as u64;
        if self.unflushed >= WRITEBACK_EVERY {
            // The disk starts on these bytes now, while the transfer goes on; the commit's
            // sync then waits only for the last few. Durability still comes from that sync.
            self.unflushed = 0;
            if let Err(e) = self.file.start_writeback() {
                log::debug!("cannot start writeback of {}: {e}", self.part.display());
            }
        }
        Ok(())
    }

    fn commit(&mut self, present: &Bitfield) -> Result<(), StoreError> {
        if self.finished {
            return Ok(());
        }
        // Data first: a state naming unsynced chunks could outlive them in a power cut.
        self.file.sync_data().map_err(io_err("sync", &self.part))?;
        self.unflushed = 0;
        self.write_state(present)
    }

    /// Puts the whole `.part` in place as the final file and drops the state.
    fn finish(&mut self) -> Result<(), StoreError> {
        if self.finished {
            return Ok(());
        }
        if !self.renamed {
            self.file.sync_all().map_err(io_err("sync", &self.part))?;
            self.fs.rename(&self.part, &self.path).map_err(io_err("rename into place", &self.part))?;
            self.renamed = true;
            // The open handle already is the final file (rename keeps the inode); reopening it
            // read-only makes an in-place write impossible rather than merely unlikely.
            match self.fs.open(&self.path, OpenFlags::READ_NOFOLLOW) {
                Ok(f) => self.file = f,
                Err(e) => warn!("cannot reopen {} read-only: {e}", self.path.display()),
            }
        }
        // Finished only once the rename is durable: a failed sync here is retried, and the
        // release (and its hook) is not reported complete before the file would survive a cut.
        self.fs.sync_dir(&self.dir).map_err(io_err("sync directory", &self.dir))?;
        self.finished = true;
        remove_if_present_in(&self.fs, &self.state);
        Ok(())
    }

    fn is_finished(&self) -> bool {
        self.finished
    }

    fn path(&self) -> &Path {
        &self.path
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
    if &body[..STATE_MAGIC.len()] != STATE_MAGIC {
        return Err("not a flotilla state file");
    }
    if &body[STATE_MAGIC.len()..STATE_COUNT_AT] != swarm_id {
        return Err("it belongs to another release");
    }
    if body[STATE_COUNT_AT..STATE_HEADER] != count.to_le_bytes() {
        return Err("wrong chunk count");
    }
    Bitfield::from_bytes(count, &body[STATE_HEADER..]).map_err(|_| "bad bitfield")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::manifest::Manifest;
    use crate::core::rng::Rng;
    use std::fs;

    const CHUNK: u32 = 16 * 1024;

    /// A fresh directory and a release of 5.5 chunks (the last one short).
    fn setup(name: &str) -> (PathBuf, Vec<u8>, SignedManifest) {
        let dir = std::env::temp_dir().join(format!("flotilla-store-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let data = Rng::new(9).bytes(CHUNK as usize * 11 / 2);
        let m = manifest_of(name, &data, CHUNK, [1; 32]);
        (dir.join("fw.img"), data, m)
    }

    /// An unsigned manifest of `data` in chunks of `chunk` bytes: what the store checks against.
    fn manifest_of(name: &str, data: &[u8], chunk: u32, swarm_id: SwarmId) -> SignedManifest {
        let manifest = Manifest {
            name: name.into(),
            release: 1,
            file_size: data.len() as u64,
            chunk_size: chunk,
            file_hash: Sha256::digest(data).into(),
            chunk_hashes: data.chunks(chunk as usize).map(|c| Sha256::digest(c).into()).collect(),
            expires: None,
            targets: Vec::new(),
            rollout: None,
        };
        SignedManifest { manifest, bytes: Vec::new(), swarm_id, signers: Vec::new() }
    }

    /// Writes chunk `c` and adds it to `present`, as the release does once it verified.
    fn write_chunk(s: &mut FileStore, present: &mut Bitfield, m: &Manifest, data: &[u8], c: u32) {
        let (off, len) = (m.chunk_offset(c), m.chunk_len(c) as usize);
        s.write_at(off, &data[off as usize..off as usize + len]).unwrap();
        present.set(c);
    }

    fn ones(b: &Bitfield) -> Vec<u32> {
        b.iter_ones().collect()
    }

    /// Writeback starts once per MiB written, and claims nothing: a power cut before the commit
    /// leaves no chunk present, however many writebacks were started.
    #[test]
    fn writeback_starts_every_mib_and_makes_nothing_durable() {
        use crate::store::model_fs::ModelFs;
        let data = Rng::new(5).bytes(4 << 20);
        let m = manifest_of("fw.img", &data, 64 * 1024, [2; 32]);
        let fs = ModelFs::new();
        let path = Path::new("/d/fw.img");
        let (mut s, _) = FileStore::open_in(fs.clone(), path, &m).unwrap();
        for block in data.chunks(16 * 1024).enumerate() {
            s.write_at(block.0 as u64 * 16 * 1024, block.1).unwrap();
        }
        assert_eq!(fs.writebacks(), 4, "one start of writeback per MiB written");
        fs.power_cut(&mut Rng::new(1));
        let (_, present) = FileStore::open_in(fs.clone(), path, &m).unwrap();
        assert_eq!(present.count(), 0, "nothing was committed, so nothing is claimed");
    }

    #[test]
    fn fresh_fetch_finishes_into_the_final_file() {
        let (path, data, m) = setup("fresh");
        let (mut s, mut present) = FileStore::open(&path, &m).unwrap();
        assert_eq!(present.count(), 0);
        assert!(!s.is_finished() && !path.exists());
        for c in 0..6 {
            write_chunk(&mut s, &mut present, &m.manifest, &data, c);
        }
        s.commit(&present).unwrap();
        s.finish().unwrap();
        assert!(s.is_finished());
        assert_eq!(fs::read(&path).unwrap(), data);
        assert!(!part_path(&path).exists() && !state_path(&path).exists());
        let mut buf = [0; 100];
        s.read_at(5 * CHUNK as u64, &mut buf).unwrap();
        assert_eq!(&buf[..], &data[5 * CHUNK as usize..][..100]);
        assert!(s.write_at(0, &[0]).is_err(), "the final file is never written in place");
    }

    #[test]
    fn committed_chunks_survive_reopen_and_uncommitted_do_not() {
        let (path, data, m) = setup("partial");
        let (mut s, mut present) = FileStore::open(&path, &m).unwrap();
        for c in [0, 2, 5] {
            write_chunk(&mut s, &mut present, &m.manifest, &data, c);
        }
        s.commit(&present).unwrap();
        write_chunk(&mut s, &mut present, &m.manifest, &data, 3);
        drop(s);
        let (s, present) = FileStore::open(&path, &m).unwrap();
        assert_eq!(ones(&present), vec![0, 2, 5]);
        assert!(!s.is_finished());
    }

    #[test]
    fn a_whole_final_file_with_a_stale_state_is_served_and_the_state_dropped() {
        let (path, data, m) = setup("refinish");
        let (mut s, mut present) = FileStore::open(&path, &m).unwrap();
        for c in 0..6 {
            write_chunk(&mut s, &mut present, &m.manifest, &data, c);
        }
        s.commit(&present).unwrap();
        // A crash after the rename, before the state's removal.
        fs::rename(part_path(&path), &path).unwrap();
        drop(s);
        let (s, present) = FileStore::open(&path, &m).unwrap();
        assert!(s.is_finished() && present.is_full());
        assert!(!state_path(&path).exists());
    }

    /// Commits chunks 0, 1 and 4, then returns the state file's bytes.
    fn committed_state(path: &Path, data: &[u8], m: &SignedManifest) -> Vec<u8> {
        let (mut s, mut present) = FileStore::open(path, m).unwrap();
        for c in [0, 1, 4] {
            write_chunk(&mut s, &mut present, &m.manifest, data, c);
        }
        s.commit(&present).unwrap();
        fs::read(state_path(path)).unwrap()
    }

    fn reopened(path: &Path, m: &SignedManifest) -> Bitfield {
        FileStore::open(path, m).unwrap().1
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
            assert_eq!(reopened(&path, &m).count(), 0, "flipped byte {i} was trusted");
        }
        fs::write(state_path(&path), &good[..good.len() - 1]).unwrap();
        assert_eq!(reopened(&path, &m).count(), 0);
        fs::write(state_path(&path), &good).unwrap();
        assert_eq!(ones(&reopened(&path, &m)), vec![0, 1, 4]);
    }

    #[test]
    fn state_of_another_swarm_is_ignored() {
        let (path, data, m) = setup("swarm");
        committed_state(&path, &data, &m);
        let newer = SignedManifest { swarm_id: [2; 32], ..m.clone() };
        assert_eq!(reopened(&path, &newer).count(), 0);
    }

    #[test]
    fn chunk_changed_underneath_is_dropped() {
        let (path, data, m) = setup("altered");
        committed_state(&path, &data, &m);
        let part = std::fs::OpenOptions::new().write(true).open(part_path(&path)).unwrap();
        part.write_all_at(&[!data[CHUNK as usize + 9]], CHUNK as u64 + 9).unwrap();
        assert_eq!(ones(&reopened(&path, &m)), vec![0, 4]);
    }

    #[test]
    fn existing_final_file_that_matches_is_served() {
        let (path, data, m) = setup("exists-same");
        fs::write(&path, &data).unwrap();
        let (s, present) = FileStore::open(&path, &m).unwrap();
        assert!(s.is_finished() && present.is_full());
        assert!(!part_path(&path).exists());
        assert_eq!(s.hash_chunk(5).unwrap(), m.manifest.chunk_hashes[5]);
    }

    #[test]
    fn existing_final_file_that_differs_is_refused_and_untouched() {
        let (path, mut data, m) = setup("exists-differs");
        data[3 * CHUNK as usize + 1] ^= 1;
        fs::write(&path, &data).unwrap();
        let err = FileStore::open(&path, &m).unwrap_err();
        assert!(matches!(err, StoreError::ExistingFileDiffers { diff: Difference::Chunk(3), .. }));
        let msg = err.to_string();
        assert!(msg.contains("fw.img exists and is not this release (chunk 3 differs)"), "{msg}");
        assert_eq!(fs::read(&path).unwrap(), data);
        assert!(!part_path(&path).exists());

        fs::write(&path, &data[..100]).unwrap();
        let err = FileStore::open(&path, &m).unwrap_err();
        assert!(matches!(err, StoreError::ExistingFileDiffers { diff: Difference::Size(100), .. }));
    }

    #[test]
    fn a_symlink_or_a_fifo_at_the_final_name_is_refused_without_following_or_blocking() {
        let (path, data, m) = setup("final-planted");
        // A symlink to the very release: still refused, since where it points can change later.
        let real = path.with_extension("real");
        fs::write(&real, &data).unwrap();
        std::os::unix::fs::symlink(&real, &path).unwrap();
        let err = FileStore::open(&path, &m).unwrap_err();
        assert!(matches!(err, StoreError::ExistingFileDiffers { diff: Difference::Symlink, .. }), "{err}");
        assert!(err.to_string().contains("a symbolic link, not followed"), "{err}");
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_symlink(), "the link is left alone");
        assert!(!part_path(&path).exists());

        // A FIFO would block a plain open for reading until a writer came: it must not.
        fs::remove_file(&path).unwrap();
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err = FileStore::open(&path, &m).unwrap_err();
        assert!(matches!(err, StoreError::ExistingFileDiffers { diff: Difference::NotAFile, .. }), "{err}");
    }

    #[test]
    fn a_failed_commit_records_nothing_and_a_retry_succeeds() {
        let (path, data, m) = setup("commit-fails");
        let (mut s, mut present) = FileStore::open(&path, &m).unwrap();
        write_chunk(&mut s, &mut present, &m.manifest, &data, 2);
        // A directory where the temporary state goes makes its creation fail, even for root.
        let blocker = s.state_tmp.clone();
        fs::create_dir(&blocker).unwrap();
        let err = s.commit(&present).unwrap_err();
        assert!(err.to_string().starts_with("cannot replace "), "{err}");
        assert_eq!(reopened(&path, &m).count(), 0);

        fs::remove_dir(&blocker).unwrap();
        s.commit(&present).unwrap();
        assert_eq!(ones(&reopened(&path, &m)), vec![2]);
    }

    #[test]
    fn ranges_outside_the_release_are_refused() {
        let (path, _, m) = setup("range");
        let (mut s, _) = FileStore::open(&path, &m).unwrap();
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
