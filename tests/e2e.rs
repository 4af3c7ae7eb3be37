//! End-to-end tests: the real `flotilla` binary, several processes on loopback addresses
//! (127.0.0.x), and the bytes that come out compared with the bytes that went in.
//!
//! Each test owns a range of 127.0.0.x addresses (11.., 21.., 31.., 41..) so that the tests can
//! run in parallel without one agent dialling, banning or being banned by another test's agents.
//! Every child process is held by a [`Procs`] guard that kills and reaps it on every path,
//! panics included. Nothing waits a fixed time and then asserts: conditions are polled with a
//! generous deadline, so a slow machine makes a test slower, not flaky.

use flotilla::core::wire::{self, Bytes, Message, BLOCK_SIZE, MAX_FRAME, VERSION};
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

mod common;
use common::*;

const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Helpers of this file (the shared ones are in tests/common/mod.rs)
// ---------------------------------------------------------------------------------------------

// Kept here: this reader asserts the state file is whole; liars.rs and crash.rs read it otherwise.
/// Chunks marked present in `FILE.state`, or `None` if there is none yet. The format
/// (docs/PROTOCOL.md): b"FLOTST01" ‖ swarm id (32) ‖ chunk count u32 LE ‖ bitfield ‖ crc32 LE.
/// The file is replaced by rename, so a read never sees half of one.
fn state_chunks(out: &Path, rel: &Release) -> Option<u32> {
    let bytes = fs::read(side(out, ".state")).ok()?;
    let count = rel.signed.manifest.chunk_count();
    let bits = (count as usize).div_ceil(8);
    assert_eq!(bytes.len(), 8 + 32 + 4 + bits + 4, "state file length");
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    assert_eq!(crc32fast::hash(body).to_le_bytes(), crc, "state file crc");
    assert_eq!(&body[..8], b"FLOTST01");
    assert_eq!(body[8..40], rel.signed.swarm_id);
    assert_eq!(body[40..44], count.to_le_bytes());
    Some(body[44..].iter().map(|b| b.count_ones()).sum())
}

/// The "X MiB received" figure of fetch's completion line.
fn received_mib(log: &str) -> f64 {
    let line = log.lines().find(|l| l.contains(" MiB received")).unwrap_or_else(|| panic!("no summary in:\n{log}"));
    let before = &line[..line.find(" MiB received").unwrap()];
    before.rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("cannot read the figure in {line:?}"))
}

// ---------------------------------------------------------------------------------------------
// 1. A chain and a multi-source fetch
// ---------------------------------------------------------------------------------------------

