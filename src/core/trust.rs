//! Whether a device may act on a manifest: enough trusted signatures, not expired, meant for
//! this hardware. The manifest's own checks (format, every signature valid) are
//! [`crate::core::manifest`]'s; this is the device's side, in the manner of The Update
//! Framework's client: a threshold of known keys, an expiry date against freeze attacks, and
//! Uptane's hardware targets against installing the wrong software.
//!
//! Time is a parameter (seconds since the Unix epoch, UTC), never read here.

use crate::core::manifest::{ManifestError, PublicKey, SignedManifest};

/// The earliest time a device's clock can truthfully show: this build's date. A clock behind
/// it is unset (a router without a battery-backed clock boots in 1970), so expiry cannot be
/// judged and is deferred rather than failing every release. 2026-12-01T00:00:00Z.
pub const CLOCK_FLOOR: u64 = 1_796_083_200;

/// Most targets a manifest may name.
pub const MAX_TARGETS: usize = 8;
/// Most signatures a manifest or root may carry.
pub use crate::core::signed::MAX_SIGNATURES;

/// The keys whose signatures count and how many of them must sign.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    keys: Vec<PublicKey>,
    threshold: usize,
}

impl TrustPolicy {
    /// `threshold` of `keys` must sign. Refused if the threshold is 0 or more than the keys.
    pub fn new(mut keys: Vec<PublicKey>, threshold: usize) -> Result<TrustPolicy, String> {
        keys.sort_by_key(|k| k.0);
        keys.dedup();
        if keys.is_empty() {
            return Err("no trusted key".into());
        }
        if threshold == 0 || threshold > keys.len() {
            return Err(format!("a threshold of {threshold} cannot be met by {} trusted keys", keys.len()));
        }
        Ok(TrustPolicy { keys, threshold })
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// How many of them must sign.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// True if at least the threshold of trusted keys are among `signers`.
    pub fn is_met_by(&self, signers: &[PublicKey]) -> bool {
        signers.iter().filter(|s| self.keys.contains(s)).count() >= self.threshold
    }

    /// Ok if at least the threshold of trusted keys signed `m` (its signatures were all checked
    /// when it was decoded).
    pub fn check(&self, m: &SignedManifest) -> Result<(), ManifestError> {
        let trusted = m.signers.iter().filter(|s| self.keys.contains(s)).count();
        match trusted >= self.threshold {
            true => Ok(()),
            false if trusted == 0 => {
                Err(ManifestError::Untrusted(m.signers.first().copied().unwrap_or(PublicKey([0; 32]))))
            }
            false => Err(ManifestError::BelowThreshold { trusted, threshold: self.threshold }),
        }
    }
}

/// What a device accepts: whose signatures, which hardware it is.
#[derive(Clone, Debug, Default)]
pub struct Acceptor {
    /// The keys and threshold.
    pub policy: TrustPolicy,
    /// This device's hardware names (`--target`); a manifest naming targets must name one.
    pub targets: Vec<String>,
}

/// What the acceptor could not judge: said in the log and the status report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deferred {
    /// Everything was checked.
    Nothing,
    /// The clock is unset (behind [`CLOCK_FLOOR`]): the expiry date was not checked.
    Expiry,
}

impl Acceptor {
    /// Checks `m` at wall-clock time `now` (Unix seconds): signatures, targets, expiry.
    pub fn check(&self, m: &SignedManifest, now: u64) -> Result<Deferred, ManifestError> {
        self.policy.check(m)?;
        let wanted = &m.manifest.targets;
        let any = self.targets.iter().any(|t| t == ANY_TARGET);
        if !any && !wanted.is_empty() && !wanted.iter().any(|t| self.targets.contains(t)) {
            return Err(ManifestError::WrongTarget { wanted: wanted.clone(), ours: self.targets.clone() });
        }
        match m.manifest.expires {
            Some(_) if now < CLOCK_FLOOR => Ok(Deferred::Expiry),
            Some(at) if now >= at => Err(ManifestError::Expired(at)),
            _ => Ok(Deferred::Nothing),
        }
    }
}

