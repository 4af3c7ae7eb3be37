//! The HTTP origin (`--origin URL`): any HTTP/1.1 server or CDN as the source of last resort,
//! fetched chunk by chunk with Range requests over one keep-alive connection per release, in
//! the same loop as everything else (non-blocking socket, no thread).
//!
//! What to ask for and what the answer means is the core's (`core::http`, and the origin part
//! of `core::swarm`, which verifies every byte); this is the socket, the clock and the
//! back-off. Peers get `--origin-delay` first; after it the origin takes only chunks no peer is
//! fetching. A server that fails in any way (refused connection, error status, no Range
//! support, a short, long or wrong body, a redirect loop, too slow) costs one log line and a
//! back-off (1 s, doubling to a minute), the chunk goes back, and the next `--origin` is tried.
//! Host names are resolved with getaddrinfo when a connection is opened: at start, and again
//! only after a redirect to another host (the one place the loop may wait on DNS, bounded by
//! the resolver's own timeout).

use super::{sys, Agent, Held};
use crate::core::http::{self, Answer, OriginUrl};
use crate::core::rate::TokenBucket;
use crate::core::release::OriginProgress;
use mio::net::TcpStream;
use mio::{Interest, Token};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Tokens of origin connections start here, far above the connection slots.
pub(super) const ORIGIN_TOKENS: usize = usize::MAX / 2;
/// A chunk must be whole within `--origin-timeout` plus its length at `MIN_RATE`: a slowloris
/// server loses it.
const MIN_RATE: u64 = 16 * 1024;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often an idle origin looks again for a chunk nobody is fetching.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Reads per turn per origin: a fast server cannot keep the loop from its peers.
const READS_PER_TURN: usize = 16;
/// Once this device's share of its site is fetched, how long the site's other devices get to
/// fetch theirs before this one takes chunks of their shares from the origin too (a device that
/// left the site is covered at once: the shares are recomputed from the devices connected).
/// Never less than `--origin-delay`: the others' shares may be on their way from peers (a
/// super-peer beyond the site), and the operator said how long peers get.
const STEAL_AFTER: Duration = Duration::from_secs(30);
/// Bytes read at once from a body.
const READ_SIZE: usize = 16 * 1024;

/// Where the release's origin is: `fetch --origin URL` names the file, `serve --origin BASE`
/// a directory under which each release is found by its signed name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OriginSpec {
    File(Vec<OriginUrl>),
    Base(Vec<OriginUrl>),
}

#[derive(Debug)]
enum Phase {
    /// No chunk: the next is taken at `not_before`.
    Idle,
    /// The request for the chunk is being written (or the connection is still opening).
    Sending { sent: usize },
    /// Waiting for the response head.
    Head,
    /// Reading the body: this many bytes still to come.
    Body { remaining: u32, close: bool },
}

/// One release's HTTP origin client.
pub(super) struct OriginClient {
    urls: Vec<OriginUrl>,
    /// Which of `urls` is in use, and the URL it led to (after redirects).
    which: usize,
    url: OriginUrl,
    addr: Option<SocketAddr>,
    token: Token,
    stream: Option<TcpStream>,
    phase: Phase,
    /// The request while it is sent, then the response head as it arrives.
    buf: Vec<u8>,
    /// The chunk asked for: index, offset in the file, length.
    chunk: Option<(u32, u64, u32)>,
    redirects: u8,
    deadline: Option<Instant>,
    pub(super) not_before: Instant,
    backoff: Duration,
    bucket: TokenBucket,
    /// Reading waits for the rate limit until then.
    throttled: Option<Instant>,
    /// `--origin-timeout`: the fixed part of a chunk's time.
    timeout: Duration,
    /// When nothing of this device's share of the site was left to take from the origin, and how
    /// long the site's other devices then get before this one takes chunks of their shares.
    share_done: Option<Instant>,
    steal_after: Duration,
    /// Body bytes taken from the origin (verified or not), for the log and the figures.
    pub(super) body_bytes: u64,
}

impl OriginClient {
    pub(super) fn new(urls: Vec<OriginUrl>, token: Token, rate: u64, timeout: Duration, start: Instant) -> Self {
        OriginClient {
            timeout,
            share_done: None,
            steal_after: STEAL_AFTER,
            url: urls[0].clone(),
            urls,
            which: 0,
            addr: None,
            token,
            stream: None,
            phase: Phase::Idle,
            buf: Vec::with_capacity(http::MAX_HEAD),
            chunk: None,
            redirects: 0,
            deadline: None,
            not_before: start,
            backoff: FIRST_BACKOFF,
            bucket: TokenBucket::new(rate),
            throttled: None,
            body_bytes: 0,
        }
    }

