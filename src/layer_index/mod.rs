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
const VERSION: u32 = 3;

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

/// Uncompressed bytes between access points (gzip checkpoints sit at the
/// first deflate block boundary past this much output; each costs a 32 KiB
/// window in the index). 512 KiB rather than the 1 MiB first planned: on the
/// Debian benchmark image it brings a boot's file reads under 10% of the
/// compressed image (9.0% against 12.4%), for an index of 6% of the blob.
pub const SPAN: u64 = 512 << 10;
/// Uncompressed bytes per hashed span: the unit a read fetches and verifies.
/// A read decodes from the access point before it to the end of the span it
/// needs, so smaller spans fetch less for small files.
pub const SUB_SPAN: u64 = 128 << 10;

/// How to start reading a layer somewhere in the middle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// An uncompressed tar: offsets map directly.
    Tar,
    /// gzip: checkpoints to resume inflating from.
    Gzip(Vec<gzip::Checkpoint>),
    /// zstd: (compressed, uncompressed) offsets where frames start.
    Zstd(Vec<(u64, u64)>),
}

/// A piece of the uncompressed stream with the sha256 taken in the verified
/// first pass; a span fetched later is checked against it before use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Where it starts; it ends where the next span starts (or at the end).
    pub start: u64,
    /// sha256 of its bytes.
    pub sha256: [u8; 32],
    /// Compressed bytes (from the blob's start) by which all of this span's
    /// output had been produced: fetching up to here is enough.
    pub cend: u64,
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
    /// Random-access points.
    pub access: Access,
    /// The spans, in order, covering the whole tar.
    pub spans: Vec<Span>,
}

/// What to fetch to read one span, and where it sits in the decoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanFetch {
    /// First compressed byte to fetch.
    pub start: u64,
    /// End of the compressed range (exclusive), clamped to the blob size.
    pub end: u64,
}

/// Errors decoding a fetched span.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpanError {
    /// The bytes do not decode.
    #[error("layer {layer}, span {span}: {detail}")]
    Decode {
        /// The layer.
        layer: Digest,
        /// The span.
        span: usize,
        /// What went wrong.
        detail: String,
    },
    /// The decoded bytes do not match the hash from the verified first pass.
    #[error(
        "layer {layer}, span {span}: content does not match its recorded sha256 (tampered or corrupt)"
    )]
    Mismatch {
        /// The layer.
        layer: Digest,
        /// The span.
        span: usize,
    },
}

impl LayerIndex {
    /// The uncompressed range of span `i`.
    pub fn span_range(&self, i: usize) -> (u64, u64) {
        let start = self.spans[i].start;
        let end = self.spans.get(i + 1).map_or(self.tar_size, |s| s.start);
        (start, end)
    }

    /// The access point a read of span `i` starts from: (compressed offset,
    /// uncompressed offset, index of the first span wholly after it).
    fn access_for(&self, i: usize) -> (u64, u64, usize) {
        let start = self.spans[i].start;
        let (c, u) = match &self.access {
            Access::Tar => (start, start),
            Access::Gzip(cps) => {
                let cp = &cps[cps.partition_point(|c| c.uncompressed <= start) - 1];
                (cp.compressed - u64::from(cp.bits > 0), cp.uncompressed)
            }
            Access::Zstd(frames) => frames[frames.partition_point(|f| f.1 <= start) - 1],
        };
        (c, u, self.spans.partition_point(|s| s.start < u))
    }

    /// The compressed bytes needed to decode span `i` of a blob of
    /// `blob_size` bytes: from its access point to where its output ends.
    pub fn span_fetch(&self, i: usize, blob_size: u64) -> SpanFetch {
        let (c, _, _) = self.access_for(i);
        let end = match self.access {
            Access::Tar => self.span_range(i).1,
            // A little slack: inflate may look ahead a few bytes, and zstd
            // releases a frame's last block only with the frame's end in view
            // (block header and checksum: a few bytes).
            Access::Gzip(_) => self.spans[i].cend + 16,
            Access::Zstd(_) => self.spans[i].cend + 64,
        };
        SpanFetch {
            start: c,
            end: end.min(blob_size),
        }
    }

