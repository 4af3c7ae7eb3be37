//! Connections: accepting, reading whole frames into the release, writing what it wants sent,
//! closing.
//!
//! No connection owns a frame buffer. A frame stays in the kernel until all of it is there
//! (SO_RCVLOWAT makes epoll wait for it), then is read into the agent's one receive buffer and
//! handled at once; frames to send are built in the agent's one send buffer and written at once,
//! and only what a full socket does not take is kept, in a buffer lent until it drains. So an
//! idle connection costs a few dozen bytes, whatever the frame size. An inbound connection is
//! routed to a release by its first frame (the Hello); until then it holds a slot on probation
//! and is the first to be evicted.

use super::guard::{address_key, BAN_TIME};
use super::{sys, Agent, HANDSHAKE_TIMEOUT};
use crate::core::session::{hello_refusal, CloseReason};
use crate::core::swarm::NewPeer;
use crate::core::wire::{self, Message, RefuseReason, HEADER_LEN, MAX_FRAME};
use mio::net::TcpStream;
use mio::{Interest, Token};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Receive buffer: one whole frame and the header of the next, read in the same call.
const RECV_BUF: usize = MAX_FRAME + HEADER_LEN;
/// Bytes read from one connection per wakeup, so that a peer that floods us with valid small
/// messages cannot keep the loop from its other connections and timers.
const READ_BUDGET: usize = 4 * MAX_FRAME;
/// Send buffer: one whole frame plus room for the small messages queued beside it.
const SEND_BUF: usize = MAX_FRAME + 1024;
/// A lent buffer holds what is left of a send, or one spilled frame.
const LENT_BUF: usize = if SEND_BUF > MAX_FRAME { SEND_BUF } else { MAX_FRAME };
/// Lent buffers kept for reuse once returned; more are freed.
const SPARE_KEPT: usize = 8;
/// Each frame counts at least this much against the read budget: a read per frame is the
/// cost, and a stream of tiny frames must not buy thousands of them a wakeup.
const MIN_FRAME_CHARGE: usize = 512;
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
    /// The start of the next frame, read along with the frame before it: at most its header.
    head: [u8; HEADER_LEN],
    head_len: usize,
    /// What SO_RCVLOWAT is set to: the kernel's 1 until we first wait for part of a frame.
    lowat: usize,
    /// Bytes the kernel held at our last look, less what we read since: a lower bound, so that
    /// a stream of frames needs one FIONREAD per wakeup, not one per frame.
    queued: usize,
    /// Since when we wait on the mark for the body of the frame in `head`.
    armed_at: Option<Instant>,
    /// The peer closed its side (from the poll event): a frame not whole now never will be.
    read_closed: bool,
    /// A frame being read piecemeal, because the kernel had no room to hold it for us.
    spilled: Option<Spilled>,
    /// The end of a write the socket did not take whole; it goes out before anything else.
    unsent: Option<Unsent>,
}

/// The first `len` bytes of a frame of `total`, in a buffer lent from [`IoBuffers::spare`].
struct Spilled {
    buf: Box<[u8]>,
    len: usize,
    total: usize,
}

/// Bytes of built frames a full socket left, in a buffer lent from [`IoBuffers::spare`].
struct Unsent {
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
}

/// The buffers every connection shares, owned by the agent.
pub(super) struct IoBuffers {
    recv: Box<[u8]>,
    send: Box<[u8]>,
    /// Buffers for [`Unsent`] bytes, back here once drained, so steady state allocates nothing.
    spare: Vec<Box<[u8]>>,
}

impl IoBuffers {
    /// Room for the spare buffers is reserved up front, so the list never grows.
    pub(super) fn new() -> IoBuffers {
        IoBuffers {
            recv: vec![0; RECV_BUF].into_boxed_slice(),
            send: vec![0; SEND_BUF].into_boxed_slice(),
            spare: Vec::with_capacity(SPARE_KEPT),
        }
    }

    /// A buffer for one frame's bytes, reused if one is spare.
    fn lend(&mut self) -> Box<[u8]> {
        self.spare.pop().unwrap_or_else(|| vec![0; LENT_BUF].into_boxed_slice())
    }

    /// Takes a lent buffer back, keeping a few for the next loans and freeing the rest, so that
    /// a burst of loans does not stay resident.
    fn give_back(&mut self, buf: Box<[u8]>) {
        if self.spare.len() < SPARE_KEPT {
            self.spare.push(buf);
        }
    }
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

