//! The operator's install hook: run at least once per release, a few children at once, reaped
//! every turn, never waited for inside the loop.
//!
//! Which hooks are owed is [`PendingHooks`]'s record in the state directory, so a crash, a
//! power cut, a hook killed or failed all end the same way: the hook runs again, on the next
//! turn after a back-off or at the next start, until it exits 0. A hook that outlives
//! `hook_timeout` is killed (its whole process group) and counts as failed. It runs with a clean
//! environment that names the release, so it can check what it installs.

use super::{Agent, AgentError, Held};
use crate::core::manifest::{to_hex, SwarmId};
use crate::core::storage::Storage;
use crate::store::device_id::DeviceId;
use crate::store::pending_hooks::{PendingHook, PendingHooks};
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Install hooks running at once; a completion beyond that waits for one to finish.
pub(super) const MAX_HOOKS: usize = 4;
/// Wait before the first retry of a failed hook; it doubles up to `MAX_HOOK_BACKOFF`.
const FIRST_HOOK_BACKOFF: Duration = Duration::from_secs(30);
const MAX_HOOK_BACKOFF: Duration = Duration::from_secs(3600);
/// The hook's whole `PATH`: its environment is cleared, and a script still needs its tools.
const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where a release stands with its install hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookState {
    /// Nothing owed (or no hook configured).
    Idle,
    /// Owed: to be started at `not_before`; `failures` so far in this run.
    Due { not_before: Instant, failures: u32 },
    /// Running now.
    Running { failures: u32 },
}

/// A running install hook.
pub(super) struct Hook {
    child: Child,
    swarm: SwarmId,
    /// The release's name, for the log: the release itself may be gone by the time it ends.
    name: String,
    started: Instant,
}

impl Agent {
    /// Keeps the hooks owed in `dir` (with the history, `--state-dir`).
    pub(super) fn load_pending_hooks(&mut self, dir: &std::path::Path) -> Result<(), AgentError> {
        self.pending_hooks = Some(PendingHooks::load(dir).map_err(AgentError::History)?);
        Ok(())
    }

    /// For a release just added: records its hook as owed if it is still to be fetched, or
    /// makes it due now if an earlier run owed it and the release is whole.
    pub(super) fn note_hook(&mut self, r: usize, now: Instant) -> Result<(), AgentError> {
        let (Some(pending), false) = (&mut self.pending_hooks, self.config.on_complete.is_empty()) else {
            return Ok(());
        };
        let h = &mut self.releases[r];
        let swarm = *h.release.id();
        if !h.release.is_complete() {
            let (name, release) = (h.release.name().to_owned(), h.release.number());
            return pending.add(PendingHook::new(swarm, name, release)).map_err(AgentError::History);
        }
        if let Some(owed) = pending.get(&swarm) {
            let install_at = install_time(h, self.device_id, now);
            let name = h.release.name();
            h.hook = match &owed.failed {
                None => {
                    log::info!("{name}: its install hook is owed from an earlier run");
                    HookState::Due { not_before: install_at, failures: 0 }
                }
                Some(f) => {
                    // The back-off runs from the last failure by the wall clock, so a restart
                    // does not cut it short; a clock that went back waits one back-off at most.
                    let wait = backoff(f.count.saturating_sub(1))
                        .saturating_sub(Duration::from_secs(wall_clock().saturating_sub(f.at)));
                    log::info!(
                        "{name}: its install hook is owed; it failed {} time(s), last {}; next try in {} s",
                        f.count,
                        f.how,
                        wait.as_secs()
                    );
                    HookState::Due { not_before: (now + wait).max(install_at), failures: f.count }
                }
            };
        }
        Ok(())
    }

    /// Forgets the hook of a release dropped for good (superseded, expired, no longer trusted):
    /// what is never to be served is never to be installed.
    pub(super) fn forget_hook(&mut self, swarm: &SwarmId) {
        if let Some(Err(e)) = self.pending_hooks.as_mut().map(|p| p.remove(swarm)) {
            log::warn!("cannot record that a dropped release's install hook is no longer owed: {e}");
        }
    }

