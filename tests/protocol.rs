//! Protocol tests: several sans-IO releases wired together through an in-memory network with a
//! fake clock, as in quinn-proto's `Pair`. Each node is the very `Release` type the agent runs,
//! over an in-memory store, so commits, commit batching and storage failures happen here too.
//! Every frame goes through the real wire encoding. Runs are deterministic: the same seeds give
//! the same timeline, byte for byte.

use flotilla::core::bitfield::Bitfield;
use flotilla::core::manifest::{Manifest, SignedManifest, SwarmId};
use flotilla::core::release::{Event, Release, ReleaseConfig};
use flotilla::core::rng::Rng;
use flotilla::core::session::CloseReason;
use flotilla::core::storage::StoreError;
use flotilla::core::swarm::{NewPeer, PeerId, Swarm, SwarmConfig, Transmit};
use flotilla::core::wire::{self, Bytes, Message, MAX_FRAME, VERSION};
use flotilla::store::memory::MemStore;
use sha2::{Digest, Sha256};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// How a simulated node behaves when it sends blocks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Behaviour {
    Honest,
    /// Sends every block with its bytes flipped.
    Corrupt,
    /// Accepts requests and never sends a block.
    Mute,
}

struct Node {
    release: Release<MemStore>,
    /// Storage failures the release reported (a serving agent would set it aside and retry).
    failures: Vec<StoreError>,
    /// Upload capacity of the node's link in bytes per second.
    uplink: u64,
    /// When the uplink finishes sending what it has been given.
    up_free: Instant,
    behaviour: Behaviour,
    done_at: Option<Duration>,
}

struct Delivery {
    at: Instant,
    seq: u64,
    conn: usize,
    to: usize,
    frame: Vec<u8>,
}

impl PartialEq for Delivery {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Delivery {}
impl PartialOrd for Delivery {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delivery {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// A connection between two nodes; on both sides its index is the `PeerId`.
struct Link {
    ends: [usize; 2],
    closed: Option<(usize, CloseReason)>,
}

struct Sim {
    start: Instant,
    now: Instant,
    latency: Duration,
    manifest: Manifest,
    original: Vec<u8>,
    nodes: Vec<Node>,
    links: Vec<Link>,
    queue: BinaryHeap<Reverse<Delivery>>,
    seq: u64,
    /// Dial the addresses peer exchange teaches.
    follow_pex: bool,
    /// Nonces for the Hellos.
    rng: Rng,
}

/// Fixed data of a given length from a seed.
fn data(len: usize, seed: u64) -> Vec<u8> {
    Rng::new(seed).bytes(len)
}

fn manifest_for(data: &[u8], chunk_size: u32) -> Manifest {
    Manifest {
        name: "sim.img".into(),
        release: 1,
        file_size: data.len() as u64,
        chunk_size,
        file_hash: Sha256::digest(data).into(),
        chunk_hashes: data.chunks(chunk_size as usize).map(|c| Sha256::digest(c).into()).collect(),
        expires: None,
        targets: Vec::new(),
        rollout: None,
    }
}

const SWARM: SwarmId = [7; 32];

impl Sim {
    fn new(file_len: usize, chunk_size: u32) -> Sim {
        let original = data(file_len, 42);
        let manifest = manifest_for(&original, chunk_size);
        let start = Instant::now();
        Sim {
            start,
            now: start,
            latency: Duration::from_millis(5),
            manifest,
            original,
            nodes: Vec::new(),
            links: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            follow_pex: false,
            rng: Rng::new(99),
        }
    }

    fn add_node(&mut self, complete: bool, uplink: u64, behaviour: Behaviour, config: SwarmConfig) -> usize {
        let n = self.manifest.chunk_count();
        let (store, present) = match complete {
            true => (MemStore::with_data("sim.img", self.original.clone(), true), Bitfield::full(n)),
            false => (MemStore::new("sim.img", self.original.len() as u64), Bitfield::new(n)),
        };
        let seed = 1000 + self.nodes.len() as u64;
        let swarm = SwarmConfig { max_peers: 600, node: seed, listen_port: 7070, ..config };
        let config = ReleaseConfig { swarm, ..ReleaseConfig::default() };
        let signed =
            SignedManifest { manifest: self.manifest.clone(), bytes: Vec::new(), swarm_id: SWARM, signers: Vec::new() };
        let release = Release::new(&signed, store, &present, config, seed, self.now);
        self.nodes.push(Node { release, failures: Vec::new(), uplink, up_free: self.now, behaviour, done_at: None });
        self.nodes.len() - 1
    }

    /// Connects `a` (dialling) to `b` (accepting).
    fn connect(&mut self, a: usize, b: usize) {
        let id = self.links.len();
        self.links.push(Link { ends: [a, b], closed: None });
        let (na, nb) = (self.rng.next_u64().to_le_bytes(), self.rng.next_u64().to_le_bytes());
        let nonce = |n: [u8; 8]| [n, n].concat().try_into().unwrap();
        let dialler = NewPeer { outbound: true, remote: Some(Self::addr(b)), beyond_lan: false, nonce: nonce(na) };
        let acceptor = NewPeer { outbound: false, remote: Some(Self::addr(a)), beyond_lan: false, nonce: nonce(nb) };
        assert!(self.nodes[a].release.add_peer(id, dialler, self.now));
        assert!(self.nodes[b].release.add_peer(id, acceptor, self.now));
    }

