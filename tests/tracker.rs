//! A BitTorrent UDP tracker as the only rendezvous (`--tracker`): Debian's `opentracker`,
//! unmodified (built with a whitelist of info hashes, chrooted into a directory it reads after
//! dropping privileges), between agents given no `--peer` and no LAN discovery; and a tracker
//! that refuses. Uses
//! 127.0.0.170-175. Needs `/usr/bin/opentracker` (`.ci/run` installs it).

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

mod common;
use common::*;

/// A running opentracker, killed when dropped.
struct Tracker {
    child: Child,
    url: String,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts opentracker on 127.0.0.170 with a whitelist of `hashes` (40 hex each) in `dir`.
fn opentracker(dir: &Path, hashes: &[&str]) -> Tracker {
    let bin = Path::new("/usr/bin/opentracker");
    assert!(bin.exists(), "this test needs Debian's opentracker: apt-get install opentracker");
    fs::create_dir_all(dir).unwrap();
    // It drops to user nobody and chroots here: the directory and the list must be readable.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    let list = dir.join("whitelist");
    fs::write(&list, hashes.iter().map(|h| format!("{h}\n")).collect::<String>()).unwrap();
    fs::set_permissions(&list, fs::Permissions::from_mode(0o644)).unwrap();
    let mut parent = dir.parent();
    while let Some(p) = parent {
        let mode = fs::metadata(p).unwrap().permissions().mode();
        fs::set_permissions(p, fs::Permissions::from_mode(mode | 0o005)).unwrap();
        parent = p.parent().filter(|p| p.starts_with(std::env::temp_dir()) && *p != std::env::temp_dir());
    }
    let port = UdpSocket::bind("127.0.0.170:0").unwrap().local_addr().unwrap().port();
    let port_s = port.to_string();
    let child = Command::new(bin)
        .args(["-i", "127.0.0.170", "-p", &port_s, "-P", &port_s, "-d", dir.to_str().unwrap(), "-w", "whitelist"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tracker = Tracker { child, url: format!("udp://127.0.0.170:{port}") };
    wait_until("opentracker to listen", || {
        let probe = UdpSocket::bind("127.0.0.170:0").unwrap();
        probe.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
        let mut connect = [0u8; 16];
        connect[..8].copy_from_slice(&0x0417_2710_1980u64.to_be_bytes());
        probe.send_to(&connect, SocketAddr::from(([127, 0, 0, 170], port))).unwrap();
        probe.recv(&mut [0u8; 16]).is_ok()
    });
    tracker
}

fn info_hash(rel: &Release) -> String {
    flotilla::core::manifest::to_hex(&rel.signed.swarm_id)[..40].to_owned()
}

#[test]
fn opentracker_is_the_only_rendezvous_between_agents_that_know_no_peer() {
    let tmp = TempDir::new("tracker");
    let dir = tmp.path();
    let rel = make_release(dir, 1_500_000, "64K", 0x170);
    let shown = run_ok(dir, &["inspect", rel.manifest_arg()]);
    assert!(shown.contains(&format!("info hash:   {}", info_hash(&rel))), "inspect prints it: {shown}");
    let tracker = opentracker(&tmp.sub("ot"), &[&info_hash(&rel)]);

    let mut procs = Procs::in_dir();
    start_seed(&mut procs, dir, &rel, free_addr(171), "0", &["--no-discovery", "--tracker", &tracker.url]);
    // Two devices, one after the other, each knowing only the tracker: the second may be given
    // the first as well as the seed, and either way completes.
    for (x, name) in [(172u8, "dev1"), (173, "dev2")] {
        let out = tmp.sub(name).join("fw.img");
        fs::create_dir_all(out.parent().unwrap()).unwrap();
        let listen = free_addr(x).to_string();
        let args = ["fetch", rel.manifest_arg(), "--trust", &rel.key, "--out", out.to_str().unwrap()];
        let extra = ["--listen", &listen, "--no-discovery", "--tracker", &tracker.url, "--seed-for", "5"];
        let i = procs.spawn(dir, name, &[&args[..], &extra].concat());
        if name == "dev1" {
            wait_until("dev1 to finish", || out.exists() || !procs.running(i));
        } else {
            let status = procs.wait(i);
            assert!(status.success(), "{name} failed:\n{}", procs.stderr(i));
        }
        assert_release(dir, &out, &rel);
    }
}

/// A tracker of our own that answers every announce with an error, as a tracker that does not
/// list the release may (opentracker itself stays silent: that is the retry path, unit-tested).
fn refusing_tracker() -> (String, std::thread::JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.175:0").unwrap();
    socket.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let url = format!("udp://{}", socket.local_addr().unwrap());
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 128];
        // Bounded: one connect and one announce, then it stops by itself.
        for _ in 0..2 {
            let Ok((n, from)) = socket.recv_from(&mut buf) else { return };
            let tid = &buf[12..16];
            let reply = match n {
                16 => [&0u32.to_be_bytes()[..], tid, &42u64.to_be_bytes()].concat(),
                _ => [&3u32.to_be_bytes()[..], tid, b"not listed here"].concat(),
            };
            let _ = socket.send_to(&reply, from);
        }
    });
    (url, thread)
}

#[test]
fn a_tracker_that_refuses_the_release_is_logged_and_nothing_breaks() {
    let tmp = TempDir::new("tracker-refuses");
    let dir = tmp.path();
    let rel = make_release(dir, 200_000, "64K", 0x174);
    let (url, responder) = refusing_tracker();
    let out = tmp.sub("dev").join("fw.img");
    let listen = free_addr(174).to_string();
    let args = ["fetch", rel.manifest_arg(), "--trust", &rel.key, "--out", out.to_str().unwrap()];
    let mut procs = Procs::in_dir();
    let i = procs.spawn(dir, "dev", &[&args[..], &["--listen", &listen, "--no-discovery", "--tracker", &url]].concat());
    procs.wait_for_log(i, &format!("tracker {} refused fw.img: not listed here", &url["udp://".len()..]));
    assert!(procs.running(i), "a refusal is not fatal:\n{}", procs.stderr(i));
    drop(procs);
    responder.join().unwrap();

    let bad = run(dir, &[&args[..], &["--tracker", "http://127.0.0.1:80/announce"]].concat());
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("only udp:// trackers"), "{}", bad.stderr);
    let bad = run(dir, &[&args[..], &["--tracker", "udp://127.0.0.1"]].concat());
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("no port"), "{}", bad.stderr);
}
