//! Learning of new releases from peers: the "latest" advertisement and the manifest transfer.
//!
//! Every LAN announcement says, for each swarm, which release of which name (by tag) it is
//! (`core::discovery`). A device following that name, hearing of a release newer than any it
//! accepted, opens a connection to the announcer whose first frame is `ManifestGet(swarm)`;
//! the announcer answers with the manifest file in `ManifestPart`s, in order, and closes. The
//! parts must add up to a file of at most `MAX_MANIFEST_BYTES` whose swarm id is the one asked
//! for, of the name followed; only then is it queued as learnt, and the trust rules judge it
//! before anything is written or fetched. A peer that sends anything else is banned: it cost
//! at most one manifest's bytes and [`FETCH_TIMEOUT`]. One that closes early or is slow (a
//! busy one: a device sends at most a few manifests at once) is not: the swarm is asked for
//! again at the next announcement. A swarm whose fetch is under way or whose manifest came is
//! not asked for again in this run; one whose manifest was a lie may be asked of another
//! announcer (a liar speaking first must not shut the honest ones out), and the liar, banned,
//! is not heard again. With a fleet secret, manifests are neither asked for nor given (the request
//! travels before any handshake, so a non-member could ask): such a fleet learns from the
//! origin and the data directory.

use super::guard::BAN_TIME;
use super::origin::would_block;
use super::{sys, Agent};
use crate::core::discovery::{name_tag, Advert};
use crate::core::manifest::{SignedManifest, SwarmId, MAX_MANIFEST_BYTES};
use crate::core::wire::{self, Bytes, Message, BLOCK_SIZE, MAX_FRAME};
use mio::net::TcpStream;
use mio::{Interest, Token};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Manifest fetches under way at once, and manifests sent at once.
const MAX_FETCHES: usize = 2;
const MAX_SERVES: usize = 8;
/// A manifest must arrive (or be sent) whole within this.
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Swarms asked for (fetched, failed or refused) that are not asked for again.
const ASKED: usize = 64;

/// A manifest being fetched from a peer.
pub(super) struct ManifestFetch {
    swarm: SwarmId,
    /// The release number the announcement claimed: the manifest must say the same.
    release: u64,
    name: String,
    peer: SocketAddr,
    stream: TcpStream,
    /// The request frame, and how much of it is written.
    request: Vec<u8>,
    sent: usize,
    /// Frames as they arrive.
    rbuf: Vec<u8>,
    /// The manifest as its parts arrive, and its announced size once the first part came.
    manifest: Vec<u8>,
    total: Option<u32>,
    deadline: Instant,
}

/// A manifest being sent to a peer that asked for it.
pub(super) struct ManifestServe {
    stream: TcpStream,
    file: File,
    total: u32,
    offset: u32,
    /// The frame being written, and how much of it is written.
    frame: Vec<u8>,
    written: usize,
    deadline: Instant,
}

/// Why a manifest fetch ended without a manifest.
enum Failed {
    /// The peer sent something it should not have (not the manifest it announced, a broken
    /// frame): it is banned.
    Lie(String),
    /// The connection failed or closed early, or took too long, as a busy peer's would: the
    /// swarm may be asked for again at its next announcement.
    Gone(String),
}

/// What the gossip keeps between turns.
#[derive(Default)]
pub(super) struct Gossip {
    pub(super) fetches: Vec<ManifestFetch>,
    pub(super) serves: Vec<ManifestServe>,
    asked: heapless::Vec<SwarmId, ASKED>,
}

impl Agent {
    /// An announcement said that `peer` holds `advert`: if it is a release of a name we follow,
    /// newer than any accepted here, not held and not asked for yet, ask `peer` for its manifest.
    pub(super) fn heard_advert(&mut self, advert: Advert, peer: SocketAddr, now: Instant) {
        if !self.config.fleet_keys.is_empty() || self.gossip.fetches.len() >= MAX_FETCHES {
            return;
        }
        let Some(name) = self.config.follow.iter().find(|n| name_tag(n) == advert.name_tag).cloned() else { return };
        if self.highest_known(&name).is_some_and(|h| h >= advert.release)
            || self.releases.iter().any(|h| *h.release.id() == advert.swarm)
            || self.gossip.asked.contains(&advert.swarm)
            || self.bans.is_banned(peer.ip(), now)
        {
            return;
        }
        if self.gossip.asked.is_full() {
            self.gossip.asked.remove(0);
        }
        let _ = self.gossip.asked.push(advert.swarm);
        match self.open_fetch(&name, advert, peer, now) {
            Ok(f) => {
                log::info!("{name}: {peer} holds release {}; asking it for the manifest", advert.release);
                self.gossip.fetches.push(f);
            }
            Err(e) => log::debug!("{name}: cannot ask {peer} for a manifest: {e}"),
        }
    }

