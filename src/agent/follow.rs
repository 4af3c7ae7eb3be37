//! Following release lines (`serve --follow NAME`): learning that a new release exists.
//!
//! From the origin: `BASE/NAME.flotilla` is polled every `--poll` seconds by a conditional GET,
//! in the loop, one short connection per poll. Each device polls at its turn among the LAN
//! neighbours it hears announcing (`discovery::poll_phase`, on the Unix clock): a site of N
//! devices polls every POLL/N seconds as a whole, and the first to learn announces at once, so
//! the site learns of a release N times sooner than from one device's poll at the same load on
//! the origin; a fleet started together does not poll together. From peers: see
//! `agent::gossip`. Either way a manifest learnt is only decoded here and queued
//! ([`Agent::take_learnt`]); whoever runs the agent checks it against the trust rules before
//! anything is written or fetched, exactly as a manifest dropped into the data directory is
//! checked.

use super::origin::{connect_http, resolve, would_block};
use super::Agent;
use crate::core::discovery;
use crate::core::http::{self, OriginUrl, PollAnswer, Validators};
use crate::core::manifest::{SignedManifest, MAX_MANIFEST_BYTES};
use mio::net::TcpStream;
use mio::Token;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Manifests learnt and not yet taken; more are dropped (and learnt again at the next poll).
pub(super) const MAX_LEARNT: usize = 8;
/// A poll must be answered whole within this.
const POLL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where one step of a poll left it.
enum Step {
    /// Still under way.
    Pending,
    /// Answered `304 Not Modified`.
    Unchanged,
    /// A manifest of the name arrived (not yet checked against the trust rules).
    Learnt(Box<SignedManifest>),
}

#[derive(Debug)]
enum Phase {
    /// The next poll is due at `at`.
    Idle { at: Instant },
    /// The request is being written (or the connection still opening).
    Sending { sent: usize },
    /// Waiting for the response head.
    Head,
    /// Reading the manifest: the whole body is `len` bytes.
    Body { len: usize, validators: Validators },
}

/// The poller of one followed name at one origin base URL.
pub(super) struct ManifestPoll {
    name: String,
    /// `BASE/NAME.flotilla`, and where redirects led for this poll.
    start: OriginUrl,
    url: OriginUrl,
    redirects: u8,
    token: Token,
    stream: Option<TcpStream>,
    phase: Phase,
    deadline: Instant,
    /// The request, then the head and body as they arrive.
    buf: Vec<u8>,
    /// The validators of the last manifest the origin sent.
    since: Validators,
    interval: Duration,
    /// Where its turn falls within the site's (`discovery::poll_phase`), drawn once.
    jitter: f64,
    /// How many polls were answered `304 Not Modified` and `200`: for the status and tests.
    pub(super) not_modified: u64,
    pub(super) fetched: u64,
}

impl ManifestPoll {
    pub(super) fn new(
        name: &str,
        base: &OriginUrl,
        token: Token,
        interval: Duration,
        jitter: f64,
        now: Instant,
    ) -> Self {
        let start = base.join(&format!("{name}.flotilla"));
        ManifestPoll {
            name: name.to_owned(),
            url: start.clone(),
            start,
            redirects: 0,
            token,
            stream: None,
            phase: Phase::Idle { at: now },
            deadline: now,
            buf: Vec::new(),
            since: Validators::default(),
            interval,
            jitter,
            not_modified: 0,
            fetched: 0,
        }
    }

    /// When the loop should next look at this poll without a socket event.
    pub(super) fn wakeup(&self) -> Instant {
        match self.phase {
            Phase::Idle { at } => at,
            _ => self.deadline,
        }
    }

    /// Ends this poll (answered, failed or refused) and schedules the next in `wait`.
    fn finish(&mut self, now: Instant, wait: Duration, poll: &mio::Poll) {
        if let Some(mut s) = self.stream.take() {
            let _ = poll.registry().deregister(&mut s);
        }
        self.buf = Vec::new();
        self.url = self.start.clone();
        self.redirects = 0;
        self.phase = Phase::Idle { at: now + wait };
    }

    /// How long until the next poll: about an interval, at this device's turn in its site
    /// (`turn`, see `discovery::poll_phase`), on the Unix clock the site's devices share.
    fn next_wait(&self, turn: Option<(u32, u32)>) -> Duration {
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let interval = self.interval.as_secs_f64();
        let phase = discovery::poll_phase(interval, turn, self.jitter);
        Duration::from_secs_f64(discovery::until_poll(unix, interval, phase, interval / 2.0))
    }
}

