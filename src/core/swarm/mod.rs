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

use crate::core::bitfield::Bitfield;
use crate::core::manifest::{Hash, Manifest, SwarmId};
use crate::core::rate::TokenBucket;
use crate::core::session::{CloseReason, Control, Outstanding, Session, Timeouts, MAX_REQUESTS};
use crate::core::wire::{self, Bytes, Message, BLOCK_SIZE, MAX_PEX_PEERS, PEER_ENTRY, VERSION};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

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
    pub fleet_key: Option<crate::core::auth::FleetKey>,
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
            fleet_key: None,
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
/// Chunks picked at random before rarest-first takes over.
const RANDOM_FIRST: u32 = 4;
/// Most requests for one chunk in flight at once (2 = one endgame duplicate).
const MAX_DUPLICATES: u8 = 2;

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

/// Initial seeding. A seed that advertised everything would let peers pick alike and upload
/// some chunks twice before others once, while the whole swarm waits for the ones not yet out;
/// the seed's upload is the scarcest resource there is. Instead it advertises an empty bitfield
/// and offers each peer, by `Have`, a couple of chunks nobody has yet; it offers more as those
/// finish uploading. Once every chunk is out (sent by us or held by some peer) it advertises
/// everything and the peers' rarest-first takes over.
struct Spread {
    /// Chunks offered to some peer and not yet out.
    offered: Bitfield,
    /// Chunks sent by us or held by a peer.
    out: Bitfield,
    /// What a spreading seed advertises in its bitfield.
    empty: Bitfield,
}

impl Spread {
    fn new(chunks: u32) -> Self {
        Spread { offered: Bitfield::new(chunks), out: Bitfield::new(chunks), empty: Bitfield::new(chunks) }
    }

    /// A chunk not out and not offered to anyone, that `peer` lacks, scanning from `start`.
    fn pick(&self, peer: &Session, start: u32) -> Option<u32> {
        let n = self.out.len();
        (0..n).map(|k| (start + k) % n).find(|&c| !self.out.get(c) && !self.offered.get(c) && !peer.bits.get(c))
    }

    fn mark_out(&mut self, chunk: u32) {
        self.out.set(chunk);
        self.offered.clear(chunk);
    }
}

/// Protocol state of one release.
pub struct Swarm {
    id: SwarmId,
    file_size: u64,
    chunk_size: u32,
    hashes: Vec<Hash>,
    /// Chunks durable on disk and announced.
    have: Bitfield,
    /// Chunks whose hash checked, durable or not yet; never requested again.
    verified: Bitfield,
    /// How many connected peers have each chunk.
    availability: Vec<u16>,
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
    rng: u64,
    /// Useful bytes received, bytes sent, bytes received and thrown away.
    pub stats: Stats,
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
}

