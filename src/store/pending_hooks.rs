//! The install hooks still owed, kept in `STATE_DIR/.flotilla-hooks` so that a crash, a power
//! cut or a failed hook never loses one: the hook runs at least once per release.
//!
//! A release is entered here when it is taken on incomplete, before a byte of it is fetched; it
//! leaves only when its hook has exited 0. So a release found complete at start with an entry
//! (the agent died between the final rename and the hook, or in the hook, or the hook failed)
//! gets its hook again, and a release that was complete before the agent ever saw it (the
//! operator's own seed) never does. One line per release, `SWARM_HEX NAME RELEASE`, replaced
//! atomically like the history; a damaged file is an error, never an empty record, since an
//! empty one would silently drop hooks.

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

    /// Records, durably, that the hook of release `swarm` ran to a successful end.
    pub fn remove(&mut self, swarm: &SwarmId) -> io::Result<()> {
        let Some(i) = self.entries.iter().position(|e| e.swarm == *swarm) else { return Ok(()) };
        let entry = self.entries.remove(i);
        self.save().inspect_err(|_| self.entries.insert(i, entry))
    }

    fn save(&self) -> io::Result<()> {
        let mut text = String::new();
        for e in &self.entries {
            text.push_str(&format!("{} {} {}\n", to_hex(&e.swarm), e.name, e.release));
        }
        replace_file_in(&self.fs, &self.path, text.as_bytes(), PRIVATE_MODE)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", self.path.display())))
    }
}

fn parse_line(line: &str) -> Option<PendingHook> {
    let mut parts = line.split(' ');
    let (swarm, name, release) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !valid_name(name) {
        return None;
    }
    let swarm = crate::core::manifest::from_hex32(swarm)?;
    Some(PendingHook { swarm, name: name.to_owned(), release: release.parse().ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owed_hooks_survive_a_reload_until_removed_and_damage_is_an_error() {
        let d = std::env::temp_dir().join(format!("flotilla-hooks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let hook = |b: u8| PendingHook { swarm: [b; 32], name: format!("fw{b}.img"), release: u64::from(b) };
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
        std::fs::write(d.join(PendingHooks::FILE), "zz fw.img 1\n").unwrap();
        let e = PendingHooks::load(&d).unwrap_err();
        assert!(e.to_string().contains("line 1 is damaged"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
