//! One connection to one peer, seen from the protocol: the handshake as a [`Phase`], the
//! peer's bitfield, the requests each side has outstanding, and the clocks that decide timeouts.
//!
//! A `Session` holds state and the rules that concern only this connection; it does not pick
//! chunks or share upload slots (that is the swarm's job, which sees all sessions at once), and
//! it never touches a socket. Every queue has a fixed capacity: a peer cannot make it grow.

use crate::core::bitfield::Bitfield;
use crate::core::wire::RefuseReason;
use heapless::Deque;
use sha2::Sha256;
use std::time::Instant;

/// Most requests either side may have outstanding on one connection (a wire rule: a peer that
/// sends more is in breach and is dropped).
pub const MAX_REQUESTS: usize = 16;
/// Most chunks a spreading seed has announced to one peer and not yet sent.
pub const MAX_OFFERED: usize = 4;
/// Small messages waiting to be sent.
const CONTROL_CAPACITY: usize = 64;
/// `Have`s may fill the queue only this far; past it they fold into one bitfield resend. The
/// rest is kept for messages an honest peer can cause at most `MAX_REQUESTS` of each (our
/// requests, our cancels, our rejects answering its cancels), a spreading seed's offers, and
/// one each of Hello, Bitfield, Peers and keepalive, so those are never dropped while a slow
/// socket holds the queue up.
const HAVE_LIMIT: usize = CONTROL_CAPACITY - 3 * MAX_REQUESTS - MAX_OFFERED - 4;

/// How long a connection may take from its opening (accept or dial) to a finished handshake.
/// The one hello timeout: the agent holds connections that have not yet said which swarm they
/// want to it, and the session holds the rest of the handshake to it.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where a session is in its life. Only `Active` sessions exchange chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the peer's Hello (ours is queued at once by the dialler, in answer by the
    /// acceptor).
    AwaitingHello,
    /// Hellos exchanged; with a fleet secret, waiting for the peer's proof.
    Proving,
    /// Handshake done: bitfields, requests and blocks flow.
    Active,
    /// To be closed for this reason; the session takes no more messages.
    Closing(CloseReason),
}

/// The one version check and swarm routing of a Hello: why it must be refused, if it must.
/// Used by the agent to route an inbound connection and by the swarm for a dialled one.
pub fn hello_refusal(version: u16, known_swarm: bool) -> Option<RefuseReason> {
    if version != crate::core::wire::VERSION {
        // Another release of Flotilla, not an attacker: a fleet mid-upgrade must not ban.
        return Some(RefuseReason::UnsupportedVersion);
    }
    (!known_swarm).then_some(RefuseReason::UnknownSwarm)
}

/// A small message the swarm wants sent; the shell encodes it when the socket has room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Our handshake.
    Hello,
    /// Our current bitfield.
    Bitfield,
    /// We now have this chunk.
    Have(u32),
    /// Please send this chunk.
    Request(u32),
    /// We no longer want this chunk.
    Cancel(u32),
    /// We will not send this chunk.
    Reject(u32),
    /// Nothing, to keep the connection alive.
    KeepAlive,
    /// Our other peers' addresses.
    Peers,
    /// Our proof of the fleet secret.
    Auth,
    /// Our advert in the tree of reachable devices (`swarm::tree`).
    Tree,
}

/// Why a connection is closed; offences count against the peer's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer broke a protocol rule.
    Protocol(&'static str),
    /// The peer refused our handshake.
    Refused(RefuseReason),
    /// The peer sent chunks that failed their hash twice.
    BadData,
    /// The peer left our requests unanswered twice.
    Stalled,
    /// Nothing heard from the peer for too long.
    Idle,
    /// The handshake did not finish in time.
    HandshakeTimeout,
    /// The connection leads back to this agent.
    SelfConnection,
    /// Another connection to the same agent is kept instead.
    Duplicate,
    /// Both sides have everything; there is nothing to exchange.
    BothComplete,
    /// Our own storage failed while serving this peer; not the peer's fault.
    LocalStorage,
    /// A sealed frame failed its authentication: another fleet secret, or someone on the path
    /// altering bytes. Not an offence, or an on-path attacker could get honest peers banned.
    Unauthenticated,
    /// One side holds a fleet secret and the other does not.
    FleetMismatch,
}

