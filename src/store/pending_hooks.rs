//! The install hooks still owed, kept in `STATE_DIR/.flotilla-hooks` so that a crash, a power
//! cut or a failed hook never loses one: the hook runs at least once per release.
//!
//! A release is entered here when it is taken on incomplete, before a byte of it is fetched; it
//! leaves only when its hook has exited 0. So a release found complete at start with an entry
//! (the agent died between the final rename and the hook, or in the hook, or the hook failed)
//! gets its hook again, and a release that was complete before the agent ever saw it (the
//! operator's own seed) never does. A hook that failed is recorded with how often, when last and
//! how (`exit:N`, `signal:N`, `timeout`, `unstarted`), so that the back-off before its next run
//! holds across restarts: a supervisor that restarts the agent at once does not get the hook
//! run at once. One line per release, `SWARM_HEX NAME RELEASE [FAILURES UNIX_SECS HOW]`,
//! replaced atomically like the history; a damaged file is an error, never an empty record,
//! since an empty one would silently drop hooks.

use crate::core::manifest::{to_hex, valid_name, SwarmId};
use crate::store::atomic::replace_file_in;
use crate::store::history::read_record;
use crate::store::safe_fs::{Fs, RealFs, PRIVATE_MODE};
use std::io;
use std::path::{Path, PathBuf};

/// A file larger than this is not one of ours (a line is ~90 bytes).
const MAX_FILE: u64 = 1 << 20;

/// One hook still owed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingHook {
    /// The release's swarm id.
    pub swarm: SwarmId,
    /// Its name and number, for the log and the hook's environment.
    pub name: String,
    pub release: u64,
    /// How its runs so far failed, if any did.
    pub failed: Option<HookFailures>,
}

impl PendingHook {
    /// A hook owed that has not failed yet.
    pub fn new(swarm: SwarmId, name: String, release: u64) -> PendingHook {
        PendingHook { swarm, name, release, failed: None }
    }
}

/// The failed runs of one owed hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookFailures {
    /// Runs that failed.
    pub count: u32,
    /// When the last one ended, in seconds since the Unix epoch (the wall clock: it must mean
    /// something to the next process).
    pub at: u64,
    /// How it ended: `exit:N`, `signal:N`, `timeout` or `unstarted`; one word.
    pub how: String,
}

/// The hooks still owed, and their file. `F` is the filesystem, as for
/// [`History`](crate::store::history::History).
#[derive(Debug)]
pub struct PendingHooks<F: Fs = RealFs> {
    fs: F,
    path: PathBuf,
    entries: Vec<PendingHook>,
}

impl PendingHooks {
    /// The file name inside a state directory.
    pub const FILE: &'static str = ".flotilla-hooks";

    /// Reads the record kept in `dir`: missing is empty; damaged or unreadable is an error.
    pub fn load(dir: &Path) -> io::Result<PendingHooks> {
        PendingHooks::load_in(RealFs, dir)
    }

    /// The entries of a record's text; the error names a damaged line.
    pub fn parse(text: &str) -> Result<Vec<PendingHook>, String> {
        let damaged = |n: usize, line: &str| format!("line {} is damaged: {line:?}", n + 1);
        text.lines().enumerate().map(|(n, line)| parse_line(line).ok_or_else(|| damaged(n, line))).collect()
    }
}

impl<F: Fs> PendingHooks<F> {
    /// [`PendingHooks::load`] on the filesystem `fs`, which the record keeps for its writes.
    pub fn load_in(fs: F, dir: &Path) -> io::Result<PendingHooks<F>> {
        let path = dir.join(PendingHooks::FILE);
        let text = read_record(&fs, &path, MAX_FILE)?;
        let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", path.display()));
        let entries = PendingHooks::parse(&text).map_err(invalid)?;
        Ok(PendingHooks { fs, path, entries })
    }

    /// The filesystem the record is kept on.
    pub fn fs(&self) -> &F {
        &self.fs
    }

    /// True if the hook of release `swarm` is owed.
    pub fn is_pending(&self, swarm: &SwarmId) -> bool {
        self.entries.iter().any(|e| e.swarm == *swarm)
    }

    /// Records, durably, that the hook of this release is owed.
    pub fn add(&mut self, hook: PendingHook) -> io::Result<()> {
        if self.is_pending(&hook.swarm) {
            return Ok(());
        }
        self.entries.push(hook);
        self.save().inspect_err(|_| {
            self.entries.pop();
        })
    }

