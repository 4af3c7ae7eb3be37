//! Drives the protocol core with your own I/O: two releases, a seed and a fetcher, joined by an
//! in-memory "link" (a queue of frames per direction) and a clock you advance yourself. Replace
//! the queues with your sockets and `MemStore` with your storage, and this is a whole agent.
//! `cargo run --release --example core_loop`

use flotilla::core::bitfield::Bitfield;
use flotilla::core::manifest::{Manifest, SignedManifest};
use flotilla::core::release::{Event, Release, ReleaseConfig};
use flotilla::core::rng::Rng;
use flotilla::core::swarm::NewPeer;
use flotilla::core::wire::MAX_FRAME;
use flotilla::store::memory::MemStore;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

fn main() {
    let image = Rng::new(1).bytes(4 << 20);
    let manifest = Manifest {
        name: "fw.img".into(),
        release: 1,
        file_size: image.len() as u64,
        chunk_size: 256 * 1024,
        file_hash: Sha256::digest(&image).into(),
        chunk_hashes: image.chunks(256 * 1024).map(|c| Sha256::digest(c).into()).collect(),
        expires: None,
        targets: Vec::new(),
        rollout: None,
    };
    // Unsigned here for brevity; a device takes it from `SignedManifest::read_file` + `check_trust`.
    let m = SignedManifest { manifest, bytes: Vec::new(), swarm_id: [1; 32], signers: Vec::new() };
    let (n, mut now) = (m.manifest.chunk_count(), Instant::now());
    let seed_store = MemStore::with_data("seed/fw.img", image.clone(), true);
    let config = |node| ReleaseConfig {
        swarm: flotilla::core::swarm::SwarmConfig { node, ..Default::default() },
        ..Default::default()
    };
    let mut seed = Release::new(&m, seed_store, &Bitfield::full(n), config(1), 1, now);
    let fetch_store = MemStore::new("fetch/fw.img", image.len() as u64);
    let mut fetch = Release::new(&m, fetch_store, &Bitfield::new(n), config(2), 2, now);
    // Connection slot 0 on both sides: the fetcher dialled the seed.
    // Nonces come from the OS's CSPRNG in a real agent (they key the fleet channel).
    fetch.add_peer(0, NewPeer { outbound: true, remote: None, beyond_lan: false, nonce: [1; 16] }, now);
    seed.add_peer(0, NewPeer { outbound: false, remote: None, beyond_lan: false, nonce: [2; 16] }, now);

    let mut frame = vec![0u8; MAX_FRAME];
    while !fetch.is_complete() {
        carry(&mut fetch, &mut seed, now, &mut frame);
        carry(&mut seed, &mut fetch, now, &mut frame);
        now += Duration::from_millis(10); // your clock
        for r in [&mut seed, &mut fetch] {
            r.handle_timeout(now);
            while let Some(event) = r.poll_event(now) {
                match event {
                    Event::Closed { peer, reason } => println!("close slot {peer}: {reason}"),
                    Event::Completed => println!("{} complete", r.name()),
                    Event::StorageFailed(e) => panic!("storage: {e}"),
                    Event::PeerLearnt(addr) => println!("dial {addr} if you like"),
                }
            }
        }
    }
    assert_eq!(fetch.store().data(), &image[..]);
    println!("fetched {} bytes, verified chunk by chunk", fetch.stats().downloaded);
}

/// Moves every frame `from` wants sent on slot 0 to `to`: your sockets, in a real agent.
fn carry(from: &mut Release<MemStore>, to: &mut Release<MemStore>, now: Instant, frame: &mut [u8]) {
    while let Some(len) = from.poll_transmit(0, now, true, frame) {
        to.handle_frame(0, &mut frame[..len], now); // one whole frame, as wire::frame_len cuts them
    }
}
