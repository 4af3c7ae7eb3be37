//! Whom to dial for each release: the dial tables.
//!
//! Each release keeps a bounded table of addresses (from `--peer`, LAN announcements and peer
//! exchange), each redialled with back-off while the release is incomplete. Banned addresses
//! (`guard.rs`) are not dialled.

use super::{sys, Agent, Held};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Dials in a row that fail (no finished handshake) before a learnt address is shed.
const MAX_FAILURES: u8 = 3;
/// How often a dial that cannot go now (banned, already connected, no free slot, beyond the
/// LAN while the site's dialler has its share of those) is looked at.
const REDIAL_CHECK: Duration = Duration::from_secs(2);
/// Addresses kept per release to dial (from `--peer` and peer exchange).
const MAX_DIALS: usize = 64;
/// First wait before redialling an address, doubled at each failure up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// An address found to be our own is not dialled again for this long.
const OWN_ADDRESS: Duration = Duration::from_secs(86_400);

/// An address we keep a connection to for one release, redialled with backoff.
pub(super) struct Dial {
    addr: SocketAddr,
    pub(super) slot: Option<usize>,
    pub(super) next_try: Instant,
    backoff: Duration,
    /// Given with `--peer`: kept whatever happens. Learnt addresses are shed after `MAX_FAILURES`.
    configured: bool,
    /// Dials in a row that never reached a finished handshake.
    failures: u8,
}

impl Dial {
    fn new(addr: SocketAddr, configured: bool, now: Instant) -> Dial {
        Dial { addr, slot: None, next_try: now, backoff: FIRST_BACKOFF, configured, failures: 0 }
    }

    /// An address from `--peer`.
    pub(super) fn configured(addr: SocketAddr, now: Instant) -> Dial {
        Dial::new(addr, true, now)
    }

    /// Its connection closed, after a finished handshake (`worked`: or a peer that answered it
    /// is full, alive) or not; a peer that stalled, went silent or is full is not worth an
    /// instant redial.
    pub(super) fn closed(&mut self, worked: bool, stalled: bool, now: Instant) {
        self.slot = None;
        self.failures = if worked { 0 } else { self.failures.saturating_add(1) };
        if stalled {
            self.back_off(now);
        }
    }

    /// Waiting to be dialled again (not connected, not shed).
    pub(super) fn is_due_later(&self) -> bool {
        self.slot.is_none() && !self.is_shed()
    }

    /// A learnt address that kept failing: not dialled again, and its entry may be reused.
    fn is_shed(&self) -> bool {
        !self.configured && self.failures >= MAX_FAILURES && self.slot.is_none()
    }

    fn back_off(&mut self, now: Instant) {
        self.next_try = now + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// Adds `addr` to the release's dial table unless it is us or known already. A full table takes
/// it only in the place of an entry shed for failing; an address that was shed is not taken
/// back until its entry has been reused, so a liar repeating it gains nothing.
pub(super) fn add_dial(h: &mut Held, addr: SocketAddr, me: Option<SocketAddr>, now: Instant) {
    if Some(addr) == me || h.dials.iter().any(|d| d.addr == addr) {
        return;
    }
    let learnt = Dial::new(addr, false, now);
    if h.dials.len() < MAX_DIALS {
        h.dials.push(learnt);
    } else if let Some(shed) = h.dials.iter_mut().find(|d| d.is_shed()) {
        *shed = learnt;
    } else {
        return;
    }
    log::debug!("{}: learnt peer {addr}", h.release.name());
}

impl Agent {
    /// We accepted our own dial: the address it reached is ours, learnt from a peer. Only this
    /// end sees the reason (the dialling end sees the close), so it is here that the dial is put
    /// to rest.
    pub(super) fn forget_own_address(&mut self, ours: SocketAddr, now: Instant) {
        for d in self.releases.iter_mut().flat_map(|h| h.dials.iter_mut()).filter(|d| d.addr == ours) {
            d.next_try = now + OWN_ADDRESS;
        }
    }

    /// Dials the addresses that are due, for every incomplete release that is not set aside.
    pub(super) fn dial(&mut self, now: Instant) {
        for r in 0..self.releases.len() {
            if self.releases[r].release.is_complete() || self.releases[r].is_paused(now) {
                continue;
            }
            for d in 0..self.releases[r].dials.len() {
                let dial = &self.releases[r].dials[d];
                if dial.slot.is_some() || dial.next_try > now || dial.is_shed() {
                    continue;
                }
                let (addr, learnt) = (dial.addr, !dial.configured);
                let skip = self.bans.is_banned(addr.ip(), now)
                    || self.releases[r].release.swarm().is_connected_to(addr)
                    || (learnt && self.beyond_lan(addr) && !self.dials_beyond_lan(r));
                let slot = self.free_slot();
                let dial = &mut self.releases[r].dials[d];
                // Looked at again later, not at every turn: a due dial is a wakeup deadline.
                let Some(slot) = slot.filter(|_| !skip) else {
                    dial.next_try = now + REDIAL_CHECK;
                    continue;
                };
                dial.back_off(now);
                match sys::connect_from(self.config.listen, addr) {
                    Ok(stream) => {
                        dial.slot = Some(slot);
                        self.open_slot(slot, stream, addr, Some((r, d)), now);
                    }
                    Err(e) => {
                        dial.failures = dial.failures.saturating_add(1);
                        log::debug!("cannot connect to {addr}: {e}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_learnt_address_that_keeps_failing_is_shed_and_a_configured_one_never_is() {
        let now = Instant::now();
        let addr: SocketAddr = "192.0.2.1:7070".parse().unwrap();
        let mut learnt = Dial::new(addr, false, now);
        let mut given = Dial::configured(addr, now);
        for _ in 0..MAX_FAILURES {
            assert!(!learnt.is_shed());
            learnt.closed(false, false, now);
            given.closed(false, false, now);
        }
        assert!(learnt.is_shed() && !learnt.is_due_later(), "three failures in a row shed it");
        assert!(!given.is_shed(), "--peer addresses stay");
        let mut recovers = Dial::new(addr, false, now);
        recovers.closed(false, false, now);
        recovers.closed(false, false, now);
        recovers.closed(true, false, now);
        recovers.closed(false, false, now);
        assert!(!recovers.is_shed(), "a finished handshake resets the count");
    }
}