impl Swarm {
    /// A swarm for `manifest` whose id is `id`, with the chunks in `have` already on disk.
    /// `seed` drives the random choices, so a test can replay a run exactly.
    pub fn new(manifest: &Manifest, id: SwarmId, have: &Bitfield, config: SwarmConfig, seed: u64) -> Self {
        let n = manifest.chunk_count() as usize;
        Swarm {
            id,
            file_size: manifest.file_size,
            chunk_size: manifest.chunk_size,
            hashes: manifest.chunk_hashes.clone(),
            have: have.clone(),
            verified: have.clone(),
            availability: vec![0; n],
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
            rng: seed | 1,
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

    /// Bytes of the release durable on disk.
    pub fn have_bytes(&self) -> u64 {
        let full = self.have.count() as u64 * self.chunk_size as u64;
        let last = self.chunk_count() - 1;
        let short = if self.have.get(last) { self.chunk_size as u64 - self.chunk_len(last) as u64 } else { 0 };
        full - short
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

    /// Peers whose handshake is done.
    pub fn active_peers(&self) -> usize {
        self.peers.iter().flatten().filter(|s| s.active).count()
    }

    fn chunk_len(&self, chunk: u32) -> u32 {
        let start = chunk as u64 * self.chunk_size as u64;
        (self.file_size - start).min(self.chunk_size as u64) as u32
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for spreading choices, and reproducible from the seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Starts a session in slot `id`. An outbound session sends its Hello at once; an inbound one
    /// waits for the peer's. Returns false if the slot is out of range or taken.
    pub fn add_peer(&mut self, id: PeerId, outbound: bool, remote: Option<std::net::SocketAddr>, now: Instant) -> bool {
        let chunks = self.chunk_count();
        if !matches!(self.peers.get(id), Some(None)) {
            return false;
        }
        let mut nonce = [0u8; crate::core::auth::NONCE_LEN];
        nonce[..8].copy_from_slice(&self.next_random().to_le_bytes());
        nonce[8..].copy_from_slice(&self.next_random().to_le_bytes());
        let Some(slot @ None) = self.peers.get_mut(id) else {
            return false;
        };
        let mut s = Session::new(chunks, outbound, remote, now);
        s.nonce = nonce;
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
            self.availability[c as usize] -= 1;
        }
        if let Some(sp) = self.spread.as_mut() {
            // Offers it never received go back to the pool.
            for &c in &s.offered {
                sp.offered.clear(c);
            }
        }
        if s.hasher.is_some() {
            // The chunk being written from this peer is abandoned half-way.
            self.stats.downloaded -= s.recv_offset as u64;
            self.stats.wasted += s.recv_offset as u64;
        }
        for r in s.requested.iter().filter(|r| !r.cancelled) {
            self.in_flight[r.chunk as usize] -= 1;
        }
        self.upload_queue.retain(|&p| p != id);
        self.fill_all(now);
    }

    /// Takes the reason the session in slot `id` must be closed, if it must.
    pub fn poll_close(&mut self, id: PeerId) -> Option<CloseReason> {
        self.peers.get_mut(id)?.as_mut()?.close.take()
    }

    /// Handles one message from the peer in slot `id`. An `Err` means: close the connection.
    pub fn handle_message(&mut self, id: PeerId, msg: &Message, now: Instant) -> Result<Received, CloseReason> {
        let s = self.peers.get_mut(id).and_then(Option::as_mut).ok_or(CloseReason::Protocol("no session"))?;
        s.last_recv = now;
        if !s.active {
            return self.on_hello(id, msg, now).map(|()| Received::Nothing);
        }
        match *msg {
            Message::Hello { .. } => Err(CloseReason::Protocol("second hello")),
            Message::Refuse(r) => Err(CloseReason::Refused(r)),
            Message::Bitfield(Bytes(bytes)) => self.on_bitfield(id, bytes, now),
            Message::Have(c) => self.on_have(id, c, now),
            Message::Request(c) => self.on_request(id, c),
            Message::Cancel(c) => {
                self.session_mut(id).withdraw_serving(c);
                self.drop_from_upload_queue_if_idle(id);
                Ok(Received::Nothing)
            }
            Message::Reject(c) => self.on_reject(id, c, now),
            Message::Block { chunk, offset, data } => self.on_block(id, chunk, offset, data.0, now),
            Message::KeepAlive => Ok(Received::Nothing),
            Message::Peers(Bytes(b)) => self.on_peers(b),
            Message::Auth(_) if self.config.fleet_key.is_none() => {
                Err(CloseReason::Protocol("the peer requires a fleet secret (--fleet-secret)"))
            }
            Message::Auth(_) => Err(CloseReason::Protocol("fleet proof after the handshake")),
        }
    }

    fn session_mut(&mut self, id: PeerId) -> &mut Session {
        // Callers have checked the slot is occupied.
        self.peers[id].as_mut().expect("session present")
    }

    fn on_hello(&mut self, id: PeerId, msg: &Message, now: Instant) -> Result<(), CloseReason> {
        if self.session_mut(id).hello_seen {
            return self.on_auth(id, msg, now);
        }
        let Message::Hello { version, swarm, listen_port, node, nonce } = *msg else {
            return match *msg {
                Message::Refuse(r) => Err(CloseReason::Refused(r)),
                _ => Err(CloseReason::Protocol("message before hello")),
            };
        };
        if version != VERSION {
            // Another release of Flotilla, not an attacker: a fleet mid-upgrade must not ban.
            return Err(CloseReason::Refused(crate::core::wire::RefuseReason::UnsupportedVersion));
        }
        if swarm != self.id {
            return Err(CloseReason::Protocol("hello for another swarm"));
        }
        if node == self.config.node {
            return Err(CloseReason::SelfConnection);
        }
        if self.resolve_duplicate(id, node) {
            return Err(CloseReason::Duplicate);
        }
        let s = self.session_mut(id);
        s.hello_seen = true;
        s.node = node;
        s.peer_nonce = nonce;
        if !s.outbound && listen_port != 0 {
            s.listen_addr = s.remote.map(|r| std::net::SocketAddr::new(r.ip(), listen_port));
        }
        if !s.outbound {
            s.push_control(Control::Hello);
        }
        if self.config.fleet_key.is_some() {
            self.session_mut(id).push_control(Control::Auth);
            return Ok(());
        }
        self.activate(id, now);
        Ok(())
    }

    /// With a fleet secret: the peer's proof must be the next message, and must check.
    fn on_auth(&mut self, id: PeerId, msg: &Message, now: Instant) -> Result<(), CloseReason> {
        let Message::Auth(theirs) = *msg else {
            return Err(CloseReason::Protocol("message before the fleet proof"));
        };
        let Some(expected) = self.proof(id, false) else {
            return Err(CloseReason::Protocol("unexpected fleet proof"));
        };
        if !crate::core::auth::proofs_equal(&theirs, &expected) {
            return Err(CloseReason::Protocol("wrong fleet proof"));
        }
        self.activate(id, now);
        Ok(())
    }

    /// The fleet proof on connection `id`: ours if `mine`, else the one the peer must send.
    fn proof(&self, id: PeerId, mine: bool) -> Option<[u8; 32]> {
        use crate::core::auth::{Role, Transcript};
        let key = self.config.fleet_key.as_ref()?;
        let s = self.session(id)?;
        let (us, them) = ((self.config.node, &s.nonce), (s.node, &s.peer_nonce));
        let ((dialler_node, dialler_nonce), (acceptor_node, acceptor_nonce)) =
            if s.outbound { (us, them) } else { (them, us) };
        let t = Transcript { swarm: &self.id, dialler_node, acceptor_node, dialler_nonce, acceptor_nonce };
        let role = if s.outbound == mine { Role::Dialler } else { Role::Acceptor };
        Some(crate::core::auth::proof(key, role, &t))
    }

    /// The handshake is complete: the session joins the swarm.
    fn activate(&mut self, id: PeerId, now: Instant) {
        let s = self.session_mut(id);
        s.active = true;
        s.pex_at = now;
        s.progress_at = now;
        s.push_control(Control::Bitfield);
        for (p, other) in self.peers.iter_mut().enumerate() {
            if let Some(o) = other.as_mut().filter(|o| o.active && p != id) {
                o.pex_at = o.pex_at.min(now + PEX_SOON);
            }
        }
    }

    /// Settles two connections to one agent: both ends keep the one dialled by the lower node
    /// number. Returns true if connection `id` (whose Hello names `node`) is the one to close;
    /// otherwise an older duplicate, if any, is marked to be closed instead.
    fn resolve_duplicate(&mut self, id: PeerId, node: u64) -> bool {
        let me = self.config.node;
        let dialler = |s: &Session, peer: u64| if s.outbound { me } else { peer };
        let Some(mine) = self.peers[id].as_ref().map(|s| dialler(s, node)) else { return false };
        for (p, s) in self.peers.iter_mut().enumerate() {
            let Some(s) = s.as_mut().filter(|s| p != id && s.active && s.node == node) else { continue };
            if dialler(s, s.node) <= mine {
                return true;
            }
            s.close.get_or_insert(CloseReason::Duplicate);
        }
        false
    }

    /// True if an active session leads to the agent listening on `addr`.
    pub fn is_connected_to(&self, addr: std::net::SocketAddr) -> bool {
        self.peers.iter().flatten().any(|s| s.listen_addr == Some(addr))
    }

    /// Takes an address learnt by peer exchange, for the caller to dial if it wants.
    pub fn poll_discovered(&mut self) -> Option<std::net::SocketAddr> {
        self.discovered.pop_front()
    }

    fn on_peers(&mut self, bytes: &[u8]) -> Result<Received, CloseReason> {
        let addrs = wire::decode_peers(bytes).ok_or(CloseReason::Protocol("bad peer list"))?;
        for a in addrs.filter(|a| a.port() != 0 && !a.ip().is_unspecified()) {
            if self.discovered.is_full() {
                break;
            }
            let _ = self.discovered.push_back(a);
        }
        Ok(Received::Nothing)
    }

    /// Fills `pex_buf` with the listen addresses of our active peers other than `id`.
    fn build_peer_list(&mut self, id: PeerId) -> usize {
        let mut n = 0;
        for (p, s) in self.peers.iter().enumerate() {
            let Some(addr) = s.as_ref().filter(|s| s.active && p != id).and_then(|s| s.listen_addr) else { continue };
            if n == MAX_PEX_PEERS {
                break;
            }
            let entry: &mut [u8; PEER_ENTRY] =
                (&mut self.pex_buf[n * PEER_ENTRY..(n + 1) * PEER_ENTRY]).try_into().expect("entry size");
            wire::encode_peer(addr, entry);
            n += 1;
        }
        n * PEER_ENTRY
    }

    fn on_bitfield(&mut self, id: PeerId, bytes: &[u8], now: Instant) -> Result<Received, CloseReason> {
        let s = self.peers[id].as_mut().expect("session present");
        for c in s.bits.iter_ones() {
            self.availability[c as usize] -= 1;
        }
        if s.bits.copy_from_bytes(bytes).is_err() {
            s.bits = Bitfield::new(self.hashes.len() as u32);
            return Err(CloseReason::Protocol("bad bitfield"));
        }
        s.got_bitfield = true;
        for c in s.bits.iter_ones() {
            self.availability[c as usize] += 1;
            if let Some(sp) = self.spread.as_mut() {
                sp.mark_out(c);
            }
        }
        if s.bits.is_full() && self.have.is_full() {
            return Err(CloseReason::BothComplete);
        }
        self.fill_requests(id, now);
        self.offer(id);
        Ok(Received::Nothing)
    }

    fn on_have(&mut self, id: PeerId, chunk: u32, now: Instant) -> Result<Received, CloseReason> {
        if chunk >= self.chunk_count() {
            return Err(CloseReason::Protocol("have for a chunk out of range"));
        }
        if self.session_mut(id).bits.set(chunk) {
            self.availability[chunk as usize] += 1;
            if let Some(sp) = self.spread.as_mut() {
                sp.mark_out(chunk);
            }
            self.fill_requests(id, now);
            self.offer(id);
        }
        Ok(Received::Nothing)
    }

    fn on_request(&mut self, id: PeerId, chunk: u32) -> Result<Received, CloseReason> {
        if chunk >= self.chunk_count() {
            return Err(CloseReason::Protocol("request for a chunk out of range"));
        }
        let have = self.have.get(chunk);
        let s = self.session_mut(id);
        if !have {
            s.push_control(Control::Reject(chunk));
            return Ok(Received::Nothing);
        }
        if s.serving.push_back(chunk).is_err() {
            return Err(CloseReason::Protocol("too many requests"));
        }
        if !self.upload_queue.contains(&id) {
            self.upload_queue.push(id);
        }
        self.offer(id);
        Ok(Received::Nothing)
    }

    fn on_reject(&mut self, id: PeerId, chunk: u32, now: Instant) -> Result<Received, CloseReason> {
        let s = self.session_mut(id);
        let Some(r) = s.remove_request(chunk) else {
            return Ok(Received::Nothing);
        };
        s.progress_at = now;
        if r.cancelled {
            // The acknowledgement of our Cancel frees a pipeline place.
            self.fill_requests(id, now);
            return Ok(Received::Nothing);
        }
        // A refusal for a chunk it advertised: believe the refusal, not the advertisement.
        let had = s.bits.clear(chunk);
        if had {
            self.availability[chunk as usize] -= 1;
        }
        self.in_flight[chunk as usize] -= 1;
        self.fill_all(now);
        Ok(Received::Nothing)
    }

    fn on_block(
        &mut self,
        id: PeerId,
        chunk: u32,
        offset: u32,
        data: &[u8],
        now: Instant,
    ) -> Result<Received, CloseReason> {
        let head = match self.session_mut(id).requested.front() {
            Some(r) if r.chunk == chunk => *r,
            _ => return Err(CloseReason::Protocol("block for a chunk not requested")),
        };
        let chunk_len = self.chunk_len(chunk);
        let s = self.session_mut(id);
        let expected = (chunk_len - s.recv_offset).min(BLOCK_SIZE);
        if offset != s.recv_offset || data.len() as u32 != expected {
            return Err(CloseReason::Protocol("block out of order or of the wrong size"));
        }
        s.progress_at = now;
        if offset == 0 && !head.cancelled {
            self.claim_chunk(id, chunk);
        }
        let s = self.session_mut(id);
        s.recv_offset += expected;
        let finished = s.recv_offset == chunk_len;
        let Some(hasher) = s.hasher.as_mut() else {
            self.stats.wasted += data.len() as u64;
            if finished {
                self.finish_head(id, head);
                self.fill_requests(id, now);
            }
            return Ok(Received::Nothing);
        };
        hasher.update(data);
        s.bytes_down += data.len() as u64;
        self.stats.downloaded += data.len() as u64;
        let file_offset = chunk as u64 * self.chunk_size as u64 + offset as u64;
        let verdict = if finished { Some(self.complete_chunk(id, head, now)?) } else { None };
        Ok(Received::Write { offset: file_offset, verdict })
    }

    /// Starts writing `chunk` from this peer, unless another peer is already writing it: two
    /// writers of one region could leave a liar's bytes on disk under an honest peer's hash.
    fn claim_chunk(&mut self, id: PeerId, chunk: u32) {
        let taken = self.peers.iter().enumerate().any(|(p, s)| {
            p != id
                && s.as_ref()
                    .is_some_and(|s| s.hasher.is_some() && s.requested.front().is_some_and(|r| r.chunk == chunk))
        });
        if taken || self.verified.get(chunk) {
            if self.session_mut(id).cancel_request(chunk) {
                self.in_flight[chunk as usize] -= 1;
            }
        } else {
            self.session_mut(id).hasher = Some(Sha256::new());
        }
    }

    /// Pops the front request once its last block is in.
    fn finish_head(&mut self, id: PeerId, head: Outstanding) {
        let s = self.session_mut(id);
        let _ = s.requested.pop_front();
        s.recv_offset = 0;
        s.hasher = None;
        if !head.cancelled {
            self.in_flight[head.chunk as usize] -= 1;
        }
    }

    fn complete_chunk(&mut self, id: PeerId, head: Outstanding, now: Instant) -> Result<Verdict, CloseReason> {
        let chunk = head.chunk;
        let digest: Hash = self.session_mut(id).hasher.take().map(|h| h.finalize().into()).unwrap_or_default();
        self.finish_head(id, head);
        if digest == self.hashes[chunk as usize] {
            self.verified.set(chunk);
            self.cancel_duplicates(chunk);
            self.fill_requests(id, now);
            return Ok(Verdict::Good(chunk));
        }
        self.stats.bad_chunks += 1;
        self.stats.downloaded -= self.chunk_len(chunk) as u64;
        self.stats.wasted += self.chunk_len(chunk) as u64;
        let s = self.session_mut(id);
        s.bad_chunks += 1;
        if s.bits.clear(chunk) {
            self.availability[chunk as usize] -= 1;
        }
        if self.session_mut(id).bad_chunks >= 2 {
            return Err(CloseReason::BadData);
        }
        self.fill_all(now);
        Ok(Verdict::Bad(chunk))
    }

    fn cancel_duplicates(&mut self, chunk: u32) {
        for s in self.peers.iter_mut().flatten() {
            if s.cancel_request(chunk) {
                self.in_flight[chunk as usize] -= 1;
            }
        }
    }

    /// Records that a verified chunk is now durable: it may be served and is announced.
    pub fn chunk_committed(&mut self, chunk: u32) {
        if !self.have.set(chunk) {
            return;
        }
        self.verified.set(chunk);
        let complete = self.have.is_full();
        for s in self.peers.iter_mut().flatten().filter(|s| s.active) {
            s.push_control(Control::Have(chunk));
            // Two seeds have nothing to trade; free the slot for someone who needs it.
            if complete && s.bits.is_full() && s.close.is_none() {
                s.close = Some(CloseReason::BothComplete);
            }
        }
    }

    /// Requests to keep outstanding per peer.
    fn pipeline_len(&self) -> usize {
        ((self.config.pipeline_bytes / self.chunk_size) as usize).clamp(2, MAX_REQUESTS)
    }

    fn fill_all(&mut self, now: Instant) {
        for id in 0..self.peers.len() {
            if self.peers[id].is_some() {
                self.fill_requests(id, now);
            }
        }
    }

    fn fill_requests(&mut self, id: PeerId, now: Instant) {
        let target = self.pipeline_len();
        loop {
            let s = self.session_mut(id);
            if !s.active
                || !s.got_bitfield
                || s.live_requests() >= target
                || s.requested.is_full()
                || s.control.is_full()
            {
                return;
            }
            let want = self.chunk_size as u64;
            if !self.download_bucket.take(want, now) {
                return;
            }
            let Some(chunk) = self.pick_chunk(id) else {
                self.download_bucket.refund(want);
                return;
            };
            self.download_bucket.refund(want - self.chunk_len(chunk) as u64);
            let s = self.session_mut(id);
            if s.requested.is_empty() {
                s.progress_at = now;
            }
            // Cannot fail: checked not full above.
            let _ = s.requested.push_back(Outstanding { chunk, cancelled: false });
            s.push_control(Control::Request(chunk));
            self.in_flight[chunk as usize] += 1;
        }
    }

    /// Chooses the next chunk to ask peer `id` for, or none.
    fn pick_chunk(&mut self, id: PeerId) -> Option<u32> {
        let n = self.chunk_count();
        let start = (self.next_random() % n as u64) as u32;
        let random_first = self.verified.count() < RANDOM_FIRST;
        let s = self.peers[id].as_ref()?;
        let mut best: Option<(u16, u32)> = None;
        let mut unrequested_left = false;
        for k in 0..n {
            let c = (start + k) % n;
            if self.verified.get(c) || self.in_flight[c as usize] > 0 {
                continue;
            }
            unrequested_left = true;
            if !s.bits.get(c) {
                continue;
            }
            if random_first {
                return Some(c);
            }
            let a = self.availability[c as usize];
            if best.is_none_or(|(b, _)| a < b) {
                best = Some((a, c));
                // This peer has it, so no chunk it can give us is rarer: stop scanning.
                if a <= 1 {
                    break;
                }
            }
        }
        if best.is_some() || unrequested_left {
            return best.map(|(_, c)| c);
        }
        // Endgame: everything missing is in flight; duplicate a request this peer could answer.
        (0..n).map(|k| (start + k) % n).find(|&c| {
            !self.verified.get(c)
                && s.bits.get(c)
                && self.in_flight[c as usize] < MAX_DUPLICATES
                && !s.requested.iter().any(|r| r.chunk == c)
        })
    }

    /// True if peer `id` holds an upload slot and has asked for something: the caller should
    /// check whether its link can take a block.
    pub fn wants_block(&self, id: PeerId) -> bool {
        self.session(id).is_some_and(|s| !s.serving.is_empty()) && self.holds_upload_slot(id)
    }

    fn holds_upload_slot(&self, id: PeerId) -> bool {
        self.upload_queue.iter().take(self.config.upload_slots).any(|&p| p == id)
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
        if s.resend_bitfield && s.active {
            s.resend_bitfield = false;
            s.last_send = now;
            return Some(Transmit::Message(Message::Bitfield(Bytes(self.advertised()))));
        }
        if !blocks {
            return None;
        }
        self.poll_block(id, now)
    }

    /// The bitfield we show peers: everything, or nothing while spreading (offers go by Have).
    fn advertised(&self) -> &[u8] {
        match &self.spread {
            Some(sp) => sp.empty.as_bytes(),
            None => self.have.as_bytes(),
        }
    }

    /// Tops up the chunks a spreading seed offers peer `id`; ends spreading once all are out.
    fn offer(&mut self, id: PeerId) {
        let start = (self.next_random() % self.chunk_count() as u64) as u32;
        let Some(sp) = self.spread.as_mut() else { return };
        let Some(s) = self.peers[id].as_mut().filter(|s| s.active && s.got_bitfield) else { return };
        let out = &sp.out;
        s.offered.retain(|&c| !out.get(c));
        while s.offered.len() < OFFERS_PER_PEER {
            let Some(c) = sp.pick(s, start) else { break };
            // An offer must not be folded into a bitfield resend: that would show it nothing.
            if s.control.push_back(Control::Have(c)).is_err() {
                break;
            }
            sp.offered.set(c);
            let _ = s.offered.push(c);
        }
        if sp.out.is_full() {
            self.spread = None;
            for s in self.peers.iter_mut().flatten() {
                s.offered.clear();
                s.resend_bitfield = true;
            }
        }
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
        }
    }

    fn poll_block(&mut self, id: PeerId, now: Instant) -> Option<Transmit<'static>> {
        if !self.holds_upload_slot(id) {
            return None;
        }
        let chunk = *self.session_mut(id).serving.front()?;
        let chunk_len = self.chunk_len(chunk);
        let offset = self.session_mut(id).serve_offset;
        let len = (chunk_len - offset).min(BLOCK_SIZE);
        if !self.upload_bucket.take(len as u64, now) {
            return None;
        }
        let s = self.session_mut(id);
        s.last_send = now;
        s.bytes_up += len as u64;
        s.serve_offset += len;
        self.stats.uploaded += len as u64;
        if offset + len == chunk_len {
            let s = self.session_mut(id);
            let _ = s.serving.pop_front();
            s.serve_offset = 0;
            self.rotate_upload_slot(id);
            if let Some(sp) = self.spread.as_mut() {
                sp.mark_out(chunk);
                self.offer(id);
            }
        }
        let file_offset = chunk as u64 * self.chunk_size as u64 + offset as u64;
        Some(Transmit::Block { chunk, offset, len, file_offset })
    }

    /// After a whole chunk, a peer gives its slot to the next waiting one (if any wait).
    /// After a whole chunk, a peer gives its slot up. The slot goes to the waiting peer whose
    /// next chunk is rarest among our peers: that copy spreads furthest. The peer that just had
    /// its turn waits at the back.
    fn rotate_upload_slot(&mut self, id: PeerId) {
        self.upload_queue.retain(|&p| p != id);
        let first_waiting = self.config.upload_slots.saturating_sub(1);
        let rarest = (first_waiting..self.upload_queue.len()).min_by_key(|&i| {
            let head = self.peers[self.upload_queue[i]].as_ref().and_then(|s| s.serving.front().copied());
            (head.map_or(u16::MAX, |c| self.availability[c as usize]), i)
        });
        if let Some(i) = rarest.filter(|&i| i != first_waiting) {
            let p = self.upload_queue.remove(i);
            self.upload_queue.insert(first_waiting, p);
        }
        if !self.session_mut(id).serving.is_empty() {
            self.upload_queue.push(id);
        }
    }

    fn drop_from_upload_queue_if_idle(&mut self, id: PeerId) {
        if self.session_mut(id).serving.is_empty() {
            self.upload_queue.retain(|&p| p != id);
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
            if s.close.is_some() {
                continue;
            }
            if !s.active && now >= s.connected_at + t.handshake {
                s.close = Some(CloseReason::HandshakeTimeout);
            } else if now >= s.last_recv + t.idle {
                s.close = Some(CloseReason::Idle);
            } else if s.live_requests() > 0 && now >= s.progress_at + t.request {
                // Re-route: the chunks go back to the pool; a second stall closes the peer.
                let chunks: heapless::Vec<u32, MAX_REQUESTS> = s.requested.iter().map(|r| r.chunk).collect();
                for chunk in chunks {
                    if s.cancel_request(chunk) {
                        self.in_flight[chunk as usize] -= 1;
                    }
                }
                s.stalls += 1;
                s.progress_at = now;
                if s.stalls >= 2 {
                    s.close = Some(CloseReason::Stalled);
                }
            }
            if s.active && now >= s.pex_at {
                s.pex_at = now + PEX_INTERVAL;
                s.push_control(Control::Peers);
            }
            if s.active && now >= s.last_send + t.keepalive && s.control.is_empty() {
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
        if self.download_bucket.is_short(self.chunk_size as u64) && !self.all_verified() {
            let next_request = self.download_bucket.ready_at(self.chunk_size as u64, now);
            bucket = Some(bucket.map_or(next_request, |b| b.min(next_request)));
        }
        match (timers, bucket) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
