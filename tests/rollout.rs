//! The fleet upgrading itself: staged rollouts, following a release line (`serve --follow`),
//! learning of new releases from peers and from the origin, and the metrics file.
//!
//! Each test owns its 127.0.0.x addresses (220 and up), runs every agent with `--no-discovery`
//! unless it tests discovery, and holds its children in a [`Procs`] guard. Conditions are polled
//! with a deadline, never slept for.

use flotilla::core::manifest::{Rollout, SignedManifest};
use std::fs;
use std::path::{Path, PathBuf};

mod common;
use common::*;

/// An install hook that appends `RELEASE|FILE` to `log`.
fn hook(log: &Path) -> String {
    let script = log.with_extension("sh");
    fs::write(&script, format!("printf '%s|%s\\n' \"$FLOTILLA_RELEASE\" \"$1\" >> '{}'\n", log.display())).unwrap();
    format!("/bin/sh {}", script.display())
}

fn hook_runs(log: &Path) -> Vec<String> {
    fs::read_to_string(log).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// Publishes `bytes` as release `n` of `fw.img` in `dir/NAME/` with `extra` publish options.
fn publish(dir: &Path, name: &str, n: u64, bytes: &[u8], extra: &[&str]) -> (PathBuf, SignedManifest) {
    let seed = dir.join(name);
    fs::create_dir_all(&seed).unwrap();
    let file = seed.join("fw.img");
    fs::write(&file, bytes).unwrap();
    let secret = dir.join("operator.key");
    let n = n.to_string();
    let args = ["publish", file.to_str().unwrap(), "--secret", secret.to_str().unwrap(), "--release", &n];
    run_ok(dir, &[&args[..], &["--chunk-size", "64K"], extra].concat());
    let manifest = seed.join("fw.img.flotilla");
    let signed = SignedManifest::read_file(&manifest).unwrap();
    (seed, signed)
}

/// A device id (as its state file holds it) whose moment in `window` for release `swarm` is
/// `wanted` seconds after the start, give or take `slack`: searched for, since the moment is a
/// hash of both.
fn device_at(window: Rollout, swarm: &[u8; 32], wanted: u64, slack: u64) -> [u8; 16] {
    (0u64..)
        .map(|n| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&n.to_be_bytes());
            id
        })
        .find(|id| window.install_at(id, swarm).abs_diff(window.start + wanted) <= slack)
        .unwrap()
}

fn write_device_id(state: &Path, id: &[u8; 16]) {
    fs::create_dir_all(state).unwrap();
    fs::write(state.join(".flotilla-device"), format!("{}\n", flotilla::core::manifest::to_hex(id))).unwrap();
}

