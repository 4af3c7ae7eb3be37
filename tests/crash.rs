//! Crash and disk-trouble tests (issue 5, parts 2 and 6): the real `flotilla` binary is killed
//! with SIGKILL at many moments, runs out of space, and meets a read-only directory; after each
//! of these the files beside `--out` must tell the truth (DESIGN.md, "Storage rules"):
//!
//! - `FILE` either does not exist or is exactly the release, never half-written;
//! - `FILE.state`, whenever present, is a valid state file and every chunk it claims holds the
//!   right bytes in `FILE.part`;
//! - the set of durable chunks never shrinks, and a restart fetches only what was not durable.
//!
//! Addresses: 127.0.0.200-202 (kill loop), 205-206 (disk full), 210-211 (read-only). Every agent
//! runs with `--no-discovery`. The disk tests mount tmpfs file systems, so they need root; they
//! fail (never skip) when `mount` does not work. Shared helpers are in tests/common/mod.rs.

use std::ffi::CString;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::*;

const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Helpers of this file (the shared ones are in tests/common/mod.rs)
// ---------------------------------------------------------------------------------------------

/// What the kill loop needs of the release, beyond the shared helpers.
impl Release {
    fn count(&self) -> u32 {
        self.signed.manifest.chunk_count()
    }

    fn chunk_size(&self) -> u64 {
        self.signed.manifest.chunk_size as u64
    }

    /// The byte range of chunk `c` in the file.
    fn range(&self, c: u32) -> std::ops::Range<usize> {
        let m = &self.signed.manifest;
        let at = m.chunk_offset(c) as usize;
        at..at + m.chunk_len(c) as usize
    }

    /// Bytes covered by the chunks set in `bits`.
    fn bytes_of(&self, bits: &[bool]) -> u64 {
        (0..self.count()).filter(|&c| bits[c as usize]).map(|c| self.range(c).len() as u64).sum()
    }
}

/// Control bytes a seed sends one run beside its blocks (Hello, Bitfield, keepalives, a peer
/// list): a few hundred bytes, allowed 2 KiB.
const CONTROL_BYTES: u64 = 2048;

/// The most a kill may cost a run that the relay handed `delivered` bytes: the bytes delivered
/// that are not on disk as durable chunks afterwards (see the kill loop).
///
/// From src/core/release.rs and the agent's loop (src/agent/mod.rs `run_until`, `turn`): each
/// loop turn reads the sockets, then calls `Release::handle_timeout`, which commits whenever
/// `max_uncommitted` (8) verified chunks wait (or the 100 ms `commit_interval` has passed),
/// and only then sends what the swarm queued, new requests among them. So when requests go
/// out at most `max_uncommitted - 1` (7) verified chunks wait for a commit, and at most a
/// pipeline (`pipeline_bytes` / chunk size: 4 chunks) is requested and not yet verified; the
/// seed sends nothing unrequested, so until the next commit check the chunks delivered and
/// not durable are at most those 7 + 4 = 11, and a kill during the commit that follows loses
/// no more. On top, the framing of every block delivered and the control messages: the
/// figure counts frames, not chunk bytes.
fn refetch_bound(rel: &Release, delivered: u64) -> u64 {
    use flotilla::core::wire::{encode_frame, Bytes, Message, BLOCK_SIZE, MAX_FRAME};
    let config = flotilla::core::release::ReleaseConfig::default();
    // As `pipeline_len` in src/core/swarm/download.rs.
    let max_requests = flotilla::core::session::MAX_REQUESTS as u64;
    let pipeline = (config.swarm.pipeline_bytes as u64 / rel.chunk_size()).clamp(2, max_requests);
    let chunks = pipeline + config.max_uncommitted as u64 - 1;
    let block = vec![0u8; BLOCK_SIZE as usize];
    let mut frame = vec![0u8; MAX_FRAME];
    // The largest header: the last chunk's last block.
    let msg =
        Message::Block { chunk: rel.count() - 1, offset: rel.chunk_size() as u32 - BLOCK_SIZE, data: Bytes(&block) };
    let per_block = encode_frame(&msg, &mut frame).unwrap() as u64 - BLOCK_SIZE as u64;
    chunks * rel.chunk_size() + (delivered / BLOCK_SIZE as u64 + 1) * per_block + CONTROL_BYTES
}

/// Chunks of data a kill may cost beyond framing: `refetch_bound` without the framing.
fn refetch_bound_chunks(rel: &Release) -> u64 {
    (refetch_bound(rel, 0) - CONTROL_BYTES) / rel.chunk_size()
}

