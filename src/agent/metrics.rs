//! Fleet metrics in the formats the ecosystem reads: the Prometheus text exposition format,
//! written atomically to `--metrics FILE` every few seconds (node_exporter's textfile collector
//! picks it up), and JSON for `flotilla status --json`. Both are pure functions of a
//! [`Snapshot`]; the file is written by the agent's loop.

use super::status::Snapshot;
use super::Agent;
use crate::core::manifest::to_hex;
use std::fmt::Write;
use std::time::{Duration, Instant};

/// How often the metrics file is rewritten.
pub(super) const METRICS_INTERVAL: Duration = Duration::from_secs(5);

/// The Prometheus text format (version 0.0.4) of `s`. Byte counters are per release (labels
/// `name` and `release`), so a release retired takes its series with it.
pub fn prometheus(s: &Snapshot) -> String {
    let mut out = String::with_capacity(1024 + 640 * s.releases.len());
    family(&mut out, "device_info", "gauge", "This device: its id (random, kept in the state directory).");
    let id = s.device_id.as_deref().unwrap_or("");
    let _ = writeln!(out, "flotilla_device_info{{device_id=\"{id}\"}} 1");
    family(&mut out, "uptime_seconds", "gauge", "Seconds since the agent started.");
    let _ = writeln!(out, "flotilla_uptime_seconds {}", s.uptime.as_secs());
    family(&mut out, "bans", "gauge", "Peer addresses banned now.");
    let _ = writeln!(out, "flotilla_bans {}", s.bans);
    family(&mut out, "hook_runs_total", "counter", "Install hook runs since start, by result.");
    let _ = writeln!(out, "flotilla_hook_runs_total{{result=\"ok\"}} {}", s.hooks_ok);
    let _ = writeln!(out, "flotilla_hook_runs_total{{result=\"failed\"}} {}", s.hooks_failed);

    // Per name: the newest release held whole, and the newest installed.
    family(&mut out, "release_held", "gauge", "Newest release number held whole, per name (0: none yet).");
    family(&mut out, "release_installed", "gauge", "Newest release number installed (whole, hook run), per name.");
    let mut names: Vec<&str> = s.releases.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let of = || s.releases.iter().filter(move |r| r.name == name);
        let held = of().filter(|r| r.complete).map(|r| r.release).max().unwrap_or(0);
        let installed = of().filter(|r| r.installed).map(|r| r.release).max().unwrap_or(0);
        let _ = writeln!(out, "flotilla_release_held{{name=\"{name}\"}} {held}");
        let _ = writeln!(out, "flotilla_release_installed{{name=\"{name}\"}} {installed}");
    }

    family(&mut out, "release_progress_ratio", "gauge", "Share of the release on disk, 0 to 1.");
    family(&mut out, "peers", "gauge", "Peers connected, per release.");
    family(
        &mut out,
        "received_bytes_total",
        "counter",
        "Block bytes received, by source: lan, wan (peers beyond the LAN), origin.",
    );
    family(&mut out, "sent_bytes_total", "counter", "Block bytes sent, by destination: lan, wan.");
    for r in &s.releases {
        let l = format!("name=\"{}\",release=\"{}\"", r.name, r.release);
        let ratio = if r.total == 0 { 1.0 } else { r.have as f64 / r.total as f64 };
        let _ = writeln!(out, "flotilla_release_progress_ratio{{{l}}} {}", super::status::fixed(ratio, 4));
        let _ = writeln!(out, "flotilla_peers{{{l}}} {}", r.peers);
        let lan = r.downloaded.saturating_sub(r.from_wan + r.from_origin);
        let _ = writeln!(out, "flotilla_received_bytes_total{{{l},source=\"lan\"}} {lan}");
        let _ = writeln!(out, "flotilla_received_bytes_total{{{l},source=\"wan\"}} {}", r.from_wan);
        let _ = writeln!(out, "flotilla_received_bytes_total{{{l},source=\"origin\"}} {}", r.from_origin);
        let _ = writeln!(out, "flotilla_sent_bytes_total{{{l},dest=\"lan\"}} {}", r.uploaded.saturating_sub(r.to_wan));
        let _ = writeln!(out, "flotilla_sent_bytes_total{{{l},dest=\"wan\"}} {}", r.to_wan);
    }
    out
}

/// A metric family's HELP and TYPE lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP flotilla_{name} {help}\n# TYPE flotilla_{name} {kind}");
}

