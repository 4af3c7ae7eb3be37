//! Daemon tests: the real `flotilla` binary as a device runs it. The status socket while a fetch
//! runs, the install hook (`--on-complete`), and `serve` picking up a manifest dropped into its
//! `--data` directory.
//!
//! Each test owns its 127.0.0.x addresses (150 and up, apart from `tests/e2e.rs`), runs every
//! agent with `--no-discovery` so that no test hears another's announcements, and holds its
//! children in a [`Procs`] guard that kills and reaps them on every path. Conditions are polled
//! with a generous deadline rather than slept for.

use std::fs;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;
use common::*;

const MIB: usize = 1024 * 1024;

// Kept here: the daemon tests pass addresses as strings.
fn free_addr(x: u8) -> String {
    common::free_addr(x).to_string()
}

// Kept here: run by `Command::output` in `dir`, leaving no output files there, unlike common::run.
/// Runs a command to its end: (exit code, stdout, stderr).
fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla")).args(args).current_dir(dir).output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

// Kept here: on top of the local `run`.
fn run_ok(dir: &Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = run(dir, args);
    assert_eq!(code, 0, "flotilla {args:?} failed:\n{stderr}");
    stdout
}

// Kept here: a release named by the test, one key for several releases, no signed manifest.
/// A published release in `dir/seed/`: the file `NAME` and its manifest `NAME.flotilla`.
struct Release {
    key: String,
    data_dir: PathBuf,
    manifest: PathBuf,
    bytes: Vec<u8>,
}

/// `keygen` (once per directory), then `publish` `size` random bytes as `dir/seed/NAME`.
fn make_release(dir: &Path, name: &str, size: usize, seed: u64) -> Release {
    let secret = dir.join("operator.key");
    if !secret.exists() {
        run_ok(dir, &["keygen", "--secret", secret.to_str().unwrap()]);
    }
    let data_dir = dir.join("seed");
    fs::create_dir_all(&data_dir).unwrap();
    let file = data_dir.join(name);
    let bytes = random_bytes(size, seed);
    fs::write(&file, &bytes).unwrap();
    run_ok(dir, &["publish", file.to_str().unwrap(), "--secret", secret.to_str().unwrap(), "--chunk-size", "64K"]);
    let manifest = data_dir.join(format!("{name}.flotilla"));
    Release { key: public_key(dir, &manifest), data_dir, manifest, bytes }
}

/// The signer `inspect` prints: the operator's public key.
fn public_key(dir: &Path, manifest: &Path) -> String {
    let text = run_ok(dir, &["inspect", manifest.to_str().unwrap()]);
    let line = text.lines().find(|l| l.starts_with("signer:")).expect("inspect prints the signer");
    line["signer:".len()..].trim().to_owned()
}

// Kept here: takes the local `Release` and a string address.
/// `serve` of the seed's directory on `addr` with its upload capped at `rate`.
fn start_seed(procs: &mut Procs, dir: &Path, rel: &Release, addr: &str, rate: &str, extra: &[&str]) -> usize {
    let data = rel.data_dir.to_str().unwrap();
    let mut args = vec!["serve", "--data", data, "--listen", addr, "--no-discovery", "--trust", &rel.key];
    args.extend(["--max-upload-rate", rate]);
    args.extend(extra);
    let i = procs.spawn(dir, "seed", &args);
    procs.wait_for_log(i, "listening on");
    i
}

/// What `flotilla status PATH` prints, or `None` while nobody answers there.
fn status(dir: &Path, socket: &Path) -> Option<String> {
    let (code, stdout, stderr) = run(dir, &["status", socket.to_str().unwrap()]);
    match code {
        0 => Some(stdout),
        1 => None,
        _ => panic!("flotilla status exited {code}:\n{stderr}"),
    }
}

/// The value of `  key: value` in the block of release `name` of a status report.
fn field<'a>(report: &'a str, name: &str, key: &str) -> &'a str {
    let block = report
        .split("\n\n")
        .find(|b| b.starts_with(&format!("release: {name}\n")))
        .unwrap_or_else(|| panic!("no release {name} in:\n{report}"));
    let prefix = format!("  {key}: ");
    let line = block.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {key} in:\n{block}"));
    &line[prefix.len()..]
}

