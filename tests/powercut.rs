//! Power cuts, thousands of them, each at a chosen filesystem operation: the real `Release` and
//! the real `FileStore` fetch from a seed over a model filesystem (`store::model_fs`) that loses
//! what a power cut may lose (unsynced writes whole or torn, unsynced renames, creations and
//! unlinks). After every cut the fetcher restarts from what survived, as a rebooted device
//! would, until the release is complete. A kill test (`tests/crash.rs`) cannot show any of this:
//! the page cache survives a kill.
//!
//! After every cut: a file under the final name is the release, byte for byte; every chunk the
//! reopened store reports present is there; no chunk a completed commit recorded is lost; and
//! in the end the release completes. Deterministic: the same constants give the same cuts.

use flotilla::core::bitfield::Bitfield;
use flotilla::core::manifest::{Manifest, SignedManifest};
use flotilla::core::release::{Event, Release, ReleaseConfig};
use flotilla::core::rng::Rng;
use flotilla::core::storage::{Storage, StoreError};
use flotilla::core::swarm::{NewPeer, SwarmConfig};
use flotilla::core::wire::MAX_FRAME;
use flotilla::store::file::{parse_state, part_path, state_path, FileStore};
use flotilla::store::memory::MemStore;
use flotilla::store::model_fs::{CutReport, ModelFs, Op, OpKind};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

const CHUNK: u32 = 16 * 1024;
/// Releases fetched, each through as many cuts as it takes.
const CASES: u64 = 700;
/// Cuts the run must reach, and restarts one release may take before we call it stuck.
const MIN_CUTS: u64 = 5000;
const MAX_RESTARTS: u32 = 400;
/// The one connection slot, on both sides.
const SLOT: usize = 0;

/// What the store told the release was durable: the floor no cut may go below.
#[derive(Default)]
struct Promises {
    /// Chunks the last commit that returned Ok recorded.
    committed: Option<Bitfield>,
    /// Chunks of the last commit begun (it may not have completed).
    attempted: Option<Bitfield>,
    /// `finish` returned Ok: the final file's name is durable.
    finished: bool,
}

/// The fetcher's store, watched: the release runs on it exactly as on a bare `FileStore`.
struct Probe {
    store: FileStore<ModelFs>,
    promises: Rc<RefCell<Promises>>,
}

impl Storage for Probe {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.store.read_at(offset, buf)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        self.store.write_at(offset, data)
    }

    fn commit(&mut self, present: &Bitfield) -> Result<(), StoreError> {
        self.promises.borrow_mut().attempted = Some(present.clone());
        self.store.commit(present)?;
        self.promises.borrow_mut().committed = Some(present.clone());
        Ok(())
    }

    fn finish(&mut self) -> Result<(), StoreError> {
        self.store.finish()?;
        self.promises.borrow_mut().finished = true;
        Ok(())
    }

    fn is_finished(&self) -> bool {
        self.store.is_finished()
    }

    fn path(&self) -> &Path {
        self.store.path()
    }
}

/// Where in the store's life a cut landed, named by the operation it refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Inside `FileStore::open` (a cut while recovering from the last one).
    Open,
    /// Writing blocks to `.part`.
    Data,
    /// Syncing `.part` before a state is written.
    DataSync,
    /// Inside the state's replacement: temporary created, written, synced, renamed, dir synced.
    State,
    /// Syncing `.part` for the final rename, or the rename itself.
    FinalRename,
    /// Between the final rename and the state's removal (the directory sync, the unlink).
    AfterRename,
    /// After the release completed.
    Done,
}

const PHASES: [Phase; 7] =
    [Phase::Open, Phase::Data, Phase::DataSync, Phase::State, Phase::FinalRename, Phase::AfterRename, Phase::Done];

