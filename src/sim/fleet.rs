//! The devices, their sites and the policies they follow, at chunk granularity (what is
//! modelled and what is shared with the agent: the module notes of `sim`).

use super::net::{FlowId, Link, Net};
use super::{Config, Report};
use crate::core::bitfield::Bitfield;
use crate::core::discovery;
use crate::core::manifest::{Geometry, Rollout};
use crate::core::rng::Rng;
use crate::core::swarm::choice::{self, ChunkView, PeerPlace};
use crate::core::swarm::tree::{self, TreeAdvert};

/// The swarm's own figures (`core::swarm`): requests in flight per peer (256 KiB of pipeline,
/// at least two), upload slots, chunks a spreading seed offers each peer, connection slots, and
/// the patience of a waiting uploader's queue (a third of 30 s). The chunk choice itself is the
/// swarm's (`choice::pick_chunk`).
const PIPELINE: u8 = 2;
const UPLOAD_SLOTS: usize = 2;
const OFFERS_PER_PEER: usize = 2;
pub(super) const MAX_PEERS: usize = 32;
const MAX_PER_ADDRESS: usize = 4;
const PATIENCE: f64 = 10.0;
/// The agent's: a device whose share is done takes the rest after this (or the origin delay).
const STEAL_AFTER: f64 = 30.0;
/// How often a site's dialler short of peers beyond its LAN tries the tracker's list again
/// (the agent: each address backed off from half a second to 30 s, looked at every 2 s).
const REDIAL: f64 = 5.0;
/// The agent's `site::WAN_PEERS` and `BUSY_WAIT`: a site's dialler keeps two peers beyond its
/// LAN; refused by a full reachable peer, its site waits this long for a slot there.
const WAN_PEERS: usize = 2;
const BUSY_WAIT: f64 = 60.0;
/// How often an idle origin client looks for a chunk to take.
const ORIGIN_CHECK: f64 = 0.1;
/// Samples in the report's picture.
const SAMPLES: usize = 200;

/// A connection as one end sees it.
#[derive(Clone, Debug)]
struct Peer {
    device: u32,
    beyond_lan: bool,
    /// We dialled it.
    dialled: bool,
    /// Chunks asked of it and not yet here.
    asked: heapless::Vec<u32, 4>,
    /// What a spreading seed offered us (we see nothing else of it while it spreads).
    offered: heapless::Vec<u32, OFFERS_PER_PEER>,
}

/// A request waiting at its uploader.
#[derive(Clone, Copy, Debug)]
struct Waiting {
    to: u32,
    chunk: u32,
    since: f64,
}

/// Where a transfer comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Source {
    Device(u32),
    Origin,
}

#[derive(Clone, Copy, Debug)]
struct Transfer {
    from: Source,
    to: u32,
    chunk: u32,
}

struct Device {
    site: u32,
    up: Link,
    down: Link,
    online: bool,
    have: Bitfield,
    in_flight: Vec<u8>,
    /// Holders among connected peers, and among LAN peers.
    holders: Vec<u16>,
    lan_holders: Vec<u16>,
    peers: Vec<Peer>,
    waiting: Vec<Waiting>,
    uploading: heapless::Vec<(u32, FlowId), UPLOAD_SLOTS>,
    /// A seed spreading distinct chunks: what is out (sent, or held by a peer).
    spread_out: Option<Bitfield>,
    reachable: bool,
    /// It reached a reachable peer (and, by the LAN flag, its site leaves the origin to it).
    behind: bool,
    /// Its node number, and whether it is reachable and its tree's root is another device.
    node: u64,
    tree_behind: bool,
    /// Until when its site waits for a full reachable device that refused it.
    busy_until: f64,
    share: Option<(u32, u32)>,
    origin_busy: bool,
    origin_next: f64,
    share_done_at: Option<f64>,
    done_at: Option<f64>,
    /// Churn: when it goes down, and for how long.
    down_at: Option<(f64, f64)>,
    /// Release 2: when it learnt the manifest.
    learnt_at: Option<f64>,
}

struct World<'c> {
    c: &'c Config,
    geo: Geometry,
    chunks: u32,
    net: Net,
    rng: Rng,
    devices: Vec<Device>,
    site_up: Vec<Link>,
    site_down: Vec<Link>,
    site_wan_bytes: Vec<f64>,
    site_behind: Vec<bool>,
    /// Sites that were behind a reachable peer at some time.
    site_was_behind: Vec<bool>,
    origin_link: Option<Link>,
    origin_bytes: f64,
    wasted: f64,
    transfers: Vec<Option<Transfer>>,
    now: f64,
}

