//! One release, whole: the swarm that trades its chunks and the storage that keeps them, glued
//! in one socket-free type that is the single owner of the release's chunk state.
//!
//! A chunk walks through here once: [`Release::handle_frame`] decodes a block, the swarm checks
//! it belongs to a request and hashes it, the release writes it, and only once the write of the
//! chunk's last block succeeded does the swarm count the chunk as ours. [`Release::handle_timeout`]
//! commits verified chunks in batches (at most every `commit_interval`, after `max_uncommitted`
//! chunks, or at once when the last one is in) and only then are they announced and served;
//! [`Release::poll_transmit`] encodes what the swarm wants sent, reading blocks from storage
//! straight into the caller's buffer. Everything the caller must act on leaves through
//! [`Release::poll_event`]: connections to close, peers learnt, completion, and storage
//! failures, each of which the release has already undone as far as its own state goes (a
//! chunk whose write failed is fetched again; a failed commit is retried).
//!
//! The agent drives it with a file store and real sockets; the simulator in `tests/protocol.rs`
//! drives the very same type with an in-memory store and a fake clock.

use crate::core::bitfield::Bitfield;
use crate::core::manifest::{SignedManifest, SwarmId};
use crate::core::session::CloseReason;
use crate::core::storage::{Storage, StoreError};
use crate::core::swarm::{NewPeer, OriginOverrun, PeerId, Received, Stats, Swarm, SwarmConfig, Transmit, Verdict};
use crate::core::wire::{self, Message};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Tunables of a release, fixed at start.
#[derive(Clone, Copy, Debug)]
pub struct ReleaseConfig {
    /// The swarm's tunables.
    pub swarm: SwarmConfig,
    /// Longest a verified chunk waits before it is made durable and announced.
    pub commit_interval: Duration,
    /// Verified chunks allowed to wait for a commit before one is forced: what a kill can lose
    /// beyond the chunks in flight, bounded in chunks as well as in time so a fast link does not
    /// pile up a large batch.
    pub max_uncommitted: u32,
}

impl Default for ReleaseConfig {
    fn default() -> Self {
        ReleaseConfig { swarm: SwarmConfig::default(), commit_interval: Duration::from_millis(100), max_uncommitted: 8 }
    }
}

/// What became of bytes from the HTTP origin ([`Release::origin_data`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OriginProgress {
    /// Taken; more of the chunk is to come.
    More,
    /// The chunk is whole, verified and written: the origin may take another.
    Stored(u32),
    /// The chunk is whole but failed verification: the origin lied (or the file changed).
    Bad(u32),
    /// More bytes than the chunk holds: nothing of them was taken, the chunk goes back.
    Overrun,
    /// The disk failed ([`Event::StorageFailed`] follows); the chunk goes back.
    StorageFailed,
}

/// Something the caller must act on.
#[derive(Debug)]
pub enum Event {
    /// Close the connection in slot `peer`; its session is already gone from the release.
    Closed {
        /// The connection slot.
        peer: PeerId,
        /// Why; [`CloseReason::is_offence`] says whether the peer misbehaved.
        reason: CloseReason,
    },
    /// An address learnt by peer exchange, to dial if the caller wants.
    PeerLearnt(SocketAddr),
    /// Every chunk is durable and the release is in place under its final name.
    Completed,
    /// The storage failed. The release has put back what it could not keep; whether to stop or
    /// set the release aside for a while is the caller's choice.
    StorageFailed(StoreError),
}

/// One release: its swarm, its storage, and when it last committed.
pub struct Release<S: Storage> {
    name: String,
    release: u64,
    expires: Option<u64>,
    rollout: Option<crate::core::manifest::Rollout>,
    swarm: Swarm,
    store: S,
    config: ReleaseConfig,
    last_commit: Instant,
    /// The first storage failure not yet reported.
    failure: Option<StoreError>,
    /// The last commit failed: the next waits a whole interval, so a broken disk is not hammered.
    retrying: bool,
    /// Set when the release completes, until reported.
    completed: bool,
}

impl<S: Storage> Release<S> {
    /// A release of `m` kept in `store`, which already holds the chunks in `present`. `seed`
    /// drives the swarm's random choices, so a simulation can replay a run exactly.
    pub fn new(
        m: &SignedManifest,
        store: S,
        present: &Bitfield,
        config: ReleaseConfig,
        seed: u64,
        now: Instant,
    ) -> Self {
        let swarm = Swarm::new(&m.manifest, m.swarm_id, present, config.swarm, seed);
        Release {
            name: m.manifest.name.clone(),
            release: m.manifest.release,
            expires: m.manifest.expires,
            rollout: m.manifest.rollout,
            swarm,
            store,
            config,
            last_commit: now,
            failure: None,
            retrying: false,
            completed: false,
        }
    }

    /// The release name from the manifest.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The release number from the manifest.
    pub fn number(&self) -> u64 {
        self.release
    }

    /// The staged-rollout window its manifest signs, if any.
    pub fn rollout(&self) -> Option<crate::core::manifest::Rollout> {
        self.rollout
    }