/// Everything the cuts did and found, for the summary line.
#[derive(Default)]
struct Tally {
    cuts: u64,
    phases: BTreeMap<Phase, u64>,
    /// The final file existed after the cut (always the release: asserted).
    whole: u64,
    /// Final file and a stale state both survived (open removes the state).
    stale_state: u64,
    /// Chunks present after a reopen, summed: what cuts did not cost.
    kept_chunks: u64,
    /// A commit was under way and its state did not survive: the previous one stood.
    reverted: u64,
    /// Chunks a surviving state named whose bytes were not there, for `open`'s re-hash to drop
    /// (asserted zero: before the fix in `FileStore::open_part`, a lost `.part` caused it).
    rehash_dropped: u64,
    /// Chunks a completed commit recorded that a cut lost (asserted zero).
    committed_lost: u64,
    writes: [u64; 3],
    names: [u64; 2],
}

/// One release and the machines around it: a seed in RAM that never loses power, and the
/// fetcher's model disk.
struct Case {
    /// Which release of the run: its seed, and the name in failure messages.
    id: u64,
    m: SignedManifest,
    data: Vec<u8>,
    path: PathBuf,
    fs: ModelFs,
    seed: Release<MemStore>,
    config: ReleaseConfig,
    now: Instant,
    rng: Rng,
    /// Mutating operations of a fetch without cuts: cut points are drawn below this.
    span: u64,
}

fn manifest(data: &[u8]) -> SignedManifest {
    let manifest = Manifest {
        name: "fw.img".into(),
        release: 1,
        file_size: data.len() as u64,
        chunk_size: CHUNK,
        file_hash: Sha256::digest(data).into(),
        chunk_hashes: data.chunks(CHUNK as usize).map(|c| Sha256::digest(c).into()).collect(),
        expires: None,
        targets: Vec::new(),
    };
    SignedManifest { manifest, bytes: Vec::new(), swarm_id: [5; 32], signers: Vec::new() }
}

impl Case {
    /// A release of 16 to 64 chunks (the last one short, not sector-aligned) and varied commit
    /// batching, so cuts meet commits of one chunk and of many.
    fn new(n: u64) -> Case {
        let mut rng = Rng::new(0xc0ffee ^ n.wrapping_mul(0x9e37_79b9));
        let chunks = 16 + rng.below(49);
        let short = 1 + rng.below(CHUNK as u64 - 1);
        let data = rng.bytes((chunks * CHUNK as u64 - short) as usize);
        let m = manifest(&data);
        let now = Instant::now();
        let swarm = SwarmConfig { node: 1, pipeline_bytes: CHUNK * (2 + rng.below(15) as u32), ..Default::default() };
        let seed_config = ReleaseConfig { swarm, ..Default::default() };
        let seed_store = MemStore::with_data("seed/fw.img", data.clone(), true);
        let seed = Release::new(&m, seed_store, &Bitfield::full(m.manifest.chunk_count()), seed_config, n, now);
        let config = ReleaseConfig {
            swarm: SwarmConfig { node: 2, ..swarm },
            commit_interval: Duration::from_millis(10 + rng.below(190)),
            max_uncommitted: 1 + rng.below(8) as u32,
        };
        let (fs, path) = (ModelFs::new(), PathBuf::from("/flotilla/fw.img"));
        Case { id: n, m, data, path, fs, seed, config, now, rng, span: 0 }
    }

    fn chunk(&self, bytes: &[u8], c: u32) -> bool {
        let g = self.m.manifest.geometry();
        let (at, len) = (g.chunk_offset(c) as usize, g.chunk_len(c) as usize);
        bytes.len() >= at + len && bytes[at..at + len] == self.data[at..at + len]
    }

    /// Starts the fetcher on what the disk holds and connects it to the seed.
    fn start(
        &mut self,
        store: FileStore<ModelFs>,
        present: &Bitfield,
        promises: &Rc<RefCell<Promises>>,
    ) -> Release<Probe> {
        let probe = Probe { store, promises: promises.clone() };
        let mut fetch = Release::new(&self.m, probe, present, self.config, self.rng.next_u64(), self.now);
        self.connect(&mut fetch);
        fetch
    }