    /// When the loop should next look at this origin without a socket event: the next try
    /// when idle; else the chunk's deadline, or sooner the end of a wait for the rate limit.
    pub(super) fn wakeup(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle => Some(self.not_before),
            _ => match (self.deadline, self.throttled) {
                (Some(d), Some(t)) => Some(d.min(t)),
                (d, t) => d.or(t),
            },
        }
    }
}

impl Agent {
    /// The origin client for release `r` if the configuration names an origin.
    pub(super) fn origin_for(&mut self, name: &str, now: Instant) -> Option<OriginClient> {
        let urls = match self.config.origin.as_ref()? {
            OriginSpec::File(urls) => urls.clone(),
            OriginSpec::Base(bases) => bases.iter().map(|b| b.join(name)).collect(),
        };
        let token = self.next_side_token();
        let c = &self.config;
        let mut o = OriginClient::new(urls, token, c.origin_rate, c.origin_timeout, now + c.origin_delay);
        o.steal_after = STEAL_AFTER.max(c.origin_delay);
        Some(o)
    }

    /// A poll of the origin for each followed name, at the first `--origin` base URL.
    pub(super) fn start_polls(&mut self, now: Instant) {
        let Some(OriginSpec::Base(bases)) = self.config.origin.as_ref() else { return };
        let Some(base) = bases.first().cloned() else { return };
        for name in self.config.follow.clone() {
            let token = self.next_side_token();
            let jitter = self.rng.below(1 << 20) as f64 / (1 << 20) as f64;
            let interval = self.config.poll_interval;
            self.polls.push(super::follow::ManifestPoll::new(&name, &base, token, interval, jitter, now));
        }
    }

    /// Drives every release's origin: takes chunks when due, writes requests, reads answers.
    pub(super) fn drive_origins(&mut self, now: Instant) {
        let from = self.local;
        for r in 0..self.releases.len() {
            let h = &mut self.releases[r];
            let (complete, paused) = (h.release.is_complete(), h.is_paused(now));
            match h.origin.as_mut() {
                None => {}
                // Whole: nothing more to ask; the connection goes.
                Some(o) if complete => reset(o),
                Some(_) if paused => {}
                Some(_) => {
                    // Read from the connections only for a release that uses the origin now.
                    let role = self.origin_role(r, now);
                    drive(&mut self.releases[r], role, from, &self.poll, now);
                }
            }
        }
    }

    /// How this device uses the origin for release `r`, from its connections (see [`Role`]).
    fn origin_role(&self, r: usize, now: Instant) -> Role {
        if self.leaves_origin_to_peers(r, now) {
            return Role::Behind;
        }
        Role::Share(self.site_view(r).share)
    }
}

/// How a device uses the origin, from what its connections say about where it stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Its share of its site's chunks (`(rank, of)`), or everything alone: the usual case,
    /// devices behind NAT with only their LAN peers.
    Share(Option<(u32, u32)>),
    /// It, or a LAN peer, reached a peer beyond its links (a reachable one) and no one beyond
    /// its links reached it: it leaves the origin to that peer and fetches from it and its LAN,
    /// so the origin sends a copy per reachable site, not per site. A chunk already asked of the origin is finished.
    /// A device reachable from outside (the super-peer of whoever reaches it) takes its site
    /// share like any other: its site fetches one copy.
    Behind,
}

/// One step (or a few) of release `h`'s origin client, as a device of `role`.
fn drive(h: &mut Held, role: Role, from: Option<SocketAddr>, poll: &mio::Poll, now: Instant) {
    let Some(o) = h.origin.as_mut() else { return };
    if o.deadline.is_some_and(|d| now >= d) {
        return fail(h, "no whole chunk within its time (a slow or stalled server)", now);
    }
    if matches!(o.phase, Phase::Idle) {
        if now < o.not_before {
            return;
        }
        let share = match role {
            Role::Behind => {
                o.not_before = now + IDLE_CHECK;
                return;
            }
            Role::Share(share) => share,
        };
        // Our share of the site's chunks first; the rest only once ours is done and the others
        // had `steal_after` to finish theirs (a device that left, or is slower, is covered).
        let mut taken = h.release.origin_take(share);
        if taken.is_none() && share.is_some() {
            let done = *o.share_done.get_or_insert(now);
            if now >= done + o.steal_after {
                taken = h.release.origin_take(None);
            }
        }
        let Some((chunk, offset, len)) = taken else {
            o.not_before = now + IDLE_CHECK;
            return;
        };
        o.chunk = Some((chunk, offset, len));
        o.deadline = Some(now + o.timeout + Duration::from_millis(len as u64 * 1000 / MIN_RATE));
        if let Err(why) = open(o, from, poll) {
            return fail(h, &why, now);
        }
        http::range_request(&o.url, offset, len, &mut o.buf);
        o.phase = Phase::Sending { sent: 0 };
    }
    if let Err(why) = step(h, now) {
        fail(h, &why, now);
    }
}