/// `fetch` arguments for `out`, listening on `listen` and fetching from `peer`.
fn fetch_args(rel: &Release, out: &Path, listen: SocketAddr, peer: SocketAddr) -> Vec<String> {
    let out = out.to_str().unwrap();
    ["fetch", rel.manifest_arg(), "--trust", &rel.key, "--out", out, "--listen", &listen.to_string()]
        .into_iter()
        .map(String::from)
        .chain(["--peer".into(), peer.to_string(), "--no-discovery".into()])
        .collect()
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

// Kept here: this reader returns the bitfield and checks it against the disk; e2e.rs and
// liars.rs only count chunks.
/// The chunks `FILE.state` marks present, or `None` if there is no state file. A state file
/// that is present but not valid fails the test: it is replaced by rename, so even a SIGKILL
/// mid-write must leave the old one whole. The format (docs/PROTOCOL.md): b"FLOTST01" ‖ swarm
/// id (32) ‖ chunk count u32 LE ‖ bitfield (MSB first) ‖ crc32 LE.
fn state_bits(out: &Path, rel: &Release, when: &str) -> Option<Vec<bool>> {
    let bytes = match fs::read(side(out, ".state")) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return None,
        Err(e) => panic!("{when}: cannot read the state file: {e}"),
    };
    let count = rel.count();
    let nbytes = (count as usize).div_ceil(8);
    assert_eq!(bytes.len(), 8 + 32 + 4 + nbytes + 4, "{when}: state file length");
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    assert_eq!(crc32fast::hash(body).to_le_bytes(), crc, "{when}: state file crc");
    assert_eq!(&body[..8], b"FLOTST01", "{when}: state magic");
    assert_eq!(body[8..40], rel.signed.swarm_id, "{when}: state swarm id");
    assert_eq!(body[40..44], count.to_le_bytes(), "{when}: state chunk count");
    let bits = &body[44..];
    Some((0..count as usize).map(|c| bits[c / 8] & (0x80 >> (c % 8)) != 0).collect())
}

/// Checks the files beside `out` after the fetch died (or failed) and returns the durable
/// chunks: all of them if `FILE` is in place, else those `FILE.state` claims. Fails the test if
/// `FILE` exists and is not exactly the release, or if the state claims a chunk whose bytes in
/// `FILE.part` are wrong (compared with the original bytes: equal to checking the chunk hashes
/// of the manifest, and much faster than SHA-256 in a debug build).
fn check_disk(out: &Path, rel: &Release, when: &str) -> Vec<bool> {
    let count = rel.count() as usize;
    match fs::read(out) {
        Ok(got) => {
            assert!(got == rel.bytes, "{when}: {} exists but is not the release ({} bytes)", out.display(), got.len());
            // A state left beside a whole FILE is stale and harmless; it must still be valid.
            let _ = state_bits(out, rel, when);
            return vec![true; count];
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => panic!("{when}: cannot read {}: {e}", out.display()),
    }
    let Some(claimed) = state_bits(out, rel, when) else { return vec![false; count] };
    if !claimed.contains(&true) {
        return claimed;
    }
    let part = fs::read(side(out, ".part"))
        .unwrap_or_else(|e| panic!("{when}: the state claims chunks but FILE.part cannot be read: {e}"));
    assert_eq!(part.len(), rel.bytes.len(), "{when}: FILE.part has the wrong size");
    for c in 0..rel.count() {
        if claimed[c as usize] {
            let r = rel.range(c);
            assert!(
                part[r.clone()] == rel.bytes[r],
                "{when}: the state claims chunk {c}, whose bytes in FILE.part are wrong"
            );
        }
    }
    claimed
}

/// Asserts that `out` holds exactly the release, that `verify` agrees, and that no side file
/// is left behind (the shared check, plus temporary states, which only the kill loop can leave).
fn assert_release(dir: &Path, out: &Path, rel: &Release) {
    common::assert_release(dir, out, rel);
    assert!(tmp_state(out).is_none(), "{:?} left behind", tmp_state(out));
}

/// The temporary state file (`FILE.state.tmp.RANDOM`) in `out`'s directory, if there is one.
fn tmp_state(out: &Path) -> Option<PathBuf> {
    let prefix = format!("{}.state.tmp.", out.file_name()?.to_str()?);
    let entries = fs::read_dir(out.parent()?).ok()?;
    entries
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix)))
}

/// The "X MiB received" figure of fetch's completion line, in bytes.
fn received_bytes(log: &str) -> f64 {
    let line = log.lines().find(|l| l.contains(" MiB received")).unwrap_or_else(|| panic!("no summary in:\n{log}"));
    let before = &line[..line.find(" MiB received").unwrap()];
    let mib: f64 =
        before.rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("cannot read the figure in {line:?}"));
    mib * MIB as f64
}

