//! The signed envelope shared by manifests and trust roots: a magic, a length-prefixed body,
//! then 1 to [`MAX_SIGNATURES`] entries of (ed25519 public key, signature over everything
//! before them). One owner for the layout and for checking signatures, so the two file kinds
//! cannot drift apart.
//!
//! ```text
//! magic       8 bytes
//! body_len    u32 LE
//! body        body_len bytes (postcard; the caller's)
//! sig_count   u8        1..=8
//! signatures  96 bytes each: public key (32) ‖ ed25519 signature (64) over magic ‖ body_len ‖ body
//! ```

use crate::core::manifest::{PublicKey, SecretKey};

/// Most signatures an envelope carries.
pub const MAX_SIGNATURES: usize = 8;
/// Magic and body length.
pub const HEADER_LEN: usize = 12;
/// One signature entry: public key and signature.
pub const SIGNATURE_ENTRY: usize = 32 + 64;

/// A checked envelope: the part the signatures cover, the body inside it, and the signers.
pub struct Opened<'a> {
    /// Magic, length and body: what was signed (and what a swarm id hashes).
    pub signed: &'a [u8],
    /// The body alone.
    pub body: &'a [u8],
    /// Each key that signed, once, every signature verified.
    pub signers: Vec<PublicKey>,
}

/// Wraps `body` under `magic` and signs it with each of `secrets` (1 to 8 distinct keys).
pub fn seal(magic: &[u8; 8], body: &[u8], secrets: &[&SecretKey]) -> Result<Vec<u8>, &'static str> {
    let mut keys: Vec<[u8; 32]> = secrets.iter().map(|s| s.public().0).collect();
    keys.sort();
    keys.dedup();
    if secrets.is_empty() || secrets.len() > MAX_SIGNATURES || keys.len() != secrets.len() {
        return Err("needs 1 to 8 signatures by distinct keys");
    }
    let body_len = u32::try_from(body.len()).map_err(|_| "too large")?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + 1 + SIGNATURE_ENTRY * secrets.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(body);
    let signed_len = out.len();
    out.push(secrets.len() as u8);
    for secret in secrets {
        let signature = secret.sign(&out[..signed_len]);
        out.extend_from_slice(&secret.public().0);
        out.extend_from_slice(&signature);
    }
    Ok(out)
}

/// Checks an envelope: `magic` (the caller has looked at it already to name a wrong kind),
/// lengths before anything is allocated, then every signature. Any damage is an error.
pub fn open<'a>(magic: &[u8; 8], bytes: &'a [u8]) -> Result<Opened<'a>, &'static str> {
    if bytes.get(..8) != Some(&magic[..]) {
        return Err("truncated");
    }
    let len = bytes.get(8..HEADER_LEN).ok_or("truncated")?;
    let signed_len = HEADER_LEN as u64 + u64::from(u32::from_le_bytes([len[0], len[1], len[2], len[3]]));
    let &count = bytes.get(signed_len as usize).ok_or("truncated")?;
    if count == 0 || usize::from(count) > MAX_SIGNATURES {
        return Err("needs 1 to 8 signatures");
    }
    let total = signed_len + 1 + u64::from(count) * SIGNATURE_ENTRY as u64;
    match (bytes.len() as u64).cmp(&total) {
        std::cmp::Ordering::Less => return Err("truncated"),
        std::cmp::Ordering::Greater => return Err("trailing bytes"),
        std::cmp::Ordering::Equal => {}
    }
    let (signed, rest) = bytes.split_at(signed_len as usize);
    let mut signers: Vec<PublicKey> = Vec::with_capacity(usize::from(count));
    for entry in rest[1..].chunks_exact(SIGNATURE_ENTRY) {
        let key: [u8; 32] = entry[..32].try_into().map_err(|_| "truncated")?;
        let signature = ed25519_compact::Signature::from_slice(&entry[32..]).map_err(|_| "truncated")?;
        ed25519_compact::PublicKey::new(key).verify(signed, &signature).map_err(|_| "bad signature")?;
        if signers.contains(&PublicKey(key)) {
            return Err("a key signs twice");
        }
        signers.push(PublicKey(key));
    }
    Ok(Opened { signed, body: &signed[HEADER_LEN..], signers })
}