/// Most keys a root lists.
pub const MAX_ROOT_KEYS: usize = 8;
/// Most release floors a root sets.
pub const MAX_FLOORS: usize = 16;
/// First bytes of a root file: what tells a root from a manifest, whatever the file is named.
pub const ROOT_MAGIC: &[u8; 8] = b"FLOTROOT";
const ROOT_VERSION: u16 = 1;
/// A root file larger than this is not one (keys, floors, signatures: a few KiB at most).
pub const MAX_ROOT_BYTES: usize = 8192;

/// A trust root, in the manner of TUF's root role: the release-signing keys and how many must
/// sign, and the root keys that sign the next root (kept offline, as TUF's root keys are),
/// numbered so that each root may only be replaced by the next, signed by a threshold of both
/// the old and the new root keys. A leaked release key is revoked by a root without it; devices
/// need no re-flashing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    /// 1 for the first root; each successor is one more.
    pub serial: u64,
    /// The release-signing keys and their threshold.
    pub policy: TrustPolicy,
    /// The keys that sign roots, and their threshold.
    pub root_policy: TrustPolicy,
    /// The largest step a release number may take over the highest one a device has accepted
    /// for its name (fast-forward bound); `None` for no bound.
    pub max_jump: Option<u64>,
    /// Per-name floors that replace a device's no-rollback record when this root is accepted:
    /// after a leaked key signed a huge release number, a new root brings the fleet back down.
    pub floors: Vec<(String, u64)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RootBody<'a> {
    version: u16,
    serial: u64,
    keys: heapless::Vec<[u8; 32], MAX_ROOT_KEYS>,
    threshold: u8,
    root_keys: heapless::Vec<[u8; 32], MAX_ROOT_KEYS>,
    root_threshold: u8,
    max_jump: Option<u64>,
    #[serde(borrow)]
    floors: heapless::Vec<(&'a str, u64), MAX_FLOORS>,
}

/// A root that decoded, with its exact bytes and who signed it.
#[derive(Clone, Debug)]
pub struct SignedRoot {
    pub root: Root,
    pub bytes: Vec<u8>,
    pub signers: Vec<PublicKey>,
}

impl SignedRoot {
    /// Encodes and signs `root` with each of `secrets`.
    pub fn sign(root: &Root, secrets: &[&crate::core::manifest::SecretKey]) -> Result<SignedRoot, ManifestError> {
        let bad = |why: &str| ManifestError::BadRoot(why.to_string());
        let keys_of = |p: &TrustPolicy| {
            heapless::Vec::from_slice(&p.keys().iter().map(|k| k.0).collect::<Vec<_>>())
                .map_err(|_| bad("more than 8 keys"))
        };
        let (keys, root_keys) = (keys_of(&root.policy)?, keys_of(&root.root_policy)?);
        let floors = root.floors.iter().map(|(n, r)| (n.as_str(), *r)).collect::<Vec<_>>();
        let floors = heapless::Vec::from_slice(&floors).map_err(|_| bad("more than 16 floors"))?;
        let threshold = u8::try_from(root.policy.threshold()).map_err(|_| bad("threshold too large"))?;
        let root_threshold = u8::try_from(root.root_policy.threshold()).map_err(|_| bad("threshold too large"))?;
        let (serial, max_jump) = (root.serial, root.max_jump);
        let body =
            RootBody { version: ROOT_VERSION, serial, keys, threshold, root_keys, root_threshold, max_jump, floors };
        let body = postcard::to_extend(&body, Vec::new()).map_err(|_| bad("cannot be encoded"))?;
        let bytes = crate::core::signed::seal(ROOT_MAGIC, &body, secrets).map_err(bad)?;
        SignedRoot::decode(&bytes)
    }

