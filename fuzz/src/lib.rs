//! The checks behind each fuzz target, one public function per target.
//!
//! They live in a library rather than in the `fuzz_targets/` files so that
//! `tests/regressions.rs` can replay every saved input (seeds and past crashes) through exactly
//! the code the fuzzer ran, with plain `cargo test` on a stable toolchain. Each function takes
//! arbitrary bytes, feeds them to one decoder of the agent, and asserts what must hold of
//! whatever the decoder accepts: lengths within their caps, fields in range, and a round trip
//! through the matching encoder. A panic anywhere, in the agent or in an assertion here, is a
//! crash for libFuzzer.
//!
//! The state-file reader (`store::parse_state`) has no target: it is private and only reachable
//! through `Store::open` on a path. See docs/RELIABILITY.md.

pub mod root_successor;
pub use root_successor::root_successor;

use std::sync::OnceLock;

use flotilla::core::auth::TAG_LEN;
use flotilla::core::discovery::{self, Announcement, MAX_DATAGRAM, MAX_IDS};
use flotilla::core::manifest::{self, SignedManifest, MAX_CHUNKS, MAX_CHUNK_SIZE, MAX_MANIFEST_BYTES, MIN_CHUNK_SIZE};
use flotilla::core::trust::{TrustPolicy, MAX_SIGNATURES, MAX_TARGETS};
use flotilla::core::wire::{self, Message, WireError, HEADER_LEN, MAX_FRAME, MAX_PAYLOAD, MAX_PEX_PEERS, PEER_ENTRY};
use sha2::{Digest, Sha256};

/// First bytes of a manifest file (`manifest.rs`, "File format").
pub const MANIFEST_MAGIC: &[u8; 8] = b"FLOTMAN2";
/// Magic and body length precede a manifest body.
pub const MANIFEST_HEADER: usize = 12;
/// A signature entry after the body: public key (32) and ed25519 signature (64).
pub const SIGNATURE_ENTRY: usize = 96;
/// Bytes of an announcement before its swarm ids (`discovery.rs`, "Datagram").
const ANNOUNCE_HEADER: usize = 21;

/// Target `frame`: a receive buffer as a peer could fill it.
///
/// The buffer is walked frame by frame as the agent's receive loop does, and every payload a
/// frame yields goes through [`message`]'s checks. Random mutations almost never carry a matching
/// crc32, so the same bytes are walked a second time with the crc of each frame of legal length
/// filled in: that second walk must accept every such frame, and reaches the message decoder
/// through `parse_frame` on nearly every input.
pub fn frame(data: &[u8]) {
    walk_frames(data);
    let mut sealed = data.to_vec();
    let mut end = 0;
    while let Some(len) = declared_len(&sealed[end..]) {
        let total = HEADER_LEN + len;
        if len > MAX_PAYLOAD || sealed.len() - end < total {
            break;
        }
        wire::seal_frame(&mut sealed[end..end + total]);
        end += total;
    }
    assert_eq!(walk_frames(&sealed), end, "a frame of legal length with a correct crc was not accepted");
}

/// Target `message`: a frame payload, decoded directly; also read as a `Peers` entry list.
pub fn message(data: &[u8]) {
    if let Ok(msg) = wire::decode_message(data) {
        check_message(&msg, data);
    }
    check_peers(data);
}

/// Target `manifest`: a manifest file as it could arrive from anyone.
pub fn manifest(data: &[u8]) {
    match SignedManifest::decode(data) {
        Ok(signed) => check_manifest(&signed, data),
        Err(e) => {
            assert!(e.is_bad_input(), "decoding bytes reported an I/O error: {e}");
            assert!(!e.to_string().is_empty());
        }
    }
}

/// Target `manifest_resigned`: a manifest *body*, wrapped in a header and signed with a fixed key.
///
/// A mutation of a signed manifest never carries a valid signature, so through [`manifest`] the
/// fuzzer cannot reach the field checks that run after verification. Here the input is the
/// postcard body, sealed and signed with the fixed key, so every body that parses is verified
/// and then checked field by field.
pub fn manifest_resigned(body: &[u8]) {
    if MANIFEST_HEADER + body.len() + 1 + SIGNATURE_ENTRY > MAX_MANIFEST_BYTES {
        return;
    }
    manifest(&resign(body));
}

