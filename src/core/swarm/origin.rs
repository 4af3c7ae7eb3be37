//! The HTTP origin as a source of last resort: it fetches one chunk at a time, a chunk no peer
//! is fetching, claimed exactly as a peer's would be, so that a peer and the origin never write
//! the same region, and every byte from it is verified against the manifest like a peer's.
//!
//! The caller (the agent's HTTP client) asks for a chunk ([`Swarm::origin_take`]), hands its
//! bytes over in order as they arrive ([`Swarm::origin_data`]), and gives it back if the server
//! fails ([`Swarm::origin_abandon`]). A chunk whose hash does not check is counted as bad, and
//! the next chunk asked for is another one: a lying origin wastes one chunk per try.

use super::*;

/// The chunk being fetched from the origin.
pub(super) struct OriginChunk {
    pub(super) chunk: u32,
    received: u32,
    hasher: Sha256,
}

/// Bytes from the origin that do not fit the chunk being fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginOverrun;

impl Swarm {
    /// A chunk for the origin to fetch, marked in flight: missing and asked of no peer, and with
    /// `share = Some((rank, of))` one of this device's share of the release among the `of`
    /// devices of its site (`chunk % of == rank`), so that the site's devices fetch disjoint
    /// chunks over their common WAN link and trade them on the LAN. None while the origin has
    /// one already, or when nothing of the share is left that peers are not fetching.
    pub fn origin_take(&mut self, share: Option<(u32, u32)>) -> Option<u32> {
        if self.origin.is_some() {
            return None;
        }
        let n = self.chunk_count();
        let start = self.rng.below(n as u64) as u32;
        let ours = |c: u32| share.is_none_or(|(rank, of)| c % of.max(1) == rank);
        let chunk = (0..n)
            .map(|k| (start + k) % n)
            .find(|&c| ours(c) && !self.verified.get(c) && self.in_flight[c as usize] == 0)?;
        self.in_flight[chunk as usize] += 1;
        self.origin = Some(OriginChunk { chunk, received: 0, hasher: Sha256::new() });
        Some(chunk)
    }

    /// The origin's chunk, if one is being fetched.
    pub fn origin_chunk(&self) -> Option<u32> {
        self.origin.as_ref().map(|o| o.chunk)
    }

    /// The next `data` of the origin's chunk, in order. Returns where in the file it goes and,
    /// at its last byte, the verdict (a good chunk is ours once the caller wrote it:
    /// [`Swarm::origin_stored`]). More bytes than the chunk holds are an error, and nothing of
    /// them is taken.
    pub fn origin_data(&mut self, data: &[u8]) -> Result<(u64, Option<Verdict>), OriginOverrun> {
        let Some(o) = self.origin.as_mut() else { return Err(OriginOverrun) };
        let len = self.geometry.chunk_len(o.chunk);
        if data.len() as u64 > (len - o.received) as u64 {
            return Err(OriginOverrun);
        }
        let file_offset = self.geometry.chunk_offset(o.chunk) + o.received as u64;
        o.hasher.update(data);
        o.received += data.len() as u32;
        self.stats.downloaded += data.len() as u64;
        self.stats.received_origin += data.len() as u64;
        if o.received < len {
            return Ok((file_offset, None));
        }
        let o = self.origin.take().expect("checked above");
        self.in_flight[o.chunk as usize] -= 1;
        let digest: Hash = o.hasher.finalize().into();
        if digest == self.hashes[o.chunk as usize] {
            return Ok((file_offset, Some(Verdict::Good(o.chunk))));
        }
        self.stats.bad_chunks += 1;
        self.stats.discard(len as u64);
        Ok((file_offset, Some(Verdict::Bad(o.chunk))))
    }

    /// The caller wrote the origin's good chunk: it is ours, waiting to be committed.
    pub fn origin_stored(&mut self, chunk: u32, now: Instant) {
        self.verified.set(chunk);
        self.cancel_duplicates(chunk);
        self.fill_all(now);
    }

    /// The origin failed in the middle of its chunk (or the caller could not write it): what
    /// it received is discarded and the chunk goes back to be fetched from anyone.
    pub fn origin_abandon(&mut self, now: Instant) {
        let Some(o) = self.origin.take() else { return };
        self.in_flight[o.chunk as usize] -= 1;
        self.stats.discard(o.received as u64);
        self.fill_all(now);
    }
}
