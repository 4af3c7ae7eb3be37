//! Superseded releases kept for the peers still on them (`serve --keep N`, default 1).
//!
//! A device moving to a new release is often not the last of its fleet to: its neighbours on
//! the old one may still be fetching it (a device that was down, a staged rollout). So when a
//! newer release of a name starts replacing a complete one in place, the old file gets a second
//! name, `DIR/.flotilla-kept/NAME@R` (a hard link: no copy, and no extra flash until the new
//! file is renamed over `DIR/NAME`); its manifest was copied beside it, `NAME@R.flotilla`, when
//! the release was taken on (the one in `DIR` is the new release's by now). Once the new
//! release is whole, the old one goes on being served from there, never installed (an owed
//! hook is forgotten: a newer release supersedes a rollout), and the `N` newest kept releases of
//! each name stay; older ones go, with their files. At start the kept releases are taken on
//! again, checked by the trust rules like any manifest but not against the no-rollback history
//! (they are older by definition, and only served).

use super::{Agent, AgentError};
use crate::core::manifest::SignedManifest;
use crate::core::storage::Storage;
use crate::core::trust::Acceptor;
use crate::store::atomic::{remove_if_present, replace_file};
use crate::store::file::FileStore;
use crate::store::safe_fs::{self, DATA_MODE};
use std::path::{Path, PathBuf};

/// The folder of a data directory the kept releases live in.
pub(super) const KEPT_DIR: &str = ".flotilla-kept";

/// Where one release's kept copies are.
#[derive(Clone, Debug)]
pub(super) struct Kept {
    file: PathBuf,
    manifest: PathBuf,
    /// The file has its second name: the release can outlive its replacement.
    linked: bool,
    /// It is served from there now (its replacement is whole).
    serving: bool,
}

impl Kept {
    fn of(dir: &Path, name: &str, release: u64) -> Kept {
        let kept = dir.join(KEPT_DIR);
        Kept {
            file: kept.join(format!("{name}@{release}")),
            manifest: kept.join(format!("{name}@{release}.flotilla")),
            linked: false,
            serving: false,
        }
    }

    pub(super) fn remove(&self) {
        remove_if_present(&self.file);
        remove_if_present(&self.manifest);
    }
}

impl Agent {
    /// For a release of `dir` just taken on (`r`, from manifest `m`): copies its manifest into
    /// the kept folder, so that it can be kept once a newer one replaces it.
    pub(super) fn prepare_keep(&mut self, r: usize, dir: &Path, m: &SignedManifest) {
        if self.config.keep == 0 {
            return;
        }
        let kept = Kept::of(dir, &m.manifest.name, m.manifest.release);
        let written = safe_fs::create_private_dir(&dir.join(KEPT_DIR))
            .and_then(|()| replace_file(&kept.manifest, &m.bytes, DATA_MODE));
        match written {
            Ok(()) => self.releases[r].kept = Some(kept),
            Err(e) => log::warn!("{}: cannot keep a copy of its manifest ({e}); it will not be kept", m.manifest.name),
        }
    }

    /// Release `r`, complete at `DIR/NAME`, is about to be replaced in place: gives its file its
    /// second name. A failure only means it is not kept.
    pub(super) fn link_kept(&mut self, r: usize) {
        let h = &mut self.releases[r];
        let Some(kept) = h.kept.as_mut() else { return };
        remove_if_present(&kept.file);
        match std::fs::hard_link(h.release.store().path(), &kept.file) {
            Ok(()) => kept.linked = true,
            Err(e) => log::warn!(
                "{} #{}: cannot keep its file ({e}); it goes once replaced",
                h.release.name(),
                h.release.number()
            ),
        }
    }

    /// The superseded releases of each name to keep serving: the `--keep` newest ones whose
    /// file was kept. Anything else superseded is dropped (and its kept copies removed).
    pub(super) fn is_kept(&self, r: usize) -> bool {
        let h = &self.releases[r];
        if !h.kept.as_ref().is_some_and(|k| k.linked) {
            return false;
        }
        let newer_kept = self.releases.iter().filter(|o| {
            o.release.name() == h.release.name()
                && o.release.number() > h.release.number()
                && o.kept.as_ref().is_some_and(|k| k.linked)
        });
        newer_kept.count() < self.config.keep
    }

