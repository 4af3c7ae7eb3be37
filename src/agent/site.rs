//! Where a device stands in its site, from its connections: its share of the site's chunks
//! (what it fetches over the WAN link, from the origin or from peers beyond the LAN), and
//! whether it is reachable from outside or reaches a peer that is.

use super::Agent;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How often each release is told its site share.
const SHARE_REFRESH: Duration = Duration::from_secs(1);
/// How long a LAN peer's "behind" announcement counts: three announcement intervals, so one
/// lost datagram does not send the site to the origin, and a peer that lost its super-peer
/// stops counting soon.
pub(super) const HEARD_BEHIND_FOR: Duration = Duration::from_secs(15);

impl Agent {
    /// Where this device stands for release `r`, from its active connections. Without a LAN
    /// (no discovery, or not listening on an IPv4 address) it knows no site: no share.
    pub(super) fn site_view(&self, r: usize) -> SiteView {
        let mut view = SiteView { share: None, reachable: false, behind: false };
        let (Some(SocketAddr::V4(me)), Some(_)) = (self.local, self.lan.as_ref()) else { return view };
        let mut site = Vec::new();
        for c in self.conns.iter().flatten().filter(|c| c.release == Some(r) && !c.connecting && c.was_active()) {
            match (c.beyond_lan, c.outbound(), c.addr.ip()) {
                (false, _, IpAddr::V4(ip)) if ip != *me.ip() => site.push(ip),
                (false, _, _) => {}
                // Someone beyond our links dialled us: we are reachable from outside.
                (true, false, _) => view.reachable = true,
                // We reached a peer beyond our links: it is reachable, and serves us.
                (true, true, _) => view.behind = true,
            }
        }
        site.sort_unstable();
        site.dedup();
        let rank = site.iter().filter(|&&ip| ip < *me.ip()).count() as u32;
        view.share = (!site.is_empty()).then_some((rank, site.len() as u32 + 1));
        view
    }

    /// Whether this device leaves release `r`'s origin to a peer beyond its LAN: it reached a
    /// reachable peer itself, or a LAN peer said so lately (its site is served from there),
    /// and no one beyond its links reached it (a super-peer takes its share like any device;
    /// two reachable devices that dialled each other must not both leave the origin to the
    /// other).
    pub(super) fn leaves_origin_to_peers(&self, r: usize, now: Instant) -> bool {
        let view = self.site_view(r);
        let heard = self.releases[r].heard_behind_until.is_some_and(|t| now < t);
        !view.reachable && (view.behind || heard)
    }

    /// This device's turn among the LAN neighbours heard lately, for polling the origin (none
    /// without a LAN, or when it heard no one).
    pub(super) fn poll_turn(&self, now: Instant) -> Option<(u32, u32)> {
        let (Some(SocketAddr::V4(me)), Some(lan)) = (self.local, self.lan.as_ref()) else { return None };
        lan.neighbours.turn(*me.ip(), now)
    }

    /// Tells each release its share of its site (about once a second): what it asks of peers
    /// beyond the LAN first.
    pub(super) fn refresh_site_shares(&mut self, now: Instant) {
        if now < self.shares_at {
            return;
        }
        self.shares_at = now + SHARE_REFRESH;
        for r in 0..self.releases.len() {
            let share = self.site_view(r).share;
            self.releases[r].release.set_site_share(share);
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
}

impl SiteView {
    /// It fetches from a reachable peer it reached itself (what its announcements say, so that
    /// its LAN peers leave the origin to that peer too; a device that only heard so from a
    /// LAN peer does not repeat it, or the claim would outlive the peer that made it).
    pub(super) fn fetches_behind(&self) -> bool {
        self.behind && !self.reachable
    }
}
