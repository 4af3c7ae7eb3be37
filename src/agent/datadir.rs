//! A `--data` directory: the releases in it (`NAME.flotilla` beside its file `NAME`), looked
//! at again on request so that an operator can drop in a manifest, and the no-rollback history.

use super::{Agent, AgentError};
use crate::core::manifest::{ManifestError, PublicKey, SignedManifest};
use crate::core::storage::Storage;
use crate::store::history::History;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Refused manifests remembered so that each is logged once, not at every rescan. Past this many
/// bad files the oldest is forgotten (and logged again if it is still there).
pub(super) const MAX_REFUSED: usize = 64;

/// A manifest that was refused, as its files looked then: unchanged, it is not read again.
#[derive(PartialEq)]
pub(super) struct Refused {
    manifest: PathBuf,
    stamps: [Option<(SystemTime, u64)>; 2],
}

impl Refused {
    /// The manifest's and its data file's modification time and size: a copy still in progress
    /// or a file replaced since gets another look.
    fn new(manifest: &Path, data: &Path) -> Refused {
        let stamp = |p: &Path| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        Refused { manifest: manifest.to_owned(), stamps: [stamp(manifest), stamp(data)] }
    }
}

impl Agent {
    /// Adds the releases in a `--data` directory that are not held yet: each `NAME.flotilla` that
    /// decodes and is signed by a trusted key (any key when `trust` is empty), its data at `NAME`.
    /// A release held already (same path or swarm id) is passed over quietly; one refused is
    /// logged once and not read again until its manifest or data file changes. Returns how many
    /// were added. Called at start and then now and then, it lets an operator drop in a manifest.
    pub fn rescan(&mut self, dir: &Path, trust: &[PublicKey]) -> io::Result<usize> {
        let mut added = 0;
        self.history.get_or_insert_with(|| History::load(dir));
        for (manifest, data) in manifests_in(dir)? {
            if self.releases.iter().any(|h| h.release.store().path() == data) {
                continue;
            }
            let seen = Refused::new(&manifest, &data);
            if self.refused.iter().any(|r| *r == seen) {
                continue;
            }
            if self.load(&manifest, &data, trust) {
                added += 1;
            } else {
                if self.refused.is_full() {
                    self.refused.pop_front();
                }
                let _ = self.refused.push_back(seen);
            }
        }
        Ok(added)
    }

    /// Reads, checks and adds one release of a data directory; false (logged) if refused.
    fn load(&mut self, manifest: &Path, data: &Path, trust: &[PublicKey]) -> bool {
        let m = match load_manifest(manifest, trust) {
            Ok(m) => m,
            Err(e) => {
                log::error!("skipping {}: {e}", manifest.display());
                return false;
            }
        };
        if let Some(h) = self.releases.iter().find(|h| *h.release.id() == m.swarm_id) {
            let held = h.release.store().path().display();
            log::warn!("skipping {}: the same release as {held}", manifest.display());
            return false;
        }
        let (name, release) = (&m.manifest.name, m.manifest.release);
        if let Some(highest) = self.history.as_ref().and_then(|h| h.highest(name)).filter(|&h| h > release) {
            log::warn!(
                "refusing {}: release {release} of {name} is older than release {highest} already served here (no rollback)",
                manifest.display()
            );
            return false;
        }
        match self.add_release(&m, data) {
            Ok(_) => {
                // Durable before it is said: a kill right after the log line must not lose it.
                if let Some(Err(e)) = self.history.as_mut().map(|h| h.record(name, release)) {
                    log::warn!("cannot record {name} #{release} in {}: {e}", History::FILE);
                }
                log::info!("serving {name} #{release} from {}", data.display());
                true
            }
            Err(e @ AgentError::TooManyReleases(_)) => {
                log::warn!("skipping {}: {e}", manifest.display());
                false
            }
            Err(e) => {
                log::error!("skipping {}: {e}", data.display());
                false
            }
        }
    }
}

/// The `(NAME.flotilla, NAME)` pairs in `dir`, sorted by name.
fn manifests_in(dir: &Path) -> io::Result<Vec<(PathBuf, PathBuf)>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    Ok(entries
        .into_iter()
        .filter_map(|path| {
            let stem = path.file_name()?.to_str()?.strip_suffix(".flotilla").filter(|s| !s.is_empty())?;
            let data = dir.join(stem);
            Some((path, data))
        })
        .collect())
}

/// Reads a manifest and checks it is signed by a trusted key (any key when `trust` is empty).
fn load_manifest(path: &Path, trust: &[PublicKey]) -> Result<SignedManifest, ManifestError> {
    let m = SignedManifest::read_file(path)?;
    if !trust.is_empty() {
        m.check_trust(trust)?;
    }
    Ok(m)
}
