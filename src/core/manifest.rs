//! The release manifest: building it from a file, signing, encoding, decoding and checking it,
//! plus the operator's ed25519 keys.
//!
//! A manifest is what a device trusts instead of the peers it downloads from: every chunk a peer
//! sends is checked against a hash in here, and the manifest itself against a key given with
//! `--trust`. Decoding is total and checks every length before allocating, because a manifest
//! may arrive from anyone. This module never touches the network; it reads and writes only the
//! files it is handed (the image, the manifest, key files).
//!
//! File format (all of it is signed except the signature; the swarm id is SHA-256 of the file):
//!
//! ```text
//! magic      8 bytes   "FLOTMAN1"
//! body_len   u32 LE    length of body
//! body       postcard  version: u16 (= 1, varint), name: str (varint length + UTF-8),
//!                      release: u64 (varint), file_size: u64 (varint), chunk_size: u32 (varint),
//!                      file_hash: 32 bytes, chunk_hashes: bytes (varint length 32*n, then n
//!                      SHA-256 hashes in chunk order), signer: 32 bytes (ed25519 public key)
//! signature  64 bytes  ed25519 by `signer` over magic ‖ body_len ‖ body
//! ```
//!
//! Nothing may follow the signature. A reader refuses a file over `MAX_MANIFEST_BYTES`, an
//! unknown version, a bad signature, and any field out of range: name `[A-Za-z0-9._-]{1,64}` but
//! not `.` or `..`; chunk size a power of two in 16 KiB..=4 MiB; file size at least 1;
//! n = ceil(file_size / chunk_size) and at most `MAX_CHUNKS`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];
/// The name of a release on the wire: SHA-256 of its manifest file.
pub type SwarmId = [u8; 32];
/// Smallest chunk size: below this the manifest grows faster than scheduling gains.
pub const MIN_CHUNK_SIZE: u32 = 16 * 1024;
/// Largest chunk size: a bad chunk costs a whole re-download of it.
pub const MAX_CHUNK_SIZE: u32 = 4 * 1024 * 1024;
/// Chunk size used when the operator does not choose one.
pub const DEFAULT_CHUNK_SIZE: u32 = 256 * 1024;
/// Chunk count cap: keeps the manifest (32 bytes per chunk) and a bitfield frame bounded.
pub const MAX_CHUNKS: u32 = 1 << 17; // bitfield = 16 KiB = one block
/// Longest release name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Largest manifest file. The fields other than chunk hashes take at most 237 bytes
/// (magic, length, varints at their widest, a 64-byte name, keys, signature); 512 leaves slack.
pub const MAX_MANIFEST_BYTES: usize = MAX_CHUNKS as usize * 32 + 512;

const MAGIC: &[u8; 8] = b"FLOTMAN1";
const VERSION: u16 = 1;
const HEADER_LEN: usize = 12;
const SIGNATURE_LEN: usize = 64;
const READ_BUF: usize = 64 * 1024;
const SECRET_PREFIX: &str = "flotilla-secret-key-v1 ";
/// Key files are one short line; anything bigger is not one, so it is not read into memory.
const MAX_KEY_FILE: u64 = 1024;

/// The signed description of one release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Release name, `[A-Za-z0-9._-]`, 1..=64 bytes, not `.` or `..`.
    pub name: String,
    /// Release number; higher is newer.
    pub release: u64,
    /// Size of the file in bytes, at least 1.
    pub file_size: u64,
    /// Chunk size: a power of two in `MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE`.
    pub chunk_size: u32,
    /// SHA-256 of the whole file.
    pub file_hash: Hash,
    /// SHA-256 of each chunk, `ceil(file_size / chunk_size)` of them.
    pub chunk_hashes: Vec<Hash>,
    /// The ed25519 public key that signed the manifest.
    pub signer: [u8; 32],
}

impl Manifest {
    /// Number of chunks in the file.
    pub fn chunk_count(&self) -> u32 {
        // Bounded by MAX_CHUNKS when built or decoded, so this cannot truncate.
        self.chunk_hashes.len() as u32
    }

    /// Byte offset of `chunk` in the file.
    pub fn chunk_offset(&self, chunk: u32) -> u64 {
        u64::from(chunk) * u64::from(self.chunk_size)
    }

