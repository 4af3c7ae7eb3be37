//! `cargo bench --bench cipher`: what sealing costs next to hashing, in the same process.
//!
//! Every byte a fetcher receives is hashed with SHA-256 anyway; with a fleet secret it is also
//! opened with ChaCha20-Poly1305; without one, the frame's crc32 is checked. This prints the
//! three speeds over the same 64 MiB (in 16 KiB frames, as on the wire) and their ratios, so the
//! figures hold on any CPU: run it natively, or cross-built under `qemu-aarch64` for a
//! router-class core (`scripts/cipher-qemu.sh`).

use flotilla_aead::Key;
use sha2::{Digest, Sha256};
use std::time::Instant;

const FRAME: usize = 16 * 1024;

fn main() {
    let mib: usize = std::env::var("FLOTILLA_CIPHER_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let total = (mib << 20).max(FRAME);
    let mut buf = vec![0x5au8; FRAME];
    let best = |f: &mut dyn FnMut()| {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    };

    let mut sha = || {
        let mut h = Sha256::new();
        for _ in 0..total / FRAME {
            h.update(&buf);
        }
        std::hint::black_box(h.finalize());
    };
    let sha_s = best(&mut sha);

    // The agent's own entry point (aead/), so this measures the code that ships.
    let cipher = Key::new(&[7u8; 32]);
    let mut n = 0u64;
    let mut seal = || {
        for _ in 0..total / FRAME {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&n.to_le_bytes());
            n += 1;
            let tag = cipher.seal(&nonce, b"header", &mut buf);
            std::hint::black_box(tag);
        }
    };
    let seal_s = best(&mut seal);
    // What a plain frame costs on top of the hash: the crc32 over its payload (crc32fast).
    let mut crc = || {
        let mut sum = 0u32;
        for i in 0..total / FRAME {
            buf[i % FRAME] ^= 1; // a new payload each time, as on the wire
            sum ^= crc32fast::hash(&buf);
        }
        std::hint::black_box(sum);
    };
    let crc_s = best(&mut crc);
    let mb = total as f64 / 1e6;
    println!("SHA-256           {:>8.1} MB/s ({mib} MiB in {sha_s:.3} s, best of 3)", mb / sha_s);
    println!("ChaCha20-Poly1305 {:>8.1} MB/s ({mib} MiB in {seal_s:.3} s, best of 3)", mb / seal_s);
    println!("crc32             {:>8.1} MB/s ({mib} MiB in {crc_s:.3} s, best of 3)", mb / crc_s);
    println!("seal time / hash time: {:.2}x  (receiving with a fleet secret costs hash + open)", seal_s / sha_s);
    println!("crc32 time / hash time: {:.3}x  (receiving without one costs hash + crc32)", crc_s / sha_s);
}