    /// Connects `a` (dialling) to `b` (accepting) across the WAN: each is beyond the other's LAN.
    fn connect_beyond_lan(&mut self, a: usize, b: usize) -> usize {
        let id = self.links.len();
        self.links.push(Link { ends: [a, b], closed: None });
        let dialler = NewPeer { outbound: true, remote: Some(Self::addr(b)), beyond_lan: true, nonce: [1; 16] };
        let acceptor = NewPeer { outbound: false, remote: Some(Self::addr(a)), beyond_lan: true, nonce: [2; 16] };
        assert!(self.nodes[a].release.add_peer(id, dialler, self.now));
        assert!(self.nodes[b].release.add_peer(id, acceptor, self.now));
        id
    }

    /// A node's address: 10.0.0.x, listening on 7070.
    fn addr(node: usize) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([10, 0, (node / 256) as u8, (node % 256) as u8], 7070))
    }

    fn mesh(&mut self, nodes: &[usize]) {
        for (i, &a) in nodes.iter().enumerate() {
            for &b in &nodes[i + 1..] {
                self.connect(b, a);
            }
        }
    }

    fn other_end(&self, link: usize, node: usize) -> usize {
        let [a, b] = self.links[link].ends;
        if a == node {
            b
        } else {
            a
        }
    }

    /// Lets every node send while its uplink is not backed up by more than a few milliseconds.
    fn transmit(&mut self) {
        let window = Duration::from_millis(2);
        for node in 0..self.nodes.len() {
            for link in 0..self.links.len() {
                if self.links[link].closed.is_some() || !self.links[link].ends.contains(&node) {
                    continue;
                }
                while self.nodes[node].up_free <= self.now + window {
                    let Some(frame) = self.encode_next(node, link) else { break };
                    let to = self.other_end(link, node);
                    let n = &mut self.nodes[node];
                    let tx = Duration::from_nanos(frame.len() as u64 * 1_000_000_000 / n.uplink);
                    n.up_free = n.up_free.max(self.now) + tx;
                    let at = n.up_free + self.latency;
                    self.seq += 1;
                    self.queue.push(Reverse(Delivery { at, seq: self.seq, conn: link, to, frame }));
                }
            }
        }
    }

    fn encode_next(&mut self, node: usize, link: PeerId) -> Option<Vec<u8>> {
        let now = self.now;
        let n = &mut self.nodes[node];
        loop {
            let mut buf = vec![0u8; MAX_FRAME];
            let len = n.release.poll_transmit(link, now, true, &mut buf)?;
            buf.truncate(len);
            // Liars have no fleet secret, so their frames are plain and can be looked into.
            let is_block = n.behaviour != Behaviour::Honest
                && matches!(wire::decode_message(wire::check_crc(&buf).unwrap()).unwrap(), Message::Block { .. });
            match n.behaviour {
                Behaviour::Mute if is_block => continue,
                Behaviour::Corrupt if is_block => {
                    // The block's data ends the frame: flip its last byte and re-seal the crc.
                    buf[len - 1] ^= 0xff;
                    wire::seal_frame(&mut buf);
                }
                _ => {}
            }
            return Some(buf);
        }
    }

    fn deliver(&mut self, mut d: Delivery) {
        if self.links[d.conn].closed.is_some() {
            return;
        }
        let now = self.now;
        self.nodes[d.to].release.handle_frame(d.conn, &mut d.frame, now);
    }

    fn close(&mut self, link: usize, by: usize, reason: CloseReason) {
        self.links[link].closed = Some((by, reason));
        let now = self.now;
        for end in self.links[link].ends {
            self.nodes[end].release.remove_peer(link, now);
        }
    }

    fn timers(&mut self) {
        for node in 0..self.nodes.len() {
            let r = &mut self.nodes[node].release;
            if r.poll_timeout(self.now).is_some_and(|t| t <= self.now) {
                r.handle_timeout(self.now);
                // A timer handled must not be due again at once: the event loop would spin.
                let next = r.poll_timeout(self.now);
                assert!(next.is_none_or(|t| t > self.now), "node {node} asks to be woken again at once");
            }
            while let Some(event) = self.nodes[node].release.poll_event(self.now) {
                match event {
                    Event::Closed { peer, reason } => self.close(peer, node, reason),
                    Event::PeerLearnt(addr) => self.follow(node, addr),
                    Event::Completed => self.nodes[node].done_at = Some(self.now - self.start),
                    Event::StorageFailed(e) => self.nodes[node].failures.push(e),
                }
            }
        }
    }

    /// Dials an address learnt by peer exchange, if the test follows them.
    fn follow(&mut self, node: usize, addr: std::net::SocketAddr) {
        let to = self.nodes.iter().enumerate().position(|(i, _)| Self::addr(i) == addr);
        let Some(to) = to.filter(|_| self.follow_pex) else { return };
        let linked = self.links.iter().any(|l| l.closed.is_none() && l.ends.contains(&node) && l.ends.contains(&to));
        if to != node && !linked {
            self.connect(node, to);
        }
    }