impl CloseReason {
    /// True if the peer misbehaved, as opposed to a benign end.
    pub fn is_offence(&self) -> bool {
        matches!(self, CloseReason::Protocol(_) | CloseReason::BadData)
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Protocol(what) => write!(f, "protocol violation: {what}"),
            CloseReason::Refused(r) => write!(f, "peer refused the handshake: {r:?}"),
            CloseReason::BadData => write!(f, "sent chunks that failed verification twice"),
            CloseReason::Stalled => write!(f, "left requests unanswered twice"),
            CloseReason::Idle => write!(f, "idle timeout"),
            CloseReason::HandshakeTimeout => write!(f, "handshake timeout"),
            CloseReason::SelfConnection => write!(f, "connected to ourselves"),
            CloseReason::Duplicate => write!(f, "duplicate connection"),
            CloseReason::BothComplete => write!(f, "both sides complete"),
            CloseReason::LocalStorage => write!(f, "our storage failed"),
            CloseReason::Unauthenticated => write!(f, "a frame failed authentication (another fleet secret?)"),
            CloseReason::FleetMismatch => write!(f, "only one side holds a fleet secret (--fleet-secret)"),
        }
    }
}

/// A request we sent and the peer has not finished answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Outstanding {
    pub chunk: u32,
    /// We sent `Cancel`; blocks may still arrive until the peer's `Reject` or last block.
    pub cancelled: bool,
}

/// Protocol state of one connection.
pub struct Session {
    pub(crate) outbound: bool,
    pub(crate) phase: Phase,
    pub(crate) connected_at: Instant,
    /// Where the peer accepts connections: the address we dialled, or its address with the port
    /// from its Hello; `None` if it does not listen or we do not know.
    pub listen_addr: Option<std::net::SocketAddr>,
    /// The connection's remote address, if the caller knows it.
    pub(crate) remote: Option<std::net::SocketAddr>,
    /// The peer's random node number from its Hello.
    pub(crate) node: u64,
    /// Our nonce for this connection, and the peer's from its Hello (fleet authentication).
    pub(crate) nonce: [u8; crate::core::auth::NONCE_LEN],
    pub(crate) peer_nonce: [u8; crate::core::auth::NONCE_LEN],
    /// The sealed channel, once settled (with a fleet secret).
    pub(crate) channel: Option<crate::core::auth::Channel>,
    /// When to next tell this peer about our other peers.
    pub(crate) pex_at: Instant,
    pub(crate) bits: Bitfield,
    pub(crate) got_bitfield: bool,
    pub(crate) control: Deque<Control, CONTROL_CAPACITY>,
    pub(crate) resend_bitfield: bool,
    /// Our requests, in the order the peer will answer them; the front is being received.
    pub(crate) requested: Deque<Outstanding, MAX_REQUESTS>,
    pub(crate) recv_offset: u32,
    /// Running hash of the front request while we write it; `None` when its blocks are discarded.
    pub(crate) hasher: Option<Sha256>,
    /// The peer's requests, served in order; the front is being sent.
    pub(crate) serving: Deque<u32, MAX_REQUESTS>,
    pub(crate) serve_offset: u32,
    pub(crate) last_recv: Instant,
    pub(crate) last_send: Instant,
    /// When the front request last made progress (sent, or a block of it arrived).
    pub(crate) progress_at: Instant,
    /// When the front request must be whole: a peer that trickles a block just often enough to
    /// look alive must not hold its chunks forever.
    pub(crate) head_deadline: Option<Instant>,
    /// When a block last went either way: how useful the connection is to keep.
    pub(crate) last_data: Instant,
    /// It is beyond our LAN ([`crate::core::swarm::NewPeer::beyond_lan`]).
    pub(crate) beyond_lan: bool,
    /// Its last advert in the tree of reachable devices, if it made one.
    pub(crate) tree: Option<crate::core::swarm::tree::TreeAdvert>,
    /// When it joined the upload queue: how long it has waited for a slot.
    pub(crate) queued_at: Instant,
    /// Chunks from this peer that failed their hash.
    pub(crate) bad_chunks: u8,
    /// Times in a row this peer left our requests unanswered past the timeout: a whole chunk
    /// from it starts the count again, so a busy peer that answers late now and then stays.
    pub(crate) stalls: u8,
    /// Chunks a spreading seed has announced to this peer and it has not yet asked for.
    pub(crate) offered: heapless::Vec<u32, MAX_OFFERED>,
    /// Useful bytes received from this peer.
    pub bytes_down: u64,
    /// Bytes of blocks sent to this peer.
    pub bytes_up: u64,
}

