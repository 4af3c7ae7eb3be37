//! One release seen from the protocol: what we have, who has what, which chunk to ask whom,
//! and whose requests we serve next.
//!
//! The swarm owns one [`Session`] per connected peer, in slots numbered by the caller. It is a
//! state machine in the style of quinn-proto: the caller feeds it messages
//! ([`Swarm::handle_message`]) and the passage of time ([`Swarm::handle_timeout`]), and drains
//! what to send ([`Swarm::poll_transmit`]) and when to wake it ([`Swarm::poll_timeout`]). It
//! never reads a clock, a socket or a file: block payloads pass through by reference, and the
//! caller writes them where [`Received::Write`] says and reads what [`Transmit::Block`] names.
//!
//! Scheduling: a few random chunks first so a newcomer soon has something to trade, then rarest
//! first with ties broken by a random starting point; a pipeline of requests per peer sized in
//! bytes; duplicates of in-flight chunks only once nothing else is left (endgame); uploads limited
//! to a number of slots that rotate after each chunk, served block by block.

mod availability;
pub mod choice;
mod download;
mod handshake;
mod origin;
mod pex;
pub mod tree;
mod upload;

use crate::core::bitfield::Bitfield;
use crate::core::manifest::{Geometry, Hash, Manifest, SwarmId};
use crate::core::rate::TokenBucket;
use crate::core::rng::Rng;
use crate::core::session::{CloseReason, Control, Outstanding, Phase, Session, Timeouts, MAX_REQUESTS};
use crate::core::wire::{self, Bytes, Message, BLOCK_SIZE, MAX_PEX_PEERS, PEER_ENTRY, VERSION};
use availability::Availability;
pub use origin::OriginOverrun;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use upload::Spread;

/// A connection slot number, chosen by the caller (the agent uses its connection slot index).
pub type PeerId = usize;

/// Tunables, fixed at start.
#[derive(Clone, Copy, Debug)]
pub struct SwarmConfig {
    /// Peer slots; `PeerId`s range over `0..max_peers`.
    pub max_peers: usize,
    /// Peers served at once; the rest wait their turn.
    pub upload_slots: usize,
    /// Bytes of requests kept outstanding per peer (rounded to whole chunks, 2..=16).
    pub pipeline_bytes: u32,
    /// Upload cap in bytes per second, 0 for none.
    pub max_upload_rate: u64,
    /// Download cap in bytes per second, 0 for none; enforced when requesting whole chunks.
    pub max_download_rate: u64,
    /// Session timeouts.
    pub timeouts: Timeouts,
    /// Our listening port, announced in Hello (0 for none).
    pub listen_port: u16,
    /// A seed offers each peer only its least-spread chunks until every chunk has gone out once.
    pub spread: bool,
    /// Our random node number, announced in Hello.
    pub node: u64,
    /// With a fleet secret, peers must prove they hold it before anything is exchanged.
    pub fleet_keys: crate::core::auth::FleetKeys,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            max_peers: 32,
            // Fewer, faster uploads make a fresh copy forwardable sooner: the in-memory swarm of
            // 16 finishes at 1.08x the bound with 2 slots, 1.11x with 4, 1.13x with 8; on the
            // namespace testbed 2 and 4 tie (1.25x).
            upload_slots: 2,
            // Deep pipelines commit a peer's whole share to one source early, and the swarm loses
            // the freedom to ask whoever frees up first; two chunks cover the bandwidth-delay
            // product of any link we expect (256 KiB at 20 Mbit/s is 100 ms).
            pipeline_bytes: 256 * 1024,
            max_upload_rate: 0,
            max_download_rate: 0,
            timeouts: Timeouts::default(),
            listen_port: 0,
            spread: true,
            node: 0,
            fleet_keys: crate::core::auth::FleetKeys::default(),
        }
    }
}

/// A newcomer gets our peer list at once; the others hear of it within `PEX_SOON` (one list
/// for a burst of arrivals), and everyone gets a fresh list every `PEX_INTERVAL`.
const PEX_SOON: Duration = Duration::from_millis(250);
const PEX_INTERVAL: Duration = Duration::from_secs(30);
/// Addresses heard by peer exchange and not yet taken by the caller.
const DISCOVERED_CAPACITY: usize = 64;
/// Chunks a spreading seed keeps offered to each peer: enough to keep its pipeline full.
const OFFERS_PER_PEER: usize = 2;

/// What the caller must do with a block just handed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// Nothing to store.
    Nothing,
    /// Write the block's data at this offset of the release file. If `verdict` is set, the
    /// block completed a chunk: on `Good`, make it durable and call [`Swarm::chunk_committed`].
    Write {
        /// Byte offset in the release file.
        offset: u64,
        /// Set when this block completed a chunk.
        verdict: Option<Verdict>,
    },
}

/// The outcome of hashing a completed chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The chunk matches the manifest.
    Good(u32),
    /// The chunk does not match; it will be fetched again elsewhere.
    Bad(u32),
}

/// Something to send on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transmit<'a> {
    /// A message to encode as is.
    Message(Message<'a>),
    /// A block: read `len` bytes at `file_offset` of the release into a `Block` frame.
    Block {
        /// Chunk index.
        chunk: u32,
        /// Offset within the chunk.
        offset: u32,
        /// Bytes to send.
        len: u32,
        /// Where they are in the release file.
        file_offset: u64,
    },
}