    /// Runs until every node is complete (true) or `limit` of simulated time passes (false).
    fn run(&mut self, limit: Duration) -> bool {
        loop {
            self.timers();
            if self.nodes.iter().all(|n| n.release.is_complete()) {
                return true;
            }
            self.transmit();
            let mut next = self.queue.peek().map(|d| d.0.at);
            let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
            for n in &self.nodes {
                if let Some(t) = n.release.poll_timeout(self.now) {
                    consider(t.max(self.now + Duration::from_micros(1)));
                }
                if n.up_free > self.now {
                    consider(n.up_free);
                }
            }
            let Some(next) = next else { return false };
            if next - self.start > limit {
                return false;
            }
            self.now = self.now.max(next);
            while self.queue.peek().is_some_and(|d| d.0.at <= self.now) {
                let Reverse(d) = self.queue.pop().unwrap();
                self.deliver(d);
            }
        }
    }

    fn assert_copies_correct(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            if n.behaviour == Behaviour::Honest {
                assert!(n.release.store().data() == self.original, "node {i} holds wrong bytes");
            }
        }
    }
}

const MB: u64 = 1_000_000;

#[test]
fn two_peers_transfer_every_byte() {
    let mut sim = Sim::new((1 << 20) + 1234, 64 * 1024);
    let seed = sim.add_node(true, 10 * MB, Behaviour::Honest, SwarmConfig::default());
    let leech = sim.add_node(false, 10 * MB, Behaviour::Honest, SwarmConfig::default());
    sim.connect(leech, seed);
    assert!(sim.run(Duration::from_secs(60)), "transfer did not finish");
    sim.assert_copies_correct();
    let stats = sim.nodes[leech].release.stats();
    assert_eq!(stats.downloaded, sim.original.len() as u64);
    assert_eq!(stats.wasted, 0);
    assert_eq!(sim.nodes[seed].release.stats().uploaded, sim.original.len() as u64);
}

/// Seed and four peers with equal uplinks: the peers must carry most of the load.
fn five_node_swarm() -> Sim {
    let mut sim = Sim::new(4 << 20, 64 * 1024);
    let nodes: Vec<usize> =
        (0..5).map(|i| sim.add_node(i == 0, MB, Behaviour::Honest, SwarmConfig::default())).collect();
    sim.mesh(&nodes);
    assert!(sim.run(Duration::from_secs(600)), "swarm did not finish");
    sim
}

#[test]
fn peers_share_the_upload_and_come_near_the_lower_bound() {
    let sim = five_node_swarm();
    sim.assert_copies_correct();
    let f = sim.original.len() as f64;
    let u = MB as f64;
    // Kumar & Ross: the seed sends every byte once; four copies share five equal uplinks.
    let bound = (f / u).max(4.0 * f / (5.0 * u));
    let all_done = sim.nodes.iter().filter_map(|n| n.done_at).max().unwrap().as_secs_f64();
    assert!(all_done < 1.25 * bound, "swarm took {all_done:.2} s, {:.2}x the bound {bound:.2} s", all_done / bound);
    let peers_up: u64 = sim.nodes[1..].iter().map(|n| n.release.stats().uploaded).sum();
    assert!(peers_up as f64 > 2.0 * f, "peers carried only {:.1} of the four copies", peers_up as f64 / f);
}

#[test]
fn reachable_devices_elect_the_lowest_node_as_the_root_and_the_next_when_it_leaves() {
    // Four super-peers in a chain across the WAN (node numbers rising along it), fed by a seed
    // at the far end; a slow seed, so that nothing completes and every link stays up.
    let mut sim = Sim::new(8 << 20, 256 * 1024);
    let supers: Vec<usize> =
        (0..4).map(|_| sim.add_node(false, MB, Behaviour::Honest, SwarmConfig::default())).collect();
    let seed = sim.add_node(true, 64 * 1024, Behaviour::Honest, SwarmConfig::default());
    let mut chain = Vec::new();
    for w in supers.windows(2) {
        chain.push(sim.connect_beyond_lan(w[1], w[0]));
    }
    sim.connect_beyond_lan(seed, supers[3]);
    for &p in &supers {
        sim.nodes[p].release.set_reachable(true);
    }
    assert!(!sim.run(Duration::from_secs(2)), "still fetching");
    let tree = |sim: &Sim, p: usize| sim.nodes[p].release.swarm().tree_advert().map(|t| (t.root, t.hops));
    let node = |p: usize| 1000 + p as u64;
    for (hops, &p) in supers.iter().enumerate() {
        assert_eq!(tree(&sim, p), Some((node(supers[0]), hops as u8)), "super-peer {p}");
        assert_eq!(sim.nodes[p].release.swarm().behind_in_tree(), hops > 0, "only the root takes the origin");
    }
    assert_eq!(tree(&sim, seed), None, "a device not reachable takes no part");
    // The root goes: its adverts count up past the hop limit and die out; the next lowest leads.
    sim.close(chain[0], supers[1], CloseReason::Idle);
    assert!(!sim.run(Duration::from_secs(4)));
    assert_eq!(tree(&sim, supers[0]), Some((node(supers[0]), 0)), "alone, its own root");
    for (hops, &p) in supers[1..].iter().enumerate() {
        assert_eq!(tree(&sim, p), Some((node(supers[1]), hops as u8)), "super-peer {p}");
    }
    assert!(!sim.nodes[supers[1]].release.swarm().behind_in_tree());
    sim.nodes[supers[2]].release.set_reachable(false);
    assert!(!sim.run(Duration::from_secs(6)));
    assert_eq!(tree(&sim, supers[3]), Some((node(supers[3]), 0)), "cut off by a device that left the tree");
}

