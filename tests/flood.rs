//! Floods and slow clients against a real `serve`: thousands of connections opened and held,
//! slowloris clients trickling a byte a second, and half-open handshakes. The agent's memory
//! and descriptors must stay bounded, an honest fetch must complete meanwhile, and a connection
//! that never says hello must be closed.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");
/// The agent's RSS cap in this test (glibc build, 32 slots): flat whatever is thrown at it.
const RSS_CAP_KIB: u64 = 4096;

struct Kill(Vec<Child>, PathBuf);
impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn run_ok(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn proc_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap_or("");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max.min(8192);
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
}

fn write_release(dir: &Path) -> (String, PathBuf, Vec<u8>) {
    let data_dir = dir.join("seed");
    std::fs::create_dir_all(&data_dir).unwrap();
    let bytes = common::random_bytes(6 << 20, 0x9e37_79b9);
    std::fs::write(data_dir.join("fw.img"), &bytes).unwrap();
    let secret = dir.join("k");
    let key = run_ok(&["keygen", "--secret", secret.to_str().unwrap()]).trim().to_owned();
    let file = data_dir.join("fw.img");
    run_ok(&["publish", file.to_str().unwrap(), "--secret", secret.to_str().unwrap(), "--chunk-size", "64K"]);
    (key, data_dir, bytes)
}