    /// Forgets release `r`'s kept copies (it is dropped for good).
    pub(super) fn drop_kept(&mut self, r: usize) {
        if let Some(k) = self.releases[r].kept.take() {
            k.remove();
        }
    }

    /// At start: takes on again the kept releases of `dir` (a file and its manifest each, older
    /// than the newest held of its name); removes what is left of any other.
    pub fn load_kept(&mut self, dir: &Path, acceptor: &Acceptor) {
        let Ok(entries) = std::fs::read_dir(dir.join(KEPT_DIR)) else { return };
        let mut manifests: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "flotilla"))
            .collect();
        manifests.sort();
        for path in manifests {
            let Ok(m) = SignedManifest::read_file(&path) else {
                log::warn!("removing {}: not a manifest", path.display());
                remove_if_present(&path);
                continue;
            };
            let kept = Kept::of(dir, &m.manifest.name, m.manifest.release);
            let newest =
                self.releases.iter().filter(|h| h.release.name() == m.manifest.name).map(|h| h.release.number()).max();
            let held = self.releases.iter().position(|h| *h.release.id() == m.swarm_id);
            if let Some(r) = held {
                // The live release's own copy, ready for when it is replaced.
                self.releases[r].kept = Some(kept);
                continue;
            }
            if !kept.file.exists() || newest.is_none_or(|n| n <= m.manifest.release) || self.config.keep == 0 {
                kept.remove();
                continue;
            }
            if let Err(e) = acceptor.check(&m, super::datadir::wall_clock()) {
                log::warn!("{}: dropping the kept release #{}: {e}", m.manifest.name, m.manifest.release);
                kept.remove();
                continue;
            }
            match self.add_kept(&m, &kept.file) {
                Ok(r) => {
                    self.releases[r].kept = Some(Kept { linked: true, serving: true, ..kept });
                    self.releases[r].manifest = Some(path.clone());
                    log::info!("{} #{}: kept for peers still on it", m.manifest.name, m.manifest.release);
                }
                Err(e) => {
                    log::warn!("{}: dropping the kept release #{}: {e}", m.manifest.name, m.manifest.release);
                    kept.remove();
                }
            }
        }
        // Keep no more than `--keep` of each name.
        while let Some(r) = (0..self.releases.len()).find(|&r| {
            self.releases[r].kept.as_ref().is_some_and(|k| k.linked) && self.is_superseded(r) && !self.is_kept(r)
        }) {
            self.drop_kept(r);
            self.remove_release(r, std::time::Instant::now());
        }
    }

    /// Adds a kept release: whole (its file hashed against the manifest), served only.
    pub(super) fn add_kept(&mut self, m: &SignedManifest, path: &Path) -> Result<usize, AgentError> {
        let (store, present) = FileStore::open(path, m)?;
        if !present.is_full() {
            return Err(AgentError::Manifest(crate::core::manifest::corrupt("the kept file is not whole")));
        }
        Ok(self.hold(m, store, &present))
    }

    /// Release `r`, superseded and kept: from now on only served (logged once; an owed hook is
    /// forgotten).
    pub(super) fn serve_kept(&mut self, r: usize) {
        let Some(k) = self.releases[r].kept.as_mut().filter(|k| !k.serving) else { return };
        k.serving = true;
        let h = &mut self.releases[r];
        h.hook = super::hooks::HookState::Idle;
        let (name, number, id) = (h.release.name().to_owned(), h.release.number(), *h.release.id());
        log::info!("{name} #{number}: replaced by a newer release; kept for peers still on it (--keep)");
        self.forget_hook(&id);
    }

    /// True if a newer release of release `r`'s name is held whole.
    pub(super) fn is_superseded(&self, r: usize) -> bool {
        let h = &self.releases[r];
        self.releases.iter().any(|n| {
            n.release.name() == h.release.name() && n.release.number() > h.release.number() && n.release.is_complete()
        })
    }
}