    /// When the manifest expires (Unix seconds), if ever.
    pub fn expires(&self) -> Option<u64> {
        self.expires
    }

    /// The swarm id (SHA-256 of the manifest's signed part).
    pub fn id(&self) -> &SwarmId {
        self.swarm.id()
    }

    /// Size of the release file in bytes.
    pub fn size(&self) -> u64 {
        self.swarm.geometry().file_size
    }

    /// The protocol state, for reading.
    pub fn swarm(&self) -> &Swarm {
        &self.swarm
    }

    /// The storage, for reading.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The storage, for a test that injects faults into it.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Byte counters.
    pub fn stats(&self) -> Stats {
        self.swarm.stats
    }

    /// True once every chunk is durable and the release is in place under its final name.
    pub fn is_complete(&self) -> bool {
        self.store.is_finished()
    }

    /// Bytes durably present.
    pub fn have_bytes(&self) -> u64 {
        self.swarm.have_bytes()
    }

    /// Sets the port announced in our Hello.
    pub fn set_listen_port(&mut self, port: u16) {
        self.swarm.set_listen_port(port);
    }

    /// Starts a session in slot `peer`, opened (dialled or accepted) at `opened_at`: the
    /// handshake must finish within the session's timeout of that instant.
    pub fn add_peer(&mut self, peer: PeerId, new: NewPeer, opened_at: Instant) -> bool {
        self.swarm.add_peer(peer, new, opened_at)
    }

    /// Ends the session in slot `peer` (the caller's connection went away).
    pub fn remove_peer(&mut self, peer: PeerId, now: Instant) {
        self.swarm.remove_peer(peer, now);
    }

    /// True while the session in slot `peer` takes messages (not closing, not gone).
    pub fn is_open(&self, peer: PeerId) -> bool {
        self.swarm.session(peer).is_some_and(|s| !s.is_closing())
    }

    /// Handles one whole frame from `peer` (as cut by [`wire::frame_len`]), checking its crc32 or,
    /// with a fleet channel, decrypting it in place. Returns false once the session is closing:
    /// the caller stops reading it, and [`Release::poll_event`] says why.
    pub fn handle_frame(&mut self, peer: PeerId, frame: &mut [u8], now: Instant) -> bool {
        let payload = match self.swarm.open_frame(peer, frame) {
            Ok(payload) => payload,
            Err(reason) => {
                self.swarm.close(peer, reason);
                return false;
            }
        };
        match wire::decode_message(payload) {
            Ok(msg) => self.handle_message(peer, &msg, now),
            Err(_) => {
                self.swarm.close(peer, CloseReason::Protocol("undecodable message"));
                false
            }
        }
    }

    /// Handles one decoded message from `peer`; see [`Release::handle_frame`].
    pub fn handle_message(&mut self, peer: PeerId, msg: &Message, now: Instant) -> bool {
        let Ok(Received::Write { offset, verdict }) = self.swarm.handle_message(peer, msg, now) else {
            return self.is_open(peer);
        };
        let Message::Block { chunk, data, .. } = msg else { return self.is_open(peer) };
        if let Some(Verdict::Bad(c)) = verdict {
            log::warn!("{}: chunk {c} failed verification; fetching it elsewhere", self.name);
            return self.is_open(peer);
        }
        match (self.store.write_at(offset, data.0), verdict) {
            (Ok(()), Some(Verdict::Good(c))) => self.swarm.chunk_stored(peer, c, now),
            (Ok(()), _) => {}
            // Losing the disk is not the peer's fault; nothing is counted ours that is not written.
            (Err(e), Some(Verdict::Good(c))) => {
                self.swarm.chunk_lost(c, now);
                self.fail(e);
            }
            (Err(e), _) => {
                self.swarm.abandon_chunk(peer, *chunk, now);
                self.fail(e);
            }
        }
        self.is_open(peer)
    }

    /// This device's share of its site's chunks (see [`Swarm::set_site_share`]).
    pub fn set_site_share(&mut self, share: Option<(u32, u32)>) {
        self.swarm.set_site_share(share);
    }

    /// Whether this device is reachable from outside (see [`Swarm::set_reachable`]).
    pub fn set_reachable(&mut self, reachable: bool) {
        self.swarm.set_reachable(reachable);
    }

    /// A chunk for the HTTP origin to fetch (see `core::swarm` origin.rs), of this device's
    /// `share` of its site's if given: its index, where it starts in the file and its length.
    /// None while the origin has one, or when peers are fetching everything missing.
    pub fn origin_take(&mut self, share: Option<(u32, u32)>) -> Option<(u32, u64, u32)> {
        let chunk = self.swarm.origin_take(share)?;
        let g = self.swarm.geometry();
        Some((chunk, g.chunk_offset(chunk), g.chunk_len(chunk)))
    }

