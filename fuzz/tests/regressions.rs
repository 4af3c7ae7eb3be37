//! Replays every saved input through the fuzz checks, on a stable toolchain:
//! `cargo test --manifest-path fuzz/Cargo.toml`.
//!
//! `seeds/<target>/` holds valid encodings, which must also decode; `regressions/<target>/` holds
//! the minimized inputs of past crashes, which must no longer panic.

use std::fs;
use std::path::Path;

use flotilla::core::discovery::Announcement;
use flotilla::core::manifest::SignedManifest;
use flotilla::core::trust::SignedRoot;
use flotilla::core::wire;

type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 9] = [
    ("frame", flotilla_fuzz::frame),
    ("message", flotilla_fuzz::message),
    ("manifest", flotilla_fuzz::manifest),
    ("manifest_resigned", flotilla_fuzz::manifest_resigned),
    ("announcement", flotilla_fuzz::announcement),
    ("state", flotilla_fuzz::state),
    ("session", flotilla_fuzz::session),
    ("local_files", flotilla_fuzz::local_files),
    ("root_successor", flotilla_fuzz::root_successor),
];

/// The files in `fuzz/<kind>/<target>/`, sorted, with their names; none if the directory is absent.
fn inputs(kind: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(kind).join(target);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files.into_iter().map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), fs::read(&p).unwrap())).collect()
}

#[test]
fn past_crashes_no_longer_panic() {
    for (target, check) in TARGETS {
        for (name, bytes) in inputs("regressions", target) {
            eprintln!("replaying regressions/{target}/{name}");
            check(&bytes);
        }
    }
}

#[test]
fn seeds_pass_the_checks() {
    for (target, check) in TARGETS {
        let seeds = inputs("seeds", target);
        assert!(!seeds.is_empty(), "no seeds for {target}: run the gen_seeds example");
        for (name, bytes) in seeds {
            eprintln!("checking seeds/{target}/{name}");
            check(&bytes);
        }
    }
}

/// The seeds are worth something only if they are valid: each reaches the deepest checks.
#[test]
fn seeds_are_valid_encodings() {
    for (name, bytes) in inputs("seeds", "message") {
        assert!(wire::decode_message(&bytes).is_ok(), "message/{name}");
    }
    for (name, bytes) in inputs("seeds", "frame") {
        let (payload, _) = wire::parse_frame(&bytes).unwrap().unwrap_or_else(|| panic!("frame/{name}"));
        assert!(wire::decode_message(payload).is_ok(), "frame/{name}");
    }
    for (name, bytes) in inputs("seeds", "manifest") {
        SignedManifest::decode(&bytes).unwrap_or_else(|e| panic!("manifest/{name}: {e}"));
    }
    for (name, bytes) in inputs("seeds", "manifest_resigned") {
        let file = flotilla_fuzz::resign(&bytes);
        SignedManifest::decode(&file).unwrap_or_else(|e| panic!("manifest_resigned/{name}: {e}"));
    }
    for (name, bytes) in inputs("seeds", "announcement") {
        assert!(Announcement::decode(&bytes).is_some(), "announcement/{name}");
    }
    // A root body is worth something only if it reaches the successor checks: it decodes once
    // re-signed by the keys its first byte picks.
    for (name, bytes) in inputs("seeds", "root_successor") {
        let signers = flotilla_fuzz::root_successor::signers(bytes[0]);
        let file = flotilla_fuzz::root_successor::resign(&bytes[1..], &signers);
        SignedRoot::decode(&file).unwrap_or_else(|e| panic!("root_successor/{name}: {e}"));
    }
}

/// The root_successor seeds are written by code (`root_successor::seeds`); they must be current.
#[test]
fn the_written_root_seeds_are_current() {
    for (name, bytes) in flotilla_fuzz::root_successor::seeds() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join("root_successor").join(name);
        assert_eq!(fs::read(&path).ok(), Some(bytes), "{} is stale: run write_root_seeds", path.display());
    }
}

#[test]
#[ignore = "writes fuzz/seeds/root_successor/"]
fn write_root_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join("root_successor");
    fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in flotilla_fuzz::root_successor::seeds() {
        fs::write(dir.join(name), bytes).unwrap();
    }
}