/// The percent of a `progress: H of T bytes (P%)` field.
fn percent(report: &str, name: &str) -> u32 {
    let p = field(report, name, "progress");
    let open = p.rfind('(').unwrap_or_else(|| panic!("no percent in {p:?}"));
    p[open + 1..p.len() - 2].parse().unwrap_or_else(|_| panic!("bad percent in {p:?}"))
}

/// A hook script that appends, per run, its argument count and arguments (`|`-separated) to
/// `log`. The test's hook command is `/bin/sh SCRIPT tag`: the agent appends the path, so a
/// correct run logs `2|tag|PATH`.
fn hook_script(dir: &Path, log: &Path) -> PathBuf {
    let script = dir.join("hook.sh");
    fs::write(&script, format!("printf '%s|%s|%s\\n' \"$#\" \"$1\" \"$2\" >> '{}'\n", log.display())).unwrap();
    script
}

fn hook_runs(log: &Path) -> Vec<String> {
    fs::read_to_string(log).unwrap_or_default().lines().map(str::to_owned).collect()
}

// ---------------------------------------------------------------------------------------------

/// While a fetch runs (from a seed capped at 1 MiB/s), `flotilla status` names the release,
/// shows a connected peer, a percent below 100 and a download rate; once done, complete. The
/// seed's own socket shows what it sent. Uses 127.0.0.150-151.
#[test]
fn status_while_a_fetch_runs() {
    let tmp = TempDir::new("status");
    let dir = tmp.path();
    let rel = make_release(dir, "fw.img", 6 * MIB + 4321, 0x150);
    let mut procs = Procs::in_dir();
    let (s, f) = (free_addr(150), free_addr(151));
    let seed_sock = dir.join("seed.sock");
    let seed = start_seed(&mut procs, dir, &rel, &s, "1M", &["--status", seed_sock.to_str().unwrap()]);

    let sock = dir.join("fetch.sock");
    let out = tmp.sub("fetcher").join("fw.img");
    let manifest = rel.manifest.to_str().unwrap();
    let args = ["fetch", manifest, "--trust", &rel.key, "--out", out.to_str().unwrap(), "--listen", &f];
    let mut args = args.to_vec();
    args.extend(["--peer", &s, "--no-discovery", "--seed-for", "120", "--status", sock.to_str().unwrap()]);
    let fetch = procs.spawn(dir, "fetch", &args);

    // Mid-way: connected, some bytes in, not all, and a rate measured over the last seconds.
    let mut during = String::new();
    wait_until("a status report showing the fetch under way", || {
        assert!(procs.running(fetch), "fetch exited:\n{}", procs.stderr(fetch));
        let Some(report) = status(dir, &sock) else { return false };
        let moving = !field(&report, "fw.img", "rate").ends_with("down 0 B/s");
        let ok = field(&report, "fw.img", "peers") != "0" && percent(&report, "fw.img") > 0 && moving;
        during = report;
        ok
    });
    eprintln!("during:\n{during}");
    assert!(percent(&during, "fw.img") < 100, "{during}");
    assert_eq!(field(&during, "fw.img", "complete"), "no", "{during}");
    assert_eq!(field(&during, "fw.img", "path"), out.to_str().unwrap());
    assert!(field(&during, "fw.img", "peers").parse::<u32>().unwrap() >= 1);
    assert!(during.starts_with("flotilla "), "{during}");
    assert!(during.contains(&format!("listening on {f}")), "{during}");

    procs.wait_for_log(fetch, "complete and verified");
    let after = status(dir, &sock).expect("the fetch still answers while it seeds");
    eprintln!("after:\n{after}");
    assert_eq!(field(&after, "fw.img", "complete"), "yes", "{after}");
    assert_eq!(percent(&after, "fw.img"), 100);
    let total = rel.bytes.len();
    assert_eq!(field(&after, "fw.img", "progress"), format!("{total} of {total} bytes (100%)"));
    assert_eq!(fs::read(&out).unwrap(), rel.bytes);

    let seeding = status(dir, &seed_sock).expect("the seed answers");
    assert_eq!(field(&seeding, "fw.img", "complete"), "yes", "{seeding}");
    assert!(!field(&seeding, "fw.img", "total").starts_with("up 0 B,"), "the seed sent nothing?\n{seeding}");
    assert!(procs.running(seed));
}

