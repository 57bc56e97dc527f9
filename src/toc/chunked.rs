//! The JSON tables of contents of eStargz (`stargz.index.json`) and
//! zstd:chunked (its manifest) share one shape: every tar entry in order,
//! and for file data, chunks that each start a gzip member or zstd frame
//! of their own, with the sha256 of their uncompressed bytes. This turns
//! such a table into a layer index a lazy disk reads through: entries as
//! the tar has them, file data laid back to back in a stream of the
//! index's own, one span per chunk (see `Access::Chunks`).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::time::parse_rfc3339;
use crate::digest::Digest;
use crate::layer_index::{Access, ChunkAt, ChunkCodec, LayerIndex, Span};
use crate::tar::{EntryKind, TarEntry};

/// One entry of the table, as both formats write it (fields one format
/// lacks default to zero).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JsonEntry {
    /// `reg`, `dir`, `symlink`, `hardlink`, `char`, `block`, `fifo`, `chunk`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Path in the layer.
    #[serde(default)]
    pub name: String,
    /// Link target.
    #[serde(default)]
    pub link_name: String,
    /// Mode bits.
    #[serde(default)]
    pub mode: i64,
    /// Owner.
    #[serde(default)]
    pub uid: i64,
    /// Group.
    #[serde(default)]
    pub gid: i64,
    /// Modification time, RFC 3339.
    #[serde(default, rename = "modtime")]
    pub mod_time: Option<String>,
    /// Device numbers.
    #[serde(default)]
    pub dev_major: i64,
    /// Device numbers.
    #[serde(default)]
    pub dev_minor: i64,
    /// Extended attributes, values base64.
    #[serde(default)]
    pub xattrs: Option<BTreeMap<String, String>>,
    /// File size.
    #[serde(default)]
    pub size: u64,
    /// Compressed offset of the member/frame where this chunk starts.
    #[serde(default)]
    pub offset: u64,
    /// zstd:chunked: compressed end of the file's last frame.
    #[serde(default)]
    pub end_offset: u64,
    /// Offset of this chunk in the file.
    #[serde(default)]
    pub chunk_offset: u64,
    /// Chunk length (0: to the end of the file).
    #[serde(default)]
    pub chunk_size: u64,
    /// sha256 of the chunk's bytes.
    #[serde(default)]
    pub chunk_digest: Option<String>,
    /// sha256 of the whole file.
    #[serde(default)]
    pub digest: Option<String>,
    /// eStargz: decoded bytes before the chunk in its member.
    #[serde(default)]
    pub inner_offset: u64,
}

/// The parts of a table of contents: `{"version": 1, "entries": [...]}`.
#[derive(Debug, Deserialize)]
pub struct JsonToc {
    /// 1.
    pub version: i64,
    /// The entries.
    pub entries: Vec<JsonEntry>,
}

impl JsonToc {
    /// Parse a table's JSON.
    pub fn parse(json: &[u8]) -> Result<JsonToc, String> {
        serde_json::from_slice(json).map_err(|e| e.to_string())
    }
}

/// A chunk's place beyond the JSON: an entry the reader adds itself
/// (eStargz's own `stargz.index.json`, whose data sits in the TOC member).
#[derive(Debug, Clone)]
pub struct Extra {
    /// The tar entry.
    pub entry: TarEntry,
    /// Where its data's member starts and how far in the data is.
    pub at: ChunkAt,
    /// Compressed end of that member.
    pub end: u64,
    /// sha256 of the data.
    pub sha256: [u8; 32],
}

/// The chunks found so far, back to back in the index's own stream.
#[derive(Default)]
struct Chunks {
    at: Vec<ChunkAt>,
    spans: Vec<Span>,
    /// Where the next chunk starts in the index's stream.
    v: u64,
}

impl Chunks {
    fn push(&mut self, e: &JsonEntry, len: u64, sha256: [u8; 32], cend: u64) {
        self.at.push(ChunkAt {
            compressed: e.offset,
            skip: e.inner_offset,
        });
        self.spans.push(Span {
            start: self.v,
            sha256,
            cend,
        });
        self.v += len;
    }
}

fn sha256_hex(s: &str) -> Option<[u8; 32]> {
    let h = s.strip_prefix("sha256:")?;
    <[u8; 32]>::try_from(hex::decode(h).ok()?).ok()
}

