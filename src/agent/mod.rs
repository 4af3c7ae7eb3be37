//! The mio shell: sockets, timers and files around the protocol core.
//!
//! One thread, one `Poll`. The agent owns a fixed table of connection slots (`max_peers`), each
//! with one receive and one send buffer sized for a single frame, allocated when the slot opens
//! and never grown. Readiness becomes input for the [`Swarm`] of the connection's release;
//! what the swarm wants sent is drained while the socket accepts it, so a slow reader slows only
//! its own connection (backpressure comes from socket writability, not from queues). Verified
//! chunks are made durable in batches by [`Store::commit`] at most every `commit_interval`, and
//! only then announced to peers.
//!
//! Around that sit the parts a device daemon needs, each bounded: a `--data` directory looked at
//! again on request ([`Agent::rescan`]), the operator's install hook started when a release
//! completes (a few children at once, reaped every turn, never waited for inside the loop), and
//! a Unix status socket answered with one [`status::report`] per connection, then closed.
//!
//! Everything here is plumbing; every protocol decision is the swarm's.

use crate::core::discovery::{self, Announcement};
use crate::core::manifest::{ManifestError, PublicKey, SignedManifest};
use crate::core::session::CloseReason;
use crate::core::swarm::{PeerId, Received, Swarm, SwarmConfig, Transmit, Verdict};
use crate::store::file::{Store, StoreError};
use crate::store::history::History;
use status::{Rates, ReleaseStatus, Snapshot};
pub mod status;
mod sys;
use crate::core::wire::{self, Message, RefuseReason, MAX_FRAME};
use mio::net::{TcpListener, TcpStream, UnixListener};
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

const LISTENER: Token = Token(usize::MAX);
const DISCOVERY: Token = Token(usize::MAX - 1);
const STATUS: Token = Token(usize::MAX - 2);
/// Status queries answered per wakeup; the rest wait for the next turn.
const MAX_STATUS_PER_TURN: usize = 4;
/// Install hooks running at once; a completion beyond that waits for one to finish.
const MAX_HOOKS: usize = 4;
/// Refused manifests remembered so that each is logged once, not at every rescan. Past this many
/// bad files the oldest is forgotten (and logged again if it is still there).
const MAX_REFUSED: usize = 64;
/// Datagrams read per wakeup: a flood on the group cannot keep the loop from its other work.
const MAX_DATAGRAMS_PER_TURN: usize = 64;
/// Receive buffer: one whole frame, so any legal frame fits and nothing larger is ever needed.
const RECV_BUF: usize = MAX_FRAME;
/// Bytes read from one connection per wakeup, so that a peer that floods us with valid small
/// messages cannot keep the loop from its other connections and timers.
const READ_BUDGET: usize = 4 * RECV_BUF;
/// Send buffer: one whole frame plus room for the small messages queued beside it.
const SEND_BUF: usize = MAX_FRAME + 1024;
/// How long an address that misbehaved is refused and not dialled.
const BAN_TIME: Duration = Duration::from_secs(600);
/// Addresses remembered as offenders; the oldest entry is forgotten first.
const MAX_BANS: usize = 64;
/// Unsent bytes per connection above which no more blocks are queued (see `sys::set_notsent_lowat`).
/// Four blocks keep a fast link busy between two wakeups.
const UNSENT_MARK: usize = 64 * 1024;
/// How often a dial that cannot go now (banned, already connected, no free slot) is looked at.
const REDIAL_CHECK: Duration = Duration::from_secs(2);
/// Verified chunks allowed to wait for a commit before one is forced (see `Agent::commit`).
const MAX_UNCOMMITTED: u32 = 8;
/// How long a release whose storage failed is left alone (with `pause_on_disk_error`).
const DISK_RETRY: Duration = Duration::from_secs(30);
/// Addresses kept per release to dial (from `--peer` and peer exchange).
const MAX_DIALS: usize = 64;
/// Inbound connections must say which swarm they want within this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of an agent, fixed at start.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Address to accept peers on; `None` to only dial out.
    pub listen: Option<SocketAddr>,
    /// Peers to dial for every release that is not complete.
    pub peers: Vec<SocketAddr>,
    /// Connection slots.
    pub max_peers: usize,
    /// Peers uploaded to at once.
    pub upload_slots: usize,
    /// Upload cap per release in bytes per second, 0 for none.
    pub max_upload_rate: u64,
    /// Download cap per release in bytes per second, 0 for none.
    pub max_download_rate: u64,
    /// With a fleet secret, only peers proving they hold it get anything (see [`crate::core::auth`]).
    pub fleet_key: Option<crate::core::auth::FleetKey>,
    /// On a storage failure, set the release aside for a while instead of stopping the agent.
    pub pause_on_disk_error: bool,
    /// Longest a verified chunk waits before it is made durable and announced.
    pub commit_interval: Duration,
    /// The LAN discovery multicast group, or `None` to find peers only through `peers` and
    /// peer exchange.
    pub discovery: Option<std::net::SocketAddrV4>,
    /// Releases held at most; [`Agent::add_release`] refuses more.
    pub max_releases: usize,
    /// The install hook: a program and its arguments, run with the path of each release that
    /// completes in this run appended as one more argument. Empty for none.
    pub on_complete: Vec<String>,
    /// Where to open the Unix socket that answers status queries, if anywhere.
    pub status: Option<PathBuf>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: None,
            peers: Vec::new(),
            max_peers: 32,
            upload_slots: 2,
            max_upload_rate: 0,
            max_download_rate: 0,
            fleet_key: None,
            pause_on_disk_error: false,
            commit_interval: Duration::from_millis(100),
            discovery: Some(discovery::DEFAULT_GROUP),
            max_releases: 16,
            on_complete: Vec::new(),
            status: None,
        }
    }
}

