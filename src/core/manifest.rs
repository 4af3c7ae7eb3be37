//! The release manifest: building, signing, encoding, decoding and checking it,
//! plus the operator's ed25519 keys.
//!
//! A manifest is what a device trusts instead of the peers it downloads from: every chunk a peer
//! sends is checked against a hash in here, and the manifest itself against a key given with
//! `--trust`. Decoding is total and checks every length before allocating, because a manifest
//! may arrive from anyone. This module touches no file and no socket: reading and writing
//! manifest and key files, and hashing an image from disk, are `store::manifest_file`'s.
//!
//! File format, version 2 (the signed part is magic ‖ body_len ‖ body; the swarm id is its
//! SHA-256, so a co-signer's signature added later does not change the release's name):
//!
//! ```text
//! magic       8 bytes   "FLOTMAN2"
//! body_len    u32 LE    length of body
//! body        postcard  version: u16 (= 2, varint), name: str (varint length + UTF-8),
//!                       release: u64 (varint), file_size: u64 (varint), chunk_size: u32 (varint),
//!                       file_hash: 32 bytes, chunk_hashes: bytes (varint length 32*n, then n
//!                       SHA-256 hashes in chunk order), expires: Option<u64> (0, or 1 then Unix
//!                       seconds UTC), targets: seq of str (varint count <= 8, each a name)
//!             version 3 only, after targets: rollout: start (u64 varint, Unix seconds UTC) and
//!                       hours (u32 varint, 1..=8760): the staged-rollout window
//! sig_count   u8        1..=8 signatures follow
//! signatures  96 bytes each: ed25519 public key (32) ‖ ed25519 signature (64) over the signed part
//! ```
//!
//! A manifest without a rollout window is written as version 2, so that every manifest an older
//! build could read keeps its bytes and its swarm id; one with a window is version 3, which
//! an older build refuses by name. Nothing may follow the last signature. A reader refuses a file over `MAX_MANIFEST_BYTES`, an
//! unknown version, any signature that does not verify or a key that signs twice, and any field
//! out of range: name and targets `[A-Za-z0-9._-]{1,64}` but not `.` or `..`; chunk size a power
//! of two in 16 KiB..=4 MiB; file size at least 1; n = ceil(file_size / chunk_size) and at most
//! `MAX_CHUNKS`. Whose signatures count, expiry and targets are the device's to judge
//! ([`crate::core::trust`]). Version 1 (one signer inside the body, swarm id over the whole file)
//! is refused by name: re-publish with this build.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::core::signed;
use crate::core::trust::MAX_TARGETS;

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
/// Largest manifest file. The fields other than chunk hashes take at most 1,484 bytes (magic,
/// length, varints at their widest, a 64-byte name, expiry, 8 targets of 65, 8 signatures of
/// 96); 2,048 leaves slack.
pub const MAX_MANIFEST_BYTES: usize = MAX_CHUNKS as usize * 32 + 2048;

pub(crate) const MAGIC: &[u8; 8] = b"FLOTMAN2";
/// The first format's magic: named in the error, so an old manifest is not called garbage.
const MAGIC_V1: &[u8; 8] = b"FLOTMAN1";
/// The body version of a manifest without a rollout window.
pub(crate) const VERSION: u16 = 2;
/// The body version of a manifest with one: version 2's body, then the window.
pub(crate) const VERSION_ROLLOUT: u16 = 3;
/// Longest rollout window: a year.
pub const MAX_ROLLOUT_HOURS: u32 = 24 * 366;

pub(crate) const SECRET_PREFIX: &str = "flotilla-secret-key-v1 ";
/// Key files are one short line; anything bigger is not one, so it is not read into memory.
pub(crate) const MAX_KEY_FILE: u64 = 1024;

/// The signed description of one release.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
    /// When the release stops being valid (Unix seconds, UTC), if ever: past it a device refuses
    /// the manifest, so a peer cannot hold a device back on an old release unnoticed forever.
    pub expires: Option<u64>,
    /// The hardware it is for (at most `MAX_TARGETS`); empty means any.
    pub targets: Vec<String>,
    /// The staged-rollout window, if the operator set one: each device installs at a moment
    /// within it chosen by its own id ([`Rollout::install_at`]).
    pub rollout: Option<Rollout>,
}

