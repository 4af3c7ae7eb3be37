//! LAN discovery: agents announce the swarms they serve on a UDP multicast group and dial the
//! agents they hear announcing a swarm they are fetching.
//!
//! An announcement carries nothing a listener must trust: an address and swarm ids. Whatever it
//! claims, the handshake and the signed manifest decide what is exchanged, so a forged or
//! malformed datagram can at worst cost one connection attempt into a bounded dial table.
//! Datagrams that do not decode exactly are ignored. This module owns the datagram format,
//! the announcement schedule and the turns a site's devices take polling the origin
//! ([`poll_phase`]); it does no I/O (the agent sends and receives).
//!
//! Datagram: `"FLOTANN1"` ‖ version u8 (2) ‖ flags u8 ‖ listen port u16 BE ‖ node u64 BE (the
//! sender's random node number, so an agent listening on 0.0.0.0 knows its own) ‖ count u8
//! (≤ 16) ‖ count × entries of 48 bytes: swarm id (32) ‖ release number u64 BE ‖ name tag (the
//! first 8 bytes of SHA-256 of the release name). Flag bit 0, "query": the sender is fetching
//! and asks listeners to announce now rather than at their next interval (each answers at most
//! once a second). The number and tag are the "latest" advertisement: a device following a name
//! hears that a neighbour holds a newer release of it, and asks that neighbour for the manifest.
//! They are claims like the rest; the signed manifest is what is believed. Flag bit 1, "behind":
//! the sender fetches the swarms it names (those it is still fetching) from a peer beyond its
//! LAN that it reached (a super-peer at a reachable site), so its site's other devices leave
//! the origin to that peer too. Listeners of the first version 2 builds ignore the bit.

use crate::core::manifest::SwarmId;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

/// The default group: administratively scoped (RFC 2365), so routers keep it on the LAN.
pub const DEFAULT_GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 70, 70), 7071);
/// Swarm ids in one announcement.
pub const MAX_IDS: usize = 16;
/// Bytes of one entry: swarm id, release number, name tag.
const ENTRY: usize = 48;
/// Largest announcement.
pub const MAX_DATAGRAM: usize = HEADER + MAX_IDS * ENTRY;

const MAGIC: &[u8; 8] = b"FLOTANN1";
const VERSION: u8 = 2;
const HEADER: usize = 21;
const FLAG_QUERY: u8 = 1;
const FLAG_BEHIND: u8 = 2;
/// Time between announcements.
const INTERVAL: Duration = Duration::from_secs(5);
/// Least time between two announcements made in answer to queries.
const ANSWER_GAP: Duration = Duration::from_secs(1);

/// A decoded announcement, borrowing the datagram.
#[derive(Debug, PartialEq, Eq)]
pub struct Announcement<'a> {
    /// The sender is fetching and asks for announcements.
    pub query: bool,
    /// The sender fetches from a reachable peer beyond its LAN (see the module's notes).
    pub behind: bool,
    /// The TCP port the sender accepts peers on.
    pub listen_port: u16,
    /// The sender's node number.
    pub node: u64,
    ids: &'a [u8],
}

impl<'a> Announcement<'a> {
    /// Decodes a datagram; `None` for anything that is not exactly a valid announcement.
    pub fn decode(d: &'a [u8]) -> Option<Self> {
        if d.len() < HEADER || &d[..8] != MAGIC || d[8] != VERSION {
            return None;
        }
        let count = d[20] as usize;
        if count > MAX_IDS || d.len() != HEADER + count * ENTRY {
            return None;
        }
        let listen_port = u16::from_be_bytes([d[10], d[11]]);
        if listen_port == 0 {
            return None;
        }
        let mut node = [0u8; 8];
        node.copy_from_slice(&d[12..20]);
        let node = u64::from_be_bytes(node);
        let (query, behind) = (d[9] & FLAG_QUERY != 0, d[9] & FLAG_BEHIND != 0);
        Some(Announcement { query, behind, listen_port, node, ids: &d[HEADER..] })
    }

