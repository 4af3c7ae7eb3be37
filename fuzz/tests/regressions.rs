//! Replays every saved input through the fuzz checks, on a stable toolchain:
//! `cargo test --manifest-path fuzz/Cargo.toml`.
//!
//! `seeds/<target>/` holds valid encodings, which must also decode; `regressions/<target>/` holds
//! the minimized inputs of past crashes, which must no longer panic.

use std::fs;
use std::path::Path;

use flotilla::core::discovery::Announcement;
use flotilla::core::manifest::SignedManifest;
use flotilla::core::wire;

type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 8] = [
    ("frame", flotilla_fuzz::frame),
    ("message", flotilla_fuzz::message),
    ("manifest", flotilla_fuzz::manifest),
    ("manifest_resigned", flotilla_fuzz::manifest_resigned),
    ("announcement", flotilla_fuzz::announcement),
    ("state", flotilla_fuzz::state),
    ("session", flotilla_fuzz::session),
    ("local_files", flotilla_fuzz::local_files),
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
}