/// S seeds (rate-limited); B fetches from S; C knows only B, so everything C gets, B serves
/// while still fetching; D fetches from both S and B. Uses 127.0.0.11-14.
#[test]
fn chain_and_multi_source() {
    let tmp = TempDir::new("chain");
    let dir = tmp.path();
    let rel = make_release(dir, 8 * MIB as usize + 12_345, "64K", 0x11);
    let mut procs = Procs::default();
    let (s, b, c, d) = (free_addr(11), free_addr(12), free_addr(13), free_addr(14));
    // 4 MiB/s shared by B and D: B needs seconds, long enough for C to feed on B's partial copy.
    start_seed(&mut procs, dir, &rel, s, "4M", &[]);

    let fetch = |procs: &mut Procs, name: &str, listen: SocketAddr, peers: &[SocketAddr], seed_for: &str| {
        let out = tmp.sub(name).join("fw.img");
        let mut args: Vec<String> = ["fetch", rel.manifest_arg(), "--trust", &rel.key, "--out", out.to_str().unwrap()]
            .map(String::from)
            .to_vec();
        args.extend(["--listen".into(), listen.to_string(), "--seed-for".into(), seed_for.into()]);
        for p in peers {
            args.extend(["--peer".into(), p.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        (procs.spawn(dir, name, &args), out)
    };
    // B must outlive C and D (they are killed by the guard at the end); C and D exit when done.
    let (ib, out_b) = fetch(&mut procs, "b", b, &[s], "120");
    wait_for_file(&side(&out_b, ".part"));
    let (ic, out_c) = fetch(&mut procs, "c", c, &[b], "0");
    let (id, out_d) = fetch(&mut procs, "d", d, &[s, b], "0");

    // Serving while fetching: C holds verified chunks (all of them from B) before B is whole.
    let mut c_progress_before_b_done = false;
    wait_until("B to complete", || {
        if out_b.exists() {
            return true;
        }
        assert!(procs.running(ib), "B exited early:\n{}", procs.stderr(ib));
        c_progress_before_b_done |= state_chunks(&out_c, &rel).is_some_and(|n| n > 0);
        false
    });
    assert!(c_progress_before_b_done, "C got no chunk from B while B was still fetching");

    for (i, name) in [(ic, "C"), (id, "D")] {
        let status = procs.wait(i);
        assert!(status.success(), "{name} failed ({status}):\n{}", procs.stderr(i));
    }
    for out in [&out_b, &out_c, &out_d] {
        assert_release(dir, out, &rel);
    }
    assert!(procs.running(ib), "B stops seeding early:\n{}", procs.stderr(ib));
}

// ---------------------------------------------------------------------------------------------
// 2. Resume after SIGKILL
// ---------------------------------------------------------------------------------------------

/// A fetch killed with SIGKILL mid-way resumes from its state file: it completes with the
/// right bytes and downloads only what it had not made durable. Uses 127.0.0.21-22.
#[test]
fn resume_after_sigkill() {
    let tmp = TempDir::new("resume");
    let dir = tmp.path();
    let rel = make_release(dir, 16 * MIB as usize - 777, "64K", 0x22);
    let mut procs = Procs::default();
    let s = free_addr(21);
    start_seed(&mut procs, dir, &rel, s, "2M", &[]);

    let out = tmp.sub("fetcher").join("fw.img");
    let (listen, peer) = (free_addr(22).to_string(), s.to_string());
    let args = [
        "fetch",
        rel.manifest_arg(),
        "--trust",
        &rel.key,
        "--out",
        out.to_str().unwrap(),
        "--listen",
        &listen,
        "--peer",
        &peer,
    ];
    let first = procs.spawn(dir, "first", &args);
    // An eighth of the release made durable (about a second at 2 MiB/s), then a power cut.
    let count = rel.signed.manifest.chunk_count();
    wait_until("the first fetch to commit an eighth of the chunks", || {
        assert!(procs.running(first), "first fetch exited:\n{}", procs.stderr(first));
        state_chunks(&out, &rel).is_some_and(|n| n >= count / 8)
    });
    procs.kill(first);
    assert!(!out.exists(), "the output appeared before the release was whole");
    assert!(side(&out, ".part").exists());
    let kept = state_chunks(&out, &rel).expect("state file survives the kill");
    assert!(kept > 0 && kept < count, "{kept} of {count} chunks durable at the kill");

    let second = procs.spawn(dir, "second", &args);
    let status = procs.wait(second);
    let log = procs.stderr(second);
    assert!(status.success(), "resumed fetch failed ({status}):\n{log}");
    assert_release(dir, &out, &rel);

    eprintln!("resume: {kept} of {count} chunks durable at the kill; then {:.1} MiB received", received_mib(&log));
    // Every chunk the state file held is trusted (after re-hashing) and not fetched again;
    // what was verified but not yet committed, or in flight, at the kill is fetched again.
    let chunk = rel.signed.manifest.chunk_size as f64;
    let missing = rel.bytes.len() as f64 - kept as f64 * chunk;
    let received = received_mib(&log) * MIB as f64;
    let slack = 8.0 * chunk;
    assert!(
        received < missing + slack,
        "resumed fetch received {received} bytes; only {missing} were missing (+{slack} in flight):\n{log}"
    );
    // The figure is printed to 0.1 MiB.
    assert!(received > missing - 0.1 * MIB as f64, "received {received} bytes of {missing} missing:\n{log}");
}

// ---------------------------------------------------------------------------------------------
// 3. Bad input is refused with exit 2, before any socket or file
// ---------------------------------------------------------------------------------------------

/// Corrupt or foreign manifests, a wrong file, missing or unknown flags: exit 2 (or non-zero
/// for a file that is not the release), one line on stderr, nothing created, nothing bound,
/// nobody dialled. Uses 127.0.0.31-32.
#[test]
fn bad_manifest_and_untrusted_key_exit_2() {
    let tmp = TempDir::new("badinput");
    let dir = tmp.path();
    let rel = make_release(dir, 200 * 1024 + 7, "16K", 0x33);
    let m = rel.manifest_arg();
    let file = rel.data_dir.join("fw.img");
    let file = file.to_str().unwrap();

    // The same file signed by another operator.
    let other_secret = dir.join("other.key");
    let other_key = run_ok(dir, &["keygen", "--secret", other_secret.to_str().unwrap()]).trim().to_owned();
    let foreign = dir.join("foreign.flotilla");
    run_ok(dir, &["publish", file, "--secret", other_secret.to_str().unwrap(), "--out", foreign.to_str().unwrap()]);
    let foreign = foreign.to_str().unwrap();

    // One byte flipped in the middle of the manifest.
    let mut bytes = fs::read(&rel.manifest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    let tampered = dir.join("tampered.flotilla");
    fs::write(&tampered, &bytes).unwrap();
    let tampered = tampered.to_str().unwrap();

    // A refused fetch must neither bind nor dial: we hold its listen address (binding it would
    // fail with exit 1, not 2) and listen on its peer address (a dial would be accepted).
    let listen = TcpListener::bind((ip(31), 0)).unwrap();
    let listen_addr = listen.local_addr().unwrap().to_string();
    let decoy = TcpListener::bind((ip(32), 0)).unwrap();
    decoy.set_nonblocking(true).unwrap();
    let decoy_addr = decoy.local_addr().unwrap().to_string();
    let out_dir = tmp.sub("out");
    let out = out_dir.join("fw.img");
    let out = out.to_str().unwrap();
    let fetch = |manifest: &str, trust: Option<&str>| {
        let mut args = vec!["fetch", manifest, "--out", out, "--listen", &listen_addr, "--peer", &decoy_addr];
        if let Some(k) = trust {
            args.extend(["--trust", k]);
        }
        run(dir, &args)
    };
    let refused = |o: &Outcome, what: &str, code: i32, mentions: &[&str]| {
        assert_eq!(o.code, code, "{what}: exit {}, stderr:\n{}", o.code, o.stderr);
        assert_eq!(o.stderr.lines().count(), 1, "{what}: not one line on stderr:\n{}", o.stderr);
        for m in mentions {
            assert!(o.stderr.contains(m), "{what}: stderr does not mention {m:?}:\n{}", o.stderr);
        }
    };

    refused(&fetch(tampered, Some(&rel.key)), "fetch of a tampered manifest", 2, &["manifest"]);
    refused(&run(dir, &["verify", tampered, file, "--trust", &rel.key]), "verify of a tampered manifest", 2, &[]);
    refused(&run(dir, &["inspect", tampered]), "inspect of a tampered manifest", 2, &[]);

    refused(&fetch(foreign, Some(&rel.key)), "fetch of a foreign manifest", 2, &["trust", &other_key]);
    refused(&run(dir, &["verify", foreign, file, "--trust", &rel.key]), "verify of a foreign manifest", 2, &["trust"]);

    refused(&fetch(m, None), "fetch without --trust", 2, &["--trust"]);
    refused(&run(dir, &["verify", m, file]), "verify without --trust", 2, &["--trust"]);
    refused(&fetch(m, Some("not-a-key")), "fetch with a malformed --trust", 2, &[]);

    // Nothing was created beside --out, and nobody dialled the peer.
    let created: Vec<_> = fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(created.is_empty(), "refused fetches created {created:?}");
    match decoy.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("a refused fetch dialled its peer: {other:?}"),
    }
    drop(listen);

    // verify: the release itself passes; one flipped byte or a truncation does not.
    run_ok(dir, &["verify", m, file, "--trust", &rel.key]);
    let mut altered = rel.bytes.clone();
    let third = altered.len() / 3;
    altered[third] ^= 0x80;
    let altered_path = dir.join("altered.img");
    fs::write(&altered_path, &altered).unwrap();
    let o = run(dir, &["verify", m, altered_path.to_str().unwrap(), "--trust", &rel.key]);
    assert_ne!(o.code, 0, "verify accepted a file with one byte changed");
    assert_eq!(o.stderr.lines().count(), 1, "verify failure: not one line:\n{}", o.stderr);
    fs::write(&altered_path, &rel.bytes[..rel.bytes.len() - 1]).unwrap();
    let o = run(dir, &["verify", m, altered_path.to_str().unwrap(), "--trust", &rel.key]);
    assert_ne!(o.code, 0, "verify accepted a truncated file");

    // Unknown flags, at the top and for every command.
    let data = rel.data_dir.to_str().unwrap();
    let secret = dir.join("operator.key");
    let secret = secret.to_str().unwrap();
    let new_key = dir.join("new.key");
    let new_key = new_key.to_str().unwrap();
    let bogus: [&[&str]; 9] = [
        &["--bogus"],
        &["no-such-command"],
        &["keygen", "--secret", new_key, "--bogus"],
        &["publish", file, "--secret", secret, "--bogus"],
        &["inspect", m, "--bogus"],
        &["verify", m, file, "--trust", &rel.key, "--bogus"],
        &["serve", "--data", data, "--bogus"],
        &["fetch", m, "--trust", &rel.key, "--out", out, "--bogus"],
        &["demo", "--bogus"],
    ];
    for args in bogus {
        refused(&run(dir, args), &format!("{args:?}"), 2, &[]);
    }
    assert!(!dir.join("new.key").exists(), "keygen with a bad flag wrote its key");

    // --help everywhere: exit 0 and a usage line.
    for cmd in ["keygen", "publish", "inspect", "verify", "serve", "fetch", "demo"] {
        let o = run(dir, &[cmd, "--help"]);
        assert_eq!(o.code, 0, "{cmd} --help: exit {}:\n{}", o.code, o.stderr);
        assert!(o.stdout.contains("Usage"), "{cmd} --help prints no usage:\n{}", o.stdout);
    }
    let o = run(dir, &["--help"]);
    assert!(o.code == 0 && o.stdout.contains("Usage"), "flotilla --help:\n{}{}", o.stdout, o.stderr);
}

// ---------------------------------------------------------------------------------------------
// 4. A lying peer
// ---------------------------------------------------------------------------------------------

/// What the fake peer saw on the connection it served.
struct LiarReport {
    /// The chunk it answered with corrupt data.
    chunk: u32,
    /// When the fetcher's side of the connection was found closed.
    closed_at: Instant,
}

/// Reads frames from `stream` until `want` accepts one (returns Some).
fn read_until<T>(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    mut want: impl FnMut(&Message) -> Option<T>,
) -> Result<T, String> {
    let mut tmp = [0u8; 4096];
    loop {
        while let Some((payload, used)) =
            wire::parse_frame(buf).map_err(|e| format!("fetcher sent a bad frame: {e}"))?
        {
            let msg = wire::decode_message(payload).map_err(|e| format!("fetcher sent a bad message: {e}"))?;
            let found = want(&msg);
            buf.drain(..used);
            if let Some(t) = found {
                return Ok(t);
            }
        }
        match stream.read(&mut tmp) {
            Ok(0) => return Err("fetcher closed the connection early".into()),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) => return Err(format!("read from fetcher: {e}")),
        }
    }
}

fn send(stream: &mut TcpStream, msg: &Message) -> std::io::Result<()> {
    let mut frame = [0u8; MAX_FRAME];
    let n = wire::encode_frame(msg, &mut frame).expect("frame fits");
    stream.write_all(&frame[..n])
}

/// The liar's side of one connection: a correct handshake and a full bitfield, then the first
/// requested chunk with one byte wrong in every block, then a frame header announcing 4 GiB
/// followed by garbage. Returns once the fetcher has closed the connection.
fn lie(mut stream: TcpStream, rel: &Release) -> Result<LiarReport, String> {
    let m = &rel.signed.manifest;
    let swarm = rel.signed.swarm_id;
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, |msg| match *msg {
        Message::Hello { version, swarm: s, .. } => Some((version, s)),
        _ => None,
    })
    .and_then(|(v, s)| if v == VERSION && s == swarm { Ok(()) } else { Err(format!("odd hello: v{v}")) })?;

    let mut bits = vec![0xffu8; (m.chunk_count() as usize).div_ceil(8)];
    let spare = bits.len() * 8 - m.chunk_count() as usize;
    *bits.last_mut().unwrap() = 0xff << spare;
    let io = |e: std::io::Error| format!("write to fetcher: {e}");
    send(&mut stream, &Message::Hello { version: VERSION, swarm, listen_port: 0, node: 0x11a2, nonce: [7; 16] })
        .map_err(io)?;
    send(&mut stream, &Message::Bitfield(Bytes(&bits))).map_err(io)?;

    let chunk = read_until(&mut stream, &mut buf, |msg| match *msg {
        Message::Request(c) => Some(c),
        _ => None,
    })?;
    let start = m.chunk_offset(chunk) as usize;
    let mut data = rel.bytes[start..start + m.chunk_len(chunk) as usize].to_vec();
    for block in data.chunks_mut(BLOCK_SIZE as usize) {
        let mid = block.len() / 2;
        block[mid] ^= 0x01;
    }
    for (k, block) in data.chunks(BLOCK_SIZE as usize).enumerate() {
        let offset = k as u32 * BLOCK_SIZE;
        send(&mut stream, &Message::Block { chunk, offset, data: Bytes(block) }).map_err(io)?;
    }
    // A header announcing u32::MAX bytes, then garbage: the fetcher must refuse it from the
    // header alone. It may already have closed, so a failed write is fine here.
    let mut oversize = Vec::from(u32::MAX.to_le_bytes());
    oversize.extend_from_slice(&[0xa5; 4]);
    oversize.extend(random_bytes(4096, 0x44));
    let _ = stream.write_all(&oversize);

    // Drain until the fetcher closes: EOF, or a reset because the garbage went unread.
    let mut tmp = [0u8; 4096];
    loop {
        match stream.read(&mut tmp) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!("fetcher kept the connection open for {PATIENCE:?} after an oversize frame"))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    Ok(LiarReport { chunk, closed_at: Instant::now() })
}

/// A fetch told about a liar and an honest seed completes correctly, drops and bans the liar
/// (after a corrupt chunk and an oversize frame) and does not dial it again. Uses 127.0.0.41-43.
#[test]
fn liar_peer_is_dropped_and_fetch_completes() {
    let tmp = TempDir::new("liar");
    let dir = tmp.path();
    let rel = Arc::new(make_release(dir, 6 * MIB as usize - 5_000, "64K", 0x44));
    let mut procs = Procs::default();
    // 1 MiB/s: the honest fetch takes about 6 s, so the fetcher is still dialling its peers
    // for a while after the liar has been dropped; that is what makes the redial check mean
    // something.
    let s = free_addr(41);
    start_seed(&mut procs, dir, &rel, s, "1M", &[]);

    let liar = TcpListener::bind((ip(42), 0)).unwrap();
    let liar_addr = liar.local_addr().unwrap();
    liar.set_nonblocking(true).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (report_tx, report_rx) = mpsc::channel();
    let listener_thread = {
        let (accepted, stop, rel) = (accepted.clone(), stop.clone(), rel.clone());
        std::thread::spawn(move || {
            let mut handlers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match liar.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        if accepted.fetch_add(1, Ordering::SeqCst) == 0 {
                            let (rel, tx) = (rel.clone(), report_tx.clone());
                            handlers.push(std::thread::spawn(move || {
                                let _ = tx.send(lie(stream, &rel));
                            }));
                        }
                        // Later connections are only counted, and closed.
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
                    Err(e) => panic!("fake peer cannot accept: {e}"),
                }
            }
            for h in handlers {
                let _ = h.join();
            }
        })
    };
    // Stops the fake peer's threads on every path, before `procs` kills the agents.
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop_guard = Stop(stop);

    let out = tmp.sub("fetcher").join("fw.img");
    let listen = free_addr(43).to_string();
    let (liar_arg, seed_arg) = (liar_addr.to_string(), s.to_string());
    let args = [
        "fetch",
        rel.manifest_arg(),
        "--trust",
        &rel.key,
        "--out",
        out.to_str().unwrap(),
        "--listen",
        &listen,
        "--peer",
        &liar_arg,
        "--peer",
        &seed_arg,
    ];
    let f = procs.spawn(dir, "fetcher", &args);

    let report = report_rx
        .recv_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("the fetcher never talked to the liar:\n{}", procs.stderr(f)))
        .unwrap_or_else(|e| panic!("{e}\nfetcher log:\n{}", procs.stderr(f)));

    // The fetcher itself closed the connection on the offence, not merely by exiting when done.
    assert!(
        !out.exists() && procs.running(f),
        "the liar's connection stayed open after its oversize frame until the fetch ended:\n{}",
        procs.stderr(f)
    );

    // Not redialled: the one connection lasted until the offence (the liar answers at once, so
    // nothing closes it earlier for a benign reason that would allow a redial), and a redial
    // of an address that is not banned comes within a second (500 ms backoff), so 3 s with
    // the fetch still running shows the ban holds. A second accept, at any time, is a failure.
    let window_end = report.closed_at + Duration::from_secs(3);
    while Instant::now() < window_end {
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "the liar was dialled again:\n{}", procs.stderr(f));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!out.exists() && procs.running(f), "the fetch finished too soon for the redial check to mean anything");

    let status = procs.wait(f);
    let log = procs.stderr(f);
    assert!(status.success(), "fetch failed ({status}):\n{log}");
    assert_release(dir, &out, &rel);
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the liar was dialled again:\n{log}");

    // The corrupt chunk was caught by its hash, and the liar dropped and banned by address.
    let bad = format!("chunk {} failed verification", report.chunk);
    assert!(log.contains(&bad), "no {bad:?} in the log:\n{log}");
    assert!(
        log.lines().any(|l| l.contains(&liar_arg) && (l.contains("dropping") || l.contains("banned"))),
        "no line about dropping {liar_arg}:\n{log}"
    );

    drop(stop_guard);
    listener_thread.join().unwrap();
}

