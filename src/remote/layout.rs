//! Where things live on a remote. Everything is under `<prefix>/envsnap-v1/`, so a future
//! format gets `envsnap-v2/` and never misreads this one:
//!
//! ```text
//! packs/<2 hex>/<blake3 of the pack>            zstd frames, one per object
//! index/<blake3 of the file>                    which pack and byte range holds each object
//! manifests/<blake3 of the manifest document>  a snapshot's metadata and entries (zstd JSON)
//! refs/<pct-encoded key>/<u64::MAX - created_ns, 20 digits>-<manifest>   empty: the name is the data
//! uses/<pct-encoded key>/<u64::MAX - restored_ns, 20 digits>-<manifest>  a restore's one small write
//! gc/pending-<u64::MAX - marked_ns>            gc's first phase: what it will delete after the grace period
//! events/…                                      free for other commands' records (`put_small`)
//! ```

use crate::error::{Error, Result};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

pub const VERSION_DIR: &str = "envsnap-v1";

/// `file://` remotes only: where writes are staged before their rename into the layout
/// (beside `VERSION_DIR`, never inside it, so no listing sees a half-written object).
pub const TMP_DIR: &str = ".envsnap-tmp";

/// Everything but `-`, `_` and `.` is escaped, character by character, so the encoding of a
/// key prefix is a prefix of the encoding of every key that starts with it, and `/` (the
/// separator) never appears inside an encoded key.
const KEY_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// The opendal root for a bucket prefix.
pub fn root_under(prefix: &str) -> String {
    if prefix.is_empty() {
        format!("{VERSION_DIR}/")
    } else {
        format!("{prefix}/{VERSION_DIR}/")
    }
}

pub fn encode_key(key: &str) -> String {
    utf8_percent_encode(key, KEY_SET).to_string()
}

pub fn pack_path(hex: &str) -> String {
    format!("packs/{}/{hex}", &hex[..2])
}

pub fn index_path(hex: &str) -> String {
    format!("index/{hex}")
}

pub fn manifest_path(hex: &str) -> String {
    format!("manifests/{hex}")
}

/// Listing this prefix finds every ref of exactly `key`.
pub fn refs_of_key(key: &str) -> String {
    format!("refs/{}/", encode_key(key))
}

/// Listing this prefix finds every ref of every key starting with `prefix`.
pub fn refs_with_prefix(prefix: &str) -> String {
    format!("refs/{}", encode_key(prefix))
}

/// Newest first in lexical order: listings come back sorted, and no server clock is trusted.
fn inverted(ns: i64) -> String {
    format!("{:020}", u64::MAX - ns.max(0) as u64)
}

pub fn ref_path(key: &str, created_ns: i64, manifest: &str) -> String {
    format!("refs/{}/{}-{manifest}", encode_key(key), inverted(created_ns))
}

pub fn use_path(key: &str, restored_ns: i64, manifest: &str) -> String {
    format!("uses/{}/{}-{manifest}", encode_key(key), inverted(restored_ns))
}

pub fn gc_pending_path(marked_ns: i64) -> String {
    format!("gc/pending-{}", inverted(marked_ns))
}

/// A parsed `refs/…` or `uses/…` name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefName {
    pub key: String,
    pub created_ns: i64,
    pub manifest: String,
    /// The object path it was parsed from.
    pub path: String,
}

/// Parse a ref (or use) path; a name that does not parse, or whose key breaks the key rules,
/// is an error naming it (a hostile remote cannot smuggle a key in).
pub fn parse_ref(path: &str) -> Result<RefName> {
    let bad = |why: &str| Error::Remote(format!("malformed ref {path:?} on the remote: {why}"));
    let rest = path
        .strip_prefix("refs/")
        .or_else(|| path.strip_prefix("uses/"))
        .ok_or_else(|| bad("not under refs/ or uses/"))?;
    let (enc, name) = rest.split_once('/').ok_or_else(|| bad("no key directory"))?;
    let key = percent_decode_str(enc)
        .decode_utf8()
        .map_err(|_| bad("key is not UTF-8"))?
        .into_owned();
    crate::key::validate(&key).map_err(|e| bad(&e.to_string()))?;
    let (inv, manifest) = name.split_once('-').ok_or_else(|| bad("no '-'"))?;
    let inv: u64 = inv
        .parse()
        .ok()
        .filter(|_| inv.len() == 20)
        .ok_or_else(|| bad("bad time"))?;
    let created_ns = i64::try_from(u64::MAX - inv).map_err(|_| bad("bad time"))?;
    if !is_hex64(manifest) {
        return Err(bad("bad manifest id"));
    }
    Ok(RefName {
        key,
        created_ns,
        manifest: manifest.to_string(),
        path: path.to_string(),
    })
}

pub fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_prefixes_stay_prefixes_and_refs_sort_newest_first() {
        let k = "venv-linux/py3.12-abc%";
        let enc = encode_key(k);
        assert!(!enc.contains('/'));
        assert!(enc.starts_with(&encode_key("venv-linux/py")));
        assert!(refs_of_key(k).starts_with(&refs_with_prefix("venv-")));
        let m = "a".repeat(64);
        let old = ref_path(k, 1_000, &m);
        let new = ref_path(k, 2_000, &m);
        assert!(new < old, "newer refs sort first");
        let r = parse_ref(&new).unwrap();
        assert_eq!(
            (r.key.as_str(), r.created_ns, r.manifest.as_str()),
            (k, 2_000, m.as_str())
        );
        assert!(parse_ref("refs/a%2C/00000000000000000001-x").is_err());
        assert!(parse_ref(&format!("refs/bad%0A/{}-{m}", "1".repeat(20))).is_err());
    }
}
