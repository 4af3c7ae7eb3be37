//! The mio shell: sockets, timers and files around the protocol core.
//!
//! One thread, one `Poll`. The agent owns a fixed table of connection slots (`max_peers`); each
//! slot's connection feeds whole frames to the [`Release`] it serves and drains what the release
//! wants sent while the socket accepts it, so a slow reader slows only its own connection
//! (backpressure comes from socket writability, not from queues). Every decision about the
//! protocol, chunk state and commits is the release's; what the agent does with the release's
//! [`Event`]s is one `match` in [`Agent::turn`].
//!
//! The rooms of the shell, each a file:
//! - `conn`: accepting, reading frames, writing frames, closing;
//! - `dial`: whom to dial for each release, with back-off, and the addresses that are banned;
//! - `lan`: LAN discovery datagrams;
//! - `site`: where the device stands in its site (its share of the chunks, reachable or not);
//! - `datadir`: a `--data` directory looked at again on request ([`Agent::rescan`]);
//! - `follow`: polling the origin for new releases of the names followed (`--follow`);
//! - `gossip`: learning of them from peers (the manifest asked of an announcer, and given);
//! - `keep`: superseded releases kept for the peers still on them (`--keep`);
//! - `hooks`: the operator's install hook, a few children at once, never waited for in the loop;
//! - `status`: the Unix status socket and the report it answers with;
//! - `metrics`: the same facts as Prometheus text (`--metrics FILE`) and JSON (`status --json`).

mod config;
mod conn;
mod datadir;
mod dial;
mod follow;
mod gossip;
mod guard;
mod hooks;
mod keep;
mod lan;
pub mod metrics;
mod origin;
mod site;
pub mod status;
mod status_socket;
mod sys;
mod tracker;

pub use config::{AgentConfig, AgentError};
pub use origin::OriginSpec;

use crate::core::manifest::{ManifestError, SignedManifest};
use crate::core::release::{Event, Release, ReleaseConfig};
use crate::core::rng::Rng;
use crate::core::session::HANDSHAKE_TIMEOUT;
use crate::core::storage::{Storage, StoreError};
use crate::core::swarm::SwarmConfig;
use crate::store::device_id::DeviceId;
use crate::store::file::FileStore;
use crate::store::history::History;
use crate::store::safe_fs;
use conn::Conn;
use dial::Dial;
use guard::Bans;
use hooks::Hook;
use lan::Lan;
use mio::net::TcpListener;
use mio::{Events, Poll, Token};
use status::{Rates, ReleaseStatus, Snapshot};
use status_socket::StatusSocket;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX);
const DISCOVERY: Token = Token(usize::MAX - 1);
const STATUS: Token = Token(usize::MAX - 2);
const TRACKER: Token = Token(usize::MAX - 3);
/// Longest the loop sleeps, so that `run_until`'s condition and redials are looked at.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// One release the agent serves or fetches, with what the shell keeps beside it.
pub struct Held {
    /// The release: protocol state, chunk state and its file store.
    pub release: Release<FileStore>,
    /// When the release became complete (at start, or in this run).
    pub completed_at: Option<Instant>,
    dials: Vec<Dial>,
    rates: Rates,
    /// Where it stands with its install hook.
    pub hook: hooks::HookState,
    /// After a storage failure (when the agent does not stop for it): left alone until then.
    paused_until: Option<Instant>,
    /// The manifest file in a data directory it was read from (`serve`).
    manifest: Option<std::path::PathBuf>,
    /// That file's modification time and size when it was read: a manifest replaced in place
    /// (a new release copied over the old one's file) is read again.
    manifest_stamp: Option<datadir::Stamp>,
    /// What could not be checked when it was accepted (an unset clock defers expiry).
    pub deferred: crate::core::trust::Deferred,
    /// Who signed its manifest: a new trust root may no longer count them.
    signers: Vec<crate::core::manifest::PublicKey>,
    /// Its client of each `--tracker`, in their order (made at the first announce).
    trackers: Vec<crate::core::tracker::TrackerClient>,
    /// Its HTTP origin client (`--origin`), if one is configured.
    origin: Option<origin::OriginClient>,
    /// Where its file and manifest are kept once a newer release replaces it (`keep`).
    kept: Option<keep::Kept>,
    /// Until when a LAN peer's announcement said it fetches this release from a reachable peer
    /// beyond the LAN (`site`): this device then leaves the origin to that peer too.
    heard_behind_until: Option<Instant>,
    /// Until when a reachable peer beyond our LAN that we dialled said it is full
    /// (`Refuse(Busy)`): our site waits for it rather than take the release from the origin.
    refused_busy_until: Option<Instant>,
    /// Whether our last look at the site found us fetching from beyond the LAN (what our
    /// announcements say): a change to it is announced at once.
    said_behind: bool,
    /// Block bytes from peers beyond the LAN and from peers at all at the last look, and since
    /// when each has had to grow (its last growth, or the end of the origin delay): see
    /// `site::PEER_PATIENCE`.
    progress: [(u64, Instant); 2],
}