/// Why the agent stopped.
#[derive(Debug)]
pub enum AgentError {
    /// The listening socket could not be opened.
    Listen(SocketAddr, io::Error),
    /// The event loop failed.
    Poll(io::Error),
    /// A release's storage failed (disk full, read-only, ...).
    Store(StoreError),
    /// The status socket could not be opened.
    Status(PathBuf, io::Error),
    /// Adding a release would pass `max_releases`.
    TooManyReleases(usize),
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::Listen(a, e) => write!(f, "cannot listen on {a}: {e}"),
            AgentError::Poll(e) => write!(f, "event loop failed: {e}"),
            AgentError::Store(e) => write!(f, "{e}"),
            AgentError::Status(p, e) => write!(f, "cannot open the status socket {}: {e}", p.display()),
            AgentError::TooManyReleases(n) => {
                write!(f, "already holding {n} releases, the most allowed (--max-releases)")
            }
        }
    }
}

impl std::error::Error for AgentError {}

impl From<StoreError> for AgentError {
    fn from(e: StoreError) -> Self {
        AgentError::Store(e)
    }
}

/// One release the agent serves or fetches.
pub struct Release {
    /// The release name from its manifest.
    pub name: String,
    /// Protocol state.
    pub swarm: Swarm,
    /// Data on disk.
    pub store: Store,
    last_commit: Instant,
    /// When the release became complete in this run, if it did.
    pub completed_at: Option<Instant>,
    dials: Vec<Dial>,
    /// File size, for the status report.
    size: u64,
    rates: Rates,
    /// Set when the release completes in this run, until its install hook is started.
    hook_due: bool,
    /// After a storage failure (when the agent does not stop for it): left alone until then.
    paused_until: Option<Instant>,
}

impl Release {
    fn status(&self, now: Instant) -> ReleaseStatus {
        let stats = &self.swarm.stats;
        let (rate_up, rate_down) = self.rates.per_second(now, stats.uploaded, stats.downloaded);
        ReleaseStatus {
            name: self.name.clone(),
            path: self.store.path().display().to_string(),
            swarm_id: *self.swarm.id(),
            have: self.swarm.have_bytes(),
            total: self.size,
            complete: self.store.is_complete(),
            peers: self.swarm.active_peers(),
            rate_up,
            rate_down,
            uploaded: stats.uploaded,
            downloaded: stats.downloaded,
        }
    }
}

/// An address we keep a connection to for one release, redialled with backoff.
struct Dial {
    addr: SocketAddr,
    slot: Option<usize>,
    next_try: Instant,
    backoff: Duration,
}

struct Conn {
    stream: TcpStream,
    addr: SocketAddr,
    /// Set for connections we opened, until the connect completes.
    connecting: bool,
    release: Option<usize>,
    dial: Option<usize>,
    opened_at: Instant,
    rbuf: Box<[u8]>,
    rlen: usize,
    wbuf: Box<[u8]>,
    wpos: usize,
    wlen: usize,
}

/// The LAN discovery sockets and schedule.
struct Lan {
    listener: mio::net::UdpSocket,
    sender: std::net::UdpSocket,
    group: std::net::SocketAddrV4,
    schedule: discovery::Schedule,
}

struct Offender {
    ip: IpAddr,
    until: Instant,
}

/// The status socket; its file is removed when the agent goes.
struct StatusSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for StatusSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A running install hook.
struct Hook {
    child: Child,
    release: usize,
}

/// A manifest that was refused, as its files looked then: unchanged, it is not read again.
#[derive(PartialEq)]
struct Refused {
    manifest: PathBuf,
    stamps: [Option<(SystemTime, u64)>; 2],
}

impl Refused {
    /// The manifest's and its data file's modification time and size: a copy still in progress
    /// or a file replaced since gets another look.
    fn new(manifest: &Path, data: &Path) -> Refused {
        let stamp = |p: &Path| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        Refused { manifest: manifest.to_owned(), stamps: [stamp(manifest), stamp(data)] }
    }
}

/// The agent: one event loop serving and fetching a set of releases.
pub struct Agent {
    poll: Poll,
    listener: Option<TcpListener>,
    /// The address `listener` is bound to.
    local: Option<SocketAddr>,
    lan: Option<Lan>,
    conns: Vec<Option<Conn>>,
    releases: Vec<Release>,
    bans: heapless::Deque<Offender, MAX_BANS>,
    config: AgentConfig,
    /// Our random node number: peers use it to spot a connection to themselves or a duplicate.
    node: u64,
    scratch: Vec<u32>,
    /// A storage failure seen while handling a frame; the loop stops with it.
    fatal: Option<(usize, StoreError)>,
    status: Option<StatusSocket>,
    hooks: Vec<Hook>,
    hooks_failed: usize,
    refused: heapless::Deque<Refused, MAX_REFUSED>,
    /// The data directory's record of the highest release served per name (`serve` only).
    history: Option<History>,
    started: Instant,
    /// Slots that used up their read budget with bytes possibly left: read again next turn.
    unread: Vec<usize>,
}

impl Agent {
    /// A new agent with no release and no socket yet.
    pub fn new(config: AgentConfig) -> Result<Agent, AgentError> {
        let poll = Poll::new().map_err(AgentError::Poll)?;
        let conns: Vec<Option<Conn>> = (0..config.max_peers).map(|_| None).collect();
        let conns_len = conns.len();
        Ok(Agent {
            poll,
            listener: None,
            local: None,
            lan: None,
            conns,
            releases: Vec::new(),
            bans: heapless::Deque::new(),
            config,
            node: random_seed(),
            scratch: Vec::with_capacity(1024),
            fatal: None,
            status: None,
            hooks: Vec::with_capacity(MAX_HOOKS),
            hooks_failed: 0,
            refused: heapless::Deque::new(),
            history: None,
            started: Instant::now(),
            unread: Vec::with_capacity(conns_len),
        })
    }