/// Runs the configuration to the end: release 1 everywhere, and release 2 if asked.
pub fn run(c: &Config) -> Report {
    let mut w = World::new(c);
    let mut report = Report { devices: c.devices, sites: c.sites, size: c.size, gossip: c.gossip, ..Report::default() };
    report.bound = w.bound();
    report.peer_bound = w.peer_bound();
    // Far past any sane run (a fleet served by a few super-peers' uplinks takes a hundred
    // bounds); it ends only a run that cannot finish.
    let horizon = report.bound * 400.0 + 600.0;
    let sample_every = report.bound * 3.0 / SAMPLES as f64;
    let (mut next_sample, mut next_redial) = (0.0, REDIAL);
    let mut done = Vec::new();
    while w.devices.iter().any(|d| d.done_at.is_none()) && w.now < horizon {
        if w.now >= next_sample {
            report.samples.push(w.sample());
            next_sample += sample_every;
        }
        w.churn();
        if w.now >= next_redial {
            w.redial();
            next_redial += REDIAL;
        }
        w.drive_origins();
        done.clear();
        w.net.step(w.now, c.step, &mut done);
        w.now += c.step;
        for &f in &done {
            w.finish(f);
        }
    }
    report.samples.push(w.sample());
    let mut times: Vec<f64> = w.devices.iter().map(|d| d.done_at.unwrap_or(f64::INFINITY)).collect();
    times.sort_by(f64::total_cmp);
    let q = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
    report.all_done = q(1.0);
    (report.p50, report.p90, report.p99) = (q(0.5), q(0.9), q(0.99));
    let size = c.size as f64;
    report.origin_egress = w.origin_bytes / size;
    report.max_site_wan = w.site_wan_bytes.iter().fold(0.0f64, |a, &b| a.max(b)) / size;
    report.wasted = w.wasted / size;
    report.sites_behind = w.site_was_behind.iter().filter(|&&b| b).count();
    if let Some(after) = c.new_release_after {
        let (everywhere, last) = w.new_release(after);
        report.manifest_everywhere = Some(everywhere);
        report.last_install = Some(last);
    }
    report
}

impl<'c> World<'c> {
    fn new(c: &'c Config) -> Self {
        let geo = Geometry { file_size: c.size, chunk_size: c.chunk_size };
        let chunks = c.size.div_ceil(c.chunk_size as u64) as u32;
        let mut net = Net::default();
        let mut rng = Rng::new(c.seed);
        let sites = c.sites.max(1);
        let site_up: Vec<Link> = (0..sites).map(|_| net.link(c.wan_up)).collect();
        let site_down: Vec<Link> = (0..sites).map(|_| net.link(c.wan_down)).collect();
        let origin_link = (c.origin_up > 0.0).then(|| net.link(c.origin_up));
        let reachable_sites = (sites as f64 * c.reachable).round() as usize;
        let mut devices = Vec::with_capacity(c.devices + c.seeds);
        let mut nodes = Rng::new(c.seed ^ 0x6e6f_6465);
        for i in 0..c.seeds + c.devices {
            let seed = i < c.seeds;
            // Devices are dealt to sites in turn; the seeds sit in the first site.
            let site = if seed { 0 } else { ((i - c.seeds) % sites) as u32 };
            let first_of_site = !seed && (i - c.seeds) < sites;
            let down_at = (!seed && rng.unit() < c.churn).then(|| (rng.unit() * 60.0, 10.0 + rng.unit() * 50.0));
            devices.push(Device {
                site,
                up: net.link(if seed { c.seed_up } else { c.lan_up }),
                down: net.link(f64::INFINITY),
                online: true,
                have: if seed { Bitfield::full(chunks) } else { Bitfield::new(chunks) },
                in_flight: vec![0; chunks as usize],
                holders: vec![0; chunks as usize],
                lan_holders: vec![0; chunks as usize],
                peers: Vec::new(),
                waiting: Vec::new(),
                uploading: heapless::Vec::new(),
                spread_out: seed.then(|| Bitfield::new(chunks)),
                reachable: first_of_site && (site as usize) < reachable_sites,
                behind: false,
                node: nodes.next_u64(),
                tree_behind: false,
                busy_until: 0.0,
                share: None,
                origin_busy: false,
                origin_next: c.origin_delay,
                share_done_at: None,
                done_at: seed.then_some(0.0),
                down_at,
                learnt_at: None,
            });
        }
        let mut w = World {
            c,
            geo,
            chunks,
            net,
            rng,
            devices,
            site_up,
            site_down,
            site_wan_bytes: vec![0.0; sites],
            site_behind: vec![false; sites],
            site_was_behind: vec![false; sites],
            origin_link,
            origin_bytes: 0.0,
            wasted: 0.0,
            transfers: Vec::new(),
            now: 0.0,
        };
        for d in 0..w.devices.len() as u32 {
            w.join(d);
        }
        // Seeds are not counted among the fleet's devices.
        w
    }

