//! The checks of the `root_successor` target: a fuzzed trust root *body*, sealed and re-signed
//! with fixed keys, through `SignedRoot::decode` and then `Root::check_successor` and `advance`
//! against fixed roots, in both directions.
//!
//! A mutated signed root never verifies, so the `local_files` target barely reaches the checks
//! behind the signatures (body fields, thresholds, the successor rule). Here every body that
//! parses is verified, and every root that decodes is judged as a successor of a fixed current
//! root and as the current root of a fixed successor, with the verdict predicted independently.
//!
//! A module of `lib.rs` like the other targets' checks, in a file of its own for its length.

use std::sync::OnceLock;

use flotilla::core::manifest::{ManifestError, PublicKey, SecretKey};
use flotilla::core::signed::{self, HEADER_LEN, SIGNATURE_ENTRY};
use flotilla::core::trust::{advance, Root, SignedRoot, TrustPolicy, MAX_ROOT_BYTES, ROOT_MAGIC};

/// The fixed keys: `A` and `B` are the current roots' root keys, `C` their release key; the
/// input's first byte picks which of them sign the fuzzed body.
pub const KEY_SEEDS: [u8; 3] = [0x11, 0x22, 0x33];

/// The fixed keys ([`KEY_SEEDS`]), as `flotilla keygen` would have written them.
pub fn keys() -> &'static [SecretKey; 3] {
    static KEYS: OnceLock<[SecretKey; 3]> = OnceLock::new();
    KEYS.get_or_init(|| {
        KEY_SEEDS.map(|b| {
            let text = format!("flotilla-secret-key-v1 {}", format!("{b:02x}").repeat(32));
            SecretKey::parse(text.as_bytes()).expect("a fixed key")
        })
    })
}

/// The fixed roots a fuzzed root is judged against: `current[t - 1]` is root 1 with release key
/// C and root keys A and B, `t` of which must sign root 2; `next` is a root 2 signed by A alone.
struct Fixed {
    current: [SignedRoot; 2],
    next: SignedRoot,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let [a, b, c] = keys();
        let policy = |ks: &[&SecretKey], t| TrustPolicy::new(ks.iter().map(|k| k.public()).collect(), t).unwrap();
        let root =
            |serial, root_policy| Root { serial, policy: policy(&[c], 1), root_policy, max_jump: None, floors: vec![] };
        let current = [1, 2].map(|t| SignedRoot::sign(&root(1, policy(&[a, b], t)), &[a, b]).unwrap());
        let next = SignedRoot::sign(&root(2, policy(&[a], 1)), &[a]).unwrap();
        Fixed { current, next }
    })
}

/// The signers the selector byte names: bit 0 A, bit 1 B, bit 2 C (none named: A).
pub fn signers(pick: u8) -> Vec<&'static SecretKey> {
    let chosen: Vec<&SecretKey> =
        keys().iter().enumerate().filter(|(i, _)| pick & (1 << i) != 0).map(|(_, k)| k).collect();
    if chosen.is_empty() {
        vec![&keys()[0]]
    } else {
        chosen
    }
}

/// `body` sealed as a root file (magic, length, body) and signed by `signers`.
pub fn resign(body: &[u8], signers: &[&SecretKey]) -> Vec<u8> {
    signed::seal(ROOT_MAGIC, body, signers).expect("distinct fixed keys")
}