#[test]
fn runs_are_deterministic() {
    let a = five_node_swarm();
    let b = five_node_swarm();
    let timeline = |s: &Sim| s.nodes.iter().map(|n| (n.done_at, n.release.stats())).collect::<Vec<_>>();
    assert_eq!(timeline(&a), timeline(&b));
}

#[test]
fn corrupt_peer_is_banned_and_its_chunks_fetched_elsewhere() {
    let mut sim = Sim::new(2 << 20, 64 * 1024);
    let seed = sim.add_node(true, MB, Behaviour::Honest, SwarmConfig::default());
    let liar = sim.add_node(true, 20 * MB, Behaviour::Corrupt, SwarmConfig::default());
    let leech = sim.add_node(false, MB, Behaviour::Honest, SwarmConfig::default());
    sim.connect(leech, seed);
    sim.connect(leech, liar);
    // Only the leech must finish: the liar is "complete" with bad bytes.
    sim.run(Duration::from_secs(120));
    assert!(sim.nodes[leech].release.is_complete(), "leech did not complete");
    assert!(sim.nodes[leech].release.store().data() == sim.original, "leech holds wrong bytes");
    assert_eq!(sim.links[1].closed, Some((leech, CloseReason::BadData)), "the liar is dropped for bad data");
    assert_eq!(sim.nodes[leech].release.stats().bad_chunks, 2, "banned on the second bad chunk, not later");
}

#[test]
fn stalled_requests_are_rerouted_and_the_staller_dropped() {
    let mut sim = Sim::new(1 << 20, 64 * 1024);
    // A slow honest seed, so the fetch lasts long enough for the mute peer to stall twice.
    let seed = sim.add_node(true, 10_000, Behaviour::Honest, SwarmConfig::default());
    let mute = sim.add_node(true, 20 * MB, Behaviour::Mute, SwarmConfig::default());
    let leech = sim.add_node(false, MB, Behaviour::Honest, SwarmConfig::default());
    sim.connect(leech, mute);
    sim.connect(leech, seed);
    sim.run(Duration::from_secs(300));
    assert!(sim.nodes[leech].release.is_complete(), "leech did not complete");
    assert!(sim.nodes[leech].release.store().data() == sim.original);
    // The mute peer keeps the connection alive with keepalives, so only the stall rule ends it.
    assert_eq!(sim.links[0].closed, Some((leech, CloseReason::Stalled)));
}

#[test]
fn upload_rate_limit_holds_within_ten_percent() {
    let mut sim = Sim::new(4 << 20, 64 * 1024);
    let rate = 512 * 1024;
    let config = SwarmConfig { max_upload_rate: rate, ..SwarmConfig::default() };
    let seed = sim.add_node(true, 100 * MB, Behaviour::Honest, config);
    let leech = sim.add_node(false, 100 * MB, Behaviour::Honest, SwarmConfig::default());
    sim.connect(leech, seed);
    assert!(sim.run(Duration::from_secs(60)));
    let took = sim.nodes[leech].done_at.unwrap().as_secs_f64();
    let ideal = sim.original.len() as f64 / rate as f64;
    assert!((took - ideal).abs() / ideal < 0.10, "took {took:.2} s at a cap that allows {ideal:.2} s");
}

/// An accepted connection with a fixed nonce.
fn inbound() -> NewPeer {
    NewPeer { outbound: false, remote: None, beyond_lan: false, nonce: [1; 16] }
}

/// A lone swarm and session to poke with hand-made messages.
fn poked() -> (Swarm, Instant) {
    let original = data(256 * 1024, 1);
    let m = manifest_for(&original, 64 * 1024);
    let mut s = Swarm::new(&m, SWARM, &Bitfield::new(4), SwarmConfig::default(), 1);
    let now = Instant::now();
    assert!(s.add_peer(0, inbound(), now));
    (s, now)
}

fn hello(swarm: SwarmId) -> Message<'static> {
    Message::Hello { version: VERSION, swarm, listen_port: 0, node: 99, nonce: [0; 16] }
}

#[test]
fn protocol_violations_close_the_connection() {
    let (mut s, now) = poked();
    assert!(matches!(s.handle_message(0, &Message::Request(0), now), Err(CloseReason::Protocol(_))));

    let (mut s, now) = poked();
    assert!(matches!(s.handle_message(0, &hello([1; 32]), now), Err(CloseReason::Protocol(_))));

    let (mut s, now) = poked();
    let v2 = Message::Hello { version: VERSION + 1, swarm: SWARM, listen_port: 0, node: 99, nonce: [0; 16] };
    // Another version is another release of Flotilla, refused without counting as an offence.
    let refused = s.handle_message(0, &v2, now);
    assert_eq!(refused, Err(CloseReason::Refused(flotilla::core::wire::RefuseReason::UnsupportedVersion)));
    assert!(!refused.unwrap_err().is_offence());

    let (mut s, now) = poked();
    s.handle_message(0, &hello(SWARM), now).unwrap();
    assert!(matches!(s.handle_message(0, &hello(SWARM), now), Err(CloseReason::Protocol(_))));
    assert!(matches!(s.handle_message(0, &Message::Have(4), now), Err(CloseReason::Protocol(_))));
    let block = Message::Block { chunk: 0, offset: 0, data: Bytes(&[0; 16384]) };
    assert!(matches!(s.handle_message(0, &block, now), Err(CloseReason::Protocol(_))), "unrequested data");
    assert!(matches!(s.handle_message(0, &Message::Bitfield(Bytes(&[0, 0])), now), Err(CloseReason::Protocol(_))));
}