/// `serve --data DIR` with a manifest whose file is missing fetches it first, then serves it:
/// a third agent that knows only this one completes from it after the seed is gone.
#[test]
fn serve_fetches_a_release_whose_file_is_missing() {
    let tmp = TempDir::new("serve-fetch");
    let dir = tmp.path();
    let rel = make_release(dir, 3 * MIB as usize + 99, "64K", 0x51);
    let mut procs = Procs::default();
    let (s, relay, last) = (free_addr(51), free_addr(52), free_addr(53));
    let seed = start_seed(&mut procs, dir, &rel, s, "0", &[]);

    let relay_dir = tmp.sub("relay");
    fs::create_dir_all(&relay_dir).unwrap();
    fs::copy(&rel.manifest, relay_dir.join("fw.img.flotilla")).unwrap();
    let relay_addr = relay.to_string();
    let seed_addr = s.to_string();
    let args = ["serve", "--data", relay_dir.to_str().unwrap(), "--listen", &relay_addr, "--peer", &seed_addr];
    let relay_proc = procs.spawn(dir, "relay", &[&args[..], &["--trust", &rel.key]].concat());
    let out = relay_dir.join("fw.img");
    wait_for_file(&out);
    assert_eq!(fs::read(&out).unwrap(), rel.bytes, "the relay fetched the missing file");
    assert!(!side(&out, ".part").exists() && !side(&out, ".state").exists());

    procs.kill(seed);
    let out_last = tmp.sub("last").join("fw.img");
    let last_addr = last.to_string();
    let fetch = [
        "fetch",
        rel.manifest_arg(),
        "--trust",
        &rel.key,
        "--out",
        out_last.to_str().unwrap(),
        "--listen",
        &last_addr,
        "--peer",
        &relay_addr,
    ];
    let f = procs.spawn(dir, "last", &fetch);
    let status = procs.wait(f);
    assert!(status.success(), "fetch from the relay failed ({status}):\n{}", procs.stderr(f));
    assert_release(dir, &out_last, &rel);
    assert!(procs.running(relay_proc), "the relay keeps serving:\n{}", procs.stderr(relay_proc));
}

