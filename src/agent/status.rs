//! The status report: what `flotilla status` prints about a running agent.
//!
//! The agent fills a [`Snapshot`] from its releases when someone connects to its status socket;
//! [`report`] turns it into text. Both halves are plain data and a pure function, so the format
//! is tested here without sockets. The per-second rates come from [`Rates`], a few samples of the
//! cumulative byte counters taken about once a second (the agent's loop wakes at least that
//! often), so a rate is an average over the last few seconds, not a lifetime figure.

use crate::core::manifest::{to_hex, SwarmId};
use std::fmt::Write;
use std::time::{Duration, Instant};

/// Samples kept: the rate is averaged over up to this many seconds.
const RATE_SAMPLES: usize = 5;
/// Hex digits of the swarm id shown: enough to tell releases apart and to grep logs for.
const ID_PREFIX: usize = 16;

/// Everything the report shows, taken from the agent at one instant.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The address the agent accepts peers on, if it listens.
    pub listen: Option<std::net::SocketAddr>,
    /// How long the agent has been running.
    pub uptime: Duration,
    /// One entry per release, in the order they were added.
    pub releases: Vec<ReleaseStatus>,
    /// This device's id (hex), if the agent keeps one (`serve`).
    pub device_id: Option<String>,
    /// Peer addresses banned now.
    pub bans: usize,
    /// Install hooks that finished well, and that failed, since start.
    pub hooks_ok: u64,
    pub hooks_failed: u64,
}

/// The state of one release.
#[derive(Clone, Debug, Default)]
pub struct ReleaseStatus {
    /// The release name from its manifest.
    pub name: String,
    /// Its release number.
    pub release: u64,
    /// Complete, and its install hook (if any) has run: what the device runs now.
    pub installed: bool,
    /// Of `downloaded`, the bytes from peers beyond the LAN and from the HTTP origin (the rest
    /// came from LAN peers); of `uploaded`, the bytes sent to peers beyond the LAN.
    pub from_wan: u64,
    pub from_origin: u64,
    pub to_wan: u64,
    /// Where its file is (or will be, when complete).
    pub path: String,
    /// The swarm id.
    pub swarm_id: SwarmId,
    /// Bytes durable on disk.
    pub have: u64,
    /// Size of the release.
    pub total: u64,
    /// True once the whole file is verified and in place.
    pub complete: bool,
    /// Peers whose handshake is done.
    pub peers: usize,
    /// Bytes per second sent, over the last few seconds.
    pub rate_up: u64,
    /// Bytes per second received, over the last few seconds.
    pub rate_down: u64,
    /// Bytes sent since start.
    pub uploaded: u64,
    /// Bytes received since start.
    pub downloaded: u64,
    /// When its manifest expires (Unix seconds), if ever.
    pub expires: Option<u64>,
    /// True if the expiry could not be checked: the clock was unset when it was accepted.
    pub expiry_unchecked: bool,
    /// Where it stands with the install hook.
    pub hook: &'static str,
}

impl ReleaseStatus {
    /// Whole percent of the release on disk; 100 only when every byte is there.
    pub fn percent(&self) -> u64 {
        if self.total == 0 || self.have >= self.total {
            return 100;
        }
        (self.have as u128 * 100 / self.total as u128) as u64
    }
}