/// Asserts that a resumed fetch received no more than was missing at its start plus 8 chunks in
/// flight (the figure is printed to 0.1 MiB, hence the rounding allowance).
fn assert_resumed_cheaply(log: &str, rel: &Release, durable: &[bool], what: &str) -> f64 {
    let missing = (rel.bytes.len() as u64 - rel.bytes_of(durable)) as f64;
    let received = received_bytes(log);
    let slack = 8.0 * rel.chunk_size() as f64 + 0.05 * MIB as f64;
    assert!(
        received <= missing + slack,
        "{what}: received {received} bytes; only {missing} were missing (+{slack} in flight):\n{log}"
    );
    received
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

// ---------------------------------------------------------------------------------------------
// A counting relay and a directory watch, for the kill loop
// ---------------------------------------------------------------------------------------------

/// A TCP relay between the fetcher and the seed that counts the bytes it hands to the fetcher:
/// how much the network carried to each run of the fetch, killed or not.
struct Proxy {
    addr: SocketAddr,
    /// Bytes written into the fetcher's sockets (everything the seed sent it).
    delivered: Arc<AtomicU64>,
    /// Connections accepted from the fetcher.
    accepted: Arc<AtomicUsize>,
    /// Connections not yet closed on both sides.
    active: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(x: u8, upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind((ip(x), 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let delivered = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (delivered, accepted, active, stop) =
                (delivered.clone(), accepted.clone(), active.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let down = match listener.accept() {
                        Ok((s, _)) => s,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(1));
                            continue;
                        }
                        Err(e) => panic!("proxy cannot accept: {e}"),
                    };
                    down.set_nonblocking(false).unwrap();
                    let Ok(up) = TcpStream::connect(upstream) else { continue };
                    let _ = (down.set_nodelay(true), up.set_nodelay(true));
                    active.fetch_add(1, Ordering::SeqCst);
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let (delivered, active) = (delivered.clone(), active.clone());
                    std::thread::spawn(move || {
                        let (down2, up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                        let to_fetcher = std::thread::spawn(move || {
                            pipe(up2, down2, Some(&delivered));
                        });
                        pipe(down, up, None);
                        let _ = to_fetcher.join();
                        active.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            })
        };
        Proxy { addr, delivered, accepted, active, stop, thread: Some(thread) }
    }

    fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::SeqCst)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits until every relayed connection is closed, so `delivered` is final for a dead run.
    fn wait_idle(&self) {
        wait_until("the proxy's connections to close", || self.active.load(Ordering::SeqCst) == 0);
    }
}

/// Copies `from` to `to` until either side ends, then closes both directions of both.
fn pipe(mut from: TcpStream, mut to: TcpStream, count: Option<&AtomicU64>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if let Some(c) = count {
            c.fetch_add(n as u64, Ordering::SeqCst);
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An inotify watch on a directory: lets the test kill the fetch within microseconds of a
/// state file being opened or renamed into place, or of `FILE` appearing.
struct DirWatch(libc::c_int);

impl DirWatch {
    fn new(dir: &Path) -> DirWatch {
        let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: plain syscalls on a descriptor this struct owns; `c` outlives the call.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            assert!(fd >= 0, "inotify_init1: {}", std::io::Error::last_os_error());
            let wd = libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN | libc::IN_MOVED_TO | libc::IN_CREATE);
            assert!(wd >= 0, "inotify_add_watch: {}", std::io::Error::last_os_error());
            DirWatch(fd)
        }
    }

    /// The events (mask, name) that arrive within `timeout`; empty if none did.
    fn next(&self, timeout: Duration) -> Vec<(u32, String)> {
        let mut pfd = libc::pollfd { fd: self.0, events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(60_000) as libc::c_int;
        // SAFETY: one pollfd, valid for the call.
        if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
            return Vec::new();
        }
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return Vec::new();
        }
        let (n, mut at, mut out) = (n as usize, 0, Vec::new());
        // struct inotify_event { int wd; u32 mask; u32 cookie; u32 len; char name[len]; }
        while at + 16 <= n {
            let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap());
            let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
            let name = buf[at + 16..at + 16 + len].split(|&b| b == 0).next().unwrap_or(&[]);
            out.push((mask, String::from_utf8_lossy(name).into_owned()));
            at += 16 + len;
        }
        out
    }

    fn drain(&self) {
        while !self.next(Duration::ZERO).is_empty() {}
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The kill loop
// ---------------------------------------------------------------------------------------------

/// When, in one run of the fetch, the test kills it.
#[derive(Clone, Copy, Debug)]
enum Plan {
    /// This long after the process started: lands while it re-verifies its `.part` (re-hashing
    /// every chunk the state claims), binds and dials.
    Startup(Duration),
    /// This long after the fetch connected (through the proxy): lands during the transfer.
    Transfer(Duration),
    /// As soon as the fetch opens a temporary state file: lands during a state write.
    StateWrite,
    /// As soon as a new `FILE.state` is renamed into place: lands during the directory sync
    /// after a commit, or just after it.
    StateRenamed,
    /// As soon as the state claims every chunk, or `FILE` appears: lands around the final
    /// sync and rename (between the last state write and the rename, or between the rename
    /// and the state's removal).
    Final,
    /// Not killed: left to finish.
    Finish,
}

/// One kill and what it cost.
struct Kill {
    run: usize,
    plan: Plan,
    /// When the kill was sent, after the process started.
    at: Duration,
    /// Durable chunks before this run and after the kill.
    before: usize,
    after: usize,
    /// Bytes the proxy handed this run.
    delivered: u64,
    /// `delivered` minus the bytes of the chunks this run made durable.
    refetch: i64,
    /// What the files showed after the kill.
    landed: &'static str,
}

/// Polls until `until` holds (returns None) or process `i` exits (returns its status), napping
/// `nap` between looks; fails the test after `PATIENCE`.
fn poll_until(procs: &mut Procs, i: usize, nap: Duration, mut until: impl FnMut() -> bool) -> Option<ExitStatus> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if until() {
            return None;
        }
        if let Some(st) = procs.try_wait(i) {
            return Some(st);
        }
        assert!(Instant::now() < deadline, "a run neither reached its kill point nor exited:\n{}", procs.stderr(i));
        std::thread::sleep(nap);
    }
}