/// Peer exchange: five fetchers that know only the seed's address connect to one another.
#[test]
fn fetchers_given_only_the_seed_mesh_through_peer_exchange() {
    let tmp = TempDir::new("pex");
    let dir = tmp.path();
    let rel = make_release(dir, 6 * MIB as usize, "64K", 0x61);
    let mut procs = Procs::default();
    let seed = free_addr(61);
    // Slow enough that the fetchers are still fetching when they learn of each other.
    start_seed(&mut procs, dir, &rel, seed, "2M", &[]);
    let seed_s = seed.to_string();
    let mut fetchers = Vec::new();
    for i in 0..5u8 {
        let listen = SocketAddr::new(IpAddr::V4(ip(62 + i)), seed.port()).to_string();
        let out = tmp.sub(&format!("f{i}")).join("fw.img");
        let args = [
            "-v",
            "fetch",
            rel.manifest_arg(),
            "--trust",
            &rel.key,
            "--out",
            out.to_str().unwrap(),
            "--listen",
            &listen,
            "--peer",
            &seed_s,
            "--seed-for",
            "5",
        ];
        fetchers.push((procs.spawn(dir, &format!("f{i}"), &args), out));
    }
    for (i, out) in &fetchers {
        let status = procs.wait(*i);
        assert!(status.success(), "fetch failed ({status}):\n{}", procs.stderr(*i));
        assert_release(dir, out, &rel);
    }
    // Each fetcher dialled the seed only by its flags; any other dial was learnt by exchange.
    let mut learnt = 0;
    for (i, _) in &fetchers {
        let log = procs.stderr(*i);
        learnt += log.lines().filter(|l| l.contains("connected to 127.0.0.") && !l.contains(&seed_s)).count();
    }
    assert!(learnt >= 4, "only {learnt} connections between fetchers were dialled");
}