/// A staged rollout over an hour: both devices fetch release 1 at once and serve it, but only
/// the device whose moment has come installs; the other says when it will. Release 2, published
/// without a window, supersedes the rollout in progress: the waiting device installs #2 at once
/// and never #1. Uses 127.0.0.220-222.
#[test]
fn a_staged_rollout_installs_each_device_at_its_moment_and_a_newer_release_supersedes_it() {
    let tmp = TempDir::new("staged");
    let dir = tmp.path();
    let rel = make_release(dir, 300_000, "64K", 0x220);
    let (seed, first) = publish(dir, "seed", 1, &rel.bytes, &["--rollout-hours", "1"]);
    let window = first.manifest.rollout.expect("the window is signed in");
    let early = device_at(window, &first.swarm_id, 0, 2);
    let late = device_at(window, &first.swarm_id, 3000, 100);
    let late_wait = window.install_at(&late, &first.swarm_id) - window.start;

    let mut procs = Procs::in_dir();
    let (s, a, b, s2) = (free_addr(220), free_addr(221), free_addr(222), free_addr(223));
    let seed_args = ["serve", "--data", seed.to_str().unwrap(), "--listen", &s.to_string(), "--no-discovery"];
    let i = procs.spawn(dir, "seed", &[&seed_args[..], &["--trust", &rel.key]].concat());
    procs.wait_for_log(i, "listening on");
    let device = |procs: &mut Procs, name: &str, id: &[u8; 16], addr: std::net::SocketAddr| {
        let data = tmp.sub(name);
        write_device_id(&data, id);
        fs::copy(seed.join("fw.img.flotilla"), data.join("fw.img.flotilla")).unwrap();
        let log = dir.join(format!("{name}.hooks"));
        let (data_s, addr_s, peer, peer2) =
            (data.to_str().unwrap().to_owned(), addr.to_string(), s.to_string(), s2.to_string());
        let args =
            ["serve", "--data", &data_s, "--listen", &addr_s, "--no-discovery", "--peer", &peer, "--peer", &peer2];
        let hook_cmd = hook(&log);
        let args = [&args[..], &["--trust", &rel.key, "--rescan", "1", "--on-complete", &hook_cmd]].concat();
        (procs.spawn(dir, name, &args), data, log)
    };
    let (ea, _, early_log) = device(&mut procs, "early", &early, a);
    let (la, late_dir, late_log) = device(&mut procs, "late", &late, b);
    wait_until("the early device to install #1", || !hook_runs(&early_log).is_empty());
    assert_eq!(hook_runs(&early_log)[0].split('|').next(), Some("1"));
    procs.wait_for_log(la, "fw.img: complete and verified");
    procs.wait_for_log(la, "staged rollout: this device installs in");
    let said = procs.stderr(la);
    let secs: u64 = said.split("installs in ").nth(1).and_then(|t| t.split(' ').next()).unwrap().parse().unwrap();
    let elapsed = fs::metadata(seed.join("fw.img.flotilla")).unwrap().modified().unwrap().elapsed().unwrap();
    assert!(
        secs <= late_wait && secs + elapsed.as_secs() + 5 >= late_wait,
        "waits {secs} s, its moment is {late_wait} s into the window"
    );
    assert!(hook_runs(&late_log).is_empty(), "the late device installed before its moment");
    assert!(fs::read(late_dir.join("fw.img")).unwrap() == rel.bytes, "yet it holds the release and serves it");

    // The operator halts the rollout with release 2 (no window): it goes everywhere at once.
    let second = random_bytes(200_000, 0x221);
    let (seed2, _) = publish(dir, "seed2", 2, &second, &[]);
    let seed2_args = ["serve", "--data", seed2.to_str().unwrap(), "--listen", &s2.to_string(), "--no-discovery"];
    let j = procs.spawn(dir, "seed2", &[&seed2_args[..], &["--trust", &rel.key]].concat());
    procs.wait_for_log(j, "listening on");
    fs::copy(seed2.join("fw.img.flotilla"), late_dir.join("fw.img.flotilla")).unwrap();
    wait_until("the late device to install #2", || !hook_runs(&late_log).is_empty());
    procs.wait_for_log(la, "fw.img #1: replaced by a newer release");
    assert!(fs::read(late_dir.join("fw.img")).unwrap() == second);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let runs = hook_runs(&late_log);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0].starts_with("2|"), "#1's install was superseded, never run: {runs:?}");
    assert!(procs.running(ea) && procs.running(la));
}

/// The statuses nginx answered polls of the manifest from 127.0.0.`x` with, in order.
fn polls_from(dir: &Path, x: u8) -> Vec<u16> {
    let log = fs::read_to_string(dir.join("access.log")).unwrap_or_default();
    let from = format!("127.0.0.{x} ");
    log.lines()
        .filter(|l| l.starts_with(&from) && l.ends_with("/fw.img.flotilla"))
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect()
}

/// Places a release on the origin as an operator's upload would: the file, then the manifest,
/// each renamed into place.
fn upload(www: &Path, seed: &Path) {
    for name in ["fw.img", "fw.img.flotilla"] {
        fs::copy(seed.join(name), www.join(format!(".{name}.tmp"))).unwrap();
        fs::rename(www.join(format!(".{name}.tmp")), www.join(name)).unwrap();
    }
}