    /// True if the announcement names swarm `id`.
    pub fn names(&self, id: &SwarmId) -> bool {
        self.ids.chunks_exact(ENTRY).any(|c| &c[..32] == id)
    }

    /// Its entries: what the sender says each swarm is.
    pub fn entries(&self) -> impl Iterator<Item = Advert> + '_ {
        self.ids.chunks_exact(ENTRY).map(|c| {
            let mut swarm = [0u8; 32];
            swarm.copy_from_slice(&c[..32]);
            let mut n = [0u8; 8];
            n.copy_from_slice(&c[32..40]);
            let mut tag = [0u8; 8];
            tag.copy_from_slice(&c[40..]);
            Advert { swarm, release: u64::from_be_bytes(n), name_tag: tag }
        })
    }
}

/// One entry of an announcement: a swarm, and which release of which name it says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advert {
    pub swarm: SwarmId,
    pub release: u64,
    pub name_tag: [u8; 8],
}

/// The tag of a release name in announcements: the first 8 bytes of its SHA-256.
pub fn name_tag(name: &str) -> [u8; 8] {
    let d = crate::core::manifest::sha256(name.as_bytes());
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&d[..8]);
    tag
}

/// What an announcement's flags say about its sender.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// It is fetching and asks for announcements.
    pub query: bool,
    /// It fetches from a reachable peer beyond its LAN.
    pub behind: bool,
}

/// Encodes an announcement of up to [`MAX_IDS`] entries into `out`; returns its length.
pub fn encode(
    flags: Flags,
    listen_port: u16,
    node: u64,
    adverts: impl Iterator<Item = Advert>,
    out: &mut [u8; MAX_DATAGRAM],
) -> usize {
    out[..8].copy_from_slice(MAGIC);
    out[8] = VERSION;
    out[9] = if flags.query { FLAG_QUERY } else { 0 } | if flags.behind { FLAG_BEHIND } else { 0 };
    out[10..12].copy_from_slice(&listen_port.to_be_bytes());
    out[12..20].copy_from_slice(&node.to_be_bytes());
    let mut n = 0;
    for a in adverts.take(MAX_IDS) {
        let e = &mut out[HEADER + n * ENTRY..HEADER + (n + 1) * ENTRY];
        e[..32].copy_from_slice(&a.swarm);
        e[32..40].copy_from_slice(&a.release.to_be_bytes());
        e[40..].copy_from_slice(&a.name_tag);
        n += 1;
    }
    out[20] = n as u8;
    HEADER + n * ENTRY
}

/// When to announce: at start, every [`INTERVAL`], and soon after a query (rate-limited).
#[derive(Debug)]
pub struct Schedule {
    next: Instant,
    last_answer: Option<Instant>,
    last_news: Option<Instant>,
}

impl Schedule {
    /// Announces at once.
    pub fn new(now: Instant) -> Self {
        Schedule { next: now, last_answer: None, last_news: None }
    }

    /// When the next announcement is due.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// True (and the next one scheduled) if an announcement is due.
    pub fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + INTERVAL;
        true
    }

    /// We have news for the LAN (a release added, a change of where we stand): announce now,
    /// so it learns within a round trip rather than at our next interval; at most once per
    /// [`ANSWER_GAP`], so a peer that flips what we would say cannot make us flood the group.
    pub fn announce_now(&mut self, now: Instant) {
        if self.last_news.is_none_or(|t| now >= t + ANSWER_GAP) {
            self.last_news = Some(now);
            self.next = self.next.min(now);
        }
    }

    /// Someone asked: announce now, unless we answered less than [`ANSWER_GAP`] ago.
    pub fn on_query(&mut self, now: Instant) {
        if self.last_answer.is_none_or(|t| now >= t + ANSWER_GAP) {
            self.last_answer = Some(now);
            self.next = self.next.min(now);
        }
    }
}

