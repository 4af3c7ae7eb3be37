//! A filesystem in memory that loses, in a power cut, what a real one may lose: the model under
//! `tests/powercut.rs`, which runs the real [`FileStore`](crate::store::file::FileStore) on it.
//!
//! Killing a process never loses data the kernel already holds (the page cache survives), so a
//! kill test cannot show that the store syncs the right things in the right order. This model
//! can: every file keeps its durable bytes and the writes since its last fsync; the namespace
//! keeps its durable entries and the creations, renames and unlinks since its last directory
//! fsync. [`ModelFs::power_cut`] then keeps what a journaling filesystem may keep:
//!
//! - every synced write, synced length and directory entry made durable by a directory fsync;
//! - each unsynced write whole, not at all, or torn (a prefix ending on a 512-byte sector
//!   boundary); each unsynced length change or not;
//! - each unsynced namespace operation or not, but for any one name the operations kept are a
//!   prefix of those done on it (a rename is never kept when the creation it moved was lost);
//! - data and names independently: as with ext4 `data=ordered` or UBIFS, a rename may survive
//!   while the unsynced writes of the file it moved are lost.
//!
//! It is deterministic (choices come from the caller's seeded [`Rng`]) and can be armed to lose
//! power after the k-th mutating operation, so a test can cut inside any sequence of calls.
//! One level of directories is enough for the store: a rename must stay in its directory.

use crate::core::rng::Rng;
use crate::store::safe_fs::{temp_name_with, FileMeta, Fs, FsFile, OpenFlags};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Torn writes keep whole sectors of this size.
pub const SECTOR: u64 = 512;

/// A mutating operation, as the model saw it: where a cut landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// What was done.
    pub kind: OpKind,
    /// The file (as named when opened), or the directory of a `SyncDir`, or a rename's source.
    pub path: PathBuf,
    /// A rename's target.
    pub to: Option<PathBuf>,
}

/// The kinds of mutating operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// A file created by `open` with `O_CREAT`.
    Create,
    /// `pwrite`.
    Write,
    /// `ftruncate`.
    SetLen,
    /// `fdatasync`.
    SyncData,
    /// `fsync` of a file.
    SyncAll,
    /// `fchmod` (kept at once: modes do not matter to what a cut may lose here).
    SetMode,
    /// `rename`.
    Rename,
    /// `unlink`.
    Unlink,
    /// `fsync` of a directory.
    SyncDir,
}

/// What one power cut did, and where it landed.
#[derive(Clone, Debug, Default)]
pub struct CutReport {
    /// The last operation done before the cut.
    pub last: Option<Op>,
    /// The operation the cut refused (if the model was armed and reached its budget).
    pub refused: Option<Op>,
    /// Unsynced writes kept whole, torn and lost.
    pub writes_kept: u64,
    /// Unsynced writes of which only a sector-aligned prefix survived.
    pub writes_torn: u64,
    /// Unsynced writes lost.
    pub writes_lost: u64,
    /// Unsynced length changes kept and lost.
    pub lens_kept: u64,
    /// Unsynced length changes lost.
    pub lens_lost: u64,
    /// Unsynced creations, renames and unlinks kept.
    pub names_kept: u64,
    /// Unsynced creations, renames and unlinks lost.
    pub names_lost: u64,
}

/// A change to a file's bytes not yet synced.
#[derive(Clone, Debug)]
enum Unsynced {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

/// A change to the namespace not yet made durable by a directory fsync.
#[derive(Clone, Debug)]
enum NameOp {
    Create { name: PathBuf, ino: u64 },
    Rename { from: PathBuf, to: PathBuf },
    Unlink { name: PathBuf },
}

impl NameOp {
    fn names(&self) -> [&Path; 2] {
        match self {
            NameOp::Create { name, .. } | NameOp::Unlink { name } => [name, name],
            NameOp::Rename { from, to } => [from, to],
        }
    }