/// Three devices follow `fw.img` through the origin alone (no seed, no peers named, no
/// discovery). They find release 1 there, fetch and install it; while it is unchanged each poll
/// is a 304. The operator uploads release 2: each running device learns of it within two polls
/// and installs it once; the third, down meanwhile, catches up when it returns. Uses 127.0.0.225-228.
#[test]
fn devices_following_a_name_pick_up_each_release_from_the_origin_with_conditional_polls() {
    let tmp = TempDir::new("origin-follow");
    let dir = tmp.path();
    let rel = make_release(dir, 400_000, "64K", 0x225);
    let www = tmp.sub("www");
    upload(&www, &rel.data_dir);
    let (_nginx, port) = start_nginx(dir, &www, 225, Some("$remote_addr $status $request_uri"));
    let base = format!("http://127.0.0.225:{port}/");

    let mut procs = Procs::in_dir();
    let device = |procs: &mut Procs, k: u8| {
        let data = dir.join(format!("dev{k}"));
        fs::create_dir_all(&data).unwrap();
        let log = dir.join(format!("dev{k}.hooks"));
        let (data_s, listen) = (data.to_str().unwrap().to_owned(), free_addr(225 + k).to_string());
        let hook_cmd = hook(&log);
        let args = ["serve", "--data", &data_s, "--listen", &listen, "--no-discovery", "--trust", &rel.key];
        let more = ["--follow", "fw.img", "--origin", &base, "--origin-delay", "0", "--poll", "2"];
        let (metrics, socket) = (dir.join(format!("dev{k}.prom")), dir.join(format!("dev{k}.sock")));
        let (metrics, socket) = (metrics.to_str().unwrap().to_owned(), socket.to_str().unwrap().to_owned());
        let watch = ["--metrics", &metrics, "--status", &socket, "--on-complete", &hook_cmd];
        let i = procs.spawn(dir, &format!("dev{k}"), &[&args[..], &more[..], &watch[..]].concat());
        (i, data, log)
    };
    let devs: Vec<_> = (1..=3).map(|k| device(&mut procs, k)).collect();
    for (_, data, log) in &devs {
        wait_until("release 1 to be installed", || hook_runs(log).len() == 1);
        assert!(fs::read(data.join("fw.img")).unwrap() == rel.bytes);
    }
    // Two more polls each, unchanged.
    wait_until("polls of an unchanged manifest", || (1..=3).all(|k| polls_from(dir, 225 + k).len() >= 3));
    for k in 1..=3 {
        let polls = polls_from(dir, 225 + k);
        assert_eq!(polls[0], 200, "device {k}: {polls:?}");
        assert!(polls[1..].iter().all(|&s| s == 304), "device {k}: unchanged means 304: {polls:?}");
    }

    // Device 3 goes down (once its hook is recorded done); the operator uploads release 2.
    let owed = |data: &Path| fs::read_to_string(data.join(".flotilla-hooks")).unwrap_or_default();
    wait_until("device 3's hook to be recorded done", || !owed(&devs[2].1).contains(" fw.img 1"));
    procs.kill(devs[2].0);
    let second = random_bytes(300_000, 0x226);
    let (seed2, _) = publish(dir, "seed2", 2, &second, &[]);
    let before: Vec<usize> = (1..=2).map(|k| polls_from(dir, 225 + k).len()).collect();
    upload(&www, &seed2);
    for (k, (_, data, log)) in devs.iter().enumerate().take(2) {
        wait_until("release 2 to be installed", || hook_runs(log).len() == 2);
        assert!(fs::read(data.join("fw.img")).unwrap() == second, "not release 2");
        let polls = polls_from(dir, 226 + k as u8);
        let after = &polls[before[k]..];
        let first_200 = after.iter().position(|&s| s == 200).expect("release 2's manifest was fetched");
        assert!(first_200 < 2, "device {}: learnt of it within two polls of the upload: {after:?}", k + 1);
    }
    let (i, data3, log3) = device(&mut procs, 3);
    wait_until("the returning device to install release 2", || hook_runs(&log3).iter().any(|r| r.starts_with("2|")));
    assert!(fs::read(data3.join("fw.img")).unwrap() == second, "not release 2");
    for (k, (_, _, log)) in devs.iter().enumerate() {
        let runs = hook_runs(log);
        assert!(runs[0].starts_with("1|") && runs[1].starts_with("2|"), "device {}: once per release: {runs:?}", k + 1);
    }
    assert!(procs.running(i));

    // What the device reports of itself: the metrics file and `status --json`.
    let id = fs::read_to_string(dir.join("dev1/.flotilla-device")).unwrap().trim().to_owned();
    wait_until("the metrics to show release 2 installed", || {
        fs::read_to_string(dir.join("dev1.prom"))
            .is_ok_and(|t| t.contains("flotilla_release_installed{name=\"fw.img\"} 2\n"))
    });
    let prom = fs::read_to_string(dir.join("dev1.prom")).unwrap();
    assert!(prom.contains(&format!("flotilla_device_info{{device_id=\"{id}\"}} 1")), "{prom}");
    let from_origin = prom
        .lines()
        .find(|l| l.starts_with("flotilla_received_bytes_total{name=\"fw.img\",release=\"2\",source=\"origin\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no origin bytes for release 2:\n{prom}"));
    assert_eq!(from_origin, second.len() as u64, "release 2 came from the origin alone:\n{prom}");
    assert!(prom.contains("flotilla_hook_runs_total{result=\"ok\"} 2"), "{prom}");
    // The Prometheus project's own parser reads every sample (Debian's python3-prometheus-client).
    let parser = "import sys, prometheus_client.parser as p\n\
                  fams = list(p.text_string_to_metric_families(open(sys.argv[1]).read()))\n\
                  print(sum(len(f.samples) for f in fams))";
    let parsed = std::process::Command::new("/usr/bin/python3")
        .args(["-c", parser, dir.join("dev1.prom").to_str().unwrap()])
        .output()
        .expect("this test needs /usr/bin/python3 with prometheus_client: apt-get install python3-prometheus-client");
    assert!(parsed.status.success(), "the parser refused the metrics: {}", String::from_utf8_lossy(&parsed.stderr));
    let samples: usize = String::from_utf8_lossy(&parsed.stdout).trim().parse().unwrap();
    let ours = fs::read_to_string(dir.join("dev1.prom")).unwrap();
    assert_eq!(samples, ours.lines().filter(|l| !l.starts_with('#')).count(), "every sample line read back");
    let json = run_ok(dir, &["status", dir.join("dev1.sock").to_str().unwrap(), "--json"]);
    assert!(json.starts_with('{') && json.contains(&format!("\"device_id\":\"{id}\"")), "{json}");
    assert!(json.contains("\"release\":2,") && json.contains("\"installed\":true"), "{json}");
}

