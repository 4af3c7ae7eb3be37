//! The choice of the next chunk to ask a peer for, as a pure function of what the downloader
//! knows. The swarm calls it with its own state; the fleet simulator (`src/sim`) calls it with a
//! simulated device's, so the simulator runs the agent's policy instead of a copy of it.

/// Chunks picked at random before rarest-first takes over.
pub const RANDOM_FIRST: u32 = 4;
/// Most requests for one chunk in flight at once (2 = one endgame duplicate).
pub const MAX_DUPLICATES: u8 = 2;

/// What the choice reads: the downloader's chunks and what it knows of one peer.
pub trait ChunkView {
    fn chunk_count(&self) -> u32;
    /// Chunks we hold, verified.
    fn have_count(&self) -> u32;
    fn have(&self, chunk: u32) -> bool;
    /// Requests for the chunk in flight, to any peer.
    fn in_flight(&self, chunk: u32) -> u8;
    /// Peers known to hold it, and how many of them are on our LAN.
    fn holders(&self, chunk: u32) -> u16;
    fn lan_holders(&self, chunk: u32) -> u16;
    /// The peer would give it to us (it holds it; a spreading seed: it offers it to us).
    fn peer_offers(&self, chunk: u32) -> bool;
    /// We asked this peer for it already.
    fn asked_of_peer(&self, chunk: u32) -> bool;
}

/// Where the peer stands to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerPlace {
    /// Beyond our LAN: what it sends crosses the site's WAN link.
    pub beyond_lan: bool,
    /// Our site share, `(rank, of)`: the chunks `c % of == rank` are ours to bring over the WAN.
    pub site_share: Option<(u32, u32)>,
}

impl PeerPlace {
    fn outside_share(&self, chunk: u32) -> bool {
        self.beyond_lan && self.site_share.is_some_and(|(rank, of)| chunk % of.max(1) != rank)
    }

    /// The peer may be asked for `chunk`, whatever is in flight: it offers it, and from beyond
    /// the LAN only a chunk no LAN peer holds (that one comes over the LAN).
    pub fn may_ask(&self, view: &impl ChunkView, chunk: u32) -> bool {
        view.peer_offers(chunk) && !(self.beyond_lan && view.lan_holders(chunk) > 0)
    }
}

/// The chunk to ask the peer for next, if any, scanning from `start` (drawn at random by the
/// caller, so that peers spread over equally good chunks). The first few at random, then the
/// rarest, our site share's before the others; when everything missing is in flight, a
/// duplicate of a request this peer could answer (the endgame).
pub fn pick_chunk(view: &impl ChunkView, place: PeerPlace, start: u32) -> Option<u32> {
    let n = view.chunk_count();
    let random_first = view.have_count() < RANDOM_FIRST;
    let mut best: Option<((bool, u16), u32)> = None;
    let mut unrequested_left = false;
    for k in 0..n {
        let c = (start + k) % n;
        if view.have(c) || view.in_flight(c) > 0 {
            continue;
        }
        unrequested_left = true;
        if !place.may_ask(view, c) {
            continue;
        }
        let rank = (place.outside_share(c), view.holders(c));
        if random_first && !rank.0 {
            return Some(c);
        }
        if best.is_none_or(|(b, _)| rank < b) {
            best = Some((rank, c));
            // This peer has it, so no chunk it can give us is rarer: stop scanning.
            if rank <= (false, 1) {
                break;
            }
        }
    }
    if best.is_some() || unrequested_left {
        return best.map(|(_, c)| c);
    }
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&c| !view.have(c) && view.peer_offers(c) && view.in_flight(c) < MAX_DUPLICATES && !view.asked_of_peer(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A downloader of `n` chunks with plain vectors for its state.
    struct Plain {
        have: Vec<bool>,
        in_flight: Vec<u8>,
        holders: Vec<u16>,
        lan_holders: Vec<u16>,
        offers: Vec<bool>,
        asked: Vec<bool>,
    }

    impl Plain {
        fn new(n: usize) -> Plain {
            Plain {
                have: vec![false; n],
                in_flight: vec![0; n],
                holders: vec![3; n],
                lan_holders: vec![0; n],
                offers: vec![true; n],
                asked: vec![false; n],
            }
        }
        /// Past the random start: RANDOM_FIRST chunks held (the last ones).
        fn past_random(mut self) -> Plain {
            let n = self.have.len();
            for c in n - RANDOM_FIRST as usize..n {
                self.have[c] = true;
                self.offers[c] = false;
            }
            self
        }
    }

    impl ChunkView for Plain {
        fn chunk_count(&self) -> u32 {
            self.have.len() as u32
        }
        fn have_count(&self) -> u32 {
            self.have.iter().filter(|&&h| h).count() as u32
        }
        fn have(&self, c: u32) -> bool {
            self.have[c as usize]
        }
        fn in_flight(&self, c: u32) -> u8 {
            self.in_flight[c as usize]
        }
        fn holders(&self, c: u32) -> u16 {
            self.holders[c as usize]
        }
        fn lan_holders(&self, c: u32) -> u16 {
            self.lan_holders[c as usize]
        }
        fn peer_offers(&self, c: u32) -> bool {
            self.offers[c as usize]
        }
        fn asked_of_peer(&self, c: u32) -> bool {
            self.asked[c as usize]
        }
    }

    const LAN: PeerPlace = PeerPlace { beyond_lan: false, site_share: None };
    const WAN: PeerPlace = PeerPlace { beyond_lan: true, site_share: None };

    #[test]
    fn the_rarest_chunk_the_peer_has_wins_from_any_start() {
        let mut v = Plain::new(12).past_random();
        v.holders[5] = 1;
        v.holders[2] = 2;
        for start in 0..12 {
            assert_eq!(pick_chunk(&v, LAN, start), Some(5), "start {start}");
        }
        v.offers[5] = false;
        assert_eq!(pick_chunk(&v, LAN, 0), Some(2));
    }

    #[test]
    fn a_newcomer_takes_the_first_chunk_it_meets() {
        let mut v = Plain::new(12);
        v.holders[5] = 1;
        assert_eq!(pick_chunk(&v, LAN, 7), Some(7), "random first, not rarest");
    }

    #[test]
    fn over_the_wan_never_a_chunk_a_lan_peer_holds_and_our_share_first() {
        let mut v = Plain::new(12).past_random();
        v.lan_holders[3] = 1;
        v.holders[3] = 1;
        assert_ne!(pick_chunk(&v, WAN, 3), Some(3));
        assert_eq!(pick_chunk(&v, LAN, 3), Some(3), "a LAN peer may give it");
        // Share 1 of 4: chunks 1, 5, 9 are ours to bring in, even when another is rarer.
        let share = PeerPlace { beyond_lan: true, site_share: Some((1, 4)) };
        v.holders[0] = 1;
        assert_eq!(pick_chunk(&v, share, 0).map(|c| c % 4), Some(1));
    }

    #[test]
    fn the_endgame_duplicates_only_what_this_peer_was_not_asked() {
        let mut v = Plain::new(6).past_random();
        v.in_flight[0] = 1;
        v.in_flight[1] = 1;
        v.asked[0] = true;
        assert_eq!(pick_chunk(&v, LAN, 0), Some(1), "everything missing is in flight: a duplicate");
        v.in_flight[1] = MAX_DUPLICATES;
        assert_eq!(pick_chunk(&v, LAN, 0), None, "no third request, none to the peer asked already");
    }
}
