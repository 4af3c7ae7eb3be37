//! The highest release number served under each release name in a data directory, kept in
//! `DIR/.flotilla-history` so that no restart, rescan or stale manifest can roll a device back
//! to an older release it has already moved past.
//!
//! An old manifest stays validly signed forever; the signature says who made a release, not
//! whether it is current. This record is what refuses it. The file is small text, one
//! `NAME RELEASE` line per name, replaced atomically (write, sync, rename) like the state file.
//! This module owns the record and its file; it does not decide what to serve.

use crate::store::atomic::replace_file;
use std::io;
use std::path::{Path, PathBuf};

/// Names remembered; far more than a device serves (the agent caps releases at a few dozen).
const MAX_NAMES: usize = 256;

/// Highest release number seen per name.
#[derive(Debug)]
pub struct History {
    path: PathBuf,
    entries: Vec<(String, u64)>,
}

impl History {
    /// The file name inside a data directory.
    pub const FILE: &'static str = ".flotilla-history";

    /// Reads the record of `dir`; a missing file is an empty record. Unreadable lines are
    /// skipped with a warning rather than refusing every release.
    pub fn load(dir: &Path) -> History {
        let path = dir.join(Self::FILE);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut entries = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next().and_then(|r| r.parse::<u64>().ok()), parts.next()) {
                (Some(name), Some(release), None) if entries.len() < MAX_NAMES => {
                    entries.push((name.to_owned(), release))
                }
                _ => log::warn!("{}: ignoring the line {line:?}", path.display()),
            }
        }
        History { path, entries }
    }

    /// The highest release recorded for `name`.
    pub fn highest(&self, name: &str) -> Option<u64> {
        self.entries.iter().find(|(n, _)| n == name).map(|&(_, r)| r)
    }

    /// Records that release `release` of `name` is served, if it is the highest yet, and makes
    /// the record durable before returning.
    pub fn record(&mut self, name: &str, release: u64) -> io::Result<()> {
        let full = self.entries.len() >= MAX_NAMES;
        match self.entries.iter_mut().find(|(n, _)| n == name) {
            Some((_, r)) if *r >= release => return Ok(()),
            Some((_, r)) => *r = release,
            None if full => return Ok(()),
            None => self.entries.push((name.to_owned(), release)),
        }
        self.save()
    }

    fn save(&self) -> io::Result<()> {
        let mut text = String::new();
        for (name, release) in &self.entries {
            text.push_str(&format!("{name} {release}\n"));
        }
        replace_file(&self.path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flotilla-history-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn records_only_increases_and_survives_a_reload() {
        let d = dir("reload");
        let mut h = History::load(&d);
        assert_eq!(h.highest("fw.img"), None);
        h.record("fw.img", 7).unwrap();
        h.record("fw.img", 5).unwrap();
        h.record("boot.img", 2).unwrap();
        let h = History::load(&d);
        assert_eq!(h.highest("fw.img"), Some(7), "a lower release never lowers the record");
        assert_eq!(h.highest("boot.img"), Some(2));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn junk_lines_are_skipped_not_fatal() {
        let d = dir("junk");
        std::fs::write(d.join(History::FILE), "fw.img 9\nnot a line at all\nx y z\nboot.img nine\n").unwrap();
        let h = History::load(&d);
        assert_eq!(h.highest("fw.img"), Some(9));
        assert_eq!(h.highest("boot.img"), None);
        let _ = std::fs::remove_dir_all(&d);
    }
}