/// Build the layer index. `data_end`: where the compressed file data ends
/// (the TOC's offset), the bound of the last chunk.
pub fn build(
    layer: &Digest,
    diff_id: &Digest,
    toc: JsonToc,
    codec: ChunkCodec,
    data_end: u64,
    extra: Option<Extra>,
) -> Result<LayerIndex, String> {
    if toc.version != 1 {
        return Err(format!("table of contents version {}", toc.version));
    }
    // Every place a member or frame starts, to bound each chunk's fetch.
    let mut starts: Vec<u64> = toc
        .entries
        .iter()
        .filter(|e| (e.kind == "reg" && e.size > 0) || e.kind == "chunk")
        .map(|e| e.offset)
        .collect();
    starts.push(data_end);
    starts.sort_unstable();
    starts.dedup();
    let end_of = |offset: u64| -> Result<u64, String> {
        let i = starts.partition_point(|s| *s <= offset);
        starts
            .get(i)
            .copied()
            .ok_or_else(|| format!("a chunk at {offset}, past the data's end {data_end}"))
    };
    // A zstd:chunked file's last frame ends at its `endOffset`; any other
    // chunk's fetch runs to the next member or frame start.
    let chunk_end = |e: &JsonEntry, last: bool| match codec {
        ChunkCodec::Zstd if last && e.end_offset > e.offset => Ok(e.end_offset),
        _ => end_of(e.offset),
    };
    let mut entries = Vec::new();
    let mut out = Chunks::default();
    // The file whose chunks are being read: (name, size, next chunk offset).
    let mut open: Option<(String, u64, u64)> = None;
    for e in &toc.entries {
        let bad = |what: &str| format!("entry {:?}: {what}", e.name);
        if e.kind == "chunk" {
            let Some((name, size, next)) = open.as_mut() else {
                return Err(bad("a chunk outside a file"));
            };
            if e.name != *name && !e.name.is_empty() {
                return Err(bad("a chunk of another file"));
            }
            if e.chunk_offset != *next {
                return Err(bad("chunks out of order"));
            }
            let len = if e.chunk_size == 0 {
                *size - *next
            } else {
                e.chunk_size
            };
            let digest = e
                .chunk_digest
                .as_deref()
                .and_then(sha256_hex)
                .ok_or_else(|| bad("a chunk without a sha256 chunkDigest"))?;
            *next += len;
            if *next > *size {
                return Err(bad("chunks past the file's size"));
            }
            let last = *next == *size;
            out.push(e, len, digest, chunk_end(e, last)?);
            if last {
                open = None;
            }
            continue;
        }
        if let Some((name, size, next)) = &open {
            return Err(format!(
                "file {name:?}: chunks cover {next} of its {size} bytes"
            ));
        }
        let kind = match e.kind.as_str() {
            "reg" => EntryKind::File,
            "dir" => EntryKind::Dir,
            "symlink" => EntryKind::Symlink,
            "hardlink" => EntryKind::Hardlink,
            "char" => EntryKind::CharDevice,
            "block" => EntryKind::BlockDevice,
            "fifo" => EntryKind::Fifo,
            other => return Err(bad(&format!("unknown type {other:?}"))),
        };
        let (mtime, mtime_nsec) = match e.mod_time.as_deref() {
            None | Some("") => (0, 0),
            Some(t) => parse_rfc3339(t.as_bytes()).ok_or_else(|| bad("modtime is not RFC 3339"))?,
        };
        let mut xattrs = Vec::new();
        for (k, val) in e.xattrs.iter().flatten() {
            use base64::Engine as _;
            let val = base64::engine::general_purpose::STANDARD
                .decode(val)
                .map_err(|_| bad("an xattr value that is not base64"))?;
            xattrs.push((k.as_bytes().to_vec(), val));
        }
        let num = |x: i64, what: &str| u32::try_from(x).map_err(|_| bad(what));
        let size = if kind == EntryKind::File { e.size } else { 0 };
        entries.push(TarEntry {
            path: e.name.as_bytes().to_vec(),
            kind,
            mode: (e.mode & 0o7777) as u32,
            uid: num(e.uid, "uid out of range")?,
            gid: num(e.gid, "gid out of range")?,
            mtime,
            mtime_nsec,
            size,
            link: e.link_name.as_bytes().to_vec(),
            dev_major: num(e.dev_major, "device major out of range")?,
            dev_minor: num(e.dev_minor, "device minor out of range")?,
            xattrs,
            data_offset: out.v,
            data_len: size,
            sparse: None,
        });
        if kind == EntryKind::File && size > 0 {
            if e.chunk_offset != 0 {
                return Err(bad("a file whose first chunk is not at 0"));
            }
            let len = if e.chunk_size == 0 {
                size
            } else {
                e.chunk_size.min(size)
            };
            // A file in one chunk may carry only the whole file's digest.
            let digest = e
                .chunk_digest
                .as_deref()
                .or(if len == size {
                    e.digest.as_deref()
                } else {
                    None
                })
                .and_then(sha256_hex)
                .ok_or_else(|| bad("file data without a sha256 digest"))?;
            let last = len == size;
            out.push(e, len, digest, chunk_end(e, last)?);
            if !last {
                open = Some((e.name.clone(), size, len));
            }
        }
    }
    if let Some((name, size, next)) = open {
        return Err(format!(
            "file {name:?}: chunks cover {next} of its {size} bytes"
        ));
    }
    if let Some(x) = extra {
        let mut entry = x.entry;
        entry.data_offset = out.v;
        let len = entry.data_len;
        entries.push(entry);
        if len > 0 {
            out.at.push(x.at);
            out.spans.push(Span {
                start: out.v,
                sha256: x.sha256,
                cend: x.end,
            });
            out.v += len;
        }
    }
    LayerIndex::new(
        layer.clone(),
        diff_id.clone(),
        out.v,
        entries,
        Access::Chunks(codec, out.at),
        out.spans,
    )
    .map_err(|e| e.to_string())
}