/// The text report: a summary line, then one block of `key: value` lines per release.
pub fn report(s: &Snapshot) -> String {
    let mut out = String::with_capacity(256 + 320 * s.releases.len());
    let sum = |f: fn(&ReleaseStatus) -> u64| s.releases.iter().map(f).sum::<u64>();
    let listen = s.listen.map_or_else(|| "not listening".to_owned(), |a| format!("listening on {a}"));
    let _ = writeln!(
        out,
        "flotilla {}: {} release{}, {listen}, up {}",
        env!("CARGO_PKG_VERSION"),
        s.releases.len(),
        if s.releases.len() == 1 { "" } else { "s" },
        duration(s.uptime)
    );
    let _ = writeln!(
        out,
        "rate: up {}/s, down {}/s; total: up {}, down {}",
        bytes(sum(|r| r.rate_up)),
        bytes(sum(|r| r.rate_down)),
        bytes(sum(|r| r.uploaded)),
        bytes(sum(|r| r.downloaded))
    );
    for r in &s.releases {
        let id = to_hex(&r.swarm_id);
        let _ = writeln!(out, "\nrelease: {}", r.name);
        let _ = writeln!(out, "  path: {}", r.path);
        let _ = writeln!(out, "  swarm: {}", &id[..ID_PREFIX]);
        let _ = writeln!(out, "  progress: {} of {} bytes ({}%)", r.have, r.total, r.percent());
        let _ = writeln!(out, "  complete: {}", if r.complete { "yes" } else { "no" });
        let _ = writeln!(out, "  peers: {}", r.peers);
        let _ = writeln!(out, "  rate: up {}/s, down {}/s", bytes(r.rate_up), bytes(r.rate_down));
        let _ = writeln!(out, "  total: up {}, down {}", bytes(r.uploaded), bytes(r.downloaded));
        if let Some(at) = r.expires {
            let unchecked = if r.expiry_unchecked { " (not checked: the clock was unset)" } else { "" };
            let _ = writeln!(out, "  expires: {}{unchecked}", crate::core::trust::format_rfc3339(at));
        }
        if !r.hook.is_empty() {
            let _ = writeln!(out, "  install hook: {}", r.hook);
        }
    }
    out
}

/// `x` with `places` decimals, formatted through integers: float formatting costs a router
/// about 17 KiB of flash, more than anything else in this crate that prints.
pub fn fixed(x: f64, places: u32) -> String {
    let scale = 10u64.pow(places);
    let v = (x.abs() * scale as f64).round() as u64;
    let sign = if x < 0.0 && v > 0 { "-" } else { "" };
    match places {
        0 => format!("{sign}{v}"),
        _ => format!("{sign}{}.{:0w$}", v / scale, v % scale, w = places as usize),
    }
}

/// A byte count for people: "512 B", "1.5 KiB", "64.0 MiB", "1.2 GiB".
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{} {}", fixed(v, 1), UNITS[unit])
}

/// A duration for people: "42s", "3m07s", "5h02m", "2d03h".
fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Recent samples of a release's byte counters, from which the current rates are computed.
#[derive(Clone, Debug, Default)]
pub struct Rates {
    /// (when, bytes sent, bytes received), oldest first.
    samples: heapless::Deque<(Instant, u64, u64), RATE_SAMPLES>,
}

impl Rates {
    /// Records the cumulative counters if a second has passed since the last sample.
    pub fn sample(&mut self, now: Instant, up: u64, down: u64) {
        if self.samples.back().is_some_and(|s| now < s.0 + Duration::from_secs(1)) {
            return;
        }
        if self.samples.is_full() {
            self.samples.pop_front();
        }
        let _ = self.samples.push_back((now, up, down));
    }

