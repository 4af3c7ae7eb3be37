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
//!
//! A device takes on several releases in turn, under two names, each a higher number than the
//! last of its name (and now and then an older one, which must be refused), and keeps the real
//! records of the state directory on the same model disk: the no-rollback history and the
//! install hooks owed. Each start does what the agent does around a fetch (`keep_state`,
//! `add_release`, `note_hook`, the hook runner): load both records, refuse or record the
//! release, owe its hook while it is incomplete, run the hook once it is whole and forget it once
//! it succeeded. Cuts land inside those record writes and while the hook runs too. After every
//! cut: neither record is damaged; no name's highest release is below the last `record` that
//! returned Ok; a hook whose `add` returned Ok is owed until its `remove` is called, and never
//! again once `remove` returned Ok; a hook runs again only after a failure or a cut in its run
//! or its removal.

use flotilla::core::bitfield::Bitfield;
use flotilla::core::manifest::{Manifest, SignedManifest, SwarmId};
use flotilla::core::release::{Event, Release, ReleaseConfig};
use flotilla::core::rng::Rng;
use flotilla::core::storage::{Storage, StoreError};
use flotilla::core::swarm::{NewPeer, SwarmConfig};
use flotilla::core::wire::MAX_FRAME;
use flotilla::store::file::{parse_state, part_path, state_path, FileStore};
use flotilla::store::history::History;
use flotilla::store::memory::MemStore;
use flotilla::store::model_fs::{CutReport, ModelFs, Op, OpKind};
use flotilla::store::pending_hooks::{PendingHook, PendingHooks};
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
/// Releases one device takes on in turn: its records carry over from one to the next.
const PER_DEVICE: u64 = 7;
/// The release names a device holds, each with its own line in the history.
const NAMES: [&str; 2] = ["fw.img", "boot.img"];
/// The device's one directory: releases and the state directory's records.
const DIR: &str = "/flotilla";
/// Mutating operations of one record write: create, chmod, write, fsync, rename, dir fsync.
const RECORD_OPS: u64 = 6;
/// Cuts the run must land inside history writes, and inside hook-record writes.
const MIN_RECORD_CUTS: u64 = 100;

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
    /// Loading the records at start (removing the temporaries an earlier cut left).
    Load,
    /// Inside the history's replacement (`History::record`).
    History,
    /// Inside the hooks record's replacement when a hook is owed (`PendingHooks::add`).
    HookAdd,
    /// While the install hook runs.
    HookRun,
    /// Inside the hooks record's replacement when a hook succeeded (`PendingHooks::remove`).
    HookRemove,
}

const PHASES: [Phase; 7] =
    [Phase::Open, Phase::Data, Phase::DataSync, Phase::State, Phase::FinalRename, Phase::AfterRename, Phase::Done];
const RECORD_PHASES: [Phase; 5] = [Phase::Load, Phase::History, Phase::HookAdd, Phase::HookRun, Phase::HookRemove];

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
    /// History writes that returned Ok (a release recorded).
    recorded: u64,
    /// Older releases offered and refused.
    refused: u64,
    /// Hook runs, and how many of them were runs again (after a failure or a cut).
    hook_runs: u64,
    hook_reruns: u64,
    /// Hook runs that failed (and were run again).
    hook_failures: u64,
    /// Times both records were checked against what the writes that returned Ok promised.
    record_checks: u64,
}

/// What the records' writes returned Ok for, on one device: the floor no cut may go below.
#[derive(Default)]
struct Records {
    /// Per name: the release of the last `record` that returned Ok.
    floor: BTreeMap<&'static str, u64>,
    /// Per name: the highest release `record` was asked to keep, Ok or not.
    asked: BTreeMap<&'static str, u64>,
    /// Per release taken on: its install hook's life.
    hooks: BTreeMap<SwarmId, HookLife>,
}

/// One release's install hook, as the test saw it.
struct HookLife {
    /// The line the record keeps for it.
    hook: PendingHook,
    /// `add` returned Ok: owed from then on, until `remove` is called.
    added: bool,
    /// `remove` was called (a cut inside it may have left the hook owed or not).
    remove_tried: bool,
    /// `remove` returned Ok: never owed again.
    removed: bool,
    /// A run succeeded.
    succeeded: bool,
    runs: u32,
    /// Runs beyond the first that are allowed: one per failure, per cut while it ran, per cut
    /// inside `remove`.
    reruns: u32,
}

