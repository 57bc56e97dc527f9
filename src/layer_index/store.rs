//! Layer indexes stored in the cache by layer digest.
//!
//! An index file is `MAGIC`, a format version, the sha256 of the body, then
//! the zstd-compressed body. A file with another version or a wrong checksum
//! is ignored and rebuilt, never trusted.

use std::io::{Read, Write};
use std::path::PathBuf;

use super::{Access, ChunkAt, ChunkCodec, LayerIndex, Span, gzip};
use crate::cache::{BlobCache, CacheError};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::tar::{EntryKind, SparseSegment, TarEntry};

const MAGIC: &[u8; 8] = b"OCIDLIX\0";
/// 4: checkpoint windows stored as they are kept in memory, compressed.
const VERSION: u32 = 4;

/// Layer indexes stored under `<cache>/index/`.
#[derive(Debug, Clone)]
pub struct IndexStore {
    dir: PathBuf,
    tmp: PathBuf,
}

impl IndexStore {
    /// The store inside a blob cache.
    pub fn new(cache: &BlobCache) -> Result<IndexStore, CacheError> {
        let dir = cache.root().join("index");
        std::fs::create_dir_all(&dir).map_err(|source| CacheError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        Ok(IndexStore {
            dir,
            tmp: cache.root().join("tmp"),
        })
    }

    fn path(&self, layer: &Digest) -> PathBuf {
        self.dir
            .join(format!("{}-{}.idx", layer.algorithm().name(), layer.hex()))
    }

    /// Whether an index of `layer` is stored (not checked: [`IndexStore::load`] does that).
    pub fn contains(&self, layer: &Digest) -> bool {
        self.path(layer).is_file()
    }

    /// The stored index of `layer`, if present and intact. The file is
    /// decompressed as it is read (and its checksum checked at the end),
    /// so only the body is ever held, not the compressed file too.
    pub fn load(&self, layer: &Digest) -> Option<LayerIndex> {
        let path = self.path(layer);
        let file = std::fs::File::open(&path).ok()?;
        match decode_from(std::io::BufReader::with_capacity(1 << 16, file)) {
            Some(ix) if ix.layer == *layer => Some(ix),
            _ => {
                tracing::warn!(path = %path.display(), "layer index is corrupt or from another version; rebuilding it");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Store an index: compressed straight into a temp file (no
    /// compressed copy in memory), the checksum written into the header
    /// last, then renamed into place.
    pub fn save(&self, index: &LayerIndex) -> Result<(), CacheError> {
        use std::os::unix::fs::FileExt;
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dest = self.path(&index.layer);
        let tmp = self.tmp.join(format!(
            "index-{}-{}-{}.partial",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            index.layer.hex()
        ));
        let body = encode_body(index);
        let write = || -> std::io::Result<()> {
            let f = std::fs::File::create_new(&tmp)?;
            let mut out = std::io::BufWriter::with_capacity(1 << 16, &f);
            let sum = encode_into(&body, &mut out)?;
            out.flush()?;
            drop(out);
            f.write_all_at(&sum, 20)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &dest)
        };
        write().map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            CacheError::Io {
                op: "write the layer index",
                path: dest.clone(),
                source,
            }
        })
    }
}

/// Passes bytes on to `inner`, hashing them.
struct Hashing<T> {
    inner: T,
    hasher: Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Write the index file of `body` to `out` with a zero checksum; returns
/// the checksum, which belongs at bytes 20..52.
fn encode_into(body: &[u8], out: &mut dyn Write) -> std::io::Result<[u8; 32]> {
    out.write_all(MAGIC)?;
    out.write_all(&VERSION.to_le_bytes())?;
    out.write_all(&(body.len() as u64).to_le_bytes())?;
    out.write_all(&[0u8; 32])?;
    let mut w = Hashing {
        inner: out,
        hasher: Hasher::new(Algorithm::Sha256),
    };
    let mut enc = zstd::stream::write::Encoder::new(&mut w, 3)?;
    enc.set_pledged_src_size(Some(body.len() as u64))?;
    enc.include_contentsize(true)?;
    enc.write_all(body)?;
    enc.finish()?;
    let sum = w.hasher.finish();
    let mut b = [0u8; 32];
    b.copy_from_slice(&hex::decode(sum.hex()).map_err(std::io::Error::other)?);
    Ok(b)
}

// ---- encoding ------------------------------------------------------------

fn put_var(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_var(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn kind_code(k: EntryKind) -> u8 {
    match k {
        EntryKind::File => 0,
        EntryKind::Dir => 1,
        EntryKind::Symlink => 2,
        EntryKind::Hardlink => 3,
        EntryKind::CharDevice => 4,
        EntryKind::BlockDevice => 5,
        EntryKind::Fifo => 6,
    }
}

/// Serialise an index (see the module docs for the layout): the bytes
/// [`IndexStore::save`] writes.
pub fn encode(ix: &LayerIndex) -> Vec<u8> {
    let body = encode_body(ix);
    let mut out = Vec::new();
    let sum = encode_into(&body, &mut out).expect("zstd into memory");
    out[20..52].copy_from_slice(&sum);
    out
}

/// The body of an index file before compression: what [`decode_body`]
/// reads.
pub fn encode_body(ix: &LayerIndex) -> Vec<u8> {
    let mut body = Vec::new();
    put_bytes(&mut body, ix.layer.to_string().as_bytes());
    put_bytes(&mut body, ix.diff_id.to_string().as_bytes());
    put_var(&mut body, ix.tar_size);
    put_var(&mut body, ix.entries.len() as u64);
    for e in &ix.entries {
        put_bytes(&mut body, &e.path);
        body.push(kind_code(e.kind));
        put_var(&mut body, u64::from(e.mode));
        put_var(&mut body, u64::from(e.uid));
        put_var(&mut body, u64::from(e.gid));
        put_var(&mut body, e.mtime as u64);
        put_var(&mut body, u64::from(e.mtime_nsec));
        put_var(&mut body, e.size);
        put_bytes(&mut body, &e.link);
        put_var(&mut body, u64::from(e.dev_major));
        put_var(&mut body, u64::from(e.dev_minor));
        put_var(&mut body, e.xattrs.len() as u64);
        for (k, v) in &e.xattrs {
            put_bytes(&mut body, k);
            put_bytes(&mut body, v);
        }
        put_var(&mut body, e.data_offset);
        put_var(&mut body, e.data_len);
        match &e.sparse {
            None => put_var(&mut body, 0),
            Some(s) => {
                put_var(&mut body, s.len() as u64 + 1);
                for seg in s {
                    put_var(&mut body, seg.offset);
                    put_var(&mut body, seg.len);
                }
            }
        }
    }
    match &ix.access {
        Access::Tar => body.push(0),
        Access::Gzip(cps) | Access::GzipRanges(cps) => {
            body.push(if matches!(ix.access, Access::Gzip(_)) {
                1
            } else {
                3
            });
            put_var(&mut body, cps.len() as u64);
            for c in cps {
                put_var(&mut body, c.compressed);
                body.push(c.bits);
                put_var(&mut body, c.uncompressed);
                // An index whose windows were spilled and cannot be read
                // back gets an empty window, which loading refuses.
                put_bytes(&mut body, &c.window_bytes().unwrap_or_default());
            }
        }
        Access::Chunks(codec, at) => {
            body.push(if *codec == ChunkCodec::Gzip { 4 } else { 5 });
            put_var(&mut body, at.len() as u64);
            for a in at {
                put_var(&mut body, a.compressed);
                put_var(&mut body, a.skip);
            }
        }
        Access::Zstd(frames) => {
            body.push(2);
            put_var(&mut body, frames.len() as u64);
            for (c, u) in frames {
                put_var(&mut body, *c);
                put_var(&mut body, *u);
            }
        }
    }
    put_var(&mut body, ix.spans.len() as u64);
    for sp in &ix.spans {
        put_var(&mut body, sp.start);
        put_var(&mut body, sp.cend);
        body.extend_from_slice(&sp.sha256);
    }
    body
}

/// The fewest bytes one encoded entry takes (15 one-byte fields).
const MIN_ENTRY: usize = 15;

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn var(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn var32(&mut self) -> Option<u32> {
        u32::try_from(self.var()?).ok()
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = usize::try_from(self.var()?).ok()?;
        if n > self.0.len() {
            return None;
        }
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(b.to_vec())
    }

    /// How many of `n` records of at least `min` bytes each the rest of
    /// the body can hold: a capacity no stated count can inflate.
    fn room(&self, n: usize, min: usize) -> usize {
        n.min(self.0.len() / min)
    }

    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
}

/// Parse an index file; `None` if it is not one of this version or is damaged.
pub fn decode(bytes: &[u8]) -> Option<LayerIndex> {
    decode_from(std::io::Cursor::new(bytes))
}

/// [`decode`] from a reader, in two passes: the checksum over the whole
/// rest of the file first (nothing held), then, only if it matches, the
/// decompression, so a damaged file never reaches the decompressor.
fn decode_from(mut r: impl Read + std::io::Seek) -> Option<LayerIndex> {
    let mut header = [0u8; 52];
    r.read_exact(&mut header).ok()?;
    if &header[..8] != MAGIC || u32::from_le_bytes(header[8..12].try_into().ok()?) != VERSION {
        return None;
    }
    let body_len = u64::from_le_bytes(header[12..20].try_into().ok()?);
    let mut hashed = Hashing {
        inner: &mut r,
        hasher: Hasher::new(Algorithm::Sha256),
    };
    std::io::copy(&mut hashed, &mut std::io::sink()).ok()?;
    if hex::decode(hashed.hasher.finish().hex()).ok()? != header[20..52] {
        return None;
    }
    r.seek(std::io::SeekFrom::Start(52)).ok()?;
    // The stated length is outside the checksum: never allocate by it.
    // The body grows only as the frame really decodes, up to that length.
    let mut body = Vec::new();
    zstd::stream::read::Decoder::new(r)
        .ok()?
        .single_frame()
        .take(body_len.saturating_add(1))
        .read_to_end(&mut body)
        .ok()?;
    if body.len() as u64 != body_len {
        return None;
    }
    decode_body(&body)
}

/// Decode the body of an index file (what follows the header and the
/// checksum, decompressed): `None` unless it is a whole, consistent index.
/// [`decode`] calls it after checking the file; the fuzz target feeds it
/// directly, past the checksum a random input never matches.
pub fn decode_body(body: &[u8]) -> Option<LayerIndex> {
    let mut r = Reader(body);
    let layer: Digest = String::from_utf8(r.bytes()?).ok()?.parse().ok()?;
    let diff_id: Digest = String::from_utf8(r.bytes()?).ok()?.parse().ok()?;
    let tar_size = r.var()?;
    let n = usize::try_from(r.var()?).ok()?;
    // Capacities are bounded by what the remaining bytes can hold.
    let mut entries = Vec::with_capacity(r.room(n, MIN_ENTRY));
    for _ in 0..n {
        let path = r.bytes()?;
        let kind = match r.byte()? {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            2 => EntryKind::Symlink,
            3 => EntryKind::Hardlink,
            4 => EntryKind::CharDevice,
            5 => EntryKind::BlockDevice,
            6 => EntryKind::Fifo,
            _ => return None,
        };
        let mode = r.var32()?;
        let uid = r.var32()?;
        let gid = r.var32()?;
        let mtime = r.var()? as i64;
        let mtime_nsec = r.var32()?;
        let size = r.var()?;
        let link = r.bytes()?;
        let dev_major = r.var32()?;
        let dev_minor = r.var32()?;
        let nx = usize::try_from(r.var()?).ok()?;
        let mut xattrs = Vec::with_capacity(r.room(nx, 2));
        for _ in 0..nx {
            xattrs.push((r.bytes()?, r.bytes()?));
        }
        let data_offset = r.var()?;
        let data_len = r.var()?;
        let sparse = match r.var()? {
            0 => None,
            k => {
                let k = usize::try_from(k - 1).ok()?;
                let mut v = Vec::with_capacity(r.room(k, 2));
                for _ in 0..k {
                    v.push(SparseSegment {
                        offset: r.var()?,
                        len: r.var()?,
                    });
                }
                // A map the indexer would have refused makes the file stale.
                if crate::tar::check_map(&v, size).ok()? != data_len {
                    return None;
                }
                Some(v)
            }
        };
        entries.push(TarEntry {
            path,
            kind,
            mode,
            uid,
            gid,
            mtime,
            mtime_nsec,
            size,
            link,
            dev_major,
            dev_minor,
            xattrs,
            data_offset,
            data_len,
            sparse,
        });
    }
    let access = match r.byte()? {
        0 => Access::Tar,
        tag @ (1 | 3) => {
            let n = usize::try_from(r.var()?).ok()?;
            let mut cps = Vec::with_capacity(r.room(n, 4));
            for _ in 0..n {
                let (compressed, bits, uncompressed) = (r.var()?, r.byte()?, r.var()?);
                cps.push(gzip::Checkpoint::from_stored(
                    compressed,
                    bits,
                    uncompressed,
                    r.bytes()?,
                )?);
            }
            if tag == 1 {
                Access::Gzip(cps)
            } else {
                Access::GzipRanges(cps)
            }
        }
        tag @ (4 | 5) => {
            let n = usize::try_from(r.var()?).ok()?;
            let mut at = Vec::with_capacity(r.room(n, 2));
            for _ in 0..n {
                at.push(ChunkAt {
                    compressed: r.var()?,
                    skip: r.var()?,
                });
            }
            let codec = if tag == 4 {
                ChunkCodec::Gzip
            } else {
                ChunkCodec::Zstd
            };
            Access::Chunks(codec, at)
        }
        2 => {
            let n = usize::try_from(r.var()?).ok()?;
            let mut frames = Vec::with_capacity(r.room(n, 2));
            for _ in 0..n {
                frames.push((r.var()?, r.var()?));
            }
            Access::Zstd(frames)
        }
        _ => return None,
    };
    let n = usize::try_from(r.var()?).ok()?;
    let mut spans = Vec::with_capacity(r.room(n, 34));
    for _ in 0..n {
        let start = r.var()?;
        let cend = r.var()?;
        if r.0.len() < 32 {
            return None;
        }
        let (h, rest) = r.0.split_at(32);
        r.0 = rest;
        spans.push(Span {
            start,
            sha256: h.try_into().ok()?,
            cend,
        });
    }
    if !r.0.is_empty() {
        return None;
    }
    LayerIndex::new(layer, diff_id, tar_size, entries, access, spans).ok()
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;

    #[test]
    fn round_trip_and_damage_detection() {
        let ix = sample();
        let bytes = encode(&ix);
        assert_eq!(decode(&bytes).unwrap(), ix);
        for i in [0, 9, 30, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(decode(&bad).is_none(), "flipping byte {i} went unnoticed");
        }
        assert!(decode(&bytes[..bytes.len() - 3]).is_none());
    }

    #[test]
    fn a_stated_length_outside_the_checksum_allocates_nothing() {
        // Found by the fuzzer: bytes 12..20 (the body length) are not
        // covered by the checksum; a huge value made decode allocate it
        // up front and abort the process.
        let mut bytes = encode(&sample());
        bytes[12..20].copy_from_slice(&0x001f_0100_0000_269c_u64.to_le_bytes());
        assert!(decode(&bytes).is_none());
        let real = encode_body(&sample()).len() as u64;
        for wrong in [0, real - 1, real + 1, u64::MAX] {
            bytes[12..20].copy_from_slice(&wrong.to_le_bytes());
            assert!(decode(&bytes).is_none(), "body length {wrong} accepted");
        }
    }

    #[test]
    fn body_counts_cannot_inflate_capacities() {
        let mut body = encode_body(&sample());
        assert_eq!(decode_body(&body), Some(sample()));
        // An entry count of 2^40 with no entries behind it.
        let layer = sample().layer.to_string();
        let diff = sample().diff_id.to_string();
        let mut b = Vec::new();
        put_bytes(&mut b, layer.as_bytes());
        put_bytes(&mut b, diff.as_bytes());
        put_var(&mut b, 0);
        put_var(&mut b, 1 << 40);
        assert!(decode_body(&b).is_none());
        body.push(0);
        assert!(decode_body(&body).is_none(), "trailing bytes accepted");
    }

    #[test]
    fn inconsistent_indexes_are_not_trusted() {
        let mut ix = sample();
        ix.tar_size = 5_000_000_000 + 4096;
        assert_eq!(ix.inconsistency(), None);
        let mut bad = ix.clone();
        bad.access = Access::Gzip(vec![gzip::Checkpoint::new(10, 0, 7, &[])]);
        assert!(decode(&encode(&bad)).is_none(), "no checkpoint at offset 0");
        let mut bad = ix.clone();
        bad.entries[0].data_offset = u64::MAX;
        assert!(
            decode(&encode(&bad)).is_none(),
            "entry data outside the tar"
        );
        let mut bad = ix;
        bad.access = Access::Zstd(vec![(5, 5)]);
        assert!(decode(&encode(&bad)).is_none(), "zstd frames start at 0");
    }

    #[test]
    fn new_refuses_what_readers_cannot_rely_on() {
        // A known defect: the fields were public, so a caller could build
        // an index that makes span lookups index out of bounds or wrap.
        let ix = sample();
        let parts = |ix: &LayerIndex| {
            (
                ix.layer.clone(),
                ix.diff_id.clone(),
                ix.tar_size,
                ix.entries.clone(),
                ix.access.clone(),
                ix.spans.clone(),
            )
        };
        let make = |(l, d, t, e, a, s): (_, _, _, _, _, _)| LayerIndex::new(l, d, t, e, a, s);
        assert_eq!(make(parts(&ix)).unwrap(), ix);
        let mut p = parts(&ix);
        p.4 = Access::Gzip(vec![gzip::Checkpoint::new(0, 3, 0, &[])]);
        let err = make(p).unwrap_err().to_string();
        assert!(err.contains("access points"), "{err}");
        let mut p = parts(&ix);
        p.5.clear();
        let err = make(p).unwrap_err().to_string();
        assert!(err.contains("spans must start at 0"), "{err}");
        let mut p = parts(&ix);
        p.2 = 100;
        assert!(make(p).is_err(), "spans and entries past a shrunk tar");
        let mut p = parts(&ix);
        p.3[0].data_len = u64::MAX;
        let err = make(p).unwrap_err().to_string();
        assert!(err.contains("outside the tar"), "{err}");
    }

    #[test]
    fn store_rebuilds_rather_than_trusts_a_damaged_file() {
        let d = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(d.path()).unwrap();
        let store = IndexStore::new(&cache).unwrap();
        let ix = sample();
        store.save(&ix).unwrap();
        assert_eq!(store.load(&ix.layer).unwrap(), ix);
        let path = store.path(&ix.layer);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        assert!(store.load(&ix.layer).is_none());
        assert!(!path.exists());
    }
}
