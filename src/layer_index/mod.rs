//! Layer indexes: every tar entry of a layer with where its data lies in the
//! uncompressed stream, built in the same streaming pass that verifies the
//! layer, and stored in the cache by layer digest.
//!
//! An index file is `MAGIC`, a format version, the sha256 of the body, then
//! the zstd-compressed body. A file with another version or a wrong checksum
//! is ignored and rebuilt, never trusted.

pub mod gzip;
pub mod tar;

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::cache::{BlobCache, CacheError, write_atomic};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::source::manifest::Compression;
use tar::{EntryKind, SparseSegment, TarEntry, TarError, TarIndexer};

const MAGIC: &[u8; 8] = b"OCIDLIX\0";
const VERSION: u32 = 1;

/// Errors building or loading layer indexes.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The layer is not a valid tar stream.
    #[error("layer {layer}: {source}")]
    Tar {
        /// The layer.
        layer: Digest,
        /// What is wrong.
        source: TarError,
    },
    /// The layer does not decompress.
    #[error("layer {layer}: not valid {compression:?} data: {detail}")]
    Decompress {
        /// The layer.
        layer: Digest,
        /// The compression.
        compression: Compression,
        /// The decoder's complaint.
        detail: String,
    },
    /// The layer's uncompressed content does not match its diff_id.
    #[error("layer {layer}: uncompressed content hashes to {actual}, not the diff_id {expected}")]
    DiffId {
        /// The layer.
        layer: Digest,
        /// The diff_id.
        expected: Digest,
        /// What it hashes to.
        actual: Digest,
    },
    /// Reading the blob failed.
    #[error("reading layer {layer} from {path}: {source}")]
    Io {
        /// The layer.
        layer: Digest,
        /// The blob file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// The index of one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerIndex {
    /// The layer blob's digest.
    pub layer: Digest,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Length of the uncompressed tar.
    pub tar_size: u64,
    /// The entries in stream order.
    pub entries: Vec<TarEntry>,
}

/// Accepts the uncompressed bytes of a layer: hashes them for the diff_id
/// and indexes the tar.
pub struct IndexSink {
    hasher: Hasher,
    tar: TarIndexer,
}

impl IndexSink {
    /// A sink checking against a diff_id of this algorithm.
    pub fn new(algorithm: Algorithm) -> IndexSink {
        IndexSink {
            hasher: Hasher::new(algorithm),
            tar: TarIndexer::new(),
        }
    }

    /// The diff_id of what was written, and the tar entries (or why the
    /// stream is not a tar).
    pub fn finish(self) -> (Digest, u64, Result<Vec<TarEntry>, TarError>) {
        let size = self.tar.offset();
        (self.hasher.finish(), size, self.tar.finish())
    }
}

impl Write for IndexSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.tar.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Build the index of a verified layer blob on disk (the slow path, when a
/// blob is cached but its index is not). Checks the diff_id again.
pub fn index_blob(
    path: &Path,
    layer: &Digest,
    diff_id: &Digest,
    compression: Compression,
) -> Result<LayerIndex, IndexError> {
    let io_err = |source| IndexError::Io {
        layer: layer.clone(),
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let file = io::BufReader::with_capacity(1 << 20, file);
    let mut reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(file).map_err(io_err)?),
    };
    let mut sink = IndexSink::new(diff_id.algorithm());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(IndexError::Decompress {
                    layer: layer.clone(),
                    compression,
                    detail: e.to_string(),
                });
            }
        };
        if let Err(e) = sink.write_all(&buf[..n]) {
            let source = e
                .into_inner()
                .and_then(|i| i.downcast::<TarError>().ok())
                .map(|b| *b)
                .unwrap_or(TarError::Truncated {
                    offset: 0,
                    what: "the stream",
                });
            return Err(IndexError::Tar {
                layer: layer.clone(),
                source,
            });
        }
    }
    finish_index(sink, layer, diff_id)
}