/// The phase, in seconds within each poll interval, at which a device polls the origin for a
/// followed name. The devices of a site (ranked by address as for their site shares,
/// `(rank, of)`) take turns evenly: the site as a whole polls every `interval / of` seconds, and
/// the first of them to learn of a release tells the rest at once over the LAN, while each
/// device still polls once per interval. `jitter` (in [0, 1), drawn once per device) places it
/// within the middle half of its turn, so that the same ranks of different sites do not poll
/// at the same instant; a device that knows no site takes any phase.
pub fn poll_phase(interval: f64, share: Option<(u32, u32)>, jitter: f64) -> f64 {
    match share {
        Some((rank, of)) if of > 1 && rank < of => (rank as f64 + 0.25 + jitter / 2.0) * interval / of as f64,
        _ => jitter * interval,
    }
}

/// Seconds from `now` to the next poll at `phase`: the first instant at least `min_gap` after
/// `now` whose time modulo `interval` is `phase`. `now` is on a clock the site's devices share
/// (Unix time; devices whose clocks disagree merely poll at unrelated phases, as without
/// turns). After a poll the agent asks with half an interval as the gap, so a device whose
/// phase moved (its rank in the site changed) still polls about once per interval.
pub fn until_poll(now: f64, interval: f64, phase: f64, min_gap: f64) -> f64 {
    let earliest = now + min_gap;
    let wait = (phase - earliest).rem_euclid(interval);
    min_gap + wait
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_exact_decoding() {
        let ids = [[1u8; 32], [2u8; 32]];
        let adverts: Vec<Advert> = ids
            .iter()
            .enumerate()
            .map(|(i, &swarm)| Advert { swarm, release: 7 + i as u64, name_tag: name_tag("fw.img") })
            .collect();
        let mut buf = [0u8; MAX_DATAGRAM];
        let n = encode(Flags { query: true, behind: false }, 7070, 0xfeed, adverts.iter().copied(), &mut buf);
        let mut behind = [0u8; MAX_DATAGRAM];
        let flags = Flags { query: false, behind: true };
        let len = encode(flags, 7070, 1, adverts.iter().copied(), &mut behind);
        let b = Announcement::decode(&behind[..len]);
        assert!(b.is_some_and(|b| b.behind && !b.query), "the behind flag travels");
        let a = Announcement::decode(&buf[..n]).unwrap();
        assert!(
            a.query && !a.behind && a.listen_port == 7070 && a.node == 0xfeed && a.names(&ids[1]) && !a.names(&[3; 32])
        );
        assert_eq!(a.entries().collect::<Vec<_>>(), adverts);
        assert_ne!(name_tag("fw.img"), name_tag("fw.im"));
        for cut in 0..n {
            assert!(Announcement::decode(&buf[..cut]).is_none(), "truncated at {cut}");
        }
        assert!(Announcement::decode(&buf[..n + 1]).is_none(), "trailing byte");
        let mut long = vec![0u8; HEADER + 17 * ENTRY];
        long[..HEADER].copy_from_slice(&buf[..HEADER]);
        long[20] = 17;
        assert!(Announcement::decode(&long).is_none(), "too many ids");
        let mut bad = buf;
        bad[8] = 1;
        assert!(Announcement::decode(&bad[..n]).is_none(), "the first version (ids alone) is refused");
        bad = buf;
        bad[10] = 0;
        bad[11] = 0;
        assert!(Announcement::decode(&bad[..n]).is_none(), "port 0");
    }

    #[test]
    fn random_datagrams_decode_exactly_when_the_format_allows() {
        // Random bytes alone almost never pass the magic, so every input starts with it and most
        // with a plausible version and count: the checks past the magic are what is exercised.
        let mut rng = crate::core::rng::Rng::new(1);
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let count = rng.below(MAX_IDS as u64 + 3) as usize;
            let len = match rng.below(3) {
                0 => rng.below(MAX_DATAGRAM as u64 + 40) as usize,
                _ => HEADER + count * ENTRY,
            };
            let mut d = rng.bytes(len.max(MAGIC.len()));
            d[..MAGIC.len()].copy_from_slice(MAGIC);
            if d.len() > 20 {
                d[8] = if rng.below(4) == 0 { rng.next_u64() as u8 } else { VERSION };
                d[20] = count as u8;
            }
            let valid = d.len() >= HEADER
                && d[8] == VERSION
                && (d[20] as usize) <= MAX_IDS
                && d.len() == HEADER + d[20] as usize * ENTRY
                && u16::from_be_bytes([d[10], d[11]]) != 0;
            assert_eq!(Announcement::decode(&d).is_some(), valid, "datagram {d:?}");
            if valid {
                accepted += 1
            } else {
                refused += 1
            }
        }
        assert!(accepted > 1000 && refused > 1000, "both outcomes exercised: {accepted} / {refused}");
    }

    #[test]
    fn announces_at_start_then_every_interval_and_answers_queries_at_most_once_a_second() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        assert!(s.due(t0));
        assert!(!s.due(t0 + Duration::from_secs(1)));
        s.on_query(t0 + Duration::from_secs(1));
        assert!(s.due(t0 + Duration::from_secs(1)));
        s.on_query(t0 + Duration::from_millis(1500));
        assert!(!s.due(t0 + Duration::from_millis(1500)), "second answer within a second");
        assert!(s.due(t0 + Duration::from_secs(6)));
        // News is announced at once, at most once a second.
        let t = t0 + Duration::from_secs(7);
        s.announce_now(t);
        assert!(s.due(t));
        s.announce_now(t + Duration::from_millis(500));
        assert!(!s.due(t + Duration::from_millis(500)), "news again within a second waits");
        s.announce_now(t + Duration::from_millis(1000));
        assert!(s.due(t + Duration::from_millis(1000)));
    }

    #[test]
    fn a_site_polls_in_turns_each_device_once_per_interval() {
        let (interval, of) = (300.0, 20u32);
        let mut phases: Vec<f64> = (0..of).map(|rank| poll_phase(interval, Some((rank, of)), 0.999)).collect();
        phases.extend((0..of).map(|rank| poll_phase(interval, Some((rank, of)), 0.0)));
        for rank in 0..of as usize {
            let turn = interval / of as f64;
            for p in [phases[rank], phases[rank + of as usize]] {
                assert!(p >= rank as f64 * turn && p < (rank + 1) as f64 * turn, "rank {rank} polls in its turn: {p}");
            }
        }
        // Whatever each device's jitter, the site's longest silence is at most one and a half turns.
        let mut site: Vec<f64> =
            (0..of).map(|rank| poll_phase(interval, Some((rank, of)), (rank % 3) as f64 / 3.0)).collect();
        site.sort_by(f64::total_cmp);
        let gaps = site.windows(2).map(|w| w[1] - w[0]).chain([site[0] + interval - site[of as usize - 1]]);
        assert!(gaps.fold(0.0f64, f64::max) <= 1.5 * interval / of as f64);
        assert_eq!(poll_phase(interval, None, 0.5), 150.0, "alone: any phase");
        assert_eq!(poll_phase(interval, Some((0, 1)), 0.5), 150.0);
    }

    #[test]
    fn the_next_poll_is_at_the_phase_and_at_least_the_gap_away() {
        let interval = 300.0;
        // Polled at its phase: the next one a whole interval later.
        assert_eq!(until_poll(1000.0 * interval + 40.0, interval, 40.0, interval / 2.0), interval);
        // The first poll after a release is published: the next instant at the phase.
        assert_eq!(until_poll(1000.0 * interval + 10.0, interval, 40.0, 0.0), 30.0);
        assert_eq!(until_poll(1000.0 * interval + 50.0, interval, 40.0, 0.0), 290.0);
        // A phase moved close ahead: skipped to the one after, never sooner than the gap.
        assert_eq!(until_poll(1000.0 * interval + 40.0, interval, 60.0, interval / 2.0), 320.0);
        for now in [0.0, 17.5, 299.9, 1e9 + 0.25] {
            let wait = until_poll(now, interval, 100.0, interval / 2.0);
            assert!((interval / 2.0..interval * 1.5).contains(&wait), "{now}: {wait}");
            assert!(((now + wait).rem_euclid(interval) - 100.0).abs() < 1e-6);
        }
    }
}
