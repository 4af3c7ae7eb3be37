//! Connections: accepting, reading whole frames into the release, writing what it wants sent,
//! closing.
//!
//! Each slot has one receive and one send buffer sized for a single frame, allocated when the
//! slot opens and never grown. An inbound connection is routed to a release by its first frame
//! (the Hello); until then it holds a slot on probation and is the first to be evicted.

use super::guard::{address_key, BAN_TIME};
use super::{sys, Agent, HANDSHAKE_TIMEOUT};
use crate::core::session::{hello_refusal, CloseReason};
use crate::core::swarm::NewPeer;
use crate::core::wire::{self, Message, RefuseReason, MAX_FRAME};
use mio::net::TcpStream;
use mio::{Interest, Token};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Receive buffer: one whole frame, so any legal frame fits and nothing larger is ever needed.
const RECV_BUF: usize = MAX_FRAME;
/// Bytes read from one connection per wakeup, so that a peer that floods us with valid small
/// messages cannot keep the loop from its other connections and timers.
const READ_BUDGET: usize = 4 * RECV_BUF;
/// Send buffer: one whole frame plus room for the small messages queued beside it.
const SEND_BUF: usize = MAX_FRAME + 1024;
/// Unsent bytes per connection above which no more blocks are queued (see
/// `sys::set_notsent_lowat`). Four blocks keep a fast link busy between two wakeups.
const UNSENT_MARK: usize = 64 * 1024;
/// Connections one address (an IPv4 address, an IPv6 /64) may hold at once.
const MAX_PER_ADDRESS: usize = 4;
/// An inbound peer that exchanged no block for this long may give its slot to a newcomer.
const IDLE_EVICTABLE: Duration = Duration::from_secs(60);
/// ... and one that has traded no block at all, this long after it connected: an honest peer
/// asks for or is asked for a chunk within milliseconds of the handshake.
const NEVER_TRADED_GRACE: Duration = Duration::from_secs(3);

/// One TCP connection in a slot.
pub(super) struct Conn {
    stream: TcpStream,
    pub(super) addr: SocketAddr,
    /// The peer is not on any of our links (see [`Agent::beyond_lan`]).
    pub(super) beyond_lan: bool,
    /// Its first frame asked for this swarm's manifest (`gossip`), not for a session.
    manifest_request: Option<crate::core::manifest::SwarmId>,
    /// Set for connections we opened, until the connect completes.
    pub(super) connecting: bool,
    /// The release this connection serves; `None` for an inbound one until its Hello.
    pub(super) release: Option<usize>,
    /// The entry of the release's dial table this connection came from.
    dial: Option<usize>,
    /// Its session finished the handshake at some point.
    was_active: bool,
    pub(super) opened_at: Instant,
    rbuf: Box<[u8]>,
    rlen: usize,
    wbuf: Box<[u8]>,
    wpos: usize,
    wlen: usize,
}

impl Agent {
    /// True if `addr` is beyond our LAN: LAN discovery is on (so we know our links) and it is
    /// on none of them. Without discovery every peer counts as local.
    pub(super) fn beyond_lan(&self, addr: SocketAddr) -> bool {
        let Some(lan) = self.lan.as_ref() else { return false };
        match addr.ip() {
            IpAddr::V4(ip) => !sys::on_link(ip, &lan.subnets),
            IpAddr::V6(_) => true,
        }
    }
}

impl Conn {
    /// We dialled it (it came from a dial table) rather than accepted it.
    pub(super) fn outbound(&self) -> bool {
        self.dial.is_some()
    }

    /// Its handshake finished at some point.
    pub(super) fn was_active(&self) -> bool {
        self.was_active
    }
}

/// Why the shell closes a connection: the release's reason, or the socket's own end.
pub(super) type Why = Result<CloseReason, &'static str>;

impl Agent {
    pub(super) fn free_slot(&self) -> Option<usize> {
        self.conns.iter().position(Option::is_none)
    }

