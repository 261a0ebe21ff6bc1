//! Packs and pack indexes: the remote's data format.
//!
//! A pack is `ESPACK01` followed by one zstd frame per object, each frame independently
//! decompressible, so a restore reads only the byte ranges it needs. It is named by the BLAKE3
//! of its bytes. A pack index file lists, per pack, each object's id, offset, compressed length
//! and size; it is zstd-compressed and named by the BLAKE3 of its (compressed) bytes, so a
//! downloaded index is verified before it is believed:
//!
//! ```text
//! "ESIDX001", u32 packs, then per pack: [32] pack hash, u32 objects,
//!   then per object: [32] BLAKE3, u8 exec, u64 offset, u32 compressed length, u64 size   (little-endian)
//! ```

use crate::error::{Error, Result};
use crate::store::ObjectId;
use std::io::Read;

pub const PACK_MAGIC: &[u8; 8] = b"ESPACK01";
const INDEX_MAGIC: &[u8; 8] = b"ESIDX001";
/// A pack is closed once it holds this many compressed bytes. 16 MiB is restic's default
/// (kopia's are 20 MB): it keeps request counts small without making one retry expensive,
/// and it keeps short the two stretches of a push that nothing overlaps, compressing the
/// first pack before any upload starts and uploading the last after compression ends
/// (measured: 32 MiB packs made the benchmark venv's push ~20 % slower).
pub const PACK_TARGET: usize = 16 << 20;
/// [`PACK_TARGET`], or `$ENVSNAP_REMOTE_PACK_BYTES` (tests use small packs to get many).
pub fn pack_target() -> usize {
    static T: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *T.get_or_init(|| {
        std::env::var("ENVSNAP_REMOTE_PACK_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or(PACK_TARGET)
    })
}

/// zstd's default level: what `tar --zstd` uses too.
pub const LEVEL: i32 = 3;
/// Objects up to this size decode in one call into a buffer of exactly their size.
const BULK_LIMIT: u64 = 64 << 20;
/// Decoding refuses index files that inflate beyond this (a hostile remote's zip bomb).
const INDEX_LIMIT: u64 = 1 << 30;

/// One pack and where each of its objects is in it.
pub type PackLocs = ([u8; 32], Vec<(ObjectId, Loc)>);

/// Where an object is on the remote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub pack: [u8; 32],
    pub offset: u64,
    pub clen: u32,
    pub size: u64,
}

pub fn hex(h: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*h).to_hex().to_string()
}

/// A pack being filled.
pub struct PackBuilder {
    pub data: Vec<u8>,
    pub entries: Vec<(ObjectId, u64, u32, u64)>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        PackBuilder {
            data: PACK_MAGIC.to_vec(),
            entries: Vec::new(),
        }
    }
}

impl PackBuilder {
    pub fn push(&mut self, id: ObjectId, size: u64, frame: &[u8]) {
        self.entries
            .push((id, self.data.len() as u64, frame.len() as u32, size));
        self.data.extend_from_slice(frame);
    }

    pub fn full(&self) -> bool {
        self.data.len() >= pack_target()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The finished pack: its hash, bytes and locations.
    pub fn finish(self) -> ([u8; 32], Vec<u8>, Vec<(ObjectId, Loc)>) {
        let pack = *blake3::hash(&self.data).as_bytes();
        let locs = self
            .entries
            .into_iter()
            .map(|(id, offset, clen, size)| {
                (
                    id,
                    Loc {
                        pack,
                        offset,
                        clen,
                        size,
                    },
                )
            })
            .collect();
        (pack, self.data, locs)
    }
}

/// Compress one object as its own frame. Each thread keeps one compression context: a venv
/// is mostly small files, and a fresh context per object (its tables allocated and zeroed
/// each time) would cost more than compressing many of them.
pub fn compress(data: &[u8]) -> Result<Vec<u8>> {
    thread_local! {
        static CTX: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
    }
    let fail = |e: std::io::Error| Error::Other(format!("zstd compression failed: {e}"));
    CTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(zstd::bulk::Compressor::new(LEVEL).map_err(fail)?);
        }
        c.as_mut().expect("set above").compress(data).map_err(fail)
    })
}

/// Decompress one object's frame and check it is exactly the object `id` (BLAKE3 and size).
/// Anything else (a flipped byte, a frame of another object) is an error naming the pack.
pub fn decompress_verified(frame: &[u8], id: &ObjectId, size: u64, pack_name: &str) -> Result<Vec<u8>> {
    let corrupt = |why: String| Error::Remote(format!("corrupt pack {pack_name} on the remote: object {id} {why}"));
    // One context per thread (see `compress`). The output may not outgrow the size the index
    // gives (a hostile frame cannot inflate without bound); larger objects than that limit
    // are streamed.
    thread_local! {
        static CTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
    }
    let out = if size <= BULK_LIMIT {
        CTX.with(|c| {
            let mut c = c.borrow_mut();
            if c.is_none() {
                *c = Some(zstd::bulk::Decompressor::new().map_err(|e| corrupt(format!("cannot be decoded ({e})")))?);
            }
            let mut out = Vec::with_capacity(size as usize);
            c.as_mut()
                .expect("set above")
                .decompress_to_buffer(frame, &mut out)
                .map_err(|e| corrupt(format!("cannot be decoded ({e})")))?;
            Ok::<_, Error>(out)
        })?
    } else {
        let mut out = Vec::with_capacity(size.min(1 << 30) as usize);
        zstd::stream::Decoder::new(frame)
            .map_err(|e| corrupt(format!("cannot be decoded ({e})")))?
            .take(size + 1)
            .read_to_end(&mut out)
            .map_err(|e| corrupt(format!("cannot be decoded ({e})")))?;
        out
    };
    if out.len() as u64 != size || blake3::hash(&out).as_bytes() != &id.hash {
        return Err(corrupt("does not match its BLAKE3".into()));
    }
    Ok(out)
}