    /// Applies the operation to a directory map; false if it does not apply (source missing).
    fn apply(&self, dir: &mut BTreeMap<PathBuf, u64>) -> bool {
        match self {
            NameOp::Create { name, ino } => dir.insert(name.clone(), *ino).is_none(),
            NameOp::Rename { from, to } => dir.remove(from).map(|ino| dir.insert(to.clone(), ino)).is_some(),
            NameOp::Unlink { name } => dir.remove(name).is_some(),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Inode {
    /// What survives any power cut.
    durable: Vec<u8>,
    /// What a read sees: `durable` with `unsynced` applied.
    current: Vec<u8>,
    unsynced: Vec<Unsynced>,
}

fn apply_write(bytes: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let (at, end) = (offset as usize, offset as usize + data.len());
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[at..end].copy_from_slice(data);
}

fn apply(bytes: &mut Vec<u8>, change: &Unsynced) {
    match change {
        Unsynced::Write { offset, data } => apply_write(bytes, *offset, data),
        Unsynced::SetLen(len) => bytes.resize(*len as usize, 0),
    }
}

/// The whole model: inodes, the namespace, and the power switch.
#[derive(Debug, Default)]
struct Model {
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    /// Names that survive any power cut.
    durable: BTreeMap<PathBuf, u64>,
    /// Names as the process sees them: `durable` with `unsynced` applied.
    current: BTreeMap<PathBuf, u64>,
    unsynced: Vec<NameOp>,
    /// Counts power cycles; a handle from an earlier one belongs to a dead process.
    boot: u64,
    off: bool,
    /// Mutating operations allowed before the power fails.
    budget: Option<u64>,
    ops: u64,
    /// Calls of `start_writeback`: counted, and nothing more, since they make nothing durable.
    writebacks: u64,
    last: Option<Op>,
    refused: Option<Op>,
    temps: u64,
}

/// The directory of `path` (`.` for a bare name), as the store names it when it syncs one.
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn power_off() -> io::Error {
    io::Error::other("power is off (model filesystem)")
}

impl Model {
    fn check(&self, boot: u64) -> io::Result<()> {
        if self.off {
            return Err(power_off());
        }
        if boot != self.boot {
            return Err(io::Error::other("stale handle: opened before a power cut"));
        }
        Ok(())
    }

    /// Counts a mutating operation, or refuses it (and every later one) once the budget is spent.
    fn tick(&mut self, boot: u64, op: impl FnOnce() -> Op) -> io::Result<()> {
        self.check(boot)?;
        if self.budget == Some(0) {
            self.off = true;
            self.refused = Some(op());
            return Err(power_off());
        }
        if let Some(b) = &mut self.budget {
            *b -= 1;
        }
        self.ops += 1;
        self.last = Some(op());
        Ok(())
    }

    /// [`Model::tick`] for an operation on names, which no dead handle can reach.
    fn tick_path(&mut self, op: impl FnOnce() -> Op) -> io::Result<()> {
        self.tick(self.boot, op)
    }

    fn inode(&mut self, ino: u64) -> &mut Inode {
        self.inodes.get_mut(&ino).expect("a handle's inode lives until the next power cut")
    }

    fn change(&mut self, ino: u64, change: Unsynced) {
        let inode = self.inode(ino);
        apply(&mut inode.current, &change);
        inode.unsynced.push(change);
    }

    fn sync_file(&mut self, ino: u64) {
        let inode = self.inode(ino);
        for change in std::mem::take(&mut inode.unsynced) {
            apply(&mut inode.durable, &change);
        }
    }

    fn name_op(&mut self, op: NameOp) {
        let applied = op.apply(&mut self.current);
        debug_assert!(applied, "checked by the caller");
        self.unsynced.push(op);
    }

    /// Makes the namespace operations in `dir` durable, in their order.
    fn sync_dir(&mut self, dir: &Path) {
        let (mine, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.unsynced).into_iter().partition(|op| dir_of(op.names()[0]) == dir);
        for op in mine {
            op.apply(&mut self.durable);
        }
        self.unsynced = rest;
    }

    /// Keeps each unsynced namespace operation or not, a prefix of them per name.
    fn resolve_names(&mut self, rng: &mut Rng, keep: f64, report: &mut CutReport) {
        let mut lost: BTreeSet<PathBuf> = BTreeSet::new();
        for op in std::mem::take(&mut self.unsynced) {
            let names = op.names();
            let allowed = !names.iter().any(|n| lost.contains(*n));
            if allowed && rng.unit() < keep && op.apply(&mut self.durable) {
                report.names_kept += 1;
            } else {
                lost.extend(names.iter().map(|n| n.to_path_buf()));
                report.names_lost += 1;
            }
        }
        self.current = self.durable.clone();
    }

    /// Keeps each unsynced change of each file whole, torn or not at all.
    fn resolve_data(&mut self, rng: &mut Rng, keep: f64, report: &mut CutReport) {
        for inode in self.inodes.values_mut() {
            for change in std::mem::take(&mut inode.unsynced) {
                resolve_change(&mut inode.durable, change, rng, keep, report);
            }
            inode.current = inode.durable.clone();
        }
    }
}

fn resolve_change(durable: &mut Vec<u8>, change: Unsynced, rng: &mut Rng, keep: f64, report: &mut CutReport) {
    let kept = rng.unit() < keep;
    match change {
        Unsynced::SetLen(len) if kept => {
            report.lens_kept += 1;
            durable.resize(len as usize, 0);
        }
        Unsynced::SetLen(_) => report.lens_lost += 1,
        Unsynced::Write { offset, data } if kept => {
            report.writes_kept += 1;
            apply_write(durable, offset, &data);
        }
        Unsynced::Write { offset, data } => {
            // The sector boundaries strictly inside the write: where a torn write may stop.
            let first = (offset / SECTOR + 1) * SECTOR;
            let end = offset + data.len() as u64;
            if first < end && rng.below(2) == 0 {
                let stop = first + rng.below((end - 1 - first) / SECTOR + 1) * SECTOR;
                report.writes_torn += 1;
                apply_write(durable, offset, &data[..(stop - offset) as usize]);
            } else {
                report.writes_lost += 1;
            }
        }
    }
}

/// The model filesystem; clones share it (the test keeps one to cut the power, the store another).
#[derive(Clone, Default)]
pub struct ModelFs(Rc<RefCell<Model>>);

impl fmt::Debug for ModelFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0.borrow();
        write!(f, "ModelFs {{ names: {:?}, boot: {}, ops: {}, off: {} }}", m.current.keys(), m.boot, m.ops, m.off)
    }
}

impl ModelFs {
    /// An empty filesystem with the power on.
    pub fn new() -> ModelFs {
        ModelFs::default()
    }