    /// Opens a fresh connection between the fetcher (dialling) and the seed in `SLOT`, ending
    /// whatever the seed still had there.
    fn connect(&mut self, fetch: &mut Release<Probe>) {
        let mut nonce = [[0; 16]; 2];
        nonce.iter_mut().for_each(|n| self.rng.fill(n));
        fetch.remove_peer(SLOT, self.now);
        self.seed.remove_peer(SLOT, self.now);
        assert!(fetch.add_peer(SLOT, NewPeer { outbound: true, remote: None, nonce: nonce[0] }, self.now));
        assert!(self.seed.add_peer(SLOT, NewPeer { outbound: false, remote: None, nonce: nonce[1] }, self.now));
    }

    /// Runs the fetcher until it completes or the power fails; true if it completed.
    fn run(&mut self, fetch: &mut Release<Probe>) -> bool {
        let mut frame = vec![0u8; MAX_FRAME];
        for _ in 0..100_000 {
            if self.fs.is_off() {
                return false;
            }
            if fetch.is_complete() {
                return true;
            }
            self.carry(fetch, &mut frame);
            if self.fs.is_off() {
                return false;
            }
            self.now += Duration::from_millis(1 + self.rng.below(20));
            fetch.handle_timeout(self.now);
            self.seed.handle_timeout(self.now);
            self.events(fetch);
        }
        panic!("the fetch neither completed nor lost power");
    }

    /// Moves frames both ways until neither side has more; stops once the power fails.
    fn carry(&mut self, fetch: &mut Release<Probe>, frame: &mut [u8]) {
        let mut moved = true;
        while moved && !self.fs.is_off() {
            moved = false;
            while let Some(len) = fetch.poll_transmit(SLOT, self.now, true, frame) {
                self.seed.handle_frame(SLOT, &mut frame[..len], self.now);
                moved = true;
            }
            while let Some(len) = self.seed.poll_transmit(SLOT, self.now, true, frame) {
                fetch.handle_frame(SLOT, &mut frame[..len], self.now);
                moved = true;
                if self.fs.is_off() {
                    return;
                }
            }
        }
    }

    /// Storage failures are expected only once the power is off; a closed connection is
    /// re-dialled.
    fn events(&mut self, fetch: &mut Release<Probe>) {
        let mut closed = false;
        while let Some(e) = fetch.poll_event(self.now) {
            match e {
                Event::StorageFailed(e) => assert!(self.fs.is_off(), "storage failed with the power on: {e}"),
                Event::Closed { .. } => closed = true,
                Event::Completed | Event::PeerLearnt(_) => {}
            }
        }
        while let Some(e) = self.seed.poll_event(self.now) {
            closed |= matches!(e, Event::Closed { .. });
        }
        if closed && !self.fs.is_off() {
            self.connect(fetch);
        }
    }
}

/// Where the operation a cut refused stands in the store's sequence.
fn classify(r: &CutReport, path: &Path) -> Phase {
    let refused = r.refused.as_ref().expect("an armed cut names the operation it refused");
    let is = |p: &Path, q: PathBuf| p == q;
    let temp = |p: &Path| p.to_str().is_some_and(|p| p.contains(".state.tmp."));
    let renamed = |last: &Option<Op>, from: &dyn Fn(&Path) -> bool| {
        last.as_ref().is_some_and(|op| op.kind == OpKind::Rename && from(&op.path))
    };
    match refused.kind {
        OpKind::Write if is(&refused.path, part_path(path)) => Phase::Data,
        OpKind::SyncData if is(&refused.path, part_path(path)) => Phase::DataSync,
        OpKind::SyncAll | OpKind::Rename if is(&refused.path, part_path(path)) => Phase::FinalRename,
        _ if temp(&refused.path) => Phase::State,
        OpKind::SyncDir if renamed(&r.last, &temp) => Phase::State,
        OpKind::SyncDir if renamed(&r.last, &|p| is(p, part_path(path))) => Phase::AfterRename,
        OpKind::Unlink if is(&refused.path, state_path(path)) => Phase::AfterRename,
        _ => panic!("a cut refused {refused:?} after {:?}: an operation the store should not do there", r.last),
    }
}