    /// Decode the bytes [`LayerIndex::span_fetch`] named for span `i`: every
    /// span from the access point through `i`, each checked against the hash
    /// recorded in the verified first pass. Returns (span index, bytes).
    pub fn decode_spans(
        &self,
        i: usize,
        compressed: &[u8],
    ) -> Result<Vec<(usize, Vec<u8>)>, SpanError> {
        use sha2::Digest as _;
        let (_, base, first) = self.access_for(i);
        let from = self.spans[first].start;
        let to = self.span_range(i).1;
        let len = (to - from) as usize;
        let err = |detail: String| SpanError::Decode {
            layer: self.layer.clone(),
            span: i,
            detail,
        };
        let data = match &self.access {
            Access::Tar => compressed.to_vec(),
            Access::Gzip(cps) => {
                let cp = &cps[cps.partition_point(|c| c.uncompressed <= from) - 1];
                gzip::read_span(cp, compressed, from - base, len).map_err(|e| err(e.to_string()))?
            }
            Access::Zstd(_) => zstd_range(compressed, from - base, len).map_err(err)?,
        };
        if data.len() != len {
            return Err(SpanError::Mismatch {
                layer: self.layer.clone(),
                span: i,
            });
        }
        let mut out = Vec::with_capacity(i + 1 - first);
        for k in first..=i {
            let (s, e) = self.span_range(k);
            let piece = &data[(s - from) as usize..(e - from) as usize];
            if <[u8; 32]>::from(sha2::Sha256::digest(piece)) != self.spans[k].sha256 {
                return Err(SpanError::Mismatch {
                    layer: self.layer.clone(),
                    span: k,
                });
            }
            out.push((k, piece.to_vec()));
        }
        Ok(out)
    }

    /// Decode and verify span `i` alone (see [`LayerIndex::decode_spans`]).
    pub fn decode_span(&self, i: usize, compressed: &[u8]) -> Result<Vec<u8>, SpanError> {
        let mut all = self.decode_spans(i, compressed)?;
        Ok(all.pop().expect("at least span i").1)
    }

    /// The span holding uncompressed offset `at`, as (index, start, end).
    pub fn span_at(&self, at: u64) -> Option<(usize, u64, u64)> {
        if at >= self.tar_size {
            return None;
        }
        let i = self
            .spans
            .partition_point(|s| s.start <= at)
            .checked_sub(1)?;
        let end = self.spans.get(i + 1).map_or(self.tar_size, |s| s.start);
        Some((i, self.spans[i].start, end))
    }
}

/// Accepts the uncompressed bytes of a layer: hashes them for the diff_id,
/// indexes the tar, and hashes spans (cut every [`SUB_SPAN`] bytes and at
/// access points), noting where each span ends in the compressed stream.
pub struct IndexSink {
    hasher: Hasher,
    tar: TarIndexer,
    spans: Vec<Span>,
    span_hasher: sha2::Sha256,
    span_start: u64,
    pos: u64,
    /// When set, each finished span's bytes go here (only the current span
    /// is buffered).
    span_out: Option<(SpanOut, Vec<u8>)>,
}

/// Receives (sha256, bytes) of every span as the first pass finishes it.
pub type SpanOut = Box<dyn FnMut(&[u8; 32], &[u8]) + Send>;

/// Somewhere to keep verified spans by their sha256 (the lazy disk's chunk
/// store), for layers whose spans are costly to decode again later.
pub trait SpanSink: Send + Sync {
    /// Keep `data`, whose sha256 is `sha256`.
    fn put(&self, sha256: &[u8; 32], data: &[u8]);
}