/// `s` as one JSON object, for scripts (`flotilla status --json`). Names are
/// `[A-Za-z0-9._-]`, and paths are escaped.
pub fn json(s: &Snapshot) -> String {
    let mut out = String::with_capacity(256 + 512 * s.releases.len());
    let listen = s.listen.map_or("null".to_owned(), |a| format!("\"{a}\""));
    let device = s.device_id.as_ref().map_or("null".to_owned(), |d| format!("\"{d}\""));
    let _ = write!(
        out,
        "{{\"version\":\"{}\",\"device_id\":{device},\"listen\":{listen},\"uptime_s\":{},\"bans\":{},\"hooks_ok\":{},\"hooks_failed\":{},\"releases\":[",
        env!("CARGO_PKG_VERSION"),
        s.uptime.as_secs(),
        s.bans,
        s.hooks_ok,
        s.hooks_failed
    );
    for (i, r) in s.releases.iter().enumerate() {
        let expires = r.expires.map_or("null".to_owned(), |e| e.to_string());
        let _ = write!(
            out,
            "{}{{\"name\":\"{}\",\"release\":{},\"swarm\":\"{}\",\"path\":{},\"have\":{},\"total\":{},\"complete\":{},\"installed\":{},\"peers\":{},\"rate_up\":{},\"rate_down\":{},\"uploaded\":{},\"downloaded\":{},\"from_wan\":{},\"from_origin\":{},\"to_wan\":{},\"expires\":{expires},\"hook\":\"{}\"}}",
            if i == 0 { "" } else { "," },
            r.name,
            r.release,
            to_hex(&r.swarm_id),
            json_string(&r.path),
            r.have,
            r.total,
            r.complete,
            r.installed,
            r.peers,
            r.rate_up,
            r.rate_down,
            r.uploaded,
            r.downloaded,
            r.from_wan,
            r.from_origin,
            r.to_wan,
            r.hook
        );
    }
    out.push_str("]}\n");
    out
}

/// A JSON string literal of `s`.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Agent {
    /// Rewrites the `--metrics` file when due: whole or not at all (write, sync, rename), so the
    /// collector never reads half a file.
    pub(super) fn write_metrics(&mut self, now: Instant) {
        let Some(path) = self.config.metrics.as_ref() else { return };
        if now < self.metrics_at {
            return;
        }
        self.metrics_at = now + METRICS_INTERVAL;
        let text = prometheus(&self.snapshot(now));
        if let Err(e) = crate::store::atomic::replace_file(path, text.as_bytes(), crate::store::safe_fs::DATA_MODE) {
            log::warn!("cannot write the metrics to {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::status::ReleaseStatus;

    fn snapshot() -> Snapshot {
        let release = |release, complete, installed| ReleaseStatus {
            name: "fw.img".into(),
            release,
            installed,
            path: "/data/fw \"a\".img".into(),
            have: if complete { 1000 } else { 250 },
            total: 1000,
            complete,
            peers: 3,
            uploaded: 700,
            downloaded: 900,
            from_wan: 200,
            from_origin: 100,
            to_wan: 50,
            ..ReleaseStatus::default()
        };
        Snapshot {
            releases: vec![release(1, true, true), release(2, false, false)],
            device_id: Some("00112233445566778899aabbccddeeff".into()),
            bans: 2,
            hooks_ok: 1,
            hooks_failed: 3,
            ..Snapshot::default()
        }
    }

    #[test]
    fn prometheus_text_names_each_release_and_source() {
        let text = prometheus(&snapshot());
        for line in [
            "flotilla_device_info{device_id=\"00112233445566778899aabbccddeeff\"} 1",
            "flotilla_release_held{name=\"fw.img\"} 1",
            "flotilla_release_installed{name=\"fw.img\"} 1",
            "flotilla_release_progress_ratio{name=\"fw.img\",release=\"2\"} 0.2500",
            "flotilla_received_bytes_total{name=\"fw.img\",release=\"2\",source=\"lan\"} 600",
            "flotilla_received_bytes_total{name=\"fw.img\",release=\"2\",source=\"wan\"} 200",
            "flotilla_received_bytes_total{name=\"fw.img\",release=\"2\",source=\"origin\"} 100",
            "flotilla_sent_bytes_total{name=\"fw.img\",release=\"1\",dest=\"lan\"} 650",
            "flotilla_bans 2",
            "flotilla_hook_runs_total{result=\"failed\"} 3",
            "# TYPE flotilla_received_bytes_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
        // Every sample line is `name{labels} value` or `name value`, and every family is typed.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = l.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{l}");
            let family = series.split('{').next().unwrap();
            assert!(text.contains(&format!("# TYPE {family} ")), "{family} has no TYPE line");
        }
    }

    #[test]
    fn json_is_one_object_with_escaped_paths() {
        let text = json(&snapshot());
        assert!(text.starts_with("{\"version\":") && text.ends_with("]}\n"), "{text}");
        assert!(text.contains("\"device_id\":\"00112233445566778899aabbccddeeff\""));
        assert!(text.contains("\"path\":\"/data/fw \\\"a\\\".img\""), "{text}");
        assert!(text.contains("\"release\":2,") && text.contains("\"installed\":true"));
        assert_eq!(text.matches("\"name\":\"fw.img\"").count(), 2);
        let opens = text.matches('{').count();
        assert_eq!(opens, text.matches('}').count());
    }
}
