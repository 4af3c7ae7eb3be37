//! Liars: fake peers that each break the wire protocol in one way, beside an honest seed.
//!
//! One `flotilla serve` seeds a release at a capped rate (so a fetch takes a few seconds); for
//! each scenario a fresh `flotilla fetch --peer LIAR --peer SEED` runs while an in-test fake
//! peer, speaking the protocol through `flotilla::core::wire`, lies to it. Every scenario checks that
//! the fetch completes with the right bytes, that the fetcher itself closed the liar's
//! connection (the fake's read sees EOF or a reset while the fetch still runs), and, where the
//! lie is an offence, that the liar is not dialled again (connections counted on the fake's
//! listener). It also checks what the lie cost, in chunks and bytes rather than time: the chunks
//! that failed verification (the fetcher's log names each one; a liar serving wrong data is
//! banned at its second, `BAD_CHUNKS_TO_BAN`) and the bytes the fetcher discarded (the
//! "MiB discarded" of its completion line), which must round to no more than the lie's own
//! bytes (`Liar::waste_bound`). The fetch time of each is compared with fetches from the seed
//! alone in the same run and printed as a table (`cargo test --release --test liars --
//! --nocapture`), never asserted: timing belongs in benchmarks.
//!
//! The scenarios run one after the other in one test, so they do not share the seed's upload
//! cap and the times compare. Uses 127.0.0.230-241.
//! A long version of (f), ignored by default, measures when the stall rule drops the mute peer. Nothing waits a fixed time and then
//! asserts, except the redial window, which is a lower bound on the fetch's own backoff.

use flotilla::core::wire::{self, Bytes, Message, BLOCK_SIZE, MAX_FRAME, VERSION};
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod common;
use common::*;

const MIB: usize = 1024 * 1024;
/// The release: 80 chunks of 64 KiB (4 requests in flight per peer), about 5 s at `RATE`.
const RELEASE_SIZE: usize = 5 * MIB - 3_333;
const CHUNK_SIZE: &str = "64K";
/// The seed's upload cap.
const RATE: &str = "1M";
const SEED_IP: u8 = 230;
const FETCH_IP: u8 = 231;
/// A redial of an address that is not banned comes within about a second (500 ms backoff, a
/// wakeup at least every second); a liar closed at least this long before the fetch ended and
/// never dialled again was not redialled because it is banned.
const REDIAL_WINDOW: Duration = Duration::from_millis(1500);
/// How long the Have flood lasts before its out-of-range Have.
const FLOOD_TIME: Duration = Duration::from_millis(1500);
/// The mute peer gives up waiting for the fetcher to close after this (the stall rule takes
/// two 30 s request timeouts).
const MUTE_LIMIT: Duration = Duration::from_secs(120);
/// The fake peers' node number in their Hellos.
const LIAR_NODE: u64 = 0x11a2_5eed_0bad_f00d;
/// Chunks from one peer that fail verification before it is banned (src/core/swarm/download.rs:
/// the first is fetched elsewhere, the second closes the connection as an offence).
const BAD_CHUNKS_TO_BAN: usize = 2;
/// The release's chunk size in bytes (`CHUNK_SIZE`).
const CHUNK_BYTES: u64 = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Helpers of this file (the shared ones are in tests/common/mod.rs)
// ---------------------------------------------------------------------------------------------

/// What the fake peers need of the release, beyond the shared helpers.
impl Release {
    fn chunks(&self) -> u32 {
        self.signed.manifest.chunk_count()
    }

    /// The true bytes of `chunk`.
    fn chunk(&self, chunk: u32) -> &[u8] {
        let m = &self.signed.manifest;
        let start = m.chunk_offset(chunk) as usize;
        &self.bytes[start..start + m.chunk_len(chunk) as usize]
    }
}