impl IndexSink {
    /// A sink checking against a diff_id of this algorithm.
    pub fn new(algorithm: Algorithm) -> IndexSink {
        use sha2::Digest as _;
        IndexSink {
            hasher: Hasher::new(algorithm),
            tar: TarIndexer::new(),
            spans: Vec::new(),
            span_hasher: sha2::Sha256::new(),
            span_start: 0,
            pos: 0,
            span_out: None,
        }
    }

    /// End the current span here; `cend` compressed bytes produced it.
    pub fn cut(&mut self, cend: u64) {
        use sha2::Digest as _;
        if self.pos > self.span_start {
            let h: [u8; 32] = std::mem::take(&mut self.span_hasher).finalize().into();
            if let Some((out, buf)) = &mut self.span_out {
                out(&h, buf);
                buf.clear();
            }
            self.spans.push(Span {
                start: self.span_start,
                sha256: h,
                cend,
            });
            self.span_start = self.pos;
        }
    }

    /// Take output that does not cross a [`SUB_SPAN`] boundary, produced
    /// from the first `cpos` compressed bytes.
    pub fn feed(&mut self, data: &[u8], cpos: u64) -> io::Result<()> {
        use sha2::Digest as _;
        debug_assert!(
            self.pos / SUB_SPAN == (self.pos + data.len() as u64 - 1) / SUB_SPAN || data.is_empty()
        );
        self.hasher.update(data);
        self.span_hasher.update(data);
        if let Some((_, buf)) = &mut self.span_out {
            buf.extend_from_slice(data);
        }
        self.pos += data.len() as u64;
        self.tar.write_all(data)?;
        if self.pos.is_multiple_of(SUB_SPAN) {
            self.cut(cpos);
        }
        Ok(())
    }

    /// Bytes taken so far.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// The diff_id of what was written, the length, the spans, and the tar
    /// entries (or why the stream is not a tar). `cend`: the blob's size.
    pub fn finish(
        mut self,
        cend: u64,
    ) -> (Digest, u64, Vec<Span>, Result<Vec<TarEntry>, TarError>) {
        self.cut(cend);
        let size = self.pos;
        (self.hasher.finish(), size, self.spans, self.tar.finish())
    }
}

/// What went wrong pushing bytes into a [`LayerIndexer`].
#[derive(Debug)]
pub enum PushError {
    /// The compressed data is invalid.
    Decode(String),
    /// The tar inside is invalid.
    Tar(TarError),
}

fn push_error(e: io::Error) -> PushError {
    match e.get_ref().and_then(|i| i.downcast_ref::<TarError>()) {
        Some(t) => PushError::Tar(t.clone()),
        None => PushError::Decode(e.to_string()),
    }
}

enum Decoder {
    Plain,
    Gzip(Box<gzip::Indexer>),
    Zstd(Box<ZstdState>),
}

struct ZstdState {
    dec: zstd::stream::raw::Decoder<'static>,
    out: Vec<u8>,
    frames: Vec<(u64, u64)>,
    consumed: u64,
    produced: u64,
    in_frame: bool,
}

/// Decodes a layer blob pushed to it in pieces, feeding an [`IndexSink`]
/// and recording random-access points: the one pass that verifies and
/// indexes a layer.
pub struct LayerIndexer {
    sink: IndexSink,
    decoder: Decoder,
    compression: Compression,
    consumed: u64,
}

impl LayerIndexer {
    /// An indexer for a layer with this compression and diff_id algorithm.
    pub fn new(compression: Compression, diff_alg: Algorithm) -> Result<LayerIndexer, PushError> {
        let decoder = match compression {
            Compression::None => Decoder::Plain,
            Compression::Gzip => Decoder::Gzip(Box::new(gzip::Indexer::new(SPAN, SUB_SPAN))),
            Compression::Zstd => Decoder::Zstd(Box::new(ZstdState {
                dec: zstd::stream::raw::Decoder::new()
                    .map_err(|e| PushError::Decode(e.to_string()))?,
                out: vec![0u8; 256 << 10],
                frames: vec![(0, 0)],
                consumed: 0,
                produced: 0,
                in_frame: false,
            })),
        };
        Ok(LayerIndexer {
            consumed: 0,
            sink: IndexSink::new(diff_alg),
            decoder,
            compression,
        })
    }