#[test]
fn requests_beyond_the_pipeline_cap_close_the_connection() {
    let original = data(256 * 1024, 1);
    let m = manifest_for(&original, 16 * 1024);
    let mut s = Swarm::new(&m, SWARM, &Bitfield::full(16), SwarmConfig::default(), 1);
    let now = Instant::now();
    s.add_peer(0, inbound(), now);
    s.handle_message(0, &hello(SWARM), now).unwrap();
    for c in 0..16 {
        s.handle_message(0, &Message::Request(c), now).unwrap();
    }
    assert!(matches!(s.handle_message(0, &Message::Request(0), now), Err(CloseReason::Protocol(_))));
}

#[test]
fn requests_for_missing_chunks_are_rejected_not_served() {
    let (mut s, now) = poked();
    s.handle_message(0, &hello(SWARM), now).unwrap();
    s.handle_message(0, &Message::Request(2), now).unwrap();
    let mut sent = Vec::new();
    while let Some(t) = s.poll_transmit(0, now, true) {
        sent.push(format!("{t:?}"));
    }
    assert!(sent.iter().any(|t| t.contains("Reject(2)")), "sent: {sent:?}");
    assert!(!sent.iter().any(|t| t.contains("Block")), "sent: {sent:?}");
}

/// Seed and `n` peers in a full mesh, every uplink `u` bytes/s: all-done time over the bound.
fn ratio_to_bound(n: usize, file: usize, chunk: u32, u: u64, spread: bool) -> (f64, f64) {
    let mut sim = Sim::new(file, chunk);
    sim.latency = Duration::from_millis(1);
    let config = SwarmConfig { spread, ..SwarmConfig::default() };
    let nodes: Vec<usize> = (0..=n).map(|i| sim.add_node(i == 0, u, Behaviour::Honest, config)).collect();
    sim.mesh(&nodes);
    assert!(sim.run(Duration::from_secs(3600)), "swarm did not finish");
    sim.assert_copies_correct();
    let f = file as f64;
    let u = u as f64;
    let bound = (f / u).max(n as f64 * f / ((n as f64 + 1.0) * u));
    let all_done = sim.nodes.iter().filter_map(|n| n.done_at).max().unwrap().as_secs_f64();
    (all_done / bound, sim.nodes[0].release.stats().uploaded as f64 / f)
}

/// The headline case in memory: a seed and 16 peers, 32 MiB in 256 KiB chunks, equal
/// 20 Mbit/s uplinks. Spreading must bring the swarm near the bound, and it must be what does.
#[test]
fn seed_spreading_brings_sixteen_peers_near_the_bound() {
    let (with, seed_copies) = ratio_to_bound(16, 32 << 20, 256 * 1024, 2_500_000, true);
    let (without, _) = ratio_to_bound(16, 32 << 20, 256 * 1024, 2_500_000, false);
    assert!(with < 1.15, "with spreading the swarm took {with:.3}x the bound");
    assert!(seed_copies < 1.15, "the seed sent {seed_copies:.2} copies; spreading sends each chunk about once");
    assert!(with + 0.1 < without, "spreading {with:.3}x vs plain rarest-first {without:.3}x");
}

#[test]
fn peer_exchange_meshes_a_swarm_started_from_the_seed_alone() {
    let mut sim = Sim::new(2 << 20, 64 * 1024);
    sim.follow_pex = true;
    let seed = sim.add_node(true, MB, Behaviour::Honest, SwarmConfig::default());
    let peers: Vec<usize> =
        (0..5).map(|_| sim.add_node(false, MB, Behaviour::Honest, SwarmConfig::default())).collect();
    for &p in &peers {
        sim.connect(p, seed);
    }
    assert!(sim.run(Duration::from_secs(120)), "swarm did not finish");
    sim.assert_copies_correct();
    let between_peers = sim.links.iter().filter(|l| !l.ends.contains(&seed)).count();
    assert!(between_peers >= 10, "only {between_peers} of the 10 peer-to-peer links formed");
    // Both ends may dial each other at once; one of each such pair is closed, on both ends.
    let open = sim.links.iter().filter(|l| l.closed.is_none()).count();
    assert!(open <= 15, "{open} links stay open between 6 nodes");
    for &p in &peers {
        assert!(sim.nodes[p].release.stats().uploaded > 0, "peer {p} never uploaded: it was not meshed");
    }
}

#[test]
fn a_connection_to_ourselves_is_closed() {
    let (mut s, now) = poked();
    let me = Message::Hello { version: VERSION, swarm: SWARM, listen_port: 0, node: 0, nonce: [0; 16] };
    assert_eq!(s.handle_message(0, &me, now), Err(CloseReason::SelfConnection));
}