    /// The topology's lower bound: every device must receive the release through the fleet's
    /// uplinks and the origin's; each site without a seed must receive a copy over its WAN
    /// downlink; a seed or the origin must send one copy, and the origin one per site that
    /// reaches no reachable site (none reachable: every site).
    fn bound(&self) -> f64 {
        let c = self.c;
        let f = c.size as f64;
        let mut bound = 0.0f64;
        let up_total = c.origin_up + c.seeds as f64 * c.seed_up + c.devices as f64 * c.lan_up;
        bound = bound.max(c.devices as f64 * f / up_total);
        if c.seeds > 0 {
            bound = bound.max(f / (c.seeds as f64 * c.seed_up + c.origin_up));
        } else if c.origin_up > 0.0 {
            let reachable = self.devices.iter().any(|d| d.reachable);
            let copies = if reachable { 1.0 } else { c.sites.max(1) as f64 };
            bound = bound.max(copies * f / c.origin_up);
        }
        if c.sites > 1 || c.seeds == 0 {
            bound = bound.max(f / c.wan_down);
        }
        bound
    }

    /// With reachable sites: every site but the root's receives its copy through the reachable
    /// sites' WAN uplinks, which start once the origin delay has passed.
    fn peer_bound(&self) -> Option<f64> {
        let c = self.c;
        let reachable = self.devices.iter().filter(|d| d.reachable).count();
        (reachable > 0 && c.seeds == 0)
            .then(|| c.origin_delay + (c.sites as f64 - 1.0) * c.size as f64 / (reachable as f64 * c.wan_up))
    }

    fn sample(&self) -> (f64, f64, f64, f64) {
        let fleet = &self.devices[self.c.seeds..];
        let done = fleet.iter().filter(|d| d.done_at.is_some()).count() as f64 / fleet.len().max(1) as f64;
        (self.now, done, self.origin_bytes, self.site_wan_bytes.iter().sum())
    }

    /// Device `d` comes up: LAN discovery connects it to its site's devices; the site's WAN
    /// dialler reaches reachable devices elsewhere (`refresh_site`).
    fn join(&mut self, d: u32) {
        let site = self.devices[d as usize].site;
        let lan: Vec<u32> = (0..self.devices.len() as u32)
            .filter(|&o| o != d && self.devices[o as usize].online && self.devices[o as usize].site == site)
            .collect();
        for o in lan {
            let known = self.devices[d as usize].peers.iter().any(|p| p.device == o);
            if !known
                && self.devices[d as usize].peers.len() < MAX_PEERS
                && self.devices[o as usize].peers.len() < MAX_PEERS
            {
                self.connect(d, o, false);
            }
        }
        self.refresh_site(site);
    }

    /// Whether `d` dials peers beyond its LAN that it learnt, and how many it keeps (the
    /// agent's `dials_beyond_lan`): while fetching, a device alone as many as its slots allow;
    /// in a site, its first device by rank, or a reachable one (the tree), [`WAN_PEERS`].
    fn wan_dials(&self, d: u32) -> usize {
        let dev = &self.devices[d as usize];
        match dev.share {
            _ if !dev.online || dev.done_at.is_some() => 0,
            None => MAX_PEERS,
            Some((rank, _)) if rank == 0 || dev.reachable => WAN_PEERS.min(self.c.wan_peers),
            Some(_) => 0,
        }
    }

    /// `d` tops up its connections to reachable devices of other sites from the tracker's
    /// list (every reachable device, in an order of the tracker's choosing; the agent's list
    /// also names devices behind NAT, whose dials fail at once), trying the next while one is
    /// full; a full one's refusal makes its site wait for a slot ([`BUSY_WAIT`]).
    fn dial_wan(&mut self, d: u32) {
        let want = self.wan_dials(d);
        let site = self.devices[d as usize].site;
        let dialled =
            |w: &World, d: u32| w.devices[d as usize].peers.iter().filter(|p| p.beyond_lan && p.dialled).count();
        if dialled(self, d) >= want {
            return;
        }
        let mut reachable: Vec<u32> = (0..self.devices.len() as u32)
            .filter(|&o| self.devices[o as usize].reachable && self.devices[o as usize].site != site)
            .collect();
        for i in (1..reachable.len()).rev() {
            reachable.swap(i, self.rng.below(i as u64 + 1) as usize);
        }
        for o in reachable {
            if self.devices[d as usize].peers.len() >= MAX_PEERS || dialled(self, d) >= want {
                break;
            }
            if self.devices[d as usize].peers.iter().any(|p| p.device == o) || !self.devices[o as usize].online {
                continue;
            }
            if self.accepts(o, site) {
                self.connect(d, o, true);
                self.devices[d as usize].behind = true;
            } else {
                self.devices[d as usize].busy_until = self.now + BUSY_WAIT;
            }
        }
        if self.devices[d as usize].reachable {
            self.refresh_tree();
        }
        self.refresh_behind(site);
    }

    /// Every site dialler short of peers beyond its LAN tries again.
    fn redial(&mut self) {
        for d in 0..self.devices.len() as u32 {
            if self.wan_dials(d) > 0 {
                self.dial_wan(d);
            }
        }
    }