/// Opens the connection to the current URL if none is open (resolving its host if needed).
fn open(o: &mut OriginClient, from: Option<SocketAddr>, poll: &mio::Poll) -> Result<(), String> {
    if o.stream.is_some() {
        return Ok(());
    }
    let addr = match o.addr {
        Some(a) => a,
        None => *o.addr.insert(resolve(&o.url)?),
    };
    o.stream = Some(connect_http(from, addr, o.token, poll)?);
    Ok(())
}

/// The first address `url`'s host resolves to (a lookup through the system's resolver: the
/// loop waits for it, once per connection to a named host; an address needs no lookup).
pub(super) fn resolve(url: &OriginUrl) -> Result<SocketAddr, String> {
    let found = (url.host.as_str(), url.port).to_socket_addrs();
    found.ok().and_then(|mut it| it.next()).ok_or_else(|| format!("cannot resolve {}", url.host))
}

/// A non-blocking connection to an HTTP server at `addr` (from our listen IP), watched as `token`.
pub(super) fn connect_http(
    from: Option<SocketAddr>,
    addr: SocketAddr,
    token: Token,
    poll: &mio::Poll,
) -> Result<TcpStream, String> {
    let mut stream = sys::connect_from(from, addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    poll.registry()
        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
        .map_err(|e| format!("cannot watch the connection: {e}"))?;
    Ok(stream)
}

/// Whether an I/O error only means "not now".
pub(super) fn would_block(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}

/// Writes what is left of the request, then reads what has arrived; Err: the origin failed.
fn step(h: &mut Held, now: Instant) -> Result<(), String> {
    for _ in 0..READS_PER_TURN {
        let Some(o) = h.origin.as_mut() else { return Ok(()) };
        // Idle again (a chunk just finished): the next is taken at the next turn.
        let (Some(stream), Some((chunk, offset, len))) = (o.stream.as_mut(), o.chunk) else { return Ok(()) };
        match o.phase {
            Phase::Idle => return Ok(()),
            Phase::Sending { sent } => match stream.write(&o.buf[sent..]) {
                Ok(n) if sent + n == o.buf.len() => {
                    o.buf.clear();
                    o.phase = Phase::Head;
                }
                Ok(n) => o.phase = Phase::Sending { sent: sent + n },
                Err(e) if would_block(&e) => return Ok(()),
                // A refused or unreachable connection shows here, at the first write.
                Err(e) => return Err(format!("cannot connect or send the request: {e}")),
            },
            Phase::Head => {
                let mut piece = [0u8; 2048];
                let n = match stream.read(&mut piece) {
                    Ok(0) => return Err("the server closed the connection before answering".into()),
                    Ok(n) => n,
                    Err(e) if would_block(&e) => return Ok(()),
                    Err(e) => return Err(format!("cannot read the answer: {e}")),
                };
                o.buf.extend_from_slice(&piece[..n]);
                let Some((answer, used)) = http::read_head(&o.buf, offset, len, h.release.size())? else { continue };
                match answer {
                    Answer::Body { close } => {
                        let rest = o.buf.split_off(used);
                        o.buf.clear();
                        o.phase = Phase::Body { remaining: len, close };
                        feed(h, &rest, now)?;
                    }
                    Answer::Redirect(location) => return redirect(h, &location, now),
                    Answer::Refused(why) => return Err(why),
                }
            }
            Phase::Body { remaining, .. } => {
                let want = (remaining as usize).min(READ_SIZE);
                if !o.bucket.take(want as u64, now) {
                    o.throttled = Some(o.bucket.ready_at(want as u64, now));
                    return Ok(());
                }
                o.throttled = None;
                let mut piece = [0u8; READ_SIZE];
                let n = match stream.read(&mut piece[..want]) {
                    Ok(0) => {
                        return Err(format!(
                            "the server closed the connection with {remaining} bytes of chunk {chunk} to come"
                        ))
                    }
                    Ok(n) => n,
                    Err(e) if would_block(&e) => {
                        o.bucket.refund(want as u64);
                        return Ok(());
                    }
                    Err(e) => return Err(format!("cannot read the body: {e}")),
                };
                o.bucket.refund((want - n) as u64);
                feed(h, &piece[..n], now)?;
            }
        }
    }
    Ok(())
}

/// Body bytes of the chunk: verified and written by the release; the chunk done, the client
/// is idle again (and takes the next at once).
fn feed(h: &mut Held, data: &[u8], now: Instant) -> Result<(), String> {
    if data.is_empty() {
        return Ok(());
    }
    let o = h.origin.as_mut().expect("fed only with an origin");
    let Phase::Body { remaining, close } = o.phase else { return Ok(()) };
    if data.len() > remaining as usize {
        return Err(format!("{} bytes more than the range asked for", data.len() - remaining as usize));
    }
    o.body_bytes += data.len() as u64;
    o.phase = Phase::Body { remaining: remaining - data.len() as u32, close };
    match h.release.origin_data(data, now) {
        OriginProgress::More => Ok(()),
        OriginProgress::Stored(_) => {
            let o = h.origin.as_mut().expect("fed only with an origin");
            o.phase = Phase::Idle;
            o.chunk = None;
            o.deadline = None;
            o.redirects = 0;
            o.backoff = FIRST_BACKOFF;
            o.not_before = now;
            if close {
                o.stream = None;
            }
            Ok(())
        }
        OriginProgress::Bad(c) => {
            let o = h.origin.as_mut().expect("fed only with an origin");
            o.chunk = None; // already given back by the release
            Err(format!("chunk {c} does not match the signed manifest (the server has another file, or lies)"))
        }
        OriginProgress::Overrun => {
            h.origin.as_mut().expect("fed only with an origin").chunk = None;
            Err("more bytes than the chunk holds".into())
        }
        OriginProgress::StorageFailed => {
            // The release reports the disk; the origin itself did nothing wrong.
            let o = h.origin.as_mut().expect("fed only with an origin");
            o.chunk = None;
            reset(o);
            Ok(())
        }
    }
}

/// Follows a redirect: the same chunk from where `location` points, on a new connection.
fn redirect(h: &mut Held, location: &str, now: Instant) -> Result<(), String> {
    let o = h.origin.as_mut().expect("redirected only with an origin");
    o.redirects += 1;
    if o.redirects > http::MAX_REDIRECTS {
        return Err(format!("more than {} redirects (a loop?)", http::MAX_REDIRECTS));
    }
    let next = o.url.follow(location).map_err(|e| format!("redirect to {e}"))?;
    log::info!("{}: origin {} redirects to {next}", h.release.name(), o.url);
    if next.host != o.url.host || next.port != o.url.port {
        o.addr = None;
    }
    o.url = next;
    o.stream = None;
    // The chunk goes back and is taken again at once, from the new place.
    o.chunk = None;
    o.phase = Phase::Idle;
    o.deadline = None;
    o.not_before = now;
    h.release.origin_abandon(now);
    Ok(())
}

/// The origin failed: one line, the chunk back, the connection closed, a back-off, and the
/// next `--origin` (from its own URL again) at the next try.
fn fail(h: &mut Held, why: &str, now: Instant) {
    let name = h.release.name().to_owned();
    let Some(o) = h.origin.as_mut() else { return };
    log::warn!("{name}: origin {}: {why}; trying again in {} s", o.url, o.backoff.as_secs());
    if o.chunk.take().is_some() {
        h.release.origin_abandon(now);
    }
    let o = h.origin.as_mut().expect("checked above");
    reset(o);
    o.which = (o.which + 1) % o.urls.len();
    o.url = o.urls[o.which].clone();
    o.addr = None;
    o.redirects = 0;
    o.not_before = now + o.backoff;
    o.backoff = (o.backoff * 2).min(MAX_BACKOFF);
}

fn reset(o: &mut OriginClient) {
    o.stream = None;
    o.phase = Phase::Idle;
    o.deadline = None;
    o.throttled = None;
    o.buf.clear();
}