    /// Hand every finished span's bytes to `out` (the lazy disk's fallback
    /// for zstd layers with a single frame, which have no other access point
    /// than their start).
    pub fn keep_spans(&mut self, out: SpanOut) {
        self.sink.span_out = Some((out, Vec::with_capacity(SUB_SPAN as usize)));
    }

    /// Feed compressed bytes.
    pub fn push(&mut self, input: &[u8]) -> Result<(), PushError> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        self.consumed += input.len() as u64;
        match &mut self.decoder {
            Decoder::Plain => {
                let mut rest = input;
                while !rest.is_empty() {
                    let room = (SUB_SPAN - self.sink.pos() % SUB_SPAN) as usize;
                    let (now, later) = rest.split_at(room.min(rest.len()));
                    let cpos = self.sink.pos() + now.len() as u64;
                    self.sink.feed(now, cpos).map_err(push_error)?;
                    rest = later;
                }
                Ok(())
            }
            Decoder::Gzip(g) => {
                // The sink sees output and checkpoints in stream order, so a
                // cut lands exactly on the checkpoint's offset.
                let sink = std::cell::RefCell::new(&mut self.sink);
                g.push(
                    input,
                    &mut |data, cpos| sink.borrow_mut().feed(data, cpos),
                    &mut |cpos| sink.borrow_mut().cut(cpos),
                )
                .map_err(push_error)
            }
            Decoder::Zstd(z) => {
                let mut inb = InBuffer::around(input);
                loop {
                    let before = inb.pos();
                    let room =
                        (SUB_SPAN - self.sink.pos() % SUB_SPAN).min(z.out.len() as u64) as usize;
                    let mut outb = OutBuffer::around(&mut z.out[..room]);
                    let hint = z
                        .dec
                        .run(&mut inb, &mut outb)
                        .map_err(|e| PushError::Decode(e.to_string()))?;
                    let made = outb.pos();
                    z.consumed += (inb.pos() - before) as u64;
                    z.produced += made as u64;
                    if made > 0 || inb.pos() > before {
                        z.in_frame = true;
                    }
                    self.sink
                        .feed(&z.out[..made], z.consumed)
                        .map_err(push_error)?;
                    if hint == 0 && z.in_frame {
                        // A frame ended: the next one can be decoded on its own.
                        z.in_frame = false;
                        let last = z.frames.last().map_or(0, |f| f.1);
                        if z.produced - last >= SPAN {
                            z.frames.push((z.consumed, z.produced));
                        }
                    }
                    if inb.pos() == input.len() && made < room {
                        break;
                    }
                }
                Ok(())
            }
        }
    }

    /// End of input: the finished index, with the diff_id checked.
    pub fn finish(self, layer: &Digest, diff_id: &Digest) -> Result<LayerIndex, IndexError> {
        let trunc = |detail: String| IndexError::Decompress {
            layer: layer.clone(),
            compression: self.compression,
            detail,
        };
        let access = match self.decoder {
            Decoder::Plain => Access::Tar,
            Decoder::Gzip(g) => Access::Gzip(g.finish().map_err(|e| trunc(e.to_string()))?),
            Decoder::Zstd(z) => {
                if z.in_frame {
                    return Err(trunc("the zstd stream ends inside a frame".into()));
                }
                let mut frames = z.frames;
                // A frame boundary at the very end starts nothing.
                frames.retain(|f| f.1 < z.produced || f.1 == 0);
                Access::Zstd(frames)
            }
        };
        let (actual, tar_size, spans, entries) = self.sink.finish(self.consumed);
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
        let ix = LayerIndex {
            layer: layer.clone(),
            diff_id: diff_id.clone(),
            tar_size,
            entries,
            access,
            spans,
        };
        if !ix.is_consistent() {
            return Err(trunc("the stream has no usable access points".into()));
        }
        Ok(ix)
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
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let to_err = |e| push_to_index_error(e, layer, compression);
    let mut ix = LayerIndexer::new(compression, diff_id.algorithm()).map_err(to_err)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        };
        ix.push(&buf[..n]).map_err(to_err)?;
    }
    ix.finish(layer, diff_id)
}