    /// Device `d` has the whole release: its connections to peers that have it too close
    /// (`CloseReason::BothComplete`), freeing their slots.
    fn close_complete_pairs(&mut self, d: u32) {
        let done: Vec<(u32, bool)> = self.devices[d as usize]
            .peers
            .iter()
            .filter(|p| self.devices[p.device as usize].done_at.is_some())
            .map(|p| (p.device, p.beyond_lan))
            .collect();
        let mut tree_changed = false;
        for (q, beyond_lan) in done {
            self.devices[d as usize].peers.retain(|p| p.device != q);
            self.devices[q as usize].peers.retain(|p| p.device != d);
            tree_changed |= beyond_lan && self.devices[d as usize].reachable && self.devices[q as usize].reachable;
        }
        if tree_changed {
            self.refresh_tree();
        }
        let site = self.devices[d as usize].site;
        self.refresh_behind(site);
    }

    /// The reachable devices' tree: each one's advert by the agent's own rule
    /// (`core::swarm::tree::best_advert`), iterated over their connections beyond the LAN
    /// until it settles (the agent's adverts travel a round trip per hop; here they settle at
    /// once). Every reachable device whose root is another leaves the origin to the tree, and
    /// so does its site.
    fn refresh_tree(&mut self) {
        let n = self.devices.len();
        let supers: Vec<usize> = (0..n).filter(|&d| self.devices[d].reachable && self.devices[d].online).collect();
        let mut advert: Vec<Option<TreeAdvert>> = vec![None; n];
        loop {
            let mut changed = false;
            for &d in &supers {
                let dev = &self.devices[d];
                let heard = dev.peers.iter().filter(|p| p.beyond_lan).filter_map(|p| advert[p.device as usize]);
                let best = tree::best_advert(dev.node, true, heard);
                changed |= best != advert[d];
                advert[d] = best;
            }
            if !changed {
                break;
            }
        }
        for (d, advert) in advert.iter().enumerate() {
            let behind = advert.is_some_and(|a| a.root != self.devices[d].node);
            if self.devices[d].tree_behind != behind {
                self.devices[d].tree_behind = behind;
                let site = self.devices[d].site;
                self.refresh_behind(site);
            }
        }
    }

    /// Whether reachable device `o` takes one more connection from site `site`: its slots, a
    /// quarter kept for its own dials while it fetches, and four per remote address.
    fn accepts(&self, o: u32, site: u32) -> bool {
        let dev = &self.devices[o as usize];
        let slots = if dev.done_at.is_some() { MAX_PEERS } else { MAX_PEERS - MAX_PEERS / 4 };
        let from_site = dev.peers.iter().filter(|p| self.devices[p.device as usize].site == site).count();
        dev.online && dev.peers.len() < slots && from_site < MAX_PER_ADDRESS
    }

    fn connect(&mut self, a: u32, b: u32, beyond_lan: bool) {
        for (x, y) in [(a, b), (b, a)] {
            let dialled = x == a;
            let peer =
                Peer { device: y, beyond_lan, dialled, asked: heapless::Vec::new(), offered: heapless::Vec::new() };
            self.devices[x as usize].peers.push(peer);
            let have: Vec<u32> = self.devices[y as usize].have.iter_ones().collect();
            let dev = &mut self.devices[x as usize];
            for c in have {
                dev.holders[c as usize] += 1;
                if !beyond_lan {
                    dev.lan_holders[c as usize] += 1;
                }
            }
        }
        for (x, y) in [(a, b), (b, a)] {
            self.mark_out_all(x, y);
            self.offer(y, x);
            self.fill(x, y, None);
        }
    }

    /// Each device's share of its site (rank by device number among the site's online
    /// devices), and whether the site is behind a reachable peer.
    fn refresh_site(&mut self, site: u32) {
        let members: Vec<u32> = (0..self.devices.len() as u32)
            .filter(|&d| self.devices[d as usize].site == site && self.devices[d as usize].online)
            .collect();
        let of = members.len() as u32;
        for (rank, &d) in members.iter().enumerate() {
            self.devices[d as usize].share = (of > 1).then_some((rank as u32, of));
        }
        for &d in &members {
            if self.wan_dials(d) > 0 {
                self.dial_wan(d);
            }
        }
        self.refresh_behind(site);
    }

    /// Recomputes whether `site` is behind a reachable peer: one of its online devices reached
    /// one (the LAN flag tells the others).
    fn refresh_behind(&mut self, site: u32) {
        // What its fetching devices announce (`SiteView::fetches_behind`).
        let now = self.now;
        let behind = self.devices.iter().any(|d| {
            let waiting = now < d.busy_until;
            d.site == site
                && d.online
                && d.done_at.is_none()
                && (d.tree_behind || (!d.reachable && (d.behind || waiting)))
        });
        self.site_behind[site as usize] = behind;
        self.site_was_behind[site as usize] |= behind;
    }

    /// Whether `from` can give `d` chunk `c`, as `d` sees it (a spreading seed: only offers).
    fn offers(&self, p: &Peer, c: u32) -> bool {
        let from = &self.devices[p.device as usize];
        match &from.spread_out {
            Some(_) => p.offered.contains(&c),
            None => from.have.get(c),
        }
    }