/// The status command and socket at the edges: nobody there is exit 1 with a message; a
/// regular file at the path is never clobbered; a socket left by a dead agent is replaced; a
/// live agent's socket is not taken over; the socket goes when a fetch exits. No TCP.
#[test]
fn status_socket_edges() {
    let tmp = TempDir::new("sockedge");
    let dir = tmp.path();
    let rel = make_release(dir, "fw.img", 100_000, 0x156);
    let data = rel.data_dir.to_str().unwrap();

    let sock = dir.join("agent.sock");
    let (code, _, stderr) = run(dir, &["status", sock.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no agent answers at") && stderr.contains("agent.sock"), "{stderr}");
    let (code, _, stderr) = run(dir, &["status"]);
    assert_eq!(code, 2, "status without a path is bad usage: {stderr}");

    // A regular file where the socket should go: refused, left as it was.
    let file = dir.join("precious.txt");
    fs::write(&file, "keep me").unwrap();
    let serve = |path: &Path| {
        let mut procs = Procs::in_dir();
        let args = [
            "serve",
            "--data",
            data,
            "--trust",
            &rel.key,
            "--no-listen",
            "--no-discovery",
            "--status",
            path.to_str().unwrap(),
        ];
        let i = procs.spawn(dir, "serve", &args);
        (procs, i)
    };
    let (mut procs, i) = serve(&file);
    let code = procs.wait(i).code();
    assert_eq!(code, Some(1), "{}", procs.stderr(i));
    assert!(procs.stderr(i).contains("not a socket"), "{}", procs.stderr(i));
    assert_eq!(fs::read_to_string(&file).unwrap(), "keep me");

    // A live socket is somebody else's.
    let live = UnixListener::bind(&sock).unwrap();
    let (mut procs, i) = serve(&sock);
    assert_eq!(procs.wait(i).code(), Some(1), "{}", procs.stderr(i));
    assert!(procs.stderr(i).contains("another agent is listening"), "{}", procs.stderr(i));
    drop(live);

    // Its owner gone, the socket file stays behind and is taken over.
    assert!(sock.exists());
    let (mut procs, i) = serve(&sock);
    procs.wait_for_log(i, "status on");
    let report = status(dir, &sock).expect("the agent answers on the replaced socket");
    assert!(report.contains(": 1 release, not listening"), "{report}");
    assert_eq!(field(&report, "fw.img", "complete"), "yes");
    assert_eq!(field(&report, "fw.img", "peers"), "0");
    drop(procs);

    // A fetch that finishes removes its socket (here: the release is whole at start).
    fs::remove_file(&sock).unwrap();
    let out = rel.data_dir.join("fw.img");
    let args = ["fetch", rel.manifest.to_str().unwrap(), "--trust", &rel.key, "--out", out.to_str().unwrap()];
    let mut args = args.to_vec();
    args.extend(["--no-listen", "--no-discovery", "--status", sock.to_str().unwrap()]);
    run_ok(dir, &args);
    assert!(!sock.exists(), "the fetch left its status socket behind");
}

/// `--on-complete` runs once, when the fetch completes, with the finished file's path as one
/// argument after the operator's own: a path with spaces, `;`, quotes and `$(...)` arrives
/// intact and runs nothing. The seed, complete at start, never runs its hook. The fetch waits
/// for the hook; a failing hook makes it exit 1. Uses 127.0.0.152-153.
#[test]
fn on_complete_hook_gets_the_path_once() {
    let tmp = TempDir::new("hook");
    let dir = tmp.path();
    let rel = make_release(dir, "fw.img", 2 * MIB + 99, 0x152);
    let log = dir.join("hook.log");
    let hook = format!("/bin/sh {} tag", hook_script(dir, &log).display());
    let mut procs = Procs::in_dir();
    let (s, f) = (free_addr(152), free_addr(153));
    start_seed(&mut procs, dir, &rel, &s, "4M", &["--on-complete", &hook]);

    let out = tmp.sub("out").join("my fw; touch INJECTED 'q\" $(touch INJECTED2).img");
    let out_s = out.to_str().unwrap();
    let manifest = rel.manifest.to_str().unwrap();
    let args = ["fetch", manifest, "--trust", &rel.key, "--out", out_s, "--listen", &f, "--peer", &s, "--no-discovery"];
    let mut with_hook = args.to_vec();
    with_hook.extend(["--on-complete", &hook]);
    let i = procs.spawn(dir, "fetch", &with_hook);
    let status = procs.wait(i);
    let stderr = procs.stderr(i);
    assert!(status.success(), "fetch failed ({status}):\n{stderr}");
    assert_eq!(fs::read(&out).unwrap(), rel.bytes);
    // fetch returned only after its hook finished, so the log is complete now.
    assert_eq!(hook_runs(&log), [format!("2|tag|{out_s}")], "the hook's arguments");
    assert!(stderr.contains("running the install hook"), "{stderr}");
    assert!(stderr.contains("install hook finished (exit status: 0)"), "{stderr}");
    for f in ["INJECTED", "INJECTED2"] {
        assert!(!dir.join(f).exists() && !tmp.path().join("out").join(f).exists(), "the path was run as a command");
    }

    // Already complete at start: no hook. Same for the seed, which has been up all along.
    run_ok(dir, &with_hook);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hook_runs(&log).len(), 1, "a hook ran for a release that was complete at start");

    // A hook that fails (or cannot start) makes fetch exit 1 after the release is in place.
    fs::remove_file(&out).unwrap();
    let mut failing = args.to_vec();
    failing.extend(["--on-complete", "/bin/false"]);
    let (code, _, stderr) = run(dir, &failing);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("install hook failed"), "{stderr}");
    assert_eq!(fs::read(&out).unwrap(), rel.bytes);

    // The failure is recorded with when and how, so the back-off holds across a restart: run at
    // once again, the fetch waits (here it is stopped while it waits) instead of running the
    // hook at once, as a supervisor restarting it in a loop would otherwise make it.
    let record = out.parent().unwrap().join(".flotilla-hooks");
    let line = fs::read_to_string(&record).unwrap();
    let fields: Vec<&str> = line.trim_end().split(' ').collect();
    assert_eq!((fields.len(), fields[3], fields[5]), (6, "1", "exit:1"), "{line:?}");
    let i = procs.spawn(dir, "fetch-again", &failing);
    procs.wait_for_log(i, "it failed 1 time(s), last exit:1; next try in");
    let stderr = procs.stderr(i);
    let wait: u64 = stderr.split("next try in ").nth(1).and_then(|t| t.split(' ').next()?.parse().ok()).unwrap();
    assert!((20..=30).contains(&wait), "a back-off of about 30 s from the failure: {wait} s\n{stderr}");
    procs.kill(i);
    assert!(!stderr.contains("running the install hook"), "{stderr}");
    // An hour later (the record's time moved back), the hook is due at once, and succeeds.
    let earlier: u64 = fields[4].parse::<u64>().unwrap() - 3600;
    fs::write(&record, line.replace(fields[4], &earlier.to_string())).unwrap();
    run_ok(dir, &with_hook);
    assert_eq!(hook_runs(&log).len(), 2, "the owed hook ran again, once");
    assert_eq!(fs::read_to_string(&record).unwrap(), "", "and is owed no more");
}

