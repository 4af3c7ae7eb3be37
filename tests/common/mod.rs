//! Helpers shared by the integration tests (tests/e2e.rs, liars.rs, crash.rs, daemon.rs).
//!
//! Each test file declares `mod common; use common::*;`. A file that needs a variant of a helper
//! defines it locally (a local item shadows the glob import) with a comment saying why.

// Every integration test file is compiled as its own crate and uses only some of these
// helpers, so the rest would warn as dead code in that crate.
#![allow(dead_code)]

use flotilla::core::manifest::SignedManifest;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long any one thing may take before the test gives up (a 2-core machine running every
/// test at once is slow; a hang is what this catches).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A fresh directory for one test, `flotilla-CRATE-TEST-PID` (CRATE: the test file's name);
/// removed at the end unless the test failed (kept to debug).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(test: &str) -> TempDir {
        let crate_name = env!("CARGO_CRATE_NAME");
        let dir = std::env::temp_dir().join(format!("flotilla-{crate_name}-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A subdirectory, created.
    pub fn sub(&self, name: &str) -> PathBuf {
        let d = self.0.join(name);
        fs::create_dir_all(&d).unwrap();
        d
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

pub fn ip(x: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, x)
}

/// A free port on 127.0.0.x: bound by the OS, then released for the agent to take.
pub fn free_addr(x: u8) -> SocketAddr {
    TcpListener::bind((ip(x), 0)).unwrap().local_addr().unwrap()
}

/// One child process with its output captured in files (read at any time, no pipe to drain).
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// Every child process of a test; dropping it kills and reaps them all.
#[derive(Default)]
pub struct Procs {
    pub list: Vec<Proc>,
    /// Run each child in the `dir` given to `spawn` (see [`Procs::in_dir`]) rather than in the
    /// test's own working directory.
    in_dir: bool,
}

impl Procs {
    /// A guard whose children run with their `dir` as the working directory.
    pub fn in_dir() -> Procs {
        Procs { list: Vec::new(), in_dir: true }
    }

    /// Starts `flotilla ARGS`, its stdout and stderr going to `dir/NAME.out` and `dir/NAME.err`.
    pub fn spawn(&mut self, dir: &Path, name: &str, args: &[&str]) -> usize {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
        cmd.args(args);
        if self.in_dir {
            cmd.current_dir(dir);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start flotilla for {name}: {e}"));
        self.list.push(Proc { name: name.to_owned(), child, stdout, stderr });
        self.list.len() - 1
    }

    /// Waits for process `i` to exit, failing the test after `PATIENCE`.
    pub fn wait(&mut self, i: usize) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.list[i].child.try_wait().unwrap() {
                return status;
            }
            let name = &self.list[i].name;
            assert!(Instant::now() < deadline, "{name} did not exit within {PATIENCE:?}:\n{}", self.stderr(i));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status of process `i` if it has exited.
    pub fn try_wait(&mut self, i: usize) -> Option<ExitStatus> {
        self.list[i].child.try_wait().unwrap()
    }

    /// True while process `i` has not exited.
    pub fn running(&mut self, i: usize) -> bool {
        self.try_wait(i).is_none()
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reap.
    pub fn kill(&mut self, i: usize) {
        let c = &mut self.list[i].child;
        let _ = c.kill();
        let _ = c.wait();
    }

    pub fn stdout(&self, i: usize) -> String {
        fs::read_to_string(&self.list[i].stdout).unwrap_or_default()
    }

    pub fn stderr(&self, i: usize) -> String {
        fs::read_to_string(&self.list[i].stderr).unwrap_or_default()
    }

    /// Waits until process `i` logs a line containing `needle` on stderr; fails early if it exits.
    pub fn wait_for_log(&mut self, i: usize, needle: &str) {
        wait_until(&format!("{:?} in the log of {}", needle, self.list[i].name), || {
            if self.stderr(i).contains(needle) {
                return true;
            }
            assert!(self.running(i), "{} exited early:\n{}", self.list[i].name, self.stderr(i));
            false
        });
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.list {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// What a short command did.
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command that should finish by itself (keygen, publish, verify, a refused fetch...).
pub fn run(dir: &Path, args: &[&str]) -> Outcome {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let name = format!("run{}", RUNS.fetch_add(1, Ordering::Relaxed));
    let mut procs = Procs::default();
    let i = procs.spawn(dir, &name, args);
    let status = procs.wait(i);
    let code = status.code().unwrap_or_else(|| panic!("flotilla {args:?} died by a signal: {status}"));
    Outcome { code, stdout: procs.stdout(i), stderr: procs.stderr(i) }
}

/// Runs a command that must succeed and returns its stdout.
pub fn run_ok(dir: &Path, args: &[&str]) -> String {
    let o = run(dir, args);
    assert_eq!(o.code, 0, "flotilla {args:?} failed:\n{}", o.stderr);
    o.stdout
}

/// Polls `cond` every 20 ms until it holds, failing the test with `what` after `PATIENCE`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {PATIENCE:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_for_file(path: &Path) {
    wait_until(&format!("{} to appear", path.display()), || path.exists());
}

/// Waits until process `i` logs a line containing `needle` on stderr; fails early if it exits.
pub fn wait_for_log(procs: &mut Procs, i: usize, needle: &str) {
    procs.wait_for_log(i, needle);
}

/// Deterministic pseudo-random bytes (the core's seeded generator), so a failure can be replayed.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    flotilla::core::rng::Rng::new(seed).bytes(len)
}

/// A published release: the file in a seed's data directory, its manifest beside it. Test
/// files add their own methods in `impl Release` blocks of their own.
pub struct Release {
    /// The operator's public key, 64 hex.
    pub key: String,
    /// The seed's `--data` directory, holding `fw.img` and `fw.img.flotilla`.
    pub data_dir: PathBuf,
    pub manifest: PathBuf,
    pub bytes: Vec<u8>,
    pub signed: SignedManifest,
}

impl Release {
    pub fn manifest_arg(&self) -> &str {
        self.manifest.to_str().unwrap()
    }
}

/// `keygen`, then `publish` a random file of `size` bytes with `chunk_size` into `dir/seed/`.
pub fn make_release(dir: &Path, size: usize, chunk_size: &str, seed: u64) -> Release {
    let secret = dir.join("operator.key");
    let key = run_ok(dir, &["keygen", "--secret", secret.to_str().unwrap()]).trim().to_owned();
    assert_eq!(key.len(), 64, "keygen prints the public key as 64 hex: {key:?}");
    let data_dir = dir.join("seed");
    fs::create_dir_all(&data_dir).unwrap();
    let file = data_dir.join("fw.img");
    let bytes = random_bytes(size, seed);
    fs::write(&file, &bytes).unwrap();
    let printed = run_ok(
        dir,
        &["publish", file.to_str().unwrap(), "--secret", secret.to_str().unwrap(), "--chunk-size", chunk_size],
    );
    let manifest = data_dir.join("fw.img.flotilla");
    let signed = SignedManifest::read_file(&manifest).unwrap();
    assert_eq!(printed.trim(), flotilla::core::manifest::to_hex(&signed.swarm_id), "publish prints the swarm id");
    assert_eq!(signed.manifest.file_size, size as u64);
    Release { key, data_dir, manifest, bytes, signed }
}

/// Starts `serve` for the release on `addr` (with `extra` arguments after the usual ones) and
/// waits until it listens.
pub fn start_seed(procs: &mut Procs, dir: &Path, rel: &Release, addr: SocketAddr, rate: &str, extra: &[&str]) -> usize {
    let addr = addr.to_string();
    let data = rel.data_dir.to_str().unwrap();
    let mut args = vec!["serve", "--data", data, "--listen", &addr, "--trust", &rel.key, "--max-upload-rate", rate];
    args.extend(extra);
    let i = procs.spawn(dir, "seed", &args);
    wait_for_log(procs, i, "listening on");
    i
}

/// `FILE` with a suffix appended to its name: the side files `fetch` keeps beside its output.
pub fn side(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Asserts that `out` holds exactly the release and that `verify` agrees.
pub fn assert_release(dir: &Path, out: &Path, rel: &Release) {
    let got = fs::read(out).unwrap_or_else(|e| panic!("cannot read {}: {e}", out.display()));
    assert!(got == rel.bytes, "{} differs from the published file", out.display());
    run_ok(dir, &["verify", rel.manifest_arg(), out.to_str().unwrap(), "--trust", &rel.key]);
    assert!(!side(out, ".part").exists(), "{}.part left behind", out.display());
    assert!(!side(out, ".state").exists(), "{}.state left behind", out.display());
}

/// nginx, as Debian ships it, run by a test with a config of its own; killed when dropped.
pub struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts nginx serving `root` on 127.0.0.`x` (a free port) with its files under `dir`, its
/// access log at `dir/access.log` in `log_format` (nginx's own `combined` if `None`); returns
/// it once it listens, with the port.
pub fn start_nginx(dir: &Path, root: &Path, x: u8, log_format: Option<&str>) -> (Nginx, u16) {
    let bin = Path::new("/usr/sbin/nginx");
    assert!(bin.exists(), "this test needs Debian's nginx: apt-get install nginx");
    let port = TcpListener::bind((ip(x), 0)).unwrap().local_addr().unwrap().port();
    let d = dir.display();
    let log = match log_format {
        Some(f) => format!("log_format test '{f}'; access_log {d}/access.log test;"),
        None => format!("access_log {d}/access.log;"),
    };
    let conf = dir.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "daemon off; master_process off; worker_processes 1; error_log {d}/error.log; pid {d}/nginx.pid;\n\
             events {{ worker_connections 64; }}\n\
             http {{ {log} client_body_temp_path {d}; proxy_temp_path {d};\n\
             fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen 127.0.0.{x}:{port}; root {}; }} }}\n",
            root.display()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .args(["-c", conf.to_str().unwrap(), "-p", dir.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let nginx = Nginx(child);
    wait_until("nginx to listen", || std::net::TcpStream::connect((ip(x), port)).is_ok());
    (nginx, port)
}

/// A TCP connection to `to` from source address `from` (bind before connect).
pub fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(to) = to else { panic!("IPv4 only") };
    let sin = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
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
        let stream = std::net::TcpStream::from_raw_fd(fd);
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
