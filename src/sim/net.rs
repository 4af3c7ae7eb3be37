//! The simulated network, at flow level: every chunk on the move is one flow through up to four
//! capacities (the sender's uplink, the receiver's downlink and, between sites, the sender's
//! site WAN uplink and the receiver's site WAN downlink). Each capacity is shared max-min
//! fairly among its flows, as long-lived TCP flows share a bottleneck; the shares are found by
//! progressive filling in a bounded number of rounds and recomputed at every step.
//!
//! Approximated: no slow start, no loss, no queueing delay beyond a fixed latency before a
//! flow's first byte; after [`ROUNDS`] rounds of filling, the flows not yet settled take their
//! current fair share (feasible, possibly a little below max-min).

/// Index of a capacity.
pub type Link = u32;
/// Index of a flow; slots are reused once a flow ends.
pub type FlowId = u32;

/// Rounds of progressive filling per step: enough for the few bottleneck levels of these
/// topologies (origin, WAN links, uplinks), bounded so that a step costs O(flows).
const ROUNDS: usize = 6;

/// One transfer through up to four links.
#[derive(Clone, Debug)]
pub struct Flow {
    links: [Link; 4],
    used: u8,
    /// Bytes still to move.
    pub left: f64,
    /// Simulated time before which no byte moves (the request's latency).
    pub start_at: f64,
    rate: f64,
    settled: bool,
}

/// Every link's capacity and every flow.
#[derive(Default)]
pub struct Net {
    capacity: Vec<f64>,
    flows: Vec<Option<Flow>>,
    free: Vec<FlowId>,
    /// Stopped in this step: reused only from the next, so that a flow id in a step's `done`
    /// list never names a flow started after it.
    stopped: Vec<FlowId>,
    // Scratch, kept to avoid allocating every step.
    left: Vec<f64>,
    count: Vec<u32>,
    saturated: Vec<bool>,
}

impl Net {
    /// A link of `bytes_per_s` (`f64::INFINITY`: not limited).
    pub fn link(&mut self, bytes_per_s: f64) -> Link {
        self.capacity.push(bytes_per_s);
        (self.capacity.len() - 1) as Link
    }

    /// Starts a flow of `bytes` through `links` (at most four) at `start_at`.
    pub fn start(&mut self, links: &[Link], bytes: f64, start_at: f64) -> FlowId {
        let mut l = [0; 4];
        l[..links.len()].copy_from_slice(links);
        let flow = Flow { links: l, used: links.len() as u8, left: bytes, start_at, rate: 0.0, settled: false };
        match self.free.pop() {
            Some(id) => {
                self.flows[id as usize] = Some(flow);
                id
            }
            None => {
                self.flows.push(Some(flow));
                (self.flows.len() - 1) as FlowId
            }
        }
    }

    /// Ends a flow (finished or aborted); returns the bytes it had left.
    pub fn stop(&mut self, id: FlowId) -> f64 {
        let Some(f) = self.flows[id as usize].take() else { return 0.0 };
        self.stopped.push(id);
        f.left
    }

    /// The flows in progress.
    pub fn flow_count(&self) -> usize {
        self.flows.iter().flatten().count()
    }

    /// Moves every flow on by `dt` seconds at its fair share at `now`; pushes the flows that
    /// finished onto `done`, in id order.
    pub fn step(&mut self, now: f64, dt: f64, done: &mut Vec<FlowId>) {
        self.free.append(&mut self.stopped);
        self.allocate(now);
        for (id, f) in self.flows.iter_mut().enumerate() {
            let Some(f) = f else { continue };
            if f.start_at > now {
                continue;
            }
            f.left -= f.rate * dt;
            if f.left <= 1e-6 {
                done.push(id as FlowId);
            }
        }
    }

    /// Max-min fair rates for the flows under way at `now`, by progressive filling: each round,
    /// a link whose fair share is the smallest share of every flow through it is saturated,
    /// and its flows are fixed at that share.
    fn allocate(&mut self, now: f64) {
        self.left.clear();
        self.left.extend_from_slice(&self.capacity);
        for f in self.flows.iter_mut().flatten() {
            f.settled = f.start_at > now;
            f.rate = 0.0;
        }
        for _ in 0..ROUNDS {
            self.count.clear();
            self.count.resize(self.capacity.len(), 0);
            for f in self.flows.iter().flatten().filter(|f| !f.settled) {
                for &l in &f.links[..f.used as usize] {
                    self.count[l as usize] += 1;
                }
            }
            let share = |l: Link, left: &[f64], count: &[u32]| left[l as usize] / count[l as usize].max(1) as f64;
            self.saturated.clear();
            self.saturated.resize(self.capacity.len(), true);
            let mut any = false;
            for f in self.flows.iter_mut().flatten().filter(|f| !f.settled) {
                let links = &f.links[..f.used as usize];
                let least = links.iter().map(|&l| share(l, &self.left, &self.count)).fold(f64::INFINITY, f64::min);
                f.rate = least;
                any = true;
                for &l in links {
                    if share(l, &self.left, &self.count) > least * (1.0 + 1e-9) {
                        self.saturated[l as usize] = false;
                    }
                }
            }
            if !any {
                return;
            }
            for f in self.flows.iter_mut().flatten().filter(|f| !f.settled) {
                let links = &f.links[..f.used as usize];
                if links.iter().any(|&l| self.saturated[l as usize] && self.capacity[l as usize].is_finite()) {
                    f.settled = true;
                    for &l in links {
                        self.left[l as usize] = (self.left[l as usize] - f.rate).max(0.0);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(net: &mut Net) -> Vec<f64> {
        net.allocate(0.0);
        net.flows.iter().flatten().map(|f| f.rate).collect()
    }

    #[test]
    fn one_link_is_shared_equally() {
        let mut net = Net::default();
        let up = net.link(100.0);
        for _ in 0..4 {
            net.start(&[up], 1e9, 0.0);
        }
        assert_eq!(rates(&mut net), vec![25.0; 4]);
    }

    #[test]
    fn a_flow_held_back_elsewhere_leaves_its_share_to_the_others() {
        // Two flows share an uplink of 100; one of them also crosses a link of 10.
        let mut net = Net::default();
        let (up, slow) = (net.link(100.0), net.link(10.0));
        net.start(&[up, slow], 1e9, 0.0);
        net.start(&[up], 1e9, 0.0);
        assert_eq!(rates(&mut net), vec![10.0, 90.0]);
    }

    #[test]
    fn flows_finish_when_their_bytes_have_moved_and_not_before_their_start() {
        let mut net = Net::default();
        let up = net.link(100.0);
        let a = net.start(&[up], 100.0, 0.0);
        let b = net.start(&[up], 100.0, 10.0);
        let mut done = Vec::new();
        net.step(0.0, 0.5, &mut done);
        assert!(done.is_empty(), "a alone at 100/s: half done after 0.5 s");
        net.step(0.5, 0.5, &mut done);
        assert_eq!(done, vec![a]);
        net.stop(a);
        assert_eq!(net.flow_count(), 1);
        assert!(net.flows[b as usize].as_ref().unwrap().left == 100.0, "b has not started");
    }
}
