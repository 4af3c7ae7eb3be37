//! Replays the `root_successor` target's seeds and past crashes on a stable toolchain, as
//! `tests/regressions.rs` does for the targets of `lib.rs`:
//! `cargo test --manifest-path fuzz/Cargo.toml`. The seeds are written by
//! `cargo test --manifest-path fuzz/Cargo.toml --test root_successor -- --ignored`.

use std::fs;
use std::path::Path;

use flotilla::core::trust::SignedRoot;

#[path = "../src/root_successor.rs"]
mod root_successor;

const TARGET: &str = "root_successor";

/// The files in `fuzz/<kind>/root_successor/`, sorted, with their names.
fn inputs(kind: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(kind).join(TARGET);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files.into_iter().map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), fs::read(&p).unwrap())).collect()
}

#[test]
fn past_crashes_no_longer_panic() {
    for (name, bytes) in inputs("regressions") {
        eprintln!("replaying regressions/{TARGET}/{name}");
        root_successor::root_successor(&bytes);
    }
}

#[test]
fn seeds_pass_the_checks_and_are_valid_roots() {
    let seeds = inputs("seeds");
    assert!(!seeds.is_empty(), "no seeds for {TARGET}: run this test file with --ignored");
    for (name, bytes) in seeds {
        eprintln!("checking seeds/{TARGET}/{name}");
        root_successor::root_successor(&bytes);
        // Worth something only if it reaches the successor checks: it decodes once re-signed.
        let signers = root_successor::signers(bytes[0]);
        SignedRoot::decode(&root_successor::resign(&bytes[1..], &signers))
            .unwrap_or_else(|e| panic!("{TARGET}/{name}: {e}"));
    }
}

#[test]
fn the_written_seeds_are_current() {
    for (name, bytes) in root_successor::seeds() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(TARGET).join(name);
        assert_eq!(fs::read(&path).ok(), Some(bytes), "{} is stale: run with --ignored", path.display());
    }
}

#[test]
#[ignore = "writes fuzz/seeds/root_successor/"]
fn write_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(TARGET);
    fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in root_successor::seeds() {
        fs::write(dir.join(name), bytes).unwrap();
    }
}