    /// Lets `ops` more mutating operations happen, then fails the power: the next one and every
    /// operation after it fail and change nothing, until [`ModelFs::power_cut`].
    pub fn cut_after(&self, ops: u64) {
        self.0.borrow_mut().budget = Some(ops);
    }

    /// True once an armed cut has happened.
    pub fn is_off(&self) -> bool {
        self.0.borrow().off
    }

    /// Mutating operations done since the model was made.
    pub fn ops(&self) -> u64 {
        self.0.borrow().ops
    }

    /// Times writeback was started on any file.
    pub fn writebacks(&self) -> u64 {
        self.0.borrow().writebacks
    }

    /// Unsynced changes pending: file changes plus namespace operations.
    pub fn unsynced(&self) -> usize {
        let m = self.0.borrow();
        m.unsynced.len() + m.inodes.values().map(|i| i.unsynced.len()).sum::<usize>()
    }

    /// Cuts the power now (or finishes a cut the budget started) and turns it back on: unsynced
    /// changes are kept, torn or lost as the module documentation says, every open handle dies,
    /// and the filesystem is what a remount would show.
    pub fn power_cut(&self, rng: &mut Rng) -> CutReport {
        let mut m = self.0.borrow_mut();
        let mut report = CutReport { last: m.last.take(), refused: m.refused.take(), ..CutReport::default() };
        // One survival chance per cut: some cuts keep almost everything, others almost nothing.
        let keep = rng.unit();
        m.resolve_names(rng, keep, &mut report);
        m.resolve_data(rng, keep, &mut report);
        // Files no name reaches are gone once the process that held them open is.
        let live: BTreeSet<u64> = m.durable.values().copied().collect();
        m.inodes.retain(|ino, _| live.contains(ino));
        m.boot += 1;
        m.off = false;
        m.budget = None;
        report
    }

