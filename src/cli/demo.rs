//! `flotilla demo`: a seed and N peers, each its own process on its own 127.0.0.x address,
//! share a generated release; every copy is verified and the all-done time is printed beside
//! the time one server alone would need at the same upload rate.

use super::{runtime, usage, Failure};
use flotilla::agent::status::fixed;
use flotilla::core::manifest::{self, SecretKey, SignedManifest};
use flotilla::core::rng::Rng;
use lexopt::prelude::*;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HELP: &str = "\
Usage: flotilla demo [--peers N] [--size MIB] [--rate MIB_PER_S] [--chunk-size BYTES]

Starts a seed and N peers (default 8) on 127.0.0.1, 127.0.0.2, ... as separate processes,
shares a generated release (default 64 MiB) with every host's upload capped (default
16 MiB/s), checks every copy and prints the figures.
";

struct Options {
    peers: u32,
    size_mib: u64,
    rate_mib: u64,
    chunk_size: u32,
}

/// Kills the demo's processes and removes its files however the demo ends.
struct Cleanup {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn run(mut p: lexopt::Parser) -> Result<(), Failure> {
    let mut o = Options { peers: 8, size_mib: 64, rate_mib: 16, chunk_size: manifest::DEFAULT_CHUNK_SIZE };
    while let Some(arg) = p.next()? {
        match arg {
            Long("peers") => o.peers = p.value()?.parse::<u32>()?.clamp(1, 200),
            Long("size") => o.size_mib = p.value()?.parse::<u64>()?.clamp(1, 4096),
            Long("rate") => o.rate_mib = p.value()?.parse::<u64>()?.clamp(1, 100_000),
            Long("chunk-size") => o.chunk_size = p.value()?.parse()?,
            Short('h') | Long("help") => {
                print!("{HELP}");
                return Ok(());
            }
            a => return Err(a.unexpected().into()),
        }
    }
    let exe = std::env::current_exe().map_err(|e| runtime(format!("cannot find own executable: {e}")))?;
    let dir = std::env::temp_dir().join(format!("flotilla-demo-{}", std::process::id()));
    let mut cleanup = Cleanup { dir: dir.clone(), children: Vec::new() };
    let (m, key) = prepare(&dir, &o)?;
    let port = free_port()?;
    let rate = (o.rate_mib * 1024 * 1024).to_string();
    println!(
        "Flotilla demo: a seed and {} peers on 127.0.0.x:{port}, {} MiB release ({} chunks of {} KiB), \
         every host's upload capped at {} MiB/s",
        o.peers,
        o.size_mib,
        m.manifest.chunk_count(),
        o.chunk_size / 1024,
        o.rate_mib
    );
    let start = Instant::now();
    let seed_dir = dir.join("seed");
    let mut seed = Command::new(&exe);
    seed.args(["-q", "serve", "--data"]).arg(&seed_dir).args(["--trust", &key]);
    seed.args(["--listen", &format!("127.0.0.1:{port}"), "--max-upload-rate", &rate]);
    cleanup.children.push(spawn(seed)?);
    let mut outs = Vec::new();
    for i in 0..o.peers {
        let peer_dir = dir.join(format!("peer{}", i + 1));
        std::fs::create_dir_all(&peer_dir)
            .map_err(|e| runtime(format!("cannot create {}: {e}", peer_dir.display())))?;
        let out = peer_dir.join("fw.img");
        let mut c = Command::new(&exe);
        c.args(["-q", "fetch"]).arg(dir.join("fw.img.flotilla")).args(["--trust", &key]).arg("--out").arg(&out);
        c.args(["--listen", &host(i + 1, port).to_string(), "--max-upload-rate", &rate, "--seed-for", "3600"]);
        // Each peer knows only the seed; peer exchange meshes them.
        c.args(["--peer", &host(0, port).to_string()]);
        cleanup.children.push(spawn(c)?);
        outs.push(out);
    }
    let done = wait_for(&outs, &mut cleanup.children, start, Duration::from_secs(300))?;
    for (i, out) in outs.iter().enumerate() {
        m.verify_file(out).map_err(|e| runtime(format!("peer {}: {e}", i + 1)))?;
        println!(
            "  peer {:>2}  {:<14}  complete in {:>6} s  verified",
            i + 1,
            host(i as u32 + 1, port).ip(),
            fixed(done[i], 2)
        );
    }
    report(&o, &done);
    Ok(())
}

fn host(i: u32, port: u16) -> SocketAddr {
    let n = i + 1;
    SocketAddr::from(([127, 0, (n / 256) as u8, (n % 256) as u8], port))
}

fn report(o: &Options, done: &[f64]) {
    let all = done.iter().cloned().fold(0.0, f64::max);
    let n = o.peers as f64;
    let (f, u) = (o.size_mib as f64, o.rate_mib as f64);
    let client_server = n * f / u;
    // Kumar & Ross: the seed must send every byte once, and all N copies share N+1 uplinks.
    let bound = (f / u).max(n * f / (u * (n + 1.0)));
    println!("all {} peers complete and verified in {} s", o.peers, fixed(all, 2));
    println!(
        "one server alone at {} MiB/s would need {} s ({} x {} MiB / {} MiB/s): the swarm was {}x faster",
        o.rate_mib,
        fixed(client_server, 2),
        o.peers,
        o.size_mib,
        o.rate_mib,
        fixed(client_server / all, 1)
    );
    println!(
        "theoretical lower bound (Kumar & Ross) {} s: the swarm took {}x the bound",
        fixed(bound, 2),
        fixed(all / bound, 2)
    );
}

/// Writes the release, its key and its manifest into `dir`; returns the manifest and public key.
fn prepare(dir: &Path, o: &Options) -> Result<(SignedManifest, String), Failure> {
    let seed_dir = dir.join("seed");
    std::fs::create_dir_all(&seed_dir).map_err(|e| runtime(format!("cannot create {}: {e}", seed_dir.display())))?;
    let file = seed_dir.join("fw.img");
    write_random(&file, o.size_mib << 20).map_err(|e| runtime(format!("cannot write {}: {e}", file.display())))?;
    let key = SecretKey::generate()?;
    let m = SignedManifest::publish(&file, "fw.img", 1, o.chunk_size, &key).map_err(usage)?;
    for path in [seed_dir.join("fw.img.flotilla"), dir.join("fw.img.flotilla")] {
        std::fs::write(&path, &m.bytes).map_err(|e| runtime(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok((m, key.public().to_hex()))
}

/// Pseudo-random bytes from the core's generator, so the demo does not depend on a real image.
fn write_random(path: &Path, size: u64) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rng = Rng::new(std::process::id() as u64);
    let mut buf = [0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()
}

fn free_port() -> Result<u16, Failure> {
    let l = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| runtime(format!("cannot find a free port: {e}")))?;
    l.local_addr().map(|a| a.port()).map_err(|e| runtime(e.to_string()))
}

fn spawn(mut c: Command) -> Result<Child, Failure> {
    c.stdin(Stdio::null()).stdout(Stdio::null()).spawn().map_err(|e| runtime(format!("cannot start a peer: {e}")))
}

/// Waits until every output file exists (it appears only when whole and verified).
fn wait_for(outs: &[PathBuf], children: &mut [Child], start: Instant, limit: Duration) -> Result<Vec<f64>, Failure> {
    let mut done = vec![None; outs.len()];
    while done.iter().any(Option::is_none) {
        if start.elapsed() > limit {
            return Err(runtime(format!("demo did not finish within {} s", limit.as_secs())));
        }
        // The seed and the peers seed until killed: any exit is a failure.
        if let Some((i, status)) = children.iter_mut().enumerate().find_map(|(i, c)| Some((i, c.try_wait().ok()??))) {
            let who = if i == 0 { "the seed".to_string() } else { format!("peer {i}") };
            return Err(runtime(format!("{who} exited early ({status})")));
        }
        for (i, out) in outs.iter().enumerate() {
            if done[i].is_none() && out.exists() {
                done[i] = Some(start.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(done.into_iter().map(|d| d.unwrap_or(0.0)).collect())
}
