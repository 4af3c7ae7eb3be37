//! Fleet authentication: with `--fleet-secret`, both ends of a connection prove they hold the
//! fleet's shared secret before anything of the release is exchanged.
//!
//! Each side's proof is HMAC-SHA256 (RFC 2104, built here on `sha2`) under the secret's key,
//! over the swarm id, the role of the prover, both node numbers and both per-connection random
//! nonces from the Hellos. Fresh nonces on both sides defeat replay; the role byte and the node
//! numbers defeat reflecting an agent's own proof back at it through a second connection (an
//! agent refuses a Hello bearing its own node number). This module owns only the arithmetic.

use sha2::{Digest, Sha256};

/// Bytes of the per-connection nonce each Hello carries.
pub const NONCE_LEN: usize = 16;
/// A fleet key: SHA-256 of the secret file's contents.
pub type FleetKey = [u8; 32];
/// Fewest bytes a fleet secret file may hold.
pub const MIN_SECRET_LEN: usize = 16;

const LABEL: &[u8] = b"flotilla fleet v1";

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
}