impl Case {
    /// Mutating operations of a whole fetch without cuts.
    fn measure(n: u64) -> u64 {
        let mut case = Case::new(n);
        let (store, present) = FileStore::open_in(case.fs.clone(), &case.path, &case.m).unwrap();
        let mut fetch = case.start(store, &present, &Rc::default());
        assert!(case.run(&mut fetch), "release {n} does not complete without cuts");
        case.fs.ops()
    }

    /// Fetches the release through as many cuts as it takes, checking the disk after each.
    fn fetch_through_cuts(&mut self, tally: &mut Tally) {
        let n = self.id;
        let promises = Rc::new(RefCell::new(Promises::default()));
        for _ in 0..MAX_RESTARTS {
            self.fs.cut_after(self.rng.below(self.span + 1));
            let (store, present) = match FileStore::open_in(self.fs.clone(), &self.path, &self.m) {
                Ok(opened) => opened,
                Err(e) => {
                    assert!(self.fs.is_off(), "release {n}: open failed with the power on: {e}");
                    self.cut(Some(Phase::Open), &promises, tally);
                    continue;
                }
            };
            self.check_open(&store, &present, &promises.borrow(), tally);
            // Found whole after a cut: the final file's name is as durable as a finish makes it.
            promises.borrow_mut().finished |= store.is_finished();
            let mut fetch = self.start(store, &present, &promises);
            let completed = self.run(&mut fetch);
            // The process dies with the power: nothing of it outlives the cut.
            drop(fetch);
            if completed {
                assert!(promises.borrow().finished, "release {n}: complete, but finish never returned Ok");
                self.cut(Some(Phase::Done), &promises, tally);
                return self.check_complete();
            }
            self.cut(None, &promises, tally);
        }
        panic!("release {n} did not complete in {MAX_RESTARTS} restarts");
    }

    /// Cuts the power (or completes the cut an armed budget began) and checks what survived.
    fn cut(&mut self, phase: Option<Phase>, promises: &RefCell<Promises>, tally: &mut Tally) {
        let report = self.fs.power_cut(&mut self.rng);
        let phase = phase.unwrap_or_else(|| classify(&report, &self.path));
        tally.cuts += 1;
        *tally.phases.entry(phase).or_default() += 1;
        tally.writes[0] += report.writes_kept;
        tally.writes[1] += report.writes_torn;
        tally.writes[2] += report.writes_lost;
        tally.names[0] += report.names_kept;
        tally.names[1] += report.names_lost;
        self.check_disk(&promises.borrow(), phase, tally);
        // A commit the cut interrupted is settled now: it survived or it did not.
        let mut p = promises.borrow_mut();
        p.attempted = p.committed.clone();
    }

    /// What a cut left, straight from the disk before anything reopens it.
    fn check_disk(&self, p: &Promises, phase: Phase, tally: &mut Tally) {
        let at = format!("release {}, cut in {phase:?}", self.id);
        let state = self.fs.contents(&state_path(&self.path));
        if let Some(bytes) = self.fs.contents(&self.path) {
            assert!(bytes == self.data, "{at}: the final file survived a cut but is not the release");
            tally.whole += 1;
            tally.stale_state += state.is_some() as u64;
            return;
        }
        assert!(!p.finished, "{at}: finish returned Ok, yet the final file did not survive");
        let part = self.fs.contents(&part_path(&self.path)).unwrap_or_default();
        let n = self.m.manifest.chunk_count();
        let claimed = state.and_then(|s| parse_state(&s, &self.m.swarm_id, n).ok()).unwrap_or(Bitfield::new(n));
        // Storage::commit's promise: after a crash the record names only chunks that survived.
        // `open` re-hashes them anyway; this checks the order of syncs did not need it to.
        let bad = claimed.iter_ones().filter(|&c| !self.chunk(&part, c)).count();
        tally.rehash_dropped += bad as u64;
        assert_eq!(bad, 0, "{at}: the surviving state names {bad} chunks that are not in .part");
        if let Some(committed) = &p.committed {
            let lost = committed.iter_ones().filter(|&c| !claimed.get(c) || !self.chunk(&part, c)).count();
            tally.committed_lost += lost as u64;
            assert_eq!(lost, 0, "{at}: a cut lost {lost} chunks a completed commit recorded");
        }
        if let Some(attempted) = p.attempted.as_ref().filter(|a| p.committed.as_ref() != Some(a)) {
            tally.reverted += attempted.iter_ones().any(|c| !claimed.get(c)) as u64;
        }
    }