/// True if the state file beside `out` marks every chunk (a cheap look, no validation).
fn state_is_full(out: &Path, rel: &Release) -> bool {
    let count = rel.count() as usize;
    fs::read(side(out, ".state")).is_ok_and(|b| {
        b.len() == 44 + count.div_ceil(8) + 4 && (0..count).all(|c| b[44 + c / 8] & (0x80 >> (c % 8)) != 0)
    })
}

/// Between looks at a process that is to be killed after a delay.
const NAP: Duration = Duration::from_micros(500);

/// Identifies the current temporary state file (inode, mtime), if there is one.
fn tmp_stamp(out: &Path) -> Option<(u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(tmp_state(out)?).ok()?;
    Some((m.ino(), m.modified().ok()?))
}

/// What the kill loop watches: the relay, the output directory, the output and its release.
struct Target<'a> {
    proxy: &'a Proxy,
    watch: &'a DirWatch,
    out: &'a Path,
    rel: &'a Release,
}

/// Runs `plan` against fetch process `i`: kills it (returns None), or returns its exit status
/// if it exited first. `conns_before` is the proxy's accept count before the run started.
fn execute(procs: &mut Procs, i: usize, plan: Plan, t: &Target, conns_before: usize) -> Option<ExitStatus> {
    let Target { proxy, watch, out, rel } = *t;
    let started = Instant::now();
    let name = out.file_name().unwrap().to_str().unwrap().to_owned();
    let (state_name, tmp_prefix) = (format!("{name}.state"), format!("{name}.state.tmp."));
    let connected = |procs: &mut Procs| poll_until(procs, i, NAP, || proxy.accepted() > conns_before);
    let exited = match plan {
        Plan::Finish => Some(procs.wait(i)),
        Plan::Startup(d) => poll_until(procs, i, NAP, || started.elapsed() >= d),
        Plan::Transfer(d) => connected(procs).or_else(|| {
            let at = Instant::now() + d;
            poll_until(procs, i, NAP, || Instant::now() >= at)
        }),
        Plan::StateWrite | Plan::StateRenamed => connected(procs).or_else(|| {
            // A kill point that never comes turns into a plain kill after 5 s.
            let fallback = Instant::now() + Duration::from_secs(5);
            // No nap: the watch itself waits (1 ms at most), and the kill follows the event at once.
            poll_until(procs, i, Duration::ZERO, || {
                let hit = watch.next(Duration::from_millis(1)).into_iter().any(|(mask, n)| match plan {
                    Plan::StateWrite => mask & libc::IN_OPEN != 0 && n.starts_with(&tmp_prefix),
                    _ => mask & libc::IN_MOVED_TO != 0 && n == state_name,
                });
                hit || Instant::now() >= fallback
            })
        }),
        Plan::Final => poll_until(procs, i, Duration::ZERO, || {
            watch.next(Duration::from_millis(1)).into_iter().any(|(mask, n)| {
                mask & libc::IN_MOVED_TO != 0 && (n == name || (n == state_name && state_is_full(out, rel)))
            })
        }),
    };
    if exited.is_none() {
        procs.kill(i);
    }
    exited
}