// Kept here: this reader is lenient (None for a torn or foreign file) where e2e.rs asserts.
/// Chunks marked durable in `FILE.state` (docs/PROTOCOL.md §12), if it is there and reads right.
fn state_chunks(out: &Path) -> Option<u32> {
    let bytes = fs::read(side(out, ".state")).ok()?;
    if bytes.len() < 48 || &bytes[..8] != b"FLOTST01" {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    (crc32fast::hash(body).to_le_bytes() == crc).then(|| body[44..].iter().map(|b| b.count_ones()).sum())
}

/// `out` holds exactly the release, with no side file left.
fn check_release(out: &Path, rel: &Release) -> Result<(), String> {
    let got = fs::read(out).map_err(|e| format!("cannot read {}: {e}", out.display()))?;
    if got != rel.bytes {
        return Err(format!("{} differs from the published file", out.display()));
    }
    for s in [".part", ".state"] {
        if side(out, s).exists() {
            return Err(format!("{}{s} left behind", out.display()));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The fake peer's side of the wire
// ---------------------------------------------------------------------------------------------

/// What the fake peer needs to know of a message from the fetcher.
enum Got {
    /// The raw payload is kept: the fake answers with a Hello of the same layout.
    Hello {
        version: u16,
        swarm: [u8; 32],
        payload: Vec<u8>,
    },
    Request(u32),
    Other,
}

enum RecvError {
    /// EOF or a reset: the fetcher closed the connection.
    Closed,
    /// Nothing within the read timeout.
    TimedOut,
    /// The fetcher sent something that is not a frame or message.
    Bad(String),
}

/// One connection, read frame by frame.
struct Link {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Link {
    fn new(stream: TcpStream) -> Link {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_write_timeout(Some(PATIENCE)).unwrap();
        Link { stream, buf: Vec::new() }
    }

    fn recv(&mut self) -> Result<Got, RecvError> {
        let mut tmp = [0u8; 16384];
        loop {
            let frame = wire::parse_frame(&self.buf).map_err(|e| RecvError::Bad(format!("bad frame: {e}")))?;
            if let Some((payload, used)) = frame {
                let got = match wire::decode_message(payload)
                    .map_err(|e| RecvError::Bad(format!("bad message: {e}")))?
                {
                    Message::Hello { version, swarm, .. } => Got::Hello { version, swarm, payload: payload.to_vec() },
                    Message::Request(c) => Got::Request(c),
                    _ => Got::Other,
                };
                self.buf.drain(..used);
                return Ok(got);
            }
            match self.stream.read(&mut tmp) {
                Ok(0) => return Err(RecvError::Closed),
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(RecvError::TimedOut)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Err(RecvError::Closed),
            }
        }
    }

    fn send(&mut self, msg: &Message) -> std::io::Result<()> {
        self.stream.write_all(&frame(msg))
    }

    /// Reads (and ignores) whatever comes until the fetcher closes; when it did.
    fn wait_closed(&mut self) -> Result<Instant, String> {
        loop {
            match self.recv() {
                Ok(_) => {}
                Err(RecvError::Closed) => return Ok(Instant::now()),
                Err(RecvError::TimedOut) => {
                    return Err(format!("the fetcher kept the liar's connection open {PATIENCE:?}"))
                }
                Err(RecvError::Bad(e)) => return Err(format!("the fetcher sent a {e}")),
            }
        }
    }
}

fn frame(msg: &Message) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_FRAME];
    let n = wire::encode_frame(msg, &mut buf).expect("frame fits");
    buf.truncate(n);
    buf
}

fn read_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("overlong varint".into())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A Hello frame laid out like the fetcher's own (tag, version, swarm, listen port, node, and
/// whatever fields follow, copied as they are), with `version` and `swarm` as given, no listen
/// port and our node number. Copying the tail keeps this fake valid if Hello grows a field.
fn hello_like(theirs: &[u8], version: u16, swarm: [u8; 32]) -> Result<Vec<u8>, String> {
    let mut pos = 0;
    if read_varint(theirs, &mut pos)? != 0 {
        return Err("not a Hello".into());
    }
    read_varint(theirs, &mut pos)?;
    pos += 32;
    read_varint(theirs, &mut pos)?;
    read_varint(theirs, &mut pos)?;
    let tail = theirs.get(pos..).ok_or("truncated Hello")?;
    let mut f = vec![0u8; wire::HEADER_LEN];
    f.push(0);
    put_varint(&mut f, version.into());
    f.extend_from_slice(&swarm);
    put_varint(&mut f, 0);
    put_varint(&mut f, LIAR_NODE);
    f.extend_from_slice(tail);
    wire::seal_frame(&mut f);
    match wire::decode_message(&f[wire::HEADER_LEN..]) {
        Ok(Message::Hello { version: v, swarm: s, .. }) if v == version && s == swarm => Ok(f),
        other => Err(format!("the Hello built for the fetcher does not decode back: {other:?}")),
    }
}

/// Reads the fetcher's Hello (it dialled us) and checks it names the release.
fn expect_hello(link: &mut Link, rel: &Release) -> Result<Vec<u8>, String> {
    match link.recv() {
        Ok(Got::Hello { version, swarm, payload }) if version == VERSION && swarm == rel.signed.swarm_id => Ok(payload),
        Ok(Got::Hello { version, .. }) => Err(format!("the fetcher sent an odd Hello (version {version})")),
        Ok(_) => Err("the fetcher's first message is not a Hello".into()),
        Err(RecvError::Closed) => Err("the fetcher closed before its Hello".into()),
        Err(RecvError::TimedOut) => Err("no Hello from the fetcher".into()),
        Err(RecvError::Bad(e)) => Err(format!("the fetcher sent a {e}")),
    }
}

/// A correct handshake: our Hello, then a bitfield with every chunk (`full`) or none.
fn handshake(link: &mut Link, rel: &Release, full: bool) -> Result<(), String> {
    let theirs = expect_hello(link, rel)?;
    let n = rel.chunks() as usize;
    let mut bits = vec![0u8; n.div_ceil(8)];
    if full {
        bits.fill(0xff);
        *bits.last_mut().unwrap() = 0xff << (bits.len() * 8 - n);
    }
    let io = |e: std::io::Error| format!("write to the fetcher: {e}");
    link.stream.write_all(&hello_like(&theirs, VERSION, rel.signed.swarm_id)?).map_err(io)?;
    link.send(&Message::Bitfield(Bytes(&bits))).map_err(io)
}

// ---------------------------------------------------------------------------------------------
// The liars
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Liar {
    /// (a) Serves every requested chunk, in order and of the right sizes, one byte wrong per block.
    WrongHashes,
    /// (b) Answers the first request with a block of a chunk the fetcher did not request.
    UnrequestedBlock,
    /// (c1) Answers the first request with a block whose offset lies past the chunk's end.
    OffsetPastEnd,
    /// (c2) Serves the first requested chunk right, but its last block 16 bytes too long.
    BlockTooLong,
    /// (d) Answers the fetcher's Hello with a valid-looking Hello naming another swarm.
    OtherSwarm,
    /// (e) Empty bitfield, then Have for valid chunks as fast as the socket takes them (and
    /// Reject for every request), then a Have for a chunk out of range.
    HaveFlood,
    /// (f) Hello and a full bitfield, then never answers a request; a KeepAlive every 5 s.
    Mute,
    /// (g) Answers the fetcher's Hello with a Hello of protocol version 2.
    BadVersion,
}

impl Liar {
    /// The close reason the fetcher must log for an offence, or `None` if the liar breaks no
    /// rule the fetcher can see before the fetch completes.
    fn offence(self) -> Option<&'static str> {
        match self {
            Liar::WrongHashes => Some("sent chunks that failed verification twice"),
            Liar::UnrequestedBlock => Some("block for a chunk not requested"),
            Liar::OffsetPastEnd | Liar::BlockTooLong => Some("block out of order or of the wrong size"),
            Liar::OtherSwarm => Some("hello for another swarm"),
            Liar::HaveFlood => Some("have for a chunk out of range"),
            Liar::Mute => None,
            // Another protocol version is another release of Flotilla: dropped, never banned, so a
            // fleet mid-upgrade does not ban its upgraded members.
            Liar::BadVersion => None,
        }
    }

    /// Chunks that fail verification in the fetcher before this liar is gone.
    fn bad_chunks(self) -> usize {
        if self == Liar::WrongHashes {
            BAD_CHUNKS_TO_BAN
        } else {
            0
        }
    }

    /// Most bytes the fetcher may discard because of this liar: the chunks it hashed and threw
    /// away (wrong hashes), or the right blocks of the one chunk it was receiving when the lie
    /// came (block too long: the chunk's first three 16 KiB blocks); nothing for the others.
    fn waste_bound(self) -> u64 {
        match self {
            Liar::WrongHashes => BAD_CHUNKS_TO_BAN as u64 * CHUNK_BYTES,
            Liar::BlockTooLong => CHUNK_BYTES - BLOCK_SIZE as u64,
            _ => 0,
        }
    }
}

/// The fetcher's own count of bytes discarded (duplicates, cancelled or abandoned chunks, failed
/// hashes), from its completion line `NAME: ... (S s, R MiB received, U MiB sent, D MiB
/// discarded)`: D, printed to one decimal.
fn discarded_mib(log: &str) -> Option<f64> {
    log.lines().find_map(|l| l.strip_suffix(" MiB discarded)")?.rsplit(", ").next()?.parse().ok())
}

/// `bytes` in MiB as the fetcher prints it (one decimal, half away from zero).
fn printed_mib(bytes: u64) -> f64 {
    (bytes as f64 / MIB as f64 * 10.0).round() / 10.0
}

/// What the fake peer saw on the one connection it played out.
struct LiarReport {
    /// When its read found the connection closed.
    closed_at: Instant,
    /// Figures of the lie, for the table.
    note: String,
    /// Have flood only: when it started and ended, and how many Haves went out.
    flood: Option<(Instant, Instant, u64)>,
}

fn report(closed_at: Instant, note: String) -> LiarReport {
    LiarReport { closed_at, note, flood: None }
}

/// Plays `liar` on one connection the fetcher dialled; returns once the fetcher has closed it.
fn lie(liar: Liar, stream: TcpStream, rel: &Release) -> Result<LiarReport, String> {
    let mut link = Link::new(stream);
    match liar {
        Liar::OtherSwarm | Liar::BadVersion => {
            let theirs = expect_hello(&mut link, rel)?;
            let (version, mut swarm) = (VERSION, rel.signed.swarm_id);
            let (version, what) = if liar == Liar::BadVersion {
                (version + 1, format!("Hello v{}", version + 1))
            } else {
                swarm[0] ^= 0x80;
                (version, "Hello for another swarm".into())
            };
            // The fetcher may close before it reads all of it; that is its right.
            let _ = link.stream.write_all(&hello_like(&theirs, version, swarm)?);
            Ok(report(link.wait_closed()?, what))
        }
        Liar::Mute => mute(link, rel),
        Liar::HaveFlood => flood(link, rel),
        Liar::WrongHashes | Liar::UnrequestedBlock | Liar::OffsetPastEnd | Liar::BlockTooLong => {
            serve_lies(liar, link, rel)
        }
    }
}

/// The liars that answer requests with bad blocks.
fn serve_lies(liar: Liar, mut link: Link, rel: &Release) -> Result<LiarReport, String> {
    handshake(&mut link, rel, true)?;
    let mut requests = 0u32;
    let mut blocks = 0u32;
    let note = |requests, blocks| format!("{requests} requests seen, {blocks} bad blocks sent");
    loop {
        let chunk = match link.recv() {
            Ok(Got::Request(c)) => c,
            Ok(_) => continue,
            Err(RecvError::Closed) => return Ok(report(Instant::now(), note(requests, blocks))),
            Err(RecvError::TimedOut) => {
                return Err(format!("the fetcher kept the liar's connection open {PATIENCE:?}"))
            }
            Err(RecvError::Bad(e)) => return Err(format!("the fetcher sent a {e}")),
        };
        requests += 1;
        let mut out: Vec<Message> = Vec::new();
        let data = rel.chunk(chunk);
        let mut corrupt = data.to_vec();
        let mut long = data.to_vec();
        let garbage = [0x5au8; BLOCK_SIZE as usize];
        let other = (chunk + rel.chunks() / 2) % rel.chunks();
        match liar {
            Liar::WrongHashes => {
                for block in corrupt.chunks_mut(BLOCK_SIZE as usize) {
                    block[block.len() / 2] ^= 0x01;
                }
                for (k, block) in corrupt.chunks(BLOCK_SIZE as usize).enumerate() {
                    out.push(Message::Block { chunk, offset: k as u32 * BLOCK_SIZE, data: Bytes(block) });
                }
            }
            // Only the first request gets a lie: the fetcher must close at once.
            _ if requests > 1 => continue,
            // A chunk half the file away: the fetcher asks for at most 4 at a time, nowhere near.
            Liar::UnrequestedBlock => out.push(Message::Block {
                chunk: other,
                offset: 0,
                data: Bytes(&rel.chunk(other)[..BLOCK_SIZE as usize]),
            }),
            Liar::OffsetPastEnd => {
                let offset = data.len() as u32 + BLOCK_SIZE;
                out.push(Message::Block { chunk, offset, data: Bytes(&garbage) });
            }
            Liar::BlockTooLong => {
                long.extend_from_slice(&[0xee; 16]);
                let last = (data.len() - 1) / BLOCK_SIZE as usize;
                for k in 0..=last {
                    let start = k * BLOCK_SIZE as usize;
                    let end = if k == last { long.len() } else { start + BLOCK_SIZE as usize };
                    out.push(Message::Block { chunk, offset: start as u32, data: Bytes(&long[start..end]) });
                }
            }
            _ => unreachable!(),
        }
        for msg in &out {
            if link.send(msg).is_err() {
                // The fetcher closed while we were still sending: it closed on the lie.
                return Ok(report(Instant::now(), note(requests, blocks)));
            }
            blocks += 1;
        }
    }
}

/// (f): a correct handshake and a full bitfield, then silence but for keepalives.
fn mute(mut link: Link, rel: &Release) -> Result<LiarReport, String> {
    handshake(&mut link, rel, true)?;
    link.stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let start = Instant::now();
    let mut last_keepalive = start;
    let mut requests = 0;
    loop {
        match link.recv() {
            Ok(Got::Request(_)) => requests += 1,
            Ok(_) => {}
            Err(RecvError::Closed) => {
                return Ok(report(Instant::now(), format!("{requests} requests left unanswered")));
            }
            Err(RecvError::TimedOut) => {}
            Err(RecvError::Bad(e)) => return Err(format!("the fetcher sent a {e}")),
        }
        if start.elapsed() > MUTE_LIMIT {
            return Err(format!("the fetcher kept the mute peer's connection open {MUTE_LIMIT:?}"));
        }
        if last_keepalive.elapsed() >= Duration::from_secs(5) {
            last_keepalive = Instant::now();
            let _ = link.send(&Message::KeepAlive);
        }
    }
}

/// (e): Haves for valid chunks as fast as the fetcher takes them, every request rejected, then
/// a Have for a chunk out of range.
fn flood(mut link: Link, rel: &Release) -> Result<LiarReport, String> {
    handshake(&mut link, rel, false)?;
    let n = rel.chunks();
    let writer = Arc::new(Mutex::new(link.stream.try_clone().unwrap()));
    let rejects = Arc::new(AtomicU64::new(0));
    // The reader answers requests with Reject and notices the close.
    let reader: JoinHandle<Result<Instant, String>> = {
        let (writer, rejects) = (writer.clone(), rejects.clone());
        std::thread::spawn(move || loop {
            match link.recv() {
                Ok(Got::Request(c)) => {
                    rejects.fetch_add(1, Ordering::Relaxed);
                    let _ = writer.lock().unwrap().write_all(&frame(&Message::Reject(c)));
                }
                Ok(_) => {}
                Err(RecvError::Closed) => return Ok(Instant::now()),
                Err(RecvError::TimedOut) => {
                    return Err(format!("the fetcher kept the flooder's connection open {PATIENCE:?}"))
                }
                Err(RecvError::Bad(e)) => return Err(format!("the fetcher sent a {e}")),
            }
        })
    };
    // About 64 KiB of Haves, every chunk in turn.
    let mut batch = Vec::new();
    for k in 0..6000 {
        batch.extend_from_slice(&frame(&Message::Have(k % n)));
    }
    let per_batch = 6000u64;
    let start = Instant::now();
    let mut haves = 0u64;
    let mut cut_short = false;
    while start.elapsed() < FLOOD_TIME {
        if writer.lock().unwrap().write_all(&batch).is_err() {
            cut_short = true;
            break;
        }
        haves += per_batch;
    }
    let _ = writer.lock().unwrap().write_all(&frame(&Message::Have(n)));
    let end = Instant::now();
    let closed_at = reader.join().unwrap()?;
    let secs = (end - start).as_secs_f64();
    let mut note = format!(
        "{:.1} M Haves in {secs:.1} s ({:.0} k/s), {} requests rejected",
        haves as f64 / 1e6,
        haves as f64 / secs / 1e3,
        rejects.load(Ordering::Relaxed)
    );
    if cut_short {
        note += ", closed during the valid Haves";
    }
    Ok(LiarReport { closed_at, note, flood: Some((start, end, haves)) })
}

/// A fake peer listening on 127.0.0.x: the first connection gets the lie, later ones are
/// counted and closed.
struct Fake {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    reports: mpsc::Receiver<Result<LiarReport, String>>,
    thread: Option<JoinHandle<()>>,
}

impl Fake {
    fn start(x: u8, liar: Liar, rel: Arc<Release>) -> Fake {
        let listener = TcpListener::bind((ip(x), 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, reports) = mpsc::channel();
        let thread = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(false).unwrap();
                            if accepted.fetch_add(1, Ordering::SeqCst) == 0 {
                                let (rel, tx) = (rel.clone(), tx.clone());
                                // Not joined: it ends when the fetcher closes or is killed.
                                std::thread::spawn(move || {
                                    let played = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                        lie(liar, stream, &rel)
                                    }));
                                    let _ = tx.send(played.unwrap_or_else(|_| Err("the fake peer panicked".into())));
                                });
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                        Err(e) => panic!("fake peer cannot accept: {e}"),
                    }
                }
            })
        };
        Fake { addr, accepted, stop, reports, thread: Some(thread) }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------------------------------