impl HookLife {
    fn new(hook: PendingHook) -> HookLife {
        HookLife { hook, added: false, remove_tried: false, removed: false, succeeded: false, runs: 0, reruns: 0 }
    }
}

/// Both records as the disk holds them now; a damaged one fails the test.
fn records_on_disk(fs: &ModelFs, at: &str) -> (Vec<(String, u64)>, Vec<PendingHook>) {
    let text = |file: &str| {
        let bytes = fs.contents(&Path::new(DIR).join(file))?;
        Some(String::from_utf8(bytes).unwrap_or_else(|e| panic!("{at}: {file} is damaged, not text: {e}")))
    };
    let history = text(History::FILE).map_or_else(Vec::new, |t| {
        History::parse(&t).unwrap_or_else(|e| panic!("{at}: a cut damaged the history: {e}"))
    });
    let hooks = text(PendingHooks::FILE).map_or_else(Vec::new, |t| {
        PendingHooks::parse(&t).unwrap_or_else(|e| panic!("{at}: a cut damaged the hooks record: {e}"))
    });
    (history, hooks)
}

impl Records {
    /// The records on disk against the promises: the history never below the last `record` that
    /// returned Ok (and never above what was asked); a hook added (Ok) is owed until `remove` is
    /// called; a hook removed (Ok) is never owed again; nothing owed that was never added.
    fn check(&self, fs: &ModelFs, at: &str, tally: &mut Tally) -> (Vec<(String, u64)>, Vec<PendingHook>) {
        let (history, hooks) = records_on_disk(fs, at);
        tally.record_checks += 1;
        for (name, release) in &history {
            let asked = self.asked.get(name.as_str()).copied();
            assert!(asked.is_some_and(|a| *release <= a), "{at}: the history holds {name} {release}, never asked for");
        }
        for (&name, &floor) in &self.floor {
            let kept = history.iter().find(|(n, _)| n == name).map(|&(_, r)| r);
            assert!(
                kept >= Some(floor),
                "{at}: the history went back: {name} at {kept:?} after record({floor}) was Ok"
            );
        }
        for hook in &hooks {
            let life = self.hooks.get(&hook.swarm);
            assert!(life.is_some_and(|l| l.hook == *hook), "{at}: {hook:?} is owed, but no add wrote it");
        }
        for life in self.hooks.values() {
            let owed = hooks.iter().any(|h| h.swarm == life.hook.swarm);
            assert!(owed || !life.added || life.remove_tried, "{at}: a cut lost the owed hook {:?}", life.hook);
            assert!(!owed || !life.removed, "{at}: the hook {:?} is owed again after remove was Ok", life.hook);
        }
        (history, hooks)
    }

    /// [`Records::check`], and the records as loaded at a start agree with their files; loading
    /// removed the temporaries cuts left.
    fn check_loaded(&self, fs: &ModelFs, h: &History<ModelFs>, p: &PendingHooks<ModelFs>, at: &str, t: &mut Tally) {
        let (history, hooks) = self.check(fs, at, t);
        for name in NAMES {
            let on_disk = history.iter().find(|(n, _)| n == name).map(|&(_, r)| r);
            assert_eq!(h.highest(name), on_disk, "{at}: the history loaded is not its file");
        }
        for swarm in self.hooks.keys() {
            assert_eq!(p.is_pending(swarm), hooks.iter().any(|h| h.swarm == *swarm), "{at}: hooks loaded differ");
        }
        let temp = |n: &Path| {
            n.to_str().is_some_and(|n| n.contains(".flotilla-history.tmp.") || n.contains(".flotilla-hooks.tmp."))
        };
        assert!(!fs.names().iter().any(|n| temp(n)), "{at}: loading left a record's temporaries: {:?}", fs.names());
    }
}