impl Agent {
    /// Drives every followed name's origin poll: starts those due, writes, reads, decodes.
    pub(super) fn drive_polls(&mut self, now: Instant) {
        for i in 0..self.polls.len() {
            let outcome = self.step_poll(i, now);
            let turn = self.poll_turn(now);
            let p = &mut self.polls[i];
            match outcome {
                Ok(Step::Pending) => continue,
                Ok(Step::Unchanged) => log::debug!("{}: unchanged at the origin", p.name),
                Ok(Step::Learnt(m)) => {
                    log::info!("{}: the origin has release {} ({})", p.name, m.manifest.release, p.start);
                    if self.learnt.len() < MAX_LEARNT {
                        self.learnt.push(*m);
                    }
                }
                Err(why) => {
                    log::warn!("{}: cannot poll {}: {why}; next try in {} s", p.name, p.url, p.interval.as_secs())
                }
            }
            let p = &mut self.polls[i];
            let wait = p.next_wait(turn);
            p.finish(now, wait, &self.poll);
        }
    }

    /// One step of poll `i`; an error ends the poll.
    fn step_poll(&mut self, i: usize, now: Instant) -> Result<Step, String> {
        let from = self.local;
        let p = &mut self.polls[i];
        if let Phase::Idle { at } = p.phase {
            if now < at {
                return Ok(Step::Pending);
            }
            start_request(p, from, &self.poll)?;
            p.deadline = now + POLL_TIMEOUT;
        }
        if now >= p.deadline {
            return Err(format!("no whole answer within {} s", POLL_TIMEOUT.as_secs()));
        }
        let Some(stream) = p.stream.as_mut() else { return Ok(Step::Pending) };
        loop {
            match &p.phase {
                Phase::Idle { .. } => return Ok(Step::Pending),
                Phase::Sending { sent } => match stream.write(&p.buf[*sent..]) {
                    Ok(n) if sent + n == p.buf.len() => {
                        p.buf.clear();
                        p.phase = Phase::Head;
                    }
                    Ok(n) => p.phase = Phase::Sending { sent: sent + n },
                    Err(e) if would_block(&e) => return Ok(Step::Pending),
                    Err(e) => return Err(format!("cannot connect or send the request: {e}")),
                },
                Phase::Head | Phase::Body { .. } => {
                    let mut piece = [0u8; 4096];
                    let n = match stream.read(&mut piece) {
                        Ok(n) => n,
                        Err(e) if would_block(&e) => return Ok(Step::Pending),
                        Err(e) => return Err(format!("cannot read the answer: {e}")),
                    };
                    if n == 0 && matches!(p.phase, Phase::Head) {
                        return Err("the server closed the connection before answering".into());
                    }
                    p.buf.extend_from_slice(&piece[..n]);
                    if let Phase::Head = p.phase {
                        let Some((answer, used)) = http::read_poll_head(&p.buf, MAX_MANIFEST_BYTES)? else { continue };
                        p.buf.drain(..used);
                        match answer {
                            PollAnswer::NotModified => {
                                p.not_modified += 1;
                                return Ok(Step::Unchanged);
                            }
                            PollAnswer::Body { len, validators } => p.phase = Phase::Body { len, validators },
                            PollAnswer::Redirect(location) => {
                                p.redirects += 1;
                                if p.redirects > http::MAX_REDIRECTS {
                                    return Err(format!("more than {} redirects", http::MAX_REDIRECTS));
                                }
                                p.url = p.url.follow(&location)?;
                                if let Some(mut s) = p.stream.take() {
                                    let _ = self.poll.registry().deregister(&mut s);
                                }
                                start_request(p, from, &self.poll)?;
                                return Ok(Step::Pending);
                            }
                            PollAnswer::Refused(why) => return Err(why),
                        }
                    }
                    let Phase::Body { len, validators } = &p.phase else { continue };
                    if p.buf.len() > *len {
                        return Err(format!("a body longer than its Content-Length of {len}"));
                    }
                    if p.buf.len() < *len {
                        if n == 0 {
                            return Err(format!("the server closed the connection {} bytes short", len - p.buf.len()));
                        }
                        continue;
                    }
                    p.since = validators.clone();
                    p.fetched += 1;
                    let m = SignedManifest::decode(&p.buf).map_err(|e| format!("not a manifest: {e}"))?;
                    if m.manifest.name != p.name {
                        return Err(format!("it is a manifest of {}, not of {}", m.manifest.name, p.name));
                    }
                    return Ok(Step::Learnt(Box::new(m)));
                }
            }
        }
    }
}

/// Opens a connection to the poll's URL (resolving its host, as for the origin) and puts the
/// conditional request in the buffer to be written.
fn start_request(p: &mut ManifestPoll, from: Option<SocketAddr>, poll: &mio::Poll) -> Result<(), String> {
    p.stream = Some(connect_http(from, resolve(&p.url)?, p.token, poll)?);
    http::manifest_request(&p.url, &p.since, &mut p.buf);
    p.phase = Phase::Sending { sent: 0 };
    Ok(())
}