#[test]
fn download_rate_limit_holds_within_ten_percent() {
    let mut sim = Sim::new(4 << 20, 64 * 1024);
    let rate = 256 * 1024;
    let seed = sim.add_node(true, 100 * MB, Behaviour::Honest, SwarmConfig::default());
    let limited = SwarmConfig { max_download_rate: rate, ..SwarmConfig::default() };
    let leech = sim.add_node(false, 100 * MB, Behaviour::Honest, limited);
    sim.connect(leech, seed);
    let ok = sim.run(Duration::from_secs(60));
    assert!(ok);
    let took = sim.nodes[leech].done_at.unwrap().as_secs_f64();
    // The bucket starts full with one chunk, which arrives at once.
    let ideal = (sim.original.len() - 64 * 1024) as f64 / rate as f64;
    assert!((took - ideal).abs() / ideal < 0.10, "took {took:.2} s at a cap that allows {ideal:.2} s");
}

fn fleet(key: &[u8]) -> SwarmConfig {
    fleet_of(&[key])
}

/// A config holding these fleet secrets, the first used to dial.
fn fleet_of(secrets: &[&[u8]]) -> SwarmConfig {
    let mut fleet_keys = flotilla::core::auth::FleetKeys::default();
    for secret in secrets {
        assert!(fleet_keys.push(flotilla::core::auth::fleet_key(secret)));
    }
    SwarmConfig { fleet_keys, ..SwarmConfig::default() }
}

#[test]
fn fleet_members_exchange_and_outsiders_get_nothing() {
    let mut sim = Sim::new(1 << 20, 64 * 1024);
    let seed = sim.add_node(true, 10 * MB, Behaviour::Honest, fleet(b"the fleet's shared secret"));
    let member = sim.add_node(false, 10 * MB, Behaviour::Honest, fleet(b"the fleet's shared secret"));
    let outsider = sim.add_node(false, 10 * MB, Behaviour::Honest, SwarmConfig::default());
    let stranger = sim.add_node(false, 10 * MB, Behaviour::Honest, fleet(b"another fleet's secret!!"));
    sim.connect(member, seed);
    sim.connect(outsider, seed);
    sim.connect(stranger, seed);
    sim.run(Duration::from_secs(30));
    assert!(sim.nodes[member].release.is_complete() && sim.nodes[member].release.store().data() == sim.original);
    // Neither is the peer's offence: a member is never banned over a secret it does not share.
    let expected = [(1, CloseReason::FleetMismatch), (2, CloseReason::Unauthenticated)];
    for (link, reason) in expected {
        assert_eq!(sim.links[link].closed.map(|(_, r)| r), Some(reason));
        assert!(!reason.is_offence());
    }
    for n in [outsider, stranger] {
        assert_eq!(sim.nodes[n].release.stats().downloaded, 0, "an outsider got data");
        assert_eq!(
            sim.nodes[n].release.swarm().session(if n == outsider { 1 } else { 2 }).map(|s| s.bits().count()),
            None
        );
    }
}

/// The next frame `from` sends on `slot`, encoded and sealed as it would go on the wire.
fn next_frame(from: &mut Swarm, slot: usize, now: Instant) -> Option<Vec<u8>> {
    let Transmit::Message(m) = from.poll_transmit(slot, now, false)? else { return None };
    let hello = matches!(m, Message::Hello { .. });
    let mut buf = vec![0u8; MAX_FRAME];
    let n = wire::encode_frame(&m, &mut buf).unwrap();
    let n = from.seal_frame(slot, &mut buf, n, hello);
    buf.truncate(n);
    Some(buf)
}

/// Hands a whole frame to `to` on `slot` as the release does: open (tag or crc), then decode.
fn take_frame(to: &mut Swarm, slot: usize, mut frame: Vec<u8>, now: Instant) -> Result<(), CloseReason> {
    let payload = to.open_frame(slot, &mut frame)?;
    to.handle_message(slot, &wire::decode_message(payload).unwrap(), now).map(|_| ())
}

/// Runs the handshake between `dialler` (slot 0) and `acceptor` (slot `slot`) by hand, frame by
/// frame, and returns every frame the dialler sent, for replaying.
fn handshake(dialler: &mut Swarm, acceptor: &mut Swarm, slot: usize, now: Instant) -> Vec<Vec<u8>> {
    let mut sent = Vec::new();
    for _ in 0..4 {
        while let Some(frame) = next_frame(dialler, 0, now) {
            let _ = take_frame(acceptor, slot, frame.clone(), now);
            sent.push(frame);
        }
        while let Some(frame) = next_frame(acceptor, slot, now) {
            let _ = take_frame(dialler, 0, frame, now);
        }
    }
    sent
}

#[test]
fn a_replayed_fleet_handshake_is_refused() {
    let original = data(256 * 1024, 5);
    let m = manifest_for(&original, 64 * 1024);
    let key = b"the fleet's shared secret";
    let seeded = |node: u64, full: bool| {
        let have = if full { Bitfield::full(4) } else { Bitfield::new(4) };
        Swarm::new(&m, SWARM, &have, SwarmConfig { node, ..fleet(key) }, node)
    };
    let (mut a, mut b) = (seeded(1, true), seeded(2, false));
    let now = Instant::now();
    a.add_peer(0, inbound(), now);
    b.add_peer(0, NewPeer { outbound: true, remote: None, beyond_lan: false, nonce: [2; 16] }, now);
    let recorded = handshake(&mut b, &mut a, 0, now);
    assert!(a.session(0).unwrap().is_active(), "the genuine handshake completes");
    assert!(b.session(0).unwrap().is_active(), "on both ends");
    assert!(recorded.len() >= 2, "Hello and Auth were recorded");

    // The genuine connection ends; an eavesdropper replays the dialler's Hello and sealed proof.
    a.remove_peer(0, now);
    a.add_peer(1, NewPeer { nonce: [3; 16], ..inbound() }, now);
    let mut outcome = Ok(());
    for frame in recorded {
        outcome = take_frame(&mut a, 1, frame, now);
        if outcome.is_err() {
            break;
        }
    }
    assert_eq!(
        outcome,
        Err(CloseReason::Unauthenticated),
        "a fresh nonce gives fresh keys: the old frames do not open"
    );
    assert!(!a.session(1).is_some_and(|s| s.is_active()), "the replay was let in");
}