/// Serves, once, the manifest file `manifest` to whoever connects and asks: what a lying peer
/// does when it announces an old manifest as a newer release (or an honest one answering).
fn liar_serving(manifest: Vec<u8>) -> (std::net::SocketAddr, std::thread::JoinHandle<bool>) {
    liar_serving_on(std::net::TcpListener::bind((ip(235), 0)).unwrap(), manifest)
}

/// [`liar_serving`] on a listener of the caller's.
fn liar_serving_on(
    listener: std::net::TcpListener,
    manifest: Vec<u8>,
) -> (std::net::SocketAddr, std::thread::JoinHandle<bool>) {
    use flotilla::core::wire::{encode_frame, Bytes, Message, MAX_FRAME};
    use std::io::{Read, Write};
    let addr = listener.local_addr().unwrap();
    let serve = std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else { return false };
        let mut first = [0u8; 64];
        let _ = s.read(&mut first);
        let mut frame = vec![0u8; MAX_FRAME];
        for (i, part) in manifest.chunks(16 * 1024).enumerate() {
            let msg = Message::ManifestPart {
                total: manifest.len() as u32,
                offset: (i * 16 * 1024) as u32,
                data: Bytes(part),
            };
            let n = encode_frame(&msg, &mut frame).unwrap();
            if s.write_all(&frame[..n]).is_err() {
                return false;
            }
        }
        true
    });
    (addr, serve)
}