    /// Asks peer `to` for chunks until the pipeline is full: `only` a chunk it just got, or
    /// the rarest (the swarm's `pick_chunk`).
    fn fill(&mut self, d: u32, to: u32, only: Option<u32>) {
        let dev = &self.devices[d as usize];
        if !dev.online || dev.done_at.is_some() || !self.devices[to as usize].online {
            return;
        }
        loop {
            let dev = &self.devices[d as usize];
            let Some(k) = dev.peers.iter().position(|p| p.device == to) else { return };
            if dev.peers[k].asked.len() >= PIPELINE as usize {
                return;
            }
            let Some(c) = self.pick(d, k, only) else { return };
            let dev = &mut self.devices[d as usize];
            let _ = dev.peers[k].asked.push(c);
            dev.in_flight[c as usize] += 1;
            let since = self.now;
            self.devices[to as usize].waiting.push(Waiting { to: d, chunk: c, since });
            self.serve(to);
            if only.is_some() {
                return;
            }
        }
    }

    fn pick(&mut self, d: u32, k: usize, only: Option<u32>) -> Option<u32> {
        let start = self.rng.below(self.chunks as u64) as u32;
        let dev = &self.devices[d as usize];
        let peer = &dev.peers[k];
        let place = PeerPlace { beyond_lan: peer.beyond_lan, site_share: dev.share };
        let view = DeviceView { world: self, dev, peer };
        match only {
            Some(c) => (!dev.have.get(c) && dev.in_flight[c as usize] == 0 && place.may_ask(&view, c)).then_some(c),
            None => choice::pick_chunk(&view, place, start),
        }
    }

    /// Starts uploads at `u` while it has a free slot: the longest-waiting request past the
    /// patience, else the one whose chunk is rarest among `u`'s peers (one slot per peer).
    fn serve(&mut self, u: u32) {
        loop {
            let dev = &self.devices[u as usize];
            if !dev.online || dev.uploading.is_full() || dev.waiting.is_empty() {
                return;
            }
            let busy = |to: u32| dev.uploading.iter().any(|&(t, _)| t == to);
            let now = self.now;
            let starved = (0..dev.waiting.len())
                .filter(|&i| !busy(dev.waiting[i].to) && now - dev.waiting[i].since >= PATIENCE)
                .min_by(|&a, &b| dev.waiting[a].since.total_cmp(&dev.waiting[b].since));
            let next = starved.or_else(|| {
                (0..dev.waiting.len())
                    .filter(|&i| !busy(dev.waiting[i].to))
                    .min_by_key(|&i| (dev.holders[dev.waiting[i].chunk as usize], i))
            });
            let Some(i) = next else { return };
            let w = self.devices[u as usize].waiting.remove(i);
            self.start_transfer(Source::Device(u), w.to, w.chunk, w.since);
        }
    }

    fn start_transfer(&mut self, from: Source, to: u32, chunk: u32, asked_at: f64) {
        let dst = &self.devices[to as usize];
        let mut links = heapless::Vec::<Link, 4>::new();
        let latency = match from {
            Source::Device(u) => {
                let src = &self.devices[u as usize];
                let _ = links.push(src.up);
                if src.site != dst.site {
                    let _ = links.push(self.site_up[src.site as usize]);
                    let _ = links.push(self.site_down[dst.site as usize]);
                    self.c.wan_latency
                } else {
                    self.c.lan_latency
                }
            }
            Source::Origin => {
                let _ = links.push(self.origin_link.expect("an origin"));
                let _ = links.push(self.site_down[dst.site as usize]);
                self.c.wan_latency
            }
        };
        let _ = links.push(dst.down);
        let bytes = self.geo.chunk_len(chunk) as f64;
        // A pipelined request's bytes follow the previous chunk's; a fresh one waits a round trip.
        let start = (asked_at + 2.0 * latency).max(self.now);
        let flow = self.net.start(&links, bytes, start);
        if let Source::Device(u) = from {
            let _ = self.devices[u as usize].uploading.push((to, flow));
        }
        if self.transfers.len() <= flow as usize {
            self.transfers.resize(flow as usize + 1, None);
        }
        self.transfers[flow as usize] = Some(Transfer { from, to, chunk });
    }

    /// A transfer's last byte arrived.
    fn finish(&mut self, flow: FlowId) {
        // Aborted earlier in this step (an endgame duplicate cancelled): nothing arrives.
        let Some(t) = self.transfers[flow as usize].take() else { return };
        self.net.stop(flow);
        let bytes = self.geo.chunk_len(t.chunk) as f64;
        let to_site = self.devices[t.to as usize].site;
        match t.from {
            Source::Origin => {
                self.origin_bytes += bytes;
                self.site_wan_bytes[to_site as usize] += bytes;
                self.devices[t.to as usize].origin_busy = false;
            }
            Source::Device(u) => {
                if self.devices[u as usize].site != to_site {
                    self.site_wan_bytes[to_site as usize] += bytes;
                }
                self.devices[u as usize].uploading.retain(|&(_, f)| f != flow);
                if let Some(k) = self.devices[t.to as usize].peers.iter().position(|p| p.device == u) {
                    self.devices[t.to as usize].peers[k].asked.retain(|&c| c != t.chunk);
                }
                if let Some(out) = self.devices[u as usize].spread_out.as_mut() {
                    out.set(t.chunk);
                    self.end_spread_if_out(u);
                    self.offer(u, t.to);
                }
            }
        }
        self.devices[t.to as usize].in_flight[t.chunk as usize] -= 1;
        if self.devices[t.to as usize].have.get(t.chunk) {
            self.wasted += bytes;
        } else {
            self.got(t.to, t.chunk);
        }
        if let Source::Device(u) = t.from {
            self.serve(u);
            self.fill(t.to, u, None);
        }
    }

