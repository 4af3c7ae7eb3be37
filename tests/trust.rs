//! Trust and local files (issue 10): what a device refuses to act on, and the files it will
//! not be tricked into writing. The real binary, on loopback addresses 127.0.0.110..=119.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

mod common;
use common::*;

/// Publishes `bytes` as release `number` of `name` with the key at `secret`, into `dir/name`
/// and `dir/name.flotilla`; returns the manifest's path.
fn publish(dir: &Path, secret: &Path, name: &str, number: u64, bytes: &[u8]) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let file = dir.join(name);
    fs::write(&file, bytes).unwrap();
    let n = number.to_string();
    run_ok(dir, &["publish", file.to_str().unwrap(), "--secret", secret.to_str().unwrap(), "--release", &n]);
    dir.join(format!("{name}.flotilla"))
}

fn keygen(dir: &Path) -> (PathBuf, String) {
    let secret = dir.join("operator.key");
    let key = run_ok(dir, &["keygen", "--secret", secret.to_str().unwrap()]).trim().to_owned();
    (secret, key)
}

#[test]
fn serve_refuses_to_start_without_a_trusted_key() {
    let tmp = TempDir::new("trust-serve");
    let rel = make_release(tmp.path(), 100_000, "16K", 1);
    let out = run(tmp.path(), &["serve", "--data", rel.data_dir.to_str().unwrap(), "--no-listen", "--no-discovery"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--trust"), "the error says what is missing: {}", out.stderr);
    let help = run_ok(tmp.path(), &["serve", "--help"]);
    assert!(help.contains("--trust is required"), "--help says so: {help}");
}

#[test]
fn a_renamed_manifest_lands_under_its_signed_name() {
    let tmp = TempDir::new("trust-rename");
    let dir = tmp.path();
    let (secret, key) = keygen(dir);
    let seed_dir = dir.join("seed");
    let bytes = random_bytes(300_000, 11);
    let manifest = publish(&seed_dir, &secret, "recovery.img", 1, &bytes);
    let mut procs = Procs::in_dir();
    let seed = free_addr(110).to_string();
    let s =
        procs.spawn(dir, "seed", &["serve", "--data", seed_dir.to_str().unwrap(), "--listen", &seed, "--trust", &key]);
    wait_for_log(&mut procs, s, "listening on");

    // The device is given the manifest under another name, as a planted or mistaken file is.
    let device = dir.join("device");
    fs::create_dir_all(&device).unwrap();
    fs::copy(&manifest, device.join("fw.img.flotilla")).unwrap();
    let listen = free_addr(111).to_string();
    let args = ["serve", "--data", device.to_str().unwrap(), "--listen", &listen, "--peer", &seed, "--trust", &key];
    let d = procs.spawn(dir, "device", &[&args[..], &["--no-discovery"]].concat());
    wait_for_file(&device.join("recovery.img"));
    assert_eq!(fs::read(device.join("recovery.img")).unwrap(), bytes);
    assert!(!device.join("fw.img").exists(), "nothing lands under the manifest's file name");
    assert!(procs.stderr(d).contains("signs the name recovery.img"), "{}", procs.stderr(d));
}

#[test]
fn fetch_keeps_a_history_and_refuses_to_roll_back() {
    let tmp = TempDir::new("trust-rollback");
    let dir = tmp.path();
    let (secret, key) = keygen(dir);
    let (old_bytes, new_bytes) = (random_bytes(50_000, 1), random_bytes(50_000, 2));
    let old = publish(&dir.join("r1"), &secret, "fw.img", 1, &old_bytes);
    let new = publish(&dir.join("r2"), &secret, "fw.img", 2, &new_bytes);
    let device = dir.join("device");
    fs::create_dir_all(&device).unwrap();
    let fetch = |manifest: &Path, out: &str, extra: &[&str]| {
        let out = device.join(out);
        let mut args = vec!["fetch", manifest.to_str().unwrap(), "--trust", &key, "--out", out.to_str().unwrap()];
        args.extend(["--no-listen", "--no-discovery"]);
        args.extend(extra);
        run(dir, &args)
    };
    // Release 2 is installed (its file is in place, so fetch completes at once and records it).
    fs::write(device.join("fw.img"), &new_bytes).unwrap();
    let got = fetch(&new, "fw.img", &[]);
    assert_eq!(got.code, 0, "{}", got.stderr);
    let history = fs::read_to_string(device.join(".flotilla-history")).unwrap();
    assert_eq!(history, "fw.img 2\n");

    // Release 1, validly signed, is refused, whatever file it is aimed at.
    let got = fetch(&old, "other.img", &[]);
    assert_eq!(got.code, 2, "{}", got.stderr);
    assert!(got.stderr.contains("no rollback") && got.stderr.contains("release 2"), "{}", got.stderr);
    assert!(!device.join("other.img.part").exists(), "a refused release writes nothing");

    // --state-dir moves the record; a fresh one there knows nothing yet, and one not made yet
    // is made, private (a new device's first start).
    let state = dir.join("state").join("flotilla");
    fs::write(device.join("fw.img.1"), &old_bytes).unwrap();
    let got = fetch(&old, "fw.img.1", &["--state-dir", state.to_str().unwrap()]);
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert_eq!(fs::read_to_string(state.join(".flotilla-history")).unwrap(), "fw.img 1\n");
    assert_eq!(fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);

    // A damaged record is an error that names it, never an empty record.
    fs::write(device.join(".flotilla-history"), "fw.img two\n").unwrap();
    let got = fetch(&old, "other.img", &[]);
    assert_eq!(got.code, 1, "{}", got.stderr);
    assert!(got.stderr.contains(".flotilla-history") && got.stderr.contains("damaged"), "{}", got.stderr);
}

#[test]
fn a_planted_symlink_is_never_written_through() {
    let tmp = TempDir::new("trust-symlink");
    let dir = tmp.path();
    let rel = make_release(dir, 400_000, "16K", 3);
    let shared = dir.join("shared");
    fs::create_dir_all(&shared).unwrap();
    let victim = dir.join("victim");
    fs::write(&victim, b"/etc/shadow stands in here").unwrap();
    let out = shared.join("fw.img");
    std::os::unix::fs::symlink(&victim, side(&out, ".part")).unwrap();
    let args = ["fetch", rel.manifest_arg(), "--trust", &rel.key, "--out", out.to_str().unwrap(), "--no-discovery"];
    let got = run(dir, &[&args[..], &["--no-listen"]].concat());
    assert_eq!(got.code, 1, "{}", got.stderr);
    assert!(got.stderr.contains("fw.img.part"), "the error names the file: {}", got.stderr);
    assert_eq!(fs::read(&victim).unwrap(), b"/etc/shadow stands in here", "the link's target is untouched");

    // A symlink at FILE.state is neither read nor written through: the fetch completes.
    fs::remove_file(side(&out, ".part")).unwrap();
    std::os::unix::fs::symlink(&victim, side(&out, ".state")).unwrap();
    let mut procs = Procs::in_dir();
    let seed = free_addr(112);
    start_seed(&mut procs, dir, &rel, seed, "0", &["--no-discovery"]);
    let seed = seed.to_string();
    let got = run(dir, &[&args[..], &["--peer", &seed, "--listen", &free_addr(113).to_string()]].concat());
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert_release(dir, &out, &rel);
    assert_eq!(fs::read(&victim).unwrap(), b"/etc/shadow stands in here", "the link's target is untouched");
}

#[test]
fn an_expired_manifest_is_refused_by_verify_fetch_and_serve() {
    let tmp = TempDir::new("trust-expired");
    let dir = tmp.path();
    let (secret, key) = keygen(dir);
    let data = dir.join("seed");
    fs::create_dir_all(&data).unwrap();
    let file = data.join("fw.img");
    fs::write(&file, random_bytes(40_000, 5)).unwrap();
    let (s, f) = (secret.to_str().unwrap(), file.to_str().unwrap());
    // publish refuses a time already past (every device would refuse the release)...
    let got = run(dir, &["publish", f, "--secret", s, "--expires", "2026-12-02T00:00:00Z"]);
    assert_eq!(got.code, 2, "{}", got.stderr);
    assert!(got.stderr.contains("already past"), "{}", got.stderr);
    // ...so the manifest expires 2 s from now, and the test waits that out. Past, but after the
    // clock floor, so the check is made and not deferred.
    let soon = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 2;
    let date =
        std::process::Command::new("date").args(["-u", "-d", &format!("@{soon}"), "+%Y-%m-%dT%H:%M:%SZ"]).output();
    let expiry = String::from_utf8(date.unwrap().stdout).unwrap().trim().to_owned();
    run_ok(dir, &["publish", f, "--secret", s, "--expires", &expiry]);
    let manifest = data.join("fw.img.flotilla");
    let m = manifest.to_str().unwrap();
    let shown = run_ok(dir, &["inspect", m]);
    assert!(shown.contains(&format!("expires:     {expiry}")), "{shown}");
    while std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() <= soon {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let got = run(dir, &["verify", m, f, "--trust", &key]);
    assert_eq!(got.code, 2, "{}", got.stderr);
    assert!(got.stderr.contains(&format!("manifest expired at {expiry}")), "{}", got.stderr);
    let out = dir.join("device").join("fw.img");
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let got = run(dir, &["fetch", m, "--trust", &key, "--out", out.to_str().unwrap(), "--no-listen", "--no-discovery"]);
    assert_eq!(got.code, 2, "{}", got.stderr);
    assert!(got.stderr.contains("manifest expired at"), "{}", got.stderr);
    assert!(!side(&out, ".part").exists(), "nothing was started");

    let mut procs = Procs::in_dir();
    let listen = free_addr(114).to_string();
    let i =
        procs.spawn(dir, "serve", &["serve", "--data", data.to_str().unwrap(), "--listen", &listen, "--trust", &key]);
    procs.wait_for_log(i, "listening on");
    let log = procs.stderr(i);
    assert!(log.contains(&format!("manifest expired at {expiry}")), "{log}");
    assert!(log.contains("nothing to serve"), "{log}");

    // A bad date is a usage error at publish, not a manifest that never expires.
    let got = run(dir, &["publish", f, "--secret", s, "--expires", "2027-06-31T00:00:00Z"]);
    assert_eq!(got.code, 2, "{}", got.stderr);
}

#[test]
fn a_release_for_other_hardware_is_refused_and_a_threshold_counts_signers() {
    let tmp = TempDir::new("trust-target");
    let dir = tmp.path();
    let (secret, key) = keygen(dir);
    let second = dir.join("second.key");
    let key2 = run_ok(dir, &["keygen", "--secret", second.to_str().unwrap()]).trim().to_owned();
    let data = dir.join("seed");
    fs::create_dir_all(&data).unwrap();
    let file = data.join("fw.img");
    fs::write(&file, random_bytes(40_000, 6)).unwrap();
    let (s, f) = (secret.to_str().unwrap(), file.to_str().unwrap());
    run_ok(dir, &["publish", f, "--secret", s, "--secret", second.to_str().unwrap(), "--target", "rpi4-arm64"]);
    let m = data.join("fw.img.flotilla");
    let m = m.to_str().unwrap();
    let shown = run_ok(dir, &["inspect", m]);
    assert!(shown.contains("targets:     rpi4-arm64"), "{shown}");
    assert_eq!(shown.matches("signer:").count(), 2, "{shown}");

    let verify = |extra: &[&str]| run(dir, &[&["verify", m, f, "--trust", &key][..], extra].concat());
    assert_eq!(verify(&["--target", "rpi4-arm64"]).code, 0);
    let got = verify(&["--target", "openwrt-ath79-generic"]);
    assert_eq!(got.code, 2, "{}", got.stderr);
    assert!(got.stderr.contains("release is for rpi4-arm64, not for this device"), "{}", got.stderr);
    let got = verify(&[]);
    assert_eq!(got.code, 2, "{}", got.stderr);
    assert!(got.stderr.contains("names no --target"), "{}", got.stderr);
    let out = dir.join("device").join("fw.img");
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let args = ["fetch", m, "--trust", &key, "--out", out.to_str().unwrap(), "--no-listen", "--no-discovery"];
    let got = run(dir, &[&args[..], &["--target", "x86-64"]].concat());
    assert_eq!(got.code, 2, "{}", got.stderr);
    assert!(got.stderr.contains("not for this device (x86-64)"), "{}", got.stderr);
    assert_eq!(verify(&["--target", "any"]).code, 0, "a seed or relay takes every target");

    // serve alike: another target is refused (logged, not served); `--target any` serves it.
    let mut procs = Procs::in_dir();
    let serve = |procs: &mut Procs, x: u8, target: &str| {
        let listen = free_addr(x).to_string();
        let args = ["serve", "--data", data.to_str().unwrap(), "--listen", &listen, "--trust", &key];
        procs.spawn(dir, "serve", &[&args[..], &["--no-discovery", "--target", target]].concat())
    };
    let other = serve(&mut procs, 119, "x86-64");
    procs.wait_for_log(other, "listening on");
    assert!(procs.stderr(other).contains("not for this device (x86-64)"), "{}", procs.stderr(other));
    assert!(procs.stderr(other).contains("nothing to serve"), "{}", procs.stderr(other));
    let seed = serve(&mut procs, 119, "any");
    procs.wait_for_log(seed, "serving fw.img #1");
    drop(procs);

    // Both keys signed: a threshold of two is met; one key alone cannot meet it.
    let two = ["--trust", &key2, "--threshold", "2", "--target", "rpi4-arm64"];
    assert_eq!(verify(&two).code, 0, "{}", verify(&two).stderr);
    fs::remove_file(m).unwrap();
    run_ok(dir, &["publish", f, "--secret", s, "--target", "rpi4-arm64"]);
    let got = verify(&two);
    assert_eq!(got.code, 2, "{}", got.stderr);
    assert!(got.stderr.contains("signed by 1 trusted key(s); 2 must sign"), "{}", got.stderr);
    let got = verify(&["--threshold", "3"]);
    assert_eq!(got.code, 2, "an unreachable threshold is a usage error: {}", got.stderr);
}

/// A hook script that logs each start (with the environment it got) and each end; the first
/// time it writes its pid and hangs, to be killed with its agent as a power cut would.
fn hanging_hook(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (log, pid) = (dir.join("hook.log"), dir.join("hook.pid"));
    let script = dir.join("hook.sh");
    let body = format!(
        "echo \"start $FLOTILLA_NAME $FLOTILLA_RELEASE $FLOTILLA_SWARM ${{HOME:-no-home}} $1\" >> {log}\n\
         if [ ! -e {pid} ]; then echo $$ > {pid}.tmp; mv {pid}.tmp {pid}; sleep 60; fi\n\
         echo done >> {log}\n",
        log = log.display(),
        pid = pid.display()
    );
    fs::write(&script, body).unwrap();
    (script, log, pid)
}

#[test]
fn a_hook_killed_mid_run_runs_again_after_a_restart_exactly_once_to_completion() {
    let tmp = TempDir::new("trust-hook");
    let dir = tmp.path();
    let rel = make_release(dir, 200_000, "16K", 9);
    let mut procs = Procs::in_dir();
    let seed = free_addr(115);
    start_seed(&mut procs, dir, &rel, seed, "0", &["--no-discovery"]);
    let (script, log, pid) = hanging_hook(dir);
    let out = dir.join("device").join("fw.img");
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let hook = format!("/bin/sh {}", script.display());
    let seed = seed.to_string();
    let args = ["fetch", rel.manifest_arg(), "--trust", &rel.key, "--out", out.to_str().unwrap(), "--no-discovery"];
    let args = [&args[..], &["--peer", &seed, "--no-listen", "--on-complete", &hook]].concat();
    let f = procs.spawn(dir, "fetch", &args);
    wait_for_file(&pid);
    // The power cut: the agent and its hook die together, mid-hook, after the final rename.
    procs.kill(f);
    let hook_pid: i32 = fs::read_to_string(&pid).unwrap().trim().parse().unwrap();
    unsafe { libc::kill(hook_pid, libc::SIGKILL) };
    assert_eq!(fs::read(&out).unwrap(), rel.bytes, "the release was in place before the hook ran");
    let owed = fs::read_to_string(out.parent().unwrap().join(".flotilla-hooks")).unwrap();
    assert!(owed.contains(" fw.img 1"), "the hook is recorded as owed: {owed:?}");

    // The restart finds the release whole and the hook owed: it runs again, to completion.
    let got = run(dir, &args);
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert!(got.stderr.contains("install hook is owed from an earlier run"), "{}", got.stderr);
    let swarm = flotilla::core::manifest::to_hex(&rel.signed.swarm_id);
    let start = format!("start fw.img 1 {swarm} no-home {}", out.display());
    assert_eq!(fs::read_to_string(&log).unwrap(), format!("{start}\n{start}\ndone\n"));
    // And never again once it succeeded.
    let got = run(dir, &args);
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert_eq!(fs::read_to_string(&log).unwrap(), format!("{start}\n{start}\ndone\n"), "ran once to completion");
    assert_eq!(fs::read_to_string(out.parent().unwrap().join(".flotilla-hooks")).unwrap(), "");
}

#[test]
fn a_hook_past_its_timeout_is_killed_and_stays_owed() {
    let tmp = TempDir::new("trust-hook-timeout");
    let dir = tmp.path();
    let rel = make_release(dir, 100_000, "16K", 10);
    let mut procs = Procs::in_dir();
    let seed = free_addr(116);
    start_seed(&mut procs, dir, &rel, seed, "0", &["--no-discovery"]);
    let (script, log, pid) = hanging_hook(dir);
    let out = dir.join("device").join("fw.img");
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let hook = format!("/bin/sh {}", script.display());
    let seed = seed.to_string();
    let args = ["fetch", rel.manifest_arg(), "--trust", &rel.key, "--out", out.to_str().unwrap(), "--no-discovery"];
    let args = [&args[..], &["--peer", &seed, "--no-listen", "--on-complete", &hook, "--hook-timeout", "1"]].concat();
    let got = run(dir, &args);
    assert_eq!(got.code, 1, "{}", got.stderr);
    assert!(got.stderr.contains("ran past --hook-timeout (1 s)"), "{}", got.stderr);
    // The whole process group went: the script's `sleep` is gone too.
    let hook_pid: i32 = fs::read_to_string(&pid).unwrap().trim().parse().unwrap();
    assert_ne!(unsafe { libc::kill(hook_pid, 0) }, 0, "the hook's shell still runs");
    assert!(!fs::read_to_string(&log).unwrap().contains("done"));
    let owed = fs::read_to_string(out.parent().unwrap().join(".flotilla-hooks")).unwrap();
    assert!(owed.contains(" fw.img 1"), "a hook that timed out stays owed: {owed:?}");
}

#[test]
fn the_status_socket_is_private_and_status_prints_only_printable_text() {
    let tmp = TempDir::new("trust-status");
    let dir = tmp.path();
    let rel = make_release(dir, 50_000, "16K", 12);
    let data = rel.data_dir.to_str().unwrap();
    let mut procs = Procs::in_dir();
    for (mode, want) in [(None, 0o600), (Some("660"), 0o660)] {
        let sock = dir.join(format!("agent-{want:o}.sock"));
        let mut args = vec!["serve", "--data", data, "--trust", &rel.key, "--no-listen", "--no-discovery"];
        args.extend(["--status", sock.to_str().unwrap()]);
        args.extend(mode.map(|m| ["--status-mode", m]).iter().flatten());
        let i = procs.spawn(dir, "serve", &args);
        procs.wait_for_log(i, "status on");
        let got = fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(got, want, "socket mode {got:o}");
        procs.kill(i);
    }
    let got = run(dir, &["serve", "--data", data, "--trust", &rel.key, "--no-listen", "--status-mode", "999"]);
    assert_eq!(got.code, 2, "{}", got.stderr);

    // Something else answering at the path cannot drive the terminal through `status`.
    let sock = dir.join("impostor.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        std::io::Write::write_all(&mut s, b"ok\x1b]0;owned\x07\x1b[2J\nline two\ttab\n").unwrap();
    });
    let got = run(dir, &["status", sock.to_str().unwrap()]);
    server.join().unwrap();
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert_eq!(got.stdout, "ok?]0;owned??[2J\nline two\ttab\n");
}

/// Keygen into `dir/NAME.key`; returns (secret path, public key hex).
fn named_key(dir: &Path, name: &str) -> (String, String) {
    let secret = dir.join(format!("{name}.key"));
    let public = run_ok(dir, &["keygen", "--secret", secret.to_str().unwrap()]).trim().to_owned();
    (secret.to_str().unwrap().to_owned(), public)
}

#[test]
fn a_root_rotation_across_three_agents_revokes_the_leaked_key() {
    let tmp = TempDir::new("trust-root");
    let dir = tmp.path();
    let ((a_secret, a), (b_secret, b)) = (named_key(dir, "a"), named_key(dir, "b"));
    let (root_secret, root_key) = named_key(dir, "offline-root");
    let root1 = dir.join("root1.flotilla-root");
    let r1 = root1.to_str().unwrap();
    let args = ["root", "--key", &a, "--root-key", &root_key, "--secret", &root_secret, "--out", r1];
    run_ok(dir, &args);
    // Release key a leaks. Root 2, signed with the offline root key, swaps a for b and bounds
    // release jumps.
    let root2 = dir.join("root2.flotilla-root");
    let r2 = root2.to_str().unwrap();
    let args = ["root", "--previous", r1, "--key", &b, "--root-key", &root_key, "--max-jump", "10"];
    run_ok(dir, &[&args[..], &["--secret", &root_secret, "--out", r2]].concat());
    // The thief cannot write a root 2 of its own: a is not a root key.
    let forged = dir.join("forged.flotilla-root");
    let args = ["root", "--previous", r1, "--key", &a, "--secret", &a_secret, "--out", forged.to_str().unwrap()];
    let got = run(dir, &args);
    assert_eq!(got.code, 2, "root refuses to write an invalid successor: {}", got.stderr);
    // Written with the library instead: a root 2 signed by the thief alone.
    let thief = flotilla::core::manifest::SecretKey::read_file(Path::new(&a_secret)).unwrap();
    let only_a = flotilla::core::trust::TrustPolicy::new(vec![thief.public()], 1).unwrap();
    let fake = flotilla::core::trust::Root {
        serial: 2,
        policy: only_a.clone(),
        root_policy: only_a,
        max_jump: None,
        floors: vec![],
    };
    fs::write(&forged, flotilla::core::trust::SignedRoot::sign(&fake, &[&thief]).unwrap().bytes).unwrap();
    let shown = run_ok(dir, &["inspect", r2]);
    assert!(shown.contains("root serial: 2") && shown.contains(&format!("key:         {b}")), "{shown}");

    let seed_dir = dir.join("seed");
    let old = publish(&seed_dir, Path::new(&a_secret), "fw.img", 1, &random_bytes(60_000, 20));
    let mut procs = Procs::in_dir();
    let (s, d1) = (free_addr(117).to_string(), free_addr(118).to_string());
    let args = ["serve", "--data", seed_dir.to_str().unwrap(), "--listen", &s, "--root", r1, "--rescan", "1"];
    let seed = procs.spawn(dir, "seed", &args);
    procs.wait_for_log(seed, "serving fw.img #1");
    let dev_dir = dir.join("device1");
    fs::create_dir_all(&dev_dir).unwrap();
    fs::copy(&old, dev_dir.join("fw.img.flotilla")).unwrap();
    let args = ["serve", "--data", dev_dir.to_str().unwrap(), "--listen", &d1, "--peer", &s, "--root", r1];
    let dev = procs.spawn(dir, "device1", &[&args[..], &["--rescan", "1", "--no-discovery"]].concat());
    wait_for_file(&dev_dir.join("fw.img"));

    // The forged root first: refused everywhere.
    for d in [&seed_dir, &dev_dir] {
        fs::copy(&forged, d.join("forged.flotilla-root")).unwrap();
    }
    procs.wait_for_log(dev, "root 2 refused: trust root refused: root 2 is not signed by 1 of root 1's root keys");
    // The rotation reaches the seed and the device as a file dropped in their data directories.
    std::thread::sleep(std::time::Duration::from_millis(2500)); // two more rescans see it again
    for d in [&seed_dir, &dev_dir] {
        fs::copy(&root2, d.join("root2.flotilla-root")).unwrap();
    }
    for p in [dev, seed] {
        procs.wait_for_log(p, "trust root 2 replaces root 1");
        procs.wait_for_log(p, "fw.img #1: no longer signed by root 2's keys; dropped");
    }
    assert_eq!(procs.stderr(dev).matches("root 2 refused").count(), 1, "logged once:\n{}", procs.stderr(dev));
    // A release the thief signs now is refused; one signed by b is served.
    let stolen = publish(&dir.join("stolen"), Path::new(&a_secret), "app.img", 1, &random_bytes(30_000, 21));
    fs::copy(&stolen, dev_dir.join("app.img.flotilla")).unwrap();
    procs.wait_for_log(dev, "app.img.flotilla: manifest is signed by a key you do not trust");
    let app = random_bytes(70_000, 22);
    let good = publish(&seed_dir, Path::new(&b_secret), "app.img", 1, &app);
    procs.wait_for_log(seed, "serving app.img #1");
    assert_eq!(fs::read(dev_dir.join(".flotilla-root")).unwrap(), fs::read(&root2).unwrap(), "root 2 is kept");

    // The third agent: a fresh device given both roots fetches b's release and refuses a's.
    let dev2 = dir.join("device2");
    fs::create_dir_all(&dev2).unwrap();
    let fetch = |manifest: &Path, out: &str| {
        let out = dev2.join(out);
        let args = ["fetch", manifest.to_str().unwrap(), "--root", r1, "--root", r2, "--out", out.to_str().unwrap()];
        run(dir, &[&args[..], &["--peer", &s, "--no-listen", "--no-discovery"]].concat())
    };
    let got = fetch(&stolen, "stolen.img");
    assert_eq!(got.code, 2, "{}", got.stderr);
    assert!(got.stderr.contains("signed by a key you do not trust"), "{}", got.stderr);
    let got = fetch(&good, "app.img");
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert_eq!(fs::read(dev2.join("app.img")).unwrap(), app);
    // Root 2's fast-forward bound: app.img 1 -> 50 is more than 10 at once.
    let far = publish(&dir.join("far"), Path::new(&b_secret), "app.img", 50, &random_bytes(30_000, 23));
    let got = fetch(&far, "app50.img");
    assert_eq!(got.code, 2, "{}", got.stderr);
    assert!(got.stderr.contains("more than 10 past release 1"), "{}", got.stderr);
    // Root 3 sets a floor for app.img at 45: the device's record moves, and 50 is within reach.
    let root3 = dir.join("root3.flotilla-root");
    let args = ["root", "--previous", r2, "--key", &b, "--root-key", &root_key, "--max-jump", "10"];
    let args = [&args[..], &["--floor", "app.img=45", "--secret", &root_secret, "--out", root3.to_str().unwrap()]];
    run_ok(dir, &args.concat());
    fs::write(dev2.join("app50.img"), fs::read(dir.join("far").join("app.img")).unwrap()).unwrap();
    let args = ["fetch", far.to_str().unwrap(), "--root", root3.to_str().unwrap(), "--out"];
    let got =
        run(dir, &[&args[..], &[dev2.join("app50.img").to_str().unwrap(), "--no-listen", "--no-discovery"]].concat());
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert!(got.stderr.contains("root 3: the floor of app.img is now release 45"), "{}", got.stderr);
    assert_eq!(fs::read_to_string(dev2.join(".flotilla-history")).unwrap(), "app.img 50\n");
    // A floor applies once, when its root is taken up, not at every start.
    let got =
        run(dir, &[&args[..], &[dev2.join("app50.img").to_str().unwrap(), "--no-listen", "--no-discovery"]].concat());
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert!(!got.stderr.contains("the floor of"), "{}", got.stderr);
    assert_eq!(fs::read_to_string(dev2.join(".flotilla-history")).unwrap(), "app.img 50\n");
}

#[test]
fn a_root_needs_offline_root_keys_of_its_own() {
    let tmp = TempDir::new("trust-root-keys");
    let dir = tmp.path();
    let ((a_secret, a), (root_secret, root_key)) = (named_key(dir, "a"), named_key(dir, "offline-root"));
    let out = dir.join("root1.flotilla-root");
    let o = out.to_str().unwrap();
    // Without --root-key the release key would sign the next root: refused, in one line.
    let got = run(dir, &["root", "--key", &a, "--secret", &a_secret, "--out", o]);
    assert_eq!(got.code, 2, "{}", got.stderr);
    assert_eq!(got.stderr.trim().lines().count(), 1, "{}", got.stderr);
    assert!(got.stderr.contains("missing --root-key") && got.stderr.contains("offline root keys"), "{}", got.stderr);
    assert!(!out.exists(), "nothing is written");
    // A root key that is also a release key is refused too, whatever else is given.
    let args = ["root", "--key", &a, "--root-key", &root_key, "--root-key", &a, "--secret", &a_secret];
    let got = run(dir, &[&args[..], &["--secret", &root_secret, "--out", o]].concat());
    assert_eq!(got.code, 2, "{}", got.stderr);
    assert_eq!(got.stderr.trim().lines().count(), 1, "{}", got.stderr);
    assert!(got.stderr.contains(&format!("root key {a} is also a --key release key")), "{}", got.stderr);
    assert!(!out.exists(), "nothing is written");
    // Distinct offline root keys: written, and the release key is not among its root keys.
    let shown = run_ok(dir, &["root", "--key", &a, "--root-key", &root_key, "--secret", &root_secret, "--out", o]);
    assert!(shown.contains(&format!("root key:    {root_key}")), "{shown}");
    assert!(!shown.contains(&format!("root key:    {a}")), "{shown}");
    // The successor of a root is held to the same rule.
    let next = dir.join("root2.flotilla-root");
    let args = ["root", "--previous", o, "--key", &a, "--secret", &root_secret, "--out", next.to_str().unwrap()];
    let got = run(dir, &args);
    assert_eq!(got.code, 2, "{}", got.stderr);
    assert!(got.stderr.contains("missing --root-key"), "{}", got.stderr);
    assert!(run_ok(dir, &["root", "--help"]).contains("Required"), "--help says --root-key is required");
}

/// A first root in `dir/NAME` with release key `key`, signed by a new offline root key.
fn first_root(dir: &Path, name: &str, key: &str) -> PathBuf {
    let (root_secret, root_key) = named_key(dir, "offline-root");
    let root = dir.join(name);
    let r = root.to_str().unwrap();
    run_ok(dir, &["root", "--key", key, "--root-key", &root_key, "--secret", &root_secret, "--out", r]);
    root
}

#[test]
fn a_root_is_known_by_its_content_whatever_its_name() {
    let tmp = TempDir::new("trust-root-content");
    let dir = tmp.path();
    let (a_secret, a) = named_key(dir, "a");
    // A root under names that say nothing, or say manifest.
    let root = first_root(dir, "trust.bin", &a);
    let disguised = dir.join("root.flotilla");
    fs::copy(&root, &disguised).unwrap();
    for path in [&root, &disguised] {
        let shown = run_ok(dir, &["inspect", path.to_str().unwrap()]);
        assert!(shown.contains("root serial: 1") && shown.contains(&format!("key:         {a}")), "{shown}");
    }
    // And a manifest named like a root is still a manifest.
    let manifest = publish(&dir.join("rel"), Path::new(&a_secret), "fw.img", 1, &random_bytes(20_000, 30));
    let named_root = dir.join("fw.flotilla-root");
    fs::copy(&manifest, &named_root).unwrap();
    let shown = run_ok(dir, &["inspect", named_root.to_str().unwrap()]);
    assert!(shown.contains("name:        fw.img"), "{shown}");
    // A damaged root named as one is reported as a root.
    let damaged = dir.join("damaged.flotilla-root");
    fs::write(&damaged, b"not a root at all").unwrap();
    let got = run(dir, &["inspect", damaged.to_str().unwrap()]);
    assert_eq!(got.code, 2, "{}", got.stderr);
    assert!(got.stderr.contains("not a flotilla root"), "{}", got.stderr);
}

#[test]
fn a_threshold_given_with_a_root_is_refused() {
    let tmp = TempDir::new("trust-root-threshold");
    let dir = tmp.path();
    let (a_secret, a) = named_key(dir, "a");
    let root = first_root(dir, "root1.flotilla-root", &a);
    let r = root.to_str().unwrap();
    let manifest = publish(&dir.join("rel"), Path::new(&a_secret), "fw.img", 1, &random_bytes(20_000, 31));
    let m = manifest.to_str().unwrap();
    let f = dir.join("rel").join("fw.img");
    let f = f.to_str().unwrap();
    run_ok(dir, &["verify", m, f, "--root", r]);
    // The root says 1 of its keys; a --threshold beside it would be ignored, so it is refused.
    let got = run(dir, &["verify", m, f, "--root", r, "--threshold", "2"]);
    assert_eq!(got.code, 2, "{}", got.stderr);
    assert_eq!(got.stderr.trim().lines().count(), 1, "{}", got.stderr);
    assert!(got.stderr.contains("--threshold") && got.stderr.contains("carries its own threshold"), "{}", got.stderr);
    let out = dir.join("device").join("fw.img");
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let args = ["fetch", m, "--root", r, "--threshold", "1", "--out", out.to_str().unwrap(), "--no-listen"];
    let got = run(dir, &[&args[..], &["--no-discovery"]].concat());
    assert_eq!(got.code, 2, "{}", got.stderr);
    assert!(got.stderr.contains("carries its own threshold"), "{}", got.stderr);
    assert!(!side(&out, ".part").exists(), "nothing was started");
}

#[test]
fn the_kept_root_is_private() {
    let tmp = TempDir::new("trust-root-kept");
    let dir = tmp.path();
    let (a_secret, a) = named_key(dir, "a");
    let root = first_root(dir, "root1.flotilla-root", &a);
    let manifest = publish(&dir.join("rel"), Path::new(&a_secret), "fw.img", 1, &random_bytes(20_000, 32));
    // The release is in place, so the fetch completes at once and keeps the root.
    let state = dir.join("state");
    let out = dir.join("rel").join("fw.img");
    let args = ["fetch", manifest.to_str().unwrap(), "--root", root.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let got =
        run(dir, &[&args[..], &["--state-dir", state.to_str().unwrap(), "--no-listen", "--no-discovery"]].concat());
    assert_eq!(got.code, 0, "{}", got.stderr);
    let kept = state.join(".flotilla-root");
    assert_eq!(fs::read(&kept).unwrap(), fs::read(&root).unwrap());
    let mode = fs::metadata(&kept).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "state is private, as the history is: {mode:o}");
}

#[test]
fn a_damaged_root_in_the_data_directory_is_warned_about_once() {
    let tmp = TempDir::new("trust-root-damaged");
    let dir = tmp.path();
    let root = first_root(dir, "root1.flotilla-root", &named_key(dir, "a").1);
    let data = dir.join("data");
    fs::create_dir_all(&data).unwrap();
    let bad = data.join("bad.flotilla-root");
    fs::write(&bad, b"FLOTROOT and then nothing sensible").unwrap();
    let mut procs = Procs::in_dir();
    let args = ["serve", "--data", data.to_str().unwrap(), "--root", root.to_str().unwrap(), "--rescan", "1"];
    let s = procs.spawn(dir, "serve", &[&args[..], &["--no-listen", "--no-discovery"]].concat());
    procs.wait_for_log(s, "bad.flotilla-root: ");
    // Several rescans later the same damaged file has been warned about once.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let warned = |procs: &Procs| procs.stderr(s).matches("bad.flotilla-root: ").count();
    assert_eq!(warned(&procs), 1, "warned once:\n{}", procs.stderr(s));
    // Rewritten, still damaged: warned about once more, then no more.
    fs::write(&bad, b"something else entirely").unwrap();
    wait_until("a second warning", || warned(&procs) == 2);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(warned(&procs), 2, "warned once per content:\n{}", procs.stderr(s));
    assert!(procs.running(s), "{}", procs.stderr(s));
}

#[test]
fn no_root_follows_the_last_serial() {
    let tmp = TempDir::new("trust-root-last");
    let dir = tmp.path();
    let (root_secret, root_key) = named_key(dir, "offline-root");
    let (_, a) = named_key(dir, "a");
    let secret = flotilla::core::manifest::SecretKey::read_file(Path::new(&root_secret)).unwrap();
    let policy = |k: flotilla::core::manifest::PublicKey| flotilla::core::trust::TrustPolicy::new(vec![k], 1).unwrap();
    let release = flotilla::core::manifest::PublicKey::parse(a.as_bytes()).unwrap();
    let last = flotilla::core::trust::Root {
        serial: u64::MAX,
        policy: policy(release),
        root_policy: policy(secret.public()),
        max_jump: None,
        floors: vec![],
    };
    let previous = dir.join("last.flotilla-root");
    fs::write(&previous, flotilla::core::trust::SignedRoot::sign(&last, &[&secret]).unwrap().bytes).unwrap();
    let out = dir.join("next.flotilla-root");
    let args = ["root", "--previous", previous.to_str().unwrap(), "--key", &a, "--root-key", &root_key];
    let got = run(dir, &[&args[..], &["--secret", &root_secret, "--out", out.to_str().unwrap()]].concat());
    assert_eq!(got.code, 2, "{}", got.stderr);
    assert!(got.stderr.contains("last serial") && got.stderr.contains("no root can follow it"), "{}", got.stderr);
    assert!(!out.exists());
}
