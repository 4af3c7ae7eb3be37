//! The fleet channel: with `--fleet-secret`, every frame after the Hellos is encrypted and
//! authenticated under keys only members can derive.
//!
//! Keys: HKDF-SHA256 (RFC 5869; the `hkdf` crate) with the fleet key as input keying material and
//! SHA-256 of the handshake transcript as salt: both Hellos' swarm id, node numbers and fresh
//! random nonces (from the OS's CSPRNG), named by role. It expands to one ChaCha20-Poly1305 key
//! (RFC 8439; the `chacha20poly1305` crate) per direction. Each frame's nonce is a per-direction
//! counter, so a replayed, reordered, dropped or reflected frame fails its tag; a transcript that
//! differs on the two ends (a relay that changed a Hello, or two diallers) gives different keys.
//! The first sealed frame each way is the `Auth` proof below, the dialler's first: the acceptor
//! sends nothing under the keys until the dialler proved it holds the secret.
//!
//! The proof is HMAC-SHA256 (RFC 2104, built here on `sha2`) under the fleet key over the
//! transcript and the prover's role. Inside the channel it is key confirmation; the role byte
//! and the node numbers keep an agent's own proof from being reflected back at it.

use flotilla_aead::Key;
use sha2::{Digest, Sha256};

/// Bytes of the per-connection nonce each Hello carries.
pub const NONCE_LEN: usize = 16;
/// A fleet key: SHA-256 of the secret file's contents.
pub type FleetKey = [u8; 32];
/// Bytes a fleet secret file must hold at least: `flotilla keygen --fleet-secret` writes 32
/// random ones, so that guessing it offline from a recorded handshake is hopeless.
pub const MIN_SECRET_LEN: usize = 32;
/// Fleet secrets accepted at once (`--fleet-secret` repeated during a rotation).
pub const MAX_FLEET_KEYS: usize = 4;
/// Bytes of the authentication tag that ends every sealed frame.
pub const TAG_LEN: usize = flotilla_aead::TAG_LEN;

const LABEL: &[u8] = b"flotilla fleet v2";

/// The fleet keys an agent holds: the first is used for connections it dials, any is accepted
/// on connections it accepts, so a fleet can roll to a new secret without a flag day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetKeys {
    keys: [FleetKey; MAX_FLEET_KEYS],
    len: usize,
}

impl FleetKeys {
    /// Adds a key; false if `MAX_FLEET_KEYS` are held already.
    pub fn push(&mut self, key: FleetKey) -> bool {
        if self.len == MAX_FLEET_KEYS {
            return false;
        }
        self.keys[self.len] = key;
        self.len += 1;
        true
    }

    /// True without any key: no fleet channel, frames carry a crc32 only.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The keys, the one used to dial first.
    pub fn as_slice(&self) -> &[FleetKey] {
        &self.keys[..self.len]
    }
}

/// One connection's sealed channel: a key and a frame counter per direction.
pub struct Channel {
    send: Key,
    recv: Key,
    sent: u64,
    received: u64,
    /// The fleet key it was derived from, for the proof.
    key: FleetKey,
}

impl Channel {
    /// The channel of the end whose role is `role`, for transcript `t` under fleet key `key`.
    pub fn derive(key: &FleetKey, role: Role, t: &Transcript) -> Channel {
        let salt = Sha256::new().chain_update(LABEL).chain_update(transcript_bytes(t)).finalize();
        let hk = hkdf::Hkdf::<Sha256>::new(Some(&salt), key);
        let mut d2a = [0u8; 32];
        let mut a2d = [0u8; 32];
        // Cannot fail: 32 bytes is far below HKDF-SHA256's limit of 255 * 32.
        let _ = hk.expand(b"dialler to acceptor", &mut d2a);
        let _ = hk.expand(b"acceptor to dialler", &mut a2d);
        let (send, recv) = match role {
            Role::Dialler => (d2a, a2d),
            Role::Acceptor => (a2d, d2a),
        };
        Channel { send: Key::new(&send), recv: Key::new(&recv), sent: 0, received: 0, key: *key }
    }

    /// The fleet key this channel was derived from.
    pub fn key(&self) -> &FleetKey {
        &self.key
    }

