//! A BitTorrent UDP tracker as the rendezvous (BEP 15): one client per tracker and release, as a
//! state machine that takes time as a parameter and does no I/O.
//!
//! The exchange: a *connect* request earns a connection id (good for a minute); an *announce*
//! under it names the release (`info_hash`: the first 20 bytes of the swarm id), our port and
//! what is `left`, and is answered with an interval and up to a few hundred IPv4 peers. A request
//! not answered within 15 × 2^n s is sent again with n + 1 (BEP 15's retry rule, n ≤ 8); a reply
//! whose transaction id is not the one outstanding, that is short, or that is an error, changes
//! nothing but the log. The caller sends what [`TrackerClient::poll_transmit`] returns to the
//! tracker's address, feeds what comes back from that address to [`TrackerClient::handle`], and
//! dials the peers it returns under the same limits as peer exchange.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

/// BEP 15's magic constant that opens every connect request.
const PROTOCOL_ID: u64 = 0x0417_2710_1980;
const ACTION_CONNECT: u32 = 0;
const ACTION_ANNOUNCE: u32 = 1;
const ACTION_ERROR: u32 = 3;
/// A connection id may be used this long after it was received.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// First wait for a reply; doubled at each retry up to `MAX_RETRY` times.
const FIRST_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_RETRY: u32 = 8;
/// Intervals a tracker may ask for are held to this range: a tracker cannot make us announce
/// in a tight loop, nor silence us for a day.
const MIN_INTERVAL: Duration = Duration::from_secs(30);
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// While a release is incomplete and has no peer beyond its LAN, it announces again this soon
/// after an answer at the latest, whatever the interval: a device that started before the others
/// (a whole fleet starts at once after a publish) asks again for company. The wait doubles with
/// each answer, up to [`NEEDY_MAX`], so a site that can reach no one costs the tracker little.
pub const NEEDY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between announces of a release looking for company.
pub const NEEDY_MAX: Duration = Duration::from_secs(60);
/// Peers read from one announce reply; the rest are ignored.
pub const MAX_TRACKER_PEERS: usize = 64;
/// Largest datagram we send (an announce request).
pub const MAX_REQUEST: usize = 98;
/// Bytes of a receive buffer large enough for any reply we read.
pub const MAX_REPLY: usize = 20 + 6 * MAX_TRACKER_PEERS;

/// What an announce tells the tracker about us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes downloaded and uploaded so far, and still to fetch.
    pub downloaded: u64,
    pub uploaded: u64,
    pub left: u64,
}

/// An announce's event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AnnounceEvent {
    None = 0,
    Completed = 1,
    Started = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing outstanding: the next announce is due at `at`.
    Waiting { at: Instant },
    /// A connect request is outstanding.
    Connecting { tid: u32, sent: Instant, retry: u32 },
    /// An announce request is outstanding under connection `id`.
    Announcing { id: u64, tid: u32, sent: Instant, retry: u32 },
}

/// What a reply from the tracker came to.
// The peers travel by value, once per reply, on the stack: boxing them would allocate per reply.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Not for the request outstanding (another transaction, or nothing was outstanding), or
    /// not a reply at all: ignored.
    Ignored,
    /// A connection id: the announce follows at the next [`TrackerClient::poll_transmit`].
    Connected,
    /// The announce was answered: the tracker's interval, and the peers it named.
    Peers { interval: Duration, peers: heapless::Vec<SocketAddrV4, MAX_TRACKER_PEERS> },
    /// The tracker refused, with its message (e.g. a hash not on its whitelist); we try again
    /// after a back-off.
    Refused(heapless::String<64>),
}

