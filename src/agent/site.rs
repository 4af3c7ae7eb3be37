//! Where a device stands in its site, from its connections: its share of the site's chunks
//! (what it fetches over the WAN link, from the origin or from peers beyond the LAN), and
//! whether it is reachable from outside or reaches a peer that is.

use super::Agent;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How often each release is told its site share.
const SHARE_REFRESH: Duration = Duration::from_secs(1);

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