/// Protocol state of one release.
pub struct Swarm {
    id: SwarmId,
    geometry: Geometry,
    hashes: Vec<Hash>,
    /// Chunks durable on disk and announced.
    have: Bitfield,
    /// Chunks whose hash checked, durable or not yet; never requested again.
    verified: Bitfield,
    /// How many connected peers have each chunk, and how many of those are on our LAN.
    availability: Availability,
    /// This device's share of its site's chunks, `(rank, of)`: from a peer beyond the LAN it
    /// asks for these first, so a site's devices fetch different chunks over the WAN link.
    site_share: Option<(u32, u32)>,
    /// Reachable from outside (the caller says), and our advert in the tree of reachable
    /// devices (`tree.rs`).
    reachable: bool,
    tree: Option<tree::TreeAdvert>,
    /// Live requests per chunk across all sessions.
    in_flight: Vec<u8>,
    peers: Vec<Option<Session>>,
    /// Peers with requests for us, in service order; the first `upload_slots` are served.
    upload_queue: Vec<PeerId>,
    config: SwarmConfig,
    upload_bucket: TokenBucket,
    download_bucket: TokenBucket,
    /// Set while a seed spreads distinct chunks (see [`Spread`]).
    spread: Option<Spread>,
    /// Peer addresses learnt from peer exchange, for the caller to dial.
    discovered: heapless::Deque<std::net::SocketAddr, DISCOVERED_CAPACITY>,
    /// Where the peer list of the last `Peers` message is built.
    pex_buf: [u8; MAX_PEX_PEERS * PEER_ENTRY],
    /// Bytes of `pex_buf` in use.
    pex_len: usize,
    rng: Rng,
    /// The chunk being fetched from the HTTP origin, if any (`origin.rs`).
    origin: Option<origin::OriginChunk>,
    /// Useful bytes received, bytes sent, bytes received and thrown away.
    pub stats: Stats,
}

/// Why a frame that should have been sealed did not open: a plain frame whose crc checks comes
/// from a peer without a fleet secret; anything else was sealed under another key or altered.
fn unsealed(frame: &[u8]) -> CloseReason {
    match wire::check_crc(frame) {
        Ok(_) => CloseReason::FleetMismatch,
        Err(_) => CloseReason::Unauthenticated,
    }
}

/// A connection to start a session on.
#[derive(Clone, Copy, Debug)]
pub struct NewPeer {
    /// We dialled it (and send the first Hello).
    pub outbound: bool,
    /// Its address, if the caller knows it.
    pub remote: Option<std::net::SocketAddr>,
    /// It is beyond our LAN (not on any of our links): chunks a LAN peer holds are not asked
    /// of it. False when the caller knows no LAN.
    pub beyond_lan: bool,
    /// Fresh random bytes for this connection's Hello, from the OS's CSPRNG: the fleet
    /// channel's keys depend on them, so they must not be predictable.
    pub nonce: [u8; crate::core::auth::NONCE_LEN],
}

/// Byte counters of one swarm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Block bytes that went into verified chunks or are pending verification.
    pub downloaded: u64,
    /// Block bytes sent.
    pub uploaded: u64,
    /// Block bytes received and discarded (duplicates, cancelled, failed hashes).
    pub wasted: u64,
    /// Chunks that failed their hash.
    pub bad_chunks: u64,
    /// Of the block bytes received, those from peers beyond our LAN, and from the HTTP origin.
    pub received_wan: u64,
    pub received_origin: u64,
    /// Of the block bytes sent, those to peers beyond our LAN.
    pub sent_wan: u64,
}

impl Stats {
    /// Moves `bytes` already counted as downloaded to wasted: a chunk abandoned, lost or bad.
    fn discard(&mut self, bytes: u64) {
        self.downloaded -= bytes;
        self.wasted += bytes;
    }
}

impl Swarm {
    /// A swarm for `manifest` whose id is `id`, with the chunks in `have` already on disk.
    /// `seed` drives the random choices, so a test can replay a run exactly.
    pub fn new(manifest: &Manifest, id: SwarmId, have: &Bitfield, config: SwarmConfig, seed: u64) -> Self {
        let n = manifest.chunk_count() as usize;
        Swarm {
            id,
            geometry: manifest.geometry(),
            hashes: manifest.chunk_hashes.clone(),
            have: have.clone(),
            verified: have.clone(),
            availability: Availability::new(n),
            site_share: None,
            reachable: false,
            tree: None,
            in_flight: vec![0; n],
            peers: (0..config.max_peers).map(|_| None).collect(),
            upload_queue: Vec::with_capacity(config.max_peers),
            upload_bucket: TokenBucket::new(config.max_upload_rate),
            // A request asks for a whole chunk at once, so the bucket must hold one.
            download_bucket: TokenBucket::with_burst(config.max_download_rate, manifest.chunk_size as u64),
            spread: (have.is_full() && config.spread).then(|| Spread::new(n as u32)),
            discovered: heapless::Deque::new(),
            pex_buf: [0; MAX_PEX_PEERS * PEER_ENTRY],
            pex_len: 0,
            config,
            rng: Rng::new(seed),
            origin: None,
            stats: Stats::default(),
        }
    }

