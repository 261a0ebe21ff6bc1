//! The stat cache: what the previous save from a source directory found at each path (size,
//! mtime, ctime, inode) and the object it hashed to. A file whose stat still matches is not read
//! again, so an unchanged re-save is a walk and a stat per file.
//!
//! Like git's index, one source's cache is one compact binary record (a blob in the SQLite
//! index), sorted by path: loading 10k rows is one read and a linear decode instead of 10k SQL
//! rows with hex object ids, and a save looks paths up with a merge walk instead of hashing.
//!
//! The cache is trusted to name objects that exist (a save does not stat each object): gc and
//! `verify --repair` drop the rows of every object they delete before deleting it.

use crate::store::ObjectId;

/// The record format. A record with another magic (an older or newer envsnap) reads as empty:
/// the cost is one full re-read, never a misread hash.
const MAGIC: &[u8; 8] = b"ESTATC01";

/// One file as the previous save saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatRow {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    /// The object holds the exec bit: a chmod +x changes ctime and the object id alike.
    pub object: ObjectId,
    /// The adapter scanner's note for this content (see `save::ContentScanner`).
    pub note: Option<String>,
}

/// One source directory's cache: rows sorted by path, and the scanner their notes came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatCache {
    /// `ContentScanner::id()` of the save that wrote it; notes from another scanner are stale.
    pub scanner: String,
    rows: Vec<(Vec<u8>, StatRow)>,
}

impl StatCache {
    /// Rows in any order; duplicate paths keep the last.
    pub fn new(scanner: String, mut rows: Vec<(Vec<u8>, StatRow)>) -> Self {
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.dedup_by(|later, earlier| {
            let dup = later.0 == earlier.0;
            if dup {
                std::mem::swap(later, earlier);
            }
            dup
        });
        StatCache { scanner, rows }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn retain_objects(&mut self, mut keep: impl FnMut(&ObjectId) -> bool) {
        self.rows.retain(|(_, r)| keep(&r.object));
    }

    /// A cursor for looking up paths in ascending order (a save's sorted scan) in linear time.
    pub fn cursor(&self) -> Cursor<'_> {
        Cursor {
            rows: &self.rows,
            at: 0,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(8 + self.rows.len() * 96);
        b.extend_from_slice(MAGIC);
        for (path, r) in &self.rows {
            b.extend_from_slice(&(path.len() as u32).to_le_bytes());
            b.extend_from_slice(path);
            b.extend_from_slice(&r.size.to_le_bytes());
            b.extend_from_slice(&r.mtime_ns.to_le_bytes());
            b.extend_from_slice(&r.ctime_ns.to_le_bytes());
            b.extend_from_slice(&r.ino.to_le_bytes());
            b.extend_from_slice(&r.object.hash);
            b.push(r.object.exec as u8);
            match &r.note {
                None => b.push(0),
                Some(n) => {
                    b.push(1);
                    b.extend_from_slice(&(n.len() as u32).to_le_bytes());
                    b.extend_from_slice(n.as_bytes());
                }
            }
        }
        b
    }

    /// None when the record is not one this version wrote (another format, or damaged).
    pub fn decode(scanner: String, data: &[u8]) -> Option<Self> {
        let mut r = Reader(data.strip_prefix(MAGIC)?);
        let mut rows = Vec::new();
        let mut prev: Option<&[u8]> = None;
        while !r.0.is_empty() {
            let len = r.u32()? as usize;
            let path = r.take(len)?;
            // Sorted, unique paths: the cursor relies on it.
            if prev.is_some_and(|p| p >= path) {
                return None;
            }
            prev = Some(path);
            let size = r.u64()?;
            let mtime_ns = r.u64()? as i64;
            let ctime_ns = r.u64()? as i64;
            let ino = r.u64()?;
            let hash: [u8; 32] = r.take(32)?.try_into().ok()?;
            let exec = match r.take(1)?[0] {
                0 => false,
                1 => true,
                _ => return None,
            };
            let note = match r.take(1)?[0] {
                0 => None,
                1 => {
                    let n = r.u32()? as usize;
                    Some(String::from_utf8(r.take(n)?.to_vec()).ok()?)
                }
                _ => return None,
            };
            rows.push((
                path.to_vec(),
                StatRow {
                    size,
                    mtime_ns,
                    ctime_ns,
                    ino,
                    object: ObjectId { hash, exec },
                    note,
                },
            ));
        }
        Some(StatCache { scanner, rows })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Looks up ascending paths; a path smaller than the previous one is not found.
pub struct Cursor<'a> {
    rows: &'a [(Vec<u8>, StatRow)],
    at: usize,
}

impl<'a> Cursor<'a> {
    pub fn seek(&mut self, path: &[u8]) -> Option<&'a StatRow> {
        while self.at < self.rows.len() && self.rows[self.at].0.as_slice() < path {
            self.at += 1;
        }
        self.rows
            .get(self.at)
            .filter(|(p, _)| p.as_slice() == path)
            .map(|(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: u8, note: Option<&str>) -> StatRow {
        StatRow {
            size: n as u64,
            mtime_ns: -(n as i64),
            ctime_ns: 1 << 40,
            ino: u64::MAX - n as u64,
            object: ObjectId {
                hash: [n; 32],
                exec: n % 2 == 1,
            },
            note: note.map(str::to_string),
        }
    }

    #[test]
    fn round_trip_and_lookup_in_order() {
        let c = StatCache::new(
            "scan-1".into(),
            vec![
                (b"b/x".to_vec(), row(2, Some("note \u{e9}"))),
                (b"a".to_vec(), row(1, None)),
                (b"b.txt".to_vec(), row(3, Some(""))),
            ],
        );
        let back = StatCache::decode("scan-1".into(), &c.encode()).unwrap();
        assert_eq!(back, c);
        let mut cur = back.cursor();
        assert_eq!(cur.seek(b"a"), Some(&row(1, None)));
        assert_eq!(cur.seek(b"aa"), None);
        assert_eq!(cur.seek(b"b.txt").map(|r| r.size), Some(3));
        assert_eq!(cur.seek(b"b/x").map(|r| r.size), Some(2));
        assert_eq!(cur.seek(b"c"), None);
    }

    #[test]
    fn a_foreign_or_damaged_record_reads_as_nothing() {
        let c = StatCache::new("s".into(), vec![(b"a".to_vec(), row(1, Some("n")))]);
        let good = c.encode();
        assert!(StatCache::decode("s".into(), b"ESTATC00").is_none());
        for cut in 9..good.len() {
            assert!(
                StatCache::decode("s".into(), &good[..cut]).is_none(),
                "truncated at {cut}"
            );
        }
        let mut unsorted = StatCache::new("s".into(), vec![(b"b".to_vec(), row(1, None))]).encode();
        unsorted.extend_from_slice(&good[8..]); // "a" after "b"
        assert!(StatCache::decode("s".into(), &unsorted).is_none());
    }

    #[test]
    fn duplicates_keep_the_last_row() {
        let c = StatCache::new(
            "s".into(),
            vec![(b"a".to_vec(), row(1, None)), (b"a".to_vec(), row(2, None))],
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c.cursor().seek(b"a").map(|r| r.size), Some(2));
    }
}