    /// The owed hook of release `swarm`, if it is owed.
    pub fn get(&self, swarm: &SwarmId) -> Option<&PendingHook> {
        self.entries.iter().find(|e| e.swarm == *swarm)
    }

    /// Records, durably, that a run of the owed hook of `swarm` failed at `at` (Unix seconds),
    /// ending as `how` (one word, no spaces). Nothing if it is not owed.
    pub fn failed(&mut self, swarm: &SwarmId, at: u64, how: &str) -> io::Result<()> {
        let Some(i) = self.entries.iter().position(|e| e.swarm == *swarm) else { return Ok(()) };
        let how: String = how.chars().map(|c| if c.is_ascii_graphic() { c } else { '_' }).collect();
        let count = self.entries[i].failed.as_ref().map_or(0, |f| f.count).saturating_add(1);
        let before = self.entries[i].failed.replace(HookFailures { count, at, how });
        self.save().inspect_err(|_| self.entries[i].failed = before)
    }

    /// Records, durably, that the hook of release `swarm` ran to a successful end.
    pub fn remove(&mut self, swarm: &SwarmId) -> io::Result<()> {
        let Some(i) = self.entries.iter().position(|e| e.swarm == *swarm) else { return Ok(()) };
        let entry = self.entries.remove(i);
        self.save().inspect_err(|_| self.entries.insert(i, entry))
    }

    fn save(&self) -> io::Result<()> {
        let mut text = String::new();
        for e in &self.entries {
            text.push_str(&format!("{} {} {}", to_hex(&e.swarm), e.name, e.release));
            if let Some(f) = &e.failed {
                text.push_str(&format!(" {} {} {}", f.count, f.at, f.how));
            }
            text.push('\n');
        }
        replace_file_in(&self.fs, &self.path, text.as_bytes(), PRIVATE_MODE)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", self.path.display())))
    }
}

fn parse_line(line: &str) -> Option<PendingHook> {
    let mut parts = line.split(' ');
    let (swarm, name, release) = (parts.next()?, parts.next()?, parts.next()?);
    if !valid_name(name) {
        return None;
    }
    let failed = match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => None,
        (Some(count), Some(at), Some(how)) if !how.is_empty() => {
            Some(HookFailures { count: count.parse().ok()?, at: at.parse().ok()?, how: how.to_owned() })
        }
        _ => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    let swarm = crate::core::manifest::from_hex32(swarm)?;
    Some(PendingHook { swarm, name: name.to_owned(), release: release.parse().ok()?, failed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owed_hooks_survive_a_reload_until_removed_and_damage_is_an_error() {
        let d = std::env::temp_dir().join(format!("flotilla-hooks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let hook = |b: u8| PendingHook::new([b; 32], format!("fw{b}.img"), u64::from(b));
        let mut p = PendingHooks::load(&d).unwrap();
        p.add(hook(1)).unwrap();
        p.add(hook(2)).unwrap();
        p.add(hook(1)).unwrap();
        let mut p = PendingHooks::load(&d).unwrap();
        assert!(p.is_pending(&[1; 32]) && p.is_pending(&[2; 32]));
        p.remove(&[1; 32]).unwrap();
        let p = PendingHooks::load(&d).unwrap();
        assert!(!p.is_pending(&[1; 32]) && p.is_pending(&[2; 32]));
        assert_eq!(p.entries, [hook(2)]);
        // Failures are kept, with when and how, across a reload; the first line of each kind
        // (without failures, and with) parses back to what was written.
        let mut p = PendingHooks::load(&d).unwrap();
        p.failed(&[2; 32], 1_800_000_000, "exit:3").unwrap();
        p.failed(&[2; 32], 1_800_000_060, "signal 9").unwrap();
        p.failed(&[9; 32], 1_800_000_060, "exit:1").unwrap();
        p.add(hook(4)).unwrap();
        let p = PendingHooks::load(&d).unwrap();
        let f = p.get(&[2; 32]).and_then(|h| h.failed.clone()).unwrap();
        assert_eq!((f.count, f.at, f.how.as_str()), (2, 1_800_000_060, "signal_9"));
        assert_eq!(p.get(&[4; 32]), Some(&hook(4)));
        assert!(p.get(&[9; 32]).is_none(), "a failure of a hook not owed records nothing");
        std::fs::write(d.join(PendingHooks::FILE), "zz fw.img 1\n").unwrap();
        let e = PendingHooks::load(&d).unwrap_err();
        assert!(e.to_string().contains("line 1 is damaged"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