    /// What the reopened store reports: every chunk it calls present is there, and nothing a
    /// completed commit recorded is missing.
    fn check_open(&self, store: &FileStore<ModelFs>, present: &Bitfield, p: &Promises, tally: &mut Tally) {
        let name = if store.is_finished() { self.path.clone() } else { part_path(&self.path) };
        let id = self.id;
        let bytes = self.fs.contents(&name).expect("the store's file exists");
        assert!(!store.is_finished() || present.is_full(), "release {id}: a finished store is whole");
        for c in present.iter_ones() {
            assert!(self.chunk(&bytes, c), "release {id}: open reports chunk {c} present, but its bytes are wrong");
        }
        if let Some(committed) = &p.committed {
            assert!(committed.iter_ones().all(|c| present.get(c)), "release {id}: open lost committed chunks");
        }
        tally.kept_chunks += present.count() as u64;
    }

    /// After the last cut: the release is in place, byte for byte, and a restart serves it.
    fn check_complete(&self) {
        let n = self.id;
        assert_eq!(self.fs.contents(&self.path).as_deref(), Some(&self.data[..]), "release {n}");
        assert!(self.fs.contents(&part_path(&self.path)).is_none(), "release {n}: .part left behind");
        let (store, present) = FileStore::open_in(self.fs.clone(), &self.path, &self.m).unwrap();
        assert!(store.is_finished() && present.is_full(), "release {n}: a restart does not serve it");
        assert!(self.fs.contents(&state_path(&self.path)).is_none(), "release {n}: the stale state stays");
    }
}

impl Tally {
    fn summary(&self, releases: u64) -> String {
        let phases: Vec<String> =
            PHASES.iter().map(|p| format!("{p:?}={}", self.phases.get(p).unwrap_or(&0))).collect();
        format!(
            "powercut: cuts={} releases={releases} phases[{}] found[final-file-whole={} \
             stale-state={} reverted-commits={} rehash-dropped={} committed-lost={} kept-chunks={}] \
             model[writes kept/torn/lost={}/{}/{} names kept/lost={}/{}]",
            self.cuts,
            phases.join(" "),
            self.whole,
            self.stale_state,
            self.reverted,
            self.rehash_dropped,
            self.committed_lost,
            self.kept_chunks,
            self.writes[0],
            self.writes[1],
            self.writes[2],
            self.names[0],
            self.names[1],
        )
    }
}

#[test]
fn releases_survive_thousands_of_power_cuts() {
    let mut tally = Tally::default();
    for n in 0..CASES {
        let span = Case::measure(n);
        let mut case = Case { span, ..Case::new(n) };
        case.fetch_through_cuts(&mut tally);
    }
    let line = tally.summary(CASES);
    println!("{line}");
    assert!(tally.cuts >= MIN_CUTS, "{line}");
    assert!(PHASES.iter().all(|p| tally.phases.get(p).is_some_and(|&n| n > 0)), "a phase was never cut: {line}");
    assert_eq!((tally.committed_lost, tally.rehash_dropped), (0, 0), "{line}");
    assert!(tally.writes[1] > 0 && tally.writes[2] > 0 && tally.names[1] > 0, "the model never lost anything: {line}");
    assert!(line.contains(&format!("cuts={} ", tally.cuts)) && line.contains("rehash-dropped=0 committed-lost=0 "));
}