/// LAN discovery: a seed and two fetchers with no `--peer` at all find each other on a
/// multicast group, while junk and oversized datagrams on the same group change nothing.
#[test]
fn agents_find_each_other_on_the_lan_and_ignore_junk_datagrams() {
    let tmp = TempDir::new("lan");
    let dir = tmp.path();
    let rel = make_release(dir, 4 * MIB as usize, "64K", 0x71);
    let mut procs = Procs::default();
    // A group port of this test's own, so parallel tests and real agents do not cross-talk.
    let group = format!("239.255.70.70:{}", free_addr(71).port());
    let seed = free_addr(71).to_string();
    let s = procs.spawn(
        dir,
        "seed",
        &[
            "-v",
            "serve",
            "--data",
            rel.data_dir.to_str().unwrap(),
            "--listen",
            &seed,
            "--discovery-group",
            &group,
            "--trust",
            &rel.key,
        ],
    );
    wait_for_log(&mut procs, s, "listening on");

    let junk = std::net::UdpSocket::bind("127.0.0.79:0").unwrap();
    let mut garbage = random_bytes(70_000, 7);
    garbage[..8].copy_from_slice(b"FLOTANN1");
    for len in [0, 1, 13, 525, 60_000] {
        junk.send_to(&garbage[..len], &group).unwrap();
    }

    let mut fetchers = Vec::new();
    for i in 0..2u8 {
        let listen = SocketAddr::new(IpAddr::V4(ip(72 + i)), free_addr(72 + i).port()).to_string();
        let out = tmp.sub(&format!("f{i}")).join("fw.img");
        let args = [
            "-v",
            "fetch",
            rel.manifest_arg(),
            "--trust",
            &rel.key,
            "--out",
            out.to_str().unwrap(),
            "--listen",
            &listen,
            "--discovery-group",
            &group,
        ];
        fetchers.push((procs.spawn(dir, &format!("f{i}"), &args), out));
    }
    for len in [3, 600, 65_000] {
        junk.send_to(&garbage[..len], &group).unwrap();
    }
    for (i, out) in &fetchers {
        let status = procs.wait(*i);
        assert!(status.success(), "fetch without --peer failed ({status}):\n{}", procs.stderr(*i));
        assert_release(dir, out, &rel);
    }
    assert!(procs.running(s), "the seed died:\n{}", procs.stderr(s));
    let seed_log = procs.stderr(s);
    assert!(seed_log.contains("ignored a malformed announcement"), "junk was not seen and ignored:\n{seed_log}");
}