/// A seed and three devices following `fw.img` on one LAN (discovery on a group of the test's
/// own; no `--peer` anywhere, no origin). The operator publishes release 2 into the seed's
/// directory: each device hears it announced, asks the seed for the manifest, fetches the
/// release and installs it once; the device that was down catches up when it returns. A liar
/// announcing release 1's (validly signed) manifest as release 9 is refused and banned, and
/// the devices stay on release 2. A busy peer that closes at once is not banned: asked again at its
/// next announcement, it gives release 3's manifest. Uses 127.0.0.230-235.
#[test]
fn devices_following_a_name_learn_of_a_new_release_from_their_neighbours() {
    let tmp = TempDir::new("gossip");
    let dir = tmp.path();
    let rel = make_release(dir, 500_000, "64K", 0x230);
    let first_manifest = fs::read(&rel.manifest).unwrap();
    let group = format!("239.255.70.70:{}", free_addr(230).port());
    let mut procs = Procs::in_dir();
    let lan = ["--discovery-group", &group, "--trust", &rel.key, "--rescan", "1"];
    let seed_listen = free_addr(230).to_string();
    let seed_args = ["serve", "--data", rel.data_dir.to_str().unwrap(), "--listen", &seed_listen];
    let s = procs.spawn(dir, "seed", &[&seed_args[..], &lan[..]].concat());
    procs.wait_for_log(s, "listening on");
    let device = |procs: &mut Procs, k: u8| {
        let data = dir.join(format!("dev{k}"));
        fs::create_dir_all(&data).unwrap();
        if !data.join("fw.img.flotilla").exists() {
            fs::copy(&rel.manifest, data.join("fw.img.flotilla")).unwrap();
        }
        let log = dir.join(format!("dev{k}.hooks"));
        let (data_s, listen, hook_cmd) =
            (data.to_str().unwrap().to_owned(), free_addr(230 + k).to_string(), hook(&log));
        let args =
            ["-v", "serve", "--data", &data_s, "--listen", &listen, "--follow", "fw.img", "--on-complete", &hook_cmd];
        (procs.spawn(dir, &format!("dev{k}"), &[&args[..], &lan[..]].concat()), data, log)
    };
    let devs: Vec<_> = (1..=3).map(|k| device(&mut procs, k)).collect();
    for (_, _, log) in &devs {
        wait_until("release 1 to be installed", || hook_runs(log).len() == 1);
    }

    // Device 3 goes down (once its hook is recorded done: killed before, it would run again,
    // as it must); the operator publishes release 2 into the seed's directory.
    let owed = |data: &Path| fs::read_to_string(data.join(".flotilla-hooks")).unwrap_or_default();
    wait_until("device 3's hook to be recorded done", || !owed(&devs[2].1).contains(" fw.img 1"));
    procs.kill(devs[2].0);
    let second = random_bytes(350_000, 0x231);
    let image = rel.data_dir.join("fw.img");
    fs::write(rel.data_dir.join(".fw.img.new"), &second).unwrap();
    fs::rename(rel.data_dir.join(".fw.img.new"), &image).unwrap();
    let secret = dir.join("operator.key");
    let args = ["publish", image.to_str().unwrap(), "--secret", secret.to_str().unwrap(), "--release", "2"];
    run_ok(dir, &[&args[..], &["--chunk-size", "64K"]].concat());
    for (i, data, log) in devs.iter().take(2) {
        wait_until("release 2 to be installed", || hook_runs(log).len() == 2);
        assert!(fs::read(data.join("fw.img")).unwrap() == second, "not release 2");
        assert!(procs.stderr(*i).contains("asking it for the manifest"), "{}", procs.stderr(*i));
    }
    let (i3, data3, log3) = device(&mut procs, 3);
    wait_until("the returning device to install release 2", || hook_runs(&log3).iter().any(|r| r.starts_with("2|")));
    assert!(fs::read(data3.join("fw.img")).unwrap() == second, "not release 2");
    for (k, (_, _, log)) in devs.iter().enumerate() {
        let runs = hook_runs(log);
        assert!(runs[0].starts_with("1|") && runs[1].starts_with("2|"), "device {}: once per release: {runs:?}", k + 1);
    }

    // The liar: release 1's (validly signed) manifest given for an advert of release 9 (under
    // a swarm id of its choosing: release 1's own would be passed over, as a release the
    // devices still hold and serve, `--keep`).
    let (liar, served) = liar_serving(first_manifest);
    let advert = flotilla::core::discovery::Advert {
        swarm: [0x99; 32],
        release: 9,
        name_tag: flotilla::core::discovery::name_tag("fw.img"),
    };
    let mut datagram = [0u8; flotilla::core::discovery::MAX_DATAGRAM];
    let n = flotilla::core::discovery::encode(
        flotilla::core::discovery::Flags::default(),
        liar.port(),
        0x11a7,
        [advert].into_iter(),
        &mut datagram,
    );
    let udp = std::net::UdpSocket::bind((ip(235), 0)).unwrap();
    wait_until("a device to refuse the liar's manifest", || {
        udp.send_to(&datagram[..n], &group).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        devs.iter()
            .take(2)
            .chain([&(i3, data3.clone(), log3.clone())])
            .any(|(i, _, _)| procs.stderr(*i).contains("is refused"))
    });
    assert!(served.join().unwrap(), "the liar was asked and sent its manifest");
    for (i, data, log) in devs.iter().take(2).chain([&(i3, data3.clone(), log3.clone())]) {
        let held = SignedManifest::read_file(&data.join("fw.img.flotilla")).unwrap();
        assert_eq!(held.manifest.release, 2, "{}", procs.stderr(*i));
        assert_eq!(hook_runs(log).len(), 2);
        assert!(procs.running(*i));
    }
    let refusing =
        devs.iter().take(2).map(|d| d.0).chain([i3]).find(|&i| procs.stderr(i).contains("is refused")).unwrap();
    let log = procs.stderr(refusing);
    assert!(log.contains("it announced release 9 of fw.img, and sent release 1 of fw.img"), "{log}");
    assert!(log.contains("banned for"), "{log}");

    // A busy peer (it closes at once) is not a liar: asked again, it gives release 3's manifest.
    let third = random_bytes(100_000, 0x232);
    let (seed3, signed3) = publish(dir, "seed3", 3, &third, &[]);
    let listener = std::net::TcpListener::bind((ip(235), 0)).unwrap();
    let busy = listener.local_addr().unwrap();
    let manifest3 = fs::read(seed3.join("fw.img.flotilla")).unwrap();
    let answered = std::thread::spawn(move || {
        drop(listener.accept().unwrap()); // busy: closed with nothing sent
        liar_serving_on(listener, manifest3).1.join().unwrap()
    });
    let advert = flotilla::core::discovery::Advert { release: 3, swarm: signed3.swarm_id, ..advert };
    let n = flotilla::core::discovery::encode(
        flotilla::core::discovery::Flags::default(),
        busy.port(),
        0xb05e,
        [advert].into_iter(),
        &mut datagram,
    );
    wait_until("the devices to take release 3's manifest from the busy peer", || {
        udp.send_to(&datagram[..n], &group).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        [&devs[0].1, &devs[1].1, &data3]
            .iter()
            .all(|d| SignedManifest::read_file(&d.join("fw.img.flotilla")).is_ok_and(|m| m.manifest.release == 3))
    });
    assert!(answered.join().unwrap());
    // The device that banned the liar ignores that address; another asked the busy peer twice
    // (and the first took release 3 from it).
    let logs: Vec<String> = [devs[0].0, devs[1].0, i3].iter().map(|&i| procs.stderr(i)).collect();
    assert!(logs.iter().any(|l| l.contains("asking again at its next announcement")), "{logs:?}");
}