/// `serve --rescan 1` with an empty `--data`: a manifest dropped in later is fetched from the
/// peer, completed and handed to the hook once; a corrupt manifest, a second copy of the same
/// release and a release beyond `--max-releases` are each logged once, however many rescans
/// pass. Uses 127.0.0.154-155.
#[test]
fn rescan_picks_up_a_new_manifest() {
    let tmp = TempDir::new("rescan");
    let dir = tmp.path();
    let rel = make_release(dir, "fw.img", 3 * MIB + 5, 0x154);
    let other = make_release(dir, "other.img", 70_000, 0x155);
    let log = dir.join("hook.log");
    let hook = format!("/bin/sh {} tag", hook_script(dir, &log).display());
    let mut procs = Procs::in_dir();
    let (s, b) = (free_addr(154), free_addr(155));
    start_seed(&mut procs, dir, &rel, &s, "8M", &[]);

    let data = tmp.sub("device");
    let args = ["serve", "--data", data.to_str().unwrap(), "--listen", &b, "--peer", &s, "--no-discovery"];
    let mut args = args.to_vec();
    args.extend(["--trust", &rel.key, "--rescan", "1", "--max-releases", "1", "--on-complete", &hook]);
    let d = procs.spawn(dir, "device", &args);
    procs.wait_for_log(d, "listening on");
    assert!(procs.stderr(d).contains("nothing to serve"), "{}", procs.stderr(d));

    // Junk first: logged at the next rescan, then left alone.
    fs::write(data.join("junk.flotilla"), b"not a manifest").unwrap();
    procs.wait_for_log(d, "junk.flotilla");

    fs::copy(&rel.manifest, data.join("fw.img.flotilla")).unwrap();
    let out = data.join("fw.img");
    wait_until("the dropped-in release to complete", || {
        assert!(procs.running(d), "serve exited:\n{}", procs.stderr(d));
        out.exists()
    });
    assert_eq!(fs::read(&out).unwrap(), rel.bytes);
    wait_until("the install hook to run", || !hook_runs(&log).is_empty());

    // The same release under a second name, and a second release past the cap of one.
    fs::copy(&rel.manifest, data.join("copy.flotilla")).unwrap();
    fs::copy(&other.manifest, data.join("other.img.flotilla")).unwrap();
    procs.wait_for_log(d, "copy.flotilla: the same release as");
    procs.wait_for_log(d, "other.img.flotilla: already holding 1 releases");
    // Three more rescans: nothing is logged again, nothing else is added, the hook ran once.
    std::thread::sleep(Duration::from_millis(3500));
    let stderr = procs.stderr(d);
    eprintln!("{stderr}");
    for needle in ["junk.flotilla", "copy.flotilla", "other.img.flotilla"] {
        assert_eq!(stderr.matches(needle).count(), 1, "{needle} logged more than once:\n{stderr}");
    }
    assert_eq!(stderr.matches("serving fw.img #1").count(), 1, "{stderr}");
    assert!(stderr.contains("fw.img: complete and verified"), "{stderr}");
    assert_eq!(hook_runs(&log), [format!("2|tag|{}", out.display())]);
    assert!(!data.join("other.img.part").exists() && !data.join("copy.part").exists());
}