    /// Opens the listening socket and the status socket, those the configuration names that are
    /// not open yet. [`Agent::run_until`] calls this itself; call it first to learn the bound
    /// address.
    pub fn listen(&mut self) -> Result<Option<SocketAddr>, AgentError> {
        self.open_status()?;
        let Some(addr) = self.config.listen else { return Ok(None) };
        if self.listener.is_none() {
            let mut l = TcpListener::bind(addr).map_err(|e| AgentError::Listen(addr, e))?;
            self.poll.registry().register(&mut l, LISTENER, Interest::READABLE).map_err(AgentError::Poll)?;
            let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
            for r in &mut self.releases {
                r.swarm.set_listen_port(port);
            }
            self.local = l.local_addr().ok();
            self.listener = Some(l);
            self.open_lan();
        }
        Ok(self.local_addr())
    }

    fn open_status(&mut self) -> Result<(), AgentError> {
        let Some(path) = self.config.status.as_ref().filter(|_| self.status.is_none()) else { return Ok(()) };
        let mut listener = bind_status(path).map_err(|e| AgentError::Status(path.clone(), e))?;
        self.poll.registry().register(&mut listener, STATUS, Interest::READABLE).map_err(AgentError::Poll)?;
        log::info!("status on {}", path.display());
        self.status = Some(StatusSocket { listener, path: path.clone() });
        Ok(())
    }

    /// Joins the discovery group; without it the agent still works through its peer list.
    fn open_lan(&mut self) {
        let (Some(group), Some(SocketAddr::V4(me))) = (self.config.discovery, self.local_addr()) else { return };
        let opened = sys::multicast_listener(group, *me.ip()).and_then(|mut listener| {
            self.poll.registry().register(&mut listener, DISCOVERY, Interest::READABLE)?;
            Ok(Lan {
                listener,
                sender: sys::multicast_sender(*me.ip())?,
                group,
                schedule: discovery::Schedule::new(Instant::now()),
            })
        });
        match opened {
            Ok(lan) => self.lan = Some(lan),
            Err(e) => log::warn!("LAN discovery on {group} is off: {e}"),
        }
    }

    /// Announces our swarms on the LAN when due; asks for announcements while fetching.
    fn announce(&mut self, now: Instant) {
        let Some(port) = self.local_addr().map(|a| a.port()) else { return };
        let Some(lan) = self.lan.as_mut() else { return };
        if !lan.schedule.due(now) {
            return;
        }
        let query = self.releases.iter().any(|r| !r.store.is_complete());
        let mut buf = [0u8; discovery::MAX_DATAGRAM];
        for group in self.releases.chunks(discovery::MAX_IDS) {
            let n = discovery::encode(query, port, self.node, group.iter().map(|r| r.swarm.id()), &mut buf);
            if let Err(e) = lan.sender.send_to(&buf[..n], lan.group) {
                log::debug!("cannot announce on {}: {e}", lan.group);
            }
        }
    }