/// One release and the machines around it: a seed in RAM that never loses power, and the
/// fetcher's model disk.
struct Case {
    /// Which release of the run: its seed, and the name in failure messages.
    id: u64,
    /// Its name and number (the history's key and value).
    name: &'static str,
    number: u64,
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

fn manifest(data: &[u8], name: &str, release: u64, swarm_id: SwarmId) -> SignedManifest {
    let manifest = Manifest {
        name: name.into(),
        release,
        file_size: data.len() as u64,
        chunk_size: CHUNK,
        file_hash: Sha256::digest(data).into(),
        chunk_hashes: data.chunks(CHUNK as usize).map(|c| Sha256::digest(c).into()).collect(),
        expires: None,
        targets: Vec::new(),
        rollout: None,
    };
    SignedManifest { manifest, bytes: Vec::new(), swarm_id, signers: Vec::new() }
}

impl Case {
    /// A release of 16 to 64 chunks (the last one short, not sector-aligned) and varied commit
    /// batching, so cuts meet commits of one chunk and of many.
    fn new(n: u64, name: &'static str, number: u64) -> Case {
        let mut rng = Rng::new(0xc0ffee ^ n.wrapping_mul(0x9e37_79b9));
        let chunks = 16 + rng.below(49);
        let short = 1 + rng.below(CHUNK as u64 - 1);
        let data = rng.bytes((chunks * CHUNK as u64 - short) as usize);
        let m = manifest(&data, name, number, Sha256::digest(n.to_le_bytes()).into());
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
        let (fs, path) = (ModelFs::new(), PathBuf::from(format!("{DIR}/{n}.{name}")));
        Case { id: n, name, number, m, data, path, fs, seed, config, now, rng, span: 0 }
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
        assert!(fetch.add_peer(
            SLOT,
            NewPeer { outbound: true, remote: None, beyond_lan: false, nonce: nonce[0] },
            self.now
        ));
        assert!(self.seed.add_peer(
            SLOT,
            NewPeer { outbound: false, remote: None, beyond_lan: false, nonce: nonce[1] },
            self.now
        ));
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

/// True if the operation a cut refused belongs to replacing the record `file`: its temporary
/// (created, written, synced, renamed, or unlinked as stale), or the directory sync after the
/// temporary's rename.
fn landed_in(r: &CutReport, file: &str) -> bool {
    let file = Path::new(DIR).join(file);
    let ours =
        |p: &Path| p == file || p.to_str().zip(file.to_str()).is_some_and(|(p, f)| p.starts_with(&format!("{f}.tmp.")));
    match &r.refused {
        Some(op) if op.kind == OpKind::SyncDir => {
            r.last.as_ref().is_some_and(|last| last.kind == OpKind::Rename && ours(&last.path))
        }
        Some(op) => ours(&op.path),
        None => false,
    }
}

impl Case {
    /// Mutating operations of a whole fetch without cuts: cut points for a start are drawn
    /// below this. The record writes around it (history, hook owed, hook done) are left out:
    /// only a first start does them, and cuts are aimed at them apart ([`Case::start_agent`]).
    fn measure(n: u64, name: &'static str, number: u64) -> u64 {
        let mut case = Case::new(n, name, number);
        let (mut records, mut tally) = (Records::default(), Tally::default());
        let done = case.start_agent(&mut records, &Rc::default(), &mut tally, false);
        assert_eq!(done, Ok(()), "release {n} does not complete without cuts");
        case.fs.ops() - 3 * RECORD_OPS
    }

    /// One start of the device's agent with this release to fetch, in the agent's order
    /// (`keep_state`, `add_release`, `note_hook`, the fetch, `hook_after_completion`,
    /// `hook_ended`): load both records; refuse the release if the history is past it, else
    /// record it; open its store; owe its hook while it is incomplete; fetch; run the hook while
    /// it is owed and forget it once it succeeded. Ok once all that is done, else where the power
    /// failed (`None`: in the fetch, for [`classify`]). With `aim`, the cut armed for this start
    /// is now and then moved inside a record write or the hook's run.
    fn start_agent(
        &mut self,
        rec: &mut Records,
        promises: &Rc<RefCell<Promises>>,
        tally: &mut Tally,
        aim: bool,
    ) -> Result<(), Option<Phase>> {
        let (name, number, swarm) = (self.name, self.number, self.m.swarm_id);
        let at = format!("release {} ({name} #{number})", self.id);
        let dir = Path::new(DIR);
        // keep_state: both records, from what the disk holds.
        let loaded = History::load_in(self.fs.clone(), dir)
            .and_then(|history| Ok((history, PendingHooks::load_in(self.fs.clone(), dir)?)));
        let (mut history, mut hooks) = match loaded {
            Ok(records) => records,
            Err(e) => {
                assert!(self.fs.is_off(), "{at}: a record does not load with the power on: {e}");
                return Err(Some(Phase::Load));
            }
        };
        rec.check_loaded(&self.fs, &history, &hooks, &at, tally);

        // add_release: a release older than the history's highest is refused (never this one,
        // the newest of its name); a newer one is recorded, durably, before anything else.
        let highest = history.highest(name);
        assert!(highest <= Some(number), "{at}: refused after a restart: the history holds {highest:?}");
        let writes = highest < Some(number);
        if aim && writes && self.rng.below(4) == 0 {
            self.fs.cut_after(self.rng.below(RECORD_OPS));
        }
        let asked = rec.asked.entry(name).or_default();
        *asked = (*asked).max(number);
        if let Err(e) = history.record(name, number) {
            assert!(self.fs.is_off(), "{at}: record failed with the power on: {e}");
            return Err(Some(Phase::History));
        }
        let floor = rec.floor.entry(name).or_default();
        *floor = (*floor).max(number);
        tally.recorded += writes as u64;

        let (store, present) = match FileStore::open_in(self.fs.clone(), &self.path, &self.m) {
            Ok(opened) => opened,
            Err(e) => {
                assert!(self.fs.is_off(), "{at}: open failed with the power on: {e}");
                return Err(Some(Phase::Open));
            }
        };
        self.check_open(&store, &present, &promises.borrow(), tally);
        // Found whole after a cut: the final file's name is as durable as a finish makes it.
        let whole = store.is_finished();
        promises.borrow_mut().finished |= whole;

        // note_hook: an incomplete release owes its hook before a byte of it is fetched; a whole
        // one has its hook due if it is owed.
        let hook = PendingHook::new(swarm, name.to_owned(), number);
        let life = rec.hooks.entry(swarm).or_insert_with(|| HookLife::new(hook));
        if whole {
            let owed = hooks.is_pending(&swarm);
            assert!(owed || life.succeeded, "{at}: whole, its hook never succeeded and is not owed: a hook was lost");
        } else {
            if aim && !hooks.is_pending(&swarm) && self.rng.below(3) == 0 {
                self.fs.cut_after(self.rng.below(RECORD_OPS));
            }
            if let Err(e) = hooks.add(life.hook.clone()) {
                assert!(self.fs.is_off(), "{at}: add failed with the power on: {e}");
                return Err(Some(Phase::HookAdd));
            }
            life.added = true;
        }

        let mut fetch = self.start(store, &present, promises);
        let completed = self.run(&mut fetch);
        // The process dies with the power: nothing of it outlives the cut.
        drop(fetch);
        if !completed {
            return Err(None);
        }
        assert!(promises.borrow().finished, "{at}: complete, but finish never returned Ok");

        // hook_after_completion, run_hooks, hook_ended: the hook runs while it is owed; once it
        // succeeded, the record forgets it.
        while hooks.is_pending(&swarm) {
            let life = rec.hooks.get_mut(&swarm).expect("made above");
            assert!(!life.removed, "{at}: the hook runs again after its remove returned Ok");
            assert!(life.runs <= life.reruns, "{at}: run {} of the hook, with {} reasons", life.runs + 1, life.reruns);
            tally.hook_runs += 1;
            tally.hook_reruns += (life.runs > 0) as u64;
            life.runs += 1;
            if aim && self.rng.below(6) == 0 {
                // The power fails while the hook runs: it is still owed, and runs again.
                life.reruns += 1;
                return Err(Some(Phase::HookRun));
            }
            if self.rng.below(8) == 0 {
                // It failed: still owed, it runs again (after a back-off, in the agent).
                life.reruns += 1;
                tally.hook_failures += 1;
                continue;
            }
            life.succeeded = true;
            if aim && self.rng.below(3) == 0 {
                self.fs.cut_after(self.rng.below(RECORD_OPS));
            }
            life.remove_tried = true;
            if let Err(e) = hooks.remove(&swarm) {
                assert!(self.fs.is_off(), "{at}: remove failed with the power on: {e}");
                // Forgotten or not: it may run once more, at least once in all.
                life.reruns += 1;
                return Err(Some(Phase::HookRemove));
            }
            life.removed = true;
        }
        Ok(())
    }

    /// Fetches the release through as many cuts as it takes, checking the disk after each.
    fn fetch_through_cuts(&mut self, rec: &mut Records, tally: &mut Tally) {
        let n = self.id;
        let promises = Rc::new(RefCell::new(Promises::default()));
        for _ in 0..MAX_RESTARTS {
            self.fs.cut_after(self.rng.below(self.span + 1));
            match self.start_agent(rec, &promises, tally, true) {
                Ok(()) => {
                    self.cut(Some(Phase::Done), &promises, rec, tally);
                    return self.check_complete(rec, tally);
                }
                Err(phase) => self.cut(phase, &promises, rec, tally),
            }
        }
        panic!("release {n} did not complete in {MAX_RESTARTS} restarts");
    }

    /// Cuts the power (or completes the cut an armed budget began) and checks what survived.
    fn cut(&mut self, phase: Option<Phase>, promises: &RefCell<Promises>, rec: &Records, tally: &mut Tally) {
        let report = self.fs.power_cut(&mut self.rng);
        let phase = phase.unwrap_or_else(|| classify(&report, &self.path));
        let at = format!("release {}, cut in {phase:?}", self.id);
        let landed = match phase {
            Phase::History => landed_in(&report, History::FILE),
            Phase::HookAdd | Phase::HookRemove => landed_in(&report, PendingHooks::FILE),
            Phase::Load => landed_in(&report, History::FILE) || landed_in(&report, PendingHooks::FILE),
            Phase::HookRun | Phase::Done => report.refused.is_none(),
            _ => true,
        };
        assert!(landed, "{at}: the cut refused {:?} after {:?}", report.refused, report.last);
        tally.cuts += 1;
        *tally.phases.entry(phase).or_default() += 1;
        tally.writes[0] += report.writes_kept;
        tally.writes[1] += report.writes_torn;
        tally.writes[2] += report.writes_lost;
        tally.names[0] += report.names_kept;
        tally.names[1] += report.names_lost;
        self.check_disk(&promises.borrow(), phase, tally);
        rec.check(&self.fs, &at, tally);
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

    /// After the last cut: the release is in place, byte for byte, and a restart serves it; the
    /// history holds it, and its hook ran to success and is owed no more.
    fn check_complete(&self, rec: &Records, tally: &mut Tally) {
        let n = self.id;
        assert_eq!(self.fs.contents(&self.path).as_deref(), Some(&self.data[..]), "release {n}");
        assert!(self.fs.contents(&part_path(&self.path)).is_none(), "release {n}: .part left behind");
        let (store, present) = FileStore::open_in(self.fs.clone(), &self.path, &self.m).unwrap();
        assert!(store.is_finished() && present.is_full(), "release {n}: a restart does not serve it");
        assert!(self.fs.contents(&state_path(&self.path)).is_none(), "release {n}: the stale state stays");
        let history = History::load_in(self.fs.clone(), Path::new(DIR)).unwrap();
        let hooks = PendingHooks::load_in(self.fs.clone(), Path::new(DIR)).unwrap();
        rec.check_loaded(&self.fs, &history, &hooks, &format!("release {n}, complete"), tally);
        assert_eq!(history.highest(self.name), Some(self.number), "release {n}: not the history's highest");
        let life = &rec.hooks[&self.m.swarm_id];
        assert!(life.succeeded && life.runs >= 1, "release {n}: its hook never succeeded");
        assert!(!hooks.is_pending(&self.m.swarm_id), "release {n}: its hook is still owed");
    }
}

/// A stale manifest offers `name` release `older`, below one the device recorded: a start
/// refuses it (the history's highest is above it), and `record` would not lower the history
/// nor write a byte.
fn offer_older(fs: &ModelFs, rec: &Records, name: &'static str, older: u64, tally: &mut Tally) {
    let at = format!("{name} #{older}, offered after #{}", rec.floor[name]);
    let mut history = History::load_in(fs.clone(), Path::new(DIR)).expect("the history loads");
    let hooks = PendingHooks::load_in(fs.clone(), Path::new(DIR)).expect("the hooks record loads");
    rec.check_loaded(fs, &history, &hooks, &at, tally);
    let highest = history.highest(name);
    assert!(highest > Some(older), "{at}: not refused: the history holds {highest:?}");
    let ops = fs.ops();
    history.record(name, older).unwrap();
    assert_eq!((history.highest(name), fs.ops()), (highest, ops), "{at}: an older record wrote or lowered");
    tally.refused += 1;
}

/// One device: `PER_DEVICE` releases in turn, each fetched through its cuts, on one model disk
/// that keeps the records from one to the next.
fn device(d: u64, tally: &mut Tally) {
    let fs = ModelFs::new();
    let mut rec = Records::default();
    let mut rng = Rng::new(0xdec0de ^ d.wrapping_mul(0x9e37_79b9));
    let mut last: BTreeMap<&'static str, u64> = BTreeMap::new();
    for n in d * PER_DEVICE..(d + 1) * PER_DEVICE {
        let name = NAMES[rng.below(NAMES.len() as u64) as usize];
        if let Some(&high) = last.get(name).filter(|&&h| h > 1 && rng.below(3) == 0) {
            offer_older(&fs, &rec, name, 1 + rng.below(high - 1), tally);
        }
        let number = last.get(name).map_or(1 + rng.below(3), |l| l + 1 + rng.below(3));
        let span = Case::measure(n, name, number);
        let mut case = Case { span, fs: fs.clone(), ..Case::new(n, name, number) };
        case.fetch_through_cuts(&mut rec, tally);
        last.insert(name, number);
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

    fn phase(&self, p: Phase) -> u64 {
        self.phases.get(&p).copied().unwrap_or(0)
    }

    /// Cuts inside history writes, and inside hook-record writes (add and remove).
    fn record_cuts(&self) -> (u64, u64) {
        (self.phase(Phase::History), self.phase(Phase::HookAdd) + self.phase(Phase::HookRemove))
    }

    fn records_summary(&self, devices: u64) -> String {
        let (history, hooks) = self.record_cuts();
        format!(
            "powercut records: devices={devices} cuts[history-writes={history} hook-record-writes={hooks} \
             (add={} remove={}) hook-running={} load={}] history[recorded={} older-refused={}] \
             hooks[runs={} again={} failed={}] checks={}",
            self.phase(Phase::HookAdd),
            self.phase(Phase::HookRemove),
            self.phase(Phase::HookRun),
            self.phase(Phase::Load),
            self.recorded,
            self.refused,
            self.hook_runs,
            self.hook_reruns,
            self.hook_failures,
            self.record_checks,
        )
    }
}

#[test]
fn releases_survive_thousands_of_power_cuts() {
    let mut tally = Tally::default();
    let devices = CASES / PER_DEVICE;
    for d in 0..devices {
        device(d, &mut tally);
    }
    let line = tally.summary(CASES);
    let records = tally.records_summary(devices);
    println!("{line}\n{records}");
    assert!(tally.cuts >= MIN_CUTS, "{line}");
    assert!(PHASES.iter().all(|p| tally.phases.get(p).is_some_and(|&n| n > 0)), "a phase was never cut: {line}");
    assert_eq!((tally.committed_lost, tally.rehash_dropped), (0, 0), "{line}");
    assert!(tally.writes[1] > 0 && tally.writes[2] > 0 && tally.names[1] > 0, "the model never lost anything: {line}");
    assert!(line.contains(&format!("cuts={} ", tally.cuts)) && line.contains("rehash-dropped=0 committed-lost=0 "));
    let (history, hooks) = tally.record_cuts();
    assert!(history >= MIN_RECORD_CUTS && hooks >= MIN_RECORD_CUTS, "too few cuts in record writes: {records}");
    let cut = |p: &Phase| tally.phases.get(p).is_some_and(|&n| n > 0);
    assert!(RECORD_PHASES[1..].iter().all(cut), "a record phase was never cut: {records}");
    assert!(tally.refused > 0 && tally.hook_reruns > 0, "{records}");
}
