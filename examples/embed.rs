//! Embeds the agent in another program: fetch one release, then return.
//! `cargo run --release --example embed -- fw.img.flotilla PUBKEY /tmp/fw.img 127.0.0.1:7070`

use flotilla::agent::{Agent, AgentConfig};
use flotilla::core::manifest::{PublicKey, SignedManifest};
use flotilla::core::trust::{Acceptor, TrustPolicy};
use std::time::{SystemTime, UNIX_EPOCH};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [manifest, key, out, peer] = args.as_slice() else {
        return Err("usage: embed MANIFEST PUBKEY OUT PEER_ADDR".into());
    };
    let manifest = SignedManifest::read_file(manifest.as_ref())?;
    let policy = TrustPolicy::new(vec![PublicKey::parse_arg(key)?], 1)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    Acceptor { policy, targets: Vec::new() }.check(&manifest, now)?; // signatures, expiry, target
    let config = AgentConfig { listen: None, peers: vec![peer.parse()?], ..AgentConfig::default() };
    let mut agent = Agent::new(config)?;
    agent.add_release(&manifest, out.as_ref())?;
    // One thread, one event loop; it returns when the closure says so.
    agent.run_until(|agent, _now| agent.releases()[0].completed_at.is_some())?;
    println!("{out} is complete and verified");
    Ok(())
}