#[test]
fn serve_refuses_to_roll_back_to_an_older_release() {
    let tmp = TempDir::new("rollback");
    let dir = tmp.path();
    let secret = dir.join("operator.key");
    let current = make_release(dir, "fw.img", 300_000, 0x156);
    let newest = current.data_dir.join("fw.img");
    run_ok(dir, &["publish", newest.to_str().unwrap(), "--secret", secret.to_str().unwrap(), "--release", "7"]);
    // An older release of the same name, validly signed by the same operator, on another seed.
    let old_dir = tmp.sub("old");
    fs::create_dir_all(&old_dir).unwrap();
    fs::write(old_dir.join("fw.img"), random_bytes(250_000, 0x157)).unwrap();
    let old_file = old_dir.join("fw.img");
    run_ok(dir, &["publish", old_file.to_str().unwrap(), "--secret", secret.to_str().unwrap(), "--release", "5"]);

    let device = tmp.sub("device");
    fs::create_dir_all(&device).unwrap();
    fs::copy(&newest, device.join("fw.img")).unwrap();
    fs::copy(current.data_dir.join("fw.img.flotilla"), device.join("fw.img.flotilla")).unwrap();
    let mut procs = Procs::in_dir();
    let (old_seed, dev) = (free_addr(156), free_addr(157));
    let serve = |procs: &mut Procs, name: &str, data: &Path, listen: &str, extra: &[&str]| {
        let mut args = vec!["serve", "--data", data.to_str().unwrap(), "--listen", listen, "--no-discovery"];
        args.extend(["--trust", &current.key]);
        args.extend(extra);
        procs.spawn(dir, name, &args)
    };
    let first = serve(&mut procs, "device1", &device, &dev, &[]);
    procs.wait_for_log(first, "serving fw.img #7");
    procs.list[first].child.kill().unwrap();
    let _ = procs.list[first].child.wait();

    // The attack: the newer file gone, the older manifest in its place, a peer offering it.
    fs::remove_file(device.join("fw.img")).unwrap();
    fs::copy(old_dir.join("fw.img.flotilla"), device.join("fw.img.flotilla")).unwrap();
    let s = serve(&mut procs, "old-seed", &old_dir, &old_seed, &[]);
    procs.wait_for_log(s, "serving fw.img #5");
    let second = serve(&mut procs, "device2", &device, &dev, &["--peer", &old_seed, "--rescan", "1"]);
    procs.wait_for_log(second, "refusing release 5 of fw.img: release 7 was already accepted here (no rollback)");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(procs.running(second), "serve exited:\n{}", procs.stderr(second));
    assert!(!device.join("fw.img").exists(), "the older release was fetched");
    assert!(!device.join("fw.img.part").exists(), "a fetch of the older release began");
    let log = procs.stderr(second);
    assert_eq!(
        log.matches("release 7 was already accepted").count(),
        1,
        "refusal logged once, not every rescan:\n{log}"
    );
}