    /// The bytes of the file named `path`, as a read would see them now.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let m = self.0.borrow();
        m.current.get(path).map(|ino| m.inodes[ino].current.clone())
    }

    /// Every name, as a listing would show them now.
    pub fn names(&self) -> Vec<PathBuf> {
        self.0.borrow().current.keys().cloned().collect()
    }

    fn op(kind: OpKind, path: &Path) -> Op {
        Op { kind, path: path.to_path_buf(), to: None }
    }

    fn create(&self, m: &mut Model, path: &Path) -> io::Result<u64> {
        m.tick_path(|| Self::op(OpKind::Create, path))?;
        let ino = m.next_ino;
        m.next_ino += 1;
        m.inodes.insert(ino, Inode::default());
        m.name_op(NameOp::Create { name: path.to_path_buf(), ino });
        Ok(ino)
    }
}

impl Fs for ModelFs {
    type File = ModelFile;

    fn open(&self, path: &Path, flags: OpenFlags) -> io::Result<ModelFile> {
        let mut m = self.0.borrow_mut();
        m.check(m.boot)?;
        let ino = match m.current.get(path).copied() {
            Some(_) if flags.create && flags.exclusive => return Err(io::ErrorKind::AlreadyExists.into()),
            Some(ino) => ino,
            None if flags.create => self.create(&mut m, path)?,
            None => return Err(io::ErrorKind::NotFound.into()),
        };
        let (read, write) = (flags.read, flags.write);
        Ok(ModelFile { fs: self.0.clone(), ino, boot: m.boot, path: path.to_path_buf(), read, write })
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut m = self.0.borrow_mut();
        m.check(m.boot)?;
        if !m.current.contains_key(from) {
            return Err(io::ErrorKind::NotFound.into());
        }
        if dir_of(from) != dir_of(to) {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "the model renames within a directory only"));
        }
        m.tick_path(|| Op { kind: OpKind::Rename, path: from.to_path_buf(), to: Some(to.to_path_buf()) })?;
        if from != to {
            m.name_op(NameOp::Rename { from: from.to_path_buf(), to: to.to_path_buf() });
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut m = self.0.borrow_mut();
        m.check(m.boot)?;
        if !m.current.contains_key(path) {
            return Err(io::ErrorKind::NotFound.into());
        }
        m.tick_path(|| Self::op(OpKind::Unlink, path))?;
        m.name_op(NameOp::Unlink { name: path.to_path_buf() });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut m = self.0.borrow_mut();
        m.tick_path(|| Self::op(OpKind::SyncDir, dir))?;
        m.sync_dir(dir);
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let m = self.0.borrow();
        m.check(m.boot)?;
        let in_dir = m.current.keys().filter(|p| dir_of(p) == dir);
        Ok(in_dir.filter_map(|p| p.file_name().map(|n| n.to_os_string())).collect())
    }

    /// Numbered, not random: a run must replay exactly. The count outlives power cuts, as the
    /// entropy of a real machine would.
    fn temp_name(&self, path: &Path) -> io::Result<PathBuf> {
        let mut m = self.0.borrow_mut();
        m.temps += 1;
        Ok(temp_name_with(path, m.temps))
    }
}

/// An open file of a [`ModelFs`].
pub struct ModelFile {
    fs: Rc<RefCell<Model>>,
    ino: u64,
    boot: u64,
    /// The name it was opened by, to say where a cut landed.
    path: PathBuf,
    read: bool,
    write: bool,
}

impl fmt::Debug for ModelFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelFile {{ path: {:?}, ino: {}, boot: {} }}", self.path, self.ino, self.boot)
    }
}

fn bad_handle(what: &str) -> io::Error {
    io::Error::other(format!("file not open for {what}"))
}

