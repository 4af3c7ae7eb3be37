//! A `--data` directory: the releases in it (`NAME.flotilla` beside its file `NAME`), looked
//! at again on request so that an operator can drop in a manifest, and the no-rollback history.

use super::{Agent, AgentError};
use crate::core::manifest::{ManifestError, SignedManifest};
use crate::core::storage::Storage;
use crate::core::trust::{format_rfc3339, Acceptor, Deferred};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Refused manifests remembered so that each is logged once, not at every rescan. Past this many
/// bad files the oldest is forgotten (and logged again if it is still there).
pub(super) const MAX_REFUSED: usize = 64;

/// A file's modification time and size: what tells a file replaced or still being copied.
pub(super) type Stamp = (SystemTime, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len())))
}

/// A manifest that was refused, as its files looked then: unchanged, it is not read again.
#[derive(PartialEq)]
pub(super) struct Refused {
    manifest: PathBuf,
    stamps: [Option<Stamp>; 2],
}

impl Refused {
    /// The manifest's and its data file's stamps: a copy still in progress or a file replaced
    /// since gets another look.
    fn new(manifest: &Path, data: &Path) -> Refused {
        Refused { manifest: manifest.to_owned(), stamps: [stamp(manifest), stamp(data)] }
    }
}

impl Agent {
    /// Adds the releases in a `--data` directory that are not held yet: each `*.flotilla` that
    /// decodes and is signed by a trusted key, its data at `DIR/NAME` where NAME is the name it
    /// signs (not the manifest's file name, which anyone who can rename a file controls). A
    /// manifest held already, unchanged since it was read, is passed over quietly (one copied
    /// over is read again: a new release of its name); one refused is logged once and not read
    /// again until its manifest or data file changes. Returns how many were added. Called at
    /// start and then now and then, it lets an operator drop in a manifest.
    pub fn rescan(&mut self, dir: &Path, acceptor: &Acceptor) -> io::Result<usize> {
        let mut added = 0;
        self.drop_expired(wall_clock());
        for manifest in manifests_in(dir)? {
            let now_stamp = stamp(&manifest);
            let read_already =
                |h: &super::Held| h.manifest.as_deref() == Some(manifest.as_path()) && h.manifest_stamp == now_stamp;
            if self.releases.iter().any(read_already) {
                continue;
            }
            // Until it is read, the data file's likely name is the manifest's stem.
            let seen = Refused::new(&manifest, &manifest.with_extension(""));
            if self.refused.iter().any(|r| *r == seen) {
                continue;
            }
            if self.load(dir, &manifest, acceptor) {
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

    /// Takes the manifests learnt for the names followed (from the origin or peers): each one
    /// newer than anything accepted under its name and passing the same checks as one dropped
    /// into `dir` (signatures, targets, expiry, the fast-forward bound) is written to
    /// `dir/NAME.flotilla` (atomically: a power cut leaves the old manifest or the new one), and
    /// the rescan that follows fetches it. One refused is logged, and remembered so that a peer
    /// offering it again costs nothing. Returns how many were written.
    pub fn adopt_learnt(&mut self, dir: &Path, acceptor: &Acceptor) -> usize {
        let mut adopted = 0;
        for m in self.take_learnt() {
            let (name, release) = (m.manifest.name.clone(), m.manifest.release);
            if !self.config.follow.contains(&name) || self.refused_learnt.iter().any(|id| *id == m.swarm_id) {
                continue;
            }
            if let Some(highest) = self.highest_known(&name).filter(|&h| h >= release) {
                log::debug!("{name}: release {release} offered, not newer than #{highest}");
                continue;
            }
            if let Err(e) = acceptor.check(&m, wall_clock()) {
                log::warn!("{name}: refusing the manifest of release {release} learnt from the fleet: {e}");
                if self.refused_learnt.is_full() {
                    self.refused_learnt.pop_front();
                }
                let _ = self.refused_learnt.push_back(m.swarm_id);
                continue;
            }
            let path = dir.join(format!("{name}.flotilla"));
            match crate::store::atomic::replace_file(&path, &m.bytes, crate::store::safe_fs::DATA_MODE) {
                Ok(()) => {
                    log::info!("{name}: learnt of release {release}; its manifest is now {}", path.display());
                    adopted += 1;
                }
                Err(e) => log::error!("{name}: cannot write {}: {e}", path.display()),
            }
        }
        adopted
    }

    /// Reads, checks and adds one release of a data directory; false (logged) if refused.
    fn load(&mut self, dir: &Path, manifest: &Path, acceptor: &Acceptor) -> bool {
        let (m, deferred) = match load_manifest(manifest, acceptor) {
            Ok(m) => m,
            Err(e) => {
                log::error!("skipping {}: {e}", manifest.display());
                return false;
            }
        };
        let (name, release) = (&m.manifest.name, m.manifest.release);
        let data = dir.join(name);
        if let Some(h) = self.releases.iter().find(|h| *h.release.id() == m.swarm_id) {
            let held = h.release.store().path().display();
            log::warn!("skipping {}: the same release as {held}", manifest.display());
            return false;
        }
        if let Some(r) = self.newest_held(name) {
            if !self.supersede(r, &m, manifest) {
                return false;
            }
        }
        // DIR/NAME is ours to replace once this device accepted a release of NAME: it holds that
        // one (or a crash left it there after a newer one was recorded). A file of a name never
        // accepted here may be the operator's own, and is never replaced.
        let replacing = self.highest_known(name).is_some();
        let how = if replacing { super::Adding::Replacing } else { super::Adding::New };
        match self.add_release_with(&m, &data, how) {
            Ok(i) => {
                self.prepare_keep(i, dir, &m);
                if manifest.file_stem().and_then(|s| s.to_str()) != Some(name) {
                    log::warn!("{} signs the name {name}: its data is {}", manifest.display(), data.display());
                }
                self.releases[i].manifest = Some(manifest.to_owned());
                self.releases[i].manifest_stamp = stamp(manifest);
                self.releases[i].deferred = deferred;
                log::info!("serving {name} #{release} from {}", data.display());
                true
            }
            Err(
                e @ (AgentError::TooManyReleases(_)
                | AgentError::Rollback { .. }
                | AgentError::History(_)
                | AgentError::Manifest(_)),
            ) => {
                log::warn!("skipping {}: {e}", manifest.display());
                false
            }
            Err(e) => {
                log::error!("skipping {}: {e}", data.display());
                false
            }
        }
    }

    /// Drops the releases whose manifest expired by wall-clock time `now`: the operator said
    /// they stop here. A clock still unset judges nothing.
    fn drop_expired(&mut self, now: u64) {
        if now < crate::core::trust::CLOCK_FLOOR {
            return;
        }
        while let Some(r) = self.releases.iter().position(|h| h.release.expires().is_some_and(|at| now >= at)) {
            let h = &self.releases[r].release;
            let at = h.expires().map(format_rfc3339).unwrap_or_default();
            log::warn!("{} #{}: its manifest expired at {at}; no longer served", h.name(), h.number());
            self.remove_release(r, std::time::Instant::now());
        }
    }

    /// The newest release of `name` held.
    fn newest_held(&self, name: &str) -> Option<usize> {
        let of_name = self.releases.iter().enumerate().filter(|(_, h)| h.release.name() == name);
        of_name.max_by_key(|(_, h)| h.release.number()).map(|(r, _)| r)
    }

    /// A manifest `m` names the same release name as held release `r`, the newest of it held.
    /// An older `m` is refused (no rollback). A newer one replaces a held release still
    /// incomplete, which must never complete now; a complete one goes on being served from its
    /// file until the newer one is whole and renamed over it ([`Agent::retire_superseded`]),
    /// so the device and its peers always have one whole release of the name. True if `m` may
    /// be added.
    fn supersede(&mut self, r: usize, m: &SignedManifest, manifest: &Path) -> bool {
        let held = &self.releases[r].release;
        let (name, release, old) = (&m.manifest.name, m.manifest.release, held.number());
        if release <= old {
            log::warn!(
                "skipping {}: release {release} of {name} is not newer than the #{old} held",
                manifest.display()
            );
            return false;
        }
        if held.is_complete() {
            log::info!("{name}: fetching release {release}; the complete #{old} is served until it is whole");
            self.link_kept(r);
            return true;
        }
        log::info!("{name}: release {release} supersedes the incomplete #{old}, which is dropped");
        self.remove_release(r, std::time::Instant::now());
        true
    }

    /// Each complete release for which a newer release of its name is complete too: its file was
    /// renamed over, so it is kept (served from its kept copy, `--keep`) or dropped, and in
    /// either case never installed.
    pub(super) fn retire_superseded(&mut self, now: std::time::Instant) {
        let mut r = 0;
        while r < self.releases.len() {
            if !self.releases[r].release.is_complete() || !self.is_superseded(r) {
                r += 1;
                continue;
            }
            if self.is_kept(r) {
                self.serve_kept(r);
                r += 1;
                continue;
            }
            let (name, number) = (self.releases[r].release.name().to_owned(), self.releases[r].release.number());
            log::info!("{name} #{number}: replaced by a newer release, no longer served");
            self.remove_release(r, now);
        }
    }
}

/// The `*.flotilla` files in `dir`, sorted by name.
fn manifests_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    entries.retain(|path| {
        path.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".flotilla"))
            .is_some_and(|s| !s.is_empty())
    });
    Ok(entries)
}

/// Reads a manifest and checks that this device may act on it now.
fn load_manifest(path: &Path, acceptor: &Acceptor) -> Result<(SignedManifest, Deferred), ManifestError> {
    let m = SignedManifest::read_file(path)?;
    let deferred = acceptor.check(&m, wall_clock())?;
    if deferred == Deferred::Expiry {
        let at = m.manifest.expires.map(format_rfc3339).unwrap_or_default();
        log::warn!("{}: the clock is unset, so its expiry ({at}) is not checked", path.display());
    }
    Ok((m, deferred))
}

/// Seconds since the Unix epoch by the system clock (0 if it is before 1970).
pub(super) fn wall_clock() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
