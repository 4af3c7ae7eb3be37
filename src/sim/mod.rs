//! The fleet simulator: thousands of devices in hundreds of sites, one release, simulated time,
//! one thread, deterministic for a seed (`cargo run --release --example fleet`).
//!
//! What is shared with the agent: the release's geometry (`core::manifest::Geometry`), the
//! chunk sets (`core::bitfield::Bitfield`), the seeded `core::rng::Rng`, the staged rollout's
//! schedule (`core::manifest::Rollout::install_at`), the turns a site's devices take polling
//! the origin for a new release (`core::discovery::poll_phase` and `until_poll`), the tree of
//! reachable devices (`core::swarm::tree::best_advert`: which super-peer takes the origin), the
//! swarm's chunk choice itself (`core::swarm::choice::pick_chunk`: a few random chunks first,
//! then rarest first from a random start, the site share (`chunk % of == rank`) first from WAN
//! peers, no chunk a LAN peer holds asked over the WAN, the endgame's duplicates), and the
//! swarm's constants (pipeline depth, upload slots, offers per peer, connection slots).
//!
//! What is modelled, not run (a 64 MiB release to 10,000 devices is 640 GB of payload: no
//! frame-level run of the real `Release` fits in a minute): the rest of the policies of
//! `core::swarm` and of the agent, restated at chunk granularity in `fleet.rs`: two requests
//! in flight per peer, two upload slots that rotate after each chunk to the waiting peer whose
//! chunk is rarest (or one that waited a third of the request timeout), a seed's spreading,
//! connections between two complete devices closed, the origin after its delay for the
//! device's share and after the steal time for the rest; the site's WAN dialler (its first
//! device by rank, or a reachable device, keeping two peers beyond its LAN; a device alone
//! as many as its slots allow), trying the tracker's list again every 5 s (the agent backs each
//! address off from 0.5 to 30 s); devices behind a reachable peer, behind in the tree, or
//! refused by a full one within the last minute (`Refuse(Busy)`) leaving the origin to it, and,
//! by the LAN flag while they fetch, their site; the tree's adverts settled at once (the agent's
//! travel a round trip per hop); the tracker as a list of the reachable devices (the agent's
//! also names devices behind NAT, whose dials fail at once); the connection slots of a
//! reachable device (a quarter kept for its own dials while fetching, four per remote
//! address). A device that learns of a new release announces it at once and its site's devices
//! fetch the manifest in two round trips (the agent's `announce_now` and `ManifestGet`). `Have`
//! reaches peers at once (no commit delay); a block's framing overhead is not counted; the
//! network is `net.rs`. Not modelled: the agent's patience with peers beyond the LAN that
//! deliver nothing for a minute (`site::PEER_PATIENCE`, against a lying root or a dead
//! super-peer); the simulated devices never lie, and a connected site gets a chunk at least
//! every upload-slot rotation.

mod fleet;
pub mod net;
mod svg;

pub use fleet::run;

/// One simulated run's shape. Rates in bytes per second.
#[derive(Clone, Debug)]
pub struct Config {
    pub devices: usize,
    pub sites: usize,
    /// Devices holding the whole release at start, in site 1 (the single-LAN testbed's seed),
    /// besides the origin.
    pub seeds: usize,
    pub size: u64,
    pub chunk_size: u32,
    pub seed: u64,
    pub wan_down: f64,
    pub wan_up: f64,
    /// Each device's LAN uplink (its downlink is not limited, as on the testbeds).
    pub lan_up: f64,
    /// The seeds' uplink.
    pub seed_up: f64,
    /// The origin's uplink; 0: no origin.
    pub origin_up: f64,
    pub origin_delay: f64,
    /// Seconds before a request's first byte, within a site and across sites.
    pub lan_latency: f64,
    pub wan_latency: f64,
    /// Share of sites (the first ones) whose first device is reachable from outside.
    pub reachable: f64,
    /// Peers beyond its LAN a site's WAN dialler (and a reachable device) keeps connections
    /// to, from the tracker (the agent's `WAN_PEERS`).
    pub wan_peers: usize,
    /// Share of devices that go down once, at a random time, for 10 to 60 s.
    pub churn: f64,
    /// Publish release 2 at this many seconds after release 1 is everywhere (none: not at all).
    pub new_release_after: Option<f64>,
    /// Origin poll interval (`--poll`) and LAN announcement interval (the gossip period).
    pub poll: f64,
    pub gossip: f64,
    /// Release 2's staged rollout window in hours (0: install at once).
    pub rollout_hours: u32,
    /// The simulation step in seconds.
    pub step: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            devices: 10_000,
            sites: 500,
            seeds: 0,
            size: 64 << 20,
            chunk_size: 256 * 1024,
            seed: 7,
            wan_down: 20e6 / 8.0,
            wan_up: 5e6 / 8.0,
            lan_up: 100e6 / 8.0,
            seed_up: 100e6 / 8.0,
            origin_up: 10e9 / 8.0,
            origin_delay: 2.0,
            lan_latency: 0.001,
            wan_latency: 0.03,
            reachable: 0.0,
            churn: 0.0,
            wan_peers: 2,
            new_release_after: None,
            poll: 300.0,
            gossip: 5.0,
            rollout_hours: 0,
            step: 0.01,
        }
    }
}