/// Target `root_successor`. Input: a selector byte, then a root body (postcard, as
/// `SignedRoot::sign` writes it). Bits 0-2 of the selector pick the signers ([`signers`]); bit 3
/// picks the current root whose successor the body must be (1 or 2 of A and B must sign).
pub fn root_successor(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else { return };
    let signers = signers(pick);
    if HEADER_LEN + body.len() + 1 + SIGNATURE_ENTRY * signers.len() > MAX_ROOT_BYTES {
        return;
    }
    let file = resign(body, &signers);
    let next = match SignedRoot::decode(&file) {
        Ok(next) => next,
        Err(e) => {
            assert!(e.is_bad_input() && !e.to_string().is_empty(), "decoding bytes failed oddly: {e}");
            return;
        }
    };
    let public: Vec<PublicKey> = signers.iter().map(|k| k.public()).collect();
    check_decoded(&next, &file, &public, body.len());

    // As a successor of a fixed root 1: the next serial, signed by enough of A and B.
    let fixed = fixed();
    let current = &fixed.current[usize::from(pick >> 3 & 1)];
    let from_current = public.iter().filter(|k| current.root.root_policy.keys().contains(k)).count();
    let expected = next.root.serial == 2 && from_current >= current.root.root_policy.threshold();
    let verdict = current.root.check_successor(&next);
    assert_eq!(verdict.is_ok(), expected, "root {} signed by {public:?}: {verdict:?}", next.root.serial);
    check_refusal(verdict);
    let (now, refused) = advance(current.clone(), vec![next.clone()]);
    match (expected, next.root.serial > 1) {
        (true, _) => assert!(now.root == next.root && refused.is_empty(), "advance did not take root 2"),
        (false, true) => {
            assert_eq!(now.root, current.root, "advance took a refused root");
            assert_eq!(refused.len(), 1, "a refused newer root is not reported: {refused:?}");
            assert_eq!(refused[0].0, next.root.serial);
        }
        (false, false) => assert!(now.root == current.root && refused.is_empty(), "root 1 is history, not refused"),
    }

    // As the current root of a fixed root 2 signed by A alone.
    let a = keys()[0].public();
    let expected = next.root.serial == 1 && next.root.root_policy.is_met_by(&[a]);
    let verdict = next.root.check_successor(&fixed.next);
    assert_eq!(verdict.is_ok(), expected, "root 2 after {:?}: {verdict:?}", next.root);
    check_refusal(verdict);
    let (now, refused) = advance(next.clone(), vec![fixed.next.clone(), current.clone()]);
    let newest = if expected { 2 } else { next.root.serial };
    assert_eq!(now.root.serial, newest, "advance from root {} ended at {}", next.root.serial, now.root.serial);
    assert!(refused.len() <= 2 && refused.iter().all(|(s, _)| *s > next.root.serial), "{refused:?}");
}

/// What must hold of a root that decoded from `file`, signed by `public`, with a body of
/// `body_len` bytes.
fn check_decoded(next: &SignedRoot, file: &[u8], public: &[PublicKey], body_len: usize) {
    let r = &next.root;
    assert_eq!(next.bytes, file, "bytes are not the input");
    assert_eq!(next.signers, public, "signers are not the keys that signed");
    assert!(r.serial >= 1, "serial 0 accepted");
    for p in [&r.policy, &r.root_policy] {
        assert!(!p.keys().is_empty() && p.keys().len() <= flotilla::core::trust::MAX_ROOT_KEYS, "{p:?}");
        assert!((1..=p.keys().len()).contains(&p.threshold()), "unreachable threshold {p:?}");
        assert!(p.keys().windows(2).all(|w| w[0].0 < w[1].0), "keys not sorted and distinct: {p:?}");
    }
    assert!(r.root_policy.is_met_by(&next.signers), "a root not signed by its own root keys");
    assert!(r.floors.len() <= flotilla::core::trust::MAX_FLOORS);
    assert!(r.floors.iter().all(|(n, _)| flotilla::core::manifest::valid_name(n)), "{:?}", r.floors);
    let again = SignedRoot::decode(&next.bytes).expect("re-decoding accepted bytes fails");
    assert_eq!(again.root, next.root);
    // Written again by `flotilla root`'s encoder, the same root comes back, in no more bytes
    // (postcard accepts over-long varints and repeated keys; the encoder writes neither).
    let signers: Vec<&SecretKey> = keys().iter().filter(|k| public.contains(&k.public())).collect();
    let written = SignedRoot::sign(r, &signers).expect("a decoded root cannot be written again");
    assert_eq!(written.root, next.root, "written again, the root differs");
    let written_body = written.bytes.len() - HEADER_LEN - 1 - SIGNATURE_ENTRY * signers.len();
    assert!(written_body <= body_len, "re-encoding is longer ({written_body} > {body_len} bytes)");
}