impl Session {
    /// A new connection to a peer of a release with `chunks` chunks.
    pub(crate) fn new(chunks: u32, outbound: bool, remote: Option<std::net::SocketAddr>, now: Instant) -> Self {
        Session {
            outbound,
            phase: Phase::AwaitingHello,
            connected_at: now,
            listen_addr: if outbound { remote } else { None },
            remote,
            node: 0,
            nonce: [0; crate::core::auth::NONCE_LEN],
            peer_nonce: [0; crate::core::auth::NONCE_LEN],
            channel: None,
            pex_at: now,
            bits: Bitfield::new(chunks),
            got_bitfield: false,
            control: Deque::new(),
            resend_bitfield: false,
            requested: Deque::new(),
            recv_offset: 0,
            hasher: None,
            serving: Deque::new(),
            serve_offset: 0,
            last_recv: now,
            last_send: now,
            progress_at: now,
            last_data: now,
            queued_at: now,
            beyond_lan: false,
            tree: None,
            head_deadline: None,
            bad_chunks: 0,
            stalls: 0,
            offered: heapless::Vec::new(),
            bytes_down: 0,
            bytes_up: 0,
        }
    }

    /// True once the handshake is done and until the session is closing.
    pub fn is_active(&self) -> bool {
        self.phase == Phase::Active
    }

    /// When a block last went either way (or when the session started).
    pub fn last_data(&self) -> Instant {
        self.last_data
    }

    /// Where the session is in its life.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Marks the session to be closed for `reason`, unless it already is (the first reason
    /// stands).
    pub(crate) fn close(&mut self, reason: CloseReason) {
        if !self.is_closing() {
            self.phase = Phase::Closing(reason);
        }
    }

    /// True once the session is to be closed.
    pub fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing(_))
    }

    /// The chunks the peer says it has.
    pub fn bits(&self) -> &Bitfield {
        &self.bits
    }

    /// Queues a small message; `Have`s beyond their share become one bitfield resend. Returns
    /// false only if the queue is full, which an honest peer cannot cause (see `HAVE_LIMIT`).
    pub(crate) fn push_control(&mut self, c: Control) -> bool {
        if matches!(c, Control::Peers | Control::KeepAlive | Control::Tree) && self.control.iter().any(|&q| q == c) {
            return true;
        }
        if matches!(c, Control::Have(_)) && self.control.len() >= HAVE_LIMIT {
            self.resend_bitfield = true;
            return true;
        }
        if self.control.push_back(c).is_err() {
            self.close(CloseReason::Protocol("flooded with requests"));
            return false;
        }
        true
    }

    /// Requests not cancelled: the ones that count as this peer's work in flight.
    pub(crate) fn live_requests(&self) -> usize {
        self.requested.iter().filter(|r| !r.cancelled).count()
    }

    /// Marks our request for `chunk` cancelled and queues the `Cancel`; true if it was live.
    pub(crate) fn cancel_request(&mut self, chunk: u32) -> bool {
        let mut found = false;
        for r in self.requested.iter_mut() {
            if r.chunk == chunk && !r.cancelled {
                r.cancelled = true;
                found = true;
            }
        }
        if found {
            if self.requested.front().is_some_and(|r| r.chunk == chunk) {
                self.hasher = None;
            }
            self.push_control(Control::Cancel(chunk));
        }
        found
    }

    /// Removes our request for `chunk` wherever it is; returns it if it was there.
    pub(crate) fn remove_request(&mut self, chunk: u32) -> Option<Outstanding> {
        let pos = self.requested.iter().position(|r| r.chunk == chunk)?;
        if pos == 0 {
            self.recv_offset = 0;
            self.hasher = None;
        }
        remove_at(&mut self.requested, pos)
    }

    /// The peer withdrew its request for `chunk`: stop serving it and acknowledge with `Reject`.
    pub(crate) fn withdraw_serving(&mut self, chunk: u32) -> bool {
        let Some(pos) = self.serving.iter().position(|&c| c == chunk) else {
            return false;
        };
        if pos == 0 {
            self.serve_offset = 0;
        }
        remove_at(&mut self.serving, pos);
        self.push_control(Control::Reject(chunk));
        true
    }

    /// The earliest instant at which this session's own timers need attention.
    pub(crate) fn next_deadline(&self, t: &Timeouts) -> Instant {
        let mut at = self.last_recv + t.idle;
        // With messages queued, the socket is what we wait for; a keepalive would add nothing.
        if self.control.is_empty() {
            at = at.min(self.last_send + t.keepalive);
        }
        match self.phase {
            Phase::Active => at = at.min(self.pex_at),
            Phase::AwaitingHello | Phase::Proving => at = at.min(self.connected_at + t.handshake),
            Phase::Closing(_) => {}
        }
        if self.requested.iter().any(|r| !r.cancelled) {
            at = at.min(self.progress_at + t.request);
            if let Some(head) = self.head_deadline {
                at = at.min(head);
            }
        }
        at
    }
}