    /// A release completed in this run: its hook is due, if one is configured and owed.
    pub(super) fn hook_after_completion(&mut self, r: usize, now: Instant) {
        let h = &mut self.releases[r];
        let owed = match &self.pending_hooks {
            Some(p) => p.is_pending(h.release.id()),
            None => true, // no state directory (a library caller): run it once, in this run
        };
        if owed && !self.config.on_complete.is_empty() {
            let not_before = install_time(h, self.device_id, now);
            if not_before > now {
                let secs = (not_before - now).as_secs();
                log::info!("{}: staged rollout: this device installs in {secs} s", h.release.name());
            }
            h.hook = HookState::Due { not_before, failures: 0 };
        }
    }

    /// Reaps the install hooks that finished (or overran), then starts those that are due, a
    /// few at a time.
    pub(super) fn run_hooks(&mut self, now: Instant) {
        self.reap_hooks(now);
        for r in 0..self.releases.len() {
            if self.hooks.len() >= MAX_HOOKS {
                return;
            }
            if let HookState::Due { not_before, failures } = self.releases[r].hook {
                if now >= not_before {
                    self.start_hook(r, failures, now);
                }
            }
        }
    }

    fn start_hook(&mut self, r: usize, failures: u32, now: Instant) {
        let h = &mut self.releases[r];
        let name = h.release.name().to_owned();
        log::info!(
            "{name}: running the install hook: {} {:?}",
            self.config.on_complete.join(" "),
            h.release.store().path()
        );
        match spawn_hook(&self.config.on_complete, h) {
            Ok(child) => {
                h.hook = HookState::Running { failures };
                self.hooks.push(Hook { child, swarm: *h.release.id(), name, started: now });
            }
            Err(e) => {
                let swarm = *h.release.id();
                log::error!("{name}: cannot run the install hook {:?}: {e}", self.config.on_complete[0]);
                self.hook_ended(swarm, Err("unstarted".into()), now);
            }
        }
    }

    /// Logs how each finished install hook ended; kills one that overran its time.
    fn reap_hooks(&mut self, now: Instant) {
        let timeout = self.config.hook_timeout;
        let mut i = 0;
        while i < self.hooks.len() {
            let h = &mut self.hooks[i];
            let ended = match h.child.try_wait() {
                Ok(None) if now < h.started + timeout => None,
                Ok(None) => Some(kill_overdue(h, timeout)),
                Ok(Some(status)) => Some(hook_finished(&h.name, status)),
                Err(e) => {
                    log::warn!("{}: cannot wait for the install hook: {e}", h.name);
                    Some(Err("unwaited".into()))
                }
            };
            match ended {
                Some(outcome) => {
                    let h = self.hooks.swap_remove(i);
                    self.hook_ended(h.swarm, outcome, now);
                }
                None => i += 1,
            }
        }
    }

    /// Settles a hook that ended: done for good (the record forgets it), or failed (`Err`: how,
    /// one word), which the record keeps with the time, and due again after a back-off.
    fn hook_ended(&mut self, swarm: SwarmId, outcome: Result<(), String>, now: Instant) {
        let record = match &outcome {
            Ok(()) => {
                self.hooks_ok += 1;
                self.pending_hooks.as_mut().map(|p| p.remove(&swarm))
            }
            Err(how) => {
                self.hooks_failed += 1;
                self.pending_hooks.as_mut().map(|p| p.failed(&swarm, wall_clock(), how))
            }
        };
        if let Some(Err(e)) = record {
            // Either way the hook stays right: run once more at the next start at worst, or run
            // again without the back-off a restart would have kept.
            log::warn!("cannot record how the install hook ended: {e}");
        }
        let Some(h) = self.releases.iter_mut().find(|h| *h.release.id() == swarm) else { return };
        let failures = match h.hook {
            HookState::Running { failures } | HookState::Due { failures, .. } => failures,
            HookState::Idle => 0,
        };
        h.hook = match outcome {
            Ok(()) => HookState::Idle,
            Err(_) => {
                let backoff = backoff(failures);
                log::warn!("{}: the install hook will be tried again in {} s", h.release.name(), backoff.as_secs());
                HookState::Due { not_before: now + backoff, failures: failures + 1 }
            }
        };
    }