    /// Reads the next frame into the start of the shared receive buffer once the kernel holds
    /// all of it, with as much of the following header as is there; returns the frame's length.
    /// `Ok(None)` while the frame is not whole: its bytes stay in the kernel and epoll wakes us
    /// when they are all there. `woken`: a readable event brought us here.
    fn read_frame(&mut self, io: &mut IoBuffers, woken: bool, now: Instant) -> Result<Option<usize>, Why> {
        loop {
            if self.spilled.is_some() {
                return self.read_spilled(io);
            }
            if self.head_len < HEADER_LEN {
                match read_some(&mut self.stream, &mut self.head[self.head_len..], self.addr)? {
                    Some(0) => return Err(Err("connection closed by peer")),
                    Some(n) => {
                        self.head_len += n;
                        self.queued = self.queued.saturating_sub(n);
                    }
                    None if self.wait_for(HEADER_LEN - self.head_len)? => {}
                    None => return Ok(None),
                }
                continue;
            }
            let total = wire::frame_total(&self.head).map_err(|_| Ok(CloseReason::Protocol("bad frame")))?;
            let body = total - HEADER_LEN;
            if self.queued < body {
                self.queued = sys::readable_bytes(&self.stream).ok_or(Err("cannot tell what the socket holds"))?;
            }
            if self.queued < body {
                // Woken below the mark we set (in an earlier turn: an event of this turn was
                // taken before a re-read armed it) is a recent kernel saying the socket's memory
                // is full. An older one says nothing: the memory check catches it now, and
                // `recheck_waiting` once a second after.
                let woken_below = woken && self.armed_at.is_some_and(|t| t < now);
                if woken_below || sys::receive_memory_tight(&self.stream) {
                    self.spill(io, total);
                    continue;
                }
                if self.wait_for(body)? {
                    continue;
                }
                self.armed_at.get_or_insert(now);
                return Ok(None);
            }
            io.recv[..HEADER_LEN].copy_from_slice(&self.head);
            let n = match body {
                0 => 0,
                _ => read_some(&mut self.stream, &mut io.recv[HEADER_LEN..total + HEADER_LEN], self.addr)?.unwrap_or(0),
            };
            self.queued = self.queued.saturating_sub(n);
            if n < body {
                // TCP hands over what FIONREAD counts unless urgent data cuts the read short,
                // and no honest peer sends any; the partial frame has nowhere to wait.
                return Err(Err("short read of a whole frame (urgent data?)"));
            }
            let next = &io.recv[total..HEADER_LEN + n];
            self.head[..next.len()].copy_from_slice(next);
            self.head_len = next.len();
            self.armed_at = None;
            return Ok(Some(total));
        }
    }

    /// Moves the frame begun in `head` to a lent buffer, where its bytes will be read as they
    /// come instead of left in a kernel that has no room for them.
    fn spill(&mut self, io: &mut IoBuffers, total: usize) {
        log::debug!("{}: the kernel has no room to hold a {total}-byte frame; reading it piecemeal", self.addr);
        let mut buf = io.lend();
        buf[..HEADER_LEN].copy_from_slice(&self.head);
        self.head_len = 0;
        self.armed_at = None;
        self.spilled = Some(Spilled { buf, len: HEADER_LEN, total });
    }