    /// Length of `chunk`: the chunk size, less for the last chunk, 0 past the end.
    pub fn chunk_len(&self, chunk: u32) -> u32 {
        let left = self.file_size.saturating_sub(self.chunk_offset(chunk));
        left.min(u64::from(self.chunk_size)) as u32
    }
}

/// The encoded body; borrowed so decoding allocates nothing per hash.
#[derive(Serialize, Deserialize)]
struct ManifestBody<'a> {
    version: u16,
    name: &'a str,
    release: u64,
    file_size: u64,
    chunk_size: u32,
    file_hash: Hash,
    // serde's default would encode a slice as a sequence of u8; postcard writes that
    // identically, but saying "bytes" makes the format obvious and the encoder fast.
    #[serde(serialize_with = "as_bytes")]
    chunk_hashes: &'a [u8],
    signer: [u8; 32],
}

fn as_bytes<S: Serializer>(bytes: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

/// A manifest that decoded and whose signature checked, with its exact bytes and swarm id.
#[derive(Clone, Debug)]
pub struct SignedManifest {
    /// The decoded fields.
    pub manifest: Manifest,
    /// The exact file contents.
    pub bytes: Vec<u8>,
    /// SHA-256 of `bytes`.
    pub swarm_id: SwarmId,
}

impl SignedManifest {
    /// Hashes `file` (streaming, 64 KiB buffer, never whole file in RAM), signs with `secret`.
    pub fn publish(
        file: &Path,
        name: &str,
        release: u64,
        chunk_size: u32,
        secret: &SecretKey,
    ) -> Result<SignedManifest, ManifestError> {
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
        let manifest = Manifest {
            name: name.to_string(),
            release,
            file_size,
            chunk_size,
            file_hash,
            chunk_hashes,
            signer: secret.public().0,
        };
        let bytes = seal(&body_of(&manifest), secret)?;
        let swarm_id = sha256(&bytes);
        Ok(SignedManifest { manifest, bytes, swarm_id })
    }

    /// Parses and checks a manifest file: magic, lengths (before allocating), version, the
    /// signature by the embedded signer, then every field. Any damage is an error.
    pub fn decode(bytes: &[u8]) -> Result<SignedManifest, ManifestError> {
        let (signed, signature) = split(bytes)?;
        let body = parse_body(&signed[HEADER_LEN..])?;
        let key = ed25519_compact::PublicKey::new(body.signer);
        let signature = ed25519_compact::Signature::from_slice(signature).map_err(|_| corrupt("truncated"))?;
        key.verify(signed, &signature).map_err(|_| corrupt("bad signature"))?;
        let manifest = check_fields(&body)?;
        Ok(SignedManifest { manifest, bytes: bytes.to_vec(), swarm_id: sha256(bytes) })
    }

    /// Reads and decodes a manifest file, refusing one over `MAX_MANIFEST_BYTES` unread.
    pub fn read_file(path: &Path) -> Result<SignedManifest, ManifestError> {
        let bytes = read_capped(path, MAX_MANIFEST_BYTES as u64)?.ok_or(corrupt("too large"))?;
        SignedManifest::decode(&bytes)
    }

    /// Ok if the signer is among `trusted`; otherwise `Untrusted`, naming the signer in hex.
    pub fn check_trust(&self, trusted: &[PublicKey]) -> Result<(), ManifestError> {
        match trusted.iter().any(|key| key.0 == self.manifest.signer) {
            true => Ok(()),
            false => Err(ManifestError::Untrusted(PublicKey(self.manifest.signer))),
        }
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

fn check_publishable(file: &Path, size: u64, chunk_size: u32) -> Result<(), ManifestError> {
    if size == 0 {
        return Err(ManifestError::EmptyFile(file.into()));
    }
    match chunk_count(size, chunk_size) > u64::from(MAX_CHUNKS) {
        true => Err(ManifestError::TooManyChunks(chunk_size)),
        false => Ok(()),
    }
}

fn body_of(m: &Manifest) -> ManifestBody<'_> {
    ManifestBody {
        version: VERSION,
        name: &m.name,
        release: m.release,
        file_size: m.file_size,
        chunk_size: m.chunk_size,
        file_hash: m.file_hash,
        chunk_hashes: m.chunk_hashes.as_flattened(),
        signer: m.signer,
    }
}

/// Encodes `body` and appends the signature: the whole manifest file.
fn seal(body: &ManifestBody, secret: &SecretKey) -> Result<Vec<u8>, ManifestError> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.chunk_hashes.len() + 256);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0; 4]);
    let mut out = postcard::to_extend(body, out).map_err(|_| corrupt("cannot be encoded"))?;
    let body_len = u32::try_from(out.len() - HEADER_LEN).map_err(|_| corrupt("too large"))?;
    out[8..HEADER_LEN].copy_from_slice(&body_len.to_le_bytes());
    let signature = secret.keypair.sk.sign(&out, None);
    out.extend_from_slice(signature.as_ref());
    Ok(out)
}

