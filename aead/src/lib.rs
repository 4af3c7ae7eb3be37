//! ChaCha20-Poly1305 (RFC 8439, RustCrypto's `chacha20poly1305`) for the fleet channel, as
//! plain functions over a 32-byte key, a 96-bit nonce, associated data and a buffer encrypted
//! or decrypted in place with a detached 16-byte tag.
//!
//! Why a crate of its own: see `Cargo.toml`. Every function here is `#[inline(never)]` so that
//! the speed-optimised code generated here is what runs, not a size-optimised copy inlined into
//! the caller.

#![no_std]
#![forbid(unsafe_code)]

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};

/// Bytes of the authentication tag.
pub const TAG_LEN: usize = 16;

/// One direction's key, expanded once.
#[derive(Clone)]
pub struct Key(ChaCha20Poly1305);

/// A tag that did not check: another key, another nonce, or altered bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadTag;

impl Key {
    /// The key `key`.
    #[inline(never)]
    pub fn new(key: &[u8; 32]) -> Key {
        Key(ChaCha20Poly1305::new(key.into()))
    }

    /// Encrypts `buf` in place under `nonce`, authenticating `aad` with it; returns the tag.
    #[inline(never)]
    pub fn seal(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        // Cannot fail: one frame is far below ChaCha20-Poly1305's 256 GiB limit per message.
        self.0.encrypt_in_place_detached(nonce.into(), aad, buf).map(Into::into).unwrap_or_default()
    }

    /// Checks `tag` over `aad` and `buf` under `nonce` and decrypts `buf` in place; on failure
    /// `buf` is left as it was.
    #[inline(never)]
    pub fn open(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8], tag: &[u8; TAG_LEN]) -> Result<(), BadTag> {
        self.0.decrypt_in_place_detached(nonce.into(), aad, buf, tag.into()).map_err(|_| BadTag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn matches_rfc_8439_section_2_8_2() {
        // The AEAD test vector: key 80..9f, nonce 07000000 40..47, AAD 50515253 c0..c7.
        let mut key = [0u8; 32];
        for (i, b) in key.iter_mut().enumerate() {
            *b = 0x80 + i as u8;
        }
        let nonce = [0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47];
        let aad = [0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7];
        let plain = *b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let mut buf = plain;
        let k = Key::new(&key);
        let tag = k.seal(&nonce, &aad, &mut buf);
        assert_eq!(tag, hex("1ae10b594f09e26a7e902ecbd0600691"));
        assert_eq!(&buf[..4], &[0xd3, 0x1a, 0x8d, 0x34]);
        let mut bad = buf;
        bad[0] ^= 1;
        assert_eq!(k.open(&nonce, &aad, &mut bad, &tag), Err(BadTag));
        assert_eq!(bad[1..], buf[1..], "a failed open leaves the bytes");
        k.open(&nonce, &aad, &mut buf, &tag).unwrap();
        assert_eq!(buf, plain);
    }
}