/// Turn a finished sink into an index, checking the diff_id.
pub fn finish_index(
    sink: IndexSink,
    layer: &Digest,
    diff_id: &Digest,
) -> Result<LayerIndex, IndexError> {
    let (actual, tar_size, entries) = sink.finish();
    if actual != *diff_id {
        return Err(IndexError::DiffId {
            layer: layer.clone(),
            expected: diff_id.clone(),
            actual,
        });
    }
    let entries = entries.map_err(|source| IndexError::Tar {
        layer: layer.clone(),
        source,
    })?;
    Ok(LayerIndex {
        layer: layer.clone(),
        diff_id: diff_id.clone(),
        tar_size,
        entries,
    })
}

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

    /// The stored index of `layer`, if present and intact.
    pub fn load(&self, layer: &Digest) -> Option<LayerIndex> {
        let path = self.path(layer);
        let bytes = std::fs::read(&path).ok()?;
        match decode(&bytes) {
            Some(ix) if ix.layer == *layer => Some(ix),
            _ => {
                tracing::warn!(path = %path.display(), "layer index is corrupt or from another version; rebuilding it");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Store an index.
    pub fn save(&self, index: &LayerIndex) -> Result<(), CacheError> {
        write_atomic(&self.tmp, &self.path(&index.layer), &encode(index))
    }
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

/// Serialise an index (see the module docs for the layout).
pub fn encode(ix: &LayerIndex) -> Vec<u8> {
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
    let compressed = zstd::bulk::compress(&body, 3).expect("in-memory zstd");
    let mut out = Vec::with_capacity(compressed.len() + 52);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    let sum = Digest::sha256_of(&compressed);
    out.extend_from_slice(&hex::decode(sum.hex()).expect("hex"));
    out.extend_from_slice(&compressed);
    out
}

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

    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
}

/// Parse an index file; `None` if it is not one of this version or is damaged.
pub fn decode(bytes: &[u8]) -> Option<LayerIndex> {
    if bytes.len() < 52 || &bytes[..8] != MAGIC {
        return None;
    }
    if u32::from_le_bytes(bytes[8..12].try_into().ok()?) != VERSION {
        return None;
    }
    let body_len = u64::from_le_bytes(bytes[12..20].try_into().ok()?);
    let sum = &bytes[20..52];
    let compressed = &bytes[52..];
    if hex::decode(Digest::sha256_of(compressed).hex()).ok()? != sum {
        return None;
    }
    let body = zstd::bulk::decompress(compressed, usize::try_from(body_len).ok()?).ok()?;
    let mut r = Reader(&body);
    let layer: Digest = String::from_utf8(r.bytes()?).ok()?.parse().ok()?;
    let diff_id: Digest = String::from_utf8(r.bytes()?).ok()?.parse().ok()?;
    let tar_size = r.var()?;
    let n = usize::try_from(r.var()?).ok()?;
    let mut entries = Vec::with_capacity(n.min(1 << 20));
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
        let mut xattrs = Vec::with_capacity(nx.min(64));
        for _ in 0..nx {
            xattrs.push((r.bytes()?, r.bytes()?));
        }
        let data_offset = r.var()?;
        let data_len = r.var()?;
        let sparse = match r.var()? {
            0 => None,
            k => {
                let k = usize::try_from(k - 1).ok()?;
                let mut v = Vec::with_capacity(k.min(1 << 16));
                for _ in 0..k {
                    v.push(SparseSegment {
                        offset: r.var()?,
                        len: r.var()?,
                    });
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
    if !r.0.is_empty() {
        return None;
    }
    Some(LayerIndex {
        layer,
        diff_id,
        tar_size,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LayerIndex {
        LayerIndex {
            layer: Digest::sha256_of(b"layer"),
            diff_id: Digest::sha256_of(b"tar"),
            tar_size: 10240,
            entries: vec![
                TarEntry {
                    path: b"usr/bin/\xffodd".to_vec(),
                    kind: EntryKind::File,
                    mode: 0o4755,
                    uid: 3_000_000_000,
                    gid: 5,
                    mtime: -5,
                    mtime_nsec: 999_999_999,
                    size: 5_000_000_000,
                    link: vec![],
                    dev_major: 0,
                    dev_minor: 0,
                    xattrs: vec![(b"user.a".to_vec(), vec![0, 1, 2])],
                    data_offset: 512,
                    data_len: 8,
                    sparse: Some(vec![SparseSegment {
                        offset: 4_999_999_996,
                        len: 4,
                    }]),
                },
                TarEntry {
                    path: b"dev/null".to_vec(),
                    kind: EntryKind::CharDevice,
                    mode: 0o666,
                    uid: 0,
                    gid: 0,
                    mtime: 1,
                    mtime_nsec: 0,
                    size: 0,
                    link: vec![],
                    dev_major: 1,
                    dev_minor: 3,
                    xattrs: vec![],
                    data_offset: 2048,
                    data_len: 0,
                    sparse: None,
                },
            ],
        }
    }

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

    #[test]
    fn index_blob_checks_diff_id_and_tar() {
        let d = tempfile::tempdir().unwrap();
        let mut b = ::tar::Builder::new(Vec::new());
        let mut h = ::tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "a", &b"abc"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let path = d.path().join("blob");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let layer = Digest::sha256_of(b"whatever");
        let ix = index_blob(&path, &layer, &Digest::sha256_of(&tar), Compression::Gzip).unwrap();
        assert_eq!(ix.entries.len(), 1);
        assert_eq!(ix.tar_size, tar.len() as u64);
        let err =
            index_blob(&path, &layer, &Digest::sha256_of(b"x"), Compression::Gzip).unwrap_err();
        assert!(matches!(err, IndexError::DiffId { .. }), "{err}");
        let err =
            index_blob(&path, &layer, &Digest::sha256_of(&tar), Compression::Zstd).unwrap_err();
        assert!(matches!(err, IndexError::Decompress { .. }), "{err}");
    }
}
