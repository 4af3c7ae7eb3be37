//! Where a device stands in its site, from its connections: its share of the site's chunks
//! (what it fetches over the WAN link, from the origin or from peers beyond the LAN), and
//! whether it is reachable from outside or reaches a peer that is.

use super::Agent;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// How often each release is told its site share.
const SHARE_REFRESH: Duration = Duration::from_secs(1);
/// Connections a site's dialler keeps to peers beyond its LAN that it learnt (from trackers or
/// peer exchange): a site needs one copy over its WAN link, and a super-peer's slots are few,
/// so the site's first device by address dials for it and the others fetch over the LAN.
pub(super) const WAN_PEERS: usize = 2;
/// How long a site waits for a reachable peer that said it is full before it takes the
/// release from the origin: longer than the longest redial back-off, so that a site refused
/// at each try keeps waiting while the super-peer lives.
pub(super) const BUSY_WAIT: Duration = Duration::from_secs(60);
/// How long a device leaves the origin to peers beyond its LAN (a super-peer, the tree) that
/// deliver nothing, counted from its last new chunk or the end of the origin delay: a peer
/// that claims to be the tree's root, or a super-peer that serves no one, then costs this
/// delay, not the release.
pub(super) const PEER_PATIENCE: Duration = Duration::from_secs(60);
/// How long a LAN peer's "behind" announcement counts: three announcement intervals, so one
/// lost datagram does not send the site to the origin, and a peer that lost its super-peer
/// stops counting soon.
pub(super) const HEARD_BEHIND_FOR: Duration = Duration::from_secs(15);

impl Agent {
    /// Where this device stands for release `r`, from its active connections. Without a LAN
    /// (no discovery, or not listening on an IPv4 address) it knows no site: no share.
    pub(super) fn site_view(&self, r: usize) -> SiteView {
        let h = &self.releases[r];
        let now = Instant::now();
        let mut view = SiteView {
            share: None,
            reachable: false,
            behind: false,
            tree_behind: h.release.swarm().behind_in_tree(),
            waiting: h.refused_busy_until.is_some_and(|t| now < t),
            wan_delivering: now < h.progress[0].1 + PEER_PATIENCE,
            peers_delivering: now < h.progress[1].1 + PEER_PATIENCE,
        };
        let Some(me) = self.lan_ip() else { return view };
        let mut site = Vec::new();
        for c in self.conns.iter().flatten().filter(|c| c.release == Some(r) && !c.connecting && c.was_active()) {
            match (c.beyond_lan, c.outbound(), c.addr.ip()) {
                (false, _, IpAddr::V4(ip)) if ip != me => site.push(ip),
                (false, _, _) => {}
                // Someone beyond our links dialled us: we are reachable from outside.
                (true, false, _) => view.reachable = true,
                // We reached a peer beyond our links: it is reachable, and serves us.
                (true, true, _) => view.behind = true,
            }
        }
        site.sort_unstable();
        site.dedup();
        view.share = rank_by_address(me, site.into_iter());
        view
    }

    /// Whether this device leaves release `r`'s origin to peers beyond its LAN
    /// ([`SiteView::leaves_origin`], with what its LAN said lately).
    pub(super) fn leaves_origin_to_peers(&self, r: usize, now: Instant) -> bool {
        let heard = self.releases[r].heard_behind_until.is_some_and(|t| now < t);
        self.site_view(r).leaves_origin(heard)
    }

    /// Whether this device dials, for release `r`, learnt peers beyond its LAN: a device with
    /// no site (no LAN peer) dials as many as its slots allow; in a site, the first device by
    /// address, or a reachable one (the tree), keeps [`WAN_PEERS`] of them (dialling or up).
    pub(super) fn dials_beyond_lan(&self, r: usize) -> bool {
        let view = self.site_view(r);
        let Some((rank, _)) = view.share else { return true };
        let dialled = self.conns.iter().flatten().filter(|c| c.release == Some(r) && c.outbound() && c.beyond_lan);
        (rank == 0 || view.reachable) && dialled.count() < WAN_PEERS
    }

    /// This device's turn among the LAN neighbours heard lately, for polling the origin (none
    /// without a LAN, or when it heard no one).
    pub(super) fn poll_turn(&self, now: Instant) -> Option<(u32, u32)> {
        let me = self.lan_ip()?;
        self.lan.as_ref()?.neighbours.turn(me, now)
    }

    /// Our IPv4 address on the LAN, which ranks us in the site: the one we listen on, or, under
    /// 0.0.0.0, the source of our own announcement as it looped back. None without a LAN.
    fn lan_ip(&self) -> Option<Ipv4Addr> {
        let lan = self.lan.as_ref()?;
        match self.local {
            Some(SocketAddr::V4(a)) if !a.ip().is_unspecified() => Some(*a.ip()),
            _ => lan.own_ip,
        }
    }

    /// Tells each release (about once a second) its share of its site, what it asks of peers
    /// beyond the LAN first, and whether it is reachable (its part in the tree).
    pub(super) fn refresh_site_shares(&mut self, now: Instant) {
        if now < self.shares_at {
            return;
        }
        self.shares_at = now + SHARE_REFRESH;
        let mut announce = false;
        for r in 0..self.releases.len() {
            let h = &mut self.releases[r];
            for (p, bytes) in h.progress.iter_mut().zip(peer_bytes(&h.release.stats())) {
                if p.0 != bytes {
                    *p = (bytes, p.1.max(now));
                }
            }
            let view = self.site_view(r);
            let h = &mut self.releases[r];
            h.release.set_site_share(view.share);
            h.release.set_reachable(view.reachable);
            // A site-mate that hears "behind" only at our next announcement (5 s) would have
            // taken its share from the origin by then: say it now.
            let behind = !h.release.is_complete() && view.fetches_behind();
            announce |= behind && !h.said_behind;
            h.said_behind = behind;
        }
        if let Some(lan) = self.lan.as_mut().filter(|_| announce) {
            lan.schedule.announce_now(now);
        }
    }
}

