//! LAN discovery: announcing our swarms on the multicast group and dialling those who announce
//! a swarm we are fetching. The datagram format and schedule are the core's
//! (`core::discovery`); this is only the sockets.

use super::{dial, sys, Agent, DISCOVERY};
use crate::core::discovery::{self, Announcement};
use mio::Interest;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

/// Datagrams read per wakeup: a flood on the group cannot keep the loop from its other work.
const MAX_DATAGRAMS_PER_TURN: usize = 64;

/// The LAN discovery sockets and schedule.
pub(super) struct Lan {
    listener: mio::net::UdpSocket,
    sender: std::net::UdpSocket,
    group: std::net::SocketAddrV4,
    pub(super) schedule: discovery::Schedule,
    /// This host's IPv4 subnets, refreshed at each announcement: announcements count only from
    /// a source on one of them.
    pub(super) subnets: Vec<(std::net::Ipv4Addr, std::net::Ipv4Addr)>,
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
            let from = SocketAddr::V4(from);
            let Some(a) = Announcement::decode(&buf[..n]) else {
                log::debug!("ignored a malformed announcement from {from}");
                continue;
            };
            let peer = SocketAddr::new(from.ip(), a.listen_port);
            // Our own announcement looped back: under 0.0.0.0 its address would not tell us.
            if a.node == self.node || Some(peer) == me {
                continue;
            }
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
