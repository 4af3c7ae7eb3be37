//! Downloading: which chunk to ask whom, receiving blocks, and what a finished chunk means.
//!
//! A few random chunks first so a newcomer soon has something to trade, then rarest first
//! with ties broken by a random starting point; a pipeline of requests per peer sized in bytes;
//! duplicates of in-flight chunks only once nothing else is left (endgame). A chunk counts as
//! ours only after its hash checked *and* its last block was written ([`Swarm::chunk_stored`]):
//! a failed write puts it back to be fetched again.

use super::choice::{self, ChunkView, PeerPlace};
use super::*;

impl Swarm {
    pub(super) fn on_bitfield(&mut self, id: PeerId, bytes: &[u8], now: Instant) -> Result<Received, CloseReason> {
        let s = self.peers[id].as_mut().expect("session present");
        for c in s.bits.iter_ones() {
            self.availability.remove(c, s.beyond_lan);
        }
        if s.bits.copy_from_bytes(bytes).is_err() {
            s.bits = Bitfield::new(self.hashes.len() as u32);
            return Err(CloseReason::Protocol("bad bitfield"));
        }
        s.got_bitfield = true;
        for c in s.bits.iter_ones() {
            self.availability.add(c, s.beyond_lan);
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

    pub(super) fn on_have(&mut self, id: PeerId, chunk: u32, now: Instant) -> Result<Received, CloseReason> {
        if chunk >= self.chunk_count() {
            return Err(CloseReason::Protocol("have for a chunk out of range"));
        }
        let s = self.session_mut(id);
        if s.bits.set(chunk) {
            let beyond_lan = s.beyond_lan;
            self.availability.add(chunk, beyond_lan);
            if let Some(sp) = self.spread.as_mut() {
                sp.mark_out(chunk);
            }
            self.fill_requests(id, now);
            self.offer(id);
        }
        Ok(Received::Nothing)
    }

    pub(super) fn on_reject(&mut self, id: PeerId, chunk: u32, now: Instant) -> Result<Received, CloseReason> {
        let s = self.session_mut(id);
        let Some(r) = s.remove_request(chunk) else {
            return Ok(Received::Nothing);
        };
        s.progress_at = now;
        self.restart_head_clock(id, now);
        let s = self.session_mut(id);
        if r.cancelled {
            // The acknowledgement of our Cancel frees a pipeline place.
            self.fill_requests(id, now);
            return Ok(Received::Nothing);
        }
        // A refusal for a chunk it advertised: believe the refusal, not the advertisement.
        let (had, beyond_lan) = (s.bits.clear(chunk), s.beyond_lan);
        if had {
            self.availability.remove(chunk, beyond_lan);
        }
        self.in_flight[chunk as usize] -= 1;
        self.fill_all(now);
        Ok(Received::Nothing)
    }

    pub(super) fn on_block(
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
        let chunk_len = self.geometry.chunk_len(chunk);
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
                self.restart_head_clock(id, now);
                self.fill_requests(id, now);
            }
            return Ok(Received::Nothing);
        };
        hasher.update(data);
        s.bytes_down += data.len() as u64;
        s.last_data = now;
        let beyond_lan = s.beyond_lan;
        self.stats.downloaded += data.len() as u64;
        if beyond_lan {
            self.stats.received_wan += data.len() as u64;
        }
        let file_offset = self.geometry.chunk_offset(chunk) + offset as u64;
        let verdict = if finished { Some(self.complete_chunk(id, head, now)?) } else { None };
        if finished {
            self.restart_head_clock(id, now);
        }
        Ok(Received::Write { offset: file_offset, verdict })
    }

