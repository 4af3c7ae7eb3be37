//! An idle connection costs the agent almost no memory: frames wait in the kernel until whole
//! and are read into one buffer the agent shares among its connections (src/agent/conn.rs), so
//! no connection holds a frame buffer of its own. Counted with a global allocator that tracks
//! the bytes live on the heap, across a seed agent that greets 24 raw connections in this
//! process and then hears nothing more from them.

mod common;

use common::connect_from;
use flotilla::agent::{Agent, AgentConfig};
use flotilla::core::manifest::{SecretKey, SignedManifest};
use flotilla::core::wire::{decode_message, encode_frame, parse_frame, Message, MAX_FRAME, VERSION};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts the bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Connections opened: four from each of six addresses (the agent takes four per address).
const CONNS: usize = 24;
/// Heap bytes one greeted, idle connection may cost: its session's state, not a frame buffer
/// (a frame is 16 KiB; the agent used to keep two per connection).
const PER_CONN_BUDGET: isize = 2048;

#[test]
fn an_idle_connection_holds_no_frame_buffer() {
    let dir = std::env::temp_dir().join(format!("flotilla-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("fw.img");
    std::fs::write(&file, common::random_bytes(1 << 20, 0x1d1e)).unwrap();
    let key = SecretKey::generate().unwrap();
    let m = SignedManifest::publish(&file, "fw.img", 1, 256 * 1024, &key).unwrap();
    let swarm = m.swarm_id;

    let listen = std::net::TcpListener::bind("127.0.0.97:0").unwrap().local_addr().unwrap();
    let config = AgentConfig { listen: Some(listen), discovery: None, ..AgentConfig::default() };
    let mut seed = Agent::new(config).unwrap();
    seed.add_release(&m, &file).unwrap();
    seed.listen().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_seed = stop.clone();
    let seed_thread = std::thread::spawn(move || seed.run_until(|_, _| stop_seed.load(Ordering::Relaxed)).unwrap());

    // Everything this thread needs is allocated before the first count.
    let mut streams = Vec::with_capacity(CONNS);
    let mut frame = vec![0u8; MAX_FRAME];
    let mut got = vec![0u8; 4096];
    std::thread::sleep(Duration::from_millis(200)); // the seed settles into its loop
    let before = LIVE.load(Ordering::SeqCst);
    for i in 0..CONNS {
        let from = Ipv4Addr::new(127, 0, 7, 1 + (i / 4) as u8);
        let mut s = connect_from(from, listen).unwrap();
        let hello =
            Message::Hello { version: VERSION, swarm, listen_port: 0, node: 0x1d1e + i as u64, nonce: [i as u8; 16] };
        let n = encode_frame(&hello, &mut frame).unwrap();
        s.write_all(&frame[..n]).unwrap();
        s.set_read_timeout(Some(common::PATIENCE)).unwrap();
        // The seed's own Hello back: the connection is accepted and its session made.
        let mut len = 0;
        loop {
            let k = s.read(&mut got[len..]).unwrap();
            assert!(k > 0, "the seed closed connection {i}");
            len += k;
            if let Some((payload, _)) = parse_frame(&got[..len]).unwrap() {
                assert!(matches!(decode_message(payload), Ok(Message::Hello { .. })), "connection {i}: no Hello");
                break;
            }
        }
        streams.push(s);
    }
    std::thread::sleep(Duration::from_millis(200)); // whatever else the seed sends them
    let grown = LIVE.load(Ordering::SeqCst) - before;
    stop.store(true, Ordering::Relaxed);
    seed_thread.join().unwrap();
    drop(streams);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("heap grew {grown} bytes for {CONNS} idle connections: {} each", grown / CONNS as isize);
    assert!(grown < PER_CONN_BUDGET * CONNS as isize, "{} bytes per idle connection", grown / CONNS as isize);
}
