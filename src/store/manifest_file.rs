//! Manifest and key files: publishing an image (hashing it from disk), reading and writing
//! manifests and ed25519 key files, and checking an image on disk against its manifest.
//!
//! The formats and every check on them are the core's (`core::manifest`); this module only
//! moves their bytes to and from files, so that the core never opens one.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::core::manifest::{
    chunk_count, corrupt, from_hex32, io_err, to_hex, valid_chunk_size, valid_name, Hash, Manifest, ManifestError,
    PublicKey, SecretKey, SignedManifest, MAX_CHUNKS, MAX_KEY_FILE, MAX_MANIFEST_BYTES, SECRET_PREFIX,
};

/// Read size when hashing a file: few syscalls, little RAM.
const READ_BUF: usize = 64 * 1024;

impl SignedManifest {
    /// Hashes `file` (streaming, 64 KiB buffer, never whole file in RAM), signs with `secret`.
    pub fn publish(
        file: &Path,
        name: &str,
        release: u64,
        chunk_size: u32,
        secret: &SecretKey,
    ) -> Result<SignedManifest, ManifestError> {
        let draft = Manifest { name: name.to_owned(), release, chunk_size, ..Manifest::default() };
        Self::publish_draft(file, draft, &[secret])
    }

    /// [`SignedManifest::publish`] with every field the operator chooses: `draft` gives the name,
    /// release, chunk size, expiry and targets; the file's size and hashes are filled in here.
    /// Signed by each of `secrets`.
    pub fn publish_draft(
        file: &Path,
        draft: Manifest,
        secrets: &[&SecretKey],
    ) -> Result<SignedManifest, ManifestError> {
        let (name, chunk_size) = (&draft.name, draft.chunk_size);
        if !valid_name(name) {
            return Err(ManifestError::InvalidName(name.to_string()));
        }
        if !valid_chunk_size(chunk_size) {
            return Err(ManifestError::InvalidChunkSize(chunk_size));
        }
        // Refuse early from the metadata, so a huge file is not hashed only to be refused.
        let size = std::fs::metadata(file).map_err(io_err("read", file))?.len();
        check_publishable(file, size, chunk_size)?;
        let mut chunk_hashes = Vec::with_capacity(chunk_count(size, chunk_size) as usize);
        let (file_size, file_hash) = hash_chunks(file, chunk_size, |_, hash| {
            // The file may grow while we read it; the cap holds anyway.
            if chunk_hashes.len() >= MAX_CHUNKS as usize {
                return Err(ManifestError::TooManyChunks(chunk_size));
            }
            chunk_hashes.push(hash);
            Ok(())
        })?;
        check_publishable(file, file_size, chunk_size)?;
        SignedManifest::sign(Manifest { file_size, file_hash, chunk_hashes, ..draft }, secrets)
    }

    /// Reads and decodes a manifest file, refusing one over `MAX_MANIFEST_BYTES` unread.
    pub fn read_file(path: &Path) -> Result<SignedManifest, ManifestError> {
        let bytes = read_capped(path, MAX_MANIFEST_BYTES as u64)?.ok_or(corrupt("too large"))?;
        SignedManifest::decode(&bytes)
    }

    /// Streams `file` and checks its size, every chunk hash and the whole-file hash; the error
    /// names the first chunk that differs.
    pub fn verify_file(&self, file: &Path) -> Result<(), ManifestError> {
        let m = &self.manifest;
        let size_error = |actual| ManifestError::SizeMismatch { path: file.into(), actual, expected: m.file_size };
        let size = std::fs::metadata(file).map_err(io_err("read", file))?.len();
        if size != m.file_size {
            return Err(size_error(size));
        }
        let (size, hash) = hash_chunks(file, m.chunk_size, |i, hash| match m.chunk_hashes.get(i) {
            Some(expected) if *expected == hash => Ok(()),
            Some(_) => Err(ManifestError::ChunkMismatch { path: file.into(), chunk: i as u32 }),
            None => Ok(()), // grew while we read it: the size check below says so
        })?;
        if size != m.file_size {
            return Err(size_error(size));
        }
        match hash == m.file_hash {
            true => Ok(()),
            false => Err(ManifestError::HashMismatch(file.into())),
        }
    }
}