/// `--keep 1` (the default): a device that moved to release 2 goes on serving release 1 to a
/// device still fetching it, from a hard link in `.flotilla-kept`, and again after a restart;
/// it never installs release 1 again. Uses 127.0.0.240-243.
#[test]
fn a_superseded_release_is_kept_for_the_peers_still_on_it() {
    let tmp = TempDir::new("keep");
    let dir = tmp.path();
    let rel = make_release(dir, 300_000, "64K", 0x240);
    let second = random_bytes(200_000, 0x241);
    let (seed2, _) = publish(dir, "seed2", 2, &second, &[]);
    let device = tmp.sub("device");
    fs::copy(rel.data_dir.join("fw.img"), device.join("fw.img")).unwrap();
    fs::copy(&rel.manifest, device.join("fw.img.flotilla")).unwrap();
    let mut procs = Procs::in_dir();
    let (s2, d) = (free_addr(240), free_addr(241));
    let seed_args = ["serve", "--data", seed2.to_str().unwrap(), "--listen", &s2.to_string(), "--no-discovery"];
    let i = procs.spawn(dir, "seed2", &[&seed_args[..], &["--trust", &rel.key]].concat());
    procs.wait_for_log(i, "listening on");
    let log = dir.join("device.hooks");
    let hook_cmd = hook(&log);
    let (data, listen, peer) = (device.to_str().unwrap().to_owned(), d.to_string(), s2.to_string());
    let args = ["serve", "--data", &data, "--listen", &listen, "--no-discovery", "--peer", &peer, "--trust", &rel.key];
    let args = [&args[..], &["--rescan", "1", "--on-complete", &hook_cmd]].concat();
    let dev = procs.spawn(dir, "device", &args);
    procs.wait_for_log(dev, "serving fw.img #1");
    fs::copy(seed2.join("fw.img.flotilla"), device.join("fw.img.flotilla")).unwrap();
    procs.wait_for_log(dev, "fw.img #1: replaced by a newer release; kept for peers still on it");
    assert!(fs::read(device.join("fw.img")).unwrap() == second);
    assert!(fs::read(device.join(".flotilla-kept/fw.img@1")).unwrap() == rel.bytes, "kept by a second name");

    // A device still on release 1 fetches it from the upgraded one, before and after a restart.
    let fetch_one = |procs: &mut Procs, name: &str, x: u8| {
        let out = tmp.sub(name).join("fw.img");
        let listen = free_addr(x).to_string();
        let args = ["fetch", rel.manifest_arg(), "--trust", &rel.key, "--out", out.to_str().unwrap()];
        let f = procs.spawn(
            dir,
            name,
            &[&args[..], &["--listen", &listen, "--peer", &d.to_string(), "--no-discovery"]].concat(),
        );
        let status = procs.wait(f);
        assert!(status.success(), "{}", procs.stderr(f));
        assert_release(dir, &out, &rel);
    };
    fetch_one(&mut procs, "late1", 242);
    procs.kill(dev);
    let dev = procs.spawn(dir, "device-again", &args);
    procs.wait_for_log(dev, "fw.img #1: kept for peers still on it");
    fetch_one(&mut procs, "late2", 243);
    let runs = hook_runs(&log);
    assert_eq!(runs.len(), 1, "installed release 2 once, release 1 never: {runs:?}");
    assert!(runs[0].starts_with("2|"));
}