/// One release's client of one tracker.
#[derive(Debug)]
pub struct TrackerClient {
    info_hash: [u8; 20],
    peer_id: [u8; 20],
    key: u32,
    port: u16,
    phase: Phase,
    /// The connection id and when it was received.
    connection: Option<(u64, Instant)>,
    /// The event the next announce carries: `Started` until one was answered, then `Completed`
    /// once after the release completes.
    event: AnnounceEvent,
    completed: bool,
    interval: Duration,
    /// Consecutive requests that went unanswered or were refused, for the back-off.
    failures: u32,
    /// When a release looking for company announces again at the latest ([`NEEDY_FIRST`]), and
    /// the wait after the next answer.
    needy_at: Instant,
    needy_wait: Duration,
    next_tid: u32,
}

impl TrackerClient {
    /// A client for the release `swarm`, announcing `port` (0: we accept no connections); its
    /// first request is due at `now`. `peer_id` and `key` identify this agent to the tracker,
    /// `tid_seed` starts its transaction ids (random, so a spoofer off the path cannot guess them).
    pub fn new(swarm: &[u8; 32], peer_id: [u8; 20], key: u32, port: u16, tid_seed: u32, now: Instant) -> Self {
        let mut info_hash = [0u8; 20];
        info_hash.copy_from_slice(&swarm[..20]);
        TrackerClient {
            info_hash,
            peer_id,
            key,
            port,
            phase: Phase::Waiting { at: now },
            connection: None,
            event: AnnounceEvent::Started,
            completed: false,
            interval: MIN_INTERVAL,
            failures: 0,
            needy_at: now,
            needy_wait: NEEDY_FIRST,
            next_tid: tid_seed,
        }
    }

    /// The info hash announced: the first 20 bytes of the swarm id.
    pub fn info_hash(&self) -> &[u8; 20] {
        &self.info_hash
    }

    /// The release completed: the tracker is told at once (event `completed`).
    pub fn completed(&mut self, now: Instant) {
        if self.completed {
            return;
        }
        self.completed = true;
        self.event = AnnounceEvent::Completed;
        if let Phase::Waiting { at } = &mut self.phase {
            *at = (*at).min(now);
        }
    }

    /// An incomplete release with no peer beyond its LAN: announce again soon (see
    /// [`NEEDY_FIRST`]).
    pub fn needs_peers(&mut self) {
        if let Phase::Waiting { at } = &mut self.phase {
            *at = (*at).min(self.needy_at);
        }
    }

    /// When [`TrackerClient::poll_transmit`] next has something to send.
    pub fn poll_timeout(&self) -> Instant {
        match self.phase {
            Phase::Waiting { at } => at,
            Phase::Connecting { sent, retry, .. } | Phase::Announcing { sent, retry, .. } => sent + timeout(retry),
        }
    }

    /// The datagram to send now, if one is due: a connect, an announce, or a retry of either.
    pub fn poll_transmit(&mut self, now: Instant, progress: Progress, out: &mut [u8; MAX_REQUEST]) -> Option<usize> {
        if now < self.poll_timeout() {
            return None;
        }
        let retry = match self.phase {
            Phase::Waiting { .. } => 0,
            Phase::Connecting { retry, .. } | Phase::Announcing { retry, .. } => {
                self.failures = self.failures.saturating_add(1);
                // Past the last retry, start over from a fresh connection after the longest wait.
                if retry >= MAX_RETRY {
                    self.connection = None;
                    self.phase = Phase::Waiting { at: now + timeout(MAX_RETRY) };
                    return None;
                }
                retry + 1
            }
        };
        let tid = self.take_tid();
        match self.connection.filter(|&(_, at)| now < at + CONNECTION_LIFETIME) {
            None => {
                self.connection = None;
                self.phase = Phase::Connecting { tid, sent: now, retry };
                out[..8].copy_from_slice(&PROTOCOL_ID.to_be_bytes());
                out[8..12].copy_from_slice(&ACTION_CONNECT.to_be_bytes());
                out[12..16].copy_from_slice(&tid.to_be_bytes());
                Some(16)
            }
            Some((id, _)) => {
                self.phase = Phase::Announcing { id, tid, sent: now, retry };
                Some(self.encode_announce(id, tid, progress, out))
            }
        }
    }