/// A staged rollout: devices install from `start` over `hours`, a fixed share of the fleet
/// per hour. Every device fetches and seeds at once; only the install hook waits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// When the first devices install (Unix seconds, UTC).
    pub start: u64,
    /// How long until the last device installs, 1..=`MAX_ROLLOUT_HOURS`.
    pub hours: u32,
}

impl Rollout {
    /// Where in the window the device `device` installs release `swarm`: a fraction in [0, 1)
    /// from SHA-256 of both, so it is fixed per device and release, spread evenly across a
    /// fleet, and differs from one release to the next (the same devices do not always go first).
    pub fn fraction(device: &[u8], swarm: &SwarmId) -> f64 {
        let mut h = Sha256::new();
        h.update(b"flotilla-rollout-v1");
        h.update(device);
        h.update(swarm);
        let d = h.finalize();
        let x = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
        // The top 53 bits: exactly representable, and strictly below 1.
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// When device `device` installs release `swarm` (Unix seconds): start + fraction × window.
    pub fn install_at(&self, device: &[u8], swarm: &SwarmId) -> u64 {
        let window = u64::from(self.hours) * 3600;
        self.start + (Self::fraction(device, swarm) * window as f64) as u64
    }
}

impl Manifest {
    /// How the file divides into chunks.
    pub fn geometry(&self) -> Geometry {
        Geometry { file_size: self.file_size, chunk_size: self.chunk_size }
    }

    /// Number of chunks in the file.
    pub fn chunk_count(&self) -> u32 {
        // Bounded by MAX_CHUNKS when built or decoded, so this cannot truncate.
        self.chunk_hashes.len() as u32
    }

    /// Byte offset of `chunk` in the file.
    pub fn chunk_offset(&self, chunk: u32) -> u64 {
        self.geometry().chunk_offset(chunk)
    }

    /// Length of `chunk`: the chunk size, less for the last chunk, 0 past the end.
    pub fn chunk_len(&self, chunk: u32) -> u32 {
        self.geometry().chunk_len(chunk)
    }
}

/// How a release's file divides into chunks: the one place chunk offsets and lengths are
/// computed, for the swarm, the release and the stores alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Size of the file in bytes.
    pub file_size: u64,
    /// Size of every chunk but the last.
    pub chunk_size: u32,
}

impl Geometry {
    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        // Bounded by MAX_CHUNKS for any manifest that decoded, so this cannot truncate.
        chunk_count(self.file_size, self.chunk_size) as u32
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

    /// Bytes in the chunks set in `chunks`.
    pub fn bytes_in(&self, chunks: &crate::core::bitfield::Bitfield) -> u64 {
        let last = self.chunk_count().saturating_sub(1);
        let short = if chunks.get(last) { self.chunk_size as u64 - self.chunk_len(last) as u64 } else { 0 };
        chunks.count() as u64 * self.chunk_size as u64 - short
    }
}

/// The encoded body; borrowed so decoding allocates nothing per hash.
#[derive(Serialize, Deserialize)]
pub(crate) struct ManifestBody<'a> {
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
    expires: Option<u64>,
    #[serde(borrow)]
    targets: heapless::Vec<&'a str, MAX_TARGETS>,
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
    /// SHA-256 of the signed part of `bytes` (all but the signatures).
    pub swarm_id: SwarmId,
    /// The keys whose signatures it carries, each checked, none twice.
    pub signers: Vec<PublicKey>,
}

impl SignedManifest {
    /// Signs `manifest` with each of `secrets` (1 to `MAX_SIGNATURES` distinct keys): the
    /// whole manifest file and its swarm id.
    pub fn sign(manifest: Manifest, secrets: &[&SecretKey]) -> Result<SignedManifest, ManifestError> {
        if manifest.targets.len() > MAX_TARGETS {
            return Err(ManifestError::TooManyTargets);
        }
        check_fields(&body_of(&manifest), manifest.rollout)?;
        let mut body =
            postcard::to_extend(&body_of(&manifest), Vec::new()).map_err(|_| corrupt("cannot be encoded"))?;
        if let Some(rollout) = manifest.rollout {
            body = postcard::to_extend(&rollout, body).map_err(|_| corrupt("cannot be encoded"))?;
        }
        let bytes = signed::seal(MAGIC, &body, secrets).map_err(corrupt)?;
        SignedManifest::decode(&bytes)
    }

