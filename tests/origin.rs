//! An HTTP origin as the only source (`--origin URL`, no peer): Debian's nginx, and a tiny
//! server in this test that lies in each way a real one can (no Range support, a truncated
//! body, wrong bytes, a redirect loop, a slow drip, a truncation and then the truth). Every case
//! ends verified or with its clear log line, and no file named FILE that is not the release.
//! Uses 127.0.0.180-189 and 195-196. Needs `/usr/sbin/nginx` (`.ci/run` installs it).

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// How the test's server answers.
#[derive(Clone, Copy, PartialEq)]
enum Lie {
    /// `200 OK` with the whole file: Range ignored.
    NoRange,
    /// The right head, half the body, then the connection closed.
    Truncated,
    /// The right head and length, one byte of every body flipped.
    WrongBytes,
    /// `302` to itself, forever.
    RedirectLoop,
    /// The right head, then the body a few bytes a second.
    Drip,
    /// Truncated on the first request, then the truth: the fetch must recover.
    TruncatedOnce,
    /// No lie: 206 with the range asked for.
    Honest,
}

/// The test's HTTP server: serves `bytes` as `/fw.img` with `lie`, until dropped.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(x: u8, bytes: Vec<u8>, lie: Lie) -> Server {
    let listener = TcpListener::bind((ip(x), 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicUsize::new(0));
    let (stop2, requests2) = (stop.clone(), requests.clone());
    let thread = std::thread::spawn(move || {
        // Bounded in time as well: the server stops by itself after two minutes.
        let until = Instant::now() + Duration::from_secs(120);
        while !stop2.load(Ordering::SeqCst) && Instant::now() < until {
            match listener.accept() {
                Ok((conn, _)) => answer(conn, &bytes, lie, &requests2, &stop2),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    Server { addr, stop, requests, thread: Some(thread) }
}

/// Answers the requests of one connection (keep-alive) until it closes or the lie ends it.
fn answer(mut conn: TcpStream, bytes: &[u8], lie: Lie, requests: &AtomicUsize, stop: &AtomicBool) {
    conn.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
            match conn.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return,
            }
            continue;
        };
        let request = String::from_utf8_lossy(&head[..end]).into_owned();
        head.drain(..end + 4);
        let n = requests.fetch_add(1, Ordering::SeqCst);
        let range = request.lines().find_map(|l| l.strip_prefix("Range: bytes=")).and_then(|r| {
            let (a, b) = r.split_once('-')?;
            Some((a.trim().parse::<usize>().ok()?, b.trim().parse::<usize>().ok()?))
        });
        let Some((a, b)) = range else { return };
        let body = &bytes[a..=b.min(bytes.len() - 1)];
        let partial = |len: usize| {
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{}\r\nContent-Length: {len}\r\n\r\n",
                bytes.len()
            )
        };
        let ok = match lie {
            Lie::NoRange => {
                let h = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", bytes.len());
                conn.write_all(h.as_bytes()).and_then(|()| conn.write_all(bytes)).is_ok()
            }
            Lie::Truncated => {
                let _ = conn
                    .write_all(partial(body.len()).as_bytes())
                    .and_then(|()| conn.write_all(&body[..body.len() / 2]));
                return;
            }
            Lie::TruncatedOnce if n == 0 => {
                let _ = conn
                    .write_all(partial(body.len()).as_bytes())
                    .and_then(|()| conn.write_all(&body[..body.len() / 2]));
                return;
            }
            Lie::WrongBytes => {
                let mut wrong = body.to_vec();
                wrong[body.len() / 3] ^= 0x40;
                conn.write_all(partial(body.len()).as_bytes()).and_then(|()| conn.write_all(&wrong)).is_ok()
            }
            Lie::RedirectLoop => {
                conn.write_all(b"HTTP/1.1 302 Found\r\nLocation: /fw.img\r\nContent-Length: 0\r\n\r\n").is_ok()
            }
            Lie::Drip => {
                let _ = conn.write_all(partial(body.len()).as_bytes());
                for byte in body.iter().take(200) {
                    if stop.load(Ordering::SeqCst) || conn.write_all(&[*byte]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                return;
            }
            Lie::TruncatedOnce | Lie::Honest => {
                conn.write_all(partial(body.len()).as_bytes()).and_then(|()| conn.write_all(body)).is_ok()
            }
        };
        if !ok {
            return;
        }
    }
}

/// `fetch` of `rel` into `out` with `--origin URL` as its only source.
fn fetch_from_origin(procs: &mut Procs, dir: &Path, rel: &Release, out: &Path, url: &str, extra: &[&str]) -> usize {
    let args = ["fetch", rel.manifest_arg(), "--trust", &rel.key, "--out", out.to_str().unwrap()];
    let mut args = args.to_vec();
    args.extend(["--no-listen", "--no-discovery", "--origin", url, "--origin-delay", "0"]);
    args.extend(extra);
    procs.spawn(dir, "fetch", &args)
}

#[test]
fn every_lie_of_an_http_origin_ends_in_a_clear_line_and_nothing_corrupt() {
    let tmp = TempDir::new("origin-lies");
    let dir = tmp.path();
    let rel = make_release(dir, 300_000, "64K", 0x180);
    let cases = [
        (Lie::NoRange, "ignored the Range request"),
        (Lie::Truncated, "closed the connection with"),
        (Lie::WrongBytes, "does not match the signed manifest"),
        (Lie::RedirectLoop, "more than 5 redirects"),
        (Lie::Drip, "no whole chunk within its time"),
    ];
    for (i, (lie, line)) in cases.into_iter().enumerate() {
        let server = serve(181 + i as u8, rel.bytes.clone(), lie);
        let out = tmp.sub(&format!("case{i}")).join("fw.img");
        let url = format!("http://{}/fw.img", server.addr);
        let mut procs = Procs::in_dir();
        let f = fetch_from_origin(&mut procs, dir, &rel, &out, &url, &["--origin-timeout", "1"]);
        procs.wait_for_log(f, line);
        assert!(procs.stderr(f).contains("trying again in"), "{}", procs.stderr(f));
        assert!(procs.running(f), "a lying origin is not fatal:\n{}", procs.stderr(f));
        assert!(!procs.stderr(f).contains("panicked"), "{}", procs.stderr(f));
        assert!(!out.exists(), "a file named FILE appeared from a lying origin");
        drop(procs);
        // What the state claims is there is really there: nothing unverified was committed.
        let part = side(&out, ".part");
        let claimed = flotilla::store::file::parse_state(
            &fs::read(side(&out, ".state")).unwrap_or_default(),
            &rel.signed.swarm_id,
            rel.signed.manifest.chunk_count(),
        );
        if let (Ok(claimed), Ok(data)) = (claimed, fs::read(&part)) {
            for c in claimed.iter_ones() {
                let g = rel.signed.manifest.geometry();
                let (a, n) = (g.chunk_offset(c) as usize, g.chunk_len(c) as usize);
                assert_eq!(&data[a..a + n], &rel.bytes[a..a + n], "chunk {c} committed wrong");
            }
        }
        drop(server);
    }
}

#[test]
fn an_origin_that_fails_once_is_retried_and_the_fetch_completes() {
    let tmp = TempDir::new("origin-recovers");
    let dir = tmp.path();
    let rel = make_release(dir, 300_000, "64K", 0x186);
    let server = serve(186, rel.bytes.clone(), Lie::TruncatedOnce);
    let out = tmp.sub("dev").join("fw.img");
    let mut procs = Procs::in_dir();
    let url = format!("http://{}/fw.img", server.addr);
    let f = fetch_from_origin(&mut procs, dir, &rel, &out, &url, &[]);
    let status = procs.wait(f);
    assert!(status.success(), "{}", procs.stderr(f));
    assert!(procs.stderr(f).contains("closed the connection with"), "{}", procs.stderr(f));
    assert!(procs.stderr(f).contains("MiB of it came from the origin"), "{}", procs.stderr(f));
    assert_release(dir, &out, &rel);
    // One failed request, then one per chunk (5 chunks of 64K in 300,000 bytes).
    assert_eq!(server.requests.load(Ordering::SeqCst), 1 + 5);
}

#[test]
fn nginx_as_the_only_source_and_a_second_origin_when_the_first_is_down() {
    let tmp = TempDir::new("origin-nginx");
    let dir = tmp.path();
    let rel = make_release(dir, 2_000_000, "256K", 0x187);
    let (_nginx, port) = start_nginx(dir, &rel.data_dir, 187, None);

    // The first origin refuses connections (nothing listens there): the second serves it all.
    let dead = TcpListener::bind((ip(188), 0)).unwrap().local_addr().unwrap();
    let out = tmp.sub("dev").join("fw.img");
    let mut procs = Procs::in_dir();
    let good = format!("http://127.0.0.187:{port}/fw.img");
    let f = fetch_from_origin(&mut procs, dir, &rel, &out, &format!("http://{dead}/fw.img"), &["--origin", &good]);
    let status = procs.wait(f);
    assert!(status.success(), "{}", procs.stderr(f));
    assert!(procs.stderr(f).contains("Connection refused"), "{}", procs.stderr(f));
    assert_release(dir, &out, &rel);
    let log = fs::read_to_string(dir.join("access.log")).unwrap();
    let ranges = log.lines().filter(|l| l.contains("\" 206 ")).count();
    assert_eq!(ranges, 8, "one 206 per chunk (2,000,000 bytes in 256 KiB chunks):\n{log}");

    // serve: the origin is a base URL under which each release is its signed name.
    let data = tmp.sub("serve");
    fs::copy(&rel.manifest, data.join("fw.img.flotilla")).unwrap();
    let base = format!("http://127.0.0.187:{port}/");
    let args = ["serve", "--data", data.to_str().unwrap(), "--no-listen", "--no-discovery", "--trust", &rel.key];
    let s = procs.spawn(dir, "serve", &[&args[..], &["--origin", &base, "--origin-delay", "0"]].concat());
    wait_until("serve to fetch it from the origin", || {
        assert!(procs.running(s), "{}", procs.stderr(s));
        data.join("fw.img").exists()
    });
    assert_release(dir, &data.join("fw.img"), &rel);
}

/// A device whose LAN peer announces that it fetches the release from a reachable peer beyond
/// the LAN (a super-peer) leaves the origin to that peer, however short its `--origin-delay`;
/// once the announcements stop (the peer lost its super-peer), it takes the origin again and
/// completes. This is what keeps a site's devices that found no slot at a super-peer from
/// fetching their share from the origin. Uses 127.0.0.195-196.
#[test]
fn a_device_whose_lan_peer_is_behind_a_super_peer_leaves_the_origin_to_it() {
    let tmp = TempDir::new("origin-behind");
    let dir = tmp.path();
    let rel = make_release(dir, 1_000_000, "256K", 0x195);
    let server = serve(195, rel.bytes.clone(), Lie::Honest);
    let group = format!("239.255.70.70:{}", free_addr(196).port());
    let (listen, out) = (free_addr(196).to_string(), tmp.sub("dev").join("fw.img"));
    // The peer that says it is behind: an address on the link, a port nothing answers on.
    let advert = flotilla::core::discovery::Advert {
        swarm: rel.signed.swarm_id,
        release: rel.signed.manifest.release,
        name_tag: flotilla::core::discovery::name_tag("fw.img"),
    };
    let mut datagram = [0u8; flotilla::core::discovery::MAX_DATAGRAM];
    let behind = flotilla::core::discovery::Flags { query: false, behind: true };
    let n = flotilla::core::discovery::encode(behind, 9, 0xbe41, [advert].into_iter(), &mut datagram);
    let udp = std::net::UdpSocket::bind((ip(195), 0)).unwrap();
    udp.send_to(&datagram[..n], &group).unwrap();

    let mut procs = Procs::in_dir();
    let url = format!("http://{}/fw.img", server.addr);
    let args = ["fetch", rel.manifest_arg(), "--trust", &rel.key, "--out", out.to_str().unwrap(), "--listen", &listen];
    let extra = ["--discovery-group", &group, "--origin", &url, "--origin-delay", "1"];
    let f = procs.spawn(dir, "fetch", &[&args[..], &extra].concat());
    // Announced every 200 ms for 6 s: five times the origin delay, and not one request.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        udp.send_to(&datagram[..n], &group).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(procs.running(f), "{}", procs.stderr(f));
    }
    assert_eq!(server.requests.load(Ordering::SeqCst), 0, "asked the origin while a LAN peer was behind a super-peer");
    // Silence: the claim lapses (15 s) and the origin serves the whole release.
    let status = procs.wait(f);
    assert!(status.success(), "{}", procs.stderr(f));
    assert_release(dir, &out, &rel);
    assert!(server.requests.load(Ordering::SeqCst) >= 4, "the origin served its four chunks");
}
