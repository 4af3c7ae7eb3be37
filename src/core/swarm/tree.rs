//! The tree of reachable devices: which one of them takes the release from the origin.
//!
//! A device reachable from outside (a super-peer: a forwarded port, a public address) serves
//! the sites behind NAT that reach it. If each super-peer took its copy from the origin, the
//! origin would send one per reachable site; instead the super-peers joined by connections
//! elect one of them, the one with the lowest node number, and only it (and its site) uses the
//! origin; the others, and their sites, fetch from the tree. The election is a distance vector
//! in the manner of a spanning tree's root bridge: each super-peer advertises, to its peers
//! beyond its LAN, the lowest node number it knows of with the hops to it ([`Message::Tree`]),
//! its own at 0 hops if none is lower. Adverts past [`MAX_HOPS`] are not believed, so the
//! adverts of a root that left count up to it and die out (each step is one message, so this
//! takes round trips, not timers), and the next lowest takes over.
//!
//! [`Message::Tree`]: crate::core::wire::Message::Tree

use super::{PeerId, Swarm};
use crate::core::session::Control;

/// Hops past which an advertised root is not believed; a hop count above it on the wire says
/// the sender advertises nothing (it is no longer reachable).
pub const MAX_HOPS: u8 = 8;

/// A super-peer's advert: the lowest node number it knows of among the reachable devices
/// joined to it, and how many connections away that device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TreeAdvert {
    pub root: u64,
    pub hops: u8,
}

impl TreeAdvert {
    /// What the wire says: none for a hop count past [`MAX_HOPS`] (withdrawn, or not believed).
    pub fn from_wire(root: u64, hops: u8) -> Option<TreeAdvert> {
        (hops <= MAX_HOPS).then_some(TreeAdvert { root, hops })
    }

    /// The withdrawal, on the wire.
    pub const NONE: (u64, u8) = (u64::MAX, u8::MAX);
}

/// The advert a device makes: none unless it is reachable; else the lowest root among its own
/// node at 0 hops and each advert heard one hop further (within [`MAX_HOPS`]), the fewest hops
/// breaking ties.
pub fn best_advert(own: u64, reachable: bool, heard: impl Iterator<Item = TreeAdvert>) -> Option<TreeAdvert> {
    if !reachable {
        return None;
    }
    let further = heard.filter(|a| a.hops < MAX_HOPS).map(|a| TreeAdvert { root: a.root, hops: a.hops + 1 });
    further.chain([TreeAdvert { root: own, hops: 0 }]).min()
}

impl Swarm {
    /// Whether this device is reachable from outside (the caller knows: a peer beyond its LAN
    /// dialled it); only then does it take part in the tree.
    pub fn set_reachable(&mut self, reachable: bool) {
        if self.reachable != reachable {
            self.reachable = reachable;
            self.refresh_tree();
        }
    }

    /// This device is reachable and the tree's root is another: it leaves the origin to the
    /// tree, and so does its site.
    pub fn behind_in_tree(&self) -> bool {
        self.tree.is_some_and(|t| t.root != self.config.node)
    }

    /// The advert this device makes, if any.
    pub fn tree_advert(&self) -> Option<TreeAdvert> {
        self.tree
    }

    pub(super) fn on_tree(&mut self, id: PeerId, root: u64, hops: u8) {
        self.session_mut(id).tree = TreeAdvert::from_wire(root, hops);
        self.refresh_tree();
    }

    /// Recomputes our advert from the adverts of our active peers beyond the LAN; a change
    /// goes to each of them.
    pub(super) fn refresh_tree(&mut self) {
        let heard = self.peers.iter().flatten().filter(|s| s.is_active() && s.beyond_lan).filter_map(|s| s.tree);
        let best = best_advert(self.config.node, self.reachable, heard);
        if best == self.tree {
            return;
        }
        self.tree = best;
        for s in self.peers.iter_mut().flatten().filter(|s| s.is_active() && s.beyond_lan) {
            s.push_control(Control::Tree);
        }
    }

    /// What `Control::Tree` says when it leaves.
    pub(super) fn tree_on_wire(&self) -> (u64, u8) {
        self.tree.map_or(TreeAdvert::NONE, |t| (t.root, t.hops))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heard(list: &[(u64, u8)]) -> impl Iterator<Item = TreeAdvert> + '_ {
        list.iter().filter_map(|&(root, hops)| TreeAdvert::from_wire(root, hops))
    }

    #[test]
    fn the_lowest_root_wins_at_the_fewest_hops_and_only_reachable_devices_advertise() {
        assert_eq!(best_advert(50, false, heard(&[(3, 0)])), None, "not reachable: no part in the tree");
        assert_eq!(best_advert(50, true, heard(&[])), Some(TreeAdvert { root: 50, hops: 0 }), "alone: its own root");
        assert_eq!(best_advert(50, true, heard(&[(70, 0), (60, 2)])), Some(TreeAdvert { root: 50, hops: 0 }));
        let best = best_advert(50, true, heard(&[(9, 3), (7, 4), (7, 2), (60, 0)]));
        assert_eq!(best, Some(TreeAdvert { root: 7, hops: 3 }), "lowest root, then fewest hops");
        assert_eq!(best_advert(50, true, heard(&[(7, MAX_HOPS)])), Some(TreeAdvert { root: 50, hops: 0 }), "too far");
        assert_eq!(TreeAdvert::from_wire(TreeAdvert::NONE.0, TreeAdvert::NONE.1), None, "withdrawn");
    }

    #[test]
    fn a_root_that_leaves_is_forgotten_after_its_adverts_count_up_and_the_next_lowest_takes_over() {
        // A ring of super-peers 10..16, each joined to its two neighbours; the root, 10, leaves.
        let nodes: Vec<u64> = (11..17).collect();
        let n = nodes.len();
        let mut adverts: Vec<Option<TreeAdvert>> =
            nodes.iter().map(|_| Some(TreeAdvert { root: 10, hops: 1 })).collect();
        let mut rounds = 0;
        loop {
            let next: Vec<_> = (0..n)
                .map(|i| {
                    let neighbours = [adverts[(i + n - 1) % n], adverts[(i + 1) % n]];
                    best_advert(nodes[i], true, neighbours.into_iter().flatten())
                })
                .collect();
            if next == adverts {
                break;
            }
            adverts = next;
            rounds += 1;
            assert!(rounds <= 2 * MAX_HOPS as usize + n, "settles within the hop limit");
        }
        assert!(adverts.iter().all(|a| a.is_some_and(|a| a.root == 11)), "{adverts:?}");
        assert_eq!(adverts[0], Some(TreeAdvert { root: 11, hops: 0 }));
    }
}