/// Splits a manifest file into (signed part, signature) after checking its lengths; the body
/// is the signed part after the header.
fn split(bytes: &[u8]) -> Result<(&[u8], &[u8]), ManifestError> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(corrupt("too large"));
    }
    let head = &bytes[..bytes.len().min(MAGIC.len())];
    if head != &MAGIC[..head.len()] {
        return Err(ManifestError::BadMagic);
    }
    let Some(len) = bytes.get(8..HEADER_LEN) else {
        return Err(corrupt("truncated"));
    };
    let body_len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as u64;
    let total = HEADER_LEN as u64 + body_len + SIGNATURE_LEN as u64;
    match (bytes.len() as u64).cmp(&total) {
        std::cmp::Ordering::Less => return Err(corrupt("truncated")),
        std::cmp::Ordering::Greater => return Err(corrupt("trailing bytes")),
        std::cmp::Ordering::Equal => {}
    }
    let (signed, signature) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
    Ok((signed, signature))
}

fn parse_body(body: &[u8]) -> Result<ManifestBody<'_>, ManifestError> {
    // The version comes first and alone, so a future layout is named, not called garbage.
    let (version, _) = postcard::take_from_bytes::<u16>(body).map_err(|_| corrupt("truncated"))?;
    if version != VERSION {
        return Err(ManifestError::UnsupportedVersion(version));
    }
    match postcard::take_from_bytes::<ManifestBody>(body) {
        Ok((body, [])) => Ok(body),
        Ok(_) => Err(corrupt("trailing bytes in body")),
        Err(_) => Err(corrupt("undecodable body")),
    }
}

/// Checks the fields a signer vouched for, then copies them out.
fn check_fields(body: &ManifestBody) -> Result<Manifest, ManifestError> {
    if !valid_name(body.name) {
        return Err(ManifestError::InvalidName(body.name.to_string()));
    }
    if !valid_chunk_size(body.chunk_size) {
        return Err(ManifestError::InvalidChunkSize(body.chunk_size));
    }
    if body.file_size == 0 {
        return Err(corrupt("file size is zero"));
    }
    let count = chunk_count(body.file_size, body.chunk_size);
    if count > u64::from(MAX_CHUNKS) || body.chunk_hashes.len() as u64 != count * 32 {
        return Err(corrupt("chunk count does not match file size"));
    }
    Ok(Manifest {
        name: body.name.to_string(),
        release: body.release,
        file_size: body.file_size,
        chunk_size: body.chunk_size,
        file_hash: body.file_hash,
        chunk_hashes: body.chunk_hashes.chunks_exact(32).map(to_hash).collect(),
        signer: body.signer,
    })
}

fn to_hash(bytes: &[u8]) -> Hash {
    let mut hash = [0; 32];
    hash.copy_from_slice(bytes);
    hash
}

fn chunk_count(file_size: u64, chunk_size: u32) -> u64 {
    file_size.div_ceil(u64::from(chunk_size))
}

fn valid_chunk_size(size: u32) -> bool {
    size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size)
}

/// True if `name` is a valid release name: 1-64 of `A-Z a-z 0-9 . _ -`, not `.` or `..`.
pub fn valid_name(name: &str) -> bool {
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    (1..=MAX_NAME_LEN).contains(&name.len()) && name != "." && name != ".." && name.bytes().all(|b| allowed(&b))
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

fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
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

/// An ed25519 public key: what `--trust` names and a manifest's signer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

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
        let text = String::from_utf8_lossy(&text);
        from_hex32(text.trim()).map(PublicKey).ok_or_else(|| ManifestError::BadPublicKey(s.to_string()))
    }

    /// The key as 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }
}

