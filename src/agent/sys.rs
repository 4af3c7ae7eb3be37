//! The few socket calls std and mio do not offer: binding before connecting, and a UDP socket
//! that several agents on one host can bind to at once. Everything unsafe in the crate is here.

use mio::net::{TcpStream, UdpSocket};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::FromRawFd;

/// Starts a non-blocking connect to `to`, from `from`'s address when it names a specific one.
///
/// std and mio cannot bind before connecting; without it every agent on one host (or on
/// 127.0.0.x in tests) would appear to its peers under the same default source address.
pub fn connect_from(from: Option<SocketAddr>, to: SocketAddr) -> io::Result<TcpStream> {
    let Some(local) = from.filter(|a| !a.ip().is_unspecified() && a.is_ipv4() == to.is_ipv4()) else {
        return TcpStream::connect(to);
    };
    let family = if to.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket syscalls on a descriptor we own; it is closed on every error path
    // and otherwise handed to TcpStream, which owns it from then on.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let (addr, len) = sockaddr(SocketAddr::new(local.ip(), 0));
        if libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let (addr, len) = sockaddr(to);
        if libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len) != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        Ok(stream)
    }
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data for which all-zero bytes are valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr type.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr = libc::in6_addr { s6_addr: v6.ip().octets() };
            sin6.sin6_scope_id = v6.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// A non-blocking UDP socket bound to `port` on all addresses with SO_REUSEADDR, so that every
/// agent on a host can listen for the same multicast group, joined on interface `iface`.
pub fn multicast_listener(group: SocketAddrV4, iface: Ipv4Addr) -> io::Result<UdpSocket> {
    // SAFETY: as in connect_from: a descriptor we own, closed on error through `sock`.
    let sock = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let sock = std::net::UdpSocket::from_raw_fd(fd);
        set_option(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &(1 as libc::c_int))?;
        // Tells each datagram's destination address, so unicast sent to the port is told apart.
        set_option(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, &(1 as libc::c_int))?;
        let (addr, len) = sockaddr(SocketAddr::from(([0, 0, 0, 0], group.port())));
        if libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(io::Error::last_os_error());
        }
        sock
    };
    sock.join_multicast_v4(group.ip(), &iface)?;
    Ok(UdpSocket::from_std(sock))
}

/// A UDP socket that sends multicast out of the interface holding `from` (with that source
/// address), one hop only, and loops it back to listeners on this host.
pub fn multicast_sender(from: Ipv4Addr) -> io::Result<std::net::UdpSocket> {
    let sock = std::net::UdpSocket::bind((from, 0))?;
    sock.set_nonblocking(true)?;
    sock.set_multicast_ttl_v4(1)?;
    sock.set_multicast_loop_v4(true)?;
    if !from.is_unspecified() {
        use std::os::fd::AsRawFd;
        let iface = libc::in_addr { s_addr: u32::from_ne_bytes(from.octets()) };
        set_option(sock.as_raw_fd(), libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &iface)?;
    }
    Ok(sock)
}

/// Unsent bytes a TCP socket may hold before it stops reporting writable.
///
/// Without a cap the kernel queues megabytes per connection: a `Have` or `Request` then waits
/// behind seconds of blocks on a slow uplink, and the swarm's choices of what to send next are
/// made long before the bytes leave. With it, epoll reports writable only below the mark.
pub fn set_notsent_lowat(stream: &TcpStream, bytes: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    set_option(stream.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, &(bytes as libc::c_int))
}

/// `setsockopt(fd, level, name, value)`, the value passed by size: the one place the socket
/// options above are set.
fn set_option<T>(fd: libc::c_int, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    let len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a live, properly sized T for the duration of the call; the kernel only
    // reads `len` bytes of it. A bad descriptor or option is reported as an error, not UB.
    let rc = unsafe { libc::setsockopt(fd, level, name, value as *const T as *const libc::c_void, len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes written to a TCP socket and not yet sent (SIOCOUTQNSD); 0 if the kernel cannot say.
pub fn unsent_bytes(stream: &TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    const SIOCOUTQNSD: u32 = 0x894B;
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQNSD writes one int into `n`.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), SIOCOUTQNSD as _, &mut n as *mut libc::c_int) };
    if rc != 0 {
        return 0;
    }
    n.max(0) as usize
}