    /// Starts writing `chunk` from this peer, unless another peer is already writing it: two
    /// writers of one region could leave a liar's bytes on disk under an honest peer's hash.
    pub(super) fn claim_chunk(&mut self, id: PeerId, chunk: u32) {
        let taken = self.origin_chunk() == Some(chunk)
            || self.peers.iter().enumerate().any(|(p, s)| {
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

    /// Starts the clock of the front request (if any): it must be whole by
    /// `request + chunk_len / min_chunk_rate` from now.
    pub(super) fn restart_head_clock(&mut self, id: PeerId, now: Instant) {
        let t = self.config.timeouts;
        let Some(s) = self.peers.get_mut(id).and_then(Option::as_mut) else { return };
        s.head_deadline = s.requested.front().map(|r| {
            let len = self.geometry.chunk_len(r.chunk) as u64;
            now + t.request + Duration::from_millis(len * 1000 / t.min_chunk_rate.max(1) as u64)
        });
    }

    /// Pops the front request once its last block is in.
    pub(super) fn finish_head(&mut self, id: PeerId, head: Outstanding) {
        let s = self.session_mut(id);
        let _ = s.requested.pop_front();
        s.recv_offset = 0;
        s.hasher = None;
        if !head.cancelled {
            self.in_flight[head.chunk as usize] -= 1;
        }
    }

    pub(super) fn complete_chunk(
        &mut self,
        id: PeerId,
        head: Outstanding,
        now: Instant,
    ) -> Result<Verdict, CloseReason> {
        let chunk = head.chunk;
        let digest: Hash = self.session_mut(id).hasher.take().map(|h| h.finalize().into()).unwrap_or_default();
        self.finish_head(id, head);
        if digest == self.hashes[chunk as usize] {
            // Not verified yet: that waits for the caller's write of this last block
            // (`chunk_stored`), so a failed write leaves the chunk to be fetched again.
            return Ok(Verdict::Good(chunk));
        }
        self.stats.bad_chunks += 1;
        self.stats.discard(self.geometry.chunk_len(chunk) as u64);
        let s = self.session_mut(id);
        s.bad_chunks += 1;
        if s.bits.clear(chunk) {
            let beyond_lan = s.beyond_lan;
            self.availability.remove(chunk, beyond_lan);
        }
        if self.session_mut(id).bad_chunks >= 2 {
            return Err(CloseReason::BadData);
        }
        self.fill_all(now);
        Ok(Verdict::Bad(chunk))
    }

    pub(super) fn cancel_duplicates(&mut self, chunk: u32) {
        for s in self.peers.iter_mut().flatten() {
            if s.cancel_request(chunk) {
                self.in_flight[chunk as usize] -= 1;
            }
        }
    }

    /// The caller wrote the last block of `chunk`, whose hash checked (`Verdict::Good`): the
    /// chunk is ours, waiting to be committed. Duplicate requests for it are cancelled.
    pub fn chunk_stored(&mut self, id: PeerId, chunk: u32, now: Instant) {
        self.verified.set(chunk);
        self.cancel_duplicates(chunk);
        if let Some(s) = self.peers.get_mut(id).and_then(Option::as_mut) {
            s.stalls = 0;
            self.fill_requests(id, now);
        }
    }

    /// The caller could not write the last block of `chunk` (its hash had checked): the chunk
    /// is not ours after all and goes back to be fetched again.
    pub fn chunk_lost(&mut self, chunk: u32, now: Instant) {
        self.stats.discard(self.geometry.chunk_len(chunk) as u64);
        self.fill_all(now);
    }

    /// The caller could not write a block of `chunk` from peer `id` before its last: the rest
    /// of the chunk is discarded as it arrives, the request is cancelled, and the chunk goes
    /// back to be fetched again.
    pub fn abandon_chunk(&mut self, id: PeerId, chunk: u32, now: Instant) {
        let Some(s) = self.peers.get_mut(id).and_then(Option::as_mut) else { return };
        let received = if s.requested.front().is_some_and(|r| r.chunk == chunk) { s.recv_offset } else { 0 };
        if s.cancel_request(chunk) {
            self.in_flight[chunk as usize] -= 1;
        }
        self.stats.discard(received as u64);
        self.fill_all(now);
    }

    /// Chunks stored and verified, committed or not: what the caller makes durable next.
    pub fn verified(&self) -> &Bitfield {
        &self.verified
    }

    /// Verified chunks not yet committed.
    pub fn uncommitted(&self) -> u32 {
        self.verified.count() - self.have.count()
    }

    /// Records that every verified chunk is now durable: they may be served and are announced.
    pub fn commit_verified(&mut self) {
        for chunk in 0..self.chunk_count() {
            if self.verified.get(chunk) && !self.have.get(chunk) {
                self.chunk_committed(chunk);
            }
        }
    }

    /// Records that a verified chunk is now durable: it may be served and is announced.
    fn chunk_committed(&mut self, chunk: u32) {
        if !self.have.set(chunk) {
            return;
        }
        self.verified.set(chunk);
        let complete = self.have.is_full();
        for s in self.peers.iter_mut().flatten().filter(|s| s.is_active()) {
            s.push_control(Control::Have(chunk));
            // Two seeds have nothing to trade; free the slot for someone who needs it.
            if complete && s.bits.is_full() {
                s.close(CloseReason::BothComplete);
            }
        }
    }

    /// Requests to keep outstanding per peer.
    pub(super) fn pipeline_len(&self) -> usize {
        ((self.config.pipeline_bytes / self.geometry.chunk_size) as usize).clamp(2, MAX_REQUESTS)
    }

    pub(super) fn fill_all(&mut self, now: Instant) {
        for id in 0..self.peers.len() {
            if self.peers[id].is_some() {
                self.fill_requests(id, now);
            }
        }
    }

    pub(super) fn fill_requests(&mut self, id: PeerId, now: Instant) {
        let target = self.pipeline_len();
        loop {
            let s = self.session_mut(id);
            if !s.is_active()
                || !s.got_bitfield
                || s.live_requests() >= target
                || s.requested.is_full()
                || s.control.is_full()
            {
                return;
            }
            let want = self.geometry.chunk_size as u64;
            if !self.download_bucket.take(want, now) {
                return;
            }
            let Some(chunk) = self.pick_chunk(id) else {
                self.download_bucket.refund(want);
                return;
            };
            self.download_bucket.refund(want - self.geometry.chunk_len(chunk) as u64);
            let s = self.session_mut(id);
            let was_empty = s.requested.is_empty();
            let clock_stopped = s.head_deadline.is_none();
            if was_empty {
                s.progress_at = now;
            }
            // Cannot fail: checked not full above.
            let _ = s.requested.push_back(Outstanding { chunk, cancelled: false });
            if was_empty || clock_stopped {
                self.restart_head_clock(id, now);
            }
            let s = self.session_mut(id);
            s.push_control(Control::Request(chunk));
            self.in_flight[chunk as usize] += 1;
        }
    }

    /// The chunk to ask peer `id` for next, if any ([`choice::pick_chunk`] over our state).
    pub(super) fn pick_chunk(&mut self, id: PeerId) -> Option<u32> {
        let start = self.rng.below(self.chunk_count() as u64) as u32;
        let peer = self.peers[id].as_ref()?;
        let place = PeerPlace { beyond_lan: peer.beyond_lan, site_share: self.site_share };
        let view =
            SwarmView { verified: &self.verified, in_flight: &self.in_flight, availability: &self.availability, peer };
        choice::pick_chunk(&view, place, start)
    }
}

/// The swarm's state as the chunk choice reads it, for one peer.
struct SwarmView<'a> {
    verified: &'a Bitfield,
    in_flight: &'a [u8],
    availability: &'a Availability,
    peer: &'a Session,
}

impl ChunkView for SwarmView<'_> {
    fn chunk_count(&self) -> u32 {
        self.verified.len()
    }
    fn have_count(&self) -> u32 {
        self.verified.count()
    }
    fn have(&self, chunk: u32) -> bool {
        self.verified.get(chunk)
    }
    fn in_flight(&self, chunk: u32) -> u8 {
        self.in_flight[chunk as usize]
    }
    fn holders(&self, chunk: u32) -> u16 {
        self.availability.holders(chunk)
    }
    fn lan_holders(&self, chunk: u32) -> u16 {
        self.availability.lan_holders(chunk)
    }
    fn peer_offers(&self, chunk: u32) -> bool {
        self.peer.bits.get(chunk)
    }
    fn asked_of_peer(&self, chunk: u32) -> bool {
        self.peer.requested.iter().any(|r| r.chunk == chunk)
    }
}
