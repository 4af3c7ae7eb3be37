//! How far an address reaches, and which addresses a peer may name to us.
//!
//! Peer exchange lets any connected peer hand us addresses to dial. Unchecked, that makes every
//! fetching agent a tool: one lie sends it to dial loopback services, a router's link-local
//! interface or a victim on the internet. A peer may therefore only name addresses of at least
//! its own reach (a LAN peer cannot point us at our own loopback, a peer on the internet cannot
//! point us into a private range) and never multicast, broadcast or unspecified ones. Peers on
//! loopback may name each other (tests, and several agents on one host), and nothing else.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// How far an address reaches, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// This host (127.0.0.0/8, ::1).
    Loopback,
    /// One link (169.254.0.0/16, fe80::/10).
    LinkLocal,
    /// A private network (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7).
    Private,
    /// The internet.
    Global,
}

/// The scope of `ip`, or `None` for an address no peer may be at (unspecified, multicast,
/// broadcast).
pub fn scope(ip: IpAddr) -> Option<Scope> {
    match ip {
        IpAddr::V4(v4) => scope_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return scope_v4(v4);
            }
            let first = v6.segments()[0];
            match () {
                _ if v6.is_unspecified() || v6.is_multicast() => None,
                _ if v6.is_loopback() => Some(Scope::Loopback),
                _ if first & 0xffc0 == 0xfe80 => Some(Scope::LinkLocal),
                _ if first & 0xfe00 == 0xfc00 => Some(Scope::Private),
                _ => Some(Scope::Global),
            }
        }
    }
}

fn scope_v4(ip: Ipv4Addr) -> Option<Scope> {
    let [a, b, ..] = ip.octets();
    match () {
        _ if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() => None,
        _ if ip.is_loopback() => Some(Scope::Loopback),
        _ if ip.is_link_local() => Some(Scope::LinkLocal),
        _ if ip.is_private() || (a == 100 && (64..128).contains(&b)) => Some(Scope::Private),
        _ => Some(Scope::Global),
    }
}

/// True if a peer at `sender` may tell us to dial `named`.
pub fn may_name(sender: IpAddr, named: SocketAddr) -> bool {
    let (Some(from), Some(to)) = (scope(sender), scope(named.ip())) else { return false };
    if named.port() == 0 {
        return false;
    }
    match from {
        Scope::Loopback => to == Scope::Loopback,
        // Link-local addresses mean something only on their own link: IPv4 within the sender's
        // /16; IPv6 would need an interface we cannot check here, so none.
        Scope::LinkLocal => match (sender, named.ip()) {
            (IpAddr::V4(s), IpAddr::V4(n)) => to == Scope::LinkLocal && s.octets()[..2] == n.octets()[..2],
            _ => false,
        },
        Scope::Private | Scope::Global => to >= from,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn scopes() {
        assert_eq!(scope(ip("127.0.0.5")), Some(Scope::Loopback));
        assert_eq!(scope(ip("169.254.1.2")), Some(Scope::LinkLocal));
        assert_eq!(scope(ip("192.168.1.2")), Some(Scope::Private));
        assert_eq!(scope(ip("100.70.0.1")), Some(Scope::Private));
        assert_eq!(scope(ip("8.8.8.8")), Some(Scope::Global));
        assert_eq!(scope(ip("::ffff:10.0.0.1")), Some(Scope::Private));
        assert_eq!(scope(ip("fe80::1")), Some(Scope::LinkLocal));
        assert_eq!(scope(ip("fd00::1")), Some(Scope::Private));
        assert_eq!(scope(ip("2001:db8::1")), Some(Scope::Global));
        for bad in ["0.0.0.0", "255.255.255.255", "239.255.70.70", "::", "ff02::1"] {
            assert_eq!(scope(ip(bad)), None, "{bad}");
        }
    }

    #[test]
    fn a_peer_names_only_addresses_of_at_least_its_own_reach() {
        // Loopback peers name each other, and nothing else.
        assert!(may_name(ip("127.0.0.2"), sa("127.0.0.3:7070")));
        assert!(!may_name(ip("127.0.0.2"), sa("8.8.8.8:53")));
        assert!(!may_name(ip("127.0.0.2"), sa("192.168.1.1:80")));
        // A LAN peer: LAN and internet, never our loopback or a link-local address.
        assert!(may_name(ip("192.168.1.5"), sa("192.168.1.6:7070")));
        assert!(may_name(ip("192.168.1.5"), sa("203.0.113.9:7070")));
        assert!(!may_name(ip("192.168.1.5"), sa("127.0.0.1:22")));
        assert!(!may_name(ip("192.168.1.5"), sa("169.254.0.1:80")));
        // A peer on the internet: the internet only.
        assert!(may_name(ip("203.0.113.1"), sa("198.51.100.1:7070")));
        assert!(!may_name(ip("203.0.113.1"), sa("10.0.0.1:7070")));
        // Link-local: its own /16 only.
        assert!(may_name(ip("169.254.3.4"), sa("169.254.9.9:7070")));
        assert!(!may_name(ip("169.254.3.4"), sa("169.253.9.9:7070")));
        // Never multicast, broadcast, unspecified, or port 0.
        for bad in ["239.255.70.70:7071", "255.255.255.255:7070", "0.0.0.0:7070", "192.168.1.6:0"] {
            assert!(!may_name(ip("192.168.1.5"), sa(bad)), "{bad}");
        }
    }
}