    fn open_fetch(&mut self, name: &str, advert: Advert, peer: SocketAddr, now: Instant) -> io::Result<ManifestFetch> {
        let swarm = advert.swarm;
        let mut stream = sys::connect_from(self.local, peer)?;
        let token = self.next_side_token();
        self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        let mut request = vec![0u8; 64];
        let n = wire::encode_frame(&Message::ManifestGet(swarm), &mut request).expect("a small frame fits");
        request.truncate(n);
        Ok(ManifestFetch {
            swarm,
            release: advert.release,
            name: name.to_owned(),
            peer,
            stream,
            request,
            sent: 0,
            rbuf: Vec::with_capacity(MAX_FRAME),
            manifest: Vec::new(),
            total: None,
            deadline: now + FETCH_TIMEOUT,
        })
    }

    /// A peer's first frame asked for the manifest of `swarm`: send it the file, or close.
    pub(super) fn serve_manifest(&mut self, mut stream: TcpStream, peer: SocketAddr, swarm: SwarmId, now: Instant) {
        let held = self.releases.iter().find(|h| *h.release.id() == swarm).and_then(|h| h.manifest.clone());
        let (Some(path), true, true) = (held, self.config.fleet_keys.is_empty(), self.gossip.serves.len() < MAX_SERVES)
        else {
            log::debug!("{peer} asked for a manifest we do not give now");
            return;
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => return log::warn!("cannot send {} to {peer}: {e}", path.display()),
        };
        let total = file.metadata().map_or(0, |m| m.len()).min(MAX_MANIFEST_BYTES as u64) as u32;
        let token = self.next_side_token();
        if self.poll.registry().register(&mut stream, token, Interest::WRITABLE).is_err() {
            return;
        }
        log::debug!("sending the manifest {} to {peer}", path.display());
        let serve = ManifestServe {
            stream,
            file,
            total,
            offset: 0,
            frame: Vec::new(),
            written: 0,
            deadline: now + FETCH_TIMEOUT,
        };
        self.gossip.serves.push(serve);
    }

    /// Drives the manifest transfers both ways; a finished or failed one is dropped.
    pub(super) fn drive_gossip(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.gossip.fetches.len() {
            match step_fetch(&mut self.gossip.fetches[i], now) {
                Ok(None) => i += 1,
                Ok(Some(m)) => {
                    let mut f = self.gossip.fetches.swap_remove(i);
                    let _ = self.poll.registry().deregister(&mut f.stream);
                    log::info!("{}: got the manifest of release {} from {}", f.name, m.manifest.release, f.peer);
                    if self.learnt.len() < super::follow::MAX_LEARNT {
                        self.learnt.push(m);
                    }
                }
                Err(failed) => {
                    let mut f = self.gossip.fetches.swap_remove(i);
                    let _ = self.poll.registry().deregister(&mut f.stream);
                    match failed {
                        Failed::Lie(why) => {
                            let ban = BAN_TIME.as_secs();
                            log::warn!(
                                "{}: the manifest from {} is refused: {why}; banned for {ban} s",
                                f.name,
                                f.peer
                            );
                            self.bans.ban(f.peer.ip(), now);
                            // Banned, the liar is not heard again; an honest announcer of the
                            // same swarm still is (a liar speaking first must not shut it out).
                            self.gossip.asked.retain(|s| *s != f.swarm);
                        }
                        Failed::Gone(why) => {
                            log::info!(
                                "{}: no manifest from {}: {why}; asking again at its next announcement",
                                f.name,
                                f.peer
                            );
                            self.gossip.asked.retain(|s| *s != f.swarm);
                        }
                    }
                }
            }
        }
        let mut i = 0;
        while i < self.gossip.serves.len() {
            match step_serve(&mut self.gossip.serves[i], now) {
                Ok(false) => i += 1,
                done => {
                    let mut s = self.gossip.serves.swap_remove(i);
                    let _ = self.poll.registry().deregister(&mut s.stream);
                    if let Err(e) = done {
                        log::debug!("sending a manifest failed: {e}");
                    }
                }
            }
        }
    }