/// A fetch SIGKILLed at 30+ moments (start-up, transfer, state writes, the final rename) and
/// restarted each time with the same command until it exits 0. After every kill the files must
/// tell the truth (see the module comment), and the data lost to each kill is measured.
///
/// The re-fetch figure. A relay between fetch and seed counts the bytes handed to each run;
/// the state file after each kill tells which chunks that run made durable. For run k,
/// `refetch_k = delivered_k - bytes(durable after kill k) + bytes(durable before run k)`: the bytes
/// the network carried to run k that are not on disk as durable chunks and must be fetched
/// again — chunks in flight (requested, partly received, or unread in the socket buffer) and
/// chunks received and verified but not yet committed (the agent commits in batches: after 8
/// verified chunks, or every 100 ms). Frame headers and control messages (~0.1%) count as waste
/// too, so the figure is an upper bound. It is exact per run, needs no cooperation from the
/// agent, and over the whole test it sums to (everything delivered - the file size). Every
/// kill's figure must stay within `refetch_bound`: 11 chunks (4 in flight plus 7 awaiting a
/// commit) plus framing. Uses 127.0.0.200-202.
#[test]
fn kill_loop_never_corrupts_and_refetches_little() {
    let t0 = Instant::now();
    let tmp = TempDir::new("killloop");
    let dir = tmp.path();
    let rel = make_release(dir, 24 * MIB as usize, "64K", 0xC8A5);
    let count = rel.count() as usize;
    let chunk = rel.chunk_size() as f64;
    let mut procs = Procs::default();
    let seed = free_addr(200);
    // 8 MiB/s: the 24 MiB release takes about 3 s of transfer, cut into many short runs.
    start_seed(&mut procs, dir, &rel, seed, "8M", &["--no-discovery"]);
    let proxy = Proxy::start(201, seed);
    let out_dir = tmp.sub("fetcher");
    let out = out_dir.join("fw.img");
    let args = fetch_args(&rel, &out, free_addr(202), proxy.addr);
    let args = as_strs(&args);
    let watch = DirWatch::new(&out_dir);
    let target = Target { proxy: &proxy, watch: &watch, out: &out, rel: &rel };

    let mut rng = flotilla::core::rng::Rng::new(0x005e_ed0f_c4a5);
    let mut durable = vec![false; count];
    let mut kills: Vec<Kill> = Vec::new();
    let mut run = 0usize;
    // Final-phase kills made so far; after a few the fetch is allowed to finish.
    let mut final_kills = 0;
    let final_log = loop {
        let have = durable.iter().filter(|&&b| b).count();
        let file_in_place = out.exists();
        // Until 80% is durable (or 40 runs): mixed kills. Then one at the final state write or rename, then
        // a few in start-up (which re-verifies a full .part and renames it, or re-verifies FILE
        // and removes a stale state), then a run left to finish.
        let stale_state = file_in_place && side(&out, ".state").exists();
        let (plan, final_phase) = if (file_in_place && !stale_state) || final_kills >= 4 || run >= 150 {
            (Plan::Finish, true)
        } else if final_kills == 0 && have * 5 < count * 4 && run < 40 {
            // Progress towards 80% ahead of a schedule of 34 kills: keep this run short.
            let ahead = have as f64 / (0.8 * count as f64) > (run + 1) as f64 / 34.0;
            let u = rng.unit();
            let plan = match run % 8 {
                2 => Plan::StateWrite,
                5 => Plan::StateRenamed,
                7 => Plan::Startup(Duration::from_millis(5 + (u * 300.0) as u64)),
                _ if ahead => Plan::Transfer(Duration::from_millis(20 + (u * 60.0) as u64)),
                // Skewed towards short runs, so there are many kills before the end.
                _ => Plan::Transfer(Duration::from_millis(20 + (u * u * 380.0) as u64)),
            };
            (plan, false)
        } else if final_kills == 0 && !file_in_place {
            (Plan::Final, true)
        } else {
            (Plan::Startup(Duration::from_millis(10 + (rng.unit() * 400.0) as u64)), true)
        };
        watch.drain();
        let tmp_before = tmp_stamp(&out);
        let (conns_before, delivered_before) = (proxy.accepted(), proxy.delivered());
        let i = procs.spawn(dir, &format!("run{run}"), &args);
        let spawned = Instant::now();
        let exited = execute(&mut procs, i, plan, &target, conns_before);
        let at = spawned.elapsed();
        proxy.wait_idle();
        let delivered = proxy.delivered() - delivered_before;
        if let Some(status) = exited {
            assert!(status.success(), "run {run} failed ({status}):\n{}", procs.stderr(i));
            break (procs.stderr(i), delivered, run);
        }
        let when = format!("after kill {} (run {run}, {plan:?}, {at:?} after start)", kills.len() + 1);
        // A temporary state this run created or rewrote and did not rename: killed mid-write.
        let tmp_left = tmp_stamp(&out).is_some_and(|t| Some(t) != tmp_before);
        let now_durable = check_disk(&out, &rel, &when);
        for c in 0..count {
            assert!(!durable[c] || now_durable[c], "{when}: chunk {c} was durable before the kill and is not now");
        }
        let (before, after) = (rel.bytes_of(&durable), rel.bytes_of(&now_durable));
        let n_after = now_durable.iter().filter(|&&b| b).count();
        let landed = if out.exists() {
            if side(&out, ".state").exists() {
                "after the final rename, before the state's removal"
            } else {
                "after the final rename"
            }
        } else if n_after == count {
            "with a full state, before the final rename"
        } else if tmp_left {
            "during a state write"
        } else if proxy.accepted() == conns_before {
            "before connecting"
        } else {
            "during the transfer"
        };
        if final_phase {
            final_kills += 1;
        }
        kills.push(Kill {
            run,
            plan,
            at,
            before: have,
            after: n_after,
            delivered,
            refetch: delivered as i64 - (after - before) as i64,
            landed,
        });
        durable = now_durable;
        run += 1;
    };

    // The run that finished: right bytes, nothing left behind, and it fetched only what was missing.
    let (log, final_delivered, final_run) = final_log;
    assert_release(dir, &out, &rel);
    let received = assert_resumed_cheaply(&log, &rel, &durable, "the final run");
    // Everything it received came through the proxy (it had no other way to the seed).
    assert!(
        final_delivered as f64 >= received - 0.05 * MIB as f64,
        "the final run bypassed the proxy: {final_delivered} < {received}"
    );

    let total_delivered = proxy.delivered();
    eprintln!(
        "kill loop: {} kills over {} runs, 0 corrupt FILE, 0 states claiming bad data, durable set never shrank",
        kills.len(),
        final_run + 1
    );
    let mut by_landing: Vec<(&str, usize)> = Vec::new();
    for k in &kills {
        match by_landing.iter_mut().find(|(l, _)| *l == k.landed) {
            Some((_, n)) => *n += 1,
            None => by_landing.push((k.landed, 1)),
        }
    }
    for (l, n) in &by_landing {
        eprintln!("  {n:>3} kills landed {l}");
    }
    for k in &kills {
        eprintln!(
            "  run {:>2} {:<28} killed at {:>4} ms: durable {:>3} -> {:>3} chunks, delivered {:>8} B, re-fetch {:>5.1} chunks ({})",
            k.run,
            format!("{:?}", k.plan).chars().take(28).collect::<String>(),
            k.at.as_millis(),
            k.before,
            k.after,
            k.delivered,
            k.refetch as f64 / chunk,
            k.landed
        );
    }
    // Kills in start-up receive nothing and lose nothing; the figure that matters is for kills
    // of runs that were receiving.
    let mut moving: Vec<f64> = kills.iter().filter(|k| k.delivered > 0).map(|k| k.refetch as f64 / chunk).collect();
    let mut all: Vec<f64> = kills.iter().map(|k| k.refetch as f64 / chunk).collect();
    let (med, p90, max) = (median(&mut moving), percentile(&mut moving, 0.9), percentile(&mut moving, 1.0));
    let waste = total_delivered as f64 - rel.bytes.len() as f64;
    eprintln!(
        "kill loop: re-fetch per kill (chunks of 64 KiB): median {med:.1}, p90 {p90:.1}, max {max:.1} over {} kills of receiving runs; median {:.1} over all {} kills",
        moving.len(),
        median(&mut all),
        kills.len()
    );
    eprintln!(
        "kill loop: {:.1} MiB delivered in all for a {:.1} MiB release ({:.1} MiB, {:.0} chunks, re-fetched in all); final run received {:.1} MiB of {:.1} MiB missing; {:.1} s",
        total_delivered as f64 / MIB as f64,
        rel.bytes.len() as f64 / MIB as f64,
        waste / MIB as f64,
        waste / chunk,
        received / MIB as f64,
        (rel.bytes.len() as u64 - rel.bytes_of(&durable)) as f64 / MIB as f64,
        t0.elapsed().as_secs_f64()
    );

    assert!(kills.len() >= 30, "only {} kills", kills.len());
    // What a kill may cost under the current design (`refetch_bound`): the requests in flight
    // (a 256 KiB pipeline: 4 chunks) plus the verified chunks awaiting a commit (at most 7 when
    // requests go out: a commit is forced at the 8th), plus framing. The issue asks for
    // "within the chunks in flight"; the batching adds up to 7.
    let bound_chunks = refetch_bound_chunks(&rel);
    assert_eq!(
        bound_chunks, 11,
        "the bound's parts changed (pipeline, max_uncommitted): re-derive it and update the docs"
    );
    for k in &kills {
        let bound = refetch_bound(&rel, k.delivered);
        assert!(
            k.refetch <= bound as i64,
            "run {} ({:?}, {:?} after start) cost {} bytes ({:.1} chunks) of re-fetch, over the bound of {bound} bytes ({bound_chunks} chunks plus framing)",
            k.run,
            k.plan,
            k.at,
            k.refetch,
            k.refetch as f64 / chunk
        );
    }
    eprintln!(
        "kill loop: re-fetch bound per kill {bound_chunks} chunks plus framing (asserted for every kill); max {max:.1}"
    );
    for want in ["during the transfer", "during a state write"] {
        assert!(kills.iter().any(|k| k.landed == want), "no kill landed {want}");
    }
    assert!(final_kills >= 1, "no kill landed around the final rename");
}

