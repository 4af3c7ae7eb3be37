//! Trackers as the rendezvous (`--tracker udp://HOST:PORT`): one UDP socket for all of them,
//! bound to our listen address so that several agents on one host announce distinct addresses,
//! and per release one [`TrackerClient`] per tracker. The exchange itself is the core's
//! (`core::tracker`); this is the socket, the schedule's clock and the dial tables.

use super::{dial, Agent, TRACKER};
use crate::core::scope;
use crate::core::tracker::{Progress, Reply, TrackerClient, MAX_REPLY, MAX_REQUEST};
use mio::Interest;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

/// Datagrams read per wakeup: a flood cannot keep the loop from its other work.
const MAX_DATAGRAMS_PER_TURN: usize = 64;

/// The trackers' socket and what identifies us to them.
pub(super) struct Trackers {
    socket: mio::net::UdpSocket,
    /// BEP 20's shape, `-FL0100-` and 12 random bytes: one per agent run.
    peer_id: [u8; 20],
    key: u32,
}

impl Agent {
    /// Opens the trackers' socket, if trackers are configured: from the address we listen on
    /// (any address if we listen on the wildcard or not at all).
    pub(super) fn open_trackers(&mut self) {
        if self.trackers.is_some() || self.config.trackers.is_empty() {
            return;
        }
        let ip = match self.local_addr() {
            Some(SocketAddr::V4(a)) if !a.ip().is_unspecified() => IpAddr::V4(*a.ip()),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let opened = mio::net::UdpSocket::bind(SocketAddr::new(ip, 0)).and_then(|mut socket| {
            self.poll.registry().register(&mut socket, TRACKER, Interest::READABLE)?;
            Ok(socket)
        });
        let mut peer_id = *b"-FL0100-____________";
        for b in &mut peer_id[8..] {
            *b = b'a' + (self.rng.next_u64() % 26) as u8;
        }
        match opened {
            Ok(socket) => self.trackers = Some(Trackers { socket, peer_id, key: self.rng.next_u64() as u32 }),
            Err(e) => log::warn!("trackers are off: cannot open a UDP socket on {ip}: {e}"),
        }
    }

    /// Sends each release's tracker requests that are due.
    pub(super) fn announce_trackers(&mut self, now: Instant) {
        let Some(t) = &self.trackers else { return };
        let port = self.local.map_or(0, |a| a.port());
        let mut buf = [0u8; MAX_REQUEST];
        for (r, h) in self.releases.iter_mut().enumerate() {
            if h.trackers.is_empty() {
                for _ in &self.config.trackers {
                    let tid_seed = self.rng.next_u64() as u32;
                    h.trackers.push(TrackerClient::new(h.release.id(), t.peer_id, t.key, port, tid_seed, now));
                }
            }
            let complete = h.release.is_complete();
            // Company means a peer beyond the LAN (or any peer, when we know no LAN): LAN peers
            // alone cannot bring a site the release without the origin.
            let lan_known = self.lan.is_some();
            let alone = !self
                .conns
                .iter()
                .flatten()
                .any(|c| c.release == Some(r) && !c.connecting && (c.beyond_lan || !lan_known));
            let stats = h.release.stats();
            let left = h.release.size().saturating_sub(h.release.have_bytes());
            let progress = Progress { downloaded: stats.downloaded, uploaded: stats.uploaded, left };
            for (client, &addr) in h.trackers.iter_mut().zip(&self.config.trackers) {
                if complete {
                    client.completed(now);
                } else if alone {
                    client.needs_peers();
                }
                if let Some(n) = client.poll_transmit(now, progress, &mut buf) {
                    if let Err(e) = t.socket.send_to(&buf[..n], addr) {
                        log::debug!("cannot send to tracker {addr}: {e}");
                    }
                }
            }
        }
    }

    /// Reads the trackers' replies; the peers they name join the dial tables, under the limits
    /// of peer exchange: a tracker may name only addresses of at least its own reach.
    pub(super) fn hear_trackers(&mut self, now: Instant) {
        let me = self.local_addr();
        let mut buf = [0u8; MAX_REPLY];
        for _ in 0..MAX_DATAGRAMS_PER_TURN {
            let Some(t) = &self.trackers else { return };
            let (n, from) = match t.socket.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return log::debug!("tracker receive failed: {e}"),
            };
            let Some(i) = self.config.trackers.iter().position(|&a| a == from) else {
                log::debug!("ignored a datagram from {from}: not one of our trackers");
                continue;
            };
            for h in &mut self.releases {
                let Some(client) = h.trackers.get_mut(i) else { continue };
                match client.handle(&buf[..n], now) {
                    Reply::Ignored => continue,
                    Reply::Connected => {}
                    Reply::Refused(why) => log::warn!("tracker {from} refused {}: {why}", h.release.name()),
                    Reply::Peers { interval, peers } => {
                        let usable: Vec<SocketAddr> = peers
                            .iter()
                            .map(|&p| SocketAddr::V4(p))
                            .filter(|&p| scope::may_name(from.ip(), p) && Some(p) != me)
                            .collect();
                        log::debug!(
                            "tracker {from}: {} peer(s) for {}, {} usable; next in {} s",
                            peers.len(),
                            h.release.name(),
                            usable.len(),
                            interval.as_secs()
                        );
                        for p in usable {
                            dial::add_dial(h, p, me, now);
                        }
                    }
                }
                break;
            }
        }
    }
}