    /// Reads into the spilled frame; once whole, hands it over in the shared buffer.
    fn read_spilled(&mut self, io: &mut IoBuffers) -> Result<Option<usize>, Why> {
        loop {
            let Some(p) = self.spilled.as_mut() else { return Ok(None) };
            if p.len == p.total {
                let total = p.total;
                io.recv[..total].copy_from_slice(&p.buf[..total]);
                if let Some(p) = self.spilled.take() {
                    io.give_back(p.buf);
                }
                return Ok(Some(total));
            }
            match read_some(&mut self.stream, &mut p.buf[p.len..p.total], self.addr)? {
                Some(0) => return Err(Err("connection closed by peer mid-frame")),
                Some(n) => {
                    p.len += n;
                    self.queued = self.queued.saturating_sub(n);
                }
                None => {
                    let need = p.total - p.len;
                    if !self.wait_for(need)? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Arms SO_RCVLOWAT for `need` bytes before we wait on epoll. True if they arrived while it
    /// was being set (a kernel that does not re-check readiness when the mark moves would
    /// otherwise never wake us for them).
    fn wait_for(&mut self, need: usize) -> Result<bool, Why> {
        if self.read_closed {
            return Err(Err("connection closed by peer mid-frame"));
        }
        if self.lowat == need {
            return Ok(false);
        }
        if let Err(e) = sys::set_rcvlowat(&self.stream, need) {
            // The old mark stays; the next wakeup tries again.
            log::debug!("cannot set the receive mark of {}: {e}", self.addr);
            return Ok(false);
        }
        self.lowat = need;
        Ok(sys::readable_bytes(&self.stream).is_some_and(|held| held >= need))
    }
}

/// One read: `Some(n)` bytes (0 at the peer's end), `None` if the socket would block.
fn read_some(stream: &mut TcpStream, buf: &mut [u8], addr: SocketAddr) -> Result<Option<usize>, Why> {
    loop {
        return match stream.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::debug!("read from {addr}: {e}");
                Err(Err("read failed"))
            }
        };
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
            let (mut stream, addr) = match listener.accept() {
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
            // A refusal says we are alive and full: a site behind NAT waits for a slot here
            // rather than go to the origin (see `site::BUSY_WAIT`).
            if self.conns.iter().flatten().filter(|c| address_key(c.addr.ip()) == key).count() >= MAX_PER_ADDRESS {
                log::debug!("refused {addr}: {MAX_PER_ADDRESS} connections from its address already");
                refuse(&mut stream, RefuseReason::Busy);
                continue;
            }
            let inbound = self.conns.iter().flatten().filter(|c| c.dial.is_none()).count();
            let room = inbound < self.inbound_slots() && self.free_slot().is_some();
            let slot = if room { self.free_slot() } else { self.evict_least_useful(now) };
            let Some(slot) = slot else {
                log::debug!("refused {addr}: every inbound slot is held by a useful peer");
                refuse(&mut stream, RefuseReason::Busy);
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
            head: [0; HEADER_LEN],
            head_len: 0,
            lowat: 1,
            queued: 0,
            armed_at: None,
            read_closed: false,
            spilled: None,
            unsent: None,
        });
    }

    /// `event`: what epoll said of the socket; `None` when we come back for bytes left unread.
    pub(super) fn on_ready(&mut self, slot: usize, event: Option<&mio::event::Event>, now: Instant) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else { return };
        // An event for a connection opened this turn was the one before it in the slot's.
        let event = event.filter(|_| conn.opened_at != now);
        conn.read_closed |= event.is_some_and(|e| e.is_read_closed() || e.is_error());
        let woken = event.is_some_and(|e| e.is_readable());
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
        if let Err(why) = self.receive(slot, woken, now) {
            self.close(slot, why, now);
        }
    }

    /// Reads and handles whole frames until none is left whole in the kernel or the read
    /// budget is spent.
    fn receive(&mut self, slot: usize, woken: bool, now: Instant) -> Result<(), Why> {
        let mut budget = READ_BUDGET;
        loop {
            if budget == 0 {
                if !self.unread.contains(&slot) {
                    self.unread.push(slot);
                }
                return Ok(());
            }
            let Some(conn) = self.conns[slot].as_mut() else { return Ok(()) };
            let Some(len) = conn.read_frame(&mut self.io, woken, now)? else { return Ok(()) };
            budget = budget.saturating_sub(len.max(MIN_FRAME_CHARGE));
            if !self.deliver(slot, len, now)? {
                // The release is closing the session; its event closes the socket this turn.
                return Ok(());
            }
        }
    }

    /// Hands the frame at the start of the receive buffer to the connection's release, routing
    /// a first frame. Returns false once the release stops taking this connection's frames.
    fn deliver(&mut self, slot: usize, len: usize, now: Instant) -> Result<bool, Why> {
        let Agent { conns, releases, io, shares_at, .. } = self;
        let Some(conn) = conns[slot].as_mut() else { return Ok(false) };
        let frame = &mut io.recv[..len];
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
        let tree = releases[r].release.swarm().behind_in_tree();
        let open = releases[r].release.handle_frame(slot, frame, now);
        let activated = !conn.was_active && releases[r].release.swarm().session(slot).is_some_and(|s| s.is_active());
        conn.was_active |= activated;
        if activated || tree != releases[r].release.swarm().behind_in_tree() {
            // Where we stand in the site (reachable, behind) may have changed: look now, not
            // at the next second, for the origin delay is counted from the start.
            *shares_at = now;
        }
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

    /// Connections waiting on the mark for a frame whose bytes fill the socket's memory: a
    /// kernel that does not report that pressure (before about 5.8) would leave them waiting
    /// for bytes the shut window keeps out. Checked once a second, at one syscall each.
    pub(super) fn recheck_waiting(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            let tight = self.conns[slot]
                .as_ref()
                .is_some_and(|c| c.armed_at.is_some_and(|t| t < now) && sys::receive_memory_tight(&c.stream));
            if tight {
                if let Err(why) = self.receive(slot, true, now) {
                    self.close(slot, why, now);
                }
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

    /// Writes what the socket left over last time, or else builds frames from the release in
    /// the shared send buffer while it has room for a frame (so with at most one block) and
    /// writes them once. Returns true if bytes went out and more may follow.
    fn pump(&mut self, slot: usize, now: Instant) -> bool {
        let Agent { conns, releases, poll, io, .. } = self;
        let Some(conn) = conns[slot].as_mut() else { return false };
        let Some(r) = conn.release.filter(|_| !conn.connecting) else { return false };
        if let Some(unsent) = conn.unsent.as_mut() {
            let Some(n) = write_some(&mut conn.stream, &unsent.buf[unsent.pos..unsent.len], conn.addr) else {
                self.close(slot, Err("write failed"), now);
                return false;
            };
            unsent.pos += n;
            if unsent.pos == unsent.len {
                if let Some(u) = conn.unsent.take() {
                    io.give_back(u.buf);
                }
            }
            return n > 0;
        }
        let release = &mut releases[r].release;
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
        let mut len = 0;
        while SEND_BUF - len >= MAX_FRAME {
            let Some(n) = release.poll_transmit(slot, now, blocks, &mut io.send[len..]) else { break };
            len += n;
        }
        if len == 0 {
            return false;
        }
        let Some(n) = write_some(&mut conn.stream, &io.send[..len], conn.addr) else {
            self.close(slot, Err("write failed"), now);
            return false;
        };
        if n < len {
            let mut buf = io.lend();
            buf[..len - n].copy_from_slice(&io.send[n..len]);
            conn.unsent = Some(Unsent { buf, pos: 0, len: len - n });
        }
        n > 0
    }

    /// Closes the connection in `slot`, bans its address for an offence, and tells its release
    /// and dial table.
    pub(super) fn close(&mut self, slot: usize, why: Why, now: Instant) {
        let Some(mut conn) = self.conns[slot].take() else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        for buf in [conn.unsent.take().map(|u| u.buf), conn.spilled.take().map(|p| p.buf)].into_iter().flatten() {
            self.io.give_back(buf);
        }
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
        let busy = why == Ok(CloseReason::Refused(RefuseReason::Busy));
        if let Some(d) = conn.dial {
            let stalled = busy || matches!(why, Ok(CloseReason::Stalled | CloseReason::Idle));
            self.releases[r].dials[d].closed(conn.was_active || busy, stalled, now);
        }
        // Only a refusal to our own dial, before any handshake: a peer we let in cannot make
        // us wait by saying it is full.
        if busy && conn.beyond_lan && conn.dial.is_some() && !conn.was_active {
            self.releases[r].refused_busy_until = Some(now + super::site::BUSY_WAIT);
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

/// One write: the bytes the socket took (0 if it would block), `None` if it failed.
fn write_some(stream: &mut TcpStream, bytes: &[u8], addr: SocketAddr) -> Option<usize> {
    loop {
        return match stream.write(bytes) {
            Ok(n) => Some(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::debug!("write to {addr}: {e}");
                None
            }
        };
    }
}

/// Sends a refusal as a courtesy before closing; a full socket buffer simply drops it. What
/// the peer sent so far (a Hello: a few KiB at most are read) is dropped, and our side shut
/// first: closing with unread bytes would reset the connection, and the peer could lose the
/// refusal with it.
fn refuse(stream: &mut TcpStream, reason: RefuseReason) {
    let mut buf = [0u8; 512];
    if let Ok(n) = wire::encode_frame(&Message::Refuse(reason), &mut buf) {
        let _ = stream.write(&buf[..n]);
    }
    for _ in 0..8 {
        if !matches!(stream.read(&mut buf), Ok(n) if n > 0) {
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}