/// Wraps `body` as a manifest file signed by the fixed fuzzing key (see [`manifest_resigned`]).
pub fn resign(body: &[u8]) -> Vec<u8> {
    let key = fuzz_key();
    let mut file = Vec::with_capacity(MANIFEST_HEADER + body.len() + 1 + SIGNATURE_ENTRY);
    file.extend_from_slice(MANIFEST_MAGIC);
    file.extend_from_slice(&(body.len() as u32).to_le_bytes());
    file.extend_from_slice(body);
    let signature = key.sk.sign(&file, None);
    file.push(1);
    file.extend_from_slice(&key.pk[..]);
    file.extend_from_slice(&signature[..]);
    file
}

/// Target `announcement`: one multicast datagram.
pub fn announcement(data: &[u8]) {
    let Some(a) = Announcement::decode(data) else {
        return;
    };
    assert!(data.len() <= MAX_DATAGRAM, "accepted a {}-byte datagram", data.len());
    assert_eq!((&data[..8], data[8]), (&b"FLOTANN1"[..], 2), "accepted a bad magic or version");
    let count = usize::from(data[20]);
    assert!(count <= MAX_IDS && data.len() == ANNOUNCE_HEADER + 48 * count, "count {count} vs length {}", data.len());
    assert_ne!(a.listen_port, 0, "accepted listen port 0");
    assert_eq!(a.listen_port, u16::from_be_bytes([data[10], data[11]]));
    assert_eq!(a.node.to_be_bytes(), data[12..20]);
    assert_eq!(a.query, data[9] & 1 != 0);
    assert_eq!(a.behind, data[9] & 2 != 0);
    let ids: Vec<[u8; 32]> = data[ANNOUNCE_HEADER..].chunks_exact(48).map(|c| c[..32].try_into().unwrap()).collect();
    for id in &ids {
        assert!(a.names(id), "an id in the datagram is not named");
    }
    // An id that differs from every listed one in its first byte is not named.
    let mut other = [0u8; 32];
    other[0] = (0..=255u8).find(|b| ids.iter().all(|id| id[0] != *b)).unwrap();
    assert!(!a.names(&other), "an id not in the datagram is named");
    // Re-encoding gives the datagram back, except flag bits this version does not know.
    let mut out = [0u8; MAX_DATAGRAM];
    let n = discovery::encode(
        discovery::Flags { query: a.query, behind: a.behind },
        a.listen_port,
        a.node,
        a.entries(),
        &mut out,
    );
    let mut expected = data.to_vec();
    expected[9] &= 3; // query and behind
    assert_eq!(&out[..n], &expected[..], "re-encoding differs");
    assert_eq!(Announcement::decode(&out[..n]), Some(a), "re-encoding decodes differently");
}

/// Walks whole frames at the start of `buf` as a receive loop does; returns the bytes they took.
fn walk_frames(mut buf: &[u8]) -> usize {
    let mut consumed = 0;
    loop {
        match wire::parse_frame(buf) {
            Ok(Some((payload, used))) => {
                assert!(used <= MAX_FRAME, "a {used}-byte frame exceeds MAX_FRAME");
                assert!(used <= buf.len(), "frame of {used} bytes claimed from {} bytes", buf.len());
                assert_eq!(used, HEADER_LEN + payload.len());
                assert_eq!(declared_len(buf), Some(payload.len()));
                assert_eq!(payload, &buf[HEADER_LEN..used]);
                // A frame is only handed out whole: one byte short is "need more".
                assert_eq!(wire::parse_frame(&buf[..used - 1]), Ok(None), "a strict prefix is not 'need more'");
                if let Ok(msg) = wire::decode_message(payload) {
                    check_message(&msg, payload);
                }
                buf = &buf[used..];
                consumed += used;
            }
            Ok(None) => {
                if let Some(len) = declared_len(buf) {
                    // A sealed frame may carry a full payload and its tag; no frame may be longer.
                    assert!(len <= MAX_PAYLOAD + TAG_LEN, "waits for more bytes of an oversize frame ({len})");
                    assert!(buf.len() < HEADER_LEN + len, "a whole frame is reported incomplete");
                }
                return consumed;
            }
            Err(WireError::Oversize(n)) => {
                assert!(n as usize > MAX_PAYLOAD && declared_len(buf) == Some(n as usize), "Oversize({n}) wrongly");
                return consumed;
            }
            Err(WireError::BadCrc) => {
                let len = declared_len(buf).expect("BadCrc without a header");
                assert!(len <= MAX_PAYLOAD && buf.len() >= HEADER_LEN + len, "BadCrc before the frame is whole");
                let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
                assert_ne!(crc32fast::hash(&buf[HEADER_LEN..HEADER_LEN + len]), crc, "BadCrc on a matching crc");
                return consumed;
            }
            Err(e) => panic!("parse_frame returned {e:?}"),
        }
    }
}

