//! The handshake of a session: Hellos, the fleet channel and its proofs, and settling duplicate
//! connections.
//!
//! A session is useful only once both Hellos have crossed (and, with a fleet secret, both
//! proofs checked inside the sealed channel, the dialler's first); until then it takes no other
//! message. Duplicates are settled only once the peer is authenticated, so an unproven claim to
//! be a peer we know never closes our real connection to it. The version check and swarm routing
//! are [`crate::core::session::hello_refusal`]'s, shared with the agent's routing of inbound
//! connections.

use super::*;
use crate::core::auth::{Channel, Role, Transcript, NONCE_LEN};
use crate::core::session::hello_refusal;
use crate::core::wire::RefuseReason;

impl Swarm {
    pub(super) fn on_hello(&mut self, id: PeerId, msg: &Message, now: Instant) -> Result<(), CloseReason> {
        if self.session_mut(id).phase == Phase::Proving {
            return self.on_auth(id, msg, now);
        }
        let Message::Hello { version, swarm, listen_port, node, nonce } = *msg else {
            return match *msg {
                Message::Refuse(r) => Err(CloseReason::Refused(r)),
                _ => Err(CloseReason::Protocol("message before hello")),
            };
        };
        match hello_refusal(version, swarm == self.id) {
            None => {}
            Some(RefuseReason::UnknownSwarm) => return Err(CloseReason::Protocol("hello for another swarm")),
            Some(refusal) => return Err(CloseReason::Refused(refusal)),
        }
        if node == self.config.node {
            return Err(CloseReason::SelfConnection);
        }
        let s = self.session_mut(id);
        s.phase = Phase::Proving;
        s.node = node;
        s.peer_nonce = nonce;
        if !s.outbound && listen_port != 0 {
            s.listen_addr = s.remote.map(|r| std::net::SocketAddr::new(r.ip(), listen_port));
        }
        if !s.outbound {
            s.push_control(Control::Hello);
        }
        if self.config.fleet_keys.is_empty() {
            return self.activate(id, now);
        }
        self.open_channel(id);
        Ok(())
    }

    /// Derives the dialler's fleet channel from both Hellos: it seals with the first fleet key
    /// and proves at once. The acceptor waits: it learns which of its keys the dialler used from
    /// the first sealed frame that opens (`accept_channel`), and proves only after checking the
    /// dialler's proof, so a stranger that dials us learns nothing sealed.
    fn open_channel(&mut self, id: PeerId) {
        let keys = self.config.fleet_keys;
        let t = self.transcript_of(id);
        let s = self.peers[id].as_mut().expect("session present");
        if s.outbound {
            s.channel = Some(Channel::derive(&keys.as_slice()[0], Role::Dialler, &t.as_transcript()));
            s.push_control(Control::Auth);
        }
    }

    /// An acceptor's first sealed frame: derives the channel under each accepted key in turn
    /// (a few HMACs each, once per connection) and keeps the one that opens it. `None` if none
    /// does; `frame` is then unchanged.
    pub(super) fn accept_channel(&mut self, id: PeerId, frame: &mut [u8]) -> Option<()> {
        let t = self.transcript_of(id);
        let keys = self.config.fleet_keys;
        for key in keys.as_slice() {
            let mut c = Channel::derive(key, Role::Acceptor, &t.as_transcript());
            if wire::open_with(&mut c, frame).is_ok() {
                self.session_mut(id).channel = Some(c);
                return Some(());
            }
        }
        None
    }

    /// The handshake transcript of session `id`, named by role.
    fn transcript_of(&self, id: PeerId) -> OwnedTranscript {
        let s = self.session(id).expect("session present");
        let (us, them) = ((self.config.node, s.nonce), (s.node, s.peer_nonce));
        let (dialler, acceptor) = if s.outbound { (us, them) } else { (them, us) };
        OwnedTranscript { swarm: self.id, dialler, acceptor }
    }