    /// The swarm id (SHA-256 of the manifest).
    pub fn id(&self) -> &SwarmId {
        &self.id
    }

    /// Chunks durable and announced.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// True once every chunk is durable.
    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// How the release's file divides into chunks.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Bytes of the release durable on disk.
    pub fn have_bytes(&self) -> u64 {
        self.geometry.bytes_in(&self.have)
    }

    /// Sets the port announced in our Hello.
    pub fn set_listen_port(&mut self, port: u16) {
        self.config.listen_port = port;
    }

    /// True once every chunk has passed its hash check, durable or not.
    pub fn all_verified(&self) -> bool {
        self.verified.is_full()
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        self.hashes.len() as u32
    }

    /// The session in slot `id`, if any.
    pub fn session(&self, id: PeerId) -> Option<&Session> {
        self.peers.get(id)?.as_ref()
    }

    /// Whether we hold a verified chunk the peer in slot `id` says it lacks: a peer that never
    /// asks for it is idle by its own choice, not for want of anything to trade.
    pub fn could_serve(&self, id: PeerId) -> bool {
        self.session(id).is_some_and(|s| self.have.iter_ones().any(|c| !s.bits.get(c)))
    }

    /// Sets this device's share of its site's chunks, `(rank, of)` (see `site_share`), or none.
    pub fn set_site_share(&mut self, share: Option<(u32, u32)>) {
        self.site_share = share;
    }

    /// Peers whose handshake is done.
    pub fn active_peers(&self) -> usize {
        self.peers.iter().flatten().filter(|s| s.is_active()).count()
    }

    /// Starts a session in slot `id`. An outbound session sends its Hello at once; an inbound one
    /// waits for the peer's. Returns false if the slot is out of range or taken.
    pub fn add_peer(&mut self, id: PeerId, peer: NewPeer, now: Instant) -> bool {
        let NewPeer { outbound, remote, beyond_lan, nonce } = peer;
        let chunks = self.chunk_count();
        let Some(slot @ None) = self.peers.get_mut(id) else {
            return false;
        };
        let mut s = Session::new(chunks, outbound, remote, now);
        s.nonce = nonce;
        s.beyond_lan = beyond_lan;
        if outbound {
            s.push_control(Control::Hello);
        }
        *slot = Some(s);
        true
    }

    /// Ends the session in slot `id`, releasing its requests to other peers.
    pub fn remove_peer(&mut self, id: PeerId, now: Instant) {
        let Some(s) = self.peers.get_mut(id).and_then(Option::take) else {
            return;
        };
        for c in s.bits.iter_ones() {
            self.availability.remove(c, s.beyond_lan);
        }
        if let Some(sp) = self.spread.as_mut() {
            // Offers it never received go back to the pool.
            for &c in &s.offered {
                sp.offered.clear(c);
            }
        }
        if s.hasher.is_some() {
            // The chunk being written from this peer is abandoned half-way.
            self.stats.discard(s.recv_offset as u64);
        }
        for r in s.requested.iter().filter(|r| !r.cancelled) {
            self.in_flight[r.chunk as usize] -= 1;
        }
        self.upload_queue.retain(|&p| p != id);
        if s.tree.is_some() {
            self.refresh_tree();
        }
        self.fill_all(now);
    }

    /// Takes one session that is to be closed: removes it (its requests go back to the pool) and
    /// returns its slot and why. The caller closes the connection.
    pub fn poll_closed(&mut self, now: Instant) -> Option<(PeerId, CloseReason)> {
        let (id, reason) = self.peers.iter().enumerate().find_map(|(id, s)| match s.as_ref()?.phase {
            Phase::Closing(reason) => Some((id, reason)),
            _ => None,
        })?;
        self.remove_peer(id, now);
        Some((id, reason))
    }

    /// Marks the session in slot `id` to be closed (see [`Swarm::poll_closed`]).
    pub fn close(&mut self, id: PeerId, reason: CloseReason) {
        if let Some(s) = self.peers.get_mut(id).and_then(Option::as_mut) {
            s.close(reason);
        }
    }

    /// Handles one message from the peer in slot `id`. A message that breaks a rule marks the
    /// session closing and is returned as the `Err`; a closing session ignores what follows.
    pub fn handle_message(&mut self, id: PeerId, msg: &Message, now: Instant) -> Result<Received, CloseReason> {
        let s = self.peers.get_mut(id).and_then(Option::as_mut).ok_or(CloseReason::Protocol("no session"))?;
        if let Phase::Closing(reason) = s.phase {
            return Err(reason);
        }
        s.last_recv = now;
        let result = self.dispatch(id, msg, now);
        if let Err(reason) = result {
            self.session_mut(id).close(reason);
        }
        result
    }

