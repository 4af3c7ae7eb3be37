//! Trust root files: the root a device trusts now, kept in `STATE_DIR/.flotilla-root`, and
//! the candidates it is offered (`--root` files, `*.flotilla-root` dropped in a data directory).
//!
//! The first root a device ever holds is the operator's word, like a `--trust` key: the
//! lowest-numbered root given with `--root`. From then on only a valid successor replaces it
//! (`core::trust::advance`), and the newest is written back atomically once the agent took it
//! up, so a restart never falls back to an older root.

use crate::core::manifest::ManifestError;
use crate::core::trust::{advance, SignedRoot, MAX_ROOT_BYTES, ROOT_MAGIC};
use crate::store::atomic::replace_file;
use crate::store::safe_fs::{self, PRIVATE_MODE};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Reads and decodes a root file.
pub fn read_root(path: &Path) -> Result<SignedRoot, ManifestError> {
    decode_root(path, &read_root_bytes(path)?)
}

/// A root file's bytes (at most one more than [`MAX_ROOT_BYTES`], which decoding refuses).
fn read_root_bytes(path: &Path) -> Result<Vec<u8>, ManifestError> {
    let io_err = |e: io::Error| ManifestError::BadRoot(format!("{}: {e}", path.display()));
    let mut bytes = Vec::new();
    safe_fs::open_read(path).and_then(|f| f.take(MAX_ROOT_BYTES as u64 + 1).read_to_end(&mut bytes)).map_err(io_err)?;
    Ok(bytes)
}

fn decode_root(path: &Path, bytes: &[u8]) -> Result<SignedRoot, ManifestError> {
    SignedRoot::decode(bytes).map_err(|e| match e {
        ManifestError::BadRoot(why) => ManifestError::BadRoot(format!("{}: {why}", path.display())),
        e => ManifestError::BadRoot(format!("{}: {e}", path.display())),
    })
}

/// True if `path` holds a trust root, told by its content (the root magic) whatever its name.
/// A file whose first bytes are no flotilla format's (a damaged or unreadable file) counts as
/// a root only if it is named `*.flotilla-root`, so that its error says what is wrong with it
/// as a root.
pub fn is_root_file(path: &Path) -> bool {
    let mut head = Vec::with_capacity(ROOT_MAGIC.len());
    let read = std::fs::File::open(path).and_then(|f| f.take(ROOT_MAGIC.len() as u64).read_to_end(&mut head));
    match read {
        Ok(_) if head == ROOT_MAGIC => true,
        Ok(_) if head.starts_with(b"FLOTMAN") => false, // a manifest, of any version
        _ => path.extension().is_some_and(|e| e == "flotilla-root"),
    }
}

/// The root a device trusts, and where it keeps it.
#[derive(Debug)]
pub struct RootKeeper {
    path: Option<PathBuf>,
    current: SignedRoot,
    /// Set when `current` was taken up since it was last kept: its floors are still to apply.
    fresh: bool,
    /// Roots refused already (SHA-256 of their bytes), so that a rescan does not log them again.
    refused: Vec<[u8; 32]>,
    /// Damaged root files of the data directory's last scan, likewise logged once.
    damaged: DamagedRoots,
}

impl RootKeeper {
    /// The root trusted now: the one kept in `state_dir` if there is one, else the lowest
    /// serial among `given`; then advanced through every valid successor among `given`.
    pub fn open(state_dir: Option<&Path>, given: &[PathBuf]) -> Result<RootKeeper, ManifestError> {
        let path = state_dir.map(|d| d.join(".flotilla-root"));
        let mut candidates = given.iter().map(|p| read_root(p)).collect::<Result<Vec<_>, _>>()?;
        let kept = match &path {
            Some(p) if p.exists() => Some(read_root(p)?),
            _ => None,
        };
        let fresh = kept.is_none();
        let anchor = match kept {
            Some(root) => root,
            None => {
                candidates.sort_by_key(|c| c.root.serial);
                if candidates.is_empty() {
                    return Err(ManifestError::BadRoot("no root given (--root FILE)".into()));
                }
                candidates.remove(0)
            }
        };
        let mut keeper =
            RootKeeper { path, current: anchor, fresh, refused: Vec::new(), damaged: DamagedRoots::default() };
        keeper.offer(candidates);
        Ok(keeper)
    }