/// The payload length a frame header at the start of `buf` announces, if the header is whole.
fn declared_len(buf: &[u8]) -> Option<usize> {
    let len = buf.get(..4)?;
    (buf.len() >= HEADER_LEN).then(|| u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize)
}

/// What must hold of a message decoded from `payload`.
fn check_message(msg: &Message, payload: &[u8]) {
    let mut frame = [0u8; MAX_FRAME];
    let n = match wire::encode_frame(msg, &mut frame) {
        Ok(n) => n,
        // Only a payload over the cap (possible in the `message` target) may not fit a frame.
        Err(WireError::BufferTooSmall) if payload.len() > MAX_PAYLOAD => return,
        Err(e) => panic!("a {}-byte payload decoded to {msg:?} but does not re-encode: {e}", payload.len()),
    };
    let encoded = &frame[HEADER_LEN..n];
    // The encoder writes minimal varints and the decoder accepts longer ones, so the re-encoding
    // is never longer than the payload, and equally long only if it is the same bytes.
    assert!(
        encoded.len() < payload.len() || encoded == payload,
        "re-encoding of {msg:?} is not canonical: {payload:02x?} -> {encoded:02x?}"
    );
    let (again, used) = match wire::parse_frame(&frame[..n]) {
        Ok(Some(found)) => found,
        other => panic!("our own frame for {msg:?} does not parse: {other:?}"),
    };
    assert_eq!(used, n);
    assert_eq!(wire::decode_message(again).as_ref(), Ok(msg), "re-encoding decodes differently");
    match *msg {
        Message::Block { chunk, offset, data } => check_block_header(chunk, offset, data.0, &frame[..n]),
        Message::Peers(bytes) => check_peers(bytes.0),
        _ => {}
    }
}

/// The hand-written block header (`begin_block`) must build the same frame as postcard.
fn check_block_header(chunk: u32, offset: u32, data: &[u8], encoded: &[u8]) {
    let mut frame = [0u8; MAX_FRAME];
    let start = match wire::begin_block(chunk, offset, data.len() as u32, &mut frame) {
        Ok(start) => start,
        Err(e) => panic!("begin_block refuses a block that encode_frame accepts ({} bytes): {e}", data.len()),
    };
    let end = start + data.len();
    frame[start..end].copy_from_slice(data);
    wire::seal_frame(&mut frame[..end]);
    assert_eq!(&frame[..end], encoded, "begin_block differs from encode_frame");
}

/// `decode_peers` accepts exactly whole entries up to the cap, and each re-encodes as it came.
fn check_peers(bytes: &[u8]) {
    let Some(peers) = wire::decode_peers(bytes) else {
        assert!(
            !bytes.len().is_multiple_of(PEER_ENTRY) || bytes.len() / PEER_ENTRY > MAX_PEX_PEERS,
            "refused good entries"
        );
        return;
    };
    let mut out = Vec::with_capacity(bytes.len());
    for addr in peers {
        let mut entry = [0u8; PEER_ENTRY];
        wire::encode_peer(addr, &mut entry);
        out.extend_from_slice(&entry);
    }
    assert!(out.len() / PEER_ENTRY <= MAX_PEX_PEERS);
    assert_eq!(out, bytes, "peer entries do not re-encode to themselves");
}