    fn dispatch(&mut self, id: PeerId, msg: &Message, now: Instant) -> Result<Received, CloseReason> {
        if !self.session_mut(id).is_active() {
            return self.on_hello(id, msg, now).map(|()| Received::Nothing);
        }
        match *msg {
            Message::Hello { .. } => Err(CloseReason::Protocol("second hello")),
            Message::ManifestGet(_) | Message::ManifestPart { .. } => {
                Err(CloseReason::Protocol("a manifest transfer inside a session"))
            }
            Message::Refuse(r) => Err(CloseReason::Refused(r)),
            Message::Bitfield(Bytes(bytes)) => self.on_bitfield(id, bytes, now),
            Message::Have(c) => self.on_have(id, c, now),
            Message::Request(c) => self.on_request(id, c, now),
            Message::Cancel(c) => {
                self.session_mut(id).withdraw_serving(c);
                self.drop_from_upload_queue_if_idle(id);
                Ok(Received::Nothing)
            }
            Message::Reject(c) => self.on_reject(id, c, now),
            Message::Block { chunk, offset, data } => self.on_block(id, chunk, offset, data.0, now),
            Message::KeepAlive => Ok(Received::Nothing),
            Message::Peers(Bytes(b)) => self.on_peers(id, b),
            Message::Tree { root, hops } => {
                self.on_tree(id, root, hops);
                Ok(Received::Nothing)
            }
            Message::Auth(_) if self.config.fleet_keys.is_empty() => {
                Err(CloseReason::Protocol("the peer requires a fleet secret (--fleet-secret)"))
            }
            Message::Auth(_) => Err(CloseReason::Protocol("fleet proof after the handshake")),
        }
    }

    fn session_mut(&mut self, id: PeerId) -> &mut Session {
        // Callers have checked the slot is occupied.
        self.peers[id].as_mut().expect("session present")
    }