/// An ed25519 secret key: the operator's signing key. Not `Debug`, so it cannot be logged.
pub struct SecretKey {
    seed: [u8; 32],
    // Derived once, so signing and `public()` cannot fail later.
    keypair: ed25519_compact::KeyPair,
}

impl SecretKey {
    /// A new random key, from 32 bytes of /dev/urandom.
    pub fn generate() -> Result<SecretKey, ManifestError> {
        let urandom = Path::new("/dev/urandom");
        let mut seed = [0; 32];
        File::open(urandom).and_then(|mut f| f.read_exact(&mut seed)).map_err(io_err("read", urandom))?;
        SecretKey::from_seed(seed).ok_or_else(|| ManifestError::BadSecretKey(urandom.into()))
    }

    fn from_seed(seed: [u8; 32]) -> Option<SecretKey> {
        // Only the all-zero seed is refused; it would mean a broken random source or key file.
        let keypair = ed25519_compact::KeyPair::try_from_seed(ed25519_compact::Seed::new(seed)).ok()?;
        Some(SecretKey { seed, keypair })
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(*self.keypair.pk)
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
        let seed =
            std::str::from_utf8(&text).ok().and_then(|t| t.trim().strip_prefix(SECRET_PREFIX)).and_then(from_hex32);
        let key = seed.and_then(SecretKey::from_seed).ok_or_else(|| ManifestError::BadSecretKey(path.into()))?;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            log::warn!("{} is readable by other users; chmod 600 it", path.display());
        }
        Ok(key)
    }
}

/// `bytes` as lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digit = |n: u8| DIGITS[usize::from(n)] as char;
    bytes.iter().flat_map(|b| [digit(b >> 4), digit(b & 15)]).collect()
}

fn from_hex32(s: &str) -> Option<[u8; 32]> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0; 32];
    for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Why a manifest, key or file was refused, or could not be read or written.