/// Encode an index file for the given packs; returns (name, bytes).
pub fn encode_index(packs: &[PackLocs]) -> Result<(String, Vec<u8>)> {
    let mut raw = Vec::with_capacity(16 + packs.iter().map(|p| 36 + p.1.len() * 53).sum::<usize>());
    raw.extend_from_slice(INDEX_MAGIC);
    raw.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for (pack, locs) in packs {
        raw.extend_from_slice(pack);
        raw.extend_from_slice(&(locs.len() as u32).to_le_bytes());
        for (id, l) in locs {
            raw.extend_from_slice(&id.hash);
            raw.push(id.exec as u8);
            raw.extend_from_slice(&l.offset.to_le_bytes());
            raw.extend_from_slice(&l.clen.to_le_bytes());
            raw.extend_from_slice(&l.size.to_le_bytes());
        }
    }
    let z = compress(&raw)?;
    Ok((blake3::hash(&z).to_hex().to_string(), z))
}

/// Decode an index file after checking it is the file its name says. Any inconsistency is an
/// error naming the file.
pub fn decode_index(name: &str, bytes: &[u8]) -> Result<Vec<(ObjectId, Loc)>> {
    let bad = |why: &str| Error::Remote(format!("corrupt pack index {name} on the remote: {why}"));
    if blake3::hash(bytes).to_hex().as_str() != name {
        return Err(bad("its content does not match its name"));
    }
    let mut raw = Vec::new();
    zstd::stream::Decoder::new(bytes)
        .map_err(|_| bad("not zstd"))?
        .take(INDEX_LIMIT)
        .read_to_end(&mut raw)
        .map_err(|_| bad("not zstd"))?;
    let mut r = Reader { b: &raw, at: 0 };
    if r.take(8).ok_or_else(|| bad("truncated"))? != INDEX_MAGIC {
        return Err(bad("unknown format"));
    }
    let npacks = r.u32().ok_or_else(|| bad("truncated"))?;
    let mut out = Vec::new();
    for _ in 0..npacks {
        let pack: [u8; 32] = r.take(32).ok_or_else(|| bad("truncated"))?.try_into().expect("32");
        let n = r.u32().ok_or_else(|| bad("truncated"))?;
        for _ in 0..n {
            let hash: [u8; 32] = r.take(32).ok_or_else(|| bad("truncated"))?.try_into().expect("32");
            let exec = match r.take(1).ok_or_else(|| bad("truncated"))?[0] {
                0 => false,
                1 => true,
                _ => return Err(bad("bad exec flag")),
            };
            let offset = r.u64().ok_or_else(|| bad("truncated"))?;
            let clen = r.u32().ok_or_else(|| bad("truncated"))?;
            let size = r.u64().ok_or_else(|| bad("truncated"))?;
            if offset < PACK_MAGIC.len() as u64 || offset.checked_add(clen as u64).is_none() {
                return Err(bad("object range outside its pack"));
            }
            out.push((
                ObjectId { hash, exec },
                Loc {
                    pack,
                    offset,
                    clen,
                    size,
                },
            ));
        }
    }
    if r.at != raw.len() {
        return Err(bad("trailing bytes"));
    }
    Ok(out)
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_frames_decode_alone_and_index_round_trips() {
        let mut b = PackBuilder::default();
        let objs: Vec<Vec<u8>> = vec![b"hello".to_vec(), vec![7u8; 100_000], Vec::new()];
        for (i, o) in objs.iter().enumerate() {
            let id = ObjectId::new(blake3::hash(o), i == 1);
            b.push(id, o.len() as u64, &compress(o).unwrap());
        }
        let (pack, data, locs) = b.finish();
        assert_eq!(pack, *blake3::hash(&data).as_bytes());
        for ((id, l), o) in locs.iter().zip(&objs) {
            let frame = &data[l.offset as usize..(l.offset + l.clen as u64) as usize];
            assert_eq!(&decompress_verified(frame, id, l.size, "p").unwrap(), o);
        }
        // A flipped byte in a frame is refused.
        let (id, l) = locs[1];
        let mut frame = data[l.offset as usize..(l.offset + l.clen as u64) as usize].to_vec();
        let last = frame.len() - 1;
        frame[last] ^= 1;
        assert!(decompress_verified(&frame, &id, l.size, "p").is_err());
        let (name, bytes) = encode_index(&[(pack, locs.clone())]).unwrap();
        assert_eq!(decode_index(&name, &bytes).unwrap(), locs);
        let mut evil = bytes.clone();
        evil[5] ^= 1;
        assert!(decode_index(&name, &evil).is_err());
        assert!(decode_index(&name, &bytes[..bytes.len() - 1]).is_err());
    }
}