    /// Bytes per second (sent, received) between the oldest sample and the counters `now`.
    pub fn per_second(&self, now: Instant, up: u64, down: u64) -> (u64, u64) {
        let Some(&(t, up0, down0)) = self.samples.front() else { return (0, 0) };
        let secs = now.saturating_duration_since(t).as_secs_f64();
        if secs < 0.001 {
            return (0, 0);
        }
        let rate = |now: u64, then: u64| (now.saturating_sub(then) as f64 / secs) as u64;
        (rate(up, up0), rate(down, down0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_formatting_rounds_half_away_from_zero() {
        assert_eq!(fixed(1.25, 1), "1.3");
        assert_eq!(fixed(0.04, 1), "0.0");
        assert_eq!(fixed(12.0, 2), "12.00");
        assert_eq!(fixed(2.5, 0), "3");
        assert_eq!(fixed(-0.5, 1), "-0.5");
        assert_eq!(fixed(1.005, 2), "1.00");
    }

    fn fetching() -> ReleaseStatus {
        ReleaseStatus {
            name: "fw.img".into(),
            path: "/srv/releases/fw.img".into(),
            swarm_id: [0xab; 32],
            have: 3 * 1024 * 1024,
            total: 8 * 1024 * 1024,
            complete: false,
            peers: 2,
            rate_up: 0,
            rate_down: 1024 * 1024,
            uploaded: 0,
            downloaded: 3 * 1024 * 1024 + 100,
            expires: Some(crate::core::trust::CLOCK_FLOOR),
            expiry_unchecked: true,
            hook: "",
            ..ReleaseStatus::default()
        }
    }

    #[test]
    fn report_names_each_release_with_progress_peers_and_rates() {
        let seeding = ReleaseStatus {
            name: "boot.bin".into(),
            path: "/srv/releases/boot.bin".into(),
            swarm_id: [0x01; 32],
            have: 1000,
            total: 1000,
            complete: true,
            peers: 1,
            rate_up: 2048,
            uploaded: 5000,
            hook: "failed; to be retried",
            ..ReleaseStatus::default()
        };
        let s = Snapshot {
            listen: Some("127.0.0.1:7070".parse().unwrap()),
            uptime: Duration::from_secs(3725),
            releases: vec![fetching(), seeding],
            ..Snapshot::default()
        };
        let text = report(&s);
        let expected = format!(
            "flotilla {}: 2 releases, listening on 127.0.0.1:7070, up 1h02m
rate: up 2.0 KiB/s, down 1.0 MiB/s; total: up 4.9 KiB, down 3.0 MiB

release: fw.img
  path: /srv/releases/fw.img
  swarm: abababababababab
  progress: 3145728 of 8388608 bytes (37%)
  complete: no
  peers: 2
  rate: up 0 B/s, down 1.0 MiB/s
  total: up 0 B, down 3.0 MiB
  expires: 2026-12-01T00:00:00Z (not checked: the clock was unset)

release: boot.bin
  path: /srv/releases/boot.bin
  swarm: 0101010101010101
  progress: 1000 of 1000 bytes (100%)
  complete: yes
  peers: 1
  rate: up 2.0 KiB/s, down 0 B/s
  total: up 4.9 KiB, down 0 B
  install hook: failed; to be retried
",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn report_without_releases_or_listener() {
        let text = report(&Snapshot { uptime: Duration::from_secs(5), ..Snapshot::default() });
        assert!(text.contains(": 0 releases, not listening, up 5s\n"), "{text}");
        assert!(!text.contains("release:"), "{text}");
    }

    #[test]
    fn percent_is_100_only_when_whole() {
        let mut r = ReleaseStatus { have: 999_999, total: 1_000_000, ..ReleaseStatus::default() };
        assert_eq!(r.percent(), 99);
        r.have = r.total;
        assert_eq!(r.percent(), 100);
        r.total = u64::MAX;
        r.have = u64::MAX / 2;
        assert_eq!(r.percent(), 49);
        assert_eq!(ReleaseStatus::default().percent(), 100, "an empty release is whole");
    }

    #[test]
    fn people_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 20), "64.0 MiB");
        assert_eq!(bytes(u64::MAX), "16777216.0 TiB");
        assert_eq!(duration(Duration::from_secs(59)), "59s");
        assert_eq!(duration(Duration::from_secs(187)), "3m07s");
        assert_eq!(duration(Duration::from_secs(2 * 86_400 + 3 * 3600 + 59)), "2d03h");
    }

    #[test]
    fn rates_average_over_the_last_few_seconds() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut r = Rates::default();
        assert_eq!(r.per_second(t0, 100, 100), (0, 0), "no sample yet");
        // 1 MiB/s down, nothing up, for 10 s: only the last RATE_SAMPLES samples count.
        for n in 0..=10 {
            r.sample(s(n), 0, n << 20);
            // Samples closer than a second apart are ignored.
            r.sample(s(n) + Duration::from_millis(500), 7, 7);
        }
        assert_eq!(r.per_second(s(10), 0, 10 << 20), (0, 1 << 20));
        // The link stops: the rate falls to zero within the window.
        for n in 11..=16 {
            r.sample(s(n), 0, 10 << 20);
        }
        assert_eq!(r.per_second(s(16), 0, 10 << 20), (0, 0));
        // Counters never go back, but a bad caller gets zero, not a wrap-around.
        assert_eq!(r.per_second(s(17), 0, 0), (0, 0));
    }
}
