//! LAN discovery: announcing our swarms on the multicast group and dialling those who announce
//! a swarm we are fetching. The datagram format and schedule are the core's
//! (`core::discovery`); this is only the sockets.

use super::{dial, sys, Agent, DISCOVERY};
use crate::core::discovery::{self, Announcement};
use mio::Interest;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Datagrams read per wakeup: a flood on the group cannot keep the loop from its other work.
const MAX_DATAGRAMS_PER_TURN: usize = 64;
/// LAN neighbours remembered (by address, for the turns of origin polls), and how long one
/// that stopped announcing counts: three announcement intervals.
const MAX_NEIGHBOURS: usize = 64;
const NEIGHBOUR_FOR: Duration = Duration::from_secs(15);

/// The LAN discovery sockets and schedule.
pub(super) struct Lan {
    listener: mio::net::UdpSocket,
    sender: std::net::UdpSocket,
    group: std::net::SocketAddrV4,
    pub(super) schedule: discovery::Schedule,
    /// This host's IPv4 subnets, refreshed at each announcement: announcements count only from
    /// a source on one of them.
    pub(super) subnets: Vec<(std::net::Ipv4Addr, std::net::Ipv4Addr)>,
    pub(super) neighbours: Neighbours,
    /// The source address of our own announcement as it looped back: our LAN address when
    /// we listen on 0.0.0.0.
    pub(super) own_ip: Option<Ipv4Addr>,
}

/// The devices heard announcing lately, and when: the site, whether or not we are connected to
/// them (two devices that both hold a release close their connection).
#[derive(Default)]
pub(super) struct Neighbours(heapless::Vec<(Ipv4Addr, Instant), MAX_NEIGHBOURS>);

impl Neighbours {
    /// Notes that `ip` announced at `now`; when the list is full, the one heard longest ago
    /// makes room.
    fn heard(&mut self, ip: Ipv4Addr, now: Instant) {
        if let Some(n) = self.0.iter_mut().find(|n| n.0 == ip) {
            n.1 = now;
            return;
        }
        if self.0.is_full() {
            let oldest = (0..self.0.len()).min_by_key(|&i| self.0[i].1).unwrap_or(0);
            self.0.swap_remove(oldest);
        }
        let _ = self.0.push((ip, now));
    }

    /// The turn of `me` among the neighbours heard lately, `(rank, of)` by address (none when
    /// it heard no one): the order the site's devices poll the origin in.
    pub(super) fn turn(&self, me: Ipv4Addr, now: Instant) -> Option<(u32, u32)> {
        let heard = self.0.iter().filter(|n| n.0 != me && now < n.1 + NEIGHBOUR_FOR).map(|n| n.0);
        super::site::rank_by_address(me, heard)
    }
}

impl Agent {
    /// Joins the discovery group; without it the agent still works through its peer list.
    pub(super) fn open_lan(&mut self) {
        let (Some(group), Some(SocketAddr::V4(me))) = (self.config.discovery, self.local_addr()) else { return };
        let opened = sys::multicast_listener(group, *me.ip()).and_then(|mut listener| {
            self.poll.registry().register(&mut listener, DISCOVERY, Interest::READABLE)?;
            Ok(Lan {
                listener,
                sender: sys::multicast_sender(*me.ip())?,
                group,
                schedule: discovery::Schedule::new(Instant::now()),
                subnets: sys::local_subnets().unwrap_or_default(),
                neighbours: Neighbours::default(),
                own_ip: None,
            })
        });
        match opened {
            Ok(lan) => self.lan = Some(lan),
            Err(e) => log::warn!("LAN discovery on {group} is off: {e}"),
        }
    }