/// The durations a session is held to.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Hellos must be exchanged within this.
    pub handshake: std::time::Duration,
    /// The front request must make progress within this, or all requests are re-routed.
    pub request: std::time::Duration,
    /// Send a keepalive after this much silence.
    pub keepalive: std::time::Duration,
    /// Close after hearing nothing for this long.
    pub idle: std::time::Duration,
    /// Slowest rate, in bytes per second, at which a requested chunk may arrive: a chunk must be
    /// whole within `request` plus its length at this rate, or its requests are re-routed.
    pub min_chunk_rate: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        use std::time::Duration;
        Timeouts {
            handshake: HANDSHAKE_TIMEOUT,
            request: Duration::from_secs(30),
            keepalive: Duration::from_secs(20),
            idle: Duration::from_secs(75),
            // 256 KiB then has 94 s: far slower than any link we serve, far faster than a peer
            // that sends one block every 29 s to look alive (464 s).
            min_chunk_rate: 4096,
        }
    }
}

/// Removes element `pos` from a deque, keeping the order of the rest.
fn remove_at<T, const N: usize>(q: &mut Deque<T, N>, pos: usize) -> Option<T> {
    let mut removed = None;
    for i in 0..q.len() {
        let item = q.pop_front()?;
        if i == pos {
            removed = Some(item);
        } else {
            // Cannot fail: we just made room by popping.
            let _ = q.push_back(item);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_at_keeps_order() {
        let mut q: Deque<u32, 4> = Deque::new();
        for i in 0..4 {
            q.push_back(i).unwrap();
        }
        assert_eq!(remove_at(&mut q, 1), Some(1));
        assert_eq!(q.iter().copied().collect::<Vec<_>>(), vec![0, 2, 3]);
        assert_eq!(remove_at(&mut q, 7), None);
    }

    #[test]
    fn overflowing_haves_fold_into_a_bitfield_resend_and_leave_room_for_the_rest() {
        let mut s = Session::new(1000, true, None, Instant::now());
        for i in 0..CONTROL_CAPACITY as u32 {
            assert!(s.push_control(Control::Have(i)));
        }
        assert_eq!(s.control.len(), HAVE_LIMIT);
        assert!(s.resend_bitfield);
        for i in 0..MAX_REQUESTS as u32 {
            assert!(s.push_control(Control::Request(i)));
            assert!(s.push_control(Control::Cancel(i)));
            assert!(s.push_control(Control::Reject(i)));
        }
        assert!(s.push_control(Control::KeepAlive));
        assert!(!s.is_closing(), "an honest peer's worth of messages always fits");
        while s.push_control(Control::Reject(0)) {}
        assert!(matches!(s.phase, Phase::Closing(CloseReason::Protocol(_))), "a flood closes the connection");
    }

    #[test]
    fn cancel_and_withdraw_bookkeeping() {
        let mut s = Session::new(10, true, None, Instant::now());
        s.requested.push_back(Outstanding { chunk: 3, cancelled: false }).unwrap();
        s.requested.push_back(Outstanding { chunk: 4, cancelled: false }).unwrap();
        assert!(s.cancel_request(4));
        assert!(!s.cancel_request(4), "second cancel is a no-op");
        assert_eq!(s.live_requests(), 1);
        assert_eq!(s.control.pop_front(), Some(Control::Cancel(4)));
        s.serving.push_back(7).unwrap();
        s.serve_offset = 16384;
        assert!(s.withdraw_serving(7));
        assert_eq!(s.serve_offset, 0);
        assert_eq!(s.control.pop_front(), Some(Control::Reject(7)));
    }
}