// ---------------------------------------------------------------------------------------------
// 2 and 3. Disk trouble
// ---------------------------------------------------------------------------------------------

/// A tmpfs mounted for one test; lazily unmounted on drop, failure or not. Declare it after the
/// `TempDir` holding its mount point, so it is dropped first.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, opts: &str) -> Mount {
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(at)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount(8) (this test needs root and util-linux): {e}"));
        assert!(
            o.status.success(),
            "cannot mount a tmpfs ({opts}) at {} (this test needs root): {}",
            at.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
        Mount(at.to_path_buf())
    }

    fn remount(&self, opts: &str) {
        let o = Command::new("mount").args(["-o", &format!("remount,{opts}")]).arg(&self.0).output().unwrap();
        assert!(
            o.status.success(),
            "cannot remount {} {opts}: {}",
            self.0.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The lines of a failed command's stderr that are not progress or other info.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| !l.starts_with("flotilla: info ") && !l.starts_with("flotilla: debug ")).collect()
}

/// Runs the fetch in `args` to its end and returns (exit code, stderr).
fn run_fetch(procs: &mut Procs, dir: &Path, name: &str, args: &[&str]) -> (i32, String) {
    let i = procs.spawn(dir, name, args);
    let status = procs.wait(i);
    let code = status.code().unwrap_or_else(|| panic!("{name} died by a signal: {status}"));
    (code, procs.stderr(i))
}

/// A 16 MiB fetch into a 6 MiB tmpfs fails with exit 1 and one line naming ENOSPC, leaves no
/// FILE and a state claiming only good chunks; once the tmpfs is grown, the same command
/// completes and fetches only what was not durable. Uses 127.0.0.205-206.
#[test]
fn disk_full_is_a_clear_error_and_resumes_after_space_is_freed() {
    let t0 = Instant::now();
    let tmp = TempDir::new("diskfull");
    let dir = tmp.path();
    let rel = make_release(dir, 16 * MIB as usize - 4321, "64K", 0xD15C);
    let small = tmp.sub("small");
    let mount = Mount::tmpfs(&small, "size=6m");
    let mut procs = Procs::default();
    let seed = free_addr(205);
    // Rate-limited so that the agent commits several batches before the disk fills.
    start_seed(&mut procs, dir, &rel, seed, "8M", &["--no-discovery"]);
    let out = small.join("fw.img");
    let args = fetch_args(&rel, &out, free_addr(206), seed);
    let args = as_strs(&args);

    let (code, stderr) = run_fetch(&mut procs, dir, "full", &args);
    assert_eq!(code, 1, "a fetch onto a full disk exits 1:\n{stderr}");
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "a full disk is reported in exactly one line:\n{stderr}");
    assert!(errors[0].contains("No space left on device"), "the error does not name ENOSPC: {:?}", errors[0]);
    assert!(errors[0].contains(small.to_str().unwrap()), "the error does not name the file: {:?}", errors[0]);
    assert!(!out.exists(), "FILE appeared on a full disk");
    let durable = check_disk(&out, &rel, "after ENOSPC");
    let kept = durable.iter().filter(|&&b| b).count();
    let listing: Vec<String> =
        fs::read_dir(&small).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    eprintln!("disk full: {:?}; {kept} of {} chunks durable; left: {listing:?}", errors[0], rel.count());
    // At 8 MiB/s the 6 MiB fill takes ~0.7 s and commits run every 100 ms, so some chunks are
    // durable; without them the resume check below would test nothing.
    assert!(kept > 0, "no chunk was made durable before the disk filled:\n{stderr}");

    // Space freed: the same command completes, from where it was.
    mount.remount("size=64m");
    let (code, log) = run_fetch(&mut procs, dir, "resumed", &args);
    assert_eq!(code, 0, "the fetch does not resume once space is freed:\n{log}");
    assert_release(dir, &out, &rel);
    let received = assert_resumed_cheaply(&log, &rel, &durable, "after space was freed");
    assert!(received < rel.bytes.len() as f64, "the resumed fetch started from zero");
    eprintln!(
        "disk full: resumed and received {:.1} MiB of {:.1} MiB missing ({kept} chunks kept); {:.1} s",
        received / MIB as f64,
        (rel.bytes.len() as u64 - rel.bytes_of(&durable)) as f64 / MIB as f64,
        t0.elapsed().as_secs_f64()
    );
}