    /// Parses a root file and checks its signatures and fields. Whether it is trusted is
    /// [`Root::check_successor`]'s question (or the operator's, for the first one).
    pub fn decode(bytes: &[u8]) -> Result<SignedRoot, ManifestError> {
        let bad = |why: &str| ManifestError::BadRoot(why.to_string());
        if bytes.len() > MAX_ROOT_BYTES {
            return Err(bad("too large"));
        }
        if bytes.get(..8) != Some(&ROOT_MAGIC[..]) {
            return Err(bad("not a flotilla root (bad magic)"));
        }
        let opened = crate::core::signed::open(ROOT_MAGIC, bytes).map_err(bad)?;
        let body = match postcard::take_from_bytes::<RootBody>(opened.body) {
            Ok((body, [])) if body.version == ROOT_VERSION => body,
            Ok((body, [])) => return Err(bad(&format!("version {} is not supported", body.version))),
            _ => return Err(bad("undecodable body")),
        };
        if body.serial == 0 || body.floors.iter().any(|(n, _)| !crate::core::manifest::valid_name(n)) {
            return Err(bad("serial 0 or an invalid floor name"));
        }
        let policy_of = |keys: &[[u8; 32]], threshold| {
            TrustPolicy::new(keys.iter().map(|&k| PublicKey(k)).collect(), usize::from(threshold)).map_err(|e| bad(&e))
        };
        let policy = policy_of(&body.keys, body.threshold)?;
        let root_policy = policy_of(&body.root_keys, body.root_threshold)?;
        let floors = body.floors.iter().map(|(n, r)| (n.to_string(), *r)).collect();
        let root = Root { serial: body.serial, policy, root_policy, max_jump: body.max_jump, floors };
        let signed = SignedRoot { root, bytes: bytes.to_vec(), signers: opened.signers };
        if !signed.root.root_policy.is_met_by(&signed.signers) {
            return Err(bad("not signed by the threshold of its own root keys"));
        }
        Ok(signed)
    }
}

impl Root {
    /// Ok if `next` may replace this root: the next serial, signed by this root's threshold of
    /// root keys (its own root threshold was checked when it decoded).
    pub fn check_successor(&self, next: &SignedRoot) -> Result<(), ManifestError> {
        // The last serial has no successor (no overflow: found by the `root_successor` fuzzer).
        if self.serial.checked_add(1) != Some(next.root.serial) {
            let why = format!(
                "root {} cannot follow root {}: each root names the one after it",
                next.root.serial, self.serial
            );
            return Err(ManifestError::BadRoot(why));
        }
        if self.root_policy.is_met_by(&next.signers) {
            return Ok(());
        }
        let (n, t, s) = (next.root.serial, self.root_policy.threshold, self.serial);
        Err(ManifestError::BadRoot(format!("root {n} is not signed by {t} of root {s}'s root keys")))
    }
}

/// Walks from `current` through `candidates` in serial order, taking each valid successor:
/// the newest root reachable, and why each other candidate newer than `current` was passed
/// over. Candidates at or below the current serial are ignored (they are history).
pub fn advance(mut current: SignedRoot, mut candidates: Vec<SignedRoot>) -> (SignedRoot, Vec<(u64, ManifestError)>) {
    candidates.sort_by_key(|c| c.root.serial);
    let mut refused = Vec::new();
    for c in candidates {
        if c.root.serial <= current.root.serial {
            continue; // history, or a second candidate for a serial already taken
        }
        match current.root.check_successor(&c) {
            Ok(()) => current = c,
            Err(e) => refused.push((c.root.serial, e)),
        }
    }
    (current, refused)
}

/// `--target any`: a seed or a relay, which installs nothing, takes releases for every target.
/// A device that names no target refuses a release that names some: it cannot tell whether
/// the release is for it. (`any` is a valid target name; a manifest naming it changes nothing.)
pub const ANY_TARGET: &str = "any";

/// True if `t` may name a target: 1-64 of `A-Z a-z 0-9 . _ -`, as release names.
pub fn valid_target(t: &str) -> bool {
    crate::core::manifest::valid_name(t)
}

/// Parses an RFC 3339 UTC time, `YYYY-MM-DDTHH:MM:SSZ`, to Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || !matches!(b[19], b'Z' | b'z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return None;
    }
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec)
}

/// Unix seconds as RFC 3339 UTC, `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_rfc3339(t: u64) -> String {
    let (days, rest) = (t / 86_400, t % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest / 60 % 60, rest % 60)
}

fn days_in_month(y: u64, m: u64) -> u64 {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][(m - 1) as usize]
}