    /// Reads announcements and dials announcers of swarms we are fetching.
    fn hear(&mut self, now: Instant) {
        let me = self.local_addr();
        let mut buf = [0u8; discovery::MAX_DATAGRAM + 1];
        for _ in 0..MAX_DATAGRAMS_PER_TURN {
            let Some(lan) = self.lan.as_mut() else { return };
            let (n, from) = match lan.listener.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return log::debug!("discovery receive failed: {e}"),
            };
            let Some(a) = Announcement::decode(&buf[..n]) else {
                log::debug!("ignored a malformed announcement from {from}");
                continue;
            };
            let peer = SocketAddr::new(from.ip(), a.listen_port);
            // Our own announcement looped back: under 0.0.0.0 its address would not tell us.
            if a.node == self.node || Some(peer) == me {
                continue;
            }
            if a.query {
                lan.schedule.on_query(now);
            }
            for r in self.releases.iter_mut().filter(|r| !r.store.is_complete() && a.names(r.swarm.id())) {
                add_dial(r, peer, me, now);
            }
        }
    }

    /// The address the agent accepts peers on, if it listens.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// The releases, in the order they were added.
    pub fn releases(&self) -> &[Release] {
        &self.releases
    }

    /// What `flotilla status` reports, taken at `now`.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        Snapshot {
            listen: self.local_addr(),
            uptime: now.saturating_duration_since(self.started),
            releases: self.releases.iter().map(|r| r.status(now)).collect(),
        }
    }

    /// False once an install hook has failed (exited non-zero, or could not be started).
    pub fn hooks_ok(&self) -> bool {
        self.hooks_failed == 0
    }

    /// Adds a release whose data lives at `path` (complete, partial or absent); returns its index.
    pub fn add_release(&mut self, m: &SignedManifest, path: &Path) -> Result<usize, AgentError> {
        if self.releases.len() >= self.config.max_releases {
            return Err(AgentError::TooManyReleases(self.config.max_releases));
        }
        let store = Store::open(path, m)?;
        let swarm_config = SwarmConfig {
            max_peers: self.config.max_peers,
            upload_slots: self.config.upload_slots,
            max_upload_rate: self.config.max_upload_rate,
            max_download_rate: self.config.max_download_rate,
            fleet_key: self.config.fleet_key,
            listen_port: self.local_addr().map_or(0, |a| a.port()),
            node: self.node,
            ..SwarmConfig::default()
        };
        let swarm = Swarm::new(&m.manifest, m.swarm_id, store.have(), swarm_config, random_seed());
        let now = Instant::now();
        let dials = self
            .config
            .peers
            .iter()
            .map(|&addr| Dial { addr, slot: None, next_try: now, backoff: Duration::from_millis(500) })
            .collect();
        let completed_at = store.is_complete().then_some(now);
        self.releases.push(Release {
            name: m.manifest.name.clone(),
            swarm,
            store,
            last_commit: now,
            completed_at,
            dials,
            size: m.manifest.file_size,
            rates: Rates::default(),
            hook_due: false,
            paused_until: None,
        });
        Ok(self.releases.len() - 1)
    }

    /// Adds the releases in a `--data` directory that are not held yet: each `NAME.flotilla` that
    /// decodes and is signed by a trusted key (any key when `trust` is empty), its data at `NAME`.
    /// A release held already (same path or swarm id) is passed over quietly; one refused is
    /// logged once and not read again until its manifest or data file changes. Returns how many
    /// were added. Called at start and then now and then, it lets an operator drop in a manifest.
    pub fn rescan(&mut self, dir: &Path, trust: &[PublicKey]) -> io::Result<usize> {
        let mut added = 0;
        self.history.get_or_insert_with(|| History::load(dir));
        for (manifest, data) in manifests_in(dir)? {
            if self.releases.iter().any(|r| r.store.path() == data) {
                continue;
            }
            let seen = Refused::new(&manifest, &data);
            if self.refused.iter().any(|r| *r == seen) {
                continue;
            }
            if self.load(&manifest, &data, trust) {
                added += 1;
            } else {
                if self.refused.is_full() {
                    self.refused.pop_front();
                }
                let _ = self.refused.push_back(seen);
            }
        }
        Ok(added)
    }

    /// Reads, checks and adds one release of a data directory; false (logged) if refused.
    fn load(&mut self, manifest: &Path, data: &Path, trust: &[PublicKey]) -> bool {
        let m = match load_manifest(manifest, trust) {
            Ok(m) => m,
            Err(e) => {
                log::error!("skipping {}: {e}", manifest.display());
                return false;
            }
        };
        if let Some(r) = self.releases.iter().find(|r| *r.swarm.id() == m.swarm_id) {
            log::warn!("skipping {}: the same release as {}", manifest.display(), r.store.path().display());
            return false;
        }
        let (name, release) = (&m.manifest.name, m.manifest.release);
        if let Some(highest) = self.history.as_ref().and_then(|h| h.highest(name)).filter(|&h| h > release) {
            log::warn!(
                "refusing {}: release {release} of {name} is older than release {highest} already served here (no rollback)",
                manifest.display()
            );
            return false;
        }
        match self.add_release(&m, data) {
            Ok(_) => {
                // Durable before it is said: a kill right after the log line must not lose it.
                if let Some(Err(e)) = self.history.as_mut().map(|h| h.record(name, release)) {
                    log::warn!("cannot record {name} #{release} in {}: {e}", History::FILE);
                }
                log::info!("serving {name} #{release} from {}", data.display());
                true
            }
            Err(e @ AgentError::TooManyReleases(_)) => {
                log::warn!("skipping {}: {e}", manifest.display());
                false
            }
            Err(e) => {
                log::error!("skipping {}: {e}", data.display());
                false
            }
        }
    }

    /// Runs the loop until `done` returns true (checked after every turn).
    pub fn run_until(&mut self, mut done: impl FnMut(&Agent, Instant) -> bool) -> Result<(), AgentError> {
        self.listen()?;
        // Dial before the first wait, or the first connection would wait for the idle tick.
        self.dial(Instant::now());
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            if done(self, now) {
                return Ok(());
            }
            let timeout = self.next_wakeup(now).map(|t| t.saturating_duration_since(now));
            // Wake at least once a second so `done` and redials are looked at.
            let timeout = timeout.unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(1));
            // Connections with bytes left unread must not wait for an edge that may not come.
            let timeout = if self.unread.is_empty() { timeout } else { Duration::ZERO };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(AgentError::Poll(e));
                }
            }
            let now = Instant::now();
            for slot in std::mem::take(&mut self.unread) {
                self.on_ready(slot, now);
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(now),
                    DISCOVERY => self.hear(now),
                    STATUS => self.answer_status(now),
                    Token(slot) => self.on_ready(slot, now),
                }
            }
            self.turn(now)?;
            if let Some((r, e)) = self.fatal.take() {
                self.disk_error(r, e, now)?;
            }
        }
    }

    /// Work done after every wakeup: timers, closes, sending, commits and dials.
    fn turn(&mut self, now: Instant) -> Result<(), AgentError> {
        for r in &mut self.releases {
            if r.swarm.poll_timeout(now).is_some_and(|t| t <= now) {
                r.swarm.handle_timeout(now);
            }
        }
        for slot in 0..self.conns.len() {
            self.check_close(slot, now);
        }
        // Round-robin by frame: each pass gives every connection at most one block, so the
        // peers holding upload slots share the uplink block by block.
        loop {
            let mut progressed = false;
            for slot in 0..self.conns.len() {
                progressed |= self.pump(slot, now)?;
            }
            if !progressed {
                break;
            }
        }
        self.commit(now)?;
        self.run_hooks();
        self.sample_rates(now);
        self.learn_peers(now);
        self.announce(now);
        self.dial(now);
        Ok(())
    }

    fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut consider = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        for r in &self.releases {
            if let Some(t) = r.swarm.poll_timeout(now) {
                consider(t);
            }
            if r.store.has_pending() {
                consider(r.last_commit + self.config.commit_interval);
            }
        }
        for r in self.releases.iter().filter(|r| !r.store.is_complete()) {
            for d in r.dials.iter().filter(|d| d.slot.is_none()) {
                consider(d.next_try);
            }
        }
        if let Some(lan) = &self.lan {
            consider(lan.schedule.next());
        }
        for c in self.conns.iter().flatten().filter(|c| c.release.is_none() || c.connecting) {
            consider(c.opened_at + HELLO_TIMEOUT);
        }
        at
    }

    fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.bans.iter().any(|b| b.ip == ip && b.until > now)
    }

    fn ban(&mut self, ip: IpAddr, now: Instant) {
        if self.bans.is_full() {
            self.bans.pop_front();
        }
        let _ = self.bans.push_back(Offender { ip, until: now + BAN_TIME });
    }

    fn free_slot(&self) -> Option<usize> {
        self.conns.iter().position(Option::is_none)
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let Some(listener) = self.listener.as_ref() else { return };
            let (stream, addr) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    return;
                }
            };
            if self.is_banned(addr.ip(), now) {
                log::debug!("refused {addr}: banned");
                continue;
            }
            let Some(slot) = self.free_slot().or_else(|| self.evict_oldest_pending(now)) else {
                log::debug!("refused {addr}: all {} connection slots taken", self.conns.len());
                continue;
            };
            self.open_slot(slot, stream, addr, None, now);
        }
    }

    /// With every slot taken, frees the one held longest by an inbound connection that has not
    /// said which swarm it wants. An honest peer sends its Hello at once, so under a flood of
    /// idle or trickling connections (slowloris) it still gets in, and the flood only evicts
    /// itself; established peers are never evicted.
    fn evict_oldest_pending(&mut self, now: Instant) -> Option<usize> {
        let (slot, _) = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().filter(|c| c.release.is_none()).map(|c| (i, c.opened_at)))
            .min_by_key(|&(_, t)| t)?;
        self.close(slot, Err("evicted: every slot taken and it had not said hello".into()), now);
        Some(slot)
    }

    /// Samples each release's byte counters (about once a second) for the status report's rates.
    fn sample_rates(&mut self, now: Instant) {
        for r in &mut self.releases {
            r.rates.sample(now, r.swarm.stats.uploaded, r.swarm.stats.downloaded);
        }
    }

    /// Answers a few status queries: each gets the report in one write and is closed.
    fn answer_status(&mut self, now: Instant) {
        for _ in 0..MAX_STATUS_PER_TURN {
            let Some(status) = self.status.as_ref() else { return };
            let mut stream = match status.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return log::warn!("status socket: accept failed: {e}"),
            };
            // The report is a few hundred bytes a release; a reader that cannot take it at once
            // gets what fitted rather than a buffer kept for it.
            let report = status::report(&self.snapshot(now));
            match stream.write(report.as_bytes()) {
                Ok(n) if n == report.len() => {}
                Ok(n) => log::debug!("status socket: report cut at {n} of {} bytes", report.len()),
                Err(e) => log::debug!("status socket: {e}"),
            }
        }
        // Readiness is edge-triggered and we stopped before draining the queue: re-arming makes
        // the next poll report the socket again if queries are still waiting.
        if let Some(s) = self.status.as_mut() {
            if let Err(e) = self.poll.registry().reregister(&mut s.listener, STATUS, Interest::READABLE) {
                log::warn!("status socket: cannot re-arm: {e}");
            }
        }
    }

    /// Reaps the install hooks that finished, then starts those that are due, a few at a time.
    fn run_hooks(&mut self) {
        self.reap_hooks();
        let Agent { hooks, releases, config, hooks_failed, .. } = self;
        for (i, r) in releases.iter_mut().enumerate().filter(|(_, r)| r.hook_due) {
            if hooks.len() >= MAX_HOOKS {
                return;
            }
            r.hook_due = false;
            let (name, path) = (&r.name, r.store.path());
            log::info!("{name}: running the install hook: {} {path:?}", config.on_complete.join(" "));
            match spawn_hook(&config.on_complete, path) {
                Ok(child) => hooks.push(Hook { child, release: i }),
                Err(e) => {
                    *hooks_failed += 1;
                    log::error!("{name}: cannot run the install hook {:?}: {e}", config.on_complete[0]);
                }
            }
        }
    }

    /// Logs how each finished install hook ended and forgets it.
    fn reap_hooks(&mut self) {
        let Agent { hooks, releases, hooks_failed, .. } = self;
        hooks.retain_mut(|h| {
            let name = &releases[h.release].name;
            match h.child.try_wait() {
                Ok(None) => true,
                Ok(Some(status)) => {
                    *hooks_failed += !hook_finished(name, status) as usize;
                    false
                }
                Err(e) => {
                    log::warn!("{name}: cannot wait for the install hook: {e}");
                    false
                }
            }
        });
    }

    /// Starts the install hooks still due and waits for every one still running: for a command
    /// that exits once its release is complete. Returns [`Agent::hooks_ok`].
    pub fn finish_hooks(&mut self) -> bool {
        loop {
            self.run_hooks();
            let Some(mut h) = self.hooks.pop() else { return self.hooks_ok() };
            let name = &self.releases[h.release].name;
            match h.child.wait() {
                Ok(status) => self.hooks_failed += !hook_finished(name, status) as usize,
                Err(e) => log::warn!("{name}: cannot wait for the install hook: {e}"),
            }
        }
    }

    fn open_slot(
        &mut self,
        slot: usize,
        mut stream: TcpStream,
        addr: SocketAddr,
        dial: Option<(usize, usize)>,
        now: Instant,
    ) {
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut stream, Token(slot), interest) {
            log::warn!("cannot register connection to {addr}: {e}");
            return;
        }
        let _ = stream.set_nodelay(true);
        if let Err(e) = sys::set_notsent_lowat(&stream, UNSENT_MARK as u32) {
            log::debug!("cannot cap unsent bytes to {addr}: {e}");
        }
        self.conns[slot] = Some(Conn {
            stream,
            addr,
            connecting: dial.is_some(),
            release: dial.map(|d| d.0),
            dial: dial.map(|d| d.1),
            opened_at: now,
            rbuf: vec![0; RECV_BUF].into_boxed_slice(),
            rlen: 0,
            wbuf: vec![0; SEND_BUF].into_boxed_slice(),
            wpos: 0,
            wlen: 0,
        });
    }

    /// Adds the addresses peer exchange taught each release to its dial table (bounded).
    fn learn_peers(&mut self, now: Instant) {
        let me = self.local_addr();
        for r in &mut self.releases {
            while let Some(addr) = r.swarm.poll_discovered() {
                add_dial(r, addr, me, now);
            }
        }
    }

    fn dial(&mut self, now: Instant) {
        for r in 0..self.releases.len() {
            if self.releases[r].store.is_complete() || self.releases[r].paused_until.is_some_and(|t| now < t) {
                continue;
            }
            for d in 0..self.releases[r].dials.len() {
                let dial = &self.releases[r].dials[d];
                if dial.slot.is_some() || dial.next_try > now {
                    continue;
                }
                let addr = dial.addr;
                let skip = self.is_banned(addr.ip(), now) || self.releases[r].swarm.is_connected_to(addr);
                let slot = self.free_slot();
                let dial = &mut self.releases[r].dials[d];
                // Looked at again later, not at every turn: a due dial is a wakeup deadline.
                let Some(slot) = slot.filter(|_| !skip) else {
                    dial.next_try = now + REDIAL_CHECK;
                    continue;
                };
                dial.next_try = now + dial.backoff;
                dial.backoff = (dial.backoff * 2).min(Duration::from_secs(30));
                match sys::connect_from(self.config.listen, addr) {
                    Ok(stream) => {
                        dial.slot = Some(slot);
                        self.open_slot(slot, stream, addr, Some((r, d)), now);
                    }
                    Err(e) => log::debug!("cannot connect to {addr}: {e}"),
                }
            }
        }
    }

    fn on_ready(&mut self, slot: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else { return };
        if conn.connecting {
            // A non-blocking connect has finished when the socket is writable; it worked if
            // the socket has a peer and no pending error.
            match (conn.stream.take_error(), conn.stream.peer_addr()) {
                (Ok(None), Ok(_)) => {
                    conn.connecting = false;
                    let r = conn.release.unwrap_or(0);
                    log::debug!("connected to {}", conn.addr);
                    let addr = conn.addr;
                    self.releases[r].swarm.add_peer(slot, true, Some(addr), now);
                }
                (Ok(Some(e)), _) | (Err(e), _) => return self.close(slot, Err(e.to_string()), now),
                (Ok(None), Err(e)) if e.kind() == io::ErrorKind::NotConnected => return,
                (Ok(None), Err(e)) => return self.close(slot, Err(e.to_string()), now),
            }
        }
        if let Err(why) = self.receive(slot, now) {
            self.close(slot, why, now);
        }
    }

    /// Reads until the socket would block, handling each whole frame.
    fn receive(&mut self, slot: usize, now: Instant) -> Result<(), Result<CloseReason, String>> {
        let mut budget = READ_BUDGET;
        loop {
            if budget == 0 {
                if !self.unread.contains(&slot) {
                    self.unread.push(slot);
                }
                return Ok(());
            }
            let conn = self.conns[slot].as_mut().ok_or(Err(String::new()))?;
            let n = match conn.stream.read(&mut conn.rbuf[conn.rlen..]) {
                Ok(0) => return Err(Err("connection closed by peer".into())),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Err(e.to_string())),
            };
            conn.rlen += n;
            budget = budget.saturating_sub(n);
            self.handle_frames(slot, now)?;
        }
    }

    fn handle_frames(&mut self, slot: usize, now: Instant) -> Result<(), Result<CloseReason, String>> {
        let Agent { conns, releases, fatal, .. } = self;
        let Conn { stream, rbuf, rlen, release, addr, .. } = conns[slot].as_mut().ok_or(Err(String::new()))?;
        let mut pos = 0;
        while let Some((payload, used)) =
            wire::parse_frame(&rbuf[pos..*rlen]).map_err(|_| Ok(CloseReason::Protocol("bad frame")))?
        {
            let msg = wire::decode_message(payload).map_err(|_| Ok(CloseReason::Protocol("undecodable message")))?;
            let r = match *release {
                Some(r) => r,
                None => {
                    let r = route_hello(releases, &msg, now).map_err(|refusal| {
                        refuse(stream, refusal);
                        Err(format!("refused: {refusal:?}"))
                    })?;
                    *release = Some(r);
                    releases[r].swarm.add_peer(slot, false, Some(*addr), now);
                    r
                }
            };
            deliver(&mut releases[r], slot, &msg, now).map_err(|e| match e {
                Deliver::Peer(why) => why,
                Deliver::Disk(e) => {
                    let msg = e.to_string();
                    *fatal = Some((r, e));
                    Err(msg)
                }
            })?;
            pos += used;
        }
        rbuf.copy_within(pos..*rlen, 0);
        *rlen -= pos;
        Ok(())
    }

    /// Closes the slot if the swarm asked for it or the handshake is overdue.
    fn check_close(&mut self, slot: usize, now: Instant) {
        let Some(conn) = self.conns[slot].as_ref() else { return };
        let overdue = now >= conn.opened_at + HELLO_TIMEOUT;
        let reason = match conn.release {
            _ if conn.connecting && overdue => Some(CloseReason::HandshakeTimeout),
            Some(r) => self.releases[r].swarm.poll_close(slot),
            None if overdue => Some(CloseReason::HandshakeTimeout),
            None => None,
        };
        if let Some(reason) = reason {
            self.close(slot, Ok(reason), now);
        }
    }

    /// Fills the send buffer from the swarm while it has room for a frame (so with at most one
    /// block) and writes once. Returns true if bytes went out and more may follow.
    fn pump(&mut self, slot: usize, now: Instant) -> Result<bool, AgentError> {
        let Agent { conns, releases, poll, .. } = self;
        let Some(conn) = conns[slot].as_mut() else { return Ok(false) };
        let Some(r) = conn.release else { return Ok(false) };
        if conn.connecting {
            return Ok(false);
        }
        let release = &mut releases[r];
        if conn.wpos == conn.wlen {
            conn.wpos = 0;
            conn.wlen = 0;
        } else if conn.wpos > 0 {
            conn.wbuf.copy_within(conn.wpos..conn.wlen, 0);
            conn.wlen -= conn.wpos;
            conn.wpos = 0;
        }
        // Small messages always go; blocks only while the kernel holds little unsent. When it
        // holds more, re-arming makes the kernel note that we wait for room, so epoll wakes us
        // when the unsent bytes drop below the mark (a successful write never asks for that).
        let blocks = release.swarm.wants_block(slot) && sys::unsent_bytes(&conn.stream) < UNSENT_MARK;
        if !blocks && release.swarm.wants_block(slot) {
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = poll.registry().reregister(&mut conn.stream, Token(slot), interest) {
                log::debug!("cannot re-arm {}: {e}", conn.addr);
            }
        }
        while SEND_BUF - conn.wlen >= MAX_FRAME {
            let Some(t) = release.swarm.poll_transmit(slot, now, blocks) else { break };
            conn.wlen += encode_transmit(t, &release.store, &mut conn.wbuf[conn.wlen..])?;
        }
        if conn.wpos == conn.wlen {
            return Ok(false);
        }
        match conn.stream.write(&conn.wbuf[conn.wpos..conn.wlen]) {
            Ok(n) => {
                conn.wpos += n;
                Ok(n > 0)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => {
                self.close(slot, Err(e.to_string()), now);
                Ok(false)
            }
        }
    }

    fn close(&mut self, slot: usize, why: Result<CloseReason, String>, now: Instant) {
        let Some(mut conn) = self.conns[slot].take() else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        match &why {
            Ok(reason) if reason.is_offence() => {
                log::warn!("dropping {}: {reason}; banned for {} s", conn.addr, BAN_TIME.as_secs());
                self.ban(conn.addr.ip(), now);
            }
            Ok(reason) => log::info!("closed {}: {reason}", conn.addr),
            Err(e) => log::debug!("closed {}: {e}", conn.addr),
        }
        if why == Ok(CloseReason::SelfConnection) {
            // We accepted our own dial: the address it reached is ours, learnt from a peer.
            // Only this end sees the reason (the dialling end sees the close), so it is here
            // that the dial is put to rest.
            if let Ok(ours) = conn.stream.local_addr() {
                for d in self.releases.iter_mut().flat_map(|r| r.dials.iter_mut()).filter(|d| d.addr == ours) {
                    d.next_try = now + Duration::from_secs(86_400);
                }
            }
        }
        if let Some(r) = conn.release {
            self.releases[r].swarm.remove_peer(slot, now);
            if let Some(d) = conn.dial {
                let dial = &mut self.releases[r].dials[d];
                dial.slot = None;
                // A peer that stalled or went silent is not worth an instant redial.
                if matches!(why, Ok(CloseReason::Stalled | CloseReason::Idle)) {
                    dial.next_try = now + dial.backoff;
                    dial.backoff = (dial.backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Makes verified chunks durable (at most every `commit_interval`, or at once for the last)
    /// and announces them.
    fn commit(&mut self, now: Instant) -> Result<(), AgentError> {
        for i in 0..self.releases.len() {
            let r = &mut self.releases[i];
            if !r.store.has_pending() || r.paused_until.is_some_and(|t| now < t) {
                continue;
            }
            // A kill loses what is verified and not yet durable: bound it in chunks as well as
            // in time, so a fast link does not pile up a large batch.
            let due = now >= r.last_commit + self.config.commit_interval
                || r.store.pending_count() >= MAX_UNCOMMITTED
                || r.swarm.all_verified();
            if !due {
                continue;
            }
            r.last_commit = now;
            self.scratch.clear();
            if let Err(e) = r.store.commit(&mut self.scratch) {
                self.disk_error(i, e, now)?;
                continue;
            }
            let r = &mut self.releases[i];
            for &c in &self.scratch {
                r.swarm.chunk_committed(c);
            }
            if r.store.is_complete() && r.completed_at.is_none() {
                r.completed_at = Some(now);
                r.hook_due = !self.config.on_complete.is_empty();
                log::info!("{}: complete and verified at {}", r.name, r.store.path().display());
            }
        }
        Ok(())
    }
}

/// Stops the agent for a storage failure, or (with `pause_on_disk_error`, as `serve` runs) sets
/// that release aside for a while and keeps serving the others: a full disk for one release
/// must not take down a device's daemon, nor make its supervisor restart it in a loop.
impl Agent {
    fn disk_error(&mut self, r: usize, e: StoreError, now: Instant) -> Result<(), AgentError> {
        if !self.config.pause_on_disk_error {
            return Err(AgentError::Store(e));
        }
        log::error!("{}: {e}; pausing it for {} s", self.releases[r].name, DISK_RETRY.as_secs());
        self.releases[r].paused_until = Some(now + DISK_RETRY);
        for slot in 0..self.conns.len() {
            if self.conns[slot].as_ref().is_some_and(|c| c.release == Some(r)) {
                self.close(slot, Err("its release is paused".into()), now);
            }
        }
        Ok(())
    }
}

/// Adds `addr` to the release's dial table unless it is us, known already, or the table is full.
fn add_dial(r: &mut Release, addr: SocketAddr, me: Option<SocketAddr>, now: Instant) {
    if Some(addr) == me || r.dials.iter().any(|d| d.addr == addr) || r.dials.len() >= MAX_DIALS {
        return;
    }
    log::debug!("{}: learnt peer {addr}", r.name);
    r.dials.push(Dial { addr, slot: None, next_try: now, backoff: Duration::from_millis(500) });
}

/// Hands one decoded message to the swarm and writes what it accepts.
/// Why delivering a message ended the connection: the peer, or our own disk.
enum Deliver {
    Peer(Result<CloseReason, String>),
    Disk(StoreError),
}

fn deliver(r: &mut Release, slot: PeerId, msg: &Message, now: Instant) -> Result<(), Deliver> {
    let received = r.swarm.handle_message(slot, msg, now).map_err(|why| Deliver::Peer(Ok(why)))?;
    let Received::Write { offset, verdict } = received else { return Ok(()) };
    let Message::Block { data, .. } = msg else { return Ok(()) };
    // Losing the disk is not the peer's fault; nothing is marked present that is not written.
    r.store.write_at(offset, data.0).map_err(Deliver::Disk)?;
    match verdict {
        Some(Verdict::Good(c)) => r.store.mark_verified(c),
        Some(Verdict::Bad(c)) => log::warn!("{}: chunk {c} failed verification; fetching it elsewhere", r.name),
        None => {}
    }
    Ok(())
}

/// Picks the release an inbound Hello asks for.
fn route_hello(releases: &[Release], msg: &Message, now: Instant) -> Result<usize, RefuseReason> {
    let Message::Hello { version, swarm, .. } = *msg else { return Err(RefuseReason::UnknownSwarm) };
    if version != wire::VERSION {
        return Err(RefuseReason::UnsupportedVersion);
    }
    // A release set aside after a storage failure takes no new peers until it is retried.
    let open = |r: &Release| *r.swarm.id() == swarm && r.paused_until.is_none_or(|t| now >= t);
    releases.iter().position(open).ok_or(RefuseReason::UnknownSwarm)
}

/// Sends a refusal as a courtesy before closing; a full socket buffer simply drops it.
fn refuse(stream: &mut TcpStream, reason: RefuseReason) {
    let mut buf = [0u8; 32];
    if let Ok(n) = wire::encode_frame(&Message::Refuse(reason), &mut buf) {
        let _ = stream.write(&buf[..n]);
    }
}

/// Encodes one transmit into `out`, reading a block's bytes from the store straight into place.
fn encode_transmit(t: Transmit, store: &Store, out: &mut [u8]) -> Result<usize, AgentError> {
    match t {
        Transmit::Message(m) => Ok(wire::encode_frame(&m, out).expect("send buffer holds any control frame")),
        Transmit::Block { chunk, offset, len, file_offset } => {
            let start = wire::begin_block(chunk, offset, len, out).expect("send buffer holds a block frame");
            let end = start + len as usize;
            store.read_at(file_offset, &mut out[start..end])?;
            wire::seal_frame(&mut out[..end]);
            Ok(end)
        }
    }
}

/// Starts the install hook: the operator's program and arguments, then `path` as one more
/// argument. No shell parses anything, so no file name can smuggle in a command.
fn spawn_hook(command: &[String], path: &Path) -> io::Result<Child> {
    let Some((program, args)) = command.split_first() else { return Err(io::Error::other("no command")) };
    Command::new(program).args(args).arg(path).stdin(Stdio::null()).spawn()
}

/// Logs how an install hook ended; true if it succeeded.
fn hook_finished(name: &str, status: ExitStatus) -> bool {
    if status.success() {
        log::info!("{name}: the install hook finished ({status})");
    } else {
        log::warn!("{name}: the install hook failed ({status})");
    }
    status.success()
}

/// Binds the status socket at `path`. A socket file left there by an agent that is gone is
/// replaced; a live agent's socket, or anything that is not a socket, is left alone.
fn bind_status(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::other("a file that is not a socket is there"))
        }
        // A non-blocking connect: refused at once when nobody listens, never waits.
        Ok(_) => match mio::net::UnixStream::connect(path) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)?,
            Ok(_) => return Err(io::Error::other("another agent is listening on it")),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::other("another agent is listening on it"))
            }
            Err(e) => return Err(e),
        },
    }
    UnixListener::bind(path)
}