    fn encode_announce(&self, id: u64, tid: u32, p: Progress, out: &mut [u8; MAX_REQUEST]) -> usize {
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&id.to_be_bytes());
        put(&ACTION_ANNOUNCE.to_be_bytes());
        put(&tid.to_be_bytes());
        put(&self.info_hash);
        put(&self.peer_id);
        put(&p.downloaded.to_be_bytes());
        put(&p.left.to_be_bytes());
        put(&p.uploaded.to_be_bytes());
        put(&(self.event as u32).to_be_bytes());
        put(&0u32.to_be_bytes()); // IP: the tracker takes the datagram's source
        put(&self.key.to_be_bytes());
        put(&(-1i32).to_be_bytes()); // num_want: the tracker's default
        put(&self.port.to_be_bytes());
        at
    }

    fn take_tid(&mut self) -> u32 {
        // A Weyl sequence from a random start: distinct for 2^32 requests, unguessable from afar.
        self.next_tid = self.next_tid.wrapping_add(0x9e37_79b9);
        self.next_tid
    }

    /// A datagram from the tracker's address, at `now`.
    pub fn handle(&mut self, datagram: &[u8], now: Instant) -> Reply {
        let (Some(action), Some(tid)) = (be_u32(datagram, 0), be_u32(datagram, 4)) else { return Reply::Ignored };
        let outstanding = match self.phase {
            Phase::Connecting { tid, .. } | Phase::Announcing { tid, .. } => tid,
            Phase::Waiting { .. } => return Reply::Ignored,
        };
        if tid != outstanding {
            return Reply::Ignored;
        }
        match (action, self.phase) {
            (ACTION_CONNECT, Phase::Connecting { .. }) => {
                let Some(id) = be_u64(datagram, 8) else { return Reply::Ignored };
                self.connection = Some((id, now));
                self.phase = Phase::Waiting { at: now };
                Reply::Connected
            }
            (ACTION_ANNOUNCE, Phase::Announcing { .. }) => {
                let (Some(interval), true) = (be_u32(datagram, 8), datagram.len() >= 20) else { return Reply::Ignored };
                let interval = Duration::from_secs(interval.into()).clamp(MIN_INTERVAL, MAX_INTERVAL);
                let mut peers = heapless::Vec::new();
                for entry in datagram[20..].chunks_exact(6).take(MAX_TRACKER_PEERS) {
                    let ip = Ipv4Addr::new(entry[0], entry[1], entry[2], entry[3]);
                    let _ = peers.push(SocketAddrV4::new(ip, u16::from_be_bytes([entry[4], entry[5]])));
                }
                self.interval = interval;
                self.failures = 0;
                self.needy_at = now + self.needy_wait;
                self.needy_wait = (self.needy_wait * 2).min(NEEDY_MAX);
                // Told: `started` and `completed` are said once.
                self.event = AnnounceEvent::None;
                self.phase = Phase::Waiting { at: now + interval };
                Reply::Peers { interval, peers }
            }
            (ACTION_ERROR, _) => {
                let text = String::from_utf8_lossy(&datagram[8..]);
                let mut message = heapless::String::new();
                for c in text.chars().filter(|c| !c.is_control()) {
                    if message.push(c).is_err() {
                        break;
                    }
                }
                self.failures = self.failures.saturating_add(1);
                self.phase = Phase::Waiting { at: now + timeout(self.failures.min(MAX_RETRY)) };
                Reply::Refused(message)
            }
            _ => Reply::Ignored,
        }
    }
}