impl ModelFile {
    /// Counts a mutating operation on this file, or refuses it.
    fn tick(&self, m: &mut Model, kind: OpKind) -> io::Result<()> {
        m.tick(self.boot, || ModelFs::op(kind, &self.path))
    }
}

impl FsFile for ModelFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut m = self.fs.borrow_mut();
        m.check(self.boot)?;
        if !self.read {
            return Err(bad_handle("reading"));
        }
        let bytes = &m.inode(self.ino).current;
        let from = bytes.len().min(offset as usize);
        let n = buf.len().min(bytes.len() - from);
        buf[..n].copy_from_slice(&bytes[from..from + n]);
        Ok(n)
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut m = self.fs.borrow_mut();
        m.check(self.boot)?;
        if !self.write {
            return Err(bad_handle("writing"));
        }
        self.tick(&mut m, OpKind::Write)?;
        m.change(self.ino, Unsynced::Write { offset, data: data.to_vec() });
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut m = self.fs.borrow_mut();
        m.check(self.boot)?;
        if !self.write {
            return Err(bad_handle("writing"));
        }
        self.tick(&mut m, OpKind::SetLen)?;
        m.change(self.ino, Unsynced::SetLen(len));
        Ok(())
    }

    fn sync_all(&self) -> io::Result<()> {
        let mut m = self.fs.borrow_mut();
        self.tick(&mut m, OpKind::SyncAll)?;
        m.sync_file(self.ino);
        Ok(())
    }

    /// As `sync_all`: the model keeps no metadata that `fdatasync` would leave out.
    fn sync_data(&self) -> io::Result<()> {
        let mut m = self.fs.borrow_mut();
        self.tick(&mut m, OpKind::SyncData)?;
        m.sync_file(self.ino);
        Ok(())
    }

    fn metadata(&self) -> io::Result<FileMeta> {
        let mut m = self.fs.borrow_mut();
        m.check(self.boot)?;
        // SAFETY: geteuid has no preconditions and cannot fail. Every model file is ours.
        let uid = unsafe { libc::geteuid() };
        Ok(FileMeta { len: m.inode(self.ino).current.len() as u64, is_file: true, uid })
    }

    fn set_mode(&self, _mode: u32) -> io::Result<()> {
        let mut m = self.fs.borrow_mut();
        self.tick(&mut m, OpKind::SetMode)
    }

    fn start_writeback(&self) -> io::Result<()> {
        let mut m = self.fs.borrow_mut();
        m.check(self.boot)?;
        m.writebacks += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = "/m";

    fn p(name: &str) -> PathBuf {
        Path::new(DIR).join(name)
    }

    /// A file `name` holding `bytes`, durable with its name.
    fn durable_file(fs: &ModelFs, name: &str, bytes: &[u8]) -> ModelFile {
        let f = fs.open(&p(name), OpenFlags::read_write_create(0o600)).unwrap();
        f.write_all_at(bytes, 0).unwrap();
        f.sync_all().unwrap();
        fs.sync_dir(Path::new(DIR)).unwrap();
        f
    }

    #[test]
    fn an_unsynced_write_can_vanish_or_tear_and_a_synced_one_never_does() {
        let (synced, unsynced) = (vec![1u8; 4096], vec![2u8; 4096]);
        let (mut lost, mut torn, mut kept) = (0, 0, 0);
        for seed in 0..300 {
            let fs = ModelFs::new();
            let f = durable_file(&fs, "f", &synced);
            f.write_all_at(&unsynced, 4096).unwrap();
            fs.power_cut(&mut Rng::new(seed));
            let got = fs.contents(&p("f")).unwrap();
            assert_eq!(got[..4096], synced[..], "seed {seed}: a synced write was lost");
            assert!(got[4096..].iter().all(|&b| b == 2) && got.len() % SECTOR as usize == 0, "seed {seed}");
            match got.len() {
                4096 => lost += 1,
                8192 => kept += 1,
                _ => torn += 1,
            }
        }
        assert!(lost > 0 && torn > 0 && kept > 0, "lost {lost}, torn {torn}, kept {kept}");
    }

    #[test]
    fn an_unsynced_rename_can_vanish_and_a_synced_one_never_does() {
        let (mut old, mut new) = (0, 0);
        for seed in 0..100 {
            for sync in [false, true] {
                let fs = ModelFs::new();
                durable_file(&fs, "f", b"old");
                let tmp = fs.open(&p("t"), OpenFlags::create_new(0o600)).unwrap();
                tmp.write_all_at(b"new", 0).unwrap();
                tmp.sync_all().unwrap();
                fs.rename(&p("t"), &p("f")).unwrap();
                if sync {
                    fs.sync_dir(Path::new(DIR)).unwrap();
                }
                fs.power_cut(&mut Rng::new(seed));
                let got = fs.contents(&p("f")).expect("f is always there, old or new");
                assert!(got == b"old" || got == b"new", "seed {seed}: {got:?}");
                assert!(!sync || got == b"new", "seed {seed}: a synced rename was lost");
                match (sync, got == b"old") {
                    (false, true) => old += 1,
                    (false, false) => new += 1,
                    (true, _) => {}
                }
            }
        }
        assert!(old > 0 && new > 0, "unsynced rename: kept {new}, lost {old}");
    }

    #[test]
    fn a_rename_can_outlive_the_data_of_the_file_it_moved() {
        let mut empty = 0;
        for seed in 0..100 {
            let fs = ModelFs::new();
            let tmp = fs.open(&p("t"), OpenFlags::create_new(0o600)).unwrap();
            tmp.write_all_at(&[7; 1024], 0).unwrap();
            fs.rename(&p("t"), &p("f")).unwrap();
            fs.sync_dir(Path::new(DIR)).unwrap();
            fs.power_cut(&mut Rng::new(seed));
            assert_eq!(fs.names(), vec![p("f")], "seed {seed}: the synced rename survives");
            empty += fs.contents(&p("f")).unwrap().is_empty() as u32;
        }
        assert!(empty > 0, "the renamed file's unsynced data was never lost");
    }

    #[test]
    fn namespace_operations_on_a_name_survive_in_order() {
        let mut seen = BTreeSet::new();
        for seed in 0..200 {
            let fs = ModelFs::new();
            fs.open(&p("a"), OpenFlags::create_new(0o600)).unwrap();
            fs.rename(&p("a"), &p("b")).unwrap();
            fs.open(&p("c"), OpenFlags::create_new(0o600)).unwrap();
            fs.power_cut(&mut Rng::new(seed));
            let names = fs.names();
            // b can only exist if a's creation survived and a then moved: never both.
            assert!(!(names.contains(&p("a")) && names.contains(&p("b"))), "seed {seed}: {names:?}");
            seen.insert(names);
        }
        // Lost, created but not moved, moved; with c independently there or not.
        assert_eq!(seen.len(), 6, "{seen:?}");
    }

    #[test]
    fn the_power_fails_after_the_armed_operation_and_handles_die_with_it() {
        let fs = ModelFs::new();
        let f = durable_file(&fs, "f", b"x");
        fs.cut_after(2);
        f.write_all_at(b"a", 0).unwrap();
        f.write_all_at(b"b", 1).unwrap();
        assert!(f.write_all_at(b"c", 2).is_err() && fs.is_off());
        assert!(f.read_at(&mut [0; 1], 0).is_err() && fs.open(&p("f"), OpenFlags::READ).is_err());
        let report = fs.power_cut(&mut Rng::new(1));
        assert_eq!(report.refused.map(|op| op.kind), Some(OpKind::Write));
        assert_eq!(report.writes_kept + report.writes_torn + report.writes_lost, 2, "c was never done");
        assert!(f.read_at(&mut [0; 1], 0).is_err(), "a handle from before the cut is dead");
        let again = fs.open(&p("f"), OpenFlags::READ).unwrap();
        assert!(again.write_all_at(b"z", 0).is_err(), "read-only handles do not write");
        assert_eq!(fs.unsynced(), 0);
    }
}