/// A seed for the swarm's choices; different per process so agents do not pick alike.
fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u64::from_le_bytes(b) ^ std::process::id() as u64
}

/// Finds the releases in a `--data` directory: every `NAME.flotilla` that decodes, is signed by a
/// trusted key (when `trust` is not empty), with its data at `NAME`. Bad manifests are logged and
/// skipped so that one bad file does not stop the others.
pub fn scan_data_dir(dir: &Path, trust: &[PublicKey]) -> io::Result<Vec<(SignedManifest, PathBuf)>> {
    let mut found = Vec::new();
    for (manifest, data) in manifests_in(dir)? {
        match load_manifest(&manifest, trust) {
            Ok(m) => found.push((m, data)),
            Err(e) => log::error!("skipping {}: {e}", manifest.display()),
        }
    }
    Ok(found)
}

/// The `(NAME.flotilla, NAME)` pairs in `dir`, sorted by name.
fn manifests_in(dir: &Path) -> io::Result<Vec<(PathBuf, PathBuf)>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    Ok(entries
        .into_iter()
        .filter_map(|path| {
            let stem = path.file_name()?.to_str()?.strip_suffix(".flotilla").filter(|s| !s.is_empty())?;
            let data = dir.join(stem);
            Some((path, data))
        })
        .collect())
}

/// Reads a manifest and checks it is signed by a trusted key (any key when `trust` is empty).
fn load_manifest(path: &Path, trust: &[PublicKey]) -> Result<SignedManifest, ManifestError> {
    let m = SignedManifest::read_file(path)?;
    if !trust.is_empty() {
        m.check_trust(trust)?;
    }
    Ok(m)
}