impl Config {
    /// Whether the shape can be simulated; the reason if not.
    pub fn check(&self) -> Result<(), String> {
        let positive = [self.wan_down, self.wan_up, self.lan_up, self.seed_up, self.step, self.gossip, self.poll];
        if positive.iter().any(|&v| !(v > 0.0 && v.is_finite())) {
            return Err("rates, --step, --gossip and --poll must be positive".into());
        }
        if self.devices == 0 || self.sites == 0 || self.sites > self.devices {
            return Err("--devices and --sites: at least 1, and no more sites than devices".into());
        }
        if self.size == 0 || self.chunk_size < 16 * 1024 || self.size.div_ceil(self.chunk_size as u64) > 1 << 20 {
            return Err("--size: positive; --chunk-size: at least 16K and at most 2^20 chunks".into());
        }
        if self.origin_up <= 0.0 && self.seeds == 0 {
            return Err("nothing holds the release: give --origin-up or --seeds".into());
        }
        // A site's LAN is modelled as a full mesh, which the connection slots hold only so far.
        if self.devices.div_ceil(self.sites) + self.seeds > fleet::MAX_PEERS + 1 {
            return Err(format!(
                "at most {} devices per site, seeds included: a site's LAN is modelled as a full mesh of \
                 the agent's {} connection slots (use more --sites)",
                fleet::MAX_PEERS + 1,
                fleet::MAX_PEERS
            ));
        }
        if !(0.0..=1.0).contains(&self.reachable) || !(0.0..=1.0).contains(&self.churn) {
            return Err("--reachable and --churn are shares, 0 to 1".into());
        }
        Ok(())
    }
}

/// What a run measured (all in simulated time; nothing here reads a clock).
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub devices: usize,
    pub sites: usize,
    pub all_done: f64,
    pub bound: f64,
    /// With reachable sites: the bound when the origin sends one copy, so that every other
    /// site's copy crosses a reachable site's WAN uplink (after the origin delay).
    pub peer_bound: Option<f64>,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    /// Origin egress and the busiest site's WAN download, in release sizes.
    pub origin_egress: f64,
    pub max_site_wan: f64,
    /// Bytes moved for nothing (aborted transfers, duplicates), in release sizes.
    pub wasted: f64,
    /// Sites served from a reachable site (one of their devices reached one).
    pub sites_behind: usize,
    /// Release 2: the manifest everywhere (seconds after publishing), and the last install.
    pub manifest_everywhere: Option<f64>,
    pub last_install: Option<f64>,
    pub gossip: f64,
    /// (time, share of devices done, origin bytes so far, all sites' WAN bytes so far), sampled.
    pub samples: Vec<(f64, f64, f64, f64)>,
    pub size: u64,
}

impl Report {
    /// The report's text: the same bytes for the same configuration.
    pub fn text(&self) -> String {
        let mut s = format!(
            "devices {} in {} sites\nall done {:.2} s; the topology's bound {:.2} s: {:.3} x\n\
             completion p50 {:.2} s, p90 {:.2} s, p99 {:.2} s\n\
             origin egress {:.3} x the release; busiest site WAN download {:.3} x\n\
             wasted (aborted or duplicate transfers) {:.4} x the release\n\
             sites served from a reachable site: {}\n",
            self.devices,
            self.sites,
            self.all_done,
            self.bound,
            self.ratio(),
            self.p50,
            self.p90,
            self.p99,
            self.origin_egress,
            self.max_site_wan,
            self.wasted,
            self.sites_behind
        );
        if let Some(b) = self.peer_bound {
            s += &format!(
                "with one copy from the origin, the super-peers' bound {b:.2} s (the other sites' copies through the reachable uplinks): {:.3} x\n",
                self.all_done / b
            );
        }
        if let Some(m) = self.manifest_everywhere {
            s += &format!(
                "release 2: manifest on every device {m:.2} s after publishing ({:.2} gossip periods)\n",
                m / self.gossip
            );
        }
        if let Some(i) = self.last_install {
            s += &format!("release 2: last install {i:.2} s after publishing\n");
        }
        s
    }

    /// All done ÷ the bound.
    pub fn ratio(&self) -> f64 {
        self.all_done / self.bound
    }

    /// The report's last line, `key=value` pairs, with the run's wall time.
    pub fn summary(&self, wall_s: f64) -> String {
        let opt = |v: Option<f64>| v.map_or("none".to_string(), |v| format!("{v:.2}"));
        format!(
            "devices={} sites={} wall_s={wall_s:.2} all_done_s={:.2} bound_s={:.2} ratio={:.3} origin_egress={:.3} \
             max_site_wan={:.3} p99_s={:.2} wasted={:.4} manifest_s={} last_install_s={} peer_bound_s={}",
            self.devices,
            self.sites,
            self.all_done,
            self.bound,
            self.ratio(),
            self.origin_egress,
            self.max_site_wan,
            self.p99,
            self.wasted,
            opt(self.manifest_everywhere),
            opt(self.last_install),
            opt(self.peer_bound)
        )
    }

    /// The picture: share of devices done, and origin and WAN bytes, over time.
    pub fn svg(&self) -> String {
        svg::completion(self)
    }
}