/// A peer of the test's own on `listener`: to a `ManifestGet` it answers with `manifest` (when
/// given), and every other connection (a session's `Hello`) it holds open and never answers, as
/// a peer that advertises a release it cannot deliver would. Runs until the test ends.
fn silent_peer(listener: std::net::TcpListener, manifest: Option<Vec<u8>>) {
    use flotilla::core::wire::{encode_frame, Bytes, Message, MAX_FRAME};
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let mut first = [0u8; 64];
            let n = s.read(&mut first).unwrap_or(0);
            // The payload's first byte is the message tag: 11 is ManifestGet.
            match (&manifest, n > 8 && first[8] == 11) {
                (Some(m), true) => {
                    let mut frame = vec![0u8; MAX_FRAME];
                    for (i, part) in m.chunks(16 * 1024).enumerate() {
                        let offset = (i * 16 * 1024) as u32;
                        let msg = Message::ManifestPart { total: m.len() as u32, offset, data: Bytes(part) };
                        let len = encode_frame(&msg, &mut frame).unwrap();
                        let _ = s.write_all(&frame[..len]);
                    }
                }
                _ => held.push(s),
            }
        }
    });
}

/// Two peers that lie about release 2 cost a device a bounded effort and are logged, and the
/// real release still installs: one announces it and sends its manifest with a signature that
/// fails (refused and banned), the other sends the true manifest but cannot deliver a byte of
/// the release (its sessions are never answered). The seed delivers. Uses 127.0.0.244-247.
#[test]
fn peers_announcing_what_they_cannot_deliver_cost_a_bounded_effort_and_the_release_installs() {
    let tmp = TempDir::new("undeliverable");
    let dir = tmp.path();
    let rel = make_release(dir, 200_000, "64K", 0x244);
    let second = random_bytes(300_000, 0x245);
    let (seed2, signed2) = publish(dir, "seed2", 2, &second, &[]);
    let group = format!("239.255.70.70:{}", free_addr(244).port());
    let mut procs = Procs::in_dir();

    // The liars first, so that the device hears them before the seed.
    let mut forged = signed2.bytes.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1; // the last signature's last byte
    let forger = std::net::TcpListener::bind((ip(246), 0)).unwrap();
    let forger_port = forger.local_addr().unwrap().port();
    silent_peer(forger, Some(forged));
    let mute = std::net::TcpListener::bind((ip(247), 0)).unwrap();
    let mute_port = mute.local_addr().unwrap().port();
    silent_peer(mute, Some(signed2.bytes.clone()));
    let tag = flotilla::core::discovery::name_tag("fw.img");
    let advert = flotilla::core::discovery::Advert { swarm: signed2.swarm_id, release: 2, name_tag: tag };
    let announce = |x: u8, port: u16| {
        let mut datagram = [0u8; flotilla::core::discovery::MAX_DATAGRAM];
        let n = flotilla::core::discovery::encode(
            flotilla::core::discovery::Flags::default(),
            port,
            0x1000 + x as u64,
            [advert].into_iter(),
            &mut datagram,
        );
        let udp = std::net::UdpSocket::bind((ip(x), 0)).unwrap();
        udp.send_to(&datagram[..n], &group).unwrap();
    };

    let data = tmp.sub("device");
    fs::copy(rel.data_dir.join("fw.img"), data.join("fw.img")).unwrap();
    fs::copy(&rel.manifest, data.join("fw.img.flotilla")).unwrap();
    let log = dir.join("device.hooks");
    let (data_s, listen, hook_cmd) = (data.to_str().unwrap().to_owned(), free_addr(245).to_string(), hook(&log));
    let args = ["-v", "serve", "--data", &data_s, "--listen", &listen, "--follow", "fw.img", "--trust", &rel.key];
    let args = [&args[..], &["--discovery-group", &group, "--rescan", "1", "--on-complete", &hook_cmd]].concat();
    let dev = procs.spawn(dir, "device", &args);
    procs.wait_for_log(dev, "serving fw.img #1");
    wait_until("the forged manifest to be refused", || {
        announce(246, forger_port);
        std::thread::sleep(std::time::Duration::from_millis(100));
        procs.stderr(dev).contains("127.0.0.246") && procs.stderr(dev).contains("is refused")
    });
    wait_until("the true manifest to be taken from the mute peer", || {
        announce(247, mute_port);
        std::thread::sleep(std::time::Duration::from_millis(100));
        procs.stderr(dev).contains("fetching release 2")
    });
    // Only the mute peer holds release 2 so far: nothing arrives. Then the seed comes.
    let seed_listen = free_addr(244).to_string();
    let seed_args = ["serve", "--data", seed2.to_str().unwrap(), "--listen", &seed_listen, "--discovery-group", &group];
    let s = procs.spawn(dir, "seed2", &[&seed_args[..], &["--trust", &rel.key]].concat());
    procs.wait_for_log(s, "listening on");
    wait_until("release 2 to be installed", || hook_runs(&log).iter().any(|r| r.starts_with("2|")));
    assert!(fs::read(data.join("fw.img")).unwrap() == second);
    let text = procs.stderr(dev);
    let refusal = text.lines().find(|l| l.contains("127.0.0.246") && l.contains("is refused")).unwrap();
    assert!(refusal.contains("banned for"), "{refusal}");
    let asks = text.matches("127.0.0.246:").count();
    assert!(asks <= 3, "the forger, banned, is not asked again: {asks} mentions");
    assert_eq!(hook_runs(&log).len(), 1, "release 2 installed once");
    assert!(text.contains("got the manifest of release 2 from 127.0.0.247"), "{text}");
    assert!(procs.running(dev));
}