#[test]
fn floods_and_slowloris_leave_memory_and_descriptors_bounded_and_honest_fetches_complete() {
    raise_fd_limit();
    let dir = std::env::temp_dir().join(format!("flotilla-flood-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (key, data_dir, bytes) = write_release(&dir);
    let mut guard = Kill(Vec::new(), dir.clone());
    let seed: SocketAddr = TcpListener::bind("127.0.0.180:0").unwrap().local_addr().unwrap();
    let seed_s = seed.to_string();
    let child = Command::new(BIN)
        .args(["serve", "--data", data_dir.to_str().unwrap(), "--listen", &seed_s, "--no-discovery"])
        .args(["--trust", &key, "--max-upload-rate", "2M"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    guard.0.push(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(seed).is_err() {
        assert!(Instant::now() < deadline, "the seed never listened");
        std::thread::sleep(Duration::from_millis(20));
    }

    // 2,000 connections opened at once and held, from several source addresses.
    let mut flood = Vec::new();
    for i in 0..2000u32 {
        if let Ok(s) = TcpStream::connect(seed) {
            flood.push(s);
        }
        if i % 500 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Slowloris: fifty clients that trickle a frame header a byte a second, forever.
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut slow: Vec<TcpStream> = (0..50).filter_map(|_| TcpStream::connect(seed).ok()).collect();
            let header = [200u8, 0, 0, 0, 1, 2, 3, 4];
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                slow.retain_mut(|s| s.write_all(&header[i % 8..i % 8 + 1]).is_ok());
                i += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    // Meanwhile an honest fetch completes.
    let out = dir.join("out.img");
    let manifest = data_dir.join("fw.img.flotilla");
    let fetch_addr = TcpListener::bind("127.0.0.181:0").unwrap().local_addr().unwrap().to_string();
    let started = Instant::now();
    let mut fetch = Command::new(BIN)
        .args(["fetch", manifest.to_str().unwrap(), "--trust", &key, "--out", out.to_str().unwrap()])
        .args(["--listen", &fetch_addr, "--peer", &seed_s, "--no-discovery"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut peak_fds, mut peak_rss) = (0, 0);
    let status = loop {
        peak_fds = peak_fds.max(fds(pid));
        peak_rss = peak_rss.max(proc_kib(pid, "VmHWM:"));
        if let Some(s) = fetch.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the honest fetch did not complete under the flood");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    let _ = fetch.stderr.take().unwrap().read_to_string(&mut err);
    assert!(status.success(), "fetch failed under the flood ({status}):\n{err}");
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    stop.store(true, Ordering::Relaxed);
    let _ = trickle.join();
    drop(flood);

    // A half-open handshake: connected, never a complete Hello. It must be closed for us.
    let mut idle = TcpStream::connect(seed).unwrap();
    idle.write_all(&[1, 0]).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let closed = matches!(idle.read(&mut buf), Ok(0) | Err(_)) && t.elapsed() < Duration::from_secs(14);
    assert!(closed, "a half-open handshake was left open for {:?}", t.elapsed());
    peak_fds = peak_fds.max(fds(pid));
    peak_rss = peak_rss.max(proc_kib(pid, "VmHWM:"));
    eprintln!(
        "flood: 2000 held + 50 slowloris; honest fetch of 6 MiB in {:.1} s; seed peak RSS {peak_rss} KiB \
         (cap {RSS_CAP_KIB}), peak fds {peak_fds}; half-open closed after {:.1} s",
        started.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    assert!(peak_fds <= 32 + 16, "descriptors grew with the flood: {peak_fds}");
    assert!(peak_rss <= RSS_CAP_KIB, "RSS {peak_rss} KiB over the cap {RSS_CAP_KIB} KiB");
}

/// A TCP connection to `to` from source address `from` (bind before connect).
fn connect_from(from: std::net::Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(to) = to else { panic!("IPv4 only") };
    let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a socket we own, closed through the TcpStream (or on error, explicitly).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = sin(from, 0);
        if libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sin(*to.ip(), to.port());
        if libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Connections that say a valid Hello for the swarm and then only keep alive: they hold slots
/// politely and never trade. Runs until `stop`; reconnects what the agent closes. Returns how
/// many connections were opened and how many of them got the seed's Hello back (a handshake
/// completed: the flood is the attack it claims to be, not connections refused at the door).
fn polite_flood(
    seed: SocketAddr,
    sources: Vec<std::net::Ipv4Addr>,
    swarm: [u8; 32],
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, usize)> {
    use flotilla::core::wire::{decode_message, encode_frame, parse_frame, Message, MAX_FRAME, VERSION};
    std::thread::spawn(move || {
        let frame = |m: &Message| {
            let mut buf = vec![0u8; MAX_FRAME];
            let n = encode_frame(m, &mut buf).unwrap();
            buf.truncate(n);
            buf
        };
        let keepalive = frame(&Message::KeepAlive);
        let (mut opened, mut greeted) = (0, 0);
        let mut conns: Vec<Option<TcpStream>> = sources.iter().map(|_| None).collect();
        // What each connection received until the seed's Hello was seen (None once it was).
        let mut first: Vec<Option<Vec<u8>>> = sources.iter().map(|_| None).collect();
        let mut sink = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            for (i, c) in conns.iter_mut().enumerate() {
                if c.is_none() {
                    let Ok(mut s) = connect_from(sources[i], seed) else { continue };
                    let hello = Message::Hello {
                        version: VERSION,
                        swarm,
                        listen_port: 0,
                        node: 0xbad0 + i as u64,
                        nonce: [i as u8; 16],
                    };
                    if s.write_all(&frame(&hello)).is_ok() && s.set_nonblocking(true).is_ok() {
                        opened += 1;
                        *c = Some(s);
                        first[i] = Some(Vec::new());
                    }
                }
                let Some(s) = c.as_mut() else { continue };
                let alive = match s.read(&mut sink) {
                    Ok(0) => false,
                    Ok(n) => {
                        if let Some(buf) = first[i].as_mut() {
                            buf.extend_from_slice(&sink[..n.min(4096)]);
                            let hello = parse_frame(buf).ok().flatten().and_then(|(p, _)| decode_message(p).ok());
                            if matches!(hello, Some(Message::Hello { swarm: s, .. }) if s == swarm) {
                                greeted += 1;
                                first[i] = None;
                            }
                        }
                        true
                    }
                    Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                };
                if !alive || s.write_all(&keepalive).is_err() {
                    *c = None;
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        (opened, greeted)
    })
}

/// One honest fetch of the seed's release from 127.0.0.`x`; returns how long it took.
fn honest_fetch(dir: &Path, manifest: &Path, key: &str, seed: &str, x: u8) -> Duration {
    let out = dir.join(format!("honest-{x}.img"));
    let listen = TcpListener::bind(format!("127.0.0.{x}:0")).unwrap().local_addr().unwrap().to_string();
    let started = Instant::now();
    let mut fetch = Command::new(BIN)
        .args(["fetch", manifest.to_str().unwrap(), "--trust", key, "--out", out.to_str().unwrap()])
        .args(["--listen", &listen, "--peer", seed, "--no-discovery"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = fetch.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the honest fetch was starved");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    let _ = fetch.stderr.take().unwrap().read_to_string(&mut err);
    assert!(status.success(), "the honest fetch failed ({status}):\n{err}");
    std::fs::remove_file(&out).unwrap();
    started.elapsed()
}

/// Strangers that complete valid Hellos and keep alive cannot starve an agent of connections:
/// 40 of them from one address hold at most 4 slots, and 40 from 40 addresses (no fleet
/// secret) are evicted for a newcomer once past the handshake's time, since they never trade.
/// An honest fetch through the same agent completes in both cases; the times are printed
/// against the same fetch unattacked.
#[test]
fn polite_floods_with_valid_hellos_cannot_starve_an_honest_fetch() {
    let dir = std::env::temp_dir().join(format!("flotilla-polite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (key, data_dir, _) = write_release(&dir);
    let manifest = data_dir.join("fw.img.flotilla");
    let swarm = flotilla::core::manifest::SignedManifest::read_file(&manifest).unwrap().swarm_id;
    let mut guard = Kill(Vec::new(), dir.clone());
    let seed: SocketAddr = TcpListener::bind("127.0.0.190:0").unwrap().local_addr().unwrap();
    let seed_s = seed.to_string();
    let child = Command::new(BIN)
        .args(["serve", "--data", data_dir.to_str().unwrap(), "--listen", &seed_s, "--no-discovery"])
        .args(["--trust", &key, "--max-upload-rate", "4M"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    guard.0.push(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(seed).is_err() {
        assert!(Instant::now() < deadline, "the seed never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let quiet = honest_fetch(&dir, &manifest, &key, &seed_s, 191);

    let mut report = format!("unattacked {:.1} s", quiet.as_secs_f64());
    let one_address = vec![std::net::Ipv4Addr::new(127, 0, 0, 192); 40];
    let many_addresses: Vec<_> = (0..40).map(|i| std::net::Ipv4Addr::new(127, 0, 1, 10 + i)).collect();
    for (name, sources, x) in [("40 from one address", one_address, 193), ("40 from 40 addresses", many_addresses, 194)]
    {
        let stop = Arc::new(AtomicBool::new(false));
        let flood = polite_flood(seed, sources, swarm, stop.clone());
        std::thread::sleep(Duration::from_secs(2));
        let attacked = honest_fetch(&dir, &manifest, &key, &seed_s, x);
        stop.store(true, Ordering::Relaxed);
        let (opened, greeted) = flood.join().unwrap();
        assert!(opened >= 4, "{name}: the flood never got in ({opened} connections)");
        assert!(greeted >= 4, "{name}: the flood's handshakes never completed ({greeted} Hellos answered)");
        report += &format!(
            "; {name}: {:.1} s ({:.2}x, {opened} flood connections opened, {greeted} answered with a Hello)",
            attacked.as_secs_f64(),
            attacked.as_secs_f64() / quiet.as_secs_f64()
        );
    }
    eprintln!("polite floods, honest fetch of 6 MiB: {report}");
}