/// What must hold of a manifest that decoded and verified.
fn check_manifest(signed: &SignedManifest, data: &[u8]) {
    assert!(data.len() <= MAX_MANIFEST_BYTES);
    assert_eq!(signed.bytes, data, "bytes are not the input");
    let signers = signed.signers.len();
    assert!((1..=MAX_SIGNATURES).contains(&signers), "{signers} signatures");
    let signed_part = &data[..data.len() - 1 - SIGNATURE_ENTRY * signers];
    assert_eq!(
        signed.swarm_id,
        <[u8; 32]>::from(Sha256::digest(signed_part)),
        "swarm id is not SHA-256 of the signed part"
    );
    let again = SignedManifest::decode(&signed.bytes).expect("re-decoding the accepted bytes fails");
    assert_eq!((&again.manifest, again.swarm_id), (&signed.manifest, signed.swarm_id));
    let m = &signed.manifest;
    assert!(manifest::valid_name(&m.name), "accepted name {:?}", m.name);
    assert!(m.chunk_size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&m.chunk_size));
    assert!(m.file_size >= 1);
    let count = m.chunk_count();
    assert!((1..=MAX_CHUNKS).contains(&count), "{count} chunks");
    assert_eq!(u64::from(count), m.file_size.div_ceil(u64::from(m.chunk_size)));
    let last = count - 1;
    assert!((1..=m.chunk_size).contains(&m.chunk_len(last)));
    assert_eq!(m.chunk_offset(last) + u64::from(m.chunk_len(last)), m.file_size);
    assert_eq!(m.chunk_len(count), 0);
    assert!(m.targets.len() <= MAX_TARGETS && m.targets.iter().all(|t| manifest::valid_name(t)), "{:?}", m.targets);
    let all = TrustPolicy::new(signed.signers.clone(), signers).expect("distinct signers");
    all.check(signed).expect("its own signers do not meet a threshold of all of them");
}

/// The fixed key `manifest_resigned` signs with; the seed is arbitrary but never all zero.
fn fuzz_key() -> &'static ed25519_compact::KeyPair {
    static KEY: OnceLock<ed25519_compact::KeyPair> = OnceLock::new();
    KEY.get_or_init(|| ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([0x5a; 32])))
}

/// `store::parse_state` on a state file: the chunk count and swarm id it must match come from
/// the input's first bytes (count capped at `MAX_CHUNKS`), and the crc32 is filled in half the
/// time so the checks behind it are reached. An accepted file yields exactly `count` bits that
/// re-encode to the same bitfield bytes.
pub fn state(data: &[u8]) {
    if data.len() < 4 + 32 {
        return;
    }
    let count = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) % (flotilla::core::manifest::MAX_CHUNKS + 1);
    let mut id = [0u8; 32];
    id.copy_from_slice(&data[4..36]);
    let mut file = data[36..].to_vec();
    if file.len() >= 4 && data[0] & 1 == 1 {
        let n = file.len() - 4;
        let crc = crc32fast::hash(&file[..n]).to_le_bytes();
        file[n..].copy_from_slice(&crc);
    }
    if let Ok(bits) = flotilla::store::file::parse_state(&file, &id, count) {
        assert_eq!(bits.len(), count);
        let body = &file[..file.len() - 4];
        assert_eq!(bits.as_bytes(), &body[body.len() - bits.as_bytes().len()..]);
    }
}