/// How a release is added ([`Agent::add_release_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Adding {
    /// A release of its own name, or the first of it.
    New,
    /// A newer release of a name held: fetched beside the file it will replace.
    Replacing,
    /// An older release kept for peers still on it (`--keep`): served only, never installed,
    /// past the no-rollback history.
    Kept,
}

impl Held {
    fn status(&self, now: Instant) -> ReleaseStatus {
        let r = &self.release;
        let stats = r.stats();
        let (rate_up, rate_down) = self.rates.per_second(now, stats.uploaded, stats.downloaded);
        ReleaseStatus {
            name: r.name().to_owned(),
            release: r.number(),
            installed: r.is_complete() && self.hook == hooks::HookState::Idle,
            from_wan: stats.received_wan,
            from_origin: stats.received_origin,
            to_wan: stats.sent_wan,
            path: r.store().path().display().to_string(),
            swarm_id: *r.id(),
            have: r.have_bytes(),
            total: r.size(),
            complete: r.is_complete(),
            peers: r.swarm().active_peers(),
            rate_up,
            rate_down,
            uploaded: stats.uploaded,
            downloaded: stats.downloaded,
            expires: r.expires(),
            expiry_unchecked: self.deferred == crate::core::trust::Deferred::Expiry,
            hook: match self.hook {
                hooks::HookState::Idle => "",
                hooks::HookState::Due { failures: 0, .. } => "due",
                hooks::HookState::Due { .. } => "failed; to be retried",
                hooks::HookState::Running { .. } => "running",
            },
        }
    }

    fn is_paused(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|t| now < t)
    }
}

/// The agent: one event loop serving and fetching a set of releases.
pub struct Agent {
    poll: Poll,
    listener: Option<TcpListener>,
    /// The address `listener` is bound to.
    local: Option<SocketAddr>,
    lan: Option<Lan>,
    /// When the `--metrics` file is next written.
    metrics_at: Instant,
    /// When the releases are next told their site shares (`site`).
    shares_at: Instant,
    /// The trackers' socket (`--tracker`).
    trackers: Option<tracker::Trackers>,
    /// Origin connections opened so far: each gets its own poll token.
    origin_tokens: usize,
    /// The origin polls of the names followed (`follow`).
    polls: Vec<follow::ManifestPoll>,
    /// Manifest transfers with peers (`gossip`).
    gossip: gossip::Gossip,
    /// Manifests learnt (from the origin or peers), for [`Agent::take_learnt`].
    learnt: Vec<SignedManifest>,
    /// Swarm ids of learnt manifests the trust rules refused: not fetched or logged again.
    refused_learnt: heapless::Deque<crate::core::manifest::SwarmId, 64>,
    conns: Vec<Option<Conn>>,
    releases: Vec<Held>,
    bans: Bans,
    config: AgentConfig,
    /// Our random node number: peers use it to spot a connection to themselves or a duplicate.
    node: u64,
    /// Seeds each release's choices, so agents do not pick alike.
    rng: Rng,
    status: Option<StatusSocket>,
    hooks: Vec<Hook>,
    hooks_failed: usize,
    /// Install hooks that finished well since start.
    hooks_ok: u64,
    refused: heapless::Deque<datadir::Refused, { datadir::MAX_REFUSED }>,
    /// The record of the highest release accepted per name ([`Agent::keep_state`]).
    history: Option<History>,
    /// This device's id, from the state directory ([`Agent::keep_state`]).
    device_id: Option<DeviceId>,
    /// The trust root's fast-forward bound ([`Agent::apply_root`]).
    max_jump: Option<u64>,
    /// The install hooks still owed ([`Agent::keep_state`]).
    pending_hooks: Option<crate::store::pending_hooks::PendingHooks>,
    started: Instant,
    /// The receive and send buffers every connection shares.
    io: conn::IoBuffers,
    /// When connections waiting for a frame were last checked for a full socket.
    rechecked_at: Instant,
    /// Slots that used up their read budget with bytes possibly left: read again next turn.
    unread: Vec<usize>,
    /// The list of the turn before, swapped with `unread` so that neither is ever reallocated.
    rereading: Vec<usize>,
    /// A storage failure that stops the agent (without `pause_on_disk_error`).
    fatal: Option<StoreError>,
}