/// What a device's connections say about its site, for one release.
pub(super) struct SiteView {
    /// Its share of its site's chunks, `(rank, of)`, by IPv4 address order among the LAN peers
    /// it is connected to; none when it knows no LAN peer.
    pub(super) share: Option<(u32, u32)>,
    /// Peers beyond its links dialled it.
    pub(super) reachable: bool,
    /// It dialled a peer beyond its links.
    pub(super) behind: bool,
    /// It is reachable and another is the root of its tree.
    pub(super) tree_behind: bool,
    /// A reachable peer it dialled said it is full, lately: it waits for a slot there.
    pub(super) waiting: bool,
    /// Peers beyond its LAN, and peers at all (not the origin), sent it block bytes within
    /// [`PEER_PATIENCE`] (or the origin delay has not long passed).
    pub(super) wan_delivering: bool,
    pub(super) peers_delivering: bool,
}

/// The place of `me` by address among itself and `others` (distinct, without `me`), as
/// `(rank, of)`; none when there are no others. Both a site share and a turn to poll the origin.
pub(super) fn rank_by_address(me: Ipv4Addr, others: impl Iterator<Item = Ipv4Addr>) -> Option<(u32, u32)> {
    let (mut rank, mut of) = (0u32, 1u32);
    for ip in others {
        of += 1;
        rank += u32::from(ip < me);
    }
    (of > 1).then_some((rank, of))
}

/// Block bytes received from peers beyond the LAN, and from peers at all (the origin's left
/// out: bytes it sends must not renew the patience with peers that send nothing).
pub(super) fn peer_bytes(stats: &crate::core::swarm::Stats) -> [u64; 2] {
    [stats.received_wan, stats.downloaded.saturating_sub(stats.received_origin)]
}

impl SiteView {
    /// Whether it leaves the origin to peers beyond its LAN: it is behind in the tree of
    /// reachable devices (`core::swarm::tree`: a super-peer that is not the root), or, not
    /// reachable itself, it reached a reachable peer or a LAN peer said so lately (`heard`:
    /// its site is served from there) — while those peers deliver ([`PEER_PATIENCE`]: peers
    /// beyond its LAN for its own, any peer for what it heard); or it
    /// waits for a reachable peer that is full. A reachable device ignores the LAN's word and
    /// its own dials outside the tree: two reachable devices that dialled each other must not
    /// both leave the origin to the other.
    pub(super) fn leaves_origin(&self, heard: bool) -> bool {
        let served_from_wan = (self.tree_behind || (!self.reachable && self.behind)) && self.wan_delivering;
        let served_by_site = !self.reachable && heard && self.peers_delivering;
        served_from_wan || served_by_site || (!self.reachable && self.waiting)
    }

    /// What its announcements say ("behind", so that its LAN peers leave the origin too): as
    /// [`SiteView::leaves_origin`] from its own connections only; a device that only heard so
    /// from a LAN peer does not repeat it, or the claim would outlive the peer that made it.
    pub(super) fn fetches_behind(&self) -> bool {
        self.leaves_origin(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(reachable: bool, behind: bool, tree_behind: bool, waiting: bool, delivering: bool) -> SiteView {
        let (wan_delivering, peers_delivering) = (delivering, delivering);
        SiteView { share: Some((0, 2)), reachable, behind, tree_behind, waiting, wan_delivering, peers_delivering }
    }

    #[test]
    fn a_device_leaves_the_origin_to_peers_only_while_they_deliver_or_it_waits_for_a_full_one() {
        assert!(view(false, true, false, false, true).leaves_origin(false), "it reached a super-peer");
        assert!(view(false, false, false, false, true).leaves_origin(true), "a LAN peer did");
        assert!(!view(false, false, false, false, true).fetches_behind(), "hearsay is not repeated");
        assert!(view(true, false, true, false, true).leaves_origin(false), "behind in the tree");
        assert!(!view(true, true, false, false, true).leaves_origin(true), "a reachable device: the tree decides");
        // A claimed root or a super-peer that delivers nothing costs the patience, not the release.
        assert!(!view(true, false, true, false, false).leaves_origin(false));
        assert!(!view(false, true, false, false, false).leaves_origin(true));
        assert!(!view(false, true, false, false, false).fetches_behind());
        // Refused by a full one: it waits (and says so) whatever came in meanwhile.
        assert!(view(false, false, false, true, false).leaves_origin(false));
        assert!(view(false, false, false, true, false).fetches_behind());
        assert!(!view(true, false, false, true, true).leaves_origin(false), "a reachable device does not wait");
        // Its own super-peer must deliver over the WAN: bytes from its LAN (which the origin
        // may have sent them) do not keep it behind a root that sends nothing.
        let lan_only = SiteView { wan_delivering: false, ..view(true, false, true, false, true) };
        assert!(!lan_only.leaves_origin(false));
        let heard = SiteView { wan_delivering: false, ..view(false, false, false, false, true) };
        assert!(heard.leaves_origin(true), "a site-mate is served over the LAN");
    }

    #[test]
    fn the_origins_bytes_do_not_count_as_peers_delivering() {
        let stats = crate::core::swarm::Stats {
            downloaded: 900,
            received_wan: 300,
            received_origin: 500,
            ..Default::default()
        };
        assert_eq!(peer_bytes(&stats), [300, 400]);
    }
}
