//! The operator's install hook: started when a release completes in this run, a few children
//! at once, reaped every turn, never waited for inside the loop.

use super::Agent;
use crate::core::storage::Storage;
use std::io;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

/// Install hooks running at once; a completion beyond that waits for one to finish.
pub(super) const MAX_HOOKS: usize = 4;

/// A running install hook.
pub(super) struct Hook {
    child: Child,
    /// The release's name, for the log: the release itself may be gone by the time it ends.
    name: String,
}

impl Agent {
    /// Reaps the install hooks that finished, then starts those that are due, a few at a time.
    pub(super) fn run_hooks(&mut self) {
        self.reap_hooks();
        let Agent { hooks, releases, config, hooks_failed, .. } = self;
        for r in releases.iter_mut().filter(|r| r.hook_due) {
            if hooks.len() >= MAX_HOOKS {
                return;
            }
            r.hook_due = false;
            let (name, path) = (r.release.name(), r.release.store().path());
            log::info!("{name}: running the install hook: {} {path:?}", config.on_complete.join(" "));
            match spawn_hook(&config.on_complete, path) {
                Ok(child) => hooks.push(Hook { child, name: name.to_owned() }),
                Err(e) => {
                    *hooks_failed += 1;
                    log::error!("{name}: cannot run the install hook {:?}: {e}", config.on_complete[0]);
                }
            }
        }
    }

    /// Logs how each finished install hook ended and forgets it.
    fn reap_hooks(&mut self) {
        let Agent { hooks, hooks_failed, .. } = self;
        hooks.retain_mut(|h| {
            let name = &h.name;
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
            let name = &h.name;
            match h.child.wait() {
                Ok(status) => self.hooks_failed += !hook_finished(name, status) as usize,
                Err(e) => log::warn!("{name}: cannot wait for the install hook: {e}"),
            }
        }
    }

    /// False once an install hook has failed (exited non-zero, or could not be started).
    pub fn hooks_ok(&self) -> bool {
        self.hooks_failed == 0
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