    /// Device `d` holds chunk `c`: its peers hear of it (`Have`) and may ask for it.
    fn got(&mut self, d: u32, c: u32) {
        if self.devices[d as usize].in_flight[c as usize] > 0 {
            self.cancel_duplicates(d, c);
        }
        let dev = &mut self.devices[d as usize];
        dev.have.set(c);
        if dev.have.is_full() {
            dev.done_at = Some(self.now);
        }
        let peers: Vec<(u32, bool)> = dev.peers.iter().map(|p| (p.device, p.beyond_lan)).collect();
        for (q, beyond_lan) in peers {
            let other = &mut self.devices[q as usize];
            other.holders[c as usize] += 1;
            if !beyond_lan {
                other.lan_holders[c as usize] += 1;
            }
            if other.spread_out.is_some() {
                self.mark_out(q, c);
            }
            self.fill(q, d, Some(c));
        }
        if self.devices[d as usize].done_at.is_some() {
            self.close_complete_pairs(d);
        }
        // A device with the whole release leaves its peers' pipelines to others.
        if self.devices[d as usize].done_at.is_some() {
            let peers: Vec<u32> = self.devices[d as usize].peers.iter().map(|p| p.device).collect();
            for q in peers {
                self.fill(d, q, None);
            }
        }
    }

    /// The endgame's other requests for chunk `c` of `d` are cancelled (the swarm's `Cancel`):
    /// what they moved so far is wasted; those still waiting at their uploader cost nothing.
    fn cancel_duplicates(&mut self, d: u32, c: u32) {
        for flow in 0..self.transfers.len() as FlowId {
            match self.transfers[flow as usize] {
                Some(t) if t.to == d && t.chunk == c => self.abort(flow),
                _ => {}
            }
        }
        let peers: Vec<u32> = self.devices[d as usize].peers.iter().map(|p| p.device).collect();
        for u in peers {
            let before = self.devices[u as usize].waiting.len();
            self.devices[u as usize].waiting.retain(|w| !(w.to == d && w.chunk == c));
            let cancelled = (before - self.devices[u as usize].waiting.len()) as u8;
            self.devices[d as usize].in_flight[c as usize] -= cancelled;
            if let Some(k) = self.devices[d as usize].peers.iter().position(|p| p.device == u) {
                self.devices[d as usize].peers[k].asked.retain(|&x| x != c);
            }
        }
    }

    /// Ends a transfer before its last byte: its bytes so far are wasted, its request undone.
    fn abort(&mut self, flow: FlowId) {
        let Some(t) = self.transfers[flow as usize].take() else { return };
        self.wasted += self.geo.chunk_len(t.chunk) as f64 - self.net.stop(flow).max(0.0);
        self.devices[t.to as usize].in_flight[t.chunk as usize] -= 1;
        match t.from {
            Source::Origin => self.devices[t.to as usize].origin_busy = false,
            Source::Device(u) => {
                self.devices[u as usize].uploading.retain(|&(_, f)| f != flow);
                if let Some(k) = self.devices[t.to as usize].peers.iter().position(|p| p.device == u) {
                    self.devices[t.to as usize].peers[k].asked.retain(|&c| c != t.chunk);
                }
                self.serve(u);
                self.fill(t.to, u, None);
            }
        }
    }

    fn mark_out_all(&mut self, seed: u32, peer: u32) {
        if self.devices[seed as usize].spread_out.is_none() {
            return;
        }
        let have: Vec<u32> = self.devices[peer as usize].have.iter_ones().collect();
        for c in have {
            self.mark_out(seed, c);
        }
    }

    fn mark_out(&mut self, seed: u32, c: u32) {
        if let Some(out) = self.devices[seed as usize].spread_out.as_mut() {
            out.set(c);
        }
        self.end_spread_if_out(seed);
    }

    /// A spreading seed whose chunks are all out advertises everything.
    fn end_spread_if_out(&mut self, seed: u32) {
        let dev = &mut self.devices[seed as usize];
        if dev.spread_out.as_ref().is_some_and(|o| o.is_full()) {
            dev.spread_out = None;
            let peers: Vec<u32> = dev.peers.iter().map(|p| p.device).collect();
            for q in peers {
                self.fill(q, seed, None);
            }
        }
    }