/// The bug this layout was built to fix: a chunk whose hash checked but whose last block could
/// not be written was marked ours anyway, so nobody fetched it again and the release never
/// completed. Now the write's failure is reported, the chunk goes back, and the fetch completes
/// without a restart, byte-exact.
#[test]
fn a_failed_write_of_a_chunks_last_block_is_fetched_again_and_the_release_completes() {
    let mut sim = Sim::new(1 << 20, 64 * 1024);
    let seed = sim.add_node(true, 10 * MB, Behaviour::Honest, SwarmConfig::default());
    let leech = sim.add_node(false, 10 * MB, Behaviour::Honest, SwarmConfig::default());
    // The last block of chunk 3 (64 KiB chunks, 16 KiB blocks).
    let last_block = 3 * 64 * 1024 + 3 * 16 * 1024;
    sim.nodes[leech].release.store_mut().fail_next_write_at(last_block);
    sim.connect(leech, seed);
    assert!(sim.run(Duration::from_secs(60)), "the release did not complete after a failed write");
    sim.assert_copies_correct();
    assert_eq!(sim.nodes[leech].failures.len(), 1, "the failure is reported once: {:?}", sim.nodes[leech].failures);
    let stats = sim.nodes[leech].release.stats();
    assert_eq!(stats.downloaded, sim.original.len() as u64, "the chunk counts once, when it was kept");
    assert_eq!(stats.wasted, 64 * 1024, "the lost chunk is counted as wasted");
}

/// A failed write in the middle of a chunk abandons the rest of it and fetches it again.
#[test]
fn a_failed_write_mid_chunk_abandons_the_chunk_and_fetches_it_again() {
    let mut sim = Sim::new(1 << 20, 64 * 1024);
    let seed = sim.add_node(true, 10 * MB, Behaviour::Honest, SwarmConfig::default());
    let leech = sim.add_node(false, 10 * MB, Behaviour::Honest, SwarmConfig::default());
    sim.nodes[leech].release.store_mut().fail_next_write_at(5 * 64 * 1024 + 16 * 1024);
    sim.connect(leech, seed);
    assert!(sim.run(Duration::from_secs(60)), "the release did not complete after a failed write");
    sim.assert_copies_correct();
    assert_eq!(sim.nodes[leech].failures.len(), 1);
    let closed = sim.links[0].closed.map(|(_, reason)| reason);
    assert!(
        matches!(closed, None | Some(CloseReason::BothComplete)),
        "a failed write is not the peer's fault: {closed:?}"
    );
}

/// A failed commit loses nothing: the chunks stay verified, the next commit (an interval later)
/// makes them durable, and the release completes.
#[test]
fn a_failed_commit_is_retried_and_the_release_completes() {
    let mut sim = Sim::new(1 << 20, 64 * 1024);
    let seed = sim.add_node(true, 10 * MB, Behaviour::Honest, SwarmConfig::default());
    let leech = sim.add_node(false, 10 * MB, Behaviour::Honest, SwarmConfig::default());
    sim.nodes[leech].release.store_mut().fail_next_commits(3);
    sim.connect(leech, seed);
    assert!(sim.run(Duration::from_secs(60)));
    sim.assert_copies_correct();
    assert_eq!(sim.nodes[leech].failures.len(), 3);
    let store = sim.nodes[leech].release.store();
    assert!(store.committed().is_some_and(|b| b.is_full()), "every chunk was committed in the end");
}

/// A read failure while serving ends that session without blaming the peer (no offence, so no
/// ban), is reported, and the peer finishes from another source.
#[test]
fn a_read_failure_while_serving_closes_that_session_without_blame() {
    let mut sim = Sim::new(1 << 20, 64 * 1024);
    let broken = sim.add_node(true, 20 * MB, Behaviour::Honest, SwarmConfig::default());
    let seed = sim.add_node(true, MB, Behaviour::Honest, SwarmConfig::default());
    let leech = sim.add_node(false, 10 * MB, Behaviour::Honest, SwarmConfig::default());
    sim.nodes[broken].release.store_mut().fail_reads(true);
    sim.connect(leech, broken);
    sim.connect(leech, seed);
    sim.run(Duration::from_secs(60));
    assert!(sim.nodes[leech].release.is_complete(), "the leech did not complete from the other seed");
    assert!(sim.nodes[leech].release.store().data() == sim.original);
    assert!(!sim.nodes[broken].failures.is_empty(), "the read failure was not reported");
    let (by, reason) = sim.links[0].closed.expect("the broken seed's session was not closed");
    assert_eq!((by, reason), (broken, CloseReason::LocalStorage));
    assert!(!reason.is_offence());
}

