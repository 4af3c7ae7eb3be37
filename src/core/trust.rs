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
        if !wanted.is_empty() && !wanted.iter().any(|t| self.targets.contains(t)) {
            return Err(ManifestError::WrongTarget { wanted: wanted.clone(), ours: self.targets.clone() });
        }
        match m.manifest.expires {
            Some(_) if now < CLOCK_FLOOR => Ok(Deferred::Expiry),
            Some(at) if now >= at => Err(ManifestError::Expired(at)),
            _ => Ok(Deferred::Nothing),
        }
    }
}

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
    fn a_threshold_must_be_reachable() {
        let k = |b| PublicKey([b; 32]);
        assert!(TrustPolicy::new(vec![k(1), k(2)], 2).is_ok());
        assert!(TrustPolicy::new(vec![k(1), k(1)], 2).is_err(), "a key given twice counts once");
        assert!(TrustPolicy::new(vec![k(1)], 0).is_err());
        assert!(TrustPolicy::new(vec![], 1).is_err());
    }
}