    /// Encrypts `payload` in place, authenticating `header` with it; returns the tag.
    pub fn seal(&mut self, header: &[u8], payload: &mut [u8]) -> [u8; TAG_LEN] {
        let nonce = counter_nonce(self.sent);
        self.sent += 1;
        self.send.seal(&nonce, header, payload)
    }

    /// Checks `tag` over `header` and `payload` and decrypts `payload` in place; on failure the
    /// payload is left as it was and the counter does not move.
    pub fn open(&mut self, header: &[u8], payload: &mut [u8], tag: &[u8; TAG_LEN]) -> Result<(), BadTag> {
        let nonce = counter_nonce(self.received);
        self.recv.open(&nonce, header, payload, tag).map_err(|_| BadTag)?;
        self.received += 1;
        Ok(())
    }
}

/// A sealed frame whose tag did not check: another key, or bytes altered on the way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadTag;

/// The 96-bit AEAD nonce of frame number `n` in one direction.
fn counter_nonce(n: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&n.to_le_bytes());
    nonce
}

/// The transcript as bytes: swarm id, node numbers and nonces, in role order.
fn transcript_bytes(t: &Transcript) -> [u8; 32 + 8 + 8 + 2 * NONCE_LEN] {
    let mut out = [0u8; 32 + 8 + 8 + 2 * NONCE_LEN];
    out[..32].copy_from_slice(t.swarm);
    out[32..40].copy_from_slice(&t.dialler_node.to_be_bytes());
    out[40..48].copy_from_slice(&t.acceptor_node.to_be_bytes());
    out[48..48 + NONCE_LEN].copy_from_slice(t.dialler_nonce);
    out[48 + NONCE_LEN..].copy_from_slice(t.acceptor_nonce);
    out
}

/// Which end of the connection a proof comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The end that opened the connection.
    Dialler = 0,
    /// The end that accepted it.
    Acceptor = 1,
}

/// The Hello fields a proof covers, named by role rather than by "us" and "them".
#[derive(Clone, Copy, Debug)]
pub struct Transcript<'a> {
    /// The swarm the connection serves.
    pub swarm: &'a [u8; 32],
    /// Node number of the dialler.
    pub dialler_node: u64,
    /// Node number of the acceptor.
    pub acceptor_node: u64,
    /// Nonce of the dialler.
    pub dialler_nonce: &'a [u8; NONCE_LEN],
    /// Nonce of the acceptor.
    pub acceptor_nonce: &'a [u8; NONCE_LEN],
}

/// Derives the key from a secret file's bytes.
pub fn fleet_key(secret: &[u8]) -> FleetKey {
    Sha256::digest(secret).into()
}

