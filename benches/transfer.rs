//! `cargo bench --bench transfer`: the release binary on loopback, each figure printed as a ratio
//! against a reference measured in the same run.
//!
//! 1. Throughput of one `flotilla fetch` (127.0.0.2) from one `flotilla serve` (127.0.0.1), every
//!    chunk verified, against a plain TCP copy of the same file between two threads of this
//!    process (64 KiB reads and writes, fsync at the end). Median of 3 runs each.
//!    A one-chunk fetch is timed too, to show the fixed cost (start-up, connect, exit) apart.
//! 2. Peak RSS of the fetching process for a small and a big release (largest of 3 runs each):
//!    it must not grow with the file size. Read as VmHWM from `/proc/PID/status`, polled every
//!    millisecond until the process is reaped. (`wait4`'s `ru_maxrss` is not used for this: a
//!    child started with vfork/posix_spawn inherits the parent's high-water mark at exec, so it
//!    would report this bench's own RSS, about 3 MiB.)
//! 3. CPU time (user + sys, from `wait4`) of the big fetch against `openssl dgst -sha256` of the
//!    same file, median of 3 each; and the seed's CPU while it uploads that release (from
//!    `/proc/PID/stat` before and after, so its start-up hashing is left out), against the same.
//!
//! `FLOTILLA_BENCH_FLEET=1` runs every seed and fetch with a fleet secret (`keygen
//! --fleet-secret`), so every frame is sealed with ChaCha20-Poly1305: the same figures, against
//! the same references, show what encryption costs.
//!
//! Sizes: `FLOTILLA_BENCH_MIB` (default 256) for the throughput release, `FLOTILLA_BENCH_BIG_MIB`
//! (default 1024) for the big RSS/CPU release; the small one is 64 MiB. Files are pseudo-random,
//! generated in a temporary directory that is removed at the end, also on failure.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const SMALL_MIB: u64 = 64;
const RUNS: usize = 3;
const CHUNK_SIZE: &str = "256K";
const COPY_BUF: usize = 64 * 1024;

type Res<T> = Result<T, String>;

fn main() {
    let started = Instant::now();
    let mut bench = match Bench::new() {
        Ok(b) => b,
        Err(e) => fail(&e),
    };
    let result = bench.run();
    drop(bench);
    match result {
        Ok(summary) => {
            println!("\n{summary}");
            println!("  (bench wall time {:.1} s)", started.elapsed().as_secs_f64());
        }
        Err(e) => fail(&e),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("transfer bench failed: {msg}");
    std::process::exit(1)
}

fn env_mib(name: &str, default: u64) -> Res<u64> {
    match std::env::var(name) {
        Ok(v) => {
            v.trim().parse::<u64>().ok().filter(|&n| n >= 1).ok_or_else(|| format!("{name}={v:?} is not a MiB count"))
        }
        Err(_) => Ok(default),
    }
}

/// The binary under test: the one cargo built for this bench (the bench profile inherits
/// release, and cargo writes the same `target/release/flotilla`), else the one next to this
/// bench's executable.
fn flotilla_binary() -> Res<PathBuf> {
    if let Some(p) = option_env!("CARGO_BIN_EXE_flotilla") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
    }
    let me = std::env::current_exe().map_err(|e| format!("cannot find the bench executable: {e}"))?;
    // .../target/release/deps/transfer-HASH -> .../target/release/flotilla
    let candidate = me.parent().and_then(Path::parent).map(|d| d.join("flotilla"));
    match candidate {
        Some(p) if p.is_file() => Ok(p),
        _ => Err("cannot find target/release/flotilla: run `cargo build --release` first".into()),
    }
}

/// What one finished child process cost.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    wall: Duration,
    user: f64,
    sys: f64,
    /// Largest VmHWM seen, bytes.
    peak_rss: u64,
    /// Largest RssAnon seen, bytes: the private part, without shared libc and binary pages.
    peak_anon: u64,
}