    /// The next thing to send to peer `id`, if any. Call while the connection has room for a
    /// whole frame; a `Block` is only handed out if `blocks` is true (the caller's link can take
    /// one now) and to peers holding an upload slot.
    pub fn poll_transmit(&mut self, id: PeerId, now: Instant, blocks: bool) -> Option<Transmit<'_>> {
        let s = self.peers.get_mut(id)?.as_mut()?;
        if let Some(c) = s.control.pop_front() {
            s.last_send = now;
            if c == Control::Peers {
                // Built as it leaves, so the list is current even after waiting in the queue.
                self.pex_len = self.build_peer_list(id);
            }
            return Some(Transmit::Message(self.control_message(id, c)));
        }
        if s.resend_bitfield && s.is_active() {
            s.resend_bitfield = false;
            s.last_send = now;
            return Some(Transmit::Message(Message::Bitfield(Bytes(self.advertised()))));
        }
        if !blocks {
            return None;
        }
        self.poll_block(id, now)
    }

    fn control_message(&self, id: PeerId, c: Control) -> Message<'_> {
        let nonce = self.session(id).map_or([0; crate::core::auth::NONCE_LEN], |s| s.nonce);
        match c {
            Control::Hello => Message::Hello {
                version: VERSION,
                swarm: self.id,
                listen_port: self.config.listen_port,
                node: self.config.node,
                nonce,
            },
            Control::Peers => Message::Peers(Bytes(&self.pex_buf[..self.pex_len])),
            Control::Auth => Message::Auth(self.proof(id, true).unwrap_or_default()),
            Control::Bitfield => Message::Bitfield(Bytes(self.advertised())),
            Control::Have(c) => Message::Have(c),
            Control::Request(c) => Message::Request(c),
            Control::Cancel(c) => Message::Cancel(c),
            Control::Reject(c) => Message::Reject(c),
            Control::KeepAlive => Message::KeepAlive,
            Control::Tree => {
                let (root, hops) = self.tree_on_wire();
                Message::Tree { root, hops }
            }
        }
    }

    /// Checks the whole frame `frame` from peer `id` and returns its payload: by its tag, once
    /// the session has a fleet channel (decrypting in place), else by its crc32. The first
    /// sealed frame from a dialler also settles which of our fleet keys its channel uses.
    pub fn open_frame<'f>(&mut self, id: PeerId, frame: &'f mut [u8]) -> Result<&'f [u8], CloseReason> {
        let s = self.peers.get_mut(id).and_then(Option::as_mut).ok_or(CloseReason::Protocol("no session"))?;
        let awaiting_proof = s.channel.is_none() && !s.outbound && s.phase == Phase::Proving;
        if awaiting_proof && !self.config.fleet_keys.is_empty() {
            return match self.accept_channel(id, frame) {
                Some(()) => Ok(wire::opened_payload(frame)),
                None => Err(unsealed(frame)),
            };
        }
        let handshaking = !s.is_active();
        match s.channel.as_mut() {
            Some(c) => match wire::open_with(c, frame) {
                Ok(_) => Ok(wire::opened_payload(frame)),
                Err(_) => Err(unsealed(frame)),
            },
            // A sealed frame (crc field zero) from a peer with a fleet secret, while we have none:
            // not the peer's offence. Once the handshake is done, a bad crc always is.
            None if handshaking && frame[4..8] == [0; 4] && wire::check_crc(frame).is_err() => {
                Err(CloseReason::FleetMismatch)
            }
            None => wire::check_crc(frame).map_err(|_| CloseReason::Protocol("bad frame")),
        }
    }

    /// Seals the whole plain frame `frame[..len]` for peer `id` in place if its session has a
    /// fleet channel and the frame is not a Hello (which always goes in clear); returns the
    /// length to send.
    pub fn seal_frame(&mut self, id: PeerId, frame: &mut [u8], len: usize, hello: bool) -> usize {
        match self.peers.get_mut(id).and_then(Option::as_mut).and_then(|s| s.channel.as_mut()) {
            Some(c) if !hello => wire::seal_with(c, frame, len),
            _ => len,
        }
    }

    /// Advances the timers: handshake and idle timeouts, stalled requests, keepalives.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Bring the buckets up to date, so a bucket that has refilled stops asking for a timer
        // even when nothing is sent (a full socket must not turn a due refill into a spin).
        self.upload_bucket.refill(now);
        self.download_bucket.refill(now);
        let t = self.config.timeouts;
        for s in self.peers.iter_mut().flatten() {
            if s.is_closing() {
                continue;
            }
            if !s.is_active() && now >= s.connected_at + t.handshake {
                s.close(CloseReason::HandshakeTimeout);
            } else if now >= s.last_recv + t.idle {
                s.close(CloseReason::Idle);
            } else if s.live_requests() > 0
                && (now >= s.progress_at + t.request || s.head_deadline.is_some_and(|d| now >= d))
            {
                // Re-route: the chunks go back to the pool; a second stall closes the peer.
                let chunks: heapless::Vec<u32, MAX_REQUESTS> = s.requested.iter().map(|r| r.chunk).collect();
                for chunk in chunks {
                    if s.cancel_request(chunk) {
                        self.in_flight[chunk as usize] -= 1;
                    }
                }
                s.stalls += 1;
                s.progress_at = now;
                s.head_deadline = None;
                if s.stalls >= 2 {
                    s.close(CloseReason::Stalled);
                }
            }
            if s.is_active() && now >= s.pex_at {
                s.pex_at = now + PEX_INTERVAL;
                s.push_control(Control::Peers);
            }
            if s.is_active() && now >= s.last_send + t.keepalive && s.control.is_empty() {
                s.push_control(Control::KeepAlive);
            }
        }
        // Also a safety net: any pipeline place freed without a refill is used at the next timer.
        self.fill_all(now);
    }

    /// When [`Swarm::handle_timeout`] should next be called, or the upload bucket next refills
    /// for a waiting block.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let t = self.config.timeouts;
        let timers = self.peers.iter().flatten().map(|s| s.next_deadline(&t)).min();
        // Only a block held back by the rate limit needs a timer; any other waits for the socket.
        // The time may already have come: the caller then runs handle_timeout, which refills.
        let held_back = self.upload_bucket.is_short(BLOCK_SIZE as u64) && !self.upload_queue.is_empty();
        let mut bucket = held_back.then(|| self.upload_bucket.ready_at(BLOCK_SIZE as u64, now));
        if self.download_bucket.is_short(self.geometry.chunk_size as u64) && !self.all_verified() {
            let next_request = self.download_bucket.ready_at(self.geometry.chunk_size as u64, now);
            bucket = Some(bucket.map_or(next_request, |b| b.min(next_request)));
        }
        match (timers, bucket) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::wire::VERSION;

    const CHUNK: u32 = 16 * 1024;

    /// A swarm of a 12-chunk release holding `have`, with no spreading and a 2-chunk pipeline.
    fn swarm(have: &[u32], upload_slots: usize) -> Swarm {
        let m = Manifest {
            name: "t".into(),
            release: 1,
            file_size: 12 * CHUNK as u64,
            chunk_size: CHUNK,
            file_hash: [0; 32],
            chunk_hashes: vec![[0; 32]; 12],
            expires: None,
            targets: Vec::new(),
            rollout: None,
        };
        let mut bits = Bitfield::new(12);
        have.iter().for_each(|&c| _ = bits.set(c));
        let config = SwarmConfig { spread: false, pipeline_bytes: 2 * CHUNK, upload_slots, ..SwarmConfig::default() };
        Swarm::new(&m, [9; 32], &bits, config, 7)
    }

    /// Connects peer `id` (we dialled it) and hands in its Hello and a bitfield of `chunks`.
    fn join(s: &mut Swarm, id: PeerId, chunks: &[u32], now: Instant) {
        join_from(s, id, chunks, false, now)
    }

    /// As [`join`], for a peer on our LAN or beyond it.
    fn join_from(s: &mut Swarm, id: PeerId, chunks: &[u32], beyond_lan: bool, now: Instant) {
        assert!(s.add_peer(id, NewPeer { outbound: true, remote: None, beyond_lan, nonce: [id as u8; 16] }, now));
        let hello =
            Message::Hello { version: VERSION, swarm: [9; 32], listen_port: 0, node: 100 + id as u64, nonce: [0; 16] };
        s.handle_message(id, &hello, now).unwrap();
        let mut bits = Bitfield::new(12);
        chunks.iter().for_each(|&c| _ = bits.set(c));
        s.handle_message(id, &Message::Bitfield(Bytes(bits.as_bytes())), now).unwrap();
    }

    /// The chunks we asked peer `id` for, in order, draining what it has queued.
    fn requests(s: &mut Swarm, id: PeerId, now: Instant) -> Vec<u32> {
        let mut out = Vec::new();
        while let Some(t) = s.poll_transmit(id, now, false) {
            if let Transmit::Message(Message::Request(c)) = t {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn rarest_chunks_are_asked_for_first() {
        let now = Instant::now();
        // Four chunks held: past the random first picks, so rarest-first decides.
        let mut s = swarm(&[0, 1, 2, 3], 2);
        join(&mut s, 0, &[4, 5, 6, 7, 8], now);
        join(&mut s, 1, &[4, 5, 6, 7, 8, 9], now);
        join(&mut s, 2, &[4, 5, 6, 7, 8, 9, 10, 11], now);
        // Peer 2 alone has 10 and 11; whatever peers 0 and 1 were asked for, those come first.
        let mut asked = requests(&mut s, 2, now);
        asked.sort();
        assert_eq!(asked, vec![10, 11]);
    }

    #[test]
    fn a_peer_beyond_the_lan_is_asked_for_our_site_share_and_never_what_a_lan_peer_holds() {
        let now = Instant::now();
        let mut s = swarm(&[0, 1, 2, 3], 2);
        // We are device 0 of 2 at our site: even chunks are ours to bring over the WAN link.
        s.set_site_share(Some((0, 2)));
        join(&mut s, 0, &[4, 5], now);
        let _ = requests(&mut s, 0, now);
        join_from(&mut s, 1, &(4..12).collect::<Vec<_>>(), true, now);
        let asked = requests(&mut s, 1, now);
        assert_eq!(asked.len(), 2, "{asked:?}");
        assert!(asked.iter().all(|c| c % 2 == 0 && *c > 5), "our share, and not the LAN peer's chunks: {asked:?}");
        // The share is an order, not a bar: outside chunks no LAN peer holds are asked for too.
        let mut s = swarm(&[0, 1, 2, 3], 2);
        s.set_site_share(Some((0, 2)));
        join_from(&mut s, 1, &[5, 7, 9], true, now);
        let mut asked = requests(&mut s, 1, now);
        asked.sort();
        assert_eq!(asked.len(), 2, "{asked:?}");
        assert!(asked.iter().all(|c| [5, 7, 9].contains(c)), "{asked:?}");
    }

    #[test]
    fn nothing_is_asked_twice_before_the_endgame() {
        let now = Instant::now();
        let mut s = swarm(&[0, 1, 2, 3], 2);
        let all: Vec<u32> = (4..12).collect();
        for id in 0..4 {
            join(&mut s, id, &all, now);
        }
        let mut asked: Vec<u32> = (0..4).flat_map(|id| requests(&mut s, id, now)).collect();
        assert_eq!(asked.len(), 8, "four peers, two requests each");
        asked.sort();
        assert_eq!(asked, all, "every missing chunk asked for once");
        // A fifth peer finds everything in flight: it gets one endgame duplicate per chunk at most.
        join(&mut s, 4, &all, now);
        let dup = requests(&mut s, 4, now);
        assert_eq!(dup.len(), 2, "the endgame still fills its pipeline: {dup:?}");
        assert!(dup.iter().all(|c| all.contains(c)));
    }

    /// Sends every block peer `id` may have now; returns how many.
    fn send_blocks(s: &mut Swarm, id: PeerId, now: Instant) -> usize {
        let mut n = 0;
        while let Some(t) = s.poll_transmit(id, now, true) {
            n += matches!(t, Transmit::Block { .. }) as usize;
        }
        n
    }

    #[test]
    fn a_freed_upload_slot_goes_to_the_waiting_peer_with_the_rarest_chunk() {
        let now = Instant::now();
        let mut s = swarm(&(0..12).collect::<Vec<_>>(), 1);
        // Chunk 1 is held by two peers, chunk 2 by none: 2 is the rarer copy to hand out.
        join(&mut s, 0, &[1], now);
        join(&mut s, 1, &[], now);
        join(&mut s, 2, &[1], now);
        for (id, chunk) in [(0, 0), (1, 1), (2, 2)] {
            s.handle_message(id, &Message::Request(chunk), now).unwrap();
        }
        assert!(s.wants_block(0) && !s.wants_block(1) && !s.wants_block(2), "one slot, first come");
        assert_eq!(send_blocks(&mut s, 0, now), 1, "a 16 KiB chunk is one block");
        assert!(s.wants_block(2), "the slot went to the peer asking for the rarest chunk");
        assert!(!s.wants_block(1), "the other waits its turn");
        assert_eq!(send_blocks(&mut s, 2, now), 1);
        assert!(s.wants_block(1));
    }

    #[test]
    fn a_peer_that_finished_its_chunk_waits_behind_the_others() {
        let now = Instant::now();
        let mut s = swarm(&(0..12).collect::<Vec<_>>(), 1);
        join(&mut s, 0, &[], now);
        join(&mut s, 1, &[], now);
        s.handle_message(0, &Message::Request(0), now).unwrap();
        s.handle_message(0, &Message::Request(3), now).unwrap();
        s.handle_message(1, &Message::Request(4), now).unwrap();
        assert_eq!(send_blocks(&mut s, 0, now), 1, "one chunk per turn in the slot");
        assert!(s.wants_block(1) && !s.wants_block(0), "peer 0 rotates to the back");
        assert_eq!(send_blocks(&mut s, 1, now), 1);
        assert!(s.wants_block(0), "and gets the slot back for its second chunk");
    }

    #[test]
    fn a_peer_whose_chunk_is_common_is_not_starved_by_rarer_ones() {
        let t0 = Instant::now();
        let mut s = swarm(&(0..12).collect::<Vec<_>>(), 1);
        // Chunk 0 is held by all three peers: rarest-first would always serve it last.
        for id in 0..3 {
            join(&mut s, id, &[0], t0);
        }
        s.handle_message(1, &Message::Request(5), t0).unwrap();
        s.handle_message(0, &Message::Request(0), t0).unwrap();
        s.handle_message(2, &Message::Request(6), t0).unwrap();
        let patience = s.config.timeouts.request / 3;
        let mut now = t0;
        let mut rare = 7;
        // Peers 1 and 2 take turns, each asking for a chunk nobody has as its turn ends; until
        // peer 0 has waited its patience, their rarity wins.
        loop {
            let holder = (0..3).find(|&p| s.wants_block(p)).expect("someone holds the slot");
            assert_eq!(send_blocks(&mut s, holder, now), 1);
            if s.wants_block(0) {
                break;
            }
            assert!(now < t0 + patience, "peer 0 waited past its patience");
            now += Duration::from_secs(1);
            s.handle_message(holder, &Message::Request(rare), now).unwrap();
            rare = if rare == 11 { 5 } else { rare + 1 };
        }
        assert!(now >= t0 + patience, "rarer chunks went first while peer 0 could wait");
    }

    #[test]
    fn a_peer_is_dropped_for_two_stalls_in_a_row_not_for_two_in_its_life() {
        let t0 = Instant::now();
        let zero: Hash = Sha256::digest(vec![0u8; CHUNK as usize]).into();
        let mut s = swarm(&[0, 1, 2, 3], 2);
        s.hashes = vec![zero; 12];
        join(&mut s, 0, &(0..12).collect::<Vec<_>>(), t0);
        let stall = |s: &mut Swarm, now: &mut Instant| {
            let _ = requests(s, 0, *now);
            *now += s.config.timeouts.request;
            s.handle_timeout(*now);
        };
        // The peer acknowledges the cancelled requests, then sends the first live one whole.
        let answer = |s: &mut Swarm, now: Instant| {
            let _ = requests(s, 0, now);
            let cancelled: Vec<u32> =
                s.peers[0].as_ref().unwrap().requested.iter().filter(|r| r.cancelled).map(|r| r.chunk).collect();
            for c in cancelled {
                s.handle_message(0, &Message::Reject(c), now).unwrap();
            }
            let c = s.peers[0].as_ref().unwrap().requested.front().expect("a request outstanding").chunk;
            let block = Message::Block { chunk: c, offset: 0, data: Bytes(&[0; CHUNK as usize]) };
            match s.handle_message(0, &block, now).unwrap() {
                Received::Write { verdict: Some(Verdict::Good(got)), .. } => s.chunk_stored(0, got, now),
                other => panic!("a whole good chunk expected, got {other:?}"),
            }
        };
        let mut now = t0;
        for _ in 0..3 {
            stall(&mut s, &mut now);
            assert!(!s.peers[0].as_ref().unwrap().is_closing(), "one stall re-routes, no more");
            answer(&mut s, now);
        }
        stall(&mut s, &mut now);
        stall(&mut s, &mut now);
        assert!(s.peers[0].as_ref().unwrap().is_closing(), "two stalls in a row close it");
    }

    #[test]
    fn a_peer_list_yields_only_addresses_the_sender_may_name() {
        let now = Instant::now();
        let mut s = swarm(&[], 2);
        let lan_peer = "192.168.1.5:7070".parse().unwrap();
        assert!(s.add_peer(
            0,
            NewPeer { outbound: true, remote: Some(lan_peer), beyond_lan: false, nonce: [0; 16] },
            now
        ));
        let hello = Message::Hello { version: VERSION, swarm: [9; 32], listen_port: 0, node: 100, nonce: [0; 16] };
        s.handle_message(0, &hello, now).unwrap();
        let named = ["127.0.0.1:22", "169.254.0.1:80", "239.255.70.70:7071", "192.168.1.6:7070", "203.0.113.9:7070"];
        let mut list = Vec::new();
        for a in named {
            let mut entry = [0u8; PEER_ENTRY];
            wire::encode_peer(a.parse().unwrap(), &mut entry);
            list.extend_from_slice(&entry);
        }
        s.handle_message(0, &Message::Peers(Bytes(&list)), now).unwrap();
        let learnt: Vec<_> = std::iter::from_fn(|| s.poll_discovered()).map(|a| a.to_string()).collect();
        assert_eq!(learnt, ["192.168.1.6:7070", "203.0.113.9:7070"], "loopback, link-local and multicast refused");
    }

    #[test]
    fn a_peer_beyond_the_lan_is_not_told_the_lan_peers_addresses() {
        let now = Instant::now();
        let mut s = swarm(&[], 2);
        let hello = |node| Message::Hello { version: VERSION, swarm: [9; 32], listen_port: 0, node, nonce: [0; 16] };
        let peers = [("192.168.1.5:7070", false), ("203.0.113.9:7070", true), ("198.51.100.7:7070", true)];
        for (id, (addr, beyond_lan)) in peers.iter().enumerate() {
            let new = NewPeer {
                outbound: true,
                remote: Some(addr.parse().unwrap()),
                beyond_lan: *beyond_lan,
                nonce: [0; 16],
            };
            assert!(s.add_peer(id, new, now));
            s.handle_message(id, &hello(100 + id as u64), now).unwrap();
        }
        let told = |s: &mut Swarm, id| {
            let n = s.build_peer_list(id);
            let list: Vec<String> = wire::decode_peers(&s.pex_buf[..n]).unwrap().map(|a| a.to_string()).collect();
            list
        };
        assert_eq!(told(&mut s, 0), ["203.0.113.9:7070", "198.51.100.7:7070"], "a LAN peer hears of everyone");
        assert_eq!(told(&mut s, 1), ["198.51.100.7:7070"], "a WAN peer hears of no LAN peer");
    }

    #[test]
    fn five_hundred_named_peers_leave_at_most_the_discovered_cap() {
        let now = Instant::now();
        let mut s = swarm(&[], 2);
        let lan_peer = "192.168.1.5:7070".parse().unwrap();
        assert!(s.add_peer(
            0,
            NewPeer { outbound: true, remote: Some(lan_peer), beyond_lan: false, nonce: [0; 16] },
            now
        ));
        let hello = Message::Hello { version: VERSION, swarm: [9; 32], listen_port: 0, node: 100, nonce: [0; 16] };
        s.handle_message(0, &hello, now).unwrap();
        let mut named = 0u32;
        while named < 512 {
            let mut list = Vec::new();
            for _ in 0..MAX_PEX_PEERS {
                let mut entry = [0u8; PEER_ENTRY];
                wire::encode_peer(
                    std::net::SocketAddr::from(([192, 168, 2, (named % 250) as u8], 7000 + named as u16)),
                    &mut entry,
                );
                list.extend_from_slice(&entry);
                named += 1;
            }
            s.handle_message(0, &Message::Peers(Bytes(&list)), now).unwrap();
        }
        let learnt = std::iter::from_fn(|| s.poll_discovered()).count();
        assert_eq!(learnt, DISCOVERED_CAPACITY, "512 named, at most the cap kept until the caller takes them");
    }

    #[test]
    fn the_origin_takes_only_chunks_no_peer_is_fetching_and_a_peer_never_writes_its_chunk() {
        let now = Instant::now();
        // Hashes of zero-filled chunks, so that zeros from the "origin" verify.
        let zero: Hash = Sha256::digest(vec![0u8; CHUNK as usize]).into();
        let mut s = swarm(&[], 2);
        s.hashes = vec![zero; 12];
        join(&mut s, 0, &(0..12).collect::<Vec<_>>(), now);
        let asked = requests(&mut s, 0, now);
        assert_eq!(asked.len(), 2);
        let c = s.origin_take(None).expect("ten chunks nobody fetches");
        assert!(!asked.contains(&c), "the origin took {c}, which peer 0 is fetching");
        assert_eq!(s.origin_take(None), None, "one chunk at a time");
        // Fed in pieces, the chunk verifies at its last byte; one byte more is refused.
        assert_eq!(s.origin_data(&[0; 1000]), Ok((s.geometry().chunk_offset(c), None)));
        let rest = vec![0u8; CHUNK as usize - 1000];
        assert_eq!(s.origin_data(&[0; CHUNK as usize]), Err(OriginOverrun));
        assert_eq!(s.origin_data(&rest).map(|(_, v)| v), Ok(Some(Verdict::Good(c))));
        s.origin_stored(c, now);
        assert!(s.verified().get(c));
        // A chunk with a wrong byte is bad, counted and given back; an abandoned one goes back.
        let c2 = s.origin_take(None).unwrap();
        let mut wrong = vec![0u8; CHUNK as usize];
        wrong[7] = 1;
        assert_eq!(s.origin_data(&wrong).map(|(_, v)| v), Ok(Some(Verdict::Bad(c2))));
        assert!(!s.verified().get(c2) && s.stats.bad_chunks == 1);
        let c3 = s.origin_take(None).unwrap();
        s.origin_data(&[0; 10]).unwrap();
        s.origin_abandon(now);
        assert_eq!(s.in_flight[c3 as usize], 0, "given back");
        assert_eq!(s.stats.wasted, CHUNK as u64 + 10);
        // While the origin writes a chunk, a peer asked for it in the endgame does not write it.
        let c4 = s.origin_take(None).unwrap();
        s.in_flight[c4 as usize] += 1;
        let _ = s.peers[0].as_mut().unwrap().requested.push_front(Outstanding { chunk: c4, cancelled: false });
        s.claim_chunk(0, c4);
        assert!(s.peers[0].as_ref().unwrap().hasher.is_none(), "the peer's copy is discarded, not written");
        s.origin_abandon(now);
        // A device's share of its site: only chunks c with c % 3 == 1, until none is left.
        let mut taken = Vec::new();
        while let Some(c) = s.origin_take(Some((1, 3))) {
            taken.push(c);
            s.origin_abandon(now);
            s.in_flight[c as usize] += 1; // as if a LAN peer fetched it meanwhile
        }
        assert!(!taken.is_empty() && taken.iter().all(|c| c % 3 == 1), "{taken:?}");
        assert!(s.origin_take(None).is_some_and(|c| c % 3 != 1), "past the share, any chunk");
    }
}