impl Agent {
    /// A new agent with no release and no socket yet.
    pub fn new(config: AgentConfig) -> Result<Agent, AgentError> {
        let poll = Poll::new().map_err(AgentError::Poll)?;
        let conns: Vec<Option<Conn>> = (0..config.max_peers).map(|_| None).collect();
        let mut seed = [0u8; 8];
        sys::os_random(&mut seed).map_err(AgentError::Random)?;
        let mut rng = Rng::new(u64::from_le_bytes(seed));
        let mut agent = Agent {
            poll,
            listener: None,
            local: None,
            lan: None,
            shares_at: Instant::now(),
            metrics_at: Instant::now(),
            trackers: None,
            origin_tokens: 0,
            polls: Vec::new(),
            gossip: gossip::Gossip::default(),
            learnt: Vec::new(),
            refused_learnt: heapless::Deque::new(),
            io: conn::IoBuffers::new(),
            rechecked_at: Instant::now(),
            unread: Vec::with_capacity(conns.len()),
            rereading: Vec::with_capacity(conns.len()),
            conns,
            releases: Vec::new(),
            bans: Bans::new(config.max_peers),
            config,
            node: rng.next_u64(),
            rng,
            status: None,
            hooks: Vec::with_capacity(hooks::MAX_HOOKS),
            hooks_failed: 0,
            hooks_ok: 0,
            refused: heapless::Deque::new(),
            history: None,
            device_id: None,
            pending_hooks: None,
            max_jump: None,
            started: Instant::now(),
            fatal: None,
        };
        agent.start_polls(Instant::now());
        Ok(agent)
    }

    /// Opens the listening socket and the status socket, those the configuration names that are
    /// not open yet. [`Agent::run_until`] calls this itself; call it first to learn the bound
    /// address.
    pub fn listen(&mut self) -> Result<Option<SocketAddr>, AgentError> {
        self.open_status()?;
        if let Some(addr) = self.config.listen.filter(|_| self.listener.is_none()) {
            let mut l = TcpListener::bind(addr).map_err(|e| AgentError::Listen(addr, e))?;
            let readable = mio::Interest::READABLE;
            self.poll.registry().register(&mut l, LISTENER, readable).map_err(AgentError::Poll)?;
            let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
            for h in &mut self.releases {
                h.release.set_listen_port(port);
            }
            self.local = l.local_addr().ok();
            self.listener = Some(l);
            self.open_lan();
        }
        self.open_trackers();
        Ok(self.local_addr())
    }

    /// The address the agent accepts peers on, if it listens.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// The releases, in the order they were added.
    pub fn releases(&self) -> &[Held] {
        &self.releases
    }