// Howard Hinnant's days_from_civil and civil_from_days, for years from 1970.
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_refuses_what_is_not_one() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-12-01T00:00:00Z"), Some(CLOCK_FLOOR));
        assert_eq!(parse_rfc3339("2000-02-29T12:34:56Z"), Some(951_827_696));
        for t in [0, CLOCK_FLOOR, 951_827_696, 4_102_444_799, 253_402_300_799] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t), "{}", format_rfc3339(t));
        }
        for bad in [
            "2027-06-30",
            "2027-06-30T00:00:00",
            "2027-06-30T00:00:00+02:00",
            "2027-02-29T00:00:00Z",
            "2027-13-01T00:00:00Z",
            "2027-06-30T24:00:00Z",
            "1969-12-31T23:59:59Z",
            "2027-06-30T00:00:0xZ",
            "+027-06-30T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn roots_rotate_only_by_a_threshold_of_old_and_new_keys() {
        use crate::core::manifest::SecretKey;
        let k: Vec<SecretKey> = (1..=5).map(|i| SecretKey::from_seed([i; 32]).unwrap()).collect();
        let policy = |ks: &[usize], t| TrustPolicy::new(ks.iter().map(|&i| k[i].public()).collect(), t).unwrap();
        // Release keys 4; root keys as given, threshold 2.
        let root = |serial, ks: &[usize], t| Root {
            serial,
            policy: policy(&[4], 1),
            root_policy: policy(ks, t),
            max_jump: Some(100),
            floors: vec![],
        };
        let first = SignedRoot::sign(&root(1, &[0, 1, 2], 2), &[&k[0], &k[1]]).unwrap();
        assert_eq!(SignedRoot::decode(&first.bytes).unwrap().root, first.root);
        assert!(SignedRoot::sign(&root(1, &[0, 1, 2], 2), &[&k[0]]).is_err(), "below its own threshold");
        // Root key 0 leaked: root 2 drops it, signed by 2 of root 1 (keys 1, 2) and 2 of its own (1, 3).
        let second = SignedRoot::sign(&root(2, &[1, 2, 3], 2), &[&k[1], &k[2], &k[3]]).unwrap();
        first.root.check_successor(&second).unwrap();
        // The thief cannot rotate alone: key 0 and a new key 4 are one of root 1's keys.
        let forged = SignedRoot::sign(&root(2, &[0, 4], 2), &[&k[0], &k[4]]).unwrap();
        let e = first.root.check_successor(&forged).unwrap_err();
        assert!(e.to_string().contains("not signed by 2 of root 1's root keys"), "{e}");
        let skip = SignedRoot::sign(&root(3, &[1, 2, 3], 2), &[&k[1], &k[2]]).unwrap();
        assert!(first.root.check_successor(&skip).is_err(), "a serial cannot be skipped");
        let (now, refused) = advance(first.clone(), vec![skip.clone(), forged, second.clone()]);
        assert_eq!(now.root.serial, 3, "1 -> 2 -> 3, whatever order the files came in");
        assert_eq!(refused.len(), 1, "{refused:?}");
        let mut bad = second.bytes.clone();
        bad[20] ^= 1;
        assert!(SignedRoot::decode(&bad).is_err());
    }

    #[test]
    fn the_last_serial_has_no_successor() {
        use crate::core::manifest::SecretKey;
        let k = SecretKey::from_seed([7; 32]).unwrap();
        let policy = TrustPolicy::new(vec![k.public()], 1).unwrap();
        let root = |serial| Root {
            serial,
            policy: policy.clone(),
            root_policy: policy.clone(),
            max_jump: None,
            floors: vec![],
        };
        let last = SignedRoot::sign(&root(u64::MAX), &[&k]).unwrap();
        for serial in [1, 2, u64::MAX - 1, u64::MAX] {
            let next = SignedRoot::sign(&root(serial), &[&k]).unwrap();
            let e = last.root.check_successor(&next).unwrap_err();
            assert!(e.to_string().contains(&format!("cannot follow root {}", u64::MAX)), "{e}");
        }
        let (now, refused) = advance(SignedRoot::sign(&root(u64::MAX - 1), &[&k]).unwrap(), vec![last.clone()]);
        assert_eq!((now.root.serial, refused.len()), (u64::MAX, 0));
    }

    #[test]
    fn a_threshold_must_be_reachable() {
        let k = |b| PublicKey([b; 32]);
        assert!(TrustPolicy::new(vec![k(1), k(2)], 2).is_ok());
        assert!(TrustPolicy::new(vec![k(1), k(1)], 2).is_err(), "a key given twice counts once");
        assert!(TrustPolicy::new(vec![k(1)], 0).is_err());
        assert!(TrustPolicy::new(vec![], 1).is_err());
    }
}