/// A read error while serving (here the file was cut short underneath the daemon) is logged,
/// sets that release aside, and the daemon keeps serving its other releases. Before the release
/// type owned every storage error, a failed read stopped the whole daemon. Uses 127.0.0.160-162.
#[test]
fn a_read_error_while_serving_sets_that_release_aside_and_the_daemon_serves_on() {
    let tmp = TempDir::new("read-error");
    let dir = tmp.path();
    let broken = make_release(dir, "fw.img", 2 * MIB, 0x160);
    let other = make_release(dir, "other.img", MIB + 7, 0x161);
    let mut procs = Procs::in_dir();
    let s = free_addr(160);
    let seed = start_seed(&mut procs, dir, &broken, &s, "64M", &[]);
    // Cut the served file short: the daemon hashed it whole at start, so only reads fail now.
    fs::OpenOptions::new().write(true).open(broken.data_dir.join("fw.img")).unwrap().set_len(1000).unwrap();

    let out = tmp.sub("fetch");
    let broken_out = out.join("fw.img");
    let (manifest, key) = (broken.manifest.to_str().unwrap(), broken.key.as_str());
    let a = free_addr(161);
    let args = ["fetch", manifest, "--trust", key, "--out", broken_out.to_str().unwrap(), "--peer", &s];
    let f = procs.spawn(dir, "fetch-broken", &[&args[..], &["--listen", &a, "--no-discovery"]].concat());
    procs.wait_for_log(seed, "pausing it for 30 s");
    assert!(procs.running(seed), "the daemon stopped:\n{}", procs.stderr(seed));
    assert!(procs.running(f), "the fetcher gave up instead of waiting:\n{}", procs.stderr(f));

    let other_out = out.join("other.img");
    let b = free_addr(162);
    let (manifest, out_path) = (other.manifest.to_str().unwrap(), other_out.to_str().unwrap());
    let args = ["fetch", manifest, "--trust", &other.key, "--out", out_path, "--peer", &s, "--listen", &b];
    run_ok(dir, &[&args[..], &["--no-discovery"]].concat());
    assert_eq!(fs::read(&other_out).unwrap(), other.bytes);
    assert!(procs.running(seed), "the daemon stopped:\n{}", procs.stderr(seed));
    let log = procs.stderr(seed);
    assert!(log.contains("fw.img: cannot read"), "the read error is not logged:\n{log}");
    assert!(!broken_out.exists(), "a release was completed from a broken source");
}