/// Turn a push error into the index error that names the layer.
pub fn push_to_index_error(e: PushError, layer: &Digest, compression: Compression) -> IndexError {
    match e {
        PushError::Tar(source) => IndexError::Tar {
            layer: layer.clone(),
            source,
        },
        PushError::Decode(detail) => IndexError::Decompress {
            layer: layer.clone(),
            compression,
            detail,
        },
    }
}

/// Decode `len` bytes after skipping `skip`, from zstd data that starts at a
/// frame and may stop in the middle of one (the raw decoder, unlike the
/// reader, returns what it can without demanding the rest of the frame).
fn zstd_range(compressed: &[u8], mut skip: u64, len: usize) -> Result<Vec<u8>, String> {
    use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
    let mut dec = Decoder::new().map_err(|e| e.to_string())?;
    let mut input = InBuffer::around(compressed);
    let mut out = vec![0u8; len];
    let mut scratch = vec![0u8; 128 << 10];
    let mut filled = 0;
    while filled < len {
        let before = (input.pos(), filled, skip);
        if skip > 0 {
            let n = skip.min(scratch.len() as u64) as usize;
            let mut o = OutBuffer::around(&mut scratch[..n]);
            dec.run(&mut input, &mut o).map_err(|e| e.to_string())?;
            skip -= o.pos() as u64;
        } else {
            let mut o = OutBuffer::around(&mut out[filled..]);
            dec.run(&mut input, &mut o).map_err(|e| e.to_string())?;
            filled += o.pos();
        }
        if (input.pos(), filled, skip) == before {
            return Err("zstd data ended early".into());
        }
    }
    Ok(out)
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
    match &ix.access {
        Access::Tar => body.push(0),
        Access::Gzip(cps) => {
            body.push(1);
            put_var(&mut body, cps.len() as u64);
            for c in cps {
                put_var(&mut body, c.compressed);
                body.push(c.bits);
                put_var(&mut body, c.uncompressed);
                put_bytes(&mut body, &c.window);
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
    let access = match r.byte()? {
        0 => Access::Tar,
        1 => {
            let n = usize::try_from(r.var()?).ok()?;
            let mut cps = Vec::with_capacity(n.min(1 << 16));
            for _ in 0..n {
                cps.push(gzip::Checkpoint {
                    compressed: r.var()?,
                    bits: r.byte()?,
                    uncompressed: r.var()?,
                    window: r.bytes()?,
                });
            }
            Access::Gzip(cps)
        }
        2 => {
            let n = usize::try_from(r.var()?).ok()?;
            let mut frames = Vec::with_capacity(n.min(1 << 16));
            for _ in 0..n {
                frames.push((r.var()?, r.var()?));
            }
            Access::Zstd(frames)
        }
        _ => return None,
    };
    let n = usize::try_from(r.var()?).ok()?;
    let mut spans = Vec::with_capacity(n.min(1 << 20));
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
    let ix = LayerIndex {
        layer,
        diff_id,
        tar_size,
        entries,
        access,
        spans,
    };
    ix.is_consistent().then_some(ix)
}

impl LayerIndex {
    /// The invariants readers rely on: access points start at offset 0 and
    /// increase; spans start at 0, increase and end inside the tar; every
    /// entry's data lies inside the tar.
    pub fn is_consistent(&self) -> bool {
        fn increasing(v: impl Iterator<Item = u64>) -> bool {
            let mut last = None;
            for x in v {
                if last.is_some_and(|l| x <= l) {
                    return false;
                }
                last = Some(x);
            }
            true
        }
        let access_ok = match &self.access {
            Access::Tar => true,
            Access::Gzip(cps) => {
                cps.first()
                    .is_some_and(|c| c.uncompressed == 0 && c.window.len() <= gzip::WINDOW)
                    && increasing(cps.iter().map(|c| c.uncompressed))
            }
            Access::Zstd(frames) => {
                frames.first() == Some(&(0, 0)) && increasing(frames.iter().map(|f| f.1))
            }
        };
        let spans_ok = self.spans.is_empty() && self.tar_size == 0
            || self.spans.first().is_some_and(|s| s.start == 0)
                && increasing(self.spans.iter().map(|s| s.start))
                && self.spans.last().is_some_and(|s| s.start < self.tar_size);
        let entries_ok = self.entries.iter().all(|e| {
            e.data_offset
                .checked_add(e.data_len)
                .is_some_and(|end| end <= self.tar_size)
        });
        access_ok && spans_ok && entries_ok
    }
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
            access: Access::Gzip(vec![gzip::Checkpoint {
                compressed: 10,
                bits: 3,
                uncompressed: 0,
                window: vec![1, 2, 3],
            }]),
            spans: vec![Span {
                start: 0,
                sha256: [7; 32],
                cend: 99,
            }],
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
    fn inconsistent_indexes_are_not_trusted() {
        let mut ix = sample();
        ix.tar_size = 5_000_000_000 + 4096;
        assert!(ix.is_consistent());
        let mut bad = ix.clone();
        bad.access = Access::Gzip(vec![gzip::Checkpoint {
            compressed: 10,
            bits: 0,
            uncompressed: 7,
            window: vec![],
        }]);
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

    fn big_tar() -> Vec<u8> {
        let mut b = ::tar::Builder::new(Vec::new());
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for f in 0..40 {
            let mut data = Vec::new();
            while data.len() < 100_000 + f * 1000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                data.extend_from_slice(format!("{:x} file {f} line\n", x % 65536).as_bytes());
            }
            let mut h = ::tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, format!("d/f{f}"), &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn every_span_decodes_from_its_fetch_range_and_verifies() {
        let tar = big_tar();
        let diff_id = Digest::sha256_of(&tar);
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&tar).unwrap();
            e.finish().unwrap()
        };
        // Several zstd frames, as a seekable zstd writer would produce.
        let zst: Vec<u8> = tar
            .chunks(1_500_000)
            .flat_map(|c| zstd::bulk::compress(c, 3).unwrap())
            .collect();
        for (compression, blob) in [
            (Compression::None, tar.clone()),
            (Compression::Gzip, gz),
            (Compression::Zstd, zst),
        ] {
            let mut ix = LayerIndexer::new(compression, Algorithm::Sha256).unwrap();
            for c in blob.chunks(77_777) {
                ix.push(c).unwrap();
            }
            let layer = Digest::sha256_of(&blob);
            let index = ix.finish(&layer, &diff_id).unwrap();
            assert!(
                index.spans.len() >= 3,
                "{compression:?}: {} spans",
                index.spans.len()
            );
            if compression == Compression::Zstd {
                let Access::Zstd(f) = &index.access else {
                    panic!()
                };
                assert!(f.len() >= 2, "frame starts recorded: {f:?}");
            }
            for i in 0..index.spans.len() {
                let f = index.span_fetch(i, blob.len() as u64);
                let (s, e) = index.span_range(i);
                let data = index
                    .decode_span(i, &blob[f.start as usize..f.end as usize])
                    .unwrap();
                assert_eq!(
                    data,
                    &tar[s as usize..e as usize],
                    "{compression:?} span {i}"
                );
            }
            // A tampered byte inside a span is caught by its hash (or decoding).
            let f = index.span_fetch(1, blob.len() as u64);
            let mut bad = blob[f.start as usize..f.end as usize].to_vec();
            let mid = bad.len() / 2;
            bad[mid] ^= 0x20;
            assert!(index.decode_span(1, &bad).is_err(), "{compression:?}");
            assert_eq!(decode(&encode(&index)).unwrap(), index);
        }
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