/// A refusal is a bad-input error that says why.
fn check_refusal(verdict: Result<(), ManifestError>) {
    if let Err(e) = verdict {
        assert!(e.is_bad_input() && e.to_string().starts_with("trust root refused: root "), "{e}");
    }
}

/// The seed corpus: valid bodies with the selector that signs them, a name for each.
/// `cargo test --manifest-path fuzz/Cargo.toml --test root_successor -- --ignored` writes them.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let [a, b, c] = keys();
    let policy = |ks: &[&SecretKey], t| TrustPolicy::new(ks.iter().map(|k| k.public()).collect(), t).unwrap();
    // The body alone: signed here by all three keys, whichever the selector picks.
    let body = |root: &Root| {
        let file = SignedRoot::sign(root, &[a, b, c]).unwrap().bytes;
        let len = u32::from_le_bytes(file[8..12].try_into().unwrap()) as usize;
        file[HEADER_LEN..HEADER_LEN + len].to_vec()
    };
    let with = |pick: u8, body: Vec<u8>| [&[pick][..], &body].concat();
    let root = |serial, root_policy, max_jump, floors: &[(&str, u64)]| Root {
        serial,
        policy: policy(&[c], 1),
        root_policy,
        max_jump,
        floors: floors.iter().map(|&(n, r)| (n.to_owned(), r)).collect(),
    };
    let many: Vec<(String, u64)> = (0..16).map(|i| (format!("part-{i}.img"), i * 1000)).collect();
    let many: Vec<(&str, u64)> = many.iter().map(|(n, r)| (n.as_str(), *r)).collect();
    let eight: Vec<PublicKey> = (1..=8u8).map(|i| PublicKey([i; 32])).collect();
    let wide = Root { policy: TrustPolicy::new(eight.clone(), 3).unwrap(), ..root(2, policy(&[a], 1), None, &[]) };
    let seven_and_a = eight[1..].iter().copied().chain([a.public()]).collect();
    let wide_root = Root { root_policy: TrustPolicy::new(seven_and_a, 1).unwrap(), ..wide.clone() };
    vec![
        // Taken by either current root: root 2 by A, B and C, rotating root keys to A and C.
        ("rotate.body", with(0b111, body(&root(2, policy(&[a, c], 2), Some(10), &[])))),
        // Taken only by the 1-of-2 current root (bit 3 clear): A alone.
        ("one_of_two.body", with(0b001, body(&root(2, policy(&[a], 1), None, &[("fw.img", 5)])))),
        // Refused by the 2-of-2 current root (bit 3 set): A alone.
        ("below_threshold.body", with(0b1001, body(&root(2, policy(&[a], 1), None, &[])))),
        // Refused: C is no root key of root 1, though it is its own.
        ("thief.body", with(0b100, body(&root(2, policy(&[c], 1), None, &[])))),
        // Refused: a serial skipped; history: serial 1, which root 2 may follow.
        ("skip.body", with(0b011, body(&root(3, policy(&[a, b], 1), None, &[])))),
        ("history.body", with(0b001, body(&root(1, policy(&[a], 1), Some(u64::MAX), &[])))),
        // The last serial: no root follows it (a successor's serial once overflowed here).
        ("last_serial.body", with(0b001, body(&root(u64::MAX, policy(&[a], 1), None, &[])))),
        // The limits: 16 floors, 8 release keys, 8 root keys.
        ("floors.body", with(0b011, body(&root(2, policy(&[a, b], 2), Some(1), &many)))),
        ("wide.body", with(0b001, body(&wide))),
        ("wide_root_keys.body", with(0b001, body(&wide_root))),
    ]
}
