//! `flotilla root`: writes a trust root, the first or the successor of one.

use super::{help_or, required, usage, Failure};
use flotilla::core::manifest::{PublicKey, SecretKey};
use flotilla::core::trust::{Root, SignedRoot, TrustPolicy};
use flotilla::store::atomic::replace_file;
use flotilla::store::root_file::read_root;
use lexopt::prelude::*;
use std::path::PathBuf;

pub const ROOT_HELP: &str = "\
Usage: flotilla root --key PUBKEY... [--threshold N] --root-key PUBKEY... [--root-threshold N]
                     --secret KEYFILE... --out FILE [--previous ROOT] [--max-jump N]
                     [--floor NAME=RELEASE]...

Writes a trust root: the keys that sign releases and how many must sign, and the root keys
that sign the next root (keep those offline). Give devices the first root with --root instead
of --trust keys. To rotate release keys (revoke a leaked one, add one) or root keys, write the
next root with --previous: it must be signed by the threshold of the previous root's root keys
and by the threshold of its own. Devices take it from a --root file or a *.flotilla-root file
dropped in serve's data directory; a release signed by a key it drops is no longer accepted.

  --key PUBKEY          a release-signing key (repeatable, up to 8; 64 hex or a file)
  --threshold N         how many of the --key keys must sign a release (default 1)
  --root-key PUBKEY     a root-signing key (repeatable, up to 8). Required, and none may be a
                        --key key: root keys stay offline, so a leaked release key cannot
                        sign the next root
  --root-threshold N    how many root keys must sign the next root (default 1)
  --secret KEYFILE      a key that signs this root (repeatable)
  --previous ROOT       the root this one replaces (its serial + 1 is this one's)
  --max-jump N          refuse a release number more than N past the highest a device has
                        accepted for its name (fast-forward bound; default: none)
  --floor NAME=RELEASE  on accepting this root, a device sets its no-rollback record of NAME to
                        RELEASE (repeatable): the way back after a leaked key signed a huge
                        release number
  --out FILE            where to write the root
";

pub fn root(mut p: lexopt::Parser) -> Result<(), Failure> {
    let (mut keys, mut root_keys, mut secrets, mut floors) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut threshold, mut root_threshold, mut previous, mut max_jump, mut out) = (1usize, 1usize, None, None, None);
    while let Some(arg) = p.next()? {
        match arg {
            Long("key") => keys.push(PublicKey::parse_arg(&p.value()?.string()?)?),
            Long("threshold") => threshold = p.value()?.parse()?,
            Long("root-key") => root_keys.push(PublicKey::parse_arg(&p.value()?.string()?)?),
            Long("root-threshold") => root_threshold = p.value()?.parse()?,
            Long("secret") => secrets.push(SecretKey::read_file(&PathBuf::from(p.value()?))?),
            Long("previous") => previous = Some(read_root(&PathBuf::from(p.value()?)).map_err(usage)?),
            Long("max-jump") => max_jump = Some(p.value()?.parse()?),
            Long("floor") => {
                let f = p.value()?.string()?;
                let parsed = f.split_once('=').and_then(|(n, r)| Some((n.to_owned(), r.parse::<u64>().ok()?)));
                floors.push(parsed.ok_or_else(|| usage(format!("--floor {f:?} is not NAME=RELEASE")))?);
            }
            Long("out") => out = Some(PathBuf::from(p.value()?)),
            a => help_or(a, ROOT_HELP)?,
        }
    }
    let out = required(out, "--out FILE")?;
    if root_keys.is_empty() {
        return Err(usage(
            "missing --root-key PUBKEY: name the offline root keys that sign the next root (not the --key release keys)",
        ));
    }
    if let Some(both) = root_keys.iter().find(|k| keys.contains(k)) {
        return Err(usage(format!(
            "root key {} is also a --key release key: root keys must be offline keys of their own, or a leaked release key could sign the next root",
            both.to_hex()
        )));
    }
    let policy = TrustPolicy::new(keys, threshold).map_err(usage)?;
    let root_policy = TrustPolicy::new(root_keys, root_threshold).map_err(|e| usage(format!("root keys: {e}")))?;
    let serial = match &previous {
        None => 1,
        Some(p) => p.root.serial.checked_add(1).ok_or_else(|| {
            usage(format!("the previous root has the last serial ({}): no root can follow it", p.root.serial))
        })?,
    };
    let root = Root { serial, policy, root_policy, max_jump, floors };
    let secrets: Vec<&SecretKey> = secrets.iter().collect();
    let signed = SignedRoot::sign(&root, &secrets).map_err(usage)?;
    if let Some(previous) = &previous {
        previous.root.check_successor(&signed).map_err(usage)?;
    }
    replace_file(&out, &signed.bytes, flotilla::store::safe_fs::DATA_MODE)
        .map_err(|e| super::runtime(format!("cannot write {}: {e}", out.display())))?;
    print_root(&signed);
    Ok(())
}

/// What `inspect` and `root` print about a root.
pub fn print_root(r: &SignedRoot) {
    let root = &r.root;
    println!("root serial: {}", root.serial);
    println!("threshold:   {} of {}", root.policy.threshold(), root.policy.keys().len());
    for k in root.policy.keys() {
        println!("key:         {}", k.to_hex());
    }
    println!("root keys:   {} of {} sign the next root", root.root_policy.threshold(), root.root_policy.keys().len());
    for k in root.root_policy.keys() {
        println!("root key:    {}", k.to_hex());
    }
    match root.max_jump {
        Some(n) => println!("max jump:    {n}"),
        None => println!("max jump:    none"),
    }
    for (name, release) in &root.floors {
        println!("floor:       {name} = {release}");
    }
    for s in &r.signers {
        println!("signer:      {}", s.to_hex());
    }
}