impl PublicKey {
    /// Parses a `--trust` argument: 64 hex characters, or else the path of a file holding them
    /// (surrounding whitespace ignored).
    pub fn parse_arg(s: &str) -> Result<PublicKey, ManifestError> {
        if let Some(key) = from_hex32(s) {
            return Ok(PublicKey(key));
        }
        let path = Path::new(s);
        if !path.exists() {
            return Err(ManifestError::BadPublicKey(s.to_string()));
        }
        let text = read_capped(path, MAX_KEY_FILE)?.unwrap_or_default();
        PublicKey::parse(&text).ok_or_else(|| ManifestError::BadPublicKey(s.to_string()))
    }
}

impl SecretKey {
    /// A new random key, from 32 bytes of /dev/urandom.
    pub fn generate() -> Result<SecretKey, ManifestError> {
        let urandom = Path::new("/dev/urandom");
        let mut seed = [0; 32];
        File::open(urandom).and_then(|mut f| f.read_exact(&mut seed)).map_err(io_err("read", urandom))?;
        SecretKey::from_seed(seed).ok_or_else(|| ManifestError::BadSecretKey(urandom.into()))
    }

    /// Writes a new key file, mode 0600, refusing to replace an existing file. The format is one
    /// line, `flotilla-secret-key-v1 <64 hex of the seed>`; the prefix keeps a public key file
    /// from being mistaken for it, and the other way round.
    pub fn write_file(&self, path: &Path) -> Result<(), ManifestError> {
        let mut file = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(ManifestError::KeyExists(path.into())),
            other => other.map_err(io_err("create", path))?,
        };
        let line = format!("{SECRET_PREFIX}{}\n", to_hex(&self.seed));
        file.write_all(line.as_bytes()).and_then(|()| file.sync_all()).map_err(io_err("write", path))
    }

    /// Reads a key file written by `write_file`.
    pub fn read_file(path: &Path) -> Result<SecretKey, ManifestError> {
        let text = read_capped(path, MAX_KEY_FILE)?.unwrap_or_default();
        let key = SecretKey::parse(&text).ok_or_else(|| ManifestError::BadSecretKey(path.into()))?;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            log::warn!("{} is readable by other users; chmod 600 it", path.display());
        }
        Ok(key)
    }
}

fn check_publishable(file: &Path, size: u64, chunk_size: u32) -> Result<(), ManifestError> {
    if size == 0 {
        return Err(ManifestError::EmptyFile(file.into()));
    }
    match chunk_count(size, chunk_size) > u64::from(MAX_CHUNKS) {
        true => Err(ManifestError::TooManyChunks(chunk_size)),
        false => Ok(()),
    }
}

/// Reads `file` once in 64 KiB steps, handing each chunk's index and SHA-256 to `on_chunk` in
/// order. Returns the number of bytes read and the SHA-256 of all of them.
fn hash_chunks(
    file: &Path,
    chunk_size: u32,
    mut on_chunk: impl FnMut(usize, Hash) -> Result<(), ManifestError>,
) -> Result<(u64, Hash), ManifestError> {
    let mut f = File::open(file).map_err(io_err("read", file))?;
    let mut buf = vec![0; READ_BUF];
    let (mut whole, mut chunk) = (Sha256::new(), Sha256::new());
    let (mut total, mut filled, mut index) = (0u64, 0usize, 0usize);
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", file)(e)),
        };
        total += n as u64;
        whole.update(&buf[..n]);
        // A read may end inside a chunk or span the end of one; split it at chunk boundaries.
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let take = rest.len().min(chunk_size as usize - filled);
            chunk.update(&rest[..take]);
            (rest, filled) = (&rest[take..], filled + take);
            if filled == chunk_size as usize {
                on_chunk(index, chunk.finalize_reset().into())?;
                (index, filled) = (index + 1, 0);
            }
        }
    }
    if filled > 0 {
        on_chunk(index, chunk.finalize().into())?;
    }
    Ok((total, whole.finalize().into()))
}