impl Usage {
    fn cpu(&self) -> f64 {
        self.user + self.sys
    }
}

/// A running `flotilla serve`.
struct Seed {
    pid: i32,
    addr: SocketAddr,
    log: PathBuf,
}

/// Owns the temporary directory and the seeds, and removes/kills them however the bench ends.
struct Bench {
    bin: PathBuf,
    dir: PathBuf,
    pubkey: String,
    seeds: Vec<Seed>,
    mib: u64,
    big_mib: u64,
    /// The fleet secret file every agent is given, with `FLOTILLA_BENCH_FLEET=1`.
    fleet: Option<PathBuf>,
}

impl Drop for Bench {
    fn drop(&mut self) {
        for s in self.seeds.drain(..) {
            // SAFETY: signalling and reaping a child we started and have not reaped yet.
            unsafe {
                libc::kill(s.pid, libc::SIGKILL);
                libc::waitpid(s.pid, std::ptr::null_mut(), 0);
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Bench {
    fn new() -> Res<Bench> {
        let mib = env_mib("FLOTILLA_BENCH_MIB", 256)?;
        let big_mib = env_mib("FLOTILLA_BENCH_BIG_MIB", 1024)?;
        let bin = flotilla_binary()?;
        let dir = std::env::temp_dir().join(format!("flotilla-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let fleet = std::env::var("FLOTILLA_BENCH_FLEET").is_ok_and(|v| v == "1").then(|| dir.join("fleet.secret"));
        Ok(Bench { bin, dir, pubkey: String::new(), seeds: Vec::new(), mib, big_mib, fleet })
    }

    fn run(&mut self) -> Res<String> {
        println!("flotilla bench: binary {}", self.bin.display());
        println!("  work dir {}", self.dir.display());
        let key = self.dir.join("bench.key");
        self.pubkey = output(Command::new(&self.bin).arg("keygen").arg("--secret").arg(&key))?.trim().to_owned();
        if let Some(fleet) = &self.fleet {
            output(Command::new(&self.bin).arg("keygen").arg("--fleet-secret").arg(fleet))?;
            println!("  every agent holds a fleet secret: every frame sealed (ChaCha20-Poly1305)");
        }

        // Every release lives in its seed's --data directory; fetches go to `out/`.
        let seed_a = self.dir.join("seed-a");
        let seed_b = self.dir.join("seed-b");
        let out = self.dir.join("out");
        for d in [&seed_a, &seed_b, &out] {
            fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        let t = Instant::now();
        let tiny = self.make_release(&seed_a, "tiny.img", 256 * 1024, 1, &key)?;
        let main = self.make_release(&seed_a, "main.img", self.mib * MIB, 2, &key)?;
        let small = self.make_release(&seed_b, "small.img", SMALL_MIB * MIB, 3, &key)?;
        let big = self.make_release(&seed_b, "big.img", self.big_mib * MIB, 4, &key)?;
        println!(
            "  generated and published {} MiB in {:.1} s",
            self.mib + SMALL_MIB + self.big_mib,
            t.elapsed().as_secs_f64()
        );

        // 1. Throughput.
        let a = self.start_seed(&seed_a)?;
        let tiny_run = self.fetch(a, &tiny, &out)?;
        println!("  fixed cost: 256 KiB (one chunk) fetch takes {:.3} s", tiny_run.wall.as_secs_f64());
        let bytes = self.mib * MIB;
        let (mut fl, mut plain, mut fetch_runs) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..RUNS {
            let (pt, pcpu) = plain_copy(&main, &out.join("plain.img"))?;
            plain.push(mbps(bytes, pt));
            let seed_cpu0 = proc_cpu(self.seeds[a].pid);
            let u = self.fetch(a, &main, &out)?;
            let seed_cpu = proc_cpu(self.seeds[a].pid) - seed_cpu0;
            fl.push(mbps(bytes, u.wall));
            println!(
                "  run {}: plain {:.3} s ({:.0} MB/s, cpu {:.2} s) | flotilla {:.3} s ({:.0} MB/s), fetch cpu {:.2} s \
                 (user {:.2} sys {:.2}), seed cpu {:.2} s, fetch peak RSS {}",
                i + 1,
                pt.as_secs_f64(),
                mbps(bytes, pt),
                pcpu,
                u.wall.as_secs_f64(),
                mbps(bytes, u.wall),
                u.cpu(),
                u.user,
                u.sys,
                seed_cpu,
                fmt_mib(u.peak_rss)
            );
            fetch_runs.push(u);
        }
        let (fl_med, plain_med) = (median(&fl), median(&plain));
        let med_wall = bytes as f64 / 1e6 / fl_med;
        let net = mbps(bytes, Duration::from_secs_f64((med_wall - tiny_run.wall.as_secs_f64()).max(1e-3)));
        let seed_a_rss = self.stop_seed(a)?;

        // 2. and 3. RSS against file size, CPU against openssl.
        let b = self.start_seed(&seed_b)?;
        // Peak RSS is the largest of the runs; CPU is the run with the median CPU time.
        let (mut smalls, mut bigs, mut openssls, mut serves) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..RUNS {
            let sm = self.fetch(b, &small, &out)?;
            let seed_cpu0 = proc_cpu(self.seeds[b].pid);
            let bg = self.fetch(b, &big, &out)?;
            serves.push(proc_cpu(self.seeds[b].pid) - seed_cpu0);
            let mut dgst = Command::new("openssl");
            dgst.arg("dgst").arg("-sha256").arg(&big);
            let o = run_measured(&mut dgst, None, Duration::from_secs(600)).ok();
            println!(
                "  run {}: fetch {} MiB peak RSS {} | fetch {} MiB peak RSS {}, {:.2} s wall, cpu {:.2} s \
                 (user {:.2} sys {:.2}), seed cpu {:.2} s | openssl cpu {}",
                i + 1,
                SMALL_MIB,
                fmt_mib(sm.peak_rss),
                self.big_mib,
                fmt_mib(bg.peak_rss),
                bg.wall.as_secs_f64(),
                bg.cpu(),
                bg.user,
                bg.sys,
                serves[i],
                o.map_or("-".into(), |o| format!("{:.2} s", o.cpu()))
            );
            smalls.push(sm);
            bigs.push(bg);
            openssls.extend(o);
        }
        let seed_b_rss = self.stop_seed(b)?;
        let small_run = peak_of(&smalls);
        let big_run =
            Usage { peak_rss: peak_of(&bigs).peak_rss, peak_anon: peak_of(&bigs).peak_anon, ..median_cpu(&bigs) };
        let openssl = (!openssls.is_empty()).then(|| median_cpu(&openssls));

        let mut s = String::from("flotilla bench (same run references):\n");
        s += &format!(
            "  throughput {} MiB one loopback link: flotilla {:.0} MB/s, plain TCP copy {:.0} MB/s -> {:.2}x\n",
            self.mib,
            fl_med,
            plain_med,
            fl_med / plain_med
        );
        s += &format!(
            "    (fetch start to exit incl. a {:.2} s fixed cost measured on a one-chunk release; \
             without it {:.0} MB/s -> {:.2}x)\n",
            tiny_run.wall.as_secs_f64(),
            net,
            net / plain_med
        );
        s += &format!(
            "  peak RSS fetch: {} MiB {}, {} MiB {} -> {:.2}x (private/anon part: {} and {})\n",
            SMALL_MIB,
            fmt_mib(small_run.peak_rss),
            self.big_mib,
            fmt_mib(big_run.peak_rss),
            big_run.peak_rss as f64 / small_run.peak_rss.max(1) as f64,
            fmt_mib(small_run.peak_anon),
            fmt_mib(big_run.peak_anon)
        );
        s += &format!(
            "  peak RSS seed: serving {} MiB {}, serving {} + {} MiB {}\n",
            self.mib,
            fmt_mib(seed_a_rss),
            SMALL_MIB,
            self.big_mib,
            fmt_mib(seed_b_rss)
        );
        // The seed's CPU while it uploads the big release (its start-up hashing excluded).
        serves.sort_by(f64::total_cmp);
        let serve_cpu = serves[serves.len() / 2];
        match openssl {
            Some(o) => {
                s += &format!(
                    "  CPU fetch {} MiB: {:.2} s (user {:.2} sys {:.2}) vs openssl dgst -sha256 {:.2} s -> {:.2}x\n",
                    self.big_mib,
                    big_run.cpu(),
                    big_run.user,
                    big_run.sys,
                    o.cpu(),
                    big_run.cpu() / o.cpu().max(1e-3)
                );
                s += &format!(
                    "  CPU serve, uploading {} MiB: {:.2} s (median of {RUNS}) vs openssl {:.2} s -> {:.2}x\n",
                    self.big_mib,
                    serve_cpu,
                    o.cpu(),
                    serve_cpu / o.cpu().max(1e-3)
                )
            }
            None => {
                s += &format!(
                    "  CPU fetch {} MiB: {:.2} s (openssl not found: no reference)\n",
                    self.big_mib,
                    big_run.cpu()
                )
            }
        }
        let cpu_share: Vec<String> =
            fetch_runs.iter().map(|u| format!("{:.0}%", 100.0 * u.cpu() / u.wall.as_secs_f64())).collect();
        s += &format!(
            "  fetch CPU/wall, {} MiB runs: {}; {} MiB run: {:.2} s cpu in {:.2} s wall",
            self.mib,
            cpu_share.join(" "),
            self.big_mib,
            big_run.cpu(),
            big_run.wall.as_secs_f64()
        );
        Ok(s)
    }

    /// `--fleet-secret FILE` when the bench runs with a fleet secret, else nothing.
    fn fleet_args(&self) -> Vec<std::ffi::OsString> {
        match &self.fleet {
            Some(f) => vec!["--fleet-secret".into(), f.into()],
            None => Vec::new(),
        }
    }

    /// Writes `size` pseudo-random bytes to `dir/name`, synced so that its writeback does not
    /// run during the measurements, and publishes it beside itself; returns the file's path.
    fn make_release(&self, dir: &Path, name: &str, size: u64, seed: u64, key: &Path) -> Res<PathBuf> {
        let path = dir.join(name);
        fill_random(&path, size, seed).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("publish").arg(&path).arg("--secret").arg(key).args(["--chunk-size", CHUNK_SIZE]);
        output(&mut cmd)?;
        Ok(path)
    }

    /// Starts `flotilla serve` on a free 127.0.0.1 port and waits until it accepts connections
    /// (it hashes every release before it listens).
    fn start_seed(&mut self, data: &Path) -> Res<usize> {
        let addr = free_port("127.0.0.1")?;
        let log = data.with_extension("log");
        let err = File::create(&log).map_err(|e| e.to_string())?;
        let child = Command::new(&self.bin)
            .arg("serve")
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--trust")
            .arg(&self.pubkey)
            .args(self.fleet_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start flotilla serve: {e}"))?;
        let pid = child.id() as i32;
        self.seeds.push(Seed { pid, addr, log: log.clone() });
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(self.seeds.len() - 1);
            }
            if reap(pid, false).is_some() {
                self.seeds.pop();
                return Err(format!("flotilla serve exited early: {}", tail(&log)));
            }
            if Instant::now() > deadline {
                return Err(format!("flotilla serve not listening on {addr} after 120 s: {}", tail(&log)));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops a seed; returns its peak RSS (read while it still runs).
    fn stop_seed(&mut self, i: usize) -> Res<u64> {
        let s = &self.seeds[i];
        let rss = proc_rss(s.pid).map(|r| r.0).ok_or_else(|| format!("flotilla serve died: {}", tail(&s.log)))?;
        // SAFETY: signalling a child we started and have not reaped yet.
        unsafe { libc::kill(s.pid, libc::SIGTERM) };
        reap(s.pid, true);
        self.seeds.remove(i);
        Ok(rss)
    }

    /// One `flotilla fetch` of `release` from seed `i` into `out/`, checked and then removed.
    fn fetch(&self, i: usize, release: &Path, out: &Path) -> Res<Usage> {
        let name = release.file_name().and_then(|n| n.to_str()).unwrap_or("release");
        let dest = out.join(name);
        let manifest = PathBuf::from(format!("{}.flotilla", release.display()));
        let log = out.join(format!("{name}.log"));
        let mut cmd = Command::new(&self.bin);
        cmd.arg("fetch")
            .arg(&manifest)
            .arg("--trust")
            .arg(&self.pubkey)
            .arg("--out")
            .arg(&dest)
            .args(["--listen", "127.0.0.2:0", "--peer"])
            .arg(self.seeds[i].addr.to_string())
            .args(["--seed-for", "0"])
            .args(self.fleet_args());
        // Generous: 10 MB/s plus a minute. A fetch that has not finished by then is stuck.
        let size = fs::metadata(release).map(|m| m.len()).unwrap_or(0);
        let u = run_measured(&mut cmd, Some(&log), Duration::from_secs(60 + size / 10_000_000))?;
        let got = fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
        let want = fs::metadata(release).map(|m| m.len()).unwrap_or(u64::MAX);
        if got != want {
            return Err(format!("fetch of {name} left {got} bytes, expected {want}: {}", tail(&log)));
        }
        for suffix in ["", ".part", ".state", ".state.tmp"] {
            let _ = fs::remove_file(format!("{}{suffix}", dest.display()));
        }
        Ok(u)
    }
}

/// Runs a command to completion, polling its VmHWM every millisecond; CPU times come from
/// `wait4`. Fails unless it exits 0 within `limit` (it is killed then).
fn run_measured(cmd: &mut Command, log: Option<&Path>, limit: Duration) -> Res<Usage> {
    let err = match log {
        Some(p) => Stdio::from(File::create(p).map_err(|e| e.to_string())?),
        None => Stdio::null(),
    };
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    let pid = child.id() as i32;
    let (mut peak, mut peak_anon) = (0, 0);
    let (status, ru) = loop {
        if let Some((hwm, anon)) = proc_rss(pid) {
            peak = peak.max(hwm);
            peak_anon = peak_anon.max(anon);
        }
        if let Some(done) = reap(pid, false) {
            break done;
        }
        if start.elapsed() > limit {
            // SAFETY: signalling and reaping a child we started and have not reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            reap(pid, true);
            let why = log.map(tail).unwrap_or_default();
            return Err(format!("{:?} still running after {} s, killed: {why}", cmd.get_program(), limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let wall = start.elapsed();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let why = log.map(tail).unwrap_or_default();
        return Err(format!("{:?} failed (wait status {status:#x}): {why}", cmd.get_program()));
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Usage { wall, user: secs(ru.ru_utime), sys: secs(ru.ru_stime), peak_rss: peak, peak_anon })
}

/// Reaps `pid` if it has exited (or waits for it when `block`), with its wait status and rusage.
fn reap(pid: i32, block: bool) -> Option<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for a child of ours.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let flags = if block { 0 } else { libc::WNOHANG };
    // SAFETY: as above; `status` and `ru` outlive the call.
    let r = unsafe { libc::wait4(pid, &mut status, flags, &mut ru) };
    (r == pid).then_some((status, ru))
}

/// VmHWM and RssAnon of a live process, in bytes.
fn proc_rss(pid: i32) -> Option<(u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        let line = s.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
    };
    Some((field("VmHWM:")?, field("RssAnon:").unwrap_or(0)))
}

/// User + system CPU seconds a live process has used so far.
fn proc_cpu(pid: i32) -> f64 {
    let Ok(s) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// CPU seconds the calling thread has used.
fn thread_cpu() -> f64 {
    // SAFETY: rusage is plain data, filled by getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// The reference: `src` sent over loopback TCP from one thread to another, which writes it to
/// `dst` and syncs it. Returns the wall time and the two threads' CPU seconds.
fn plain_copy(src: &Path, dst: &Path) -> Res<(Duration, f64)> {
    let listener = TcpListener::bind("127.0.0.2:0").map_err(|e| format!("plain copy: bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let dst_owned = dst.to_path_buf();
    let receiver = std::thread::spawn(move || -> io::Result<f64> {
        let (mut sock, _) = listener.accept()?;
        let mut f = File::create(&dst_owned)?;
        let mut buf = vec![0u8; COPY_BUF];
        loop {
            let n = sock.read(&mut buf)?;
            if n == 0 {
                break;
            }
            f.write_all(&buf[..n])?;
        }
        f.sync_all()?;
        Ok(thread_cpu())
    });
    let src_owned = src.to_path_buf();
    let sender = std::thread::spawn(move || -> io::Result<f64> {
        let mut sock = TcpStream::connect(addr)?;
        let mut f = File::open(&src_owned)?;
        let mut buf = vec![0u8; COPY_BUF];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sock.write_all(&buf[..n])?;
        }
        sock.shutdown(Shutdown::Write)?;
        Ok(thread_cpu())
    });
    let cpu_s =
        sender.join().map_err(|_| "plain copy sender panicked")?.map_err(|e| format!("plain copy send: {e}"))?;
    let cpu_r =
        receiver.join().map_err(|_| "plain copy receiver panicked")?.map_err(|e| format!("plain copy receive: {e}"))?;
    let wall = start.elapsed();
    let (got, want) = (fs::metadata(dst).map(|m| m.len()).ok(), fs::metadata(src).map(|m| m.len()).ok());
    if got != want {
        return Err(format!("plain copy wrote {got:?} bytes, expected {want:?}"));
    }
    let _ = fs::remove_file(dst);
    Ok((wall, cpu_s + cpu_r))
}

/// Writes `size` bytes from wyrand seeded with `seed`, then syncs.
fn fill_random(path: &Path, size: u64, seed: u64) -> io::Result<()> {
    let mut f = File::create(path)?;
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            state = state.wrapping_add(0xa076_1d64_78bd_642f);
            let t = u128::from(state) * u128::from(state ^ 0xe703_7ed1_a0b4_28db);
            w.copy_from_slice(&((t >> 64) as u64 ^ t as u64).to_le_bytes());
        }
        let n = left.min(MIB) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

/// Runs a short command that must succeed; returns its stdout.
fn output(cmd: &mut Command) -> Res<String> {
    let o = cmd.output().map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if !o.status.success() {
        return Err(format!(
            "{:?} failed: {}",
            cmd.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn free_port(ip: &str) -> Res<SocketAddr> {
    let l = TcpListener::bind((ip, 0)).map_err(|e| format!("cannot bind {ip}: {e}"))?;
    l.local_addr().map_err(|e| e.to_string())
}

/// The last lines of a log, for error messages.
fn tail(path: &Path) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    let t = lines[lines.len().saturating_sub(5)..].join(" | ");
    if t.is_empty() {
        "(no output)".into()
    } else {
        t
    }
}

fn mbps(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / 1e6 / t.as_secs_f64().max(1e-9)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// The largest peak RSS (and anon part) of several runs.
fn peak_of(runs: &[Usage]) -> Usage {
    let mut u = runs[0];
    for r in runs {
        u.peak_rss = u.peak_rss.max(r.peak_rss);
        u.peak_anon = u.peak_anon.max(r.peak_anon);
    }
    u
}

/// The run whose CPU time is the median.
fn median_cpu(runs: &[Usage]) -> Usage {
    let mut v = runs.to_vec();
    v.sort_by(|a, b| a.cpu().total_cmp(&b.cpu()));
    v[v.len() / 2]
}

fn fmt_mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / MIB as f64)
}