/// Target `session`: a whole connection, handshake first, as a peer drives it.
///
/// The first byte chooses the setting (bit 0: both ends hold a fleet secret; bit 1: the agent
/// under test dialled; bit 2: it is the seed, else the fetcher). A real peer (a `Swarm`) and the
/// agent under test (a `Release` over `MemStore`) are joined; the rest of the input is a
/// sequence of steps: let the honest traffic flow both ways, let time pass, or inject a message
/// the input spells (postcard bytes), sealed under the peer's channel when there is one so that
/// it reaches the session's logic past the tag check, or a raw frame. Whatever happens, nothing
/// may panic, every frame the agent sends must decode, and a fetcher must never hold bytes that
/// are not the release's in a chunk it counts as ours.
pub fn session(data: &[u8]) {
    use flotilla::core::auth::{fleet_key, FleetKeys};
    use flotilla::core::bitfield::Bitfield;
    use flotilla::core::manifest::Manifest;
    use flotilla::core::release::{Release, ReleaseConfig};
    use flotilla::core::swarm::{NewPeer, Swarm, SwarmConfig, Transmit};
    use flotilla::store::memory::MemStore;
    use std::time::{Duration, Instant};

    let Some((&flags, mut rest)) = data.split_first() else { return };
    let (fleet, we_dial, we_seed) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
    const CHUNK: u32 = 16 * 1024;
    // Two chunks, the last short: every path (first, last, whole release) at the least cost per
    // run. Built once; a run only clones it.
    static RELEASE: OnceLock<(Vec<u8>, Manifest)> = OnceLock::new();
    let (image, m) = RELEASE.get_or_init(|| {
        let image: Vec<u8> = (0..CHUNK as usize + 100).map(|i| (i * 31 % 251) as u8).collect();
        let m = Manifest {
            name: "fuzz.img".into(),
            release: 1,
            file_size: image.len() as u64,
            chunk_size: CHUNK,
            file_hash: Sha256::digest(&image).into(),
            chunk_hashes: image.chunks(CHUNK as usize).map(|c| Sha256::digest(c).into()).collect(),
            expires: None,
            targets: Vec::new(),
            rollout: None,
        };
        (image, m)
    });
    let n = m.chunk_count();
    let signed = SignedManifest { manifest: m.clone(), bytes: Vec::new(), swarm_id: [3; 32], signers: Vec::new() };
    let image = image.as_slice();
    let mut keys = FleetKeys::default();
    if fleet {
        keys.push(fleet_key(b"the fuzzed fleet's secret, 32 b."));
    }
    let config = |node| SwarmConfig { node, fleet_keys: keys, ..SwarmConfig::default() };
    let now0 = Instant::now();
    let (store, present) = match we_seed {
        true => (MemStore::with_data("fuzz.img", image.to_vec(), true), Bitfield::full(n)),
        false => (MemStore::new("fuzz.img", image.len() as u64), Bitfield::new(n)),
    };
    let mut us =
        Release::new(&signed, store, &present, ReleaseConfig { swarm: config(1), ..Default::default() }, 1, now0);
    let peer_have = if we_seed { Bitfield::new(n) } else { Bitfield::full(n) };
    let mut peer = Swarm::new(m, [3; 32], &peer_have, config(2), 2);
    us.add_peer(0, NewPeer { outbound: we_dial, remote: None, beyond_lan: false, nonce: [1; 16] }, now0);
    peer.add_peer(0, NewPeer { outbound: !we_dial, remote: None, beyond_lan: false, nonce: [2; 16] }, now0);

    let mut now = now0;
    let mut frame = vec![0u8; MAX_FRAME];
    let deliver_to_us = |us: &mut Release<MemStore>, f: &mut [u8], now| us.handle_frame(0, f, now);
    for _ in 0..32 {
        let Some((&op, tail)) = rest.split_first() else { break };
        rest = tail;
        match op % 4 {
            // Honest traffic both ways, a few rounds.
            0 => {
                for _ in 0..3 {
                    while let Some(len) = us.poll_transmit(0, now, true, &mut frame) {
                        let mut sent = frame[..len].to_vec();
                        if let Ok(payload) = peer.open_frame(0, &mut sent) {
                            let msg = wire::decode_message(payload).expect("the agent sent an undecodable frame");
                            let _ = peer.handle_message(0, &msg, now);
                        }
                    }
                    while let Some(t) = peer.poll_transmit(0, now, true) {
                        let (len, hello) = match t {
                            Transmit::Message(msg) => {
                                (wire::encode_frame(&msg, &mut frame).unwrap(), matches!(msg, Message::Hello { .. }))
                            }
                            Transmit::Block { chunk, offset, len, file_offset } => {
                                let start = wire::begin_block(chunk, offset, len, &mut frame).unwrap();
                                let end = start + len as usize;
                                frame[start..end]
                                    .copy_from_slice(&image[file_offset as usize..file_offset as usize + len as usize]);
                                wire::seal_frame(&mut frame[..end]);
                                (end, false)
                            }
                        };
                        let len = peer.seal_frame(0, &mut frame, len, hello);
                        deliver_to_us(&mut us, &mut frame[..len], now);
                    }
                }
            }
            // Time passes: 0 to 255 s.
            1 => {
                let Some((&secs, tail)) = rest.split_first() else { break };
                rest = tail;
                now += Duration::from_secs(secs as u64);
                us.handle_timeout(now);
                peer.handle_timeout(now);
            }
            // A message spelled by the input, sealed like the peer's own.
            2 => {
                let Some((&len, tail)) = rest.split_first() else { break };
                let take = (len as usize).min(tail.len());
                let (spelled, tail) = tail.split_at(take);
                rest = tail;
                let Ok(msg) = wire::decode_message(spelled) else { continue };
                let Ok(len) = wire::encode_frame(&msg, &mut frame) else { continue };
                let len = peer.seal_frame(0, &mut frame, len, matches!(msg, Message::Hello { .. }));
                deliver_to_us(&mut us, &mut frame[..len], now);
            }
            // Raw bytes as one frame, length header filled in.
            _ => {
                let Some((&len, tail)) = rest.split_first() else { break };
                let take = (len as usize).min(tail.len());
                let (raw, tail) = tail.split_at(take);
                rest = tail;
                let mut f = vec![0u8; HEADER_LEN + raw.len()];
                f[HEADER_LEN..].copy_from_slice(raw);
                wire::seal_frame(&mut f);
                deliver_to_us(&mut us, &mut f, now);
            }
        }
        while us.poll_event(now).is_some() {}
    }
    // Whatever the peer did, what we count as ours is the release's bytes.
    if let Some(committed) = us.store().committed() {
        for c in committed.iter_ones() {
            let (off, len) = (m.chunk_offset(c) as usize, m.chunk_len(c) as usize);
            assert_eq!(
                &us.store().data()[off..off + len],
                &image[off..off + len],
                "chunk {c} committed with wrong bytes"
            );
        }
    }
}