    /// Parses and checks a manifest file: magic, lengths (before allocating), version, every
    /// signature, then every field. Any damage is an error.
    pub fn decode(bytes: &[u8]) -> Result<SignedManifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(corrupt("too large"));
        }
        let head = &bytes[..bytes.len().min(MAGIC.len())];
        if head == MAGIC_V1 {
            return Err(ManifestError::UnsupportedVersion(1));
        }
        if head != &MAGIC[..head.len()] {
            return Err(ManifestError::BadMagic);
        }
        let opened = signed::open(MAGIC, bytes).map_err(corrupt)?;
        let (body, rollout) = parse_body(opened.body)?;
        let manifest = check_fields(&body, rollout)?;
        Ok(SignedManifest { manifest, bytes: bytes.to_vec(), swarm_id: sha256(opened.signed), signers: opened.signers })
    }
}

fn body_of(m: &Manifest) -> ManifestBody<'_> {
    ManifestBody {
        version: if m.rollout.is_some() { VERSION_ROLLOUT } else { VERSION },
        name: &m.name,
        release: m.release,
        file_size: m.file_size,
        chunk_size: m.chunk_size,
        file_hash: m.file_hash,
        chunk_hashes: m.chunk_hashes.as_flattened(),
        expires: m.expires,
        // At most MAX_TARGETS are ever built or decoded; sign() checks the draft first.
        targets: m.targets.iter().take(MAX_TARGETS).map(String::as_str).collect(),
    }
}

fn parse_body(body: &[u8]) -> Result<(ManifestBody<'_>, Option<Rollout>), ManifestError> {
    // The version comes first and alone, so a future layout is named, not called garbage.
    let (version, _) = postcard::take_from_bytes::<u16>(body).map_err(|_| corrupt("truncated"))?;
    if version != VERSION && version != VERSION_ROLLOUT {
        return Err(ManifestError::UnsupportedVersion(version));
    }
    let (fields, rest) = postcard::take_from_bytes::<ManifestBody>(body).map_err(|_| corrupt("undecodable body"))?;
    let (rollout, rest) = match version {
        VERSION_ROLLOUT => {
            let (r, rest) = postcard::take_from_bytes::<Rollout>(rest).map_err(|_| corrupt("undecodable rollout"))?;
            (Some(r), rest)
        }
        _ => (None, rest),
    };
    if !rest.is_empty() {
        return Err(corrupt("trailing bytes in body"));
    }
    Ok((fields, rollout))
}

/// Checks the fields a signer vouched for, then copies them out.
fn check_fields(body: &ManifestBody, rollout: Option<Rollout>) -> Result<Manifest, ManifestError> {
    if rollout.is_some_and(|r| !(1..=MAX_ROLLOUT_HOURS).contains(&r.hours)) {
        return Err(corrupt("rollout window out of range"));
    }
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
    if let Some(bad) = body.targets.iter().find(|t| !valid_name(t)) {
        return Err(ManifestError::InvalidTarget(bad.to_string()));
    }
    if body.targets.iter().enumerate().any(|(i, t)| body.targets[..i].contains(t)) {
        return Err(corrupt("a target is named twice"));
    }
    Ok(Manifest {
        name: body.name.to_string(),
        release: body.release,
        file_size: body.file_size,
        chunk_size: body.chunk_size,
        file_hash: body.file_hash,
        chunk_hashes: body.chunk_hashes.chunks_exact(32).map(to_hash).collect(),
        expires: body.expires,
        targets: body.targets.iter().map(|t| t.to_string()).collect(),
        rollout,
    })
}

fn to_hash(bytes: &[u8]) -> Hash {
    let mut hash = [0; 32];
    hash.copy_from_slice(bytes);
    hash
}

pub(crate) fn chunk_count(file_size: u64, chunk_size: u32) -> u64 {
    file_size.div_ceil(u64::from(chunk_size))
}

pub(crate) fn valid_chunk_size(size: u32) -> bool {
    size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size)
}

/// True if `name` is a valid release name: 1-64 of `A-Z a-z 0-9 . _ -`, not `.` or `..`.
pub fn valid_name(name: &str) -> bool {
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    (1..=MAX_NAME_LEN).contains(&name.len()) && name != "." && name != ".." && name.bytes().all(|b| allowed(&b))
}