    /// With a fleet secret: the peer's proof must be the next message, and must check.
    pub(super) fn on_auth(&mut self, id: PeerId, msg: &Message, now: Instant) -> Result<(), CloseReason> {
        let Message::Auth(theirs) = *msg else {
            return Err(CloseReason::Protocol("message before the fleet proof"));
        };
        let Some(expected) = self.proof(id, false) else {
            return Err(CloseReason::Protocol("unexpected fleet proof"));
        };
        if !crate::core::auth::proofs_equal(&theirs, &expected) {
            return Err(CloseReason::Protocol("wrong fleet proof"));
        }
        // Authenticated: only now may it displace another connection to the same agent.
        let node = self.session_mut(id).node;
        if self.resolve_duplicate(id, node) {
            return Err(CloseReason::Duplicate);
        }
        if !self.session_mut(id).outbound {
            self.session_mut(id).push_control(Control::Auth);
        }
        self.activate(id, now)
    }

    /// The fleet proof on connection `id`: ours if `mine`, else the one the peer must send. Under
    /// the key of the session's channel; `None` before the channel is settled.
    pub(super) fn proof(&self, id: PeerId, mine: bool) -> Option<[u8; 32]> {
        let key = *self.session(id)?.channel.as_ref()?.key();
        let s = self.session(id)?;
        let role = if s.outbound == mine { Role::Dialler } else { Role::Acceptor };
        Some(crate::core::auth::proof(&key, role, &self.transcript_of(id).as_transcript()))
    }

    /// The handshake is complete: the session joins the swarm (settling a duplicate first when
    /// there is no fleet channel to authenticate the peer).
    pub(super) fn activate(&mut self, id: PeerId, now: Instant) -> Result<(), CloseReason> {
        let node = self.session_mut(id).node;
        if self.config.fleet_keys.is_empty() && self.resolve_duplicate(id, node) {
            return Err(CloseReason::Duplicate);
        }
        let advertising = self.tree.is_some();
        let s = self.session_mut(id);
        s.phase = Phase::Active;
        s.pex_at = now;
        s.progress_at = now;
        s.push_control(Control::Bitfield);
        if s.beyond_lan && advertising {
            s.push_control(Control::Tree);
        }
        for (p, other) in self.peers.iter_mut().enumerate() {
            if let Some(o) = other.as_mut().filter(|o| o.is_active() && p != id) {
                o.pex_at = o.pex_at.min(now + PEX_SOON);
            }
        }
        Ok(())
    }

    /// Settles two connections to one agent: both ends keep the one dialled by the lower node
    /// number. Returns true if connection `id` (whose Hello names `node`) is the one to close;
    /// otherwise an older duplicate, if any, is marked to be closed instead.
    pub(super) fn resolve_duplicate(&mut self, id: PeerId, node: u64) -> bool {
        let me = self.config.node;
        let dialler = |s: &Session, peer: u64| if s.outbound { me } else { peer };
        let Some(mine) = self.peers[id].as_ref().map(|s| dialler(s, node)) else { return false };
        // Both dialled by the same agent: it never dials one address twice at once, so the older
        // connection is one it has given up on (its close lost on the way). With a fleet secret
        // the new one is authenticated and replaces it; without, an unproven claim never closes
        // an established session, and the new one goes.
        let newest_wins = !self.config.fleet_keys.is_empty();
        for (p, s) in self.peers.iter_mut().enumerate() {
            let Some(s) = s.as_mut().filter(|s| p != id && s.is_active() && s.node == node) else { continue };
            let theirs = dialler(s, s.node);
            if theirs < mine || (theirs == mine && !newest_wins) {
                return true;
            }
            s.close(CloseReason::Duplicate);
        }
        false
    }
}

/// A handshake transcript that owns its fields.
pub(super) struct OwnedTranscript {
    swarm: SwarmId,
    dialler: (u64, [u8; NONCE_LEN]),
    acceptor: (u64, [u8; NONCE_LEN]),
}

impl OwnedTranscript {
    fn as_transcript(&self) -> Transcript<'_> {
        Transcript {
            swarm: &self.swarm,
            dialler_node: self.dialler.0,
            acceptor_node: self.acceptor.0,
            dialler_nonce: &self.dialler.1,
            acceptor_nonce: &self.acceptor.1,
        }
    }
}