/// Target `local_files`: the files a device keeps and reads back, as a disk error, a bad copy
/// or another user could leave them. The first byte picks the reader: 0 the no-rollback history,
/// 1 the install hooks owed, 2 a secret key file, 3 a public key file, 4 a trust root. Each
/// either refuses the bytes or returns something that holds its invariants and reads back the same.
pub fn local_files(data: &[u8]) {
    use flotilla::core::manifest::{PublicKey, SecretKey};
    use flotilla::core::trust::SignedRoot;
    use flotilla::store::history::History;
    use flotilla::store::pending_hooks::PendingHooks;
    let Some((&kind, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    match kind % 5 {
        0 => {
            if let Ok(entries) = History::parse(&text) {
                let again: String = entries.iter().map(|(n, r)| format!("{n} {r}\n")).collect();
                assert_eq!(History::parse(&again).expect("a history we would write is refused"), entries);
                for (i, (n, _)) in entries.iter().enumerate() {
                    assert!(manifest::valid_name(n) && !entries[..i].iter().any(|(m, _)| m == n), "{n:?}");
                }
            }
        }
        1 => {
            if let Ok(entries) = PendingHooks::parse(&text) {
                assert!(entries.iter().all(|e| manifest::valid_name(&e.name)));
            }
        }
        2 => {
            if let Some(key) = SecretKey::parse(rest) {
                let public = key.public();
                assert_eq!(PublicKey::parse(public.to_hex().as_bytes()), Some(public));
            }
        }
        3 => {
            if let Some(key) = PublicKey::parse(rest) {
                assert_eq!(PublicKey::parse(key.to_hex().as_bytes()), Some(key));
            }
        }
        _ => {
            if let Ok(root) = SignedRoot::decode(rest) {
                let r = &root.root;
                assert!(r.serial >= 1);
                assert!((1..=r.policy.keys().len()).contains(&r.policy.threshold()));
                assert!((1..=r.root_policy.keys().len()).contains(&r.root_policy.threshold()));
                assert!(r.root_policy.is_met_by(&root.signers), "a root not signed by its own root keys");
                let again = SignedRoot::decode(&root.bytes).expect("re-decoding accepted bytes fails");
                assert_eq!(again.root, root.root);
            }
        }
    }
}