    /// Announces our swarms on the LAN when due; asks for announcements while fetching.
    pub(super) fn announce(&mut self, now: Instant) {
        let Some(port) = self.local_addr().map(|a| a.port()) else { return };
        let Some(lan) = self.lan.as_mut() else { return };
        if !lan.schedule.due(now) {
            return;
        }
        match sys::local_subnets() {
            Ok(subnets) => lan.subnets = subnets,
            Err(e) => log::debug!("cannot list this host's subnets: {e}"),
        }
        let query = self.releases.iter().any(|h| !h.release.is_complete());
        let mut buf = [0u8; discovery::MAX_DATAGRAM];
        for first in (0..self.releases.len()).step_by(discovery::MAX_IDS) {
            let group = first..(first + discovery::MAX_IDS).min(self.releases.len());
            let behind =
                group.clone().any(|r| !self.releases[r].release.is_complete() && self.site_view(r).fetches_behind());
            let adverts = self.releases[group].iter().map(|h| discovery::Advert {
                swarm: *h.release.id(),
                release: h.release.number(),
                name_tag: discovery::name_tag(h.release.name()),
            });
            let n = discovery::encode(discovery::Flags { query, behind }, port, self.node, adverts, &mut buf);
            let Some(lan) = self.lan.as_ref() else { return };
            if let Err(e) = lan.sender.send_to(&buf[..n], lan.group) {
                log::debug!("cannot announce on {}: {e}", lan.group);
            }
        }
    }

    /// Reads announcements and dials announcers of swarms we are fetching.
    pub(super) fn hear(&mut self, now: Instant) {
        let me = self.local_addr();
        let mut buf = [0u8; discovery::MAX_DATAGRAM + 1];
        for _ in 0..MAX_DATAGRAMS_PER_TURN {
            let Some(lan) = self.lan.as_mut() else { return };
            let (n, from, to) = match sys::recv_datagram(&lan.listener, &mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return log::debug!("discovery receive failed: {e}"),
            };
            // Only what was sent to the group, from a host on one of our links: a unicast
            // datagram to the port, or a spoofed source from afar, names no peer to dial.
            if to != Some(*lan.group.ip()) || !sys::on_link(*from.ip(), &lan.subnets) {
                log::debug!("ignored a datagram from {from} to {to:?}: not sent to the group from our link");
                continue;
            }
            let ip = *from.ip();
            let from = SocketAddr::V4(from);
            let Some(a) = Announcement::decode(&buf[..n]) else {
                log::debug!("ignored a malformed announcement from {from}");
                continue;
            };
            let peer = SocketAddr::new(from.ip(), a.listen_port);
            // Our own announcement looped back: under 0.0.0.0 its address would not tell us.
            if a.node == self.node || Some(peer) == me {
                if a.node == self.node {
                    lan.own_ip = Some(ip);
                }
                continue;
            }
            lan.neighbours.heard(ip, now);
            if a.query {
                lan.schedule.on_query(now);
            }
            for h in self.releases.iter_mut().filter(|h| !h.release.is_complete() && a.names(h.release.id())) {
                dial::add_dial(h, peer, me, now);
                if a.behind {
                    h.heard_behind_until = Some(now + super::site::HEARD_BEHIND_FOR);
                }
            }
            for advert in a.entries() {
                self.heard_advert(advert, peer, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_devices_turn_is_its_rank_by_address_among_the_neighbours_heard_lately() {
        let t0 = Instant::now();
        let ip = |last: u8| Ipv4Addr::new(10, 0, 0, last);
        let mut n = Neighbours::default();
        assert_eq!(n.turn(ip(5), t0), None, "no one heard: no site");
        for last in [9, 2, 7, 2] {
            n.heard(ip(last), t0);
        }
        assert_eq!(n.turn(ip(5), t0), Some((1, 4)), "10.0.0.2 before it; 7 and 9 after");
        assert_eq!(n.turn(ip(1), t0), Some((0, 4)));
        n.heard(ip(9), t0 + NEIGHBOUR_FOR);
        assert_eq!(n.turn(ip(5), t0 + NEIGHBOUR_FOR), Some((0, 2)), "2 and 7 fell silent");
        for last in 0..=255 {
            n.heard(ip(last), t0 + NEIGHBOUR_FOR + Duration::from_millis(last as u64));
        }
        let later = t0 + NEIGHBOUR_FOR + Duration::from_secs(1);
        assert_eq!(n.turn(ip(255), later), Some((MAX_NEIGHBOURS as u32 - 1, MAX_NEIGHBOURS as u32)), "bounded");
    }
}