    pub(super) fn accept(&mut self, now: Instant) {
        loop {
            let Some(listener) = self.listener.as_ref() else { return };
            let (stream, addr) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    return;
                }
            };
            if self.bans.is_banned(addr.ip(), now) {
                log::debug!("refused {addr}: banned");
                continue;
            }
            let key = address_key(addr.ip());
            if self.conns.iter().flatten().filter(|c| address_key(c.addr.ip()) == key).count() >= MAX_PER_ADDRESS {
                log::debug!("refused {addr}: {MAX_PER_ADDRESS} connections from its address already");
                continue;
            }
            let inbound = self.conns.iter().flatten().filter(|c| c.dial.is_none()).count();
            let room = inbound < self.inbound_slots() && self.free_slot().is_some();
            let slot = if room { self.free_slot() } else { self.evict_least_useful(now) };
            let Some(slot) = slot else {
                log::debug!("refused {addr}: every inbound slot is held by a useful peer");
                continue;
            };
            self.open_slot(slot, stream, addr, None, now);
        }
    }

    /// Slots inbound connections may hold: while a release is still to fetch, a quarter are kept
    /// for our own dials, so that strangers filling every slot cannot stop us fetching; an agent
    /// with everything dials nobody and lends them all.
    fn inbound_slots(&self) -> usize {
        if self.releases.iter().all(|h| h.release.is_complete()) {
            return self.conns.len();
        }
        let reserved = (self.conns.len() / 4).max(1).min(self.conns.len() - 1);
        self.conns.len() - reserved
    }

    /// With the inbound slots full, frees the one held by the least useful inbound connection:
    /// first one that has not said which swarm it wants, then one whose handshake is not done,
    /// then one that has exchanged no block for `IDLE_EVICTABLE` (or none at all for
    /// `NEVER_TRADED_GRACE`); the oldest in each tier. An
    /// honest peer says hello, authenticates and trades at once, so a flood of idle, trickling
    /// or merely polite connections (valid Hellos and keepalives) only evicts itself.
    fn evict_least_useful(&mut self, now: Instant) -> Option<usize> {
        let tier = |slot: usize, c: &Conn| -> Option<u8> {
            if c.dial.is_some() {
                return None;
            }
            let Some(r) = c.release else { return Some(0) };
            let session = self.releases[r].release.swarm().session(slot)?;
            if !session.is_active() {
                return Some(1);
            }
            let idle = now.saturating_duration_since(session.last_data()) >= IDLE_EVICTABLE;
            // Polite but useless: a valid Hello and keepalives, and never a block either way.
            let never_traded = session.bytes_up + session.bytes_down == 0 && now >= c.opened_at + NEVER_TRADED_GRACE;
            (idle || never_traded).then_some(2)
        };
        let (slot, (tier, _)) = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().and_then(|c| Some((i, (tier(i, c)?, c.opened_at)))))
            .min_by_key(|&(_, rank)| rank)?;
        // Being evicted as useless counts like a handshake timeout: an address whose connections
        // keep ending up so is banned at the third, or a flood would only recycle its slots. But
        // an honest peer idle because we had nothing it lacked (a swarm's first minute, before
        // any block exists) is not at fault: it is evicted without a strike, or one site behind
        // NAT (one address) would be banned for its devices' patience.
        if let Some(c) = self.conns[slot].as_ref() {
            let at_fault = match (tier, c.release) {
                (t, Some(r)) if t >= 2 => self.releases[r].release.swarm().could_serve(slot),
                _ => true,
            };
            if at_fault && self.bans.strike(c.addr.ip(), now) {
                log::warn!("{}: evicted as useless for the third time; banned for {} s", c.addr, BAN_TIME.as_secs());
            }
        }
        self.close(slot, Err("evicted: every inbound slot taken, and it was the least useful"), now);
        Some(slot)
    }

    /// Puts a new connection in `slot`: accepted (`dial` is `None`) or dialled for release
    /// `dial.0` from its dial table entry `dial.1`.
    pub(super) fn open_slot(
        &mut self,
        slot: usize,
        mut stream: TcpStream,
        addr: SocketAddr,
        dial: Option<(usize, usize)>,
        now: Instant,
    ) {
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut stream, Token(slot), interest) {
            log::warn!("cannot register connection to {addr}: {e}");
            return;
        }
        let _ = stream.set_nodelay(true);
        if let Err(e) = sys::set_notsent_lowat(&stream, UNSENT_MARK as u32) {
            log::debug!("cannot cap unsent bytes to {addr}: {e}");
        }
        let beyond_lan = self.beyond_lan(addr);
        self.conns[slot] = Some(Conn {
            stream,
            addr,
            beyond_lan,
            manifest_request: None,
            connecting: dial.is_some(),
            release: dial.map(|d| d.0),
            dial: dial.map(|d| d.1),
            was_active: false,
            opened_at: now,
            rbuf: vec![0; RECV_BUF].into_boxed_slice(),
            rlen: 0,
            wbuf: vec![0; SEND_BUF].into_boxed_slice(),
            wpos: 0,
            wlen: 0,
        });
    }

    pub(super) fn on_ready(&mut self, slot: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else { return };
        if conn.connecting {
            // A non-blocking connect has finished when the socket is writable; it worked if
            // the socket has a peer and no pending error.
            match (conn.stream.take_error(), conn.stream.peer_addr()) {
                (Ok(None), Ok(_)) => {
                    conn.connecting = false;
                    log::debug!("connected to {}", conn.addr);
                    let (r, addr, opened_at) = (conn.release.unwrap_or(0), conn.addr, conn.opened_at);
                    let beyond_lan = conn.beyond_lan;
                    let Ok(nonce) = sys::random_nonce() else {
                        return self.close(slot, Err("no randomness for a nonce"), now);
                    };
                    let new = NewPeer { outbound: true, remote: Some(addr), beyond_lan, nonce };
                    self.releases[r].release.add_peer(slot, new, opened_at);
                }
                (Ok(None), Err(e)) if e.kind() == io::ErrorKind::NotConnected => return,
                (Ok(Some(e)), _) | (Err(e), _) | (Ok(None), Err(e)) => {
                    log::debug!("cannot connect to {}: {e}", conn.addr);
                    return self.close(slot, Err("connect failed"), now);
                }
            }
        }
        if let Err(why) = self.receive(slot, now) {
            self.close(slot, why, now);
        }
    }

    /// Reads until the socket would block or the read budget is spent, handling each whole
    /// frame.
    fn receive(&mut self, slot: usize, now: Instant) -> Result<(), Why> {
        let mut budget = READ_BUDGET;
        loop {
            if budget == 0 {
                if !self.unread.contains(&slot) {
                    self.unread.push(slot);
                }
                return Ok(());
            }
            let Some(conn) = self.conns[slot].as_mut() else { return Ok(()) };
            let n = match conn.stream.read(&mut conn.rbuf[conn.rlen..]) {
                Ok(0) => return Err(Err("connection closed by peer")),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("read from {}: {e}", conn.addr);
                    return Err(Err("read failed"));
                }
            };
            conn.rlen += n;
            budget = budget.saturating_sub(n);
            if !self.handle_frames(slot, now)? {
                // The release is closing the session; its event closes the socket this turn.
                return Ok(());
            }
        }
    }

    /// Hands every whole frame in the receive buffer to the connection's release. Returns false
    /// once the release stops taking this connection's frames.
    fn handle_frames(&mut self, slot: usize, now: Instant) -> Result<bool, Why> {
        let Agent { conns, releases, .. } = self;
        let Some(conn) = conns[slot].as_mut() else { return Ok(false) };
        let mut pos = 0;
        let mut open = true;
        while open {
            let len =
                wire::frame_len(&conn.rbuf[pos..conn.rlen]).map_err(|_| Ok(CloseReason::Protocol("bad frame")))?;
            let Some(len) = len else { break };
            let frame = &mut conn.rbuf[pos..pos + len];
            let r = match conn.release {
                Some(r) => r,
                None => {
                    if let Ok(Message::ManifestGet(swarm)) = wire::check_crc(frame).and_then(wire::decode_message) {
                        // Not a session: the stream is handed to the gossip as the slot closes.
                        conn.manifest_request = Some(swarm);
                        return Err(Err("asked for a manifest"));
                    }
                    let r = route(releases, frame, now).map_err(|refusal| {
                        refuse(&mut conn.stream, refusal);
                        Err("refused its hello")
                    })?;
                    let nonce = sys::random_nonce().map_err(|_| Err("no randomness for a nonce"))?;
                    let new = NewPeer { outbound: false, remote: Some(conn.addr), beyond_lan: conn.beyond_lan, nonce };
                    conn.release = Some(r);
                    releases[r].release.add_peer(slot, new, conn.opened_at);
                    r
                }
            };
            open = releases[r].release.handle_frame(slot, frame, now);
            conn.was_active |= releases[r].release.swarm().session(slot).is_some_and(|s| s.is_active());
            pos += len;
        }
        conn.rbuf.copy_within(pos..conn.rlen, 0);
        conn.rlen -= pos;
        Ok(open)
    }

    /// Closes connections whose dial or Hello is overdue. Once routed, the session holds the
    /// rest of the handshake to the same timeout.
    pub(super) fn close_overdue_handshakes(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            let overdue = self.conns[slot]
                .as_ref()
                .is_some_and(|c| (c.connecting || c.release.is_none()) && now >= c.opened_at + HANDSHAKE_TIMEOUT);
            if overdue {
                self.close(slot, Ok(CloseReason::HandshakeTimeout), now);
            }
        }
    }

    /// Round-robin by frame: each pass gives every connection at most one block, so the peers
    /// holding upload slots share the uplink block by block.
    pub(super) fn send_all(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            for slot in 0..self.conns.len() {
                progressed |= self.pump(slot, now);
            }
            if !progressed {
                break;
            }
        }
    }

    /// Fills the send buffer from the release while it has room for a frame (so with at most
    /// one block) and writes once. Returns true if bytes went out and more may follow.
    fn pump(&mut self, slot: usize, now: Instant) -> bool {
        let Agent { conns, releases, poll, .. } = self;
        let Some(conn) = conns[slot].as_mut() else { return false };
        let Some(r) = conn.release.filter(|_| !conn.connecting) else { return false };
        let release = &mut releases[r].release;
        conn.wbuf.copy_within(conn.wpos..conn.wlen, 0);
        conn.wlen -= conn.wpos;
        conn.wpos = 0;
        // Small messages always go; blocks only while the kernel holds little unsent. When it
        // holds more, re-arming makes the kernel note that we wait for room, so epoll wakes us
        // when the unsent bytes drop below the mark (a successful write never asks for that).
        let wants_block = release.wants_block(slot);
        let blocks = wants_block && sys::unsent_bytes(&conn.stream) < UNSENT_MARK;
        if wants_block && !blocks {
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = poll.registry().reregister(&mut conn.stream, Token(slot), interest) {
                log::debug!("cannot re-arm {}: {e}", conn.addr);
            }
        }
        while SEND_BUF - conn.wlen >= MAX_FRAME {
            let Some(n) = release.poll_transmit(slot, now, blocks, &mut conn.wbuf[conn.wlen..]) else { break };
            conn.wlen += n;
        }
        if conn.wpos == conn.wlen {
            return false;
        }
        match conn.stream.write(&conn.wbuf[conn.wpos..conn.wlen]) {
            Ok(n) => {
                conn.wpos += n;
                n > 0
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            Err(e) => {
                log::debug!("write to {}: {e}", conn.addr);
                self.close(slot, Err("write failed"), now);
                false
            }
        }
    }

    /// Closes the connection in `slot`, bans its address for an offence, and tells its release
    /// and dial table.
    pub(super) fn close(&mut self, slot: usize, why: Why, now: Instant) {
        let Some(mut conn) = self.conns[slot].take() else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if let Some(swarm) = conn.manifest_request {
            return self.serve_manifest(conn.stream, conn.addr, swarm, now);
        }
        match why {
            Ok(reason) if reason.is_offence() => {
                log::warn!("dropping {}: {reason}; banned for {} s", conn.addr, BAN_TIME.as_secs());
                self.bans.ban(conn.addr.ip(), now);
            }
            Ok(CloseReason::HandshakeTimeout) if self.bans.strike(conn.addr.ip(), now) => {
                log::warn!("dropping {}: its third handshake timeout; banned for {} s", conn.addr, BAN_TIME.as_secs());
            }
            Ok(reason) => log::info!("closed {}: {reason}", conn.addr),
            Err(e) => log::debug!("closed {}: {e}", conn.addr),
        }
        if why == Ok(CloseReason::SelfConnection) {
            if let Ok(ours) = conn.stream.local_addr() {
                self.forget_own_address(ours, now);
            }
        }
        let Some(r) = conn.release else { return };
        // Gone already if the release asked for the close; otherwise it learns of it here.
        self.releases[r].release.remove_peer(slot, now);
        if let Some(d) = conn.dial {
            let stalled = matches!(why, Ok(CloseReason::Stalled | CloseReason::Idle));
            self.releases[r].dials[d].closed(conn.was_active, stalled, now);
        }
    }
}

/// Picks the release an inbound connection's first frame (its Hello, always in clear) asks for.
/// A release set aside after a storage failure takes no new peers until it is retried.
fn route(releases: &[super::Held], frame: &[u8], now: Instant) -> Result<usize, RefuseReason> {
    let Ok(Message::Hello { version, swarm, .. }) = wire::check_crc(frame).and_then(wire::decode_message) else {
        return Err(RefuseReason::UnknownSwarm);
    };
    let found = releases.iter().position(|h| *h.release.id() == swarm && !h.is_paused(now));
    match hello_refusal(version, found.is_some()) {
        Some(refusal) => Err(refusal),
        None => found.ok_or(RefuseReason::UnknownSwarm),
    }
}

/// Sends a refusal as a courtesy before closing; a full socket buffer simply drops it.
fn refuse(stream: &mut TcpStream, reason: RefuseReason) {
    let mut buf = [0u8; 32];
    if let Ok(n) = wire::encode_frame(&Message::Refuse(reason), &mut buf) {
        let _ = stream.write(&buf[..n]);
    }
}