#[derive(Debug)]
pub enum ManifestError {
    /// A file could not be read, created or written (`action` says which).
    Io { action: &'static str, path: PathBuf, source: io::Error },
    /// The bytes do not start with the manifest magic.
    BadMagic,
    /// The manifest is damaged or inconsistent; the text says how.
    Corrupt(&'static str),
    /// The manifest has a format version this build does not know.
    UnsupportedVersion(u16),
    /// The manifest is signed by a key not given with `--trust`.
    Untrusted(PublicKey),
    /// The release name is not allowed.
    InvalidName(String),
    /// The chunk size is not allowed.
    InvalidChunkSize(u32),
    /// The file to publish is empty.
    EmptyFile(PathBuf),
    /// The file to publish needs more than `MAX_CHUNKS` chunks of this size.
    TooManyChunks(u32),
    /// The file at `path` has `actual` bytes; the release has `expected`.
    SizeMismatch { path: PathBuf, actual: u64, expected: u64 },
    /// The file at `path` differs from the release, first in `chunk`.
    ChunkMismatch { path: PathBuf, chunk: u32 },
    /// Every chunk matched but the whole-file hash did not.
    HashMismatch(PathBuf),
    /// A `--trust` argument is neither 64 hex characters nor a file holding them.
    BadPublicKey(String),
    /// The file is not a flotilla secret key file.
    BadSecretKey(PathBuf),
    /// A key file would overwrite an existing file.
    KeyExists(PathBuf),
}

impl ManifestError {
    /// True for bad input (corrupt, untrusted, invalid, mismatch); false for I/O failures.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, ManifestError::Io { .. })
    }
}

fn corrupt(why: &'static str) -> ManifestError {
    ManifestError::Corrupt(why)
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ManifestError + 'a {
    move |source| ManifestError::Io { action, path: path.into(), source }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        use ManifestError::*;
        let differs = "does not match the release";
        match self {
            Io { action, path, source } => write!(f, "cannot {action} {}: {source}", path.display()),
            BadMagic => write!(f, "not a flotilla manifest (bad magic)"),
            Corrupt(why) => write!(f, "manifest is corrupt: {why}"),
            UnsupportedVersion(v) => {
                write!(f, "manifest version {v} is not supported by this flotilla")
            }
            Untrusted(key) => write!(f, "manifest is signed by a key you do not trust: {}", key.to_hex()),
            InvalidName(name) => write!(f, "release name {name:?} is invalid: use 1-64 of A-Z a-z 0-9 . _ -"),
            InvalidChunkSize(size) => {
                write!(f, "chunk size {size} is invalid: a power of two from {} to {}", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
            }
            EmptyFile(path) => write!(f, "cannot publish {}: it is empty", path.display()),
            TooManyChunks(size) => {
                write!(f, "file needs more than {MAX_CHUNKS} chunks of {size} bytes: use a larger chunk size")
            }
            SizeMismatch { path, actual, expected } => {
                write!(f, "{} {differs}: it is {actual} bytes, not {expected}", path.display())
            }
            ChunkMismatch { path, chunk } => {
                write!(f, "{} {differs}: chunk {chunk} differs", path.display())
            }
            HashMismatch(path) => {
                write!(f, "{} {differs}: whole-file hash differs", path.display())
            }
            BadPublicKey(arg) => write!(f, "{arg:?} is neither a 64-hex public key nor a file holding one"),
            BadSecretKey(path) => write!(f, "{} is not a flotilla secret key file", path.display()),
            KeyExists(path) => write!(f, "{} already exists: refusing to overwrite a key", path.display()),
        }
    }
}

impl std::error::Error for ManifestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ManifestError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(m.signer, key(1).public().0);
        let decoded = SignedManifest::decode(&signed.bytes).unwrap();
        assert_eq!(decoded.manifest, signed.manifest);
        assert_eq!(decoded.swarm_id, sha256(&signed.bytes));
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
        let mut body = vec![1, 6]; // version 1, name length 6
        body.extend_from_slice(b"fw.img");
        body.extend_from_slice(&[7, 0xe8, 0x87, 0x03, 0x80, 0x80, 0x01]); // varints 7, 50152, 16384
        body.extend_from_slice(&m.file_hash);
        body.extend_from_slice(&[0x80, 0x01]); // 128 = 4 hashes of 32 bytes
        body.extend_from_slice(m.chunk_hashes.as_flattened());
        body.extend_from_slice(&m.signer);
        let mut signed = MAGIC.to_vec();
        signed.extend_from_slice(&(body.len() as u32).to_le_bytes());
        signed.extend_from_slice(&body);
        assert_eq!(&bytes[..signed.len()], &signed[..]);
        let signature = ed25519_compact::Signature::from_slice(&bytes[signed.len()..]).unwrap();
        ed25519_compact::PublicKey::new(m.signer).verify(&signed, &signature).unwrap();
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
    fn trust_is_checked_against_the_signer() {
        let dir = TempDir::new();
        let signed = published(&dir).1;
        signed.check_trust(&[key(2).public(), key(1).public()]).unwrap();
        let err = signed.check_trust(&[key(2).public()]).unwrap_err();
        assert!(err.to_string().contains(&key(1).public().to_hex()), "{err}");
        assert!(err.is_bad_input());
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

    /// A correctly signed body whose fields disagree with each other must still be refused.
    #[test]
    fn signed_but_inconsistent_manifests_are_refused() {
        static HASHES: [u8; 64] = [9; 64];
        let good = || ManifestBody {
            version: VERSION,
            name: "fw",
            release: 1,
            file_size: MIN_CHUNK_SIZE as u64 + 1,
            chunk_size: MIN_CHUNK_SIZE,
            file_hash: [1; 32],
            chunk_hashes: &HASHES,
            signer: key(5).public().0,
        };
        let seal_decode = |body| SignedManifest::decode(&seal(&body, &key(5)).unwrap());
        seal_decode(good()).unwrap();
        type Edit = fn(&mut ManifestBody<'static>);
        let cases: [(Edit, &str); 8] = [
            (|b| b.file_size = 3 * 16384, "chunk count does not match"),
            (|b| b.file_size = 100, "chunk count does not match"),
            (|b| b.chunk_hashes = &HASHES[1..], "chunk count does not match"),
            (|b| (b.file_size, b.chunk_hashes) = (0, &[]), "file size is zero"),
            (|b| b.chunk_size = 20000, "chunk size 20000 is invalid"),
            (|b| b.name = "../x", "release name \"../x\" is invalid"),
            (|b| b.version = 2, "manifest version 2 is not supported"),
            (|b| b.signer = key(6).public().0, "bad signature"),
        ];
        for (edit, want) in cases {
            let mut body = good();
            edit(&mut body);
            let err = seal_decode(body).unwrap_err();
            assert!(err.to_string().contains(want), "{err} (wanted {want})");
        }
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
