//! Layer indexes: every tar entry of a layer with where its data lies in the
//! uncompressed stream, built in the same streaming pass that verifies the
//! layer (`indexer.rs`), stored in the cache by layer digest (`store.rs`),
//! and the spans a read fetches and verifies (`span.rs`).

pub mod gzip;
mod indexer;
mod span;
mod store;

pub use indexer::{
    IndexSink, LayerIndexer, PushError, SpanOut, SpanSink, TarTap, index_blob, push_to_index_error,
};
pub use span::SpanError;
pub use store::{IndexStore, decode, decode_body, encode, encode_body};

use std::io;
use std::path::PathBuf;

use crate::cache::CacheError;
use crate::digest::Digest;
use crate::source::manifest::Compression;
use crate::tar::{TarEntry, TarError};

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
    /// Parts that do not make an index readers can rely on.
    #[error("index of layer {layer} is inconsistent: {what}")]
    Inconsistent {
        /// The layer.
        layer: Digest,
        /// The rule broken: access points must start at offset 0 and
        /// increase; spans start at 0, increase and end inside the tar;
        /// every entry's data lies inside the tar.
        what: &'static str,
    },
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Uncompressed bytes between access points (gzip checkpoints sit at the
/// first deflate block boundary past this much output; each costs a 32 KiB
/// window, kept zstd-compressed in a scratch file from the moment the
/// indexing pass makes it, so memory does not grow with the layer). A read
/// decodes from the access point before it, so this bounds what a small
/// read costs. 256 KiB: a VM boot from the Debian benchmark image
/// (bench/boot.sh) fetches 4.5% of the compressed image (6.3% at 512 KiB).
pub const SPAN: u64 = 256 << 10;
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
    /// gzip checkpoints from a SOCI zTOC: one span per checkpoint, each
    /// span's hash taken over its *compressed* bytes (from its checkpoint
    /// to the next, as fetched) instead of its output.
    GzipRanges(Vec<gzip::Checkpoint>),
    /// File data compressed chunk by chunk (eStargz gzip members,
    /// zstd:chunked frames), described by a table of contents: one span per
    /// chunk, in a stream of its own where the chunks lie back to back
    /// (offsets are not the tar's), each hashed over its output.
    Chunks(ChunkCodec, Vec<ChunkAt>),
}

/// How a chunk is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkCodec {
    /// One or more gzip members.
    Gzip,
    /// One or more zstd frames.
    Zstd,
}

/// Where a chunk's bytes start in the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkAt {
    /// The compressed offset decoding starts at (a member or frame start).
    pub compressed: u64,
    /// Decoded bytes before the chunk's first byte (eStargz `innerOffset`).
    pub skip: u64,
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

/// The index of one layer. Its fields are private: every index in hand
/// has passed the consistency check readers rely on (built by the
/// indexer, decoded from the cache, or made with [`LayerIndex::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerIndex {
    /// The layer blob's digest.
    layer: Digest,
    /// sha256 of the uncompressed tar.
    diff_id: Digest,
    /// Length of the uncompressed tar.
    tar_size: u64,
    /// The entries in stream order.
    entries: Vec<TarEntry>,
    /// Random-access points.
    access: Access,
    /// The spans, in order, covering the whole tar.
    spans: Vec<Span>,
}

/// Where [`LayerIndex::write_windows`] wrote each checkpoint's window
/// (`None`: it was in a file already).
#[derive(Debug)]
pub struct WindowsWritten(Vec<Option<gzip::WindowPlace>>);

/// What to fetch to read one span, and where it sits in the decoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanFetch {
    /// First compressed byte to fetch.
    pub start: u64,
    /// End of the compressed range (exclusive), clamped to the blob size.
    pub end: u64,
}

impl LayerIndex {
    /// Take the tar entries out of the index, leaving what reading spans
    /// needs once the filesystem is planned (an open disk keeps only that,
    /// and drops the entries where it costs no one time).
    pub fn take_entries(&mut self) -> Vec<TarEntry> {
        std::mem::take(&mut self.entries)
    }

    /// Write the checkpoint windows held in memory (most of a gzip index's
    /// memory) to `file` from `*at` (advanced past them), and say where
    /// each went; they are still read from memory until
    /// [`LayerIndex::windows_written`] is given the answer. The writing
    /// needs only a shared borrow, so it can run beside readers of the
    /// index.
    pub fn write_windows(
        &self,
        file: &std::fs::File,
        at: &mut u64,
    ) -> std::io::Result<WindowsWritten> {
        let mut places = Vec::new();
        if let Access::Gzip(cps) | Access::GzipRanges(cps) = &self.access {
            for c in cps {
                places.push(c.write_window(file, at)?);
            }
        }
        Ok(WindowsWritten(places))
    }

    /// Read the windows that [`LayerIndex::write_windows`] wrote to `file`
    /// from there from now on, and let their memory go.
    pub fn windows_written(&mut self, file: &std::sync::Arc<std::fs::File>, w: WindowsWritten) {
        if let Access::Gzip(cps) | Access::GzipRanges(cps) = &mut self.access {
            for (c, place) in cps.iter_mut().zip(w.0) {
                if let Some(place) = place {
                    c.window_written(file, place);
                }
            }
        }
    }

