//! Steady-state transfers make no heap allocation per block: a seed and a fetcher run in this
//! process (one thread each, one event loop each) under a counting global allocator, and the
//! allocations made while the middle half of the file moves are counted against its blocks.

mod common;

use flotilla::agent::{Agent, AgentConfig};
use flotilla::core::manifest::{SecretKey, SignedManifest};
use flotilla::core::wire::BLOCK_SIZE;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

#[test]
fn no_heap_allocation_per_block_in_steady_state() {
    let dir = std::env::temp_dir().join(format!("flotilla-alloc-{}", std::process::id()));
    let seed_dir = dir.join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    let file = seed_dir.join("fw.img");
    let data = common::random_bytes(32 << 20, 0x2545_F491);
    std::fs::write(&file, &data).unwrap();
    let key = SecretKey::generate().unwrap();
    let m = SignedManifest::publish(&file, "fw.img", 1, 256 * 1024, &key).unwrap();

    let listen = std::net::TcpListener::bind("127.0.0.160:0").unwrap().local_addr().unwrap();
    // Rate-limited so the transfer spans many commits and loop turns.
    let seed_config =
        AgentConfig { listen: Some(listen), discovery: None, max_upload_rate: 16 << 20, ..AgentConfig::default() };
    let mut seed = Agent::new(seed_config).unwrap();
    seed.add_release(&m, &file).unwrap();
    seed.listen().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_seed = stop.clone();
    let seed_thread = std::thread::spawn(move || seed.run_until(|_, _| stop_seed.load(Ordering::Relaxed)).unwrap());

    let config = AgentConfig { listen: None, discovery: None, peers: vec![listen], ..AgentConfig::default() };
    let mut fetch = Agent::new(config).unwrap();
    let out = dir.join("out.img");
    fetch.add_release(&m, &out).unwrap();
    let chunks = m.manifest.chunk_count();
    let (mut start, mut end) = (None, None);
    fetch
        .run_until(|a, _| {
            let have = a.releases()[0].release.swarm().have().count();
            if start.is_none() && have >= chunks / 4 {
                start = Some((have, ALLOCATIONS.load(Ordering::Relaxed)));
            }
            if end.is_none() && have >= 3 * chunks / 4 {
                end = Some((have, ALLOCATIONS.load(Ordering::Relaxed)));
            }
            a.releases()[0].completed_at.is_some()
        })
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    seed_thread.join().unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let _ = std::fs::remove_dir_all(&dir);

    let ((c0, a0), (c1, a1)) = (start.unwrap(), end.unwrap());
    let blocks = (c1 - c0) as usize * (256 * 1024 / BLOCK_SIZE as usize);
    let allocations = a1 - a0;
    eprintln!("{allocations} allocations while {blocks} blocks moved (both agents)");
    assert!(blocks >= 1000, "window too small to mean anything: {blocks} blocks");
    // Per block there must be none; per chunk a commit may open and rename the state file.
    // README and docs/RELIABILITY.md claim none at all; so does this.
    assert_eq!(allocations, 0, "{allocations} allocations for {blocks} blocks");
}
