//! Subcommands of the `flotilla` binary. Each checks its input fully (flags, manifest, trust,
//! output path) before it binds a socket or creates a file, and reports one line on failure.

mod demo;
mod root;

use flotilla::agent::status::fixed;
use flotilla::agent::{Agent, AgentConfig, Held, OriginSpec};
use flotilla::core::manifest::{
    self, Manifest, ManifestError, PublicKey, Rollout, SecretKey, SignedManifest, DEFAULT_CHUNK_SIZE,
};
use flotilla::core::storage::Storage;
use flotilla::core::storage::StoreError;
use flotilla::core::trust::{
    format_rfc3339, parse_rfc3339, valid_target, Acceptor, Deferred, TrustPolicy, CLOCK_FLOOR,
};
use flotilla::store::atomic::{replace_file, with_suffix};
use flotilla::store::root_file::RootKeeper;
use lexopt::prelude::*;
use std::ffi::OsString;
use std::io::{IsTerminal, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A failure with its exit code: 1 runtime, 2 usage or input.
pub struct Failure {
    pub code: i32,
    pub message: String,
}

pub fn usage(msg: impl std::fmt::Display) -> Failure {
    Failure { code: 2, message: msg.to_string() }
}

pub fn runtime(msg: impl std::fmt::Display) -> Failure {
    Failure { code: 1, message: msg.to_string() }
}

impl From<lexopt::Error> for Failure {
    fn from(e: lexopt::Error) -> Self {
        usage(format!("{e} (see --help)"))
    }
}

impl From<ManifestError> for Failure {
    fn from(e: ManifestError) -> Self {
        Failure { code: if e.is_bad_input() { 2 } else { 1 }, message: e.to_string() }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        let code = if matches!(e, StoreError::ExistingFileDiffers { .. }) { 2 } else { 1 };
        Failure { code, message: e.to_string() }
    }
}

impl From<flotilla::agent::AgentError> for Failure {
    fn from(e: flotilla::agent::AgentError) -> Self {
        use flotilla::agent::AgentError::{Manifest, Rollback, Store};
        match e {
            Store(e) => e.into(),
            Manifest(e) => e.into(),
            e @ Rollback { .. } => usage(e),
            e => runtime(e),
        }
    }
}

/// The longest `--poll`: a week (longer is no poll at all, and overflows the clock).
const MAX_POLL: u64 = 7 * 86_400;

const HELP: &str = "\
flotilla: peer-to-peer distribution of operator-signed releases

Usage: flotilla [-v|-q] COMMAND [ARGS]

Commands:
  keygen    make a new operator key pair
  publish   hash and sign a file, writing its manifest
  inspect   show what a manifest (or a trust root) describes
  root      write a trust root: the release keys and their threshold, or the next root
  verify    check that a file is exactly the release a manifest describes
  serve     serve (and complete) every release in a directory
  fetch     fetch one release from peers, serving it meanwhile
  status    ask a running serve or fetch how it is doing
  demo      run a seed and 8 peers on loopback and print figures

Options:
  -v, --verbose   more log output (repeat for trace)
  -q, --quiet     less log output
  -h, --help      this help; COMMAND --help for each command's
";

/// Runs the command line; the caller turns a failure into its exit code.
pub fn run(args: Vec<OsString>) -> Result<(), Failure> {
    let mut p = lexopt::Parser::from_args(args);
    let mut verbosity: i32 = 0;
    let command = loop {
        match p.next()? {
            Some(Short('v') | Long("verbose")) => verbosity += 1,
            Some(Short('q') | Long("quiet")) => verbosity -= 1,
            Some(Short('h') | Long("help")) | None => {
                print!("{HELP}");
                return Ok(());
            }
            Some(Value(v)) => break v.string()?,
            Some(a) => return Err(a.unexpected().into()),
        }
    };
    let level = match verbosity {
        i32::MIN..=-2 => log::LevelFilter::Error,
        -1 => log::LevelFilter::Warn,
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    Logger::install(level);
    match command.as_str() {
        "keygen" => keygen(p),
        "publish" => publish(p),
        "inspect" => inspect(p),
        "root" => root::root(p),
        "verify" => verify(p),
        "serve" => serve(p),
        "fetch" => fetch(p),
        "status" => status(p),
        "demo" => demo::run(p),
        other => Err(usage(format!("unknown command {other:?} (see flotilla --help)"))),
    }
}

/// Prints `help` and exits when the next argument is -h/--help; otherwise hands it back.
fn help_or(arg: lexopt::Arg<'_>, help: &str) -> Result<(), Failure> {
    match arg {
        Short('h') | Long("help") => {
            print!("{help}");
            std::process::exit(0)
        }
        a => Err(a.unexpected().into()),
    }
}

fn required<T>(v: Option<T>, what: &str) -> Result<T, Failure> {
    v.ok_or_else(|| usage(format!("missing {what} (see --help)")))
}

const KEYGEN_HELP: &str = "\
Usage: flotilla keygen --secret FILE
       flotilla keygen --fleet-secret FILE

--secret: makes a new ed25519 operator key. The secret key goes to FILE (mode 0600, never
overwritten); the public key, 64 hex digits, is printed on stdout: give it to devices with
--trust.

--fleet-secret: writes 32 random bytes to FILE (mode 0600, never overwritten): the fleet
secret every device is given with --fleet-secret, which encrypts and authenticates every
frame between members.
";

fn keygen(mut p: lexopt::Parser) -> Result<(), Failure> {
    let (mut secret, mut fleet) = (None, None);
    while let Some(arg) = p.next()? {
        match arg {
            Long("secret") => secret = Some(PathBuf::from(p.value()?)),
            Long("fleet-secret") => fleet = Some(PathBuf::from(p.value()?)),
            a => help_or(a, KEYGEN_HELP)?,
        }
    }
    if let Some(path) = fleet {
        if secret.is_some() {
            return Err(usage("give --secret or --fleet-secret, not both"));
        }
        return flotilla::store::fleet_secret::create(&path).map_err(|e| match e {
            flotilla::store::fleet_secret::SecretError::Exists(_) => usage(e.to_string()),
            _ => runtime(e.to_string()),
        });
    }
    let secret = required(secret, "--secret FILE or --fleet-secret FILE")?;
    let key = SecretKey::generate()?;
    key.write_file(&secret)?;
    println!("{}", key.public().to_hex());
    Ok(())
}

const PUBLISH_HELP: &str = "\
Usage: flotilla publish FILE --secret KEYFILE... [--name NAME] [--release N] [--chunk-size BYTES]
                        [--expires TIME] [--target NAME]... [--rollout-hours H [--rollout-start TIME]]
                        [--out MANIFEST]

Hashes FILE chunk by chunk and signs the result with each KEYFILE. Writes MANIFEST (default
FILE.flotilla) and prints the swarm id, the release's name on the wire.

  --secret KEYFILE     a signing key (repeatable, up to 8: devices may require a threshold)
  --name NAME          release name, [A-Za-z0-9._-]{1,64} (default: FILE's base name)
  --release N          release number, higher is newer (default 1)
  --chunk-size BYTES   a power of two from 16K to 4M, suffixes K and M allowed (default 256K)
  --expires TIME       RFC 3339 UTC, e.g. 2027-06-30T00:00:00Z: devices refuse the release
                       after it, so nobody can hold them on it unnoticed (default: never)
  --target NAME        hardware the release is for (repeatable, up to 8; e.g. rpi4-arm64):
                       a device given other --target names, or none, refuses it (default:
                       no targets, for every device)
  --rollout-hours H    a staged rollout over H hours (1..=8784): every device fetches and
                       seeds the release as soon as it learns of it, but runs its install
                       hook at start + f x H, f in [0, 1) fixed by its device id and the
                       release, so a steady share of the fleet installs each hour. To halt a
                       bad rollout, publish the fix (or the old image) under a higher number
  --rollout-start TIME RFC 3339 UTC start of the window (default: now)
  --out MANIFEST       where to write the manifest
";

/// Seconds since the Unix epoch by the system clock.
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn publish(mut p: lexopt::Parser) -> Result<(), Failure> {
    let (mut file, mut secrets, mut name, mut out) = (None, Vec::new(), None, None);
    let mut draft = Manifest { release: 1, chunk_size: DEFAULT_CHUNK_SIZE, ..Manifest::default() };
    let (mut rollout_hours, mut rollout_start) = (None, None);
    while let Some(arg) = p.next()? {
        match arg {
            Value(v) if file.is_none() => file = Some(PathBuf::from(v)),
            Long("secret") => secrets.push(SecretKey::read_file(&PathBuf::from(p.value()?))?),
            Long("name") => name = Some(p.value()?.string()?),
            Long("release") => draft.release = p.value()?.parse()?,
            Long("chunk-size") => draft.chunk_size = parse_size(&p.value()?.string()?)?,
            Long("expires") => {
                let t = p.value()?.string()?;
                let at = parse_rfc3339(&t)
                    .ok_or_else(|| usage(format!("{t:?} is not an RFC 3339 UTC time like 2027-06-30T00:00:00Z")))?;
                // Every device would refuse it at once; a typo in the year is the likely cause.
                if at <= unix_now() {
                    return Err(usage(format!("--expires {t} is already past: devices would refuse the release")));
                }
                draft.expires = Some(at);
            }
            Long("target") => draft.targets.push(p.value()?.string()?),
            Long("rollout-hours") => {
                let hours: u32 = p.value()?.parse()?;
                if !(1..=manifest::MAX_ROLLOUT_HOURS).contains(&hours) {
                    let max = manifest::MAX_ROLLOUT_HOURS;
                    return Err(usage(format!("--rollout-hours {hours}: the window must be 1..={max} hours")));
                }
                rollout_hours = Some(hours);
            }
            Long("rollout-start") => {
                let t = p.value()?.string()?;
                let at = parse_rfc3339(&t)
                    .ok_or_else(|| usage(format!("{t:?} is not an RFC 3339 UTC time like 2027-06-30T00:00:00Z")))?;
                rollout_start = Some(at);
            }
            Long("out") => out = Some(PathBuf::from(p.value()?)),
            a => help_or(a, PUBLISH_HELP)?,
        }
    }
    draft.rollout = match (rollout_hours, rollout_start) {
        (Some(hours), start) => Some(Rollout { start: start.unwrap_or_else(unix_now), hours }),
        (None, Some(_)) => return Err(usage("--rollout-start needs --rollout-hours")),
        (None, None) => None,
    };
    let file = required(file, "FILE")?;
    if secrets.is_empty() {
        return Err(usage("missing --secret KEYFILE (see --help)"));
    }
    draft.name = match name {
        Some(n) => n,
        None => file.file_name().and_then(|n| n.to_str()).map(str::to_owned).unwrap_or_default(),
    };
    let out = out.unwrap_or_else(|| with_suffix(&file, ".flotilla"));
    let secrets: Vec<&SecretKey> = secrets.iter().collect();
    let m = SignedManifest::publish_draft(&file, draft, &secrets)?;
    replace_file(&out, &m.bytes, flotilla::store::safe_fs::DATA_MODE)
        .map_err(|e| runtime(format!("cannot write {}: {e}", out.display())))?;
    println!("{}", manifest::to_hex(&m.swarm_id));
    Ok(())
}

/// A byte count with an optional K or M suffix (binary: 1K = 1024).
fn parse_bytes(s: &str) -> Option<u64> {
    let (digits, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1024),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

fn parse_size(s: &str) -> Result<u32, Failure> {
    parse_bytes(s)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| usage(format!("chunk size {s:?} is not a number of bytes")))
}

const INSPECT_HELP: &str = "\
Usage: flotilla inspect MANIFEST|ROOT

Checks the manifest's (or trust root's) own signatures and prints what it describes; a root is
told from a manifest by its content, whatever the file is named. This does not say whether
you trust the signer: compare the signer with your key, or use verify --trust.
";

fn inspect(mut p: lexopt::Parser) -> Result<(), Failure> {
    let mut path = None;
    while let Some(arg) = p.next()? {
        match arg {
            Value(v) if path.is_none() => path = Some(PathBuf::from(v)),
            a => help_or(a, INSPECT_HELP)?,
        }
    }
    let path = required(path, "MANIFEST")?;
    if flotilla::store::root_file::is_root_file(&path) {
        root::print_root(&flotilla::store::root_file::read_root(&path).map_err(usage)?);
        return Ok(());
    }
    let m = read_manifest(&path)?;
    let mf = &m.manifest;
    println!("name:        {}", mf.name);
    println!("release:     {}", mf.release);
    println!("size:        {} bytes", mf.file_size);
    println!("chunk size:  {} bytes", mf.chunk_size);
    println!("chunks:      {}", mf.chunk_count());
    println!("file sha256: {}", manifest::to_hex(&mf.file_hash));
    println!("swarm id:    {}", manifest::to_hex(&m.swarm_id));
    // What a tracker knows the release by (BEP 15's info_hash), for a whitelisting tracker.
    println!("info hash:   {}", &manifest::to_hex(&m.swarm_id)[..40]);
    match mf.expires {
        Some(at) => println!("expires:     {}", flotilla::core::trust::format_rfc3339(at)),
        None => println!("expires:     never"),
    }
    if let Some(r) = mf.rollout {
        let end = flotilla::core::trust::format_rfc3339(r.start + u64::from(r.hours) * 3600);
        println!("rollout:     {} over {} h (to {end})", flotilla::core::trust::format_rfc3339(r.start), r.hours);
    }
    match mf.targets.is_empty() {
        true => println!("targets:     any"),
        false => println!("targets:     {}", mf.targets.join(" ")),
    }
    for signer in &m.signers {
        println!("signer:      {}", signer.to_hex());
    }
    Ok(())
}

/// Reads a manifest named on the command line: any failure is bad input (exit 2).
fn read_manifest(path: &Path) -> Result<SignedManifest, Failure> {
    SignedManifest::read_file(path).map_err(usage)
}

const VERIFY_HELP: &str = "\
Usage: flotilla verify MANIFEST FILE --trust PUBKEY... [--threshold N] [--target NAME]

Exits 0 only if MANIFEST is signed by enough trusted keys, has not expired, is meant for this
device, and FILE is exactly the release it describes (every chunk and the whole-file hash).
Exits 2 otherwise, with one line saying why.
{TRUST_OPTIONS_HELP}";

fn verify(mut p: lexopt::Parser) -> Result<(), Failure> {
    let (mut mpath, mut file, mut trust) = (None, None, TrustOptions::default());
    while let Some(arg) = p.next()? {
        match arg {
            Value(v) if mpath.is_none() => mpath = Some(PathBuf::from(v)),
            Value(v) if file.is_none() => file = Some(PathBuf::from(v)),
            Long(name) if name != "help" => {
                let name = name.to_owned();
                if !trust.parse(&name, &mut p)? {
                    return Err(usage(format!("invalid option '--{name}' (see --help)")));
                }
            }
            a => help_or(a, &VERIFY_HELP.replace("{TRUST_OPTIONS_HELP}", TRUST_OPTIONS_HELP))?,
        }
    }
    let (m, _) = accepted_manifest(&required(mpath, "MANIFEST")?, &trust.acceptor(None)?.0)?;
    let file = required(file, "FILE")?;
    m.verify_file(&file)?;
    println!(
        "{} is release {} #{} ({} bytes)",
        file.display(),
        m.manifest.name,
        m.manifest.release,
        m.manifest.file_size
    );
    Ok(())
}

/// Reads a manifest named on the command line and checks this device may act on it now.
/// Also what could not be checked (an unset clock defers expiry), for the agent's status.
fn accepted_manifest(path: &Path, acceptor: &Acceptor) -> Result<(SignedManifest, Deferred), Failure> {
    let m = read_manifest(path)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let deferred = acceptor.check(&m, now)?;
    if deferred == Deferred::Expiry {
        log::warn!("the clock is unset (before {}): the manifest's expiry is not checked", format_rfc3339(CLOCK_FLOOR));
    }
    Ok((m, deferred))
}

/// `--trust`, `--threshold`, `--root` and `--target`: what `verify`, `fetch` and `serve` accept.
#[derive(Default)]
struct TrustOptions {
    keys: Vec<PublicKey>,
    threshold: Option<usize>,
    roots: Vec<PathBuf>,
    targets: Vec<String>,
}

const TRUST_OPTIONS_HELP: &str = "
  --trust PUBKEY            an operator key to accept manifests from (repeatable; 64 hex or a
                            file holding them). Required
  --threshold N             how many of the --trust keys must have signed (default 1)
  --root FILE               trust what a trust root says instead (`flotilla root`): its keys,
                            threshold and fast-forward bound. The first root a device holds is
                            the lowest-numbered one given; later roots replace it only when
                            signed by its keys (a *.flotilla-root file in serve's data directory
                            is taken up too). The newest is kept in the state directory
  --target NAME             this device's hardware (repeatable): a release that names targets is
                            accepted only if it names one of these (exit 2 otherwise), and refused
                            by a device that names none. `--target any`: a seed or relay that
                            installs nothing takes releases for every target
";

impl TrustOptions {
    /// Takes `--NAME` if it is one of these options; false if it is not.
    fn parse(&mut self, name: &str, p: &mut lexopt::Parser) -> Result<bool, Failure> {
        match name {
            "trust" => self.keys.push(PublicKey::parse_arg(&p.value()?.string()?)?),
            "threshold" => self.threshold = Some(p.value()?.parse()?),
            "root" => self.roots.push(PathBuf::from(p.value()?)),
            "target" => {
                let t = p.value()?.string()?;
                if !valid_target(&t) {
                    return Err(usage(format!("target {t:?} is invalid: use 1-64 of A-Z a-z 0-9 . _ -")));
                }
                self.targets.push(t);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The acceptor, and the root keeper when a root is in use (kept in `state_dir` if given).
    fn acceptor(&self, state_dir: Option<&Path>) -> Result<(Acceptor, Option<RootKeeper>), Failure> {
        let kept_root = state_dir.is_some_and(|d| d.join(".flotilla-root").exists());
        if !self.roots.is_empty() || kept_root {
            if !self.keys.is_empty() && self.roots.is_empty() {
                return Err(usage("this device keeps a trust root (.flotilla-root in its state directory): --trust cannot replace it; give --root"));
            }
            if !self.keys.is_empty() {
                return Err(usage("give --trust keys or --root files, not both"));
            }
            if self.threshold.is_some() {
                return Err(usage("--threshold applies to --trust keys only: a trust root carries its own threshold (set it with flotilla root --threshold)"));
            }
            let keeper = RootKeeper::open(state_dir, &self.roots).map_err(usage)?;
            let policy = keeper.current().root.policy.clone();
            return Ok((Acceptor { policy, targets: self.targets.clone() }, Some(keeper)));
        }
        if self.keys.is_empty() {
            return Err(usage(
                "missing --trust PUBKEY (or --root FILE): a manifest is only accepted from keys you trust",
            ));
        }
        let policy = TrustPolicy::new(self.keys.clone(), self.threshold.unwrap_or(1)).map_err(usage)?;
        Ok((Acceptor { policy, targets: self.targets.clone() }, None))
    }
}

/// `udp://HOST:PORT` as the tracker's IPv4 address. HOST is resolved here, once, before the
/// event loop starts (getaddrinfo may block for the resolver's timeout, which only start waits
/// for); BEP 15 announces over IPv4 answer with IPv4 peers, so an IPv4 address is required.
fn parse_tracker(url: &str) -> Result<SocketAddr, Failure> {
    use std::net::ToSocketAddrs;
    let bad = |why: &str| usage(format!("--tracker {url:?}: {why}; use udp://HOST:PORT"));
    let Some(hostport) = url.strip_prefix("udp://") else { return Err(bad("only udp:// trackers are supported")) };
    let hostport = hostport.trim_end_matches('/').trim_end_matches("/announce");
    if hostport.rsplit_once(':').is_none_or(|(_, port)| port.parse::<u16>().is_err()) {
        return Err(bad("no port"));
    }
    let addrs = hostport.to_socket_addrs().map_err(|e| bad(&format!("cannot resolve it ({e})")))?;
    let mut addrs: Vec<SocketAddr> = addrs.collect();
    addrs.retain(SocketAddr::is_ipv4);
    addrs.first().copied().ok_or_else(|| bad("it has no IPv4 address"))
}

/// Offers `serve` the roots dropped in its data directory; on a new one, the acceptor and the
/// agent take it up (its keys, bound and floors; releases it no longer trusts are dropped).
fn take_new_roots(
    agent: &mut Agent,
    keeper: &mut RootKeeper,
    acceptor: &mut Acceptor,
    dir: &Path,
) -> Result<(), Failure> {
    if keeper.offer_dropped(dir) {
        let fresh = keeper.take_fresh();
        let root = &keeper.current().root;
        acceptor.policy = root.policy.clone();
        agent.apply_root(root, fresh)?;
        keeper.commit().map_err(runtime)?;
    }
    Ok(())
}

/// Options shared by `serve` and `fetch`.
struct NetOptions {
    config: AgentConfig,
    trust: TrustOptions,
    /// Where the no-rollback history lives (`--state-dir`); each command has its default.
    state_dir: Option<PathBuf>,
    /// `--origin` URLs: the release file for `fetch`, a base URL for `serve`.
    origins: Vec<flotilla::core::http::OriginUrl>,
}

impl NetOptions {
    fn new() -> Self {
        let listen = Some(SocketAddr::from(([0, 0, 0, 0], 7070)));
        NetOptions {
            config: AgentConfig { listen, ..AgentConfig::default() },
            trust: TrustOptions::default(),
            state_dir: None,
            origins: Vec::new(),
        }
    }

    /// Takes one option common to the agent commands; returns false if `arg` is not one.
    fn parse(&mut self, name: &str, p: &mut lexopt::Parser) -> Result<(), Failure> {
        if self.trust.parse(name, p)? {
            return Ok(());
        }
        let c = &mut self.config;
        match name {
            "listen" => c.listen = Some(parse_addr(p)?),
            "no-listen" => c.listen = None,
            "no-discovery" => c.discovery = None,
            "discovery-group" => {
                let s = p.value()?.string()?;
                let group: std::net::SocketAddrV4 = s
                    .parse()
                    .map_err(|_| usage(format!("{s:?} is not a multicast address like 239.255.70.70:7071")))?;
                if !group.ip().is_multicast() {
                    return Err(usage(format!("{s:?} is not a multicast address like 239.255.70.70:7071")));
                }
                c.discovery = Some(group);
            }
            "peer" => c.peers.push(parse_addr(p)?),
            "origin" => {
                let url = p.value()?.string()?;
                self.origins.push(flotilla::core::http::OriginUrl::parse(&url).map_err(usage)?);
            }
            "origin-delay" => c.origin_delay = Duration::from_secs(p.value()?.parse()?),
            "origin-rate" => c.origin_rate = parse_rate(&p.value()?.string()?)?,
            "origin-timeout" => c.origin_timeout = Duration::from_secs(p.value()?.parse::<u64>()?.max(1)),
            "tracker" => {
                let url = p.value()?.string()?;
                let addr = parse_tracker(&url)?;
                if !c.trackers.contains(&addr) {
                    c.trackers.push(addr);
                }
            }
            "max-peers" => c.max_peers = p.value()?.parse::<usize>()?.clamp(1, 4096),
            "upload-slots" => c.upload_slots = p.value()?.parse::<usize>()?.max(1),
            "max-upload-rate" => c.max_upload_rate = parse_rate(&p.value()?.string()?)?,
            "max-download-rate" => c.max_download_rate = parse_rate(&p.value()?.string()?)?,
            "fleet-secret" => {
                let path = PathBuf::from(p.value()?);
                let key = flotilla::store::fleet_secret::load(&path).map_err(|e| usage(e.to_string()))?;
                if !c.fleet_keys.push(key) {
                    let max = flotilla::core::auth::MAX_FLEET_KEYS;
                    return Err(usage(format!("at most {max} --fleet-secret files at once")));
                }
            }
            "status" => c.status = Some(PathBuf::from(p.value()?)),
            "status-mode" => {
                let m = p.value()?.string()?;
                c.status_mode = u32::from_str_radix(&m, 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| usage(format!("--status-mode {m:?} is not an octal mode like 660")))?;
            }
            "hook-timeout" => c.hook_timeout = Duration::from_secs(p.value()?.parse::<u64>()?.max(1)),
            "state-dir" => self.state_dir = Some(PathBuf::from(p.value()?)),
            "on-complete" => {
                let cmd = p.value()?.string()?;
                c.on_complete = cmd.split_whitespace().map(str::to_owned).collect();
                if c.on_complete.is_empty() {
                    return Err(usage("--on-complete needs a command"));
                }
            }
            other => return Err(usage(format!("invalid option '--{other}' (see --help)"))),
        }
        Ok(())
    }
}

const NET_OPTIONS_HELP: &str = "
  --listen ADDR             accept peers on ADDR (default 0.0.0.0:7070)
  --no-listen               do not accept peers; only dial out
  --peer ADDR               a peer to fetch from (repeatable); more are found on the LAN and
                            learnt from peers
  --origin URL              an HTTP/1.1 server or CDN as the source of last resort (repeatable;
                            the next is tried when one fails): for fetch, the release file's
                            URL; for serve, a base URL under which each release is NAME. Chunks
                            come by Range request, each verified like a peer's, so plain http://
                            is safe. HOST is resolved when a connection opens
  --origin-delay SECS       how long peers get before the origin is asked (default 10)
  --origin-rate RATE        cap on what the origin sends, e.g. 2M (bytes/s; default none)
  --origin-timeout SECS     a chunk from the origin must be whole within this plus its length
                            at 16 KiB/s, or the server counts as failed (default 30)
  --tracker udp://HOST:PORT a BitTorrent UDP tracker (BEP 15, e.g. opentracker) to meet peers
                            through (repeatable): each release is announced under the first
                            20 bytes of its swarm id (what a whitelisting tracker must list, in
                            hex: `flotilla inspect` prints it). HOST is resolved once, at start
  --no-discovery            do not announce or listen on the LAN multicast group
  --discovery-group ADDR    the LAN discovery group (default 239.255.70.70:7071)
  --max-peers N             connection slots (default 32)
  --upload-slots N          peers uploaded to at once (default 2)
  --max-upload-rate RATE    bytes per second per release, suffixes K and M allowed (default: none)
  --max-download-rate RATE  the same for downloads, counted in whole chunks requested
  --fleet-secret FILE       talk only to members holding the same secret, every frame encrypted
                            and authenticated (FILE: >= 32 bytes, mode 0600; make one with
                            keygen --fleet-secret). Repeat to roll to a new secret: the first
                            is used to dial, any is accepted
  --state-dir DIR           keep the no-rollback history (.flotilla-history: the highest release
                            accepted per name) in DIR; serve: default the --data DIR, fetch:
                            default the directory of --out. A release older than the one
                            recorded is refused (exit 2); a damaged history is an error
  --status PATH             answer `flotilla status PATH` on a Unix socket at PATH (a socket
                            left there by an agent of ours that is gone is replaced, any other file
                            is not: start fails, saying what is there)
  --status-mode MODE        who may ask: the socket's permissions in octal (default 600: only
                            this user; 660 lets its group ask too)
  --on-complete CMD         the install hook: when a release is complete and verified, run CMD
                            with the path of the file as one more argument and a clean
                            environment: PATH, FLOTILLA_NAME, FLOTILLA_RELEASE, FLOTILLA_FILE,
                            FLOTILLA_MANIFEST, FLOTILLA_SWARM. CMD is split on whitespace into a
                            program and its arguments; no shell is involved (for shell syntax,
                            use a script: --on-complete '/bin/sh /etc/flotilla/install.sh').
                            It runs at least once per release this agent fetched: the hook owed
                            is recorded in the state directory before the fetch starts and
                            cleared only when the hook exits 0, so a crash, a power cut or a
                            failure means it runs again (serve: after 30 s, doubling to 1 h;
                            fetch: exits 1, and the next run retries). Never for a release that
                            was already whole when first seen (an operator's seed)
  --hook-timeout SECS       kill the install hook (and what it started) after SECS and count it
                            as failed (default 600)
";

fn parse_addr(p: &mut lexopt::Parser) -> Result<SocketAddr, Failure> {
    let s = p.value()?.string()?;
    s.parse().map_err(|_| usage(format!("{s:?} is not an address like 127.0.0.1:7070")))
}

fn parse_rate(s: &str) -> Result<u64, Failure> {
    parse_bytes(s).ok_or_else(|| usage(format!("rate {s:?} is not a number of bytes per second")))
}

fn serve_help() -> String {
    format!(
        "\
Usage: flotilla serve --data DIR --trust PUBKEY [options]

Serves every release in DIR: each manifest *.flotilla signed by a --trust key, its file at DIR/NAME
where NAME is the name the manifest signs. A manifest whose file is missing or partial is fetched
first, from the --peer addresses. --trust is required: without it any key could sign a release
this agent fetches and hands to the install hook. DIR is looked at again
every --rescan seconds: a manifest dropped in starts serving or fetching its release. Copy the
file (if any) before its manifest; a manifest that cannot be used is logged once, and looked at
again only when it or its file changes.

  --data DIR                the releases
  --rescan SECS             look for new manifests this often, 0 for never (default 10)
  --max-releases N          releases held at most; more are refused with a warning (default 16)
  --follow NAME             keep this device on the newest trusted release of NAME (repeatable):
                            learn of new ones from peers (LAN announcements) and, with --origin,
                            by polling BASE/NAME.flotilla; each is checked like a manifest
                            dropped into DIR, then written there and fetched; once it is whole it
                            replaces the old file and the install hook runs (at the device's
                            moment, if the release has a staged rollout)
  --keep N                  after a release is replaced by a newer one, go on serving the N
                            newest superseded releases of each name (0-8, default 1) to peers
                            still on them, from hard links in DIR/.flotilla-kept (no copy);
                            never installed again, and taken on again after a restart
  --poll SECS               how often the origin is polled for a followed name's manifest; the
                            devices of a LAN take turns, so the LAN polls N times as often;
                            an unchanged manifest costs one request and a 304 (default 300,
                            at most a week)
  --metrics FILE            write Prometheus metrics to FILE every 5 s, atomically (for
                            node_exporter's textfile collector): releases held and installed per
                            name, bytes by source (lan, wan, origin), peers, bans, hook results
{TRUST_OPTIONS_HELP}{NET_OPTIONS_HELP}"
    )
}

fn serve(mut p: lexopt::Parser) -> Result<(), Failure> {
    let mut net = NetOptions::new();
    net.config.keep = 1;
    let mut dir = None;
    let mut rescan = Duration::from_secs(10);
    while let Some(arg) = p.next()? {
        match arg {
            Long("data") => dir = Some(PathBuf::from(p.value()?)),
            Long("rescan") => rescan = Duration::from_secs(p.value()?.parse()?),
            Long("follow") => {
                let name = p.value()?.string()?;
                if !manifest::valid_name(&name) {
                    return Err(usage(format!("--follow {name:?}: a release name is 1-64 of A-Z a-z 0-9 . _ -")));
                }
                net.config.follow.push(name);
            }
            Long("metrics") => net.config.metrics = Some(PathBuf::from(p.value()?)),
            Long("keep") => net.config.keep = p.value()?.parse::<usize>()?.min(8),
            Long("poll") => {
                net.config.poll_interval = Duration::from_secs(p.value()?.parse::<u64>()?.clamp(1, MAX_POLL))
            }
            Long("max-releases") => net.config.max_releases = p.value()?.parse::<usize>()?.clamp(1, 4096),
            Long(name) if name != "help" => {
                let name = name.to_owned();
                net.parse(&name, &mut p)?
            }
            a => help_or(a, &serve_help())?,
        }
    }
    let dir = required(dir, "--data DIR")?;
    let state_dir = net.state_dir.clone().unwrap_or_else(|| dir.clone());
    let (mut acceptor, mut roots) = net.trust.acceptor(Some(&state_dir))?;
    // A daemon sets a release with a full or failing disk aside and keeps serving the others.
    net.config.pause_on_disk_error = true;
    if !net.origins.is_empty() {
        net.config.origin = Some(OriginSpec::Base(std::mem::take(&mut net.origins)));
    }
    let mut agent = Agent::new(net.config)?;
    agent.keep_state(&state_dir)?;
    agent.identify(&state_dir)?;
    if let Some(keeper) = &mut roots {
        let fresh = keeper.take_fresh();
        agent.apply_root(&keeper.current().root, fresh)?;
        keeper.commit().map_err(runtime)?;
        take_new_roots(&mut agent, keeper, &mut acceptor, &dir)?;
    }
    agent.rescan(&dir, &acceptor).map_err(|e| usage(format!("cannot read {}: {e}", dir.display())))?;
    agent.load_kept(&dir, &acceptor);
    if agent.releases().is_empty() {
        log::warn!("no releases in {} yet: nothing to serve", dir.display());
    }
    if let Some(addr) = agent.listen()? {
        log::info!("listening on {addr}");
    }
    if rescan.is_zero() && agent.follows().is_empty() {
        agent.run_until(|_, _| false)?;
        return Ok(());
    }
    // Without a rescan period the directory is read again only when a manifest was learnt.
    let period = if rescan.is_zero() { Duration::from_secs(u64::MAX / 4) } else { rescan };
    loop {
        let due = Instant::now() + period;
        agent.run_until(|a, now| now >= due || a.has_learnt())?;
        let adopted = agent.has_learnt() && agent.adopt_learnt(&dir, &acceptor) > 0;
        if !adopted && Instant::now() < due {
            continue;
        }
        if let Some(keeper) = &mut roots {
            take_new_roots(&mut agent, keeper, &mut acceptor, &dir)?;
        }
        if let Err(e) = agent.rescan(&dir, &acceptor) {
            log::warn!("cannot read {}: {e}", dir.display());
        }
    }
}

fn fetch_help() -> String {
    format!(
        "\
Usage: flotilla fetch MANIFEST --trust PUBKEY --out FILE [options]

Fetches the release MANIFEST describes into FILE, verifying every chunk, and serves what it has
meanwhile. Partial data is kept in FILE.part and FILE.state: run the same command again after
an interruption and it resumes. FILE appears only when whole and verified.

  --out FILE                where the release goes
  --seed-for SECS           keep serving this long after completing (default 0); an install
                            hook (--on-complete) runs meanwhile, and fetch waits for it to finish
                            and exits 1 if it failed
{TRUST_OPTIONS_HELP}{NET_OPTIONS_HELP}"
    )
}

fn fetch(mut p: lexopt::Parser) -> Result<(), Failure> {
    let mut net = NetOptions::new();
    let (mut mpath, mut out) = (None, None);
    let mut seed_for = Duration::ZERO;
    while let Some(arg) = p.next()? {
        match arg {
            Value(v) if mpath.is_none() => mpath = Some(PathBuf::from(v)),
            Long("out") => out = Some(PathBuf::from(p.value()?)),
            Long("seed-for") => seed_for = Duration::from_secs(p.value()?.parse()?),
            Long(name) if name != "help" => {
                let name = name.to_owned();
                net.parse(&name, &mut p)?
            }
            a => help_or(a, &fetch_help())?,
        }
    }
    let mpath = required(mpath, "MANIFEST")?;
    let out = required(out, "--out FILE")?;
    let state_dir = net.state_dir.clone().unwrap_or_else(|| flotilla::store::atomic::parent_dir(&out).to_owned());
    let (acceptor, mut roots) = net.trust.acceptor(Some(&state_dir))?;
    let (m, deferred) = accepted_manifest(&mpath, &acceptor)?;
    if !net.origins.is_empty() {
        net.config.origin = Some(OriginSpec::File(std::mem::take(&mut net.origins)));
    }
    let mut agent = Agent::new(net.config)?;
    agent.keep_state(&state_dir)?;
    if let Some(keeper) = &mut roots {
        let fresh = keeper.take_fresh();
        agent.apply_root(&keeper.current().root, fresh)?;
        keeper.commit().map_err(runtime)?;
    }
    let r = agent.add_release(&m, &out)?;
    agent.set_manifest_path(r, &mpath);
    agent.note_deferred(r, deferred);
    let mut progress = Progress::new(m.manifest.file_size);
    // The swarm keeps its own copy of the chunk hashes; the manifest's would be a second one.
    drop(m);
    agent.listen()?;
    agent.run_until(|agent, now| {
        let r = &agent.releases()[0];
        progress.show(r, now);
        r.completed_at.is_some_and(|t| now >= t + seed_for)
    })?;
    progress.finish(&agent.releases()[0]);
    if !agent.finish_hooks() {
        return Err(runtime("the install hook failed (see the log above)"));
    }
    Ok(())
}

const STATUS_HELP: &str = "\
Usage: flotilla status [--status] PATH [--json]

Asks the agent (serve or fetch) started with --status PATH how it is doing and prints its
report: each release with its path, swarm id, progress, peers, rates and bytes sent and
received. Exits 1 if no agent answers at PATH.

  --json    the same as one JSON object, for scripts: device_id, uptime_s, bans, hooks_ok,
            hooks_failed, and per release name, release, swarm, path, have, total, complete,
            installed, peers, rate_up, rate_down, uploaded, downloaded, from_wan, from_origin,
            to_wan, expires, hook
";

fn status(mut p: lexopt::Parser) -> Result<(), Failure> {
    let (mut path, mut as_json) = (None, false);
    while let Some(arg) = p.next()? {
        match arg {
            Value(v) if path.is_none() => path = Some(PathBuf::from(v)),
            Long("json") => as_json = true,
            Long("status") if path.is_none() => path = Some(PathBuf::from(p.value()?)),
            a => help_or(a, STATUS_HELP)?,
        }
    }
    let path = required(path, "PATH")?;
    let nobody = |e: std::io::Error| runtime(format!("no agent answers at {}: {e}", path.display()));
    let stream = std::os::unix::net::UnixStream::connect(&path).map_err(nobody)?;
    // The agent writes its report as soon as it accepts; a stuck agent must not hang us.
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(nobody)?;
    let mut report = String::new();
    // A report is a few hundred bytes a release; the cap keeps a stranger's socket from filling RAM.
    stream.take(1 << 20).read_to_string(&mut report).map_err(nobody)?;
    if report.is_empty() {
        return Err(runtime(format!("the agent at {} sent no report", path.display())));
    }
    let (text, json) = report.split_once('\0').unwrap_or((&report, ""));
    let report = match (as_json, json.is_empty()) {
        (false, _) => text.to_owned(),
        (true, false) => json.to_owned(),
        (true, true) => {
            return Err(runtime(format!("the agent at {} sent no JSON (an older flotilla?)", path.display())))
        }
    };
    // Whatever answers at PATH might not be an agent: nothing it sends may drive the terminal.
    let printable: String =
        report.chars().map(|c| if c.is_control() && c != '\n' && c != '\t' { '?' } else { c }).collect();
    print!("{printable}");
    Ok(())
}

/// The one-line progress display of `fetch`: redrawn on a terminal, logged now and then otherwise.
struct Progress {
    total: u64,
    start: Instant,
    last_shown: Option<Instant>,
    last_bytes: u64,
    rate: f64,
    tty: bool,
}

impl Progress {
    fn new(total: u64) -> Self {
        let tty = std::io::stderr().is_terminal();
        Progress { total, start: Instant::now(), last_shown: None, last_bytes: 0, rate: 0.0, tty }
    }

    fn show(&mut self, held: &Held, now: Instant) {
        let r = &held.release;
        let every = if self.tty { Duration::from_millis(250) } else { Duration::from_secs(10) };
        if held.completed_at.is_some() || self.last_shown.is_some_and(|t| now < t + every) {
            return;
        }
        let done = r.have_bytes();
        if let Some(t) = self.last_shown {
            let inst = (done.saturating_sub(self.last_bytes)) as f64 / (now - t).as_secs_f64();
            self.rate = if self.rate == 0.0 { inst } else { 0.7 * self.rate + 0.3 * inst };
        }
        self.last_shown = Some(now);
        self.last_bytes = done;
        let eta =
            if self.rate > 0.0 { format!("{}s", fixed((self.total - done) as f64 / self.rate, 0)) } else { "?".into() };
        let line = format!(
            "{}: {}/{} MiB {:>3}%  {} MiB/s  {} peers  ETA {eta}",
            r.name(),
            fixed(mib(done), 1),
            fixed(mib(self.total), 1),
            fixed(100.0 * done as f64 / self.total as f64, 0),
            fixed(self.rate / 1048576.0, 1),
            r.swarm().active_peers()
        );
        if self.tty {
            eprint!("\r\x1b[K{line}");
        } else {
            log::info!("{line}");
        }
    }

    fn finish(&self, held: &Held) {
        let r = &held.release;
        if self.tty {
            eprint!("\r\x1b[K");
        }
        let secs = self.start.elapsed().as_secs_f64();
        log::info!(
            "{}: {} MiB complete at {} ({} s, {} MiB received, {} MiB sent, {} MiB discarded)",
            r.name(),
            fixed(mib(self.total), 1),
            r.store().path().display(),
            fixed(secs, 1),
            fixed(mib(r.stats().downloaded), 1),
            fixed(mib(r.stats().uploaded), 1),
            fixed(mib(r.stats().wasted), 1)
        );
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

/// Log lines on stderr, one per record: `flotilla: LEVEL message`.
struct Logger(log::LevelFilter);

impl Logger {
    fn install(level: log::LevelFilter) {
        let logger: &'static Logger = Box::leak(Box::new(Logger(level)));
        if log::set_logger(logger).is_ok() {
            log::set_max_level(level);
        }
    }
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.0
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("flotilla: {} {}", r.level().as_str().to_lowercase(), r.args());
        }
    }

    fn flush(&self) {}
}