/// Commits are batched: chunks become durable (and announced) in groups, not one by one, and
/// never more than `max_uncommitted` wait.
#[test]
fn commits_are_batched_and_bounded() {
    let mut sim = Sim::new(2 << 20, 16 * 1024);
    let seed = sim.add_node(true, 100 * MB, Behaviour::Honest, SwarmConfig::default());
    let leech = sim.add_node(false, 100 * MB, Behaviour::Honest, SwarmConfig::default());
    sim.connect(leech, seed);
    assert!(sim.run(Duration::from_secs(60)));
    sim.assert_copies_correct();
    let chunks = sim.manifest.chunk_count();
    let commits = sim.nodes[leech].release.store().commits;
    assert!(commits < chunks / 2, "{commits} commits for {chunks} chunks: not batched");
    assert!(commits >= chunks / 8, "{commits} commits for {chunks} chunks: more than 8 waited at once");
}

/// A secret rotation: a seed holding both the old and the new secret serves a device still on
/// the old one and a device already on the new one; nothing is banned and both complete.
#[test]
fn a_fleet_rolls_to_a_new_secret_without_a_flag_day() {
    let (old, new): (&[u8], &[u8]) = (b"the old fleet secret, 32 bytes..", b"the new fleet secret, 32 bytes..");
    let mut sim = Sim::new(1 << 20, 64 * 1024);
    let seed = sim.add_node(true, 10 * MB, Behaviour::Honest, fleet_of(&[new, old]));
    let on_old = sim.add_node(false, 10 * MB, Behaviour::Honest, fleet_of(&[old]));
    let on_new = sim.add_node(false, 10 * MB, Behaviour::Honest, fleet_of(&[new]));
    // The device on the new secret also dials the one still on the old: that link fails, without
    // blame, and the device gets everything from the seed.
    sim.connect(on_old, seed);
    sim.connect(on_new, seed);
    sim.connect(on_new, on_old);
    assert!(sim.run(Duration::from_secs(60)), "a device did not complete during the rotation");
    sim.assert_copies_correct();
    for link in &sim.links {
        if let Some((_, reason)) = link.closed {
            assert!(!reason.is_offence(), "an offence during a rotation: {reason:?}");
        }
    }
    assert_eq!(sim.links[2].closed.map(|(_, r)| r), Some(CloseReason::Unauthenticated));
}

/// Sealed frames cannot be altered: a flipped bit in any sealed frame closes the connection
/// without blame, and the receiver never acts on the altered bytes.
#[test]
fn a_flipped_bit_in_a_sealed_frame_closes_without_blame() {
    let original = data(256 * 1024, 5);
    let m = manifest_for(&original, 64 * 1024);
    let key = b"the fleet's shared secret, 32 by";
    let make = |node: u64, full: bool| {
        let have = if full { Bitfield::full(4) } else { Bitfield::new(4) };
        Swarm::new(&m, SWARM, &have, SwarmConfig { node, ..fleet(key) }, node)
    };
    let now = Instant::now();
    let (mut seed, mut fetch) = (make(1, true), make(2, false));
    seed.add_peer(0, inbound(), now);
    fetch.add_peer(0, NewPeer { outbound: true, remote: None, beyond_lan: false, nonce: [2; 16] }, now);
    handshake(&mut fetch, &mut seed, 0, now);
    assert!(fetch.session(0).unwrap().is_active());
    // The seed's next frame (a keepalive, after 21 s of quiet) with one bit flipped.
    let later = now + Duration::from_secs(21);
    seed.handle_timeout(later);
    let frame = next_frame(&mut seed, 0, later).expect("the seed has something to say");
    assert_eq!(&frame[4..8], &[0; 4], "a sealed frame carries no crc");
    let mut bad = frame.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x01;
    assert_eq!(take_frame(&mut fetch, 0, bad, later), Err(CloseReason::Unauthenticated));
    assert!(!CloseReason::Unauthenticated.is_offence());
}

/// A peer that sends one block every 27 s looks alive to a per-block timeout and could hold the
/// chunks we asked it for indefinitely. A requested chunk must be whole within `request +
/// len / min_chunk_rate` (46 s for 64 KiB), so the dripper's chunks go back to the pool and, at
/// the second stall, the dripper is dropped.
#[test]
fn a_peer_that_drips_blocks_loses_its_chunks_and_is_dropped() {
    let mut sim = Sim::new(1 << 20, 64 * 1024);
    let seed = sim.add_node(true, 8_000, Behaviour::Honest, SwarmConfig::default());
    // 600 B/s: one 16 KiB block frame every ~27 s, under the 30 s per-block timeout.
    let drip = sim.add_node(true, 600, Behaviour::Honest, SwarmConfig::default());
    let leech = sim.add_node(false, MB, Behaviour::Honest, SwarmConfig::default());
    sim.connect(leech, drip);
    sim.connect(leech, seed);
    sim.run(Duration::from_secs(600));
    assert!(sim.nodes[leech].release.is_complete(), "the leech did not complete");
    assert!(sim.nodes[leech].release.store().data() == sim.original);
    assert_eq!(sim.links[0].closed, Some((leech, CloseReason::Stalled)), "the dripper kept its slot");
}