    /// When the gossip next needs the loop without a socket event: the transfers' deadlines.
    pub(super) fn gossip_wakeup(&self) -> Option<Instant> {
        let fetches = self.gossip.fetches.iter().map(|f| f.deadline);
        fetches.chain(self.gossip.serves.iter().map(|s| s.deadline)).min()
    }
}

/// Writes the request, then reads parts; `Ok(Some)` once the manifest is whole and checks.
fn step_fetch(f: &mut ManifestFetch, now: Instant) -> Result<Option<SignedManifest>, Failed> {
    if now >= f.deadline {
        return Err(Failed::Gone(format!("not whole within {} s", FETCH_TIMEOUT.as_secs())));
    }
    while f.sent < f.request.len() {
        match f.stream.write(&f.request[f.sent..]) {
            Ok(n) => f.sent += n,
            Err(e) if would_block(&e) => return Ok(None),
            Err(e) => return Err(Failed::Gone(format!("cannot send the request: {e}"))),
        }
    }
    let mut piece = [0u8; 16 * 1024];
    loop {
        let n = match f.stream.read(&mut piece) {
            Ok(0) => return Err(Failed::Gone("closed before the manifest was whole".into())),
            Ok(n) => n,
            Err(e) if would_block(&e) => return Ok(None),
            Err(e) => return Err(Failed::Gone(format!("cannot read: {e}"))),
        };
        f.rbuf.extend_from_slice(&piece[..n]);
        while let Some(len) = wire::frame_len(&f.rbuf).map_err(|e| Failed::Lie(format!("bad frame: {e:?}")))? {
            if f.rbuf.len() < len {
                break;
            }
            let msg = wire::check_crc(&f.rbuf[..len])
                .and_then(wire::decode_message)
                .map_err(|e| Failed::Lie(format!("{e:?}")))?;
            let Message::ManifestPart { total, offset, data: Bytes(data) } = msg else {
                return Err(Failed::Lie("it answered with something other than the manifest".into()));
            };
            if total as usize > MAX_MANIFEST_BYTES || *f.total.get_or_insert(total) != total {
                return Err(Failed::Lie(format!("a manifest of {total} bytes, or of two sizes")));
            }
            if offset as usize != f.manifest.len() || f.manifest.len() + data.len() > total as usize {
                return Err(Failed::Lie("parts out of order or past the end".into()));
            }
            f.manifest.extend_from_slice(data);
            f.rbuf.drain(..len);
            if f.manifest.len() == total as usize {
                let m = SignedManifest::decode(&f.manifest).map_err(|e| Failed::Lie(e.to_string()))?;
                if m.swarm_id != f.swarm || m.manifest.name != f.name || m.manifest.release != f.release {
                    return Err(Failed::Lie(format!(
                        "it announced release {} of {}, and sent release {} of {}",
                        f.release, f.name, m.manifest.release, m.manifest.name
                    )));
                }
                return Ok(Some(m));
            }
        }
    }
}

/// Writes the next parts of the manifest; `Ok(true)` once all are sent.
fn step_serve(s: &mut ManifestServe, now: Instant) -> io::Result<bool> {
    if now >= s.deadline {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "the peer reads too slowly"));
    }
    loop {
        if s.written == s.frame.len() {
            if s.offset == s.total {
                return Ok(true);
            }
            let len = (s.total - s.offset).min(BLOCK_SIZE);
            let mut data = vec![0u8; len as usize];
            s.file.read_exact_at(&mut data, s.offset as u64)?;
            s.frame.resize(MAX_FRAME, 0);
            let msg = Message::ManifestPart { total: s.total, offset: s.offset, data: Bytes(&data) };
            let n = wire::encode_frame(&msg, &mut s.frame).map_err(|e| io::Error::other(format!("{e:?}")))?;
            s.frame.truncate(n);
            s.written = 0;
            s.offset += len;
        }
        match s.stream.write(&s.frame[s.written..]) {
            Ok(n) => s.written += n,
            Err(e) if would_block(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

impl Agent {
    /// A poll token for a connection outside the slot table (origin, polls, manifests), each
    /// its own; these are driven every turn rather than by their events.
    pub(super) fn next_side_token(&mut self) -> Token {
        self.origin_tokens += 1;
        Token(super::origin::ORIGIN_TOKENS + self.origin_tokens)
    }
}