    /// The next bytes of the origin's chunk, in order: verified with the rest of the chunk
    /// and written; see [`OriginProgress`].
    pub fn origin_data(&mut self, data: &[u8], now: Instant) -> OriginProgress {
        let (offset, verdict) = match self.swarm.origin_data(data) {
            Ok(x) => x,
            Err(OriginOverrun) => {
                self.swarm.origin_abandon(now);
                return OriginProgress::Overrun;
            }
        };
        if let Some(Verdict::Bad(c)) = verdict {
            log::warn!("{}: chunk {c} from the origin failed verification", self.name);
            return OriginProgress::Bad(c);
        }
        match (self.store.write_at(offset, data), verdict) {
            (Ok(()), Some(Verdict::Good(c))) => {
                self.swarm.origin_stored(c, now);
                OriginProgress::Stored(c)
            }
            (Ok(()), _) => OriginProgress::More,
            (Err(e), Some(Verdict::Good(c))) => {
                self.swarm.chunk_lost(c, now);
                self.fail(e);
                OriginProgress::StorageFailed
            }
            (Err(e), _) => {
                self.swarm.origin_abandon(now);
                self.fail(e);
                OriginProgress::StorageFailed
            }
        }
    }

    /// The origin failed before its chunk was whole: the chunk goes back to be fetched again.
    pub fn origin_abandon(&mut self, now: Instant) {
        self.swarm.origin_abandon(now);
    }

    /// Encodes the next frame for `peer` into `out` (which must hold [`wire::MAX_FRAME`]) and
    /// returns its length, or `None` if there is nothing to send. A block is only handed out if
    /// `blocks` is true (the caller's link can take one now), read from storage straight into
    /// `out`.
    pub fn poll_transmit(&mut self, peer: PeerId, now: Instant, blocks: bool, out: &mut [u8]) -> Option<usize> {
        let (len, hello) = match self.swarm.poll_transmit(peer, now, blocks)? {
            Transmit::Message(m) => (wire::encode_frame(&m, out).ok()?, matches!(m, Message::Hello { .. })),
            Transmit::Block { chunk, offset, len, file_offset } => {
                let start = wire::begin_block(chunk, offset, len, out).ok()?;
                let end = start + len as usize;
                if let Err(e) = self.store.read_at(file_offset, &mut out[start..end]) {
                    // The peer would see a gap in the chunk: end the session, not our honesty.
                    self.swarm.close(peer, CloseReason::LocalStorage);
                    self.fail(e);
                    return None;
                }
                wire::seal_frame(&mut out[..end]);
                (end, false)
            }
        };
        Some(self.swarm.seal_frame(peer, out, len, hello))
    }

    /// True if `peer` holds an upload slot and has asked for something: the caller should check
    /// whether its link can take a block.
    pub fn wants_block(&self, peer: PeerId) -> bool {
        self.swarm.wants_block(peer)
    }

    /// Advances the timers (handshakes, stalls, keepalives) and commits when a commit is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.swarm.poll_timeout(now).is_some_and(|t| t <= now) {
            self.swarm.handle_timeout(now);
        }
        if self.commit_due(now) {
            self.commit(now);
        }
    }

    /// When [`Release::handle_timeout`] should next be called.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let swarm = self.swarm.poll_timeout(now);
        let commit = self.has_uncommitted().then(|| self.commit_deadline());
        match (swarm, commit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next thing the caller must act on, if any.
    pub fn poll_event(&mut self, now: Instant) -> Option<Event> {
        if let Some(e) = self.failure.take() {
            return Some(Event::StorageFailed(e));
        }
        if std::mem::take(&mut self.completed) {
            return Some(Event::Completed);
        }
        if let Some((peer, reason)) = self.swarm.poll_closed(now) {
            return Some(Event::Closed { peer, reason });
        }
        self.swarm.poll_discovered().map(Event::PeerLearnt)
    }

    /// Verified chunks wait to be committed, or a finish is to be retried.
    fn has_uncommitted(&self) -> bool {
        self.swarm.uncommitted() > 0 || (self.swarm.is_complete() && !self.store.is_finished())
    }

    fn commit_deadline(&self) -> Instant {
        if self.retrying {
            return self.last_commit + self.config.commit_interval;
        }
        if self.swarm.uncommitted() >= self.config.max_uncommitted || self.swarm.all_verified() {
            return self.last_commit;
        }
        self.last_commit + self.config.commit_interval
    }

    fn commit_due(&self, now: Instant) -> bool {
        self.has_uncommitted() && now >= self.commit_deadline()
    }

    /// Makes the verified chunks durable, announces them, and puts the release in place once
    /// whole. On a failure nothing is counted durable that is not; the next commit retries.
    fn commit(&mut self, now: Instant) {
        self.last_commit = now;
        self.retrying = true;
        if self.swarm.uncommitted() > 0 {
            if let Err(e) = self.store.commit(self.swarm.verified()) {
                return self.fail(e);
            }
            self.swarm.commit_verified();
        }
        if self.swarm.is_complete() && !self.store.is_finished() {
            if let Err(e) = self.store.finish() {
                return self.fail(e);
            }
            self.completed = true;
        }
        self.retrying = false;
    }

    fn fail(&mut self, e: StoreError) {
        if self.failure.is_none() {
            self.failure = Some(e);
        }
    }
}