/// The proof `role` sends for transcript `t`.
pub fn proof(key: &FleetKey, role: Role, t: &Transcript) -> [u8; 32] {
    let mut msg = [0u8; 17 + 32 + 1 + 8 + 8 + 2 * NONCE_LEN];
    let mut at = 0;
    for part in [LABEL, t.swarm, &[role as u8], &t.dialler_node.to_be_bytes(), &t.acceptor_node.to_be_bytes()] {
        msg[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    msg[at..at + NONCE_LEN].copy_from_slice(t.dialler_nonce);
    msg[at + NONCE_LEN..].copy_from_slice(t.acceptor_nonce);
    hmac_sha256(key, &msg)
}

/// Compares two proofs in time independent of where they differ.
pub fn proofs_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// HMAC-SHA256 with a key of at most one block (ours are 32 bytes).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| block.map(|k| k ^ b);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(msg).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 and test case 6 (a key longer than a block).
        let out = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(out.to_vec(), hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"));
        let out = hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(out.to_vec(), hex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"));
    }

    #[test]
    fn proofs_bind_role_nodes_nonces_and_swarm() {
        let key = fleet_key(b"a fleet secret of some length");
        let (n1, n2) = ([1u8; NONCE_LEN], [2u8; NONCE_LEN]);
        let t =
            Transcript { swarm: &[9; 32], dialler_node: 1, acceptor_node: 2, dialler_nonce: &n1, acceptor_nonce: &n2 };
        let p = proof(&key, Role::Dialler, &t);
        assert!(proofs_equal(&p, &proof(&key, Role::Dialler, &t)));
        assert!(!proofs_equal(&p, &proof(&key, Role::Acceptor, &t)), "role");
        assert!(!proofs_equal(&p, &proof(&fleet_key(b"another secret, same length!!"), Role::Dialler, &t)), "key");
        let other = [
            Transcript { dialler_node: 3, ..t },
            Transcript { acceptor_nonce: &n1, ..t },
            Transcript { swarm: &[8; 32], ..t },
        ];
        for o in other {
            assert!(!proofs_equal(&p, &proof(&key, Role::Dialler, &o)));
        }
    }

    fn transcript<'a>(n1: &'a [u8; NONCE_LEN], n2: &'a [u8; NONCE_LEN]) -> Transcript<'a> {
        Transcript { swarm: &[9; 32], dialler_node: 1, acceptor_node: 2, dialler_nonce: n1, acceptor_nonce: n2 }
    }

    #[test]
    fn hkdf_matches_rfc_5869_case_1() {
        // The crate is established; this pins that we call it as the RFC defines HKDF-SHA256.
        let ikm = [0x0b; 22];
        let salt = hex("000102030405060708090a0b0c");
        let info = hex("f0f1f2f3f4f5f6f7f8f9");
        let mut okm = [0u8; 42];
        hkdf::Hkdf::<Sha256>::new(Some(&salt), &ikm).expand(&info, &mut okm).unwrap();
        let want = hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
        assert_eq!(okm.to_vec(), want);
    }

    #[test]
    fn both_ends_derive_matching_keys_and_frames_open_once_in_order() {
        let key = fleet_key(&[7; 32]);
        let (n1, n2) = ([1u8; NONCE_LEN], [2u8; NONCE_LEN]);
        let t = transcript(&n1, &n2);
        let (mut d, mut a) = (Channel::derive(&key, Role::Dialler, &t), Channel::derive(&key, Role::Acceptor, &t));
        let mut frames = Vec::new();
        for i in 0..3u8 {
            let mut payload = [i; 40];
            let tag = d.seal(b"hdr", &mut payload);
            assert_ne!(payload, [i; 40], "the payload is encrypted");
            frames.push((payload, tag));
        }
        // Out of order: frame 1 before frame 0 fails, and leaves the bytes as they were.
        let (mut p1, t1) = frames[1];
        assert!(a.open(b"hdr", &mut p1, &t1).is_err());
        assert_eq!(p1, frames[1].0);
        for (i, (mut p, t)) in frames.iter().copied().enumerate() {
            a.open(b"hdr", &mut p, &t).unwrap();
            assert_eq!(p, [i as u8; 40]);
        }
        // Replayed: frame 0 again fails.
        let (mut p0, t0) = frames[0];
        assert!(a.open(b"hdr", &mut p0, &t0).is_err());
        // Reflected: the dialler cannot open its own frames, and a changed header fails.
        let mut own = [5u8; 8];
        let tag = d.seal(b"hdr", &mut own);
        let mut d2 = Channel::derive(&key, Role::Dialler, &t);
        assert!(d2.open(b"hdr", &mut own.clone(), &tag).is_err());
        assert!(a.open(b"HDR", &mut own.clone(), &tag).is_err());
        assert!(a.open(b"hdr", &mut own, &tag).is_ok());
    }

    #[test]
    fn another_key_or_transcript_gives_keys_that_do_not_open() {
        let key = fleet_key(&[7; 32]);
        let (n1, n2, n3) = ([1u8; NONCE_LEN], [2u8; NONCE_LEN], [3u8; NONCE_LEN]);
        let mut d = Channel::derive(&key, Role::Dialler, &transcript(&n1, &n2));
        let mut p = [0u8; 16];
        let tag = d.seal(b"", &mut p);
        let others = [
            Channel::derive(&fleet_key(&[8; 32]), Role::Acceptor, &transcript(&n1, &n2)),
            Channel::derive(&key, Role::Acceptor, &transcript(&n1, &n3)),
            Channel::derive(&key, Role::Dialler, &transcript(&n1, &n2)),
        ];
        for mut o in others {
            assert!(o.open(b"", &mut p.clone(), &tag).is_err());
        }
    }
}