struct Row {
    name: &'static str,
    /// banned / dropped / closed at completion / none.
    outcome: String,
    /// When the liar's connection was closed, from the fetch's start.
    closed_after: Option<Duration>,
    /// Connections the fetcher opened to the liar after the first.
    redials: usize,
    fetch: Duration,
    /// Chunks the fetcher logged as failing verification (not counting the one that ended in a ban).
    failed: usize,
    /// The fetcher's "MiB discarded".
    discarded: f64,
    note: String,
    /// Checks that failed although the fetch completed (the row is still printed).
    problems: Vec<String>,
}

struct World {
    tmp: TempDir,
    rel: Arc<Release>,
    seed: SocketAddr,
}

/// One fetch from the seed, with `liar` (on 127.0.0.`x`) given first if any; every check of
/// the scenario. `Err` says what went wrong.
fn scenario(w: &World, name: &'static str, liar: Option<(Liar, u8)>) -> Result<Row, String> {
    let rel = &w.rel;
    let fake = liar.map(|(l, x)| Fake::start(x, l, rel.clone()));
    let dirname: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let out = w.tmp.sub(&dirname).join("fw.img");
    let listen = free_addr(FETCH_IP).to_string();
    let (seed_arg, liar_arg) = (w.seed.to_string(), fake.as_ref().map(|f| f.addr.to_string()));
    let mut args = vec![
        "fetch",
        rel.manifest_arg(),
        "--trust",
        &rel.key,
        "--out",
        out.to_str().unwrap(),
        "--listen",
        &listen,
        "--no-discovery",
    ];
    if let Some(l) = &liar_arg {
        args.extend(["--peer", l]);
    }
    args.extend(["--peer", &seed_arg]);

    let mut procs = Procs::default();
    let t0 = Instant::now();
    let f = procs.spawn(w.tmp.path(), &dirname, &args);
    // Durable chunks over time, and the fake's report as soon as it comes.
    let mut progress: Vec<(Instant, u32)> = Vec::new();
    let mut got: Option<LiarReport> = None;
    let (status, end) = loop {
        if let Some(status) = procs.try_wait(f) {
            break (status, Instant::now());
        }
        if t0.elapsed() > PATIENCE {
            return Err(format!("the fetch did not finish within {PATIENCE:?}:\n{}", procs.stderr(f)));
        }
        if let Some(n) = state_chunks(&out) {
            progress.push((Instant::now(), n));
        }
        if let (None, Some(fake)) = (&got, &fake) {
            if let Ok(r) = fake.reports.try_recv() {
                got = Some(r.map_err(|e| format!("{e}\nfetcher log:\n{}", procs.stderr(f)))?);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let log = procs.stderr(f);
    if !status.success() {
        return Err(format!("the fetch failed ({status}):\n{log}"));
    }
    check_release(&out, rel)?;
    let fetch = end - t0;
    // What the lie cost in chunks and bytes. The seed never sends a bad chunk, so every chunk
    // that fails is the liar's; the last one a liar serving wrong data sends is not logged as
    // failed but closes it ("sent chunks that failed verification twice", checked below).
    let failed = log.lines().filter(|l| l.ends_with("failed verification; fetching it elsewhere")).count();
    let discarded =
        discarded_mib(&log).ok_or_else(|| format!("no \"MiB discarded\" in the completion line:\n{log}"))?;
    let kind = liar.map(|(l, _)| l);
    let (want_failed, bound) = kind.map_or((0, 0), |l| (l.bad_chunks().saturating_sub(1), l.waste_bound()));
    let mut problems = Vec::new();
    if failed != want_failed {
        problems.push(format!(
            "{failed} chunks failed verification and were fetched again, expected {want_failed}:\n{log}"
        ));
    }
    if discarded > printed_mib(bound) {
        problems.push(format!(
            "the fetcher discarded {discarded} MiB, more than the {bound} bytes ({} MiB as printed) the lie accounts for:\n{log}",
            printed_mib(bound)
        ));
    }
    let Some(fake) = fake else {
        let (outcome, note) = ("-".into(), String::new());
        return Ok(Row { name, outcome, closed_after: None, redials: 0, fetch, failed, discarded, note, problems });
    };
    let (liar, _) = liar.unwrap();
    let liar_arg = liar_arg.unwrap();
    let r = match got {
        Some(r) => r,
        // The fetch ended first: the fake sees the close of the exit.
        None => fake
            .reports
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| {
                format!(
                    "the fake peer never reported ({} connections accepted):\n{log}",
                    fake.accepted.load(Ordering::SeqCst)
                )
            })?
            .map_err(|e| format!("{e}\nfetcher log:\n{log}"))?,
    };
    let redials = fake.accepted.load(Ordering::SeqCst).saturating_sub(1);
    let closed_after = r.closed_at.saturating_duration_since(t0);
    let mut note = r.note;

    // How the fetcher's log tells of the liar.
    let about = |what: &str| {
        log.lines().find_map(|l| l.split_once(&format!("{what} {liar_arg}: ")).map(|(_, rest)| rest.to_owned()))
    };
    let outcome = if let Some(rest) = about("dropping") {
        format!("banned: {}", rest.split("; banned").next().unwrap_or(&rest))
    } else if let Some(rest) = about("closed") {
        format!("dropped: {rest}")
    } else if r.closed_at + Duration::from_millis(100) >= end {
        "closed at completion".to_owned()
    } else {
        "closed (no log line)".to_owned()
    };

    match liar.offence() {
        Some(reason) => {
            if !outcome.starts_with("banned") || !outcome.contains(reason) {
                problems.push(format!("{liar:?}: expected a ban for {reason:?}, got {outcome:?}:\n{log}"));
            }
            // Closed by the fetcher on the offence, and long enough before the end that a
            // redial of an address not banned would have come.
            let window = end.saturating_duration_since(r.closed_at);
            if window < REDIAL_WINDOW {
                problems.push(format!(
                    "{liar:?}: the liar was closed only {window:?} before the fetch ended; the redial check means nothing:\n{log}"
                ));
            }
            if redials > 0 {
                problems.push(format!("{liar:?}: the banned liar was dialled {redials} more times:\n{log}"));
            }
        }
        None => {
            // The mute peer and the other version: no offence; they must simply not hold the
            // fetch up. Closed by the fetcher (stall rule, refusal) or at completion.
            if !(outcome.starts_with("dropped") || outcome == "closed at completion") {
                problems.push(format!("{liar:?}: unexpected outcome {outcome:?}:\n{log}"));
            }
        }
    }

    if let Some((start, stop, _)) = r.flood {
        // Responsiveness under the flood: chunks made durable while it lasted.
        let at = |t: Instant| progress.iter().take_while(|(s, _)| *s <= t).last().map_or(0, |p| p.1);
        let during = at(stop) - at(start);
        let expected = (stop - start).as_secs_f64() * MIB as f64 / (64.0 * 1024.0);
        note += &format!("; {during} chunks committed during the flood (~{expected:.0} at the seed's rate)");
        if (during as f64) < expected / 4.0 {
            problems.push(format!("the fetch starved during the Have flood ({note}):\n{log}"));
        }
    }
    Ok(Row { name, outcome, closed_after: Some(closed_after), redials, fetch, failed, discarded, note, problems })
}

/// Every liar of issue 5 part 3 against one fetch each, beside an honest seed; baselines from
/// the seed alone first and last. Asserts the outcomes, the chunks failed and the bytes
/// discarded; prints the table, with the time lost (printed only).
#[test]
fn liars_are_dropped_or_banned_and_the_honest_fetch_completes() {
    let tmp = TempDir::new("table");
    let rel = Arc::new(make_release(tmp.path(), RELEASE_SIZE, CHUNK_SIZE, 0x230));
    let mut seeds = Procs::default();
    let seed = free_addr(SEED_IP);
    let seed_arg = seed.to_string();
    let args = [
        "serve",
        "--data",
        rel.data_dir.to_str().unwrap(),
        "--listen",
        &seed_arg,
        "--trust",
        &rel.key,
        "--max-upload-rate",
        RATE,
        "--no-discovery",
    ];
    let s = seeds.spawn(tmp.path(), "seed", &args);
    wait_until("the seed to listen", || {
        assert!(seeds.running(s), "the seed exited:\n{}", seeds.stderr(s));
        seeds.stderr(s).contains("listening on")
    });
    let world = World { tmp, rel, seed };

    let plan: [(&'static str, Option<(Liar, u8)>); 10] = [
        ("baseline 1 (seed only)", None),
        ("a wrong hashes", Some((Liar::WrongHashes, 232))),
        ("b unrequested block", Some((Liar::UnrequestedBlock, 233))),
        ("c1 offset past chunk end", Some((Liar::OffsetPastEnd, 234))),
        ("c2 block past chunk end", Some((Liar::BlockTooLong, 235))),
        ("d hello, other swarm", Some((Liar::OtherSwarm, 236))),
        ("e have flood", Some((Liar::HaveFlood, 237))),
        ("f mute after bitfield", Some((Liar::Mute, 238))),
        ("g hello v2", Some((Liar::BadVersion, 239))),
        ("baseline 2 (seed only)", None),
    ];
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for (name, liar) in plan {
        match scenario(&world, name, liar) {
            Ok(row) => {
                failures.extend(row.problems.iter().map(|p| format!("{name}: {p}")));
                rows.push(row)
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(seeds.running(s), "the seed died:\n{}", seeds.stderr(s));

    let baselines: Vec<f64> = rows.iter().filter(|r| r.closed_after.is_none()).map(|r| r.fetch.as_secs_f64()).collect();
    let base = baselines.iter().sum::<f64>() / baselines.len().max(1) as f64;
    let mib = RELEASE_SIZE as f64 / MIB as f64;
    eprintln!("\nliars: {mib:.1} MiB release, {CHUNK_SIZE} chunks, seed capped at {RATE}/s; baseline {base:.2} s");
    eprintln!("| scenario | outcome | liar closed at | redials | chunks failed | MiB discarded | fetch | time lost | ratio | notes |");
    eprintln!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let t = r.fetch.as_secs_f64();
        let closed = r.closed_after.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()));
        eprintln!(
            "| {} | {} | {closed} | {} | {} | {:.1} | {t:.2} s | {:+.2} s | {:.2} | {} |",
            r.name,
            r.outcome,
            r.redials,
            r.failed + usize::from(r.outcome.contains("failed verification twice")),
            r.discarded,
            t - base,
            t / base,
            if r.problems.is_empty() { r.note.clone() } else { format!("**FAILED** {}", r.note) }
        );
    }
    assert!(failures.is_empty(), "{} scenario(s) failed:\n\n{}", failures.len(), failures.join("\n\n"));
    assert_eq!(baselines.len(), 2, "both baselines ran");
}

/// (f) at full length, ignored by default (about 65 s): a fetch whose only peer is the mute
/// one. The stall rule (docs/PROTOCOL.md §8) cancels and re-routes after one 30 s request
/// timeout and closes the connection, not as an offence, after the second; the address is
/// then dialled again. Uses 127.0.0.240-241.
#[test]
#[ignore = "about 65 s: the stall rule takes two 30 s request timeouts"]
fn mute_peer_is_dropped_by_the_stall_rule() {
    let tmp = TempDir::new("mute");
    let rel = Arc::new(make_release(tmp.path(), MIB, CHUNK_SIZE, 0x240));
    let fake = Fake::start(240, Liar::Mute, rel.clone());
    let out = tmp.sub("fetcher").join("fw.img");
    let (listen, peer) = (free_addr(241).to_string(), fake.addr.to_string());
    let args = [
        "fetch",
        rel.manifest_arg(),
        "--trust",
        &rel.key,
        "--out",
        out.to_str().unwrap(),
        "--listen",
        &listen,
        "--no-discovery",
        "--peer",
        &peer,
    ];
    let mut procs = Procs::default();
    let t0 = Instant::now();
    let f = procs.spawn(tmp.path(), "fetcher", &args);
    let r = fake
        .reports
        .recv_timeout(MUTE_LIMIT + Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("the mute peer never reported:\n{}", procs.stderr(f)))
        .unwrap_or_else(|e| panic!("{e}\nfetcher log:\n{}", procs.stderr(f)));
    let dropped = r.closed_at - t0;
    assert!(procs.running(f), "the fetch exited:\n{}", procs.stderr(f));
    let log = procs.stderr(f);
    let line = format!("closed {peer}: left requests unanswered twice");
    assert!(log.contains(&line), "no {line:?} in the log:\n{log}");
    assert!(!log.contains("dropping"), "a stall is no offence:\n{log}");
    assert!(
        dropped > Duration::from_secs(55) && dropped < Duration::from_secs(75),
        "the mute peer was dropped after {dropped:?}, not after two 30 s request timeouts"
    );
    // Not banned: dialled again within the backoff.
    wait_until("the mute peer to be dialled again", || fake.accepted.load(Ordering::SeqCst) >= 2);
    eprintln!(
        "mute peer: {}; dropped {:.1} s after the fetch started, dialled again {:.1} s later",
        r.note,
        dropped.as_secs_f64(),
        r.closed_at.elapsed().as_secs_f64()
    );
}
