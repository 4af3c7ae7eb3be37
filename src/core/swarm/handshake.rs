//! The handshake of a session: Hellos, the fleet proof, and settling duplicate connections.
//!
//! A session is useful only once both Hellos have crossed (and, with a fleet secret, both
//! proofs checked); until then it takes no other message. The version check and swarm routing
//! are [`crate::core::session::hello_refusal`]'s, shared with the agent's routing of inbound
//! connections.

use super::*;
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
        if self.resolve_duplicate(id, node) {
            return Err(CloseReason::Duplicate);
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
        if self.config.fleet_key.is_some() {
            self.session_mut(id).push_control(Control::Auth);
            return Ok(());
        }
        self.activate(id, now);
        Ok(())
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
        self.activate(id, now);
        Ok(())
    }

    /// The fleet proof on connection `id`: ours if `mine`, else the one the peer must send.
    pub(super) fn proof(&self, id: PeerId, mine: bool) -> Option<[u8; 32]> {
        use crate::core::auth::{Role, Transcript};
        let key = self.config.fleet_key.as_ref()?;
        let s = self.session(id)?;
        let (us, them) = ((self.config.node, &s.nonce), (s.node, &s.peer_nonce));
        let ((dialler_node, dialler_nonce), (acceptor_node, acceptor_nonce)) =
            if s.outbound { (us, them) } else { (them, us) };
        let t = Transcript { swarm: &self.id, dialler_node, acceptor_node, dialler_nonce, acceptor_nonce };
        let role = if s.outbound == mine { Role::Dialler } else { Role::Acceptor };
        Some(crate::core::auth::proof(key, role, &t))
    }

    /// The handshake is complete: the session joins the swarm.
    pub(super) fn activate(&mut self, id: PeerId, now: Instant) {
        let s = self.session_mut(id);
        s.phase = Phase::Active;
        s.pex_at = now;
        s.progress_at = now;
        s.push_control(Control::Bitfield);
        for (p, other) in self.peers.iter_mut().enumerate() {
            if let Some(o) = other.as_mut().filter(|o| o.is_active() && p != id) {
                o.pex_at = o.pex_at.min(now + PEX_SOON);
            }
        }
    }

    /// Settles two connections to one agent: both ends keep the one dialled by the lower node
    /// number. Returns true if connection `id` (whose Hello names `node`) is the one to close;
    /// otherwise an older duplicate, if any, is marked to be closed instead.
    pub(super) fn resolve_duplicate(&mut self, id: PeerId, node: u64) -> bool {
        let me = self.config.node;
        let dialler = |s: &Session, peer: u64| if s.outbound { me } else { peer };
        let Some(mine) = self.peers[id].as_ref().map(|s| dialler(s, node)) else { return false };
        for (p, s) in self.peers.iter_mut().enumerate() {
            let Some(s) = s.as_mut().filter(|s| p != id && s.is_active() && s.node == node) else { continue };
            if dialler(s, s.node) <= mine {
                return true;
            }
            s.close(CloseReason::Duplicate);
        }
        false
    }
}