pub(crate) fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// An ed25519 public key: what `--trust` names and a manifest's signer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The key in a public key file's contents: 64 hex digits, surrounding whitespace ignored.
    pub fn parse(text: &[u8]) -> Option<PublicKey> {
        from_hex32(String::from_utf8_lossy(text).trim()).map(PublicKey)
    }

    /// The key as 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }
}

/// An ed25519 secret key: the operator's signing key. Not `Debug`, so it cannot be logged.
pub struct SecretKey {
    pub(crate) seed: [u8; 32],
    // Derived once, so signing and `public()` cannot fail later.
    keypair: ed25519_compact::KeyPair,
}

impl SecretKey {
    pub(crate) fn from_seed(seed: [u8; 32]) -> Option<SecretKey> {
        // Only the all-zero seed is refused; it would mean a broken random source or key file.
        let keypair = ed25519_compact::KeyPair::try_from_seed(ed25519_compact::Seed::new(seed)).ok()?;
        Some(SecretKey { seed, keypair })
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(*self.keypair.pk)
    }

    /// The key in a secret key file's contents: `flotilla-secret-key-v1 <64 hex>`, surrounding
    /// whitespace ignored; `None` for anything else.
    pub fn parse(text: &[u8]) -> Option<SecretKey> {
        let seed = std::str::from_utf8(text).ok()?.trim().strip_prefix(SECRET_PREFIX)?;
        SecretKey::from_seed(from_hex32(seed)?)
    }

    /// An ed25519 signature over `message`.
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        *self.keypair.sk.sign(message, None)
    }
}

/// `bytes` as lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digit = |n: u8| DIGITS[usize::from(n)] as char;
    bytes.iter().flat_map(|b| [digit(b >> 4), digit(b & 15)]).collect()
}

pub(crate) fn from_hex32(s: &str) -> Option<[u8; 32]> {
    from_hex_bytes::<32>(s)
}

/// `N` bytes from exactly `2 * N` hex digits.
pub(crate) fn from_hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
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
    /// The manifest is signed by no key given with `--trust`.
    Untrusted(PublicKey),
    /// Fewer trusted keys signed than the threshold asks.
    BelowThreshold { trusted: usize, threshold: usize },
    /// The manifest's expiry date (Unix seconds) has passed.
    Expired(u64),
    /// The release is for other hardware.
    WrongTarget { wanted: Vec<String>, ours: Vec<String> },
    /// A target name is not allowed.
    InvalidTarget(String),
    /// More than `MAX_TARGETS` targets.
    TooManyTargets,
    /// A trust root is damaged, or may not follow the current one.
    BadRoot(String),
    /// A release number jumps further past the highest accepted than the root allows.
    FastForward { name: String, release: u64, highest: u64, max_jump: u64 },
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

pub(crate) fn corrupt(why: &'static str) -> ManifestError {
    ManifestError::Corrupt(why)
}