/// Announcements count only when sent to the group: a valid announcement of the very swarm a
/// fetcher wants, naming a decoy, sent to the discovery port by unicast (a reflection attempt)
/// makes it dial nothing; the same datagram sent to the group is heard (the control).
#[test]
fn a_unicast_announcement_is_not_heard_and_the_same_to_the_group_is() {
    let tmp = TempDir::new("spoof");
    let dir = tmp.path();
    let rel = make_release(dir, MIB as usize, "64K", 0x7a);
    let mut procs = Procs::default();
    let group = format!("239.255.70.70:{}", free_addr(74).port());
    let port: u16 = group.rsplit(':').next().unwrap().parse().unwrap();
    let listen = free_addr(74).to_string();
    let out = tmp.sub("f").join("fw.img");
    let args = ["-v", "fetch", rel.manifest_arg(), "--trust", &rel.key, "--out", out.to_str().unwrap()];
    let f = procs.spawn(dir, "f", &[&args[..], &["--listen", &listen, "--discovery-group", &group]].concat());
    // Its discovery socket opens as it starts; datagrams before that are simply lost, and the
    // loop below sends for two seconds.
    std::thread::sleep(Duration::from_millis(300));

    let decoy = TcpListener::bind("127.0.0.78:0").unwrap();
    decoy.set_nonblocking(true).unwrap();
    let swarm = flotilla::core::manifest::SignedManifest::read_file(Path::new(rel.manifest_arg())).unwrap().swarm_id;
    let mut datagram = [0u8; flotilla::core::discovery::MAX_DATAGRAM];
    let decoy_port = decoy.local_addr().unwrap().port();
    let advert = flotilla::core::discovery::Advert {
        swarm,
        release: 1,
        name_tag: flotilla::core::discovery::name_tag("fw.img"),
    };
    let n = flotilla::core::discovery::encode(
        flotilla::core::discovery::Flags::default(),
        decoy_port,
        0x5eed,
        [advert].into_iter(),
        &mut datagram,
    );
    let spoofer = std::net::UdpSocket::bind("127.0.0.78:0").unwrap();
    let dialled = |decoy: &TcpListener| decoy.accept().is_ok();
    for _ in 0..20 {
        spoofer.send_to(&datagram[..n], (ip(74), port)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(!dialled(&decoy), "a unicast announcement made the fetcher dial what it named");
    }
    let log = procs.stderr(f);
    assert!(log.contains("not sent to the group"), "the unicast datagrams were not seen and refused:\n{log}");
    // The control: to the group, the same bytes are heard and the decoy is dialled.
    spoofer.set_multicast_loop_v4(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        spoofer.send_to(&datagram[..n], &group).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        if dialled(&decoy) {
            break;
        }
        assert!(Instant::now() < deadline, "an announcement to the group was not heard:\n{}", procs.stderr(f));
    }
}

/// With a fleet secret, a fetch holding it completes and one without it gets nothing.
#[test]
fn fleet_secret_admits_members_only() {
    let tmp = TempDir::new("fleet");
    let dir = tmp.path();
    let rel = make_release(dir, 2 * MIB as usize, "64K", 0x81);
    let secret = dir.join("fleet.secret");
    run_ok(dir, &["keygen", "--fleet-secret", secret.to_str().unwrap()]);
    let wrong = dir.join("wrong.secret");
    run_ok(dir, &["keygen", "--fleet-secret", wrong.to_str().unwrap()]);
    let short = dir.join("short.secret");
    fs::write(&short, b"too short").unwrap();
    fs::set_permissions(&short, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let readable = dir.join("readable.secret");
    fs::write(&readable, random_bytes(32, 0x86)).unwrap();
    fs::set_permissions(&readable, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut procs = Procs::default();
    let seed = free_addr(81).to_string();
    let data = rel.data_dir.to_str().unwrap();
    let s = procs.spawn(
        dir,
        "seed",
        &[
            "serve",
            "--data",
            data,
            "--listen",
            &seed,
            "--no-discovery",
            "--fleet-secret",
            secret.to_str().unwrap(),
            "--trust",
            &rel.key,
        ],
    );
    wait_for_log(&mut procs, s, "listening on");
    let fetch = |procs: &mut Procs, name: &str, x: u8, extra: &[&str]| {
        let out = tmp.sub(name).join("fw.img");
        let listen = free_addr(x).to_string();
        let mut args = vec!["fetch", rel.manifest_arg(), "--trust", &rel.key, "--out", out.to_str().unwrap()];
        args.extend(["--listen", &listen, "--peer", &seed, "--no-discovery"]);
        args.extend(extra);
        (procs.spawn(dir, name, &args), out)
    };
    let (outsider, out_outsider) = fetch(&mut procs, "outsider", 82, &[]);
    let (stranger, out_stranger) = fetch(&mut procs, "stranger", 83, &["--fleet-secret", wrong.to_str().unwrap()]);
    let (member, out_member) = fetch(&mut procs, "member", 84, &["--fleet-secret", secret.to_str().unwrap()]);
    let status = procs.wait(member);
    assert!(status.success(), "member failed ({status}):\n{}", procs.stderr(member));
    assert_release(dir, &out_member, &rel);
    // The others have had as long as the member needed, and more: still nothing.
    std::thread::sleep(Duration::from_secs(2));
    for (i, out) in [(outsider, &out_outsider), (stranger, &out_stranger)] {
        assert!(procs.running(i), "{}", procs.stderr(i));
        assert!(!out.exists(), "an outsider got the file");
        assert_eq!(state_chunks(out, &rel).unwrap_or(0), 0, "an outsider got chunks");
    }
    // The seed says why each was closed, and bans neither: a secret not shared is no offence.
    let seed_log = procs.stderr(s);
    assert!(seed_log.contains("only one side holds a fleet secret"), "the outsider's close:\n{seed_log}");
    assert!(seed_log.contains("a frame failed authentication"), "the stranger's close:\n{seed_log}");
    assert!(!seed_log.contains("banned"), "a non-member was banned:\n{seed_log}");
    // The outcome, not the log: a member dialling from the stranger's address still gets in.
    procs.kill(stranger);
    let (again, out_again) = fetch(&mut procs, "member-from-83", 83, &["--fleet-secret", secret.to_str().unwrap()]);
    let status = procs.wait(again);
    assert!(status.success(), "the stranger's address was shut out ({status}):\n{}", procs.stderr(again));
    assert_release(dir, &out_again, &rel);

    let refused = run(
        dir,
        &["fetch", rel.manifest_arg(), "--trust", &rel.key, "--out", "x", "--fleet-secret", short.to_str().unwrap()],
    );
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("at least 32"), "{}", refused.stderr);
    let refused = run(
        dir,
        &["fetch", rel.manifest_arg(), "--trust", &rel.key, "--out", "x", "--fleet-secret", readable.to_str().unwrap()],
    );
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("readable by others"), "{}", refused.stderr);
}

/// A TCP relay between a fetcher and a seed that records what the seed sends and can flip one
/// byte of that stream once `flip_after` bytes have passed on its first connection.
struct Relay {
    addr: SocketAddr,
    recorded: Arc<std::sync::Mutex<Vec<u8>>>,
}

fn start_relay(x: u8, to: SocketAddr, flip_after: Option<usize>) -> Relay {
    start_relay_with(x, to, flip_after, &[])
}

/// A relay as [`start_relay`], that forwards what the seed sends in writes of the sizes in
/// `pieces` (cycled; empty: as read), each its own segment.
fn start_relay_with(x: u8, to: SocketAddr, flip_after: Option<usize>, pieces: &'static [usize]) -> Relay {
    let listener = TcpListener::bind(free_addr(x)).unwrap();
    let addr = listener.local_addr().unwrap();
    let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
    let rec = recorded.clone();
    std::thread::spawn(move || {
        for (n, inbound) in listener.incoming().enumerate() {
            let Ok(inbound) = inbound else { return };
            let Ok(outbound) = TcpStream::connect(to) else { return };
            let (mut a_in, mut a_out) = (inbound.try_clone().unwrap(), inbound);
            let (mut b_in, mut b_out) = (outbound.try_clone().unwrap(), outbound);
            a_out.set_nodelay(true).unwrap();
            std::thread::spawn(move || std::io::copy(&mut a_in, &mut b_out));
            let rec = rec.clone();
            let flip = flip_after.filter(|_| n == 0);
            std::thread::spawn(move || {
                let (mut buf, mut passed) = (vec![0u8; 65536], 0usize);
                while let Ok(k) = b_in.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    if let Some(at) = flip.filter(|&at| passed <= at && at < passed + k) {
                        buf[at - passed] ^= 0x40;
                    }
                    passed += k;
                    rec.lock().unwrap().extend_from_slice(&buf[..k]);
                    let mut sizes = pieces.iter().cycle();
                    let mut rest = &buf[..k];
                    while !rest.is_empty() {
                        let piece = sizes.next().map_or(rest.len(), |&p| p.min(rest.len()));
                        if a_out.write_all(&rest[..piece]).is_err() {
                            return;
                        }
                        rest = &rest[piece..];
                    }
                }
                let _ = a_out.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    Relay { addr, recorded }
}

/// Frames that reach the fetcher in pieces of every size, headers split, many tiny segments
/// at once: the fetcher leaves a partial frame in the kernel until it is whole, and takes it out
/// when the kernel has no room left (tiny segments fill a receive buffer with a few KiB of data).
/// Both must end in a byte-exact copy, with and without a fleet secret.
#[test]
fn frames_chopped_into_pieces_of_every_size_arrive_whole() {
    const PIECES: &[usize] = &[1, 7, 3, 40, 2, 300, 5, 1500, 9, 9000, 1, 16_000];
    let tmp = TempDir::new("chopped");
    let dir = tmp.path();
    let rel = make_release(dir, 2 * MIB as usize, "64K", 0x98);
    let secret = dir.join("fleet.secret");
    run_ok(dir, &["keygen", "--fleet-secret", secret.to_str().unwrap()]);
    let mut procs = Procs::default();
    let data = rel.data_dir.to_str().unwrap();
    for (x, fleet) in [(98, false), (101, true)] {
        let seed = free_addr(x);
        let seed_s = seed.to_string();
        let mut args = vec!["serve", "--data", data, "--listen", &seed_s, "--no-discovery", "--trust", &rel.key];
        if fleet {
            args.extend(["--fleet-secret", secret.to_str().unwrap()]);
        }
        let s = procs.spawn(dir, &format!("seed{x}"), &args);
        wait_for_log(&mut procs, s, "listening on");
        let relay = start_relay_with(x + 1, seed, None, PIECES);
        let out = tmp.sub(&format!("out{x}")).join("fw.img");
        let (relay_addr, listen) = (relay.addr.to_string(), free_addr(x + 2).to_string());
        let mut args = vec!["fetch", rel.manifest_arg(), "--trust", &rel.key, "--out", out.to_str().unwrap()];
        args.extend(["--listen", &listen, "--peer", &relay_addr, "--no-discovery"]);
        if fleet {
            args.extend(["--fleet-secret", secret.to_str().unwrap()]);
        }
        args.insert(0, "-v");
        let f = procs.spawn(dir, &format!("fetch{x}"), &args);
        let status = procs.wait(f);
        assert!(status.success(), "the fetch through the chopping relay failed ({status}):\n{}", procs.stderr(f));
        assert_release(dir, &out, &rel);
        let log = procs.stderr(f);
        let closes = log.lines().filter(|l| l.contains(" closed ")).collect::<Vec<_>>();
        assert!(closes.iter().all(|l| l.contains("both sides complete")), "a connection was lost on the way:\n{log}");
        let spilled = log.lines().filter(|l| l.contains("reading it piecemeal")).count();
        eprintln!("fleet secret {fleet}: {spilled} frames read piecemeal, {} closes", closes.len());
    }
}

/// True if some 64-byte run of `image` appears anywhere in `stream` (every such run holds a
/// whole 32-byte window of the image at a 32-aligned offset, which is what is looked for).
fn leaks(image: &[u8], stream: &[u8]) -> bool {
    let windows: std::collections::HashSet<&[u8]> = image.chunks_exact(32).collect();
    stream.windows(32).any(|w| windows.contains(w))
}

/// With a fleet secret, a relay in the path (finding 1 of the transport issue) forwards only
/// ciphertext: no 64-byte run of the image appears in what it recorded, and one byte it flips
/// after the handshake closes that connection without a ban; the fetch completes byte-exact
/// through it. Without a secret, the same recording does show the image (the check can fail).
#[test]
fn a_relay_sees_only_ciphertext_and_cannot_alter_a_frame() {
    let tmp = TempDir::new("relay");
    let dir = tmp.path();
    let rel = make_release(dir, 2 * MIB as usize, "64K", 0x91);
    let image = fs::read(rel.data_dir.join("fw.img")).unwrap();
    let secret = dir.join("fleet.secret");
    run_ok(dir, &["keygen", "--fleet-secret", secret.to_str().unwrap()]);
    let secret = secret.to_str().unwrap();
    let mut procs = Procs::default();

    let seed = free_addr(91);
    let data = rel.data_dir.to_str().unwrap();
    let seed_args = [
        "serve",
        "--data",
        data,
        "--listen",
        &seed.to_string(),
        "--no-discovery",
        "--fleet-secret",
        secret,
        "--trust",
        &rel.key,
    ];
    let s = procs.spawn(dir, "seed", &seed_args);
    wait_for_log(&mut procs, s, "listening on");
    // Past the handshake (two Hellos and the proofs are well under 2 KB), inside the data.
    let relay = start_relay(92, seed, Some(100_000));
    let out = tmp.sub("member").join("fw.img");
    let (relay_addr, listen) = (relay.addr.to_string(), free_addr(93).to_string());
    let mut args = vec!["fetch", rel.manifest_arg(), "--trust", &rel.key, "--out", out.to_str().unwrap()];
    args.extend(["--listen", &listen, "--peer", &relay_addr, "--no-discovery", "--fleet-secret", secret]);
    let f = procs.spawn(dir, "member", &args);
    let status = procs.wait(f);
    assert!(status.success(), "the fetch through the relay failed ({status}):\n{}", procs.stderr(f));
    assert_release(dir, &out, &rel);
    let recorded = relay.recorded.lock().unwrap().clone();
    assert!(recorded.len() as u64 >= 2 * MIB, "the relay carried the release: {} bytes", recorded.len());
    assert!(!leaks(&image, &recorded), "the relay saw the image in clear");
    let log = procs.stderr(f);
    assert!(log.contains("a frame failed authentication"), "the flipped byte was not caught:\n{log}");
    assert!(!log.contains("banned"), "the honest seed was banned for the relay's flip:\n{log}");

    // The control: the same relay without a fleet secret carries the image in clear.
    let plain_seed = free_addr(94);
    let s2 = procs.spawn(
        dir,
        "plain-seed",
        &["serve", "--data", data, "--listen", &plain_seed.to_string(), "--no-discovery", "--trust", &rel.key],
    );
    wait_for_log(&mut procs, s2, "listening on");
    let plain_relay = start_relay(95, plain_seed, None);
    let plain_out = tmp.sub("plain").join("fw.img");
    let (plain_relay_addr, plain_listen) = (plain_relay.addr.to_string(), free_addr(96).to_string());
    let mut args = vec!["fetch", rel.manifest_arg(), "--trust", &rel.key, "--out", plain_out.to_str().unwrap()];
    args.extend(["--listen", &plain_listen, "--peer", &plain_relay_addr, "--no-discovery"]);
    let p = procs.spawn(dir, "plain", &args);
    let status = procs.wait(p);
    assert!(status.success(), "{}", procs.stderr(p));
    assert!(leaks(&image, &plain_relay.recorded.lock().unwrap()), "the leak check cannot see a clear image");
}

/// An epoll batch can hold a listener event and then an event for a connection that the
/// accept evicted to make room: that event belongs to the old connection, not to the newcomer
/// now in its slot. Here four idle strangers fill a seed with 4 slots, the seed is stopped, a
/// newcomer connects and then every stranger half-closes (so the batch is: the listener, then
/// four FINs), and the seed resumes. The newcomer must get its Hello answered.
#[test]
fn an_event_for_an_evicted_connection_does_not_close_its_successor() {
    let tmp = TempDir::new("stale-event");
    let dir = tmp.path();
    let rel = make_release(dir, 256 * 1024, "64K", 0x5e);
    let mut procs = Procs::default();
    let seed = free_addr(104);
    let data = rel.data_dir.to_str().unwrap();
    let args = ["serve", "--data", data, "--listen", &seed.to_string(), "--no-discovery", "--trust", &rel.key];
    let mut args = args.to_vec();
    args.extend(["--max-peers", "4"]);
    let s = procs.spawn(dir, "seed", &args);
    wait_for_log(&mut procs, s, "listening on");
    let strangers: Vec<TcpStream> = (0..4).map(|_| connect_from(common::ip(105), seed).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300)); // all four accepted, on probation
    let pid = procs.list[s].child.id() as i32;
    // SAFETY: signalling a child we started and still own.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // The signal lands when the seed is next scheduled: wait until it has stopped.
    wait_until("the seed stops", || {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
    });
    let mut newcomer = connect_from(common::ip(106), seed).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    for s in &strangers {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    std::thread::sleep(Duration::from_millis(300));
    let swarm = rel.signed.swarm_id;
    newcomer.set_read_timeout(Some(PATIENCE)).unwrap();
    send(&mut newcomer, &Message::Hello { version: VERSION, swarm, listen_port: 0, node: 0x5e, nonce: [5; 16] })
        .expect("the newcomer's connection is open");
    let mut buf = Vec::new();
    let hello = read_until(&mut newcomer, &mut buf, |msg| matches!(msg, Message::Hello { .. }).then_some(()));
    assert!(hello.is_ok(), "the newcomer was dropped: {hello:?}\n{}", procs.stderr(s));
    drop(strangers);
}