/// `--out` in a read-only directory: exit 1 (a runtime failure — the command is right, the
/// file system is not; retrying later is sensible), one line, nothing created. A partial fetch
/// whose directory turns read-only fails the same way and loses nothing. Once writable, the
/// fetch completes. Uses 127.0.0.210-211.
#[test]
fn read_only_directory_is_a_clear_error() {
    let t0 = Instant::now();
    let tmp = TempDir::new("readonly");
    let dir = tmp.path();
    let rel = make_release(dir, 8 * MIB as usize + 99, "64K", 0x0E0);
    let ro = tmp.sub("ro");
    let mount = Mount::tmpfs(&ro, "size=64m");
    let mut procs = Procs::default();
    let seed = free_addr(210);
    start_seed(&mut procs, dir, &rel, seed, "4M", &["--no-discovery"]);
    let out = ro.join("fw.img");
    let args = fetch_args(&rel, &out, free_addr(211), seed);
    let args = as_strs(&args);

    let check_refused = |code: i32, stderr: &str, what: &str| {
        assert_eq!(code, 1, "{what}: a read-only directory is a runtime failure (exit 1):\n{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{what}: not one line on stderr:\n{stderr}");
        assert!(stderr.contains("Read-only file system"), "{what}: the error does not say why: {stderr}");
        assert!(stderr.contains(ro.to_str().unwrap()), "{what}: the error does not name the path: {stderr}");
    };

    // 1. An empty read-only directory.
    mount.remount("ro");
    let (code, stderr) = run_fetch(&mut procs, dir, "ro-empty", &args);
    check_refused(code, &stderr, "empty");
    assert_eq!(fs::read_dir(&ro).unwrap().count(), 0, "a fetch into a read-only directory created files");
    eprintln!("read-only: {}", stderr.trim());

    // 2. A partial fetch (killed once some chunks are durable) whose directory turns read-only.
    mount.remount("rw");
    let first = procs.spawn(dir, "partial", &args);
    wait_until("the first fetch to commit some chunks", || {
        assert!(procs.running(first), "the first fetch exited:\n{}", procs.stderr(first));
        fs::read(side(&out, ".state")).is_ok()
    });
    procs.kill(first);
    let durable = check_disk(&out, &rel, "after the kill");
    let before: Vec<(String, Vec<u8>)> = ["", ".part", ".state"]
        .iter()
        .filter_map(|s| fs::read(side(&out, s)).ok().map(|b| (s.to_string(), b)))
        .collect();
    mount.remount("ro");
    let (code, stderr) = run_fetch(&mut procs, dir, "ro-partial", &args);
    check_refused(code, &stderr, "partial");
    let after: Vec<(String, Vec<u8>)> = ["", ".part", ".state"]
        .iter()
        .filter_map(|s| fs::read(side(&out, s)).ok().map(|b| (s.to_string(), b)))
        .collect();
    assert!(before == after, "the refused fetch changed the files");

    // 3. Writable again: the fetch completes from where it was.
    mount.remount("rw");
    let (code, log) = run_fetch(&mut procs, dir, "rw", &args);
    assert_eq!(code, 0, "the fetch does not complete once the directory is writable:\n{log}");
    assert_release(dir, &out, &rel);
    let received = assert_resumed_cheaply(&log, &rel, &durable, "after remounting rw");
    eprintln!(
        "read-only: partial fetch kept {} chunks; resumed and received {:.1} MiB; {:.1} s",
        durable.iter().filter(|&&b| b).count(),
        received / MIB as f64,
        t0.elapsed().as_secs_f64()
    );
}