/// A `serve` device holding release 1 of `fw.img` whole is handed release 2's manifest, copied
/// over the old one as an operator would: it goes on serving #1 from `fw.img` while it fetches
/// #2 beside it, renames #2 over it once whole, retires #1 and runs the hook for #2. Then
/// release 3, and a kill in the middle (after #3 was recorded in the no-rollback history, so #2
/// can never be taken again) does not leave it with nothing: restarted, it resumes #3, renames
/// it over #2 and runs the hook once, for #3. Uses 127.0.0.163-165.
#[test]
fn serve_upgrades_a_name_it_holds_in_place_even_across_a_kill() {
    let tmp = TempDir::new("upgrade");
    let dir = tmp.path();
    let first = make_release(dir, "fw.img", 200_000, 0x163);
    let secret = dir.join("operator.key");
    let next = |n: u64, size: usize| {
        let seed = tmp.sub(&format!("seed{n}"));
        fs::create_dir_all(&seed).unwrap();
        let bytes = random_bytes(size, 0x163 + n);
        fs::write(seed.join("fw.img"), &bytes).unwrap();
        let file = seed.join("fw.img");
        let (file, secret, n) = (file.to_str().unwrap(), secret.to_str().unwrap(), n.to_string());
        run_ok(dir, &["publish", file, "--secret", secret, "--release", &n, "--chunk-size", "64K"]);
        (seed, bytes)
    };
    let ((seed2, second), (seed3, third)) = (next(2, 300_000), next(3, 700_000));

    let device = tmp.sub("device");
    fs::create_dir_all(&device).unwrap();
    fs::copy(first.data_dir.join("fw.img"), device.join("fw.img")).unwrap();
    fs::copy(&first.manifest, device.join("fw.img.flotilla")).unwrap();
    let log = dir.join("hook.log");
    let hook = format!("/bin/sh {} tag", hook_script(dir, &log).display());
    let (s2, s3, d) = (free_addr(163), free_addr(165), free_addr(164));
    let mut procs = Procs::in_dir();
    let args = ["serve", "--data", device.to_str().unwrap(), "--listen", &d, "--no-discovery"];
    let mut args = args.to_vec();
    args.extend(["--peer", &s2, "--peer", &s3]);
    args.extend(["--trust", &first.key, "--rescan", "1", "--max-releases", "1", "--on-complete", &hook]);
    let dev = procs.spawn(dir, "device", &args);
    procs.wait_for_log(dev, "serving fw.img #1");
    let hook_line = format!("2|tag|{}", device.join("fw.img").display());

    // Release 2, uninterrupted: #1 is served until #2 is whole, then retired.
    let seed = |procs: &mut Procs, data: &Path, listen: &str, rate: &str| {
        let seed_args = ["serve", "--data", data.to_str().unwrap(), "--listen", listen, "--no-discovery"];
        let i =
            procs.spawn(dir, "seed", &[&seed_args[..], &["--trust", &first.key, "--max-upload-rate", rate]].concat());
        procs.wait_for_log(i, "listening on");
    };
    seed(&mut procs, &seed2, &s2, "8M");
    fs::copy(seed2.join("fw.img.flotilla"), device.join("fw.img.flotilla")).unwrap();
    procs.wait_for_log(dev, "fw.img #1: replaced by a newer release");
    assert_eq!(fs::read(device.join("fw.img")).unwrap(), second);
    wait_until("the install hook to run for #2", || !hook_runs(&log).is_empty());
    assert_eq!(hook_runs(&log), std::slice::from_ref(&hook_line));

    // Release 3 from a seed slow enough (256 KiB/s) to kill the device in the middle.
    seed(&mut procs, &seed3, &s3, "256K");
    fs::copy(seed3.join("fw.img.flotilla"), device.join("fw.img.flotilla")).unwrap();
    procs.wait_for_log(dev, "fetching release 3");
    wait_until("part of release 3 to arrive", || fs::metadata(device.join("fw.img.state")).is_ok_and(|m| m.len() > 0));
    procs.kill(dev);
    assert_eq!(fs::read(device.join("fw.img")).unwrap(), second, "release 2 stays whole until 3 is");
    assert_eq!(fs::read_to_string(device.join(".flotilla-history")).unwrap(), "fw.img 3\n");

    let again = procs.spawn(dir, "device-again", &args);
    procs.wait_for_log(again, "serving fw.img #3");
    wait_until("release 3 to replace release 2", || {
        assert!(procs.running(again), "serve exited:\n{}", procs.stderr(again));
        fs::read(device.join("fw.img")).is_ok_and(|b| b == third)
    });
    wait_until("the install hook to run for #3", || hook_runs(&log).len() >= 2);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(hook_runs(&log), [hook_line.clone(), hook_line], "once for #2, once for #3");
    assert!(!device.join("fw.img.part").exists() && !device.join("fw.img.state").exists());
    assert!(procs.running(again), "{}", procs.stderr(again));
}