/// Reads a whole file if it is at most `cap` bytes; `None` if it is larger.
fn read_capped(path: &Path, cap: u64) -> Result<Option<Vec<u8>>, ManifestError> {
    let file = File::open(path).map_err(io_err("read", path))?;
    let size = file.metadata().map_err(io_err("read", path))?.len();
    if size > cap {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // take() guards against a file that grows between the metadata call and the read.
    file.take(cap + 1).read_to_end(&mut bytes).map_err(io_err("read", path))?;
    Ok((bytes.len() as u64 <= cap).then_some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::manifest::*;
    use crate::core::trust::{parse_rfc3339, Acceptor, Deferred, TrustPolicy};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("flotilla-mf-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, data: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, data).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_seed([seed; 32]).unwrap()
    }

    /// Three full 16 KiB chunks and a short fourth, with every chunk's contents distinct.
    fn image() -> Vec<u8> {
        (0..3 * MIN_CHUNK_SIZE as usize + 1000).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn published(dir: &TempDir) -> (PathBuf, SignedManifest) {
        let file = dir.write("fw.img", &image());
        let signed = SignedManifest::publish(&file, "fw.img", 7, MIN_CHUNK_SIZE, &key(1)).unwrap();
        (file, signed)
    }

    #[test]
    fn publish_decode_round_trip() {
        let dir = TempDir::new();
        let (file, signed) = published(&dir);
        let m = &signed.manifest;
        assert_eq!((m.chunk_count(), m.file_size, m.release), (4, image().len() as u64, 7));
        assert_eq!((m.chunk_offset(3), m.chunk_len(3), m.chunk_len(0)), (3 * 16384, 1000, 16384));
        assert_eq!(m.chunk_hashes[1], sha256(&image()[16384..32768]));
        assert_eq!(m.file_hash, sha256(&image()));
        assert_eq!(signed.signers, [key(1).public()]);
        let decoded = SignedManifest::decode(&signed.bytes).unwrap();
        assert_eq!(decoded.manifest, signed.manifest);
        let signed_part = signed.bytes.len() - 1 - 96;
        assert_eq!(decoded.swarm_id, sha256(&signed.bytes[..signed_part]), "the swarm id leaves the signatures out");
        assert_eq!(signed.swarm_id, decoded.swarm_id);
        let path = dir.write("fw.img.flotilla", &signed.bytes);
        assert_eq!(SignedManifest::read_file(&path).unwrap().manifest, signed.manifest);
        signed.verify_file(&file).unwrap();
    }

    /// A chunk spanning several 64 KiB reads hashes the same as one read of it.
    #[test]
    fn chunks_larger_than_the_read_buffer_hash_correctly() {
        let dir = TempDir::new();
        let data: Vec<u8> = (0..200 * 1024u32).map(|i| (i % 251) as u8).collect();
        let file = dir.write("big", &data);
        let signed = SignedManifest::publish(&file, "big", 1, 128 * 1024, &key(1)).unwrap();
        let hashes = [sha256(&data[..128 * 1024]), sha256(&data[128 * 1024..])];
        assert_eq!(signed.manifest.chunk_hashes, hashes);
        assert_eq!(signed.manifest.chunk_len(1), 72 * 1024);
        signed.verify_file(&file).unwrap();
    }

    /// Pins the byte layout documented at the top of this module (and in docs/PROTOCOL.md).
    #[test]
    fn encoding_matches_the_documented_layout() {
        let dir = TempDir::new();
        let SignedManifest { manifest: m, bytes, .. } = published(&dir).1;
        let mut body = vec![2, 6]; // version 2, name length 6
        body.extend_from_slice(b"fw.img");
        body.extend_from_slice(&[7, 0xe8, 0x87, 0x03, 0x80, 0x80, 0x01]); // varints 7, 50152, 16384
        body.extend_from_slice(&m.file_hash);
        body.extend_from_slice(&[0x80, 0x01]); // 128 = 4 hashes of 32 bytes
        body.extend_from_slice(m.chunk_hashes.as_flattened());
        body.extend_from_slice(&[0, 0]); // expires: None; targets: none
        let mut signed = MAGIC.to_vec();
        signed.extend_from_slice(&(body.len() as u32).to_le_bytes());
        signed.extend_from_slice(&body);
        assert_eq!(&bytes[..signed.len()], &signed[..]);
        let rest = &bytes[signed.len()..];
        assert_eq!((rest.len(), rest[0]), (1 + 96, 1), "one signature entry: key, signature");
        assert_eq!(&rest[1..33], &key(1).public().0);
        let signature = ed25519_compact::Signature::from_slice(&rest[33..]).unwrap();
        ed25519_compact::PublicKey::new(key(1).public().0).verify(&signed, &signature).unwrap();
    }

    #[test]
    fn every_flipped_byte_truncation_and_trailing_byte_is_refused() {
        let dir = TempDir::new();
        let bytes = published(&dir).1.bytes;
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(SignedManifest::decode(&bad).is_err(), "flip at {i} accepted");
        }
        for len in 0..bytes.len() {
            assert!(SignedManifest::decode(&bytes[..len]).is_err(), "truncation to {len} accepted");
        }
        let mut long = bytes.clone();
        long.push(0);
        let err = SignedManifest::decode(&long).unwrap_err();
        assert_eq!(err.to_string(), "manifest is corrupt: trailing bytes");
        let err = SignedManifest::decode(b"GARBAGE!and more").unwrap_err();
        assert_eq!(err.to_string(), "not a flotilla manifest (bad magic)");
    }

    #[test]
    fn oversized_manifest_file_is_refused_before_reading() {
        let dir = TempDir::new();
        let path = dir.write("big.flotilla", &vec![0; MAX_MANIFEST_BYTES + 1]);
        let err = SignedManifest::read_file(&path).unwrap_err();
        assert_eq!(err.to_string(), "manifest is corrupt: too large");
        assert!(err.is_bad_input());
    }

    #[test]
    fn trust_is_checked_against_the_signers_and_the_threshold() {
        let dir = TempDir::new();
        let signed = published(&dir).1;
        let policy =
            |keys: &[u8], threshold| TrustPolicy::new(keys.iter().map(|&k| key(k).public()).collect(), threshold);
        policy(&[2, 1], 1).unwrap().check(&signed).unwrap();
        let err = policy(&[2], 1).unwrap().check(&signed).unwrap_err();
        assert!(err.to_string().contains(&key(1).public().to_hex()), "{err}");
        assert!(err.is_bad_input());
        let err = policy(&[1, 2], 2).unwrap().check(&signed).unwrap_err();
        assert_eq!(err.to_string(), "manifest is signed by 1 trusted key(s); 2 must sign (--threshold)");

        // Two operators sign: the threshold of two is met, and the swarm id is the same release's.
        let file = dir.write("fw2.img", &image());
        let draft = Manifest { name: "fw.img".into(), release: 7, chunk_size: MIN_CHUNK_SIZE, ..Manifest::default() };
        let both = SignedManifest::publish_draft(&file, draft, &[&key(1), &key(2)]).unwrap();
        assert_eq!(both.signers, [key(1).public(), key(2).public()]);
        policy(&[1, 2, 3], 2).unwrap().check(&both).unwrap();
        assert_eq!(both.swarm_id, signed.swarm_id, "signatures are not part of the swarm id");
        let draft = Manifest { name: "fw.img".into(), release: 7, chunk_size: MIN_CHUNK_SIZE, ..Manifest::default() };
        assert!(SignedManifest::publish_draft(&file, draft, &[&key(1), &key(1)]).is_err(), "a key signs once");
    }

    #[test]
    fn expiry_and_targets_are_signed_and_judged_by_the_device() {
        let dir = TempDir::new();
        let file = dir.write("fw.img", &image());
        let at = parse_rfc3339("2027-06-30T00:00:00Z").unwrap();
        let targets = vec!["rpi4-arm64".to_string(), "openwrt-ath79-generic".to_string()];
        let draft = Manifest {
            name: "fw.img".into(),
            release: 3,
            chunk_size: MIN_CHUNK_SIZE,
            expires: Some(at),
            targets,
            ..Manifest::default()
        };
        let m = SignedManifest::publish_draft(&file, draft, &[&key(1)]).unwrap();
        let m = SignedManifest::decode(&m.bytes).unwrap();
        assert_eq!(m.manifest.expires, Some(at));
        let device = |targets: &[&str]| Acceptor {
            policy: TrustPolicy::new(vec![key(1).public()], 1).unwrap(),
            targets: targets.iter().map(|t| t.to_string()).collect(),
        };
        let rpi = device(&["rpi4-arm64"]);
        assert_eq!(rpi.check(&m, at - 1).unwrap(), Deferred::Nothing);
        let err = rpi.check(&m, at).unwrap_err();
        assert_eq!(err.to_string(), "manifest expired at 2027-06-30T00:00:00Z");
        assert_eq!(rpi.check(&m, 1000).unwrap(), Deferred::Expiry, "an unset clock defers, not refuses");
        let err = device(&["x86-64"]).check(&m, at - 1).unwrap_err();
        assert!(err.to_string().contains("not for this device (x86-64)"), "{err}");
        let err = device(&[]).check(&m, at - 1).unwrap_err();
        assert!(err.to_string().contains("names no --target"), "{err}");
    }

    #[test]
    fn bad_names_and_chunk_sizes_are_refused_at_publish() {
        let dir = TempDir::new();
        let file = dir.write("fw.img", &image());
        let long = "a".repeat(65);
        for name in ["", "a/b", &long, "..", ".", "ü", "a b"] {
            let err = SignedManifest::publish(&file, name, 1, DEFAULT_CHUNK_SIZE, &key(1));
            assert!(matches!(err, Err(ManifestError::InvalidName(_))), "{name:?}");
        }
        assert!(SignedManifest::publish(&file, &long[1..], 1, DEFAULT_CHUNK_SIZE, &key(1)).is_ok());
        for size in [0, 1000, MIN_CHUNK_SIZE / 2, MIN_CHUNK_SIZE + 1, MAX_CHUNK_SIZE * 2] {
            let err = SignedManifest::publish(&file, "fw", 1, size, &key(1)).unwrap_err();
            let want = format!("chunk size {size} is invalid: a power of two from 16384 to 4194304");
            assert_eq!(err.to_string(), want);
        }
        let empty = dir.write("empty", b"");
        let err = SignedManifest::publish(&empty, "e", 1, MIN_CHUNK_SIZE, &key(1)).unwrap_err();
        assert!(matches!(err, ManifestError::EmptyFile(_)));
        let err = SignedManifest::publish(&dir.0.join("missing"), "m", 1, MIN_CHUNK_SIZE, &key(1));
        assert!(!err.unwrap_err().is_bad_input());
    }

    #[test]
    fn verify_file_names_the_first_differing_chunk_and_a_wrong_size() {
        let dir = TempDir::new();
        let signed = published(&dir).1;
        let mut data = image();
        data[2 * 16384 + 5] ^= 0xff;
        data[3 * 16384 + 5] ^= 0xff;
        let err = signed.verify_file(&dir.write("changed", &data)).unwrap_err();
        assert!(err.to_string().ends_with("does not match the release: chunk 2 differs"), "{err}");
        data = image();
        data.push(0);
        let err = signed.verify_file(&dir.write("longer", &data)).unwrap_err();
        assert!(matches!(err, ManifestError::SizeMismatch { .. }), "{err}");
        let err = signed.verify_file(&dir.write("shorter", &data[..100])).unwrap_err();
        assert!(matches!(err, ManifestError::SizeMismatch { actual: 100, .. }), "{err}");
    }

    #[test]
    fn public_keys_parse_from_hex_or_file() {
        let dir = TempDir::new();
        let public = key(3).public();
        assert_eq!(PublicKey::parse_arg(&public.to_hex()).unwrap(), public);
        let path = dir.write("key.pub", format!("\n  {}\n", public.to_hex()).as_bytes());
        assert_eq!(PublicKey::parse_arg(path.to_str().unwrap()).unwrap(), public);
        let mut bad = public.to_hex();
        bad.replace_range(10..11, "g");
        for arg in [bad.as_str(), &public.to_hex()[1..], "", "/nonexistent/key.pub"] {
            let err = PublicKey::parse_arg(arg).unwrap_err();
            assert!(matches!(err, ManifestError::BadPublicKey(_)), "{arg:?}");
        }
        let wrong = dir.write("wrong.pub", b"not a key");
        assert!(PublicKey::parse_arg(wrong.to_str().unwrap()).is_err());
    }

    #[test]
    fn secret_key_file_round_trips_with_mode_0600_and_is_never_overwritten() {
        let dir = TempDir::new();
        let path = dir.0.join("op.key");
        let secret = SecretKey::generate().unwrap();
        assert_ne!(secret.public(), SecretKey::generate().unwrap().public());
        secret.write_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(SecretKey::read_file(&path).unwrap().public(), secret.public());
        let err = key(4).write_file(&path).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(SecretKey::read_file(&path).unwrap().public(), secret.public());
        // A public key file is not a secret key file.
        let public = dir.write("op.pub", secret.public().to_hex().as_bytes());
        assert!(matches!(SecretKey::read_file(&public), Err(ManifestError::BadSecretKey(_))));
    }

    #[test]
    fn hex_round_trips() {
        let bytes: Vec<u8> = (0..32).map(|i| i * 8 + 3).collect();
        let hex = to_hex(&bytes);
        assert_eq!(&hex[..6], "030b13");
        assert_eq!(from_hex32(&hex).unwrap().as_slice(), bytes.as_slice());
        assert_eq!(from_hex32(&hex.to_uppercase()).unwrap().as_slice(), bytes.as_slice());
    }
}
