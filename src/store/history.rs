//! The highest release number accepted under each release name, kept in
//! `STATE_DIR/.flotilla-history` so that no restart, rescan or stale manifest can roll a device
//! back to an older release it has already moved past. `serve` and `fetch` both keep one.
//!
//! An old manifest stays validly signed forever; the signature says who made a release, not
//! whether it is current. This record is what refuses it. The file is small text, one
//! `NAME RELEASE` line per name, replaced atomically (write, sync, rename) like the state file.
//! A record that cannot be read is an error, never an empty record: an empty one would accept
//! every old release again. This module owns the record and its file; it does not decide what
//! to serve.

use crate::core::manifest::valid_name;
use crate::store::atomic::replace_file_in;
use crate::store::safe_fs::{self, Fs, FsFile, RealFs, PRIVATE_MODE};
use std::io;
use std::path::{Path, PathBuf};

/// A history file larger than this is not one of ours (a line per name is ~30 bytes).
const MAX_FILE: u64 = 1 << 20;

/// Highest release number accepted per name. `F` is the filesystem: the real one, or in tests
/// a model that loses unsynced data in a power cut (`tests/powercut.rs`).
#[derive(Debug)]
pub struct History<F: Fs = RealFs> {
    fs: F,
    path: PathBuf,
    entries: Vec<(String, u64)>,
}

impl History {
    /// The file name inside a state directory.
    pub const FILE: &'static str = ".flotilla-history";

    /// Reads the record kept in `dir`. A missing file is an empty record (a new device); any
    /// other failure, a damaged line or a file too large is an error naming the file.
    pub fn load(dir: &Path) -> io::Result<History> {
        History::load_in(RealFs, dir)
    }

    /// The entries of a history file's text, each name once; the error names a damaged line.
    pub fn parse(text: &str) -> Result<Vec<(String, u64)>, String> {
        let mut entries: Vec<(String, u64)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let mut parts = line.split(' ');
            match (parts.next(), parts.next().and_then(|r| r.parse::<u64>().ok()), parts.next()) {
                (Some(name), Some(release), None) if valid_name(name) && !entries.iter().any(|(e, _)| e == name) => {
                    entries.push((name.to_owned(), release))
                }
                _ => return Err(format!("line {} is damaged: {line:?}", n + 1)),
            }
        }
        Ok(entries)
    }
}

impl<F: Fs> History<F> {
    /// [`History::load`] on the filesystem `fs`, which the record keeps for its writes.
    pub fn load_in(fs: F, dir: &Path) -> io::Result<History<F>> {
        let path = dir.join(History::FILE);
        let text = read_record(&fs, &path, MAX_FILE)?;
        let entries = History::parse(&text).map_err(|why| invalid(&path, why))?;
        Ok(History { fs, path, entries })
    }

    /// The filesystem the record is kept on.
    pub fn fs(&self) -> &F {
        &self.fs
    }

    /// Where the record lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The highest release recorded for `name`.
    pub fn highest(&self, name: &str) -> Option<u64> {
        self.entries.iter().find(|(n, _)| n == name).map(|&(_, r)| r)
    }

    /// Records release `release` of `name`, if it is the highest yet, and makes the record
    /// durable before returning. On error the record in memory is unchanged too.
    pub fn record(&mut self, name: &str, release: u64) -> io::Result<()> {
        let old = self.entries.clone();
        match self.entries.iter_mut().find(|(n, _)| n == name) {
            Some((_, r)) if *r >= release => return Ok(()),
            Some((_, r)) => *r = release,
            None => self.entries.push((name.to_owned(), release)),
        }
        self.save().map_err(|e| {
            self.entries = old;
            io::Error::new(e.kind(), format!("cannot write {}: {e}", self.path.display()))
        })
    }

    /// Sets the record of `name` to exactly `release`, lower or higher: only a new trust root
    /// does this (its floors), to bring a fleet back after a leaked key signed a huge number.
    pub fn set_floor(&mut self, name: &str, release: u64) -> io::Result<()> {
        let old = self.entries.clone();
        match self.entries.iter_mut().find(|(n, _)| n == name) {
            Some((_, r)) if *r == release => return Ok(()),
            Some((_, r)) => *r = release,
            None => self.entries.push((name.to_owned(), release)),
        }
        self.save().map_err(|e| {
            self.entries = old;
            io::Error::new(e.kind(), format!("cannot write {}: {e}", self.path.display()))
        })
    }