/// Bytes a TCP socket holds ready to read (FIONREAD); `None` if the kernel cannot say.
pub fn readable_bytes(stream: &TcpStream) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into `n`.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD as _, &mut n as *mut libc::c_int) };
    (rc == 0).then_some(n.max(0) as usize)
}

/// Bytes that must be queued before epoll reports the socket readable (SO_RCVLOWAT), so that a
/// frame left in the kernel wakes us once, when it is whole, not at every segment.
pub fn set_rcvlowat(stream: &TcpStream, bytes: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let bytes = bytes.clamp(1, libc::c_int::MAX as usize) as libc::c_int;
    set_option(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVLOWAT, &bytes)
}

/// True if the socket's received bytes take half its receive buffer or more, counted as the
/// kernel counts them (SO_MEMINFO: buffer overhead included). Small segments can fill the buffer
/// with a few KiB of data; then waiting for more, as SO_RCVLOWAT does, would shut the window.
pub fn receive_memory_tight(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    const RMEM_ALLOC: usize = 0;
    const RCVBUF: usize = 1;
    let mut info = [0u32; 9];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info` and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    // A kernel that cannot say (before 4.12) gets the safe answer: take the bytes out.
    rc != 0 || len < 8 || info[RMEM_ALLOC] as u64 * 2 >= info[RCVBUF] as u64
}

pub use crate::store::safe_fs::os_random;

/// A fresh nonce for one connection's Hello.
pub fn random_nonce() -> io::Result<[u8; crate::core::auth::NONCE_LEN]> {
    let mut nonce = [0u8; crate::core::auth::NONCE_LEN];
    os_random(&mut nonce)?;
    Ok(nonce)
}

/// Receives one datagram on a socket with `IP_PKTINFO` on: its length, its source, and the
/// destination address its IP header named (`None` if the kernel did not say).
pub fn recv_datagram(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddrV4, Option<Ipv4Addr>)> {
    use std::os::fd::AsRawFd;
    // SAFETY: recvmsg writes at most `buf.len()` bytes into `buf`, a sockaddr_in into `from` and
    // at most `control.len()` bytes of control messages into `control`, all ours; the CMSG
    // macros walk only what the kernel reported in `msg_controllen`.
    unsafe {
        let mut from: libc::sockaddr_in = std::mem::zeroed();
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
        let mut control = [0u64; 16];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = &mut from as *mut _ as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut dst = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::IPPROTO_IP && (*cmsg).cmsg_type == libc::IP_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::in_pktinfo);
                dst = Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        let source = SocketAddrV4::new(Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)), u16::from_be(from.sin_port));
        Ok((n as usize, source, dst))
    }
}

/// The IPv4 subnets (address, netmask) of this host's interfaces that are up: what "on-link"
/// means for a LAN announcement's source.
pub fn local_subnets() -> io::Result<Vec<(Ipv4Addr, Ipv4Addr)>> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs hands us a list we walk read-only and free once with freeifaddrs;
    // every address pointer is checked for null and its family before it is read as IPv4.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut at = list;
        while !at.is_null() {
            let ifa = &*at;
            let up = ifa.ifa_flags & libc::IFF_UP as libc::c_uint != 0;
            let v4 = up
                && !ifa.ifa_addr.is_null()
                && !ifa.ifa_netmask.is_null()
                && (*ifa.ifa_addr).sa_family as libc::c_int == libc::AF_INET;
            if v4 {
                let addr = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let mask = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                out.push((
                    Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
                    Ipv4Addr::from(u32::from_be(mask.sin_addr.s_addr)),
                ));
            }
            at = ifa.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    Ok(out)
}

/// True if `ip` lies in one of `subnets`.
pub fn on_link(ip: Ipv4Addr, subnets: &[(Ipv4Addr, Ipv4Addr)]) -> bool {
    let ip = u32::from(ip);
    subnets.iter().any(|&(addr, mask)| ip & u32::from(mask) == u32::from(addr) & u32::from(mask))
}