pub(crate) fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ManifestError + 'a {
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
            BelowThreshold { trusted, threshold } => {
                write!(f, "manifest is signed by {trusted} trusted key(s); {threshold} must sign (--threshold)")
            }
            Expired(at) => write!(f, "manifest expired at {}", crate::core::trust::format_rfc3339(*at)),
            WrongTarget { wanted, ours } if ours.is_empty() => {
                write!(f, "release is for {}; this device names no --target", wanted.join(", "))
            }
            WrongTarget { wanted, ours } => {
                write!(f, "release is for {}, not for this device ({})", wanted.join(", "), ours.join(", "))
            }
            TooManyTargets => write!(f, "at most {MAX_TARGETS} targets"),
            BadRoot(why) => write!(f, "trust root refused: {why}"),
            FastForward { name, release, highest, max_jump } => write!(
                f,
                "refusing release {release} of {name}: more than {max_jump} past release {highest}, the highest accepted \
                 (a new root may allow it)"
            ),
            InvalidTarget(t) => write!(f, "target {t:?} is invalid: use 1-64 of A-Z a-z 0-9 . _ -"),
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

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_seed([seed; 32]).unwrap()
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
            expires: None,
            targets: heapless::Vec::from_slice(&["rpi4-arm64"]).unwrap(),
        };
        let seal_decode = |body: ManifestBody| {
            let body = postcard::to_extend(&body, Vec::new()).unwrap();
            SignedManifest::decode(&signed::seal(MAGIC, &body, &[&key(5)]).unwrap())
        };
        seal_decode(good()).unwrap();
        type Edit = fn(&mut ManifestBody<'static>);
        let cases: [(Edit, &str); 10] = [
            (|b| b.file_size = 3 * 16384, "chunk count does not match"),
            (|b| b.file_size = 100, "chunk count does not match"),
            (|b| b.chunk_hashes = &HASHES[1..], "chunk count does not match"),
            (|b| (b.file_size, b.chunk_hashes) = (0, &[]), "file size is zero"),
            (|b| b.chunk_size = 20000, "chunk size 20000 is invalid"),
            (|b| b.name = "../x", "release name \"../x\" is invalid"),
            (|b| b.version = 4, "manifest version 4 is not supported"),
            (|b| b.version = VERSION_ROLLOUT, "undecodable rollout"),
            (|b| b.targets = heapless::Vec::from_slice(&["a", "a"]).unwrap(), "a target is named twice"),
            (|b| b.targets = heapless::Vec::from_slice(&["a/b"]).unwrap(), "target \"a/b\" is invalid"),
        ];
        for (edit, want) in cases {
            let mut body = good();
            edit(&mut body);
            let err = seal_decode(body).unwrap_err();
            assert!(err.to_string().contains(want), "{err} (wanted {want})");
        }
    }

    #[test]
    fn a_rollout_window_is_signed_in_as_version_3_and_its_absence_keeps_version_2() {
        let draft = || Manifest {
            name: "fw".into(),
            release: 4,
            file_size: 1,
            chunk_size: MIN_CHUNK_SIZE,
            chunk_hashes: vec![[3; 32]],
            ..Manifest::default()
        };
        let plain = SignedManifest::sign(draft(), &[&key(5)]).unwrap();
        let body_version = |m: &SignedManifest| postcard::take_from_bytes::<u16>(&m.bytes[12..]).unwrap().0;
        assert_eq!((body_version(&plain), plain.manifest.rollout), (VERSION, None));
        let window = Rollout { start: 1_800_000_000, hours: 48 };
        let staged = SignedManifest::sign(Manifest { rollout: Some(window), ..draft() }, &[&key(5)]).unwrap();
        assert_eq!(body_version(&staged), VERSION_ROLLOUT);
        assert_eq!(SignedManifest::decode(&staged.bytes).unwrap().manifest.rollout, Some(window));
        assert_ne!(staged.swarm_id, plain.swarm_id, "the window is signed");
        for hours in [0, MAX_ROLLOUT_HOURS + 1] {
            let bad = Manifest { rollout: Some(Rollout { start: 0, hours }), ..draft() };
            let err = SignedManifest::sign(bad, &[&key(5)]).unwrap_err();
            assert!(err.to_string().contains("rollout window out of range"), "{err}");
        }
    }

    #[test]
    fn a_staged_rollout_installs_the_scheduled_share_of_a_fleet_each_hour() {
        // 1,000 devices, a 10-hour window; the clock is the test's: at each hour, the share of
        // the fleet whose moment has come is the share the schedule says, within 3 points.
        let window = Rollout { start: 1_900_000_000, hours: 10 };
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let moments: Vec<u64> = (0u32..1000).map(|d| window.install_at(&d.to_be_bytes(), &a)).collect();
        assert!(moments.iter().all(|&t| (window.start..window.start + 10 * 3600).contains(&t)));
        for hour in 0..=10u64 {
            let now = window.start + hour * 3600;
            let installed = moments.iter().filter(|&&t| t < now).count() as f64 / 10.0;
            let scheduled = hour as f64 * 10.0;
            assert!(
                (installed - scheduled).abs() <= 3.0,
                "hour {hour}: {installed}% installed, {scheduled}% scheduled"
            );
        }
        // Fixed per device and release, and a new release reshuffles who goes first.
        assert_eq!(window.install_at(b"device", &a), window.install_at(b"device", &a));
        let first_in_both = (0u32..1000)
            .filter(|d| Rollout::fraction(&d.to_be_bytes(), &a) < 0.1 && Rollout::fraction(&d.to_be_bytes(), &b) < 0.1)
            .count();
        assert!(first_in_both < 30, "the same devices went first in both releases: {first_in_both}");
    }
}