    /// What `flotilla status` reports, taken at `now`.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        Snapshot {
            listen: self.local_addr(),
            uptime: now.saturating_duration_since(self.started),
            releases: self.releases.iter().map(|h| h.status(now)).collect(),
            device_id: self.device_id.map(|d| d.to_hex()),
            bans: self.bans.active(now),
            hooks_ok: self.hooks_ok,
            hooks_failed: self.hooks_failed as u64,
        }
    }

    /// Keeps the agent's records in `dir` (`--state-dir`): the no-rollback history (from now on
    /// a release older than one accepted before under its name is refused, and each one added is
    /// recorded first) and the install hooks owed (each runs at least once per release). A
    /// missing `dir` is created, private to us, as a new device's first start needs.
    pub fn keep_state(&mut self, dir: &Path) -> Result<(), AgentError> {
        safe_fs::create_private_dir(dir).map_err(AgentError::History)?;
        self.history = Some(History::load(dir).map_err(AgentError::History)?);
        self.load_pending_hooks(dir)
    }

    /// The release names followed (`--follow`).
    pub fn follows(&self) -> &[String] {
        &self.config.follow
    }

    /// True if manifests were learnt since [`Agent::take_learnt`] was last called.
    pub fn has_learnt(&self) -> bool {
        !self.learnt.is_empty()
    }

    /// The manifests learnt from the origin or from peers of the names followed: decoded and of
    /// the right name, but not yet checked against the trust rules (the caller's to do).
    pub fn take_learnt(&mut self) -> Vec<SignedManifest> {
        std::mem::take(&mut self.learnt)
    }

    /// Takes this device's id from `dir` (the state directory), made on the first start: it
    /// places the device in staged rollouts (without one, every release installs at once).
    pub fn identify(&mut self, dir: &Path) -> Result<(), AgentError> {
        self.device_id = Some(DeviceId::load_or_create(dir).map_err(AgentError::DeviceId)?);
        Ok(())
    }

    /// This device's id, once [`Agent::identify`] took it.
    pub fn device_id(&self) -> Option<DeviceId> {
        self.device_id
    }

    /// The highest release of `name` accepted here, by the history or held now.
    pub fn highest_known(&self, name: &str) -> Option<u64> {
        let held = self.releases.iter().filter(|h| h.release.name() == name).map(|h| h.release.number()).max();
        self.history.as_ref().and_then(|h| h.highest(name)).max(held)
    }

    /// Adds a release whose data lives at `path` (complete, partial or absent); returns its index.
    /// With a history, a release older than one accepted before is refused and a newer one is
    /// recorded, durably, before anything else happens.
    pub fn add_release(&mut self, m: &SignedManifest, path: &Path) -> Result<usize, AgentError> {
        self.add_release_with(m, path, Adding::New)
    }

    /// [`Agent::add_release`]; with `replacing`, a file at `path` that is not this release is
    /// an older release of its name in a data directory: it stays in place (and is served by its
    /// own release while held) until this one is whole and renamed over it.
    fn add_release_with(&mut self, m: &SignedManifest, path: &Path, how: Adding) -> Result<usize, AgentError> {
        let (name, number) = (&m.manifest.name, m.manifest.release);
        let replacing = how == Adding::Replacing;
        if how == Adding::Kept {
            return self.add_kept(m, path);
        }
        if let Some(highest) = self.highest_known(name).filter(|&h| h > number) {
            return Err(AgentError::Rollback { name: name.clone(), release: number, highest });
        }
        let recorded = self.history.as_ref().and_then(|h| h.highest(name));
        if let (Some(max_jump), Some(highest)) = (self.max_jump, recorded) {
            if number > highest.saturating_add(max_jump) {
                let (name, release) = (name.clone(), number);
                return Err(AgentError::Manifest(ManifestError::FastForward { name, release, highest, max_jump }));
            }
        }
        // A release being replaced in place does not count: the two share a name and a file.
        let counted = self.releases.iter().filter(|h| !(replacing && h.release.name() == name.as_str())).count();
        if counted >= self.config.max_releases {
            return Err(AgentError::TooManyReleases(self.config.max_releases));
        }
        if let Some(h) = &mut self.history {
            h.record(name, number).map_err(AgentError::History)?;
        }
        let (store, present) = if replacing { FileStore::open_replacing(path, m)? } else { FileStore::open(path, m)? };
        let r = self.hold(m, store, &present);
        if let Err(e) = self.note_hook(r, Instant::now()) {
            self.releases.pop();
            return Err(e);
        }
        // The LAN hears of it now (the "latest" advertisement), not at the next interval.
        if let Some(lan) = self.lan.as_mut() {
            lan.schedule.announce_now(Instant::now());
        }
        Ok(r)
    }

    /// Holds release `m` in `store` (with `present` already there): its `Held`, last.
    fn hold(&mut self, m: &SignedManifest, store: FileStore, present: &crate::core::bitfield::Bitfield) -> usize {
        let now = Instant::now();
        let release = Release::new(m, store, present, self.release_config(), self.rng.next_u64(), now);
        let origin = self.origin_for(&m.manifest.name, now);
        let dials = self.config.peers.iter().map(|&addr| Dial::configured(addr, now)).collect();
        self.releases.push(Held {
            completed_at: release.is_complete().then_some(now),
            release,
            dials,
            rates: Rates::default(),
            hook: hooks::HookState::Idle,
            paused_until: None,
            manifest: None,
            manifest_stamp: None,
            deferred: crate::core::trust::Deferred::Nothing,
            signers: m.signers.clone(),
            trackers: Vec::new(),
            origin,
            kept: None,
            heard_behind_until: None,
            refused_busy_until: None,
            said_behind: false,
            progress: [(0, now + self.config.origin_delay); 2],
        });
        self.releases.len() - 1
    }

    /// Takes on the trust root: its fast-forward bound from now on, its floors written into the
    /// no-rollback history if it was just accepted (`fresh`: never again after that, or a
    /// restart would lower the record anew), and every release its keys no longer sign dropped.
    pub fn apply_root(&mut self, root: &crate::core::trust::Root, fresh: bool) -> Result<(), AgentError> {
        self.max_jump = root.max_jump;
        if let Some(history) = self.history.as_mut().filter(|_| fresh) {
            for (name, release) in &root.floors {
                history.set_floor(name, *release).map_err(AgentError::History)?;
                log::info!("root {}: the floor of {name} is now release {release}", root.serial);
            }
        }
        while let Some(r) = self.releases.iter().position(|h| !root.policy.is_met_by(&h.signers)) {
            let h = &self.releases[r].release;
            log::warn!("{} #{}: no longer signed by root {}'s keys; dropped", h.name(), h.number(), root.serial);
            self.remove_release(r, Instant::now());
        }
        Ok(())
    }

    /// Notes what could not be checked when release `r` was accepted (an unset clock defers its
    /// expiry), for its status.
    pub fn note_deferred(&mut self, r: usize, deferred: crate::core::trust::Deferred) {
        self.releases[r].deferred = deferred;
    }

    /// Notes the manifest file release `r` was read from, for the install hook's environment.
    pub fn set_manifest_path(&mut self, r: usize, path: &Path) {
        self.releases[r].manifest = Some(path.to_owned());
    }

    /// Drops release `r` for good: its connections are closed, it is forgotten and so is its
    /// install hook if one was owed; its files stay as they are (a `.part` is taken over by the
    /// next release stored at the same path). For a release superseded by a newer one of the
    /// same name, which must then never complete, or expired, or no longer trusted.
    fn remove_release(&mut self, r: usize, now: Instant) {
        for slot in 0..self.conns.len() {
            if self.conns[slot].as_ref().is_some_and(|c| c.release == Some(r)) {
                self.close(slot, Err("its release was superseded"), now);
            }
        }
        let gone = self.releases.remove(r);
        self.forget_hook(gone.release.id());
        // Dropped for good (superseded and not kept, expired, no longer trusted): its kept
        // copies go too.
        if let Some(k) = &gone.kept {
            k.remove();
        }
        for c in self.conns.iter_mut().flatten() {
            if let Some(i) = c.release.filter(|&i| i > r) {
                c.release = Some(i - 1);
            }
        }
    }

    fn release_config(&self) -> ReleaseConfig {
        let c = &self.config;
        let swarm = SwarmConfig {
            max_peers: c.max_peers,
            upload_slots: c.upload_slots,
            max_upload_rate: c.max_upload_rate,
            max_download_rate: c.max_download_rate,
            fleet_keys: c.fleet_keys,
            listen_port: self.local_addr().map_or(0, |a| a.port()),
            node: self.node,
            ..SwarmConfig::default()
        };
        ReleaseConfig { swarm, commit_interval: c.commit_interval, ..ReleaseConfig::default() }
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
            let timeout = self.next_wakeup(now).map_or(MAX_SLEEP, |t| t.saturating_duration_since(now));
            // Connections with bytes left unread must not wait for an edge that may not come.
            let timeout = if self.unread.is_empty() { timeout.min(MAX_SLEEP) } else { Duration::ZERO };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(AgentError::Poll(e));
                }
            }
            let now = Instant::now();
            std::mem::swap(&mut self.unread, &mut self.rereading);
            for i in 0..self.rereading.len() {
                self.on_ready(self.rereading[i], None, now);
            }
            self.rereading.clear();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(now),
                    DISCOVERY => self.hear(now),
                    TRACKER => self.hear_trackers(now),
                    STATUS => self.answer_status(now),
                    // Origin connections are driven in every turn (`drive_origins`).
                    Token(t) if t > origin::ORIGIN_TOKENS => {}
                    Token(slot) => self.on_ready(slot, Some(ev), now),
                }
            }
            self.turn(now);
            if let Some(e) = self.fatal.take() {
                return Err(AgentError::Store(e));
            }
        }
    }

    /// Work done after every wakeup: timers and commits, the releases' events, sending, dials.
    fn turn(&mut self, now: Instant) {
        for h in self.releases.iter_mut().filter(|h| !h.is_paused(now)) {
            h.release.handle_timeout(now);
        }
        self.drain_events(now);
        self.close_overdue_handshakes(now);
        if now >= self.rechecked_at + Duration::from_secs(1) {
            self.rechecked_at = now;
            self.recheck_waiting(now);
        }
        self.send_all(now);
        // Sending can fail a read from disk; its event is handled in this same turn.
        self.drain_events(now);
        self.run_hooks(now);
        self.retire_superseded(now);
        self.sample_rates(now);
        self.announce(now);
        self.announce_trackers(now);
        self.refresh_site_shares(now);
        self.drive_origins(now);
        self.drive_polls(now);
        self.drive_gossip(now);
        self.write_metrics(now);
        self.dial(now);
    }

    /// Acts on everything the releases report: the one place their events are handled.
    fn drain_events(&mut self, now: Instant) {
        for r in 0..self.releases.len() {
            while let Some(event) = self.releases[r].release.poll_event(now) {
                match event {
                    Event::Closed { peer, reason } => self.close(peer, Ok(reason), now),
                    Event::PeerLearnt(addr) => dial::add_dial(&mut self.releases[r], addr, self.local, now),
                    Event::Completed => self.completed(r, now),
                    Event::StorageFailed(e) => self.storage_failed(r, e, now),
                }
            }
        }
    }

    fn completed(&mut self, r: usize, now: Instant) {
        let h = &mut self.releases[r];
        h.completed_at = Some(now);
        log::info!("{}: complete and verified at {}", h.release.name(), h.release.store().path().display());
        if let Some(o) = h.origin.as_ref().filter(|o| o.body_bytes > 0) {
            let mib = o.body_bytes as f64 / (1 << 20) as f64;
            log::info!("{}: {mib:.1} MiB of it came from the origin", h.release.name());
        }
        self.hook_after_completion(r, now);
    }

    /// Every storage failure, read or write, of any release ends here: it stops the agent, or
    /// (with `pause_on_disk_error`, as `serve` runs) sets that release aside for a while and
    /// keeps serving the others. A full disk for one release must not take down a device's
    /// daemon, nor make its supervisor restart it in a loop.
    fn storage_failed(&mut self, r: usize, e: StoreError, now: Instant) {
        if !self.config.pause_on_disk_error {
            self.fatal.get_or_insert(e);
            return;
        }
        let retry = self.config.disk_retry;
        log::error!("{}: {e}; pausing it for {} s", self.releases[r].release.name(), retry.as_secs());
        self.releases[r].paused_until = Some(now + retry);
        for slot in 0..self.conns.len() {
            if self.conns[slot].as_ref().is_some_and(|c| c.release == Some(r)) {
                self.close(slot, Err("its release is paused"), now);
            }
        }
    }

    fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut consider = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        for h in &self.releases {
            match h.paused_until.filter(|&t| now < t) {
                Some(t) => consider(t),
                None => h.release.poll_timeout(now).into_iter().for_each(&mut consider),
            }
            if let hooks::HookState::Due { not_before, .. } = h.hook {
                consider(not_before);
            }
            if !h.release.is_complete() {
                h.dials.iter().filter(|d| d.is_due_later()).for_each(|d| consider(d.next_try));
            }
            h.trackers.iter().for_each(|c| consider(c.poll_timeout()));
            if let Some(t) = h.origin.as_ref().filter(|_| !h.release.is_complete()).and_then(|o| o.wakeup()) {
                consider(t);
            }
        }
        if let Some(lan) = &self.lan {
            consider(lan.schedule.next());
        }
        self.polls.iter().for_each(|p| consider(p.wakeup()));
        self.gossip_wakeup().into_iter().for_each(&mut consider);
        if self.config.metrics.is_some() {
            consider(self.metrics_at);
        }
        for c in self.conns.iter().flatten().filter(|c| c.release.is_none() || c.connecting) {
            consider(c.opened_at + HANDSHAKE_TIMEOUT);
        }
        at
    }

    /// Samples each release's byte counters (about once a second) for the status report's rates.
    fn sample_rates(&mut self, now: Instant) {
        for h in &mut self.releases {
            let stats = h.release.stats();
            h.rates.sample(now, stats.uploaded, stats.downloaded);
        }
    }
}