    /// Starts the install hooks due now and waits for every one (each within its timeout): for
    /// a command that exits once its release is complete. Returns [`Agent::hooks_ok`]. A hook
    /// that fails is not retried here; it stays owed for the next run.
    pub fn finish_hooks(&mut self) -> bool {
        loop {
            let now = Instant::now();
            self.run_hooks(now);
            if self.hooks.is_empty() {
                return self.hooks_ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// False once an install hook has failed (exited non-zero, overran, or could not start).
    pub fn hooks_ok(&self) -> bool {
        self.hooks_failed == 0
    }
}

/// Wait before the next run of a hook that failed `failures + 1` times: 30 s, doubling, at most
/// an hour.
fn backoff(failures: u32) -> Duration {
    FIRST_HOOK_BACKOFF.saturating_mul(1 << failures.min(16)).min(MAX_HOOK_BACKOFF)
}

fn wall_clock() -> u64 {
    super::datadir::wall_clock()
}

/// When release `h` may be installed on device `device`: at once, or at its moment in the
/// manifest's staged-rollout window. The window is in wall-clock time; a clock still unset
/// (before [`crate::core::trust::CLOCK_FLOOR`]) cannot place the device in it, so it installs
/// at once rather than never.
fn install_time(h: &Held, device: Option<DeviceId>, now: Instant) -> Instant {
    let (Some(rollout), Some(device)) = (h.release.rollout(), device) else { return now };
    let wall = wall_clock();
    if wall < crate::core::trust::CLOCK_FLOOR {
        log::warn!("{}: the clock is unset, so its staged rollout is not waited for", h.release.name());
        return now;
    }
    let at = rollout.install_at(&device.0, h.release.id());
    now + Duration::from_secs(at.saturating_sub(wall))
}

/// Starts the install hook: the operator's program and arguments, then the release's path as
/// one more argument. No shell parses anything, so no file name can smuggle in a command. The
/// environment is cleared but for `PATH` and the release's facts; the hook leads its own
/// process group, so that a timeout can stop everything it started, and is killed if the agent
/// dies (`PR_SET_PDEATHSIG`): the hook is owed still and runs again at the next start, and two
/// copies of it must never run at once.
fn spawn_hook(command: &[String], h: &Held) -> io::Result<Child> {
    let Some((program, args)) = command.split_first() else { return Err(io::Error::other("no command")) };
    let r = &h.release;
    let manifest = h.manifest.as_deref().map(|p| p.as_os_str().to_owned()).unwrap_or_default();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .arg(r.store().path())
        .env_clear()
        .env("PATH", HOOK_PATH)
        .env("FLOTILLA_NAME", r.name())
        .env("FLOTILLA_RELEASE", r.number().to_string())
        .env("FLOTILLA_FILE", r.store().path())
        .env("FLOTILLA_MANIFEST", manifest)
        .env("FLOTILLA_SWARM", to_hex(r.id()))
        .stdin(Stdio::null())
        .process_group(0);
    // SAFETY: between fork and exec only async-signal-safe calls: prctl(2) and getppid(2).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The agent may have died before the prctl took effect: then there is no one to wait.
            if libc::getppid() == 1 {
                return Err(io::Error::other("the agent is gone"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Kills an install hook that overran `timeout`, with everything it started: failed.
fn kill_overdue(h: &mut Hook, timeout: Duration) -> Result<(), String> {
    log::warn!("{}: the install hook ran past --hook-timeout ({} s); killing it", h.name, timeout.as_secs());
    // SAFETY: kill(2) with a negative pid signals the process group the hook leads.
    unsafe { libc::kill(-(h.child.id() as libc::pid_t), libc::SIGKILL) };
    let _ = h.child.wait();
    Err("timeout".into())
}

/// Logs how an install hook ended: Ok if it exited 0, else how (`exit:N` or `signal:N`).
fn hook_finished(name: &str, status: ExitStatus) -> Result<(), String> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        log::info!("{name}: the install hook finished ({status})");
        return Ok(());
    }
    log::warn!("{name}: the install hook failed ({status})");
    Err(match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit:{code}"),
        (None, Some(signal)) => format!("signal:{signal}"),
        (None, None) => "failed".into(),
    })
}
