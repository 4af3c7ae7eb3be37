//! Uploading: serving requests through a few upload slots, and a seed's spreading of
//! distinct chunks before any is repeated.
//!
//! Uploads are limited to a number of slots that rotate after each chunk, served block by
//! block; a freed slot goes to the waiting peer whose next chunk is rarest, unless a peer has
//! waited too long.

use super::*;

/// Initial seeding. A seed that advertised everything would let peers pick alike and upload
/// some chunks twice before others once, while the whole swarm waits for the ones not yet out;
/// the seed's upload is the scarcest resource there is. Instead it advertises an empty bitfield
/// and offers each peer, by `Have`, a couple of chunks nobody has yet; it offers more as those
/// finish uploading. Once every chunk is out (sent by us or held by some peer) it advertises
/// everything and the peers' rarest-first takes over.
pub(super) struct Spread {
    /// Chunks offered to some peer and not yet out.
    pub(super) offered: Bitfield,
    /// Chunks sent by us or held by a peer.
    pub(super) out: Bitfield,
    /// What a spreading seed advertises in its bitfield.
    pub(super) empty: Bitfield,
}

impl Spread {
    pub(super) fn new(chunks: u32) -> Self {
        Spread { offered: Bitfield::new(chunks), out: Bitfield::new(chunks), empty: Bitfield::new(chunks) }
    }

    /// A chunk not out and not offered to anyone, that `peer` lacks, scanning from `start`.
    pub(super) fn pick(&self, peer: &Session, start: u32) -> Option<u32> {
        let n = self.out.len();
        (0..n).map(|k| (start + k) % n).find(|&c| !self.out.get(c) && !self.offered.get(c) && !peer.bits.get(c))
    }

    pub(super) fn mark_out(&mut self, chunk: u32) {
        self.out.set(chunk);
        self.offered.clear(chunk);
    }
}

impl Swarm {
    pub(super) fn on_request(&mut self, id: PeerId, chunk: u32, now: Instant) -> Result<Received, CloseReason> {
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
            self.enqueue_upload(id, now);
        }
        self.offer(id);
        Ok(Received::Nothing)
    }

    /// True if peer `id` holds an upload slot and has asked for something: the caller should
    /// check whether its link can take a block.
    pub fn wants_block(&self, id: PeerId) -> bool {
        self.session(id).is_some_and(|s| !s.serving.is_empty()) && self.holds_upload_slot(id)
    }

    pub(super) fn holds_upload_slot(&self, id: PeerId) -> bool {
        self.upload_queue.iter().take(self.config.upload_slots).any(|&p| p == id)
    }

    /// The bitfield we show peers: everything, or nothing while spreading (offers go by Have).
    pub(super) fn advertised(&self) -> &[u8] {
        match &self.spread {
            Some(sp) => sp.empty.as_bytes(),
            None => self.have.as_bytes(),
        }
    }

    /// Tops up the chunks a spreading seed offers peer `id`; ends spreading once all are out.
    pub(super) fn offer(&mut self, id: PeerId) {
        let start = self.rng.below(self.chunk_count() as u64) as u32;
        let Some(sp) = self.spread.as_mut() else { return };
        let Some(s) = self.peers[id].as_mut().filter(|s| s.is_active() && s.got_bitfield) else { return };
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

    pub(super) fn poll_block(&mut self, id: PeerId, now: Instant) -> Option<Transmit<'static>> {
        if !self.holds_upload_slot(id) {
            return None;
        }
        let chunk = *self.session_mut(id).serving.front()?;
        let chunk_len = self.geometry.chunk_len(chunk);
        let offset = self.session_mut(id).serve_offset;
        let len = (chunk_len - offset).min(BLOCK_SIZE);
        if !self.upload_bucket.take(len as u64, now) {
            return None;
        }
        let s = self.session_mut(id);
        s.last_send = now;
        s.bytes_up += len as u64;
        s.last_data = now;
        s.serve_offset += len;
        let beyond_lan = s.beyond_lan;
        self.stats.uploaded += len as u64;
        if beyond_lan {
            self.stats.sent_wan += len as u64;
        }
        if offset + len == chunk_len {
            let s = self.session_mut(id);
            let _ = s.serving.pop_front();
            s.serve_offset = 0;
            self.rotate_upload_slot(id, now);
            if let Some(sp) = self.spread.as_mut() {
                sp.mark_out(chunk);
                self.offer(id);
            }
        }
        let file_offset = self.geometry.chunk_offset(chunk) + offset as u64;
        Some(Transmit::Block { chunk, offset, len, file_offset })
    }

    /// After a whole chunk, a peer gives its slot up. The slot goes to the waiting peer whose
    /// next chunk is rarest among our peers: that copy spreads furthest. The peer that just had
    /// its turn waits at the back. Rarity must not starve anyone: a peer that has waited a third
    /// of the request timeout goes first (the longest-waiting of them), so a busy uploader's
    /// queue never looks to its peers like a stall.
    pub(super) fn rotate_upload_slot(&mut self, id: PeerId, now: Instant) {
        self.upload_queue.retain(|&p| p != id);
        let first_waiting = self.config.upload_slots.saturating_sub(1);
        let patience = self.config.timeouts.request / 3;
        let waited =
            |p: PeerId| self.peers[p].as_ref().map_or(Duration::ZERO, |s| now.saturating_duration_since(s.queued_at));
        let starved = (first_waiting..self.upload_queue.len())
            .filter(|&i| waited(self.upload_queue[i]) >= patience)
            .max_by_key(|&i| (waited(self.upload_queue[i]), std::cmp::Reverse(i)));
        let next = starved.or_else(|| {
            (first_waiting..self.upload_queue.len()).min_by_key(|&i| {
                let head = self.peers[self.upload_queue[i]].as_ref().and_then(|s| s.serving.front().copied());
                (head.map_or(u16::MAX, |c| self.availability.holders(c)), i)
            })
        });
        if let Some(i) = next.filter(|&i| i != first_waiting) {
            let p = self.upload_queue.remove(i);
            self.upload_queue.insert(first_waiting, p);
        }
        if !self.session_mut(id).serving.is_empty() {
            self.enqueue_upload(id, now);
        }
    }

    /// Puts peer `id` at the back of the upload queue, its wait starting now.
    fn enqueue_upload(&mut self, id: PeerId, now: Instant) {
        self.session_mut(id).queued_at = now;
        self.upload_queue.push(id);
    }

    pub(super) fn drop_from_upload_queue_if_idle(&mut self, id: PeerId) {
        if self.session_mut(id).serving.is_empty() {
            self.upload_queue.retain(|&p| p != id);
        }
    }
}
