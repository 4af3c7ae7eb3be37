//! The fleet simulator: `cargo run --release --example fleet -- --devices 10000 --sites 500
//! --size 64M --seed 7`. Prints the report, writes its picture (`--svg FILE`, default
//! fleet.svg), and ends with one line of `key=value` pairs. What it models and what it shares
//! with the agent: `src/sim/mod.rs`.

use flotilla::sim::{self, Config};
use std::time::Instant;

const HELP: &str = "\
fleet: a deterministic simulation of a fleet fetching one release (simulated time, one thread)

options (rates in bit/s with k/M/G, sizes in bytes with K/M/G):
  --devices N        devices in the fleet (default 10000)
  --sites S          sites; devices are dealt to them in turn (default 500)
  --size SZ          release size (default 64M)       --chunk-size SZ (default 256K)
  --seed N           the run's random seed (default 7): the same seed, the same report
  --wan-down RATE    each site's WAN downlink (default 20M)   --wan-up RATE (default 5M)
  --lan RATE         each device's LAN uplink (default 100M)
  --origin-up RATE   the HTTP origin's uplink (default 10G; 0: no origin)
  --origin-delay S   how long peers get before the origin (default 2)
  --seeds N          devices holding the release at start, in site 1 (default 0)
  --seed-up RATE     their uplink (default 100M)
  --lan-latency MS   before a request's first byte on a LAN (default 1)  --wan-latency MS (default 30)
  --reachable F      share of sites whose first device is reachable from outside (default 0)
  --wan-peers N      peers beyond its LAN a site's dialler keeps (default 2, as the agent)
  --churn F          share of devices that go down once for 10-60 s (default 0)
  --new-release S    publish release 2 S seconds after release 1 is everywhere
  --poll S           origin poll interval (default 300)   --gossip S  LAN announcement interval (default 5)
  --rollout-hours H  release 2's staged rollout window (default 0)
  --step MS          simulation step (default 10)
  --svg FILE         the picture (default fleet.svg)   --report FILE  also write the report text there
";

fn main() {
    if let Err(e) = run() {
        eprintln!("fleet: {e}\n\n{HELP}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    use lexopt::prelude::*;
    let mut c = Config::default();
    let (mut svg, mut report_file) = ("fleet.svg".to_string(), None);
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        let key = match arg {
            Long(l) => l.to_string(),
            Short('h') => "help".to_string(),
            other => return Err(other.unexpected().to_string()),
        };
        let mut v = || -> Result<String, String> {
            p.value().map_err(|e| e.to_string())?.into_string().map_err(|_| "not UTF-8".into())
        };
        match key.as_str() {
            "devices" => c.devices = num(&v()?)? as usize,
            "sites" => c.sites = num(&v()?)? as usize,
            "size" => c.size = size(&v()?)? as u64,
            "chunk-size" => c.chunk_size = size(&v()?)? as u32,
            "seed" => c.seed = num(&v()?)? as u64,
            "wan-down" => c.wan_down = rate(&v()?)? / 8.0,
            "wan-up" => c.wan_up = rate(&v()?)? / 8.0,
            "lan" => c.lan_up = rate(&v()?)? / 8.0,
            "origin-up" => c.origin_up = rate(&v()?)? / 8.0,
            "origin-delay" => c.origin_delay = num(&v()?)?,
            "seeds" => c.seeds = num(&v()?)? as usize,
            "seed-up" => c.seed_up = rate(&v()?)? / 8.0,
            "lan-latency" => c.lan_latency = num(&v()?)? / 1000.0,
            "wan-latency" => c.wan_latency = num(&v()?)? / 1000.0,
            "reachable" => c.reachable = num(&v()?)?,
            "wan-peers" => c.wan_peers = num(&v()?)? as usize,
            "churn" => c.churn = num(&v()?)?,
            "new-release" => c.new_release_after = Some(num(&v()?)?),
            "poll" => c.poll = num(&v()?)?,
            "gossip" => c.gossip = num(&v()?)?,
            "rollout-hours" => c.rollout_hours = num(&v()?)? as u32,
            "step" => c.step = num(&v()?)? / 1000.0,
            "svg" => svg = v()?,
            "report" => report_file = Some(v()?),
            "help" => {
                print!("{HELP}");
                return Ok(());
            }
            other => return Err(format!("unknown option --{other}")),
        }
    }
    c.check()?;
    let started = Instant::now();
    let report = sim::run(&c);
    let wall = started.elapsed().as_secs_f64();
    let text = report.text();
    print!("{text}");
    std::fs::write(&svg, report.svg()).map_err(|e| format!("cannot write {svg}: {e}"))?;
    println!("picture: {svg}");
    if let Some(f) = report_file {
        std::fs::write(&f, &text).map_err(|e| format!("cannot write {f}: {e}"))?;
    }
    println!("peak memory {} MiB", peak_rss_kib() / 1024);
    println!("{}", report.summary(wall));
    Ok(())
}

/// A plain number.
fn num(s: &str) -> Result<f64, String> {
    s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).ok_or_else(|| format!("not a number: {s}"))
}

/// A size in bytes, K/M/G in powers of 1024 (`64M` is 64 MiB).
fn size(s: &str) -> Result<f64, String> {
    suffixed(s, 1024.0)
}

/// A rate in bit/s, k/M/G in powers of 1000 (`20M` is 20 Mbit/s, as `tc` reads `20mbit`).
fn rate(s: &str) -> Result<f64, String> {
    suffixed(s, 1000.0)
}

fn suffixed(s: &str, base: f64) -> Result<f64, String> {
    let (n, power) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1),
        Some('m' | 'M') => (&s[..s.len() - 1], 2),
        Some('g' | 'G') => (&s[..s.len() - 1], 3),
        _ => (s, 0),
    };
    Ok(num(n)? * base.powi(power))
}

/// This process's peak resident set (Linux), in KiB; 0 where unknown.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
