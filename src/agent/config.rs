//! The agent's settings and why it stops.

use crate::core::discovery;
use crate::core::storage::StoreError;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Settings of an agent, fixed at start.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Address to accept peers on; `None` to only dial out.
    pub listen: Option<SocketAddr>,
    /// Peers to dial for every release that is not complete.
    pub peers: Vec<SocketAddr>,
    /// UDP trackers (BEP 15) to announce every release to and learn peers from.
    pub trackers: Vec<SocketAddr>,
    /// The HTTP origin, the source of last resort (`agent::origin`).
    pub origin: Option<super::origin::OriginSpec>,
    /// How long peers get before the origin is asked for anything.
    pub origin_delay: Duration,
    /// Cap on what the origin sends us, in bytes per second (0: none).
    pub origin_rate: u64,
    /// A chunk from the origin must be whole within this, plus its length at 16 KiB/s.
    pub origin_timeout: Duration,
    /// Release names followed (`serve --follow`): new releases of these are looked for at the
    /// origin and taken from peers.
    pub follow: Vec<String>,
    /// How often the origin is polled for each followed name's manifest.
    pub poll_interval: Duration,
    /// Superseded releases of each name kept and served (`serve --keep`, `agent::keep`).
    pub keep: usize,
    /// Connection slots.
    pub max_peers: usize,
    /// Peers uploaded to at once.
    pub upload_slots: usize,
    /// Upload cap per release in bytes per second, 0 for none.
    pub max_upload_rate: u64,
    /// Download cap per release in bytes per second, 0 for none.
    pub max_download_rate: u64,
    /// With fleet secrets, only members talk, over a sealed channel (see [`crate::core::auth`]):
    /// the first key dials, any is accepted.
    pub fleet_keys: crate::core::auth::FleetKeys,
    /// On a storage failure, set the release aside for a while instead of stopping the agent.
    pub pause_on_disk_error: bool,
    /// Longest a verified chunk waits before it is made durable and announced.
    pub commit_interval: Duration,
    /// How long a release whose storage failed is set aside (with `pause_on_disk_error`).
    pub disk_retry: Duration,
    /// The LAN discovery multicast group, or `None` to find peers only through `peers` and
    /// peer exchange.
    pub discovery: Option<std::net::SocketAddrV4>,
    /// Releases held at most; [`Agent::add_release`] refuses more.
    pub max_releases: usize,
    /// The install hook: a program and its arguments, run with the path of the release appended
    /// as one more argument, at least once per release taken on incomplete (see
    /// `agent::hooks`). Empty for none.
    pub on_complete: Vec<String>,
    /// Longest an install hook may run before it is killed and counted as failed.
    pub hook_timeout: Duration,
    /// Where to write the Prometheus metrics every few seconds (`--metrics`), if anywhere.
    pub metrics: Option<PathBuf>,
    /// Where to open the Unix socket that answers status queries, if anywhere.
    pub status: Option<PathBuf>,
    /// Its permissions (who may connect): 0600, only our user, unless said otherwise.
    pub status_mode: u32,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: None,
            peers: Vec::new(),
            trackers: Vec::new(),
            origin: None,
            origin_delay: Duration::from_secs(10),
            origin_rate: 0,
            origin_timeout: Duration::from_secs(30),
            follow: Vec::new(),
            poll_interval: Duration::from_secs(300),
            keep: 0,
            max_peers: 32,
            upload_slots: 2,
            max_upload_rate: 0,
            max_download_rate: 0,
            fleet_keys: crate::core::auth::FleetKeys::default(),
            pause_on_disk_error: false,
            commit_interval: Duration::from_millis(100),
            disk_retry: Duration::from_secs(30),
            discovery: Some(discovery::DEFAULT_GROUP),
            max_releases: 16,
            on_complete: Vec::new(),
            hook_timeout: Duration::from_secs(600),
            metrics: None,
            status: None,
            status_mode: 0o600,
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
    /// The kernel's random source failed.
    Random(io::Error),
    /// The no-rollback history could not be read or written.
    History(io::Error),
    /// The device id could not be read or made.
    DeviceId(io::Error),
    /// A release older than one already accepted under its name.
    Rollback { name: String, release: u64, highest: u64 },
    /// A manifest this device may not act on.
    Manifest(crate::core::manifest::ManifestError),
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::Listen(a, e) => write!(f, "cannot listen on {a}: {e}"),
            AgentError::Poll(e) => write!(f, "event loop failed: {e}"),
            AgentError::Store(e) => write!(f, "{e}"),
            AgentError::Status(p, e) => write!(f, "cannot open the status socket {}: {e}", p.display()),
            AgentError::Random(e) => write!(f, "cannot read random bytes from the kernel: {e}"),
            AgentError::History(e) => write!(f, "no-rollback history: {e}"),
            AgentError::DeviceId(e) => write!(f, "device id: {e}"),
            AgentError::Manifest(e) => write!(f, "{e}"),
            AgentError::Rollback { name, release, highest } => write!(
                f,
                "refusing release {release} of {name}: release {highest} was already accepted here (no rollback)"
            ),
            AgentError::TooManyReleases(n) => {
                write!(f, "already holding {n} releases, the most allowed (--max-releases)")
            }
        }
    }
}

impl From<StoreError> for AgentError {
    fn from(e: StoreError) -> Self {
        AgentError::Store(e)
    }
}

impl std::error::Error for AgentError {}
