//! Peer exchange: telling peers about each other, and taking the addresses they tell us.

use super::*;

impl Swarm {
    /// True if an active session leads to the agent listening on `addr`.
    pub fn is_connected_to(&self, addr: std::net::SocketAddr) -> bool {
        self.peers.iter().flatten().any(|s| s.listen_addr == Some(addr))
    }

    /// Takes an address learnt by peer exchange, for the caller to dial if it wants.
    pub fn poll_discovered(&mut self) -> Option<std::net::SocketAddr> {
        self.discovered.pop_front()
    }

    /// Takes a peer list from the active session `id`: only addresses that peer may name to us
    /// (`core::scope::may_name`), so a lying peer cannot aim our dials at loopback, a private
    /// range from outside, or anything it likes from a LAN.
    pub(super) fn on_peers(&mut self, id: PeerId, bytes: &[u8]) -> Result<Received, CloseReason> {
        let addrs = wire::decode_peers(bytes).ok_or(CloseReason::Protocol("bad peer list"))?;
        let Some(sender) = self.session(id).and_then(|s| s.remote).map(|r| r.ip()) else {
            return Ok(Received::Nothing);
        };
        for a in addrs.filter(|&a| crate::core::scope::may_name(sender, a)) {
            if self.discovered.is_full() {
                break;
            }
            let _ = self.discovered.push_back(a);
        }
        Ok(Received::Nothing)
    }

    /// Fills `pex_buf` with the listen addresses of our active peers other than `id`. A peer
    /// beyond our LAN is not told our LAN peers' addresses: behind our NAT it cannot reach them,
    /// and each would cost it a dial that never answers.
    pub(super) fn build_peer_list(&mut self, id: PeerId) -> usize {
        let mut n = 0;
        let to_beyond = self.peers.get(id).and_then(Option::as_ref).is_some_and(|s| s.beyond_lan);
        for (p, s) in self.peers.iter().enumerate() {
            let told = |s: &&Session| s.is_active() && p != id && (s.beyond_lan || !to_beyond);
            let Some(addr) = s.as_ref().filter(told).and_then(|s| s.listen_addr) else {
                continue;
            };
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
}
