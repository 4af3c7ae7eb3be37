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

/// Fills `buf` from the kernel's CSPRNG (`getrandom(2)`); an error if it cannot, never a weaker
/// source in its place.
pub fn os_random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: writes at most `rest.len()` bytes into `rest`, which we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr() as *mut libc::c_void, rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

/// A fresh nonce for one connection's Hello.
pub fn random_nonce() -> io::Result<[u8; crate::core::auth::NONCE_LEN]> {
    let mut nonce = [0u8; crate::core::auth::NONCE_LEN];
    os_random(&mut nonce)?;
    Ok(nonce)
}