    fn save(&self) -> io::Result<()> {
        let mut text = String::new();
        for (name, release) in &self.entries {
            text.push_str(&format!("{name} {release}\n"));
        }
        replace_file_in(&self.fs, &self.path, text.as_bytes(), PRIVATE_MODE)
    }
}

fn invalid(path: &Path, why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", path.display()))
}

/// The text of a small record at `path` on `fs` (the history, the hooks owed), after removing
/// the temporaries a crash left beside it. A missing file is empty text; a file that cannot be
/// read, is not text or is larger than `max` bytes is an `InvalidData` error naming the file.
pub(crate) fn read_record<F: Fs>(fs: &F, path: &Path, max: u64) -> io::Result<String> {
    safe_fs::remove_stale_temps_in(fs, path);
    let bytes = match safe_fs::open_read_in(fs, path) {
        Ok(f) => f.read_capped(max as usize + 1).map_err(|e| invalid(path, e.to_string()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(invalid(path, e.to_string())),
    };
    // Text first, then size: the checks (and messages) of the `read_to_string` this replaces.
    let text = String::from_utf8(bytes).map_err(|_| invalid(path, "stream did not contain valid UTF-8".into()))?;
    if text.len() as u64 > max {
        return Err(invalid(path, format!("larger than {max} bytes")));
    }
    Ok(text)
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
        let mut h = History::load(&d).unwrap();
        assert_eq!(h.highest("fw.img"), None);
        h.record("fw.img", 7).unwrap();
        h.record("fw.img", 5).unwrap();
        h.record("boot.img", 2).unwrap();
        let h = History::load(&d).unwrap();
        assert_eq!(h.highest("fw.img"), Some(7), "a lower release never lowers the record");
        assert_eq!(h.highest("boot.img"), Some(2));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_damaged_record_is_an_error_not_an_empty_one() {
        let d = dir("junk");
        for bad in ["fw.img 9\nnot a line at all\n", "fw.img nine\n", "../x 3\n", "fw.img 1\nfw.img 2\n", "\n"] {
            std::fs::write(d.join(History::FILE), bad).unwrap();
            let e = History::load(&d).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{bad:?}");
            assert!(e.to_string().contains(History::FILE), "{e}");
        }
        std::fs::write(d.join(History::FILE), vec![b'a'; MAX_FILE as usize + 2]).unwrap();
        assert!(History::load(&d).is_err(), "an oversized file is refused, not read whole");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_record_that_returned_ok_survives_any_power_cut_on_the_model() {
        use crate::core::rng::Rng;
        use crate::store::model_fs::ModelFs;
        let d = Path::new("/s");
        for seed in 0..50 {
            let fs = ModelFs::new();
            let mut h = History::load_in(fs.clone(), d).unwrap();
            h.record("fw.img", 3).unwrap();
            h.record("boot.img", 1).unwrap();
            fs.cut_after(seed % 7);
            let cut = h.record("fw.img", 4).is_err();
            fs.power_cut(&mut Rng::new(seed));
            let h = History::load_in(fs.clone(), d).unwrap();
            let fw = h.highest("fw.img");
            assert!(if cut { fw == Some(3) || fw == Some(4) } else { fw == Some(4) }, "seed {seed}: {fw:?}");
            assert_eq!(h.highest("boot.img"), Some(1), "seed {seed}");
        }
    }

    #[test]
    fn many_names_are_all_kept() {
        let d = dir("many");
        let mut h = History::load(&d).unwrap();
        for i in 0..300 {
            h.record(&format!("r{i}.img"), i + 1).unwrap();
        }
        let h = History::load(&d).unwrap();
        assert_eq!(h.highest("r299.img"), Some(300), "no cap on names: the 300th is remembered");
        let _ = std::fs::remove_dir_all(&d);
    }
}