    /// A spreading seed tops up what it offers `peer`: chunks not out and offered to no one.
    fn offer(&mut self, seed: u32, peer: u32) {
        let Some(out) = self.devices[seed as usize].spread_out.as_ref() else { return };
        let Some(k) = self.devices[peer as usize].peers.iter().position(|p| p.device == seed) else { return };
        let offered_anywhere = |w: &World, c: u32| {
            w.devices[seed as usize]
                .peers
                .iter()
                .any(|p| w.devices[p.device as usize].peers.iter().any(|b| b.device == seed && b.offered.contains(&c)))
        };
        let mut out = out.clone();
        let n = self.chunks;
        let start = self.rng.below(n as u64) as u32;
        self.devices[peer as usize].peers[k].offered.retain(|c| !out.get(*c));
        let mut i = 0;
        while self.devices[peer as usize].peers[k].offered.len() < OFFERS_PER_PEER && i < n {
            let c = (start + i) % n;
            i += 1;
            if out.get(c) || self.devices[peer as usize].have.get(c) || offered_anywhere(self, c) {
                continue;
            }
            out.set(c); // not offered twice in this loop
            let _ = self.devices[peer as usize].peers[k].offered.push(c);
        }
        self.fill(peer, seed, None);
    }

    /// Each device's origin client: after the delay, its share of the site's chunks not in
    /// flight, and after the steal time the rest; none for a site behind a reachable peer.
    fn drive_origins(&mut self) {
        if self.origin_link.is_none() {
            return;
        }
        for d in self.c.seeds as u32..self.devices.len() as u32 {
            let dev = &self.devices[d as usize];
            if !dev.online || dev.done_at.is_some() || dev.origin_busy || self.now < dev.origin_next {
                continue;
            }
            self.devices[d as usize].origin_next = self.now + ORIGIN_CHECK;
            let dev = &self.devices[d as usize];
            let waiting = self.now < dev.busy_until;
            if dev.tree_behind || (!dev.reachable && (dev.behind || waiting || self.site_behind[dev.site as usize])) {
                continue;
            }
            let free = |c: u32, dev: &Device| !dev.have.get(c) && dev.in_flight[c as usize] == 0;
            let n = self.chunks;
            let start = self.rng.below(n as u64) as u32;
            let share = dev.share;
            let ours = |c: u32| share.is_none_or(|(rank, of)| c % of == rank);
            let mut chunk = (0..n).map(|i| (start + i) % n).find(|&c| ours(c) && free(c, dev));
            if chunk.is_none() && share.is_some() {
                let done_at = *self.devices[d as usize].share_done_at.get_or_insert(self.now);
                let dev = &self.devices[d as usize];
                if self.now >= done_at + STEAL_AFTER.max(self.c.origin_delay) {
                    chunk = (0..n).map(|i| (start + i) % n).find(|&c| free(c, dev));
                }
            }
            let Some(c) = chunk else { continue };
            let dev = &mut self.devices[d as usize];
            dev.in_flight[c as usize] += 1;
            dev.origin_busy = true;
            self.start_transfer(Source::Origin, d, c, self.now);
        }
    }

    /// Devices going down (their transfers aborted, their connections gone) and coming back.
    fn churn(&mut self) {
        for d in self.c.seeds as u32..self.devices.len() as u32 {
            let Some((at, length)) = self.devices[d as usize].down_at else { continue };
            if self.devices[d as usize].online && self.now >= at {
                self.leave(d);
            } else if !self.devices[d as usize].online && self.now >= at + length {
                self.devices[d as usize].online = true;
                self.devices[d as usize].down_at = None;
                self.join(d);
            }
        }
    }

    fn leave(&mut self, d: u32) {
        self.devices[d as usize].online = false;
        for flow in 0..self.transfers.len() as FlowId {
            match self.transfers[flow as usize] {
                Some(t) if t.to == d || t.from == Source::Device(d) => self.abort(flow),
                _ => {}
            }
        }
        let peers: Vec<Peer> = std::mem::take(&mut self.devices[d as usize].peers);
        let peers_wan: Vec<u32> = peers.iter().filter(|p| p.beyond_lan).map(|p| p.device).collect();
        for p in &peers {
            let other = &mut self.devices[p.device as usize];
            other.peers.retain(|q| q.device != d);
            other.waiting.retain(|w| w.to != d);
            let have: Vec<u32> = self.devices[d as usize].have.iter_ones().collect();
            let other = &mut self.devices[p.device as usize];
            for c in have {
                other.holders[c as usize] -= 1;
                if !p.beyond_lan {
                    other.lan_holders[c as usize] -= 1;
                }
            }
        }
        // What it had asked of others is asked again, of whoever has it.
        {
            let dev = &mut self.devices[d as usize];
            dev.waiting.clear();
            dev.holders.iter_mut().for_each(|h| *h = 0);
            dev.lan_holders.iter_mut().for_each(|h| *h = 0);
            dev.behind = false;
            dev.tree_behind = false;
            dev.busy_until = 0.0;
            dev.origin_busy = false;
        }
        let mut in_flight = vec![0u8; self.chunks as usize];
        for t in self.transfers.iter().flatten().filter(|t| t.to == d) {
            in_flight[t.chunk as usize] += 1;
        }
        self.devices[d as usize].in_flight = in_flight;
        for p in peers {
            for q in self.devices[p.device as usize].peers.iter().map(|q| q.device).collect::<Vec<_>>() {
                self.fill(p.device, q, None);
                self.serve(p.device);
            }
        }
        if self.devices[d as usize].reachable {
            self.refresh_tree();
        }
        // Those that had reached it over the WAN reach another.
        for p in peers_wan {
            if self.wan_dials(p) > 0 {
                self.dial_wan(p);
            }
        }
        let site = self.devices[d as usize].site;
        self.refresh_site(site);
    }