/// `serve` fetching release 1 of `fw.img` (slowly) is handed release 2: #1, incomplete, is
/// dropped at once and never completes nor runs its hook; #2 completes and its hook runs once.
/// Uses 127.0.0.166-168.
#[test]
fn an_incomplete_release_superseded_by_a_newer_one_never_completes() {
    let tmp = TempDir::new("supersede");
    let dir = tmp.path();
    let first = make_release(dir, "fw.img", 2 * MIB, 0x166);
    let secret = dir.join("operator.key");
    let seed2 = tmp.sub("seed2");
    fs::create_dir_all(&seed2).unwrap();
    let second = random_bytes(300_000, 0x167);
    let file = seed2.join("fw.img");
    fs::write(&file, &second).unwrap();
    let (f, s) = (file.to_str().unwrap(), secret.to_str().unwrap());
    run_ok(dir, &["publish", f, "--secret", s, "--release", "2", "--chunk-size", "64K"]);

    let mut procs = Procs::in_dir();
    let (s1, s2, d) = (free_addr(166), free_addr(167), free_addr(168));
    start_seed(&mut procs, dir, &first, &s1, "128K", &[]);
    let seed2_args = ["serve", "--data", seed2.to_str().unwrap(), "--listen", &s2, "--no-discovery"];
    let i = procs.spawn(dir, "seed2", &[&seed2_args[..], &["--trust", &first.key]].concat());
    procs.wait_for_log(i, "listening on");

    let device = tmp.sub("device");
    fs::create_dir_all(&device).unwrap();
    let log = dir.join("hook.log");
    let hook = format!("/bin/sh {} tag", hook_script(dir, &log).display());
    let args = ["serve", "--data", device.to_str().unwrap(), "--listen", &d, "--no-discovery", "--rescan", "1"];
    let mut args = args.to_vec();
    args.extend(["--peer", &s1, "--peer", &s2, "--trust", &first.key, "--on-complete", &hook]);
    let dev = procs.spawn(dir, "device", &args);
    procs.wait_for_log(dev, "listening on");
    fs::copy(&first.manifest, device.join("fw.img.flotilla")).unwrap();
    procs.wait_for_log(dev, "serving fw.img #1");
    wait_until("part of release 1 to arrive", || fs::metadata(device.join("fw.img.state")).is_ok_and(|m| m.len() > 0));
    fs::copy(seed2.join("fw.img.flotilla"), device.join("fw.img.flotilla")).unwrap();
    procs.wait_for_log(dev, "release 2 supersedes the incomplete #1, which is dropped");
    wait_until("release 2 to complete", || fs::read(device.join("fw.img")).is_ok_and(|b| b == second));
    wait_until("the install hook to run", || !hook_runs(&log).is_empty());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(hook_runs(&log), [format!("2|tag|{}", device.join("fw.img").display())], "once, for #2 only");
    let stderr = procs.stderr(dev);
    assert_eq!(stderr.matches("complete and verified").count(), 1, "#1 never completes:\n{stderr}");
    assert_eq!(fs::read_to_string(device.join(".flotilla-history")).unwrap(), "fw.img 2\n");
}
