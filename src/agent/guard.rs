//! Who may hold a connection: bans, strikes for repeated handshake timeouts, and the key that
//! groups addresses for caps and bans.
//!
//! Addresses are grouped as a stranger could vary them: an IPv4 address is one key (an
//! IPv4-mapped IPv6 address is the same key as its IPv4 form, so a `[::]` listener and an IPv4
//! dial agree), an IPv6 address counts by its /64, since one host usually holds a whole /64 and
//! could rotate through it. The ban table is sized once from the configuration; when full, the
//! entry whose relevance ends first makes room, so a flood of fresh offenders cannot push out
//! a ban faster than bans expire on their own.

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// How long an address that misbehaved is refused and not dialled.
pub(super) const BAN_TIME: Duration = Duration::from_secs(600);
/// Handshake timeouts from one address (within `BAN_TIME`) that make a ban: a stranger holding
/// slots with connections that never finish a handshake.
const STRIKES_TO_BAN: u8 = 3;
/// Fewest entries the ban table holds, whatever `max_peers` is.
const MIN_BAN_ENTRIES: usize = 64;

/// The key an address counts under for caps and bans.
pub(super) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

struct Entry {
    key: IpAddr,
    /// Banned until then, if banned.
    banned_until: Option<Instant>,
    /// Handshake timeouts counted, forgotten at `strikes_until`.
    strikes: u8,
    strikes_until: Instant,
}

impl Entry {
    /// Until when this entry matters at all.
    fn relevant_until(&self) -> Instant {
        self.banned_until.map_or(self.strikes_until, |b| b.max(self.strikes_until))
    }
}

/// Offending addresses: bans and strikes, in a table that never grows past its start size.
pub(super) struct Bans {
    entries: Vec<Entry>,
    cap: usize,
}

impl Bans {
    /// A table for an agent with `max_peers` connection slots.
    pub(super) fn new(max_peers: usize) -> Bans {
        let cap = (8 * max_peers).max(MIN_BAN_ENTRIES);
        Bans { entries: Vec::with_capacity(cap), cap }
    }

    /// True if `ip` (by its key) is banned at `now`.
    pub(super) fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        let key = address_key(ip);
        self.entries.iter().any(|e| e.key == key && e.banned_until.is_some_and(|t| t > now))
    }

    /// How many addresses (by key) are banned at `now`.
    pub(super) fn active(&self, now: Instant) -> usize {
        self.entries.iter().filter(|e| e.banned_until.is_some_and(|t| t > now)).count()
    }

    /// Bans `ip` (by its key) for `BAN_TIME` from `now`.
    pub(super) fn ban(&mut self, ip: IpAddr, now: Instant) {
        self.entry(ip, now).banned_until = Some(now + BAN_TIME);
    }

    /// Counts a handshake timeout against `ip`; bans it at the third within `BAN_TIME`. Returns
    /// true if that made a ban.
    pub(super) fn strike(&mut self, ip: IpAddr, now: Instant) -> bool {
        let e = self.entry(ip, now);
        if e.strikes_until <= now {
            e.strikes = 0;
        }
        e.strikes += 1;
        e.strikes_until = now + BAN_TIME;
        if e.strikes < STRIKES_TO_BAN {
            return false;
        }
        e.strikes = 0;
        e.banned_until = Some(now + BAN_TIME);
        true
    }

    /// The entry of `ip`'s key, made if missing: in an expired entry's place, or when the table
    /// is full in the place of the one whose relevance ends first.
    fn entry(&mut self, ip: IpAddr, now: Instant) -> &mut Entry {
        let key = address_key(ip);
        if let Some(i) = self.entries.iter().position(|e| e.key == key) {
            return &mut self.entries[i];
        }
        let fresh = Entry { key, banned_until: None, strikes: 0, strikes_until: now };
        let reusable = self.entries.iter().position(|e| e.relevant_until() <= now);
        let i = match reusable {
            Some(i) => i,
            None if self.entries.len() < self.cap => {
                self.entries.push(fresh);
                return self.entries.last_mut().expect("just pushed");
            }
            None => (0..self.entries.len()).min_by_key(|&i| self.entries[i].relevant_until()).expect("table not empty"),
        };
        self.entries[i] = fresh;
        &mut self.entries[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn keys_normalise_mapped_addresses_and_group_ipv6_by_64() {
        assert_eq!(address_key(ip("::ffff:10.1.2.3")), IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
        assert_eq!(address_key(ip("10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(address_key(ip("2001:db8:1:2:aaaa::1")), address_key(ip("2001:db8:1:2:bbbb::2")));
        assert_ne!(address_key(ip("2001:db8:1:2::1")), address_key(ip("2001:db8:1:3::1")));
    }

    #[test]
    fn a_ban_covers_the_mapped_form_and_the_whole_64_and_expires() {
        let t0 = Instant::now();
        let mut b = Bans::new(32);
        b.ban(ip("::ffff:10.0.0.9"), t0);
        assert!(b.is_banned(ip("10.0.0.9"), t0), "a [::] listener's ban holds for the IPv4 dial");
        b.ban(ip("2001:db8:0:7::1"), t0);
        assert!(b.is_banned(ip("2001:db8:0:7:ffff::42"), t0), "rotating inside the /64 does not help");
        assert!(!b.is_banned(ip("2001:db8:0:8::1"), t0));
        assert!(!b.is_banned(ip("10.0.0.9"), t0 + BAN_TIME), "bans end");
    }

    #[test]
    fn three_handshake_timeouts_make_a_ban_and_old_strikes_are_forgotten() {
        let t0 = Instant::now();
        let mut b = Bans::new(32);
        let a = ip("10.0.0.1");
        assert!(!b.strike(a, t0));
        assert!(!b.strike(a, t0 + Duration::from_secs(10)));
        assert!(b.strike(a, t0 + Duration::from_secs(20)), "the third within the window bans");
        assert!(b.is_banned(a, t0 + Duration::from_secs(21)));
        let c = ip("10.0.0.2");
        assert!(!b.strike(c, t0));
        assert!(!b.strike(c, t0 + BAN_TIME + Duration::from_secs(1)), "a strike long ago is forgotten");
        assert!(!b.strike(c, t0 + BAN_TIME + Duration::from_secs(2)));
    }

    #[test]
    fn the_table_never_grows_and_a_ban_outlives_anything_short_of_a_tableful_of_newer_ones() {
        let t0 = Instant::now();
        let mut b = Bans::new(8); // 64 entries
        for i in 0..63u32 {
            b.ban(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), t0);
        }
        let x = ip("192.0.2.1");
        b.ban(x, t0 + Duration::from_secs(30));
        let at = |i: u32| t0 + Duration::from_secs(31 + i as u64);
        // 63 newer offenders push out the 63 older bans, not the newer one.
        for i in 0..63u32 {
            b.ban(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)), at(i));
            assert!(b.entries.len() <= 64);
        }
        assert!(b.is_banned(x, at(63)), "a recent ban was flushed by fewer than a tableful of newer ones");
        b.ban(ip("198.51.100.1"), at(64));
        assert!(!b.is_banned(x, at(64)), "a tableful of newer offenders makes room in expiry order");
        assert_eq!(b.entries.len(), 64);
        assert_eq!(b.entries.capacity(), 64, "allocated once");
    }
}