    /// The root trusted now.
    pub fn current(&self) -> &SignedRoot {
        &self.current
    }

    /// True once after the root trusted now was taken up (first anchored or advanced): its
    /// floors apply then and only then, or a restart would lower the no-rollback record again.
    pub fn take_fresh(&mut self) -> bool {
        std::mem::take(&mut self.fresh)
    }

    /// Takes the newest valid successor among `candidates`; true if the root changed. Refused
    /// candidates are logged. The new root is kept only by [`RootKeeper::commit`], once its
    /// floors are applied: a crash in between takes it up again at the next start.
    /// [`RootKeeper::offer`] of the roots dropped in `dir` ([`roots_in`]).
    pub fn offer_dropped(&mut self, dir: &Path) -> bool {
        let found = roots_in(dir, &mut self.damaged);
        self.offer(found)
    }

    pub fn offer(&mut self, candidates: Vec<SignedRoot>) -> bool {
        let serial = self.current.root.serial;
        let digest = |bytes: &[u8]| -> [u8; 32] { <sha2::Sha256 as sha2::Digest>::digest(bytes).into() };
        let candidates: Vec<SignedRoot> =
            candidates.into_iter().filter(|c| !self.refused.contains(&digest(&c.bytes))).collect();
        let digests: Vec<(u64, [u8; 32])> = candidates.iter().map(|c| (c.root.serial, digest(&c.bytes))).collect();
        let (newest, refused) = advance(self.current.clone(), candidates);
        for (serial, e) in refused {
            log::warn!("root {serial} refused: {e}");
            // Remembered by content; bounded, as a directory holds few roots.
            if let Some(&(_, d)) = digests.iter().find(|(s, _)| *s == serial) {
                if self.refused.len() < 64 {
                    self.refused.push(d);
                }
            }
        }
        if newest.root.serial == serial {
            return false;
        }
        log::info!("trust root {} replaces root {serial}", newest.root.serial);
        self.current = newest;
        self.fresh = true;
        true
    }

    /// Keeps the root trusted now in the state directory (atomically), if there is one.
    pub fn commit(&self) -> Result<(), ManifestError> {
        let Some(path) = &self.path else { return Ok(()) };
        replace_file(path, &self.current.bytes, PRIVATE_MODE)
            .map_err(|e| ManifestError::BadRoot(format!("cannot write {}: {e}", path.display())))
    }
}

/// The damaged root files of a directory's latest scan, as digests of (name, content or read
/// error): a rescan that finds a file as it was says nothing again, as refused roots are logged
/// once; a file rewritten, still damaged, is warned about once more. Only the latest scan's
/// are kept, so this stays as small as the directory.
#[derive(Debug, Default)]
pub struct DamagedRoots(Vec<[u8; 32]>);

/// The `*.flotilla-root` files in `dir`, decoded; damaged ones are skipped, and logged once
/// each (again only if they change) by what `damaged` remembers of the last scan.
pub fn roots_in(dir: &Path, damaged: &mut DamagedRoots) -> Vec<SignedRoot> {
    use sha2::{Digest, Sha256};
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let known = std::mem::take(&mut damaged.0);
    let (mut roots, mut now) = (Vec::new(), Vec::new());
    for path in entries.flatten().map(|e| e.path()) {
        if path.extension().is_some_and(|e| e == "flotilla-root") {
            let digest = |what: &[u8]| -> [u8; 32] {
                let name = path.as_os_str().as_encoded_bytes();
                Sha256::new().chain_update(name).chain_update([0]).chain_update(what).finalize().into()
            };
            let (decoded, seen) = match read_root_bytes(&path) {
                Ok(bytes) => (decode_root(&path, &bytes), digest(&bytes)),
                Err(e) => {
                    let seen = digest(e.to_string().as_bytes());
                    (Err(e), seen)
                }
            };
            match decoded {
                Ok(r) => roots.push(r),
                Err(e) => {
                    if !known.contains(&seen) {
                        log::warn!("{e}");
                    }
                    now.push(seen);
                }
            }
        }
    }
    damaged.0 = now;
    roots
}
