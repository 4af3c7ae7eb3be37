//! Writes the seed corpora in `fuzz/seeds/<target>/`: a few valid encodings of each format.
//!
//! Deterministic (the manifest key comes from a fixed seed and ed25519 signatures are
//! deterministic), so re-running it rewrites the same files:
//! `cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds`.

use std::fs;
use std::path::{Path, PathBuf};

use flotilla::core::discovery;
use flotilla::core::manifest::{Manifest, SecretKey, SignedManifest, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use flotilla::core::wire::{
    self, Bytes, Message, RefuseReason, BLOCK_SIZE, HEADER_LEN, MAX_FRAME, PEER_ENTRY, VERSION,
};
use flotilla_fuzz::{MANIFEST_HEADER, SIGNATURE_ENTRY};

fn main() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    wire_seeds(&seeds);
    manifest_seeds(&seeds);
    announcement_seeds(&seeds);
    session_seeds(&seeds);
    local_file_seeds(&seeds);
    println!("seeds written under {}", seeds.display());
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn frame_of(msg: &Message) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_FRAME];
    let n = wire::encode_frame(msg, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn wire_seeds(seeds: &Path) {
    let block: Vec<u8> = (0..BLOCK_SIZE).map(|i| (i * 31 + i / 7) as u8).collect();
    let mut peers = Vec::new();
    for addr in ["10.1.2.3:7070", "[2001:db8::1]:9", "192.168.0.20:65535"] {
        let mut entry = [0u8; PEER_ENTRY];
        wire::encode_peer(addr.parse().unwrap(), &mut entry);
        peers.extend_from_slice(&entry);
    }
    let messages: Vec<(&str, Message)> = vec![
        (
            "hello",
            Message::Hello {
                version: VERSION,
                swarm: [0xab; 32],
                listen_port: 7070,
                node: 0x0123_4567_89ab_cdef,
                nonce: std::array::from_fn(|i| i as u8 * 17),
            },
        ),
        ("refuse_version", Message::Refuse(RefuseReason::UnsupportedVersion)),
        ("refuse_swarm", Message::Refuse(RefuseReason::UnknownSwarm)),
        ("refuse_busy", Message::Refuse(RefuseReason::Busy)),
        ("bitfield", Message::Bitfield(Bytes(&[0xff, 0x7f, 0x80]))),
        ("have", Message::Have(70_000)),
        ("request", Message::Request(3)),
        ("cancel", Message::Cancel(u32::MAX)),
        ("reject", Message::Reject(128)),
        ("block_small", Message::Block { chunk: 2, offset: BLOCK_SIZE, data: Bytes(&block[..100]) }),
        ("block_full", Message::Block { chunk: 300, offset: 0, data: Bytes(&block) }),
        ("keepalive", Message::KeepAlive),
        ("peers", Message::Peers(Bytes(&peers))),
        ("auth", Message::Auth([0xa5; 32])),
    ];
    let mut stream = Vec::new();
    for (name, msg) in &messages {
        let frame = frame_of(msg);
        write(&seeds.join("message"), &format!("{name}.bin"), &frame[HEADER_LEN..]);
        write(&seeds.join("frame"), &format!("{name}.bin"), &frame);
        if !matches!(msg, Message::Block { .. }) {
            stream.extend_from_slice(&frame);
        }
    }
    // What a receive buffer holds mid-session: several frames back to back, the last one cut short.
    let tail = frame_of(&messages.iter().find(|(name, _)| *name == "block_small").unwrap().1);
    stream.extend_from_slice(&tail[..tail.len() / 2]);
    write(&seeds.join("frame"), "stream.bin", &stream);
}

fn manifest_seeds(seeds: &Path) {
    let dir = std::env::temp_dir().join(format!("flotilla-fuzz-seeds-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("op.key");
    fs::write(&key_file, format!("flotilla-secret-key-v1 {}\n", "42".repeat(32))).unwrap();
    let key = SecretKey::read_file(&key_file).unwrap();
    let long_name = "a".repeat(64);
    // (file name, release name, release, file size, chunk size); each manifest stays under the
    // manifest target's 4096-byte -max_len.
    let cases: [(&str, &str, u64, u64, u32); 5] = [
        ("one_byte", "fw.img", 1, 1, MIN_CHUNK_SIZE),
        ("one_chunk_exact", "router-fw_2.bin", 7, u64::from(MIN_CHUNK_SIZE), MIN_CHUNK_SIZE),
        ("four_chunks", "fw.img", u64::MAX, 3 * u64::from(MIN_CHUNK_SIZE) + 1000, MIN_CHUNK_SIZE),
        ("long_name_big_chunk", &long_name, 300, u64::from(MAX_CHUNK_SIZE) + 1, MAX_CHUNK_SIZE),
        ("hundred_chunks", "x", 2, 100 * u64::from(MIN_CHUNK_SIZE), MIN_CHUNK_SIZE),
    ];
    fs::write(dir.join("second.key"), format!("flotilla-secret-key-v1 {}\n", "17".repeat(32))).unwrap();
    let second = SecretKey::read_file(&dir.join("second.key")).unwrap();
    for (i, (file, name, release, size, chunk_size)) in cases.into_iter().enumerate() {
        let image: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
        let path: PathBuf = dir.join(file);
        fs::write(&path, &image).unwrap();
        // Some seeds carry an expiry, targets and a second signature, so those fields are reached.
        let mut draft = Manifest { name: name.into(), release, chunk_size, ..Manifest::default() };
        let signers: Vec<&SecretKey> = if i % 2 == 1 { vec![&key, &second] } else { vec![&key] };
        if i % 2 == 1 {
            draft.expires = Some(1_800_000_000 + i as u64);
            draft.targets = vec!["rpi4-arm64".into(), format!("board-{i}")];
        }
        let signed = SignedManifest::publish_draft(&path, draft, &signers).unwrap();
        write(&seeds.join("manifest"), &format!("{file}.flotilla"), &signed.bytes);
        let body = &signed.bytes[MANIFEST_HEADER..signed.bytes.len() - 1 - SIGNATURE_ENTRY * signers.len()];
        write(&seeds.join("manifest_resigned"), &format!("{file}.body"), body);
    }
    fs::remove_dir_all(&dir).unwrap();
}

fn announcement_seeds(seeds: &Path) {
    let ids: Vec<[u8; 32]> = (0..discovery::MAX_IDS as u8).map(|i| [i.wrapping_mul(37).wrapping_add(1); 32]).collect();
    let cases: [(&str, bool, bool, u16, u64, usize); 5] = [
        ("none", true, false, 7070, 1, 0),
        ("one", false, false, 7070, 0xfeed_f00d, 1),
        ("one_behind", false, true, 7070, 0xfeed_f00d, 1),
        ("three_query", true, false, 1, u64::MAX, 3),
        ("full", false, false, 65535, 0, discovery::MAX_IDS),
    ];
    for (name, query, behind, port, node, count) in cases {
        let mut out = [0u8; discovery::MAX_DATAGRAM];
        let adverts = ids[..count].iter().enumerate().map(|(i, &swarm)| discovery::Advert {
            swarm,
            release: i as u64 * 1000 + 1,
            name_tag: discovery::name_tag("fw.img"),
        });
        let n = discovery::encode(discovery::Flags { query, behind }, port, node, adverts, &mut out);
        write(&seeds.join("announcement"), &format!("{name}.bin"), &out[..n]);
    }
}

/// Sessions in every setting (fleet secret or not, who dials, who seeds): honest traffic, time
/// passing past the keepalive and stall timers, an injected Have and a raw frame, then traffic.
fn session_seeds(seeds: &Path) {
    let have = frame_of(&Message::Have(2))[wire::HEADER_LEN..].to_vec();
    for flags in 0u8..8 {
        let mut steps = vec![flags, 0, 0, 1, 25, 0, 2, have.len() as u8];
        steps.extend_from_slice(&have);
        steps.extend_from_slice(&[3, 3, 9, 9, 9, 0, 1, 100, 0]);
        write(&seeds.join("session"), &format!("flags{flags}.bin"), &steps);
    }
}

/// One valid file of each kind the `local_files` target reads, behind its selector byte.
fn local_file_seeds(seeds: &Path) {
    use flotilla::core::trust::{Root, SignedRoot, TrustPolicy};
    let dir = seeds.join("local_files");
    let key_text = format!("flotilla-secret-key-v1 {}\n", "42".repeat(32));
    let key = SecretKey::parse(key_text.as_bytes()).unwrap();
    let with = |kind: u8, bytes: &[u8]| [&[kind][..], bytes].concat();
    write(&dir, "history", &with(0, b"fw.img 7\nboot.img 2\n"));
    write(&dir, "hooks", &with(1, format!("{} fw.img 3\n", "ab".repeat(32)).as_bytes()));
    write(&dir, "secret_key", &with(2, key_text.as_bytes()));
    write(&dir, "public_key", &with(3, format!("{}\n", key.public().to_hex()).as_bytes()));
    let policy = TrustPolicy::new(vec![key.public()], 1).unwrap();
    let root = Root {
        serial: 3,
        policy: policy.clone(),
        root_policy: policy,
        max_jump: Some(10),
        floors: vec![("fw.img".into(), 5)],
    };
    write(&dir, "root", &with(4, &SignedRoot::sign(&root, &[&key]).unwrap().bytes));
}