    /// Release 2, published `after` seconds after release 1 is everywhere: when each device
    /// learns its manifest (its own poll of the origin, at its turn among its site's devices
    /// as the agent takes it, `discovery::poll_phase`, or a LAN peer's announcement, made at
    /// once by a device that learnt it) and when each installs it (its rollout time, at the
    /// earliest once it could have fetched it: learnt + the time release 1 took). Returns
    /// (manifest everywhere, last install), in seconds after publishing.
    fn new_release(&mut self, after: f64) -> (f64, f64) {
        let c = self.c;
        let move_time = self.devices.iter().filter_map(|d| d.done_at).fold(0.0f64, f64::max);
        // Release 2 comes to a fleet that is up: devices still down from churn are back.
        let back = self.devices.iter().filter_map(|d| d.down_at.map(|(at, length)| at + length)).fold(0.0, f64::max);
        for d in 0..self.devices.len() as u32 {
            if !self.devices[d as usize].online {
                self.devices[d as usize].online = true;
                self.devices[d as usize].down_at = None;
                self.join(d);
            }
        }
        let published = move_time.max(back) + after;
        let n = self.devices.len();
        let mut poll_at: Vec<f64> = (0..n)
            .map(|d| {
                let phase = discovery::poll_phase(c.poll, self.devices[d].share, self.rng.unit());
                published + discovery::until_poll(published, c.poll, phase, 0.0)
            })
            .collect();
        let mut heard_at = vec![f64::INFINITY; n];
        let mut site_members = vec![Vec::new(); self.site_up.len()];
        for (d, dev) in self.devices.iter().enumerate().filter(|(_, dev)| dev.online) {
            site_members[dev.site as usize].push(d as u32);
        }
        for (d, dev) in self.devices.iter_mut().enumerate() {
            if d < c.seeds {
                dev.learnt_at = Some(published);
            } else {
                dev.learnt_at = None;
            }
        }
        // Events in time order: a poll that finds the manifest, or an announcement heard.
        loop {
            let next = (0..n)
                .filter(|&d| self.devices[d].learnt_at.is_none())
                .map(|d| (poll_at[d].min(heard_at[d]), d))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            let Some((t, d)) = next else { break };
            if t.is_infinite() {
                break;
            }
            if c.origin_up <= 0.0 && heard_at[d] > t {
                poll_at[d] = f64::INFINITY;
                continue;
            }
            self.devices[d].learnt_at = Some(t);
            // It announces at once to the group; its site's devices (connected or not) ask it
            // for the manifest, a round trip each.
            let announce = t + c.lan_latency * 4.0;
            for &o in &site_members[self.devices[d].site as usize] {
                heard_at[o as usize] = heard_at[o as usize].min(announce);
            }
        }
        let everywhere = self.devices.iter().filter_map(|d| d.learnt_at).fold(published, f64::max) - published;
        let rollout = Rollout { start: 0, hours: c.rollout_hours };
        let swarm = [2u8; 32];
        let last = self
            .devices
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                let fetched = d.learnt_at? - published + move_time;
                let id = (i as u64).to_be_bytes();
                let window = if c.rollout_hours > 0 { rollout.install_at(&id, &swarm) as f64 } else { 0.0 };
                Some(fetched.max(window))
            })
            .fold(0.0f64, f64::max);
        (everywhere, last)
    }
}

/// A simulated device's state as the swarm's chunk choice reads it, for one of its peers.
struct DeviceView<'a, 'c> {
    world: &'a World<'c>,
    dev: &'a Device,
    peer: &'a Peer,
}

impl ChunkView for DeviceView<'_, '_> {
    fn chunk_count(&self) -> u32 {
        self.world.chunks
    }
    fn have_count(&self) -> u32 {
        self.dev.have.count()
    }
    fn have(&self, chunk: u32) -> bool {
        self.dev.have.get(chunk)
    }
    fn in_flight(&self, chunk: u32) -> u8 {
        self.dev.in_flight[chunk as usize]
    }
    fn holders(&self, chunk: u32) -> u16 {
        self.dev.holders[chunk as usize]
    }
    fn lan_holders(&self, chunk: u32) -> u16 {
        self.dev.lan_holders[chunk as usize]
    }
    fn peer_offers(&self, chunk: u32) -> bool {
        self.world.offers(self.peer, chunk)
    }
    fn asked_of_peer(&self, chunk: u32) -> bool {
        self.peer.asked.contains(&chunk)
    }
}