    /// An index from its parts, if they are consistent (see
    /// [`IndexError::Inconsistent`] for what is checked).
    pub fn new(
        layer: Digest,
        diff_id: Digest,
        tar_size: u64,
        entries: Vec<TarEntry>,
        access: Access,
        spans: Vec<Span>,
    ) -> Result<LayerIndex, IndexError> {
        let ix = LayerIndex {
            layer,
            diff_id,
            tar_size,
            entries,
            access,
            spans,
        };
        match ix.inconsistency() {
            None => Ok(ix),
            Some(what) => Err(IndexError::Inconsistent {
                layer: ix.layer,
                what,
            }),
        }
    }

    /// The layer blob's digest.
    pub fn layer(&self) -> &Digest {
        &self.layer
    }

    /// The digest of the uncompressed tar.
    pub fn diff_id(&self) -> &Digest {
        &self.diff_id
    }

    /// Length of the uncompressed tar.
    pub fn tar_size(&self) -> u64 {
        self.tar_size
    }

    /// The entries in stream order.
    pub fn entries(&self) -> &[TarEntry] {
        &self.entries
    }

    /// Where reads can start in the compressed blob.
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// The hashed spans, in order, covering the whole tar.
    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

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
            Access::Gzip(cps) | Access::GzipRanges(cps) => {
                let cp = &cps[cps.partition_point(|c| c.uncompressed <= start) - 1];
                (cp.compressed - u64::from(cp.bits > 0), cp.uncompressed)
            }
            Access::Zstd(frames) => frames[frames.partition_point(|f| f.1 <= start) - 1],
            Access::Chunks(_, at) => return (at[i].compressed, start, i),
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
            Access::Gzip(_) => self.spans[i].cend.saturating_add(16),
            Access::Zstd(_) => self.spans[i].cend.saturating_add(64),
            // Exactly the hashed range; a chunk's members or frames.
            Access::GzipRanges(_) | Access::Chunks(..) => self.spans[i].cend,
        };
        SpanFetch {
            start: c,
            end: end.min(blob_size),
        }
    }

    /// The key span `i`'s decoded bytes are stored under in the shared
    /// chunk store, which is content-addressed: the sha256 of the bytes.
    /// `None` for spans hashed as compressed bytes (their output's hash is
    /// not known before they are fetched, so the store cannot serve them).
    pub fn chunk_key(&self, i: usize) -> Option<[u8; 32]> {
        match self.access {
            Access::GzipRanges(_) => None,
            _ => Some(self.spans[i].sha256),
        }
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

impl LayerIndex {
    /// The rule readers rely on that this index breaks, if any: access
    /// points start at offset 0 and increase; spans start at 0, increase
    /// and end inside the tar; every entry's data lies inside the tar.
    fn inconsistency(&self) -> Option<&'static str> {
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
                cps.first().is_some_and(|c| c.uncompressed == 0)
                    && increasing(cps.iter().map(|c| c.uncompressed))
                    && cps.iter().all(|c| c.compressed >= u64::from(c.bits > 0))
            }
            Access::Zstd(frames) => {
                frames.first() == Some(&(0, 0)) && increasing(frames.iter().map(|f| f.1))
            }
            Access::Chunks(_, at) => {
                at.len() == self.spans.len()
                    && at
                        .iter()
                        .zip(&self.spans)
                        .all(|(a, s)| s.cend > a.compressed)
            }
            Access::GzipRanges(cps) => {
                cps.first().is_some_and(|c| c.uncompressed == 0)
                    && increasing(cps.iter().map(|c| c.uncompressed))
                    && increasing(cps.iter().map(|c| c.compressed))
                    && cps.iter().all(|c| c.compressed >= u64::from(c.bits > 0))
                    && cps.len() == self.spans.len()
                    && cps.iter().zip(&self.spans).enumerate().all(|(i, (c, s))| {
                        let next = cps.get(i + 1).map(|n| n.compressed);
                        s.start == c.uncompressed
                            && s.cend > c.compressed
                            && next.is_none_or(|n| s.cend == n)
                    })
            }
        };
        if !access_ok {
            return Some("access points must start at offset 0 and increase");
        }
        let spans_ok = self.spans.is_empty() && self.tar_size == 0
            || self.spans.first().is_some_and(|s| s.start == 0)
                && increasing(self.spans.iter().map(|s| s.start))
                && self.spans.last().is_some_and(|s| s.start < self.tar_size);
        if !spans_ok {
            return Some("spans must start at 0, increase and end inside the tar");
        }
        let entries_ok = self.entries.iter().all(|e| {
            e.data_offset
                .checked_add(e.data_len)
                .is_some_and(|end| end <= self.tar_size)
        });
        if !entries_ok {
            return Some("an entry's data lies outside the tar");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar::{EntryKind, SparseSegment};

    pub(super) fn sample() -> LayerIndex {
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
                    sparse: Some(vec![
                        SparseSegment { offset: 0, len: 4 },
                        SparseSegment {
                            offset: 4_999_999_996,
                            len: 4,
                        },
                    ]),
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
            access: Access::Gzip(vec![gzip::Checkpoint::new(10, 3, 0, &[1, 2, 3])]),
            spans: vec![Span {
                start: 0,
                sha256: [7; 32],
                cend: 99,
            }],
        }
    }

    pub(super) fn big_tar() -> Vec<u8> {
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
}