/// BEP 15's wait for a reply to the `retry`th retry: 15 × 2^retry seconds.
fn timeout(retry: u32) -> Duration {
    FIRST_TIMEOUT * (1 << retry.min(MAX_RETRY))
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROGRESS: Progress = Progress { downloaded: 5, uploaded: 7, left: 1000 };

    fn client(now: Instant) -> TrackerClient {
        TrackerClient::new(&[0xab; 32], *b"-FL0100-abcdefghijkl", 0x1234_5678, 7070, 99, now)
    }

    fn send(c: &mut TrackerClient, now: Instant) -> Vec<u8> {
        let mut out = [0u8; MAX_REQUEST];
        let n = c.poll_transmit(now, PROGRESS, &mut out).expect("a request is due");
        out[..n].to_vec()
    }

    fn connect_reply(req: &[u8], id: u64) -> Vec<u8> {
        [&0u32.to_be_bytes()[..], &req[12..16], &id.to_be_bytes()].concat()
    }

    fn announce_reply(req: &[u8], interval: u32, peers: &[([u8; 4], u16)]) -> Vec<u8> {
        let mut r = [&1u32.to_be_bytes()[..], &req[12..16], &interval.to_be_bytes(), &[0; 8]].concat();
        for (ip, port) in peers {
            r.extend_from_slice(ip);
            r.extend_from_slice(&port.to_be_bytes());
        }
        r
    }

    #[test]
    fn connects_announces_in_bep_15_layout_and_returns_the_peers() {
        let t0 = Instant::now();
        let mut c = client(t0);
        let req = send(&mut c, t0);
        assert_eq!(req.len(), 16);
        assert_eq!(&req[..8], &0x0417_2710_1980u64.to_be_bytes());
        assert_eq!(&req[8..12], &[0, 0, 0, 0]);
        assert_eq!(c.handle(&connect_reply(&req, 0xfeed), t0), Reply::Connected);

        let req = send(&mut c, t0);
        assert_eq!(req.len(), 98);
        assert_eq!(&req[..8], &0xfeedu64.to_be_bytes());
        assert_eq!(&req[8..12], &1u32.to_be_bytes());
        assert_eq!(&req[16..36], &[0xab; 20], "info hash: the swarm id's first 20 bytes");
        assert_eq!(&req[36..56], b"-FL0100-abcdefghijkl");
        assert_eq!(&req[56..64], &5u64.to_be_bytes());
        assert_eq!(&req[64..72], &1000u64.to_be_bytes(), "left");
        assert_eq!(&req[72..80], &7u64.to_be_bytes());
        assert_eq!(&req[80..84], &2u32.to_be_bytes(), "event started");
        assert_eq!(&req[88..92], &0x1234_5678u32.to_be_bytes());
        assert_eq!(&req[92..96], &(-1i32).to_be_bytes());
        assert_eq!(&req[96..98], &7070u16.to_be_bytes());
        let reply = announce_reply(&req, 1800, &[([10, 0, 0, 2], 7071), ([127, 0, 0, 3], 9)]);
        let Reply::Peers { interval, peers } = c.handle(&reply, t0) else { panic!("peers") };
        assert_eq!(interval, Duration::from_secs(1800));
        assert_eq!(peers.as_slice(), ["10.0.0.2:7071".parse().unwrap(), "127.0.0.3:9".parse().unwrap()]);
        assert_eq!(c.poll_timeout(), t0 + Duration::from_secs(1800));

        // The next announce, after the interval: a fresh connect (the id is past its minute),
        // then event none; a completion is told at once, as event completed.
        let t1 = t0 + Duration::from_secs(1800);
        let req = send(&mut c, t1);
        assert_eq!(req.len(), 16, "connection id expired: connect again");
        c.handle(&connect_reply(&req, 0xbeef), t1);
        let req = send(&mut c, t1);
        assert_eq!(&req[80..84], &0u32.to_be_bytes(), "event none");
        c.handle(&announce_reply(&req, 1800, &[]), t1);
        c.completed(t1 + Duration::from_secs(5));
        assert_eq!(c.poll_timeout(), t1 + Duration::from_secs(5));
        let req = send(&mut c, t1 + Duration::from_secs(5));
        assert_eq!(&req[80..84], &1u32.to_be_bytes(), "event completed, under the same id");
    }

    #[test]
    fn unanswered_requests_are_retried_at_15_times_2_to_the_n_seconds() {
        let t0 = Instant::now();
        let mut c = client(t0);
        let mut at = t0;
        let mut out = [0u8; MAX_REQUEST];
        assert!(c.poll_transmit(at, PROGRESS, &mut out).is_some());
        for n in 0..=MAX_RETRY {
            let wait = Duration::from_secs(15 << n);
            assert_eq!(c.poll_timeout(), at + wait, "retry {n}");
            assert!(c.poll_transmit(at + wait - Duration::from_millis(1), PROGRESS, &mut out).is_none());
            at += wait;
            let sent = c.poll_transmit(at, PROGRESS, &mut out);
            assert_eq!(sent.is_some(), n < MAX_RETRY, "retry {n}");
        }
        // Given up: starts over after the longest wait.
        assert_eq!(c.poll_timeout(), at + Duration::from_secs(15 << MAX_RETRY));
    }

    #[test]
    fn replies_that_are_not_for_the_request_outstanding_change_nothing() {
        let t0 = Instant::now();
        let mut c = client(t0);
        assert_eq!(c.handle(&[0; 16], t0), Reply::Ignored, "nothing outstanding");
        let req = send(&mut c, t0);
        let mut wrong = connect_reply(&req, 1);
        wrong[7] ^= 1;
        assert_eq!(c.handle(&wrong, t0), Reply::Ignored, "another transaction");
        assert_eq!(c.handle(&connect_reply(&req, 1)[..15], t0), Reply::Ignored, "short");
        assert_eq!(c.handle(&announce_reply(&req, 60, &[]), t0), Reply::Ignored, "announce to a connect");
        assert_eq!(c.handle(&[1, 2, 3], t0), Reply::Ignored);
        assert_eq!(c.handle(&connect_reply(&req, 1), t0), Reply::Connected, "the real one still counts");
        let req = send(&mut c, t0);
        assert_eq!(c.handle(&connect_reply(&req, 2), t0), Reply::Ignored, "a connect reply to an announce");
        // An interval of 0 or a day is held to bounds; peers past the cap are dropped.
        let many: Vec<_> = (0..200u8).map(|i| ([10, 0, 1, i], 7000)).collect();
        let Reply::Peers { interval, peers } = c.handle(&announce_reply(&req, 0, &many), t0) else { panic!() };
        assert_eq!((interval, peers.len()), (MIN_INTERVAL, MAX_TRACKER_PEERS));
    }

    #[test]
    fn a_refusal_backs_off_and_an_incomplete_release_without_peers_asks_again_soon() {
        let t0 = Instant::now();
        let mut c = client(t0);
        let req = send(&mut c, t0);
        let refusal = [&3u32.to_be_bytes()[..], &req[12..16], b"Requested download is not authorized\n"].concat();
        let Reply::Refused(why) = c.handle(&refusal, t0) else { panic!("refused") };
        assert_eq!(why.as_str(), "Requested download is not authorized");
        assert_eq!(c.poll_timeout(), t0 + Duration::from_secs(30));
        // Answered with a long interval, a fetcher without company asks again soon, then less
        // and less often, to a floor of once a minute.
        let mut t = t0 + Duration::from_secs(30);
        let req = send(&mut c, t);
        c.handle(&connect_reply(&req, 5), t);
        let mut waits = Vec::new();
        for _ in 0..6 {
            let req = send(&mut c, t);
            c.handle(&announce_reply(&req, 3000, &[]), t);
            assert_eq!(c.poll_timeout(), t + Duration::from_secs(3000), "the tracker's interval");
            c.needs_peers();
            waits.push((c.poll_timeout() - t).as_secs());
            t = c.poll_timeout();
            if c.connection.is_some_and(|(_, at)| t >= at + CONNECTION_LIFETIME) {
                let req = send(&mut c, t);
                c.handle(&connect_reply(&req, 5), t);
            }
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32]);
    }
}
