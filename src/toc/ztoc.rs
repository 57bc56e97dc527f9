//! SOCI zTOCs (awslabs/soci-snapshotter `ztoc/fbs/ztoc.fbs`, version
//! "0.9"): one gzip layer's table of contents (every tar entry with the
//! uncompressed offset of its data) and its "zinfo" checkpoints (where
//! inflating can resume, with the 32 KiB window to resume with, and the
//! sha256 of each span's compressed bytes). Made from a verified layer
//! index and its blob ([`build`]); read back into a layer index a lazy
//! disk serves from ([`to_index`]). The wire format is in
//! `docs/toc-formats.md` §1.

use super::flatbuf::{Field, FlatError, Obj, Table, write};
use super::time::{parse_rfc3339, rfc3339};
use crate::digest::Digest;
use crate::layer_index::{Access, LayerIndex, Span, gzip};
use crate::tar::{EntryKind, TarEntry};

/// The only zTOC version there is.
pub const VERSION: &str = "0.9";
/// zinfo: bytes of a packed checkpoint (in, out, bits, window).
const PACKED: usize = 8 + 8 + 1 + gzip::WINDOW;
/// zinfo: the blob header (checkpoint count, span size).
const HEADER: usize = 4 + 8;
/// `CompressionAlgorithm.Gzip`.
const GZIP: u8 = 1;

/// Errors making or reading a zTOC.
#[derive(Debug, thiserror::Error)]
pub enum ZtocError {
    /// The flatbuffer is malformed.
    #[error("zTOC of layer {layer}: {source}")]
    Flat {
        /// The layer.
        layer: Digest,
        /// Where it broke.
        source: FlatError,
    },
    /// Well-formed, but not something this reader can trust or use.
    #[error("zTOC of layer {layer}: {what}")]
    Invalid {
        /// The layer.
        layer: Digest,
        /// What is wrong with it.
        what: String,
    },
    /// The layer cannot be described by a zTOC (only gzip layers without
    /// sparse files can).
    #[error("layer {layer} has no zTOC form: {why}")]
    Unsupported {
        /// The layer.
        layer: Digest,
        /// Why.
        why: &'static str,
    },
    /// Reading the layer blob failed.
    #[error("reading layer {layer} for its zTOC: {source}")]
    Io {
        /// The layer.
        layer: Digest,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Make the zTOC of a verified gzip layer: its entries, and every
/// checkpoint of `ix` at least `span_size` uncompressed bytes past the one
/// before (the same rule as soci's zran: spans are "more than span_size"
/// and end at deflate block boundaries), with the sha256 of each span's
/// compressed bytes read from `blob`. Deterministic: the same layer, span
/// size and tool name give the same bytes on every host.
pub fn build(
    ix: &LayerIndex,
    blob: &std::fs::File,
    blob_size: u64,
    span_size: u64,
    build_tool: &str,
) -> Result<Vec<u8>, ZtocError> {
    use std::os::unix::fs::FileExt as _;
    let layer = ix.layer().clone();
    let unsupported = |why| ZtocError::Unsupported {
        layer: layer.clone(),
        why,
    };
    let Access::Gzip(all) = ix.access() else {
        return Err(unsupported("not gzip-compressed"));
    };
    if ix.entries().iter().any(|e| e.sparse.is_some()) {
        return Err(unsupported("it holds a sparse file"));
    }
    let mut chosen: Vec<&gzip::Checkpoint> = Vec::new();
    for c in all {
        if chosen
            .last()
            .is_none_or(|l| c.uncompressed - l.uncompressed > span_size)
        {
            chosen.push(c);
        }
    }
    let mut zinfo = Vec::with_capacity(HEADER + chosen.len() * PACKED);
    zinfo.extend_from_slice(&(chosen.len() as i32).to_le_bytes());
    zinfo.extend_from_slice(&(span_size as i64).to_le_bytes());
    let mut digests = Vec::with_capacity(chosen.len());
    for (i, c) in chosen.iter().enumerate() {
        zinfo.extend_from_slice(&c.compressed.to_le_bytes());
        zinfo.extend_from_slice(&c.uncompressed.to_le_bytes());
        zinfo.push(c.bits);
        let w = c.window().map_err(|e| ZtocError::Io {
            layer: layer.clone(),
            source: std::io::Error::other(e),
        })?;
        // The window ends at the checkpoint: pad in front (what zran's
        // memset leaves before 32 KiB of output exist).
        zinfo.resize(zinfo.len() + gzip::WINDOW - w.len(), 0);
        zinfo.extend_from_slice(&w);
        let start = c.compressed - u64::from(c.bits > 0);
        let end = chosen.get(i + 1).map_or(blob_size, |n| n.compressed);
        let mut buf = vec![0u8; (end - start) as usize];
        blob.read_exact_at(&mut buf, start)
            .map_err(|source| ZtocError::Io {
                layer: layer.clone(),
                source,
            })?;
        digests.push(Digest::sha256_of(&buf).to_string().into_bytes());
    }
    let files = ix.entries().iter().map(file_metadata).collect();
    let ztoc = Obj::default()
        .with(0, Field::Str(VERSION.into()))
        .with(1, Field::Str(build_tool.into()))
        .with(2, Field::I64(blob_size as i64))
        .with(3, Field::I64(ix.tar_size() as i64))
        .with(
            4,
            Field::Table(Obj::default().with(0, Field::Tables(files))),
        )
        .with(
            5,
            Field::Table(
                Obj::default()
                    .with(1, Field::U32((chosen.len() as u32).wrapping_sub(1)))
                    .with(2, Field::Strs(digests))
                    .with(3, Field::Bytes(zinfo)),
            ),
        );
    Ok(write(&ztoc))
}

fn kind_name(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File => "reg",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
        EntryKind::Hardlink => "hardlink",
        EntryKind::CharDevice => "char",
        EntryKind::BlockDevice => "block",
        EntryKind::Fifo => "fifo",
    }
}

fn file_metadata(e: &TarEntry) -> Obj {
    let mut xattrs: Vec<(Vec<u8>, &[u8])> = e
        .xattrs
        .iter()
        .map(|(k, v)| ([&b"SCHILY.xattr."[..], k].concat(), &v[..]))
        .collect();
    xattrs.sort();
    // Zero numbers and empty strings are left out, as FlatBuffers builders
    // leave out defaults: readers see the same values.
    let mut o = Obj::default()
        .with(0, Field::Str(e.path.clone()))
        .with(1, Field::Str(kind_name(e.kind).into()))
        .with(5, Field::I64(i64::from(e.mode)))
        .with(10, Field::Str(rfc3339(e.mtime, e.mtime_nsec).into_bytes()));
    for (slot, v) in [
        (2, e.data_offset),
        (3, e.size),
        (11, u64::from(e.dev_major)),
        (12, u64::from(e.dev_minor)),
    ] {
        if v != 0 {
            o = o.with(slot, Field::I64(v as i64));
        }
    }
    for (slot, v) in [(6, e.uid), (7, e.gid)] {
        if v != 0 {
            o = o.with(slot, Field::U32(v));
        }
    }
    if !e.link.is_empty() {
        o = o.with(4, Field::Str(e.link.clone()));
    }
    if !xattrs.is_empty() {
        let x = xattrs
            .into_iter()
            .map(|(k, v)| {
                Obj::default()
                    .with(0, Field::Str(k))
                    .with(1, Field::Str(v.to_vec()))
            })
            .collect();
        o = o.with(13, Field::Tables(x));
    }
    o
}

/// A zTOC read back: the entries and the checkpoints a layer index needs.
pub struct Parsed {
    /// `build_tool_identifier`.
    pub build_tool: String,
    /// `compressed_archive_size`.
    pub compressed_size: u64,
    /// The tar entries, in stream order.
    pub entries: Vec<TarEntry>,
    /// The span size the checkpoints were made with.
    pub span_size: u64,
    checkpoints: Vec<gzip::Checkpoint>,
    digests: Vec<[u8; 32]>,
    tar_size: u64,
}

/// Parse the zTOC of `layer`, checking everything a reader relies on.
pub fn parse(layer: &Digest, bytes: &[u8]) -> Result<Parsed, ZtocError> {
    let flat = |source| ZtocError::Flat {
        layer: layer.clone(),
        source,
    };
    let invalid = |what: String| ZtocError::Invalid {
        layer: layer.clone(),
        what,
    };
    let root = Table::root(bytes).map_err(flat)?;
    let version = root.bytes(0).map_err(flat)?.unwrap_or_default();
    if version != VERSION.as_bytes() {
        return Err(invalid(format!(
            "version {:?}, this reader knows {VERSION}",
            String::from_utf8_lossy(version)
        )));
    }
    let build_tool = String::from_utf8_lossy(root.bytes(1).map_err(flat)?.unwrap_or_default());
    let size = |slot, what: &str| {
        let v = root.i64(slot, 0).map_err(flat)?;
        u64::try_from(v).map_err(|_| invalid(format!("negative {what} {v}")))
    };
    let compressed_size = size(2, "compressed size")?;
    let tar_size = size(3, "uncompressed size")?;
    let info = root
        .table(5)
        .map_err(flat)?
        .ok_or_else(|| invalid("no compression info".into()))?;
    if info.u8(0, GZIP).map_err(flat)? != GZIP {
        return Err(ZtocError::Unsupported {
            layer: layer.clone(),
            why: "its zTOC describes an uncompressed layer",
        });
    }
    let zinfo = info.ubytes(3).map_err(flat)?.unwrap_or_default();
    let (span_size, checkpoints) = zinfo_checkpoints(zinfo).map_err(|w| invalid(w.into()))?;
    let max_span = info.u32(1, 0).map_err(flat)?;
    let digests: Vec<[u8; 32]> = info
        .strings(2)
        .map_err(flat)?
        .into_iter()
        .map(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|s| s.strip_prefix("sha256:"))
                .and_then(|h| hex::decode(h).ok())
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
                .ok_or_else(|| invalid("a span digest that is not sha256:<64 hex>".into()))
        })
        .collect::<Result<_, _>>()?;
    if digests.len() != checkpoints.len() || u64::from(max_span) + 1 != checkpoints.len() as u64 {
        return Err(invalid(format!(
            "{} checkpoints, {} span digests, max_span_id {max_span}",
            checkpoints.len(),
            digests.len()
        )));
    }
    let toc = root
        .table(4)
        .map_err(flat)?
        .ok_or_else(|| invalid("no TOC".into()))?;
    let mut entries = toc
        .tables(0)
        .map_err(flat)?
        .into_iter()
        .map(|t| entry(&t).map_err(|e| e.into_error(layer)))
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.data_offset);
    Ok(Parsed {
        build_tool: build_tool.into_owned(),
        compressed_size,
        entries,
        span_size,
        checkpoints,
        digests,
        tar_size,
    })
}

impl Parsed {
    /// The layer index a lazy disk reads through: every span checked
    /// against the zTOC's digest of its compressed bytes. `blob_size` is
    /// the layer's size in the manifest, which the zTOC must agree with.
    pub fn into_index(
        self,
        layer: &Digest,
        diff_id: &Digest,
        blob_size: u64,
    ) -> Result<LayerIndex, ZtocError> {
        if self.compressed_size != blob_size {
            return Err(ZtocError::Invalid {
                layer: layer.clone(),
                what: format!(
                    "made for a {} byte blob; the manifest says {blob_size}",
                    self.compressed_size
                ),
            });
        }
        let spans = self
            .checkpoints
            .iter()
            .zip(&self.digests)
            .enumerate()
            .map(|(i, (c, d))| Span {
                start: c.uncompressed,
                sha256: *d,
                cend: self
                    .checkpoints
                    .get(i + 1)
                    .map_or(blob_size, |n| n.compressed),
            })
            .collect();
        LayerIndex::new(
            layer.clone(),
            diff_id.clone(),
            self.tar_size,
            self.entries,
            Access::GzipRanges(self.checkpoints),
            spans,
        )
        .map_err(|e| ZtocError::Invalid {
            layer: layer.clone(),
            what: e.to_string(),
        })
    }
}

/// The zinfo blob: (span size, checkpoints). Both layouts soci wrote: v2
/// (every checkpoint) and v1 (checkpoint 0 left out, rebuilt as zran
/// makes it: after a 10-byte gzip header, window all zeros).
fn zinfo_checkpoints(b: &[u8]) -> Result<(u64, Vec<gzip::Checkpoint>), &'static str> {
    if b.len() < HEADER {
        return Err("checkpoint blob shorter than its header");
    }
    let n = i32::from_le_bytes(b[0..4].try_into().unwrap_or_default());
    let span = i64::from_le_bytes(b[4..12].try_into().unwrap_or_default());
    let n = usize::try_from(n).map_err(|_| "negative checkpoint count")?;
    let span = u64::try_from(span).map_err(|_| "negative span size")?;
    let body = &b[HEADER..];
    let (stored, legacy) = if n.checked_mul(PACKED) == Some(body.len()) {
        (n, false)
    } else if n.checked_sub(1).and_then(|m| m.checked_mul(PACKED)) == Some(body.len()) {
        (n - 1, true)
    } else {
        return Err("checkpoint blob length does not match its count");
    };
    let mut cps = Vec::with_capacity(n);
    if legacy {
        cps.push(gzip::Checkpoint::new(10, 0, 0, &[]));
    }
    for p in body.chunks_exact(PACKED).take(stored) {
        let at =
            |r: std::ops::Range<usize>| u64::from_le_bytes(p[r].try_into().unwrap_or_default());
        let (input, output, bits) = (at(0..8), at(8..16), p[16]);
        if bits > 7 || (bits > 0 && input == 0) {
            return Err("a checkpoint with impossible bit position");
        }
        // Raw: the disk spills windows to a file right after planning.
        cps.push(
            gzip::Checkpoint::with_raw_window(input, bits, output, &p[17..])
                .ok_or("a checkpoint with impossible bit position")?,
        );
    }
    Ok((span, cps))
}

/// A reason an entry is refused (the layer is added by the caller).
struct EntryError(String);

impl EntryError {
    fn into_error(self, layer: &Digest) -> ZtocError {
        ZtocError::Invalid {
            layer: layer.clone(),
            what: self.0,
        }
    }
}

impl From<FlatError> for EntryError {
    fn from(e: FlatError) -> EntryError {
        EntryError(e.to_string())
    }
}

fn entry(t: &Table<'_>) -> Result<TarEntry, EntryError> {
    let name = t.bytes(0)?.unwrap_or_default().to_vec();
    let shown = || String::from_utf8_lossy(&name).into_owned();
    let kind = match t.bytes(1)?.unwrap_or_default() {
        b"reg" => EntryKind::File,
        b"dir" => EntryKind::Dir,
        b"symlink" => EntryKind::Symlink,
        b"hardlink" => EntryKind::Hardlink,
        b"char" => EntryKind::CharDevice,
        b"block" => EntryKind::BlockDevice,
        b"fifo" => EntryKind::Fifo,
        other => {
            return Err(EntryError(format!(
                "entry {}: unknown type {:?}",
                shown(),
                String::from_utf8_lossy(other)
            )));
        }
    };
    let num = |slot, what: &str| -> Result<u64, EntryError> {
        let v = t.i64(slot, 0)?;
        u64::try_from(v).map_err(|_| EntryError(format!("entry {}: negative {what}", shown())))
    };
    let small = |slot, what: &str| -> Result<u32, EntryError> {
        u32::try_from(num(slot, what)?)
            .map_err(|_| EntryError(format!("entry {}: {what} out of range", shown())))
    };
    let offset = num(2, "offset")?;
    let size = num(3, "size")?;
    let time = t.bytes(10)?.unwrap_or_default();
    let (mtime, mtime_nsec) = parse_rfc3339(time).ok_or_else(|| {
        EntryError(format!(
            "entry {}: modification time {:?} is not RFC 3339",
            shown(),
            String::from_utf8_lossy(time)
        ))
    })?;
    let mut xattrs = Vec::new();
    for x in t.tables(13)? {
        let key = x.bytes(0)?.unwrap_or_default();
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            xattrs.push((name.to_vec(), x.bytes(1)?.unwrap_or_default().to_vec()));
        }
    }
    Ok(TarEntry {
        kind,
        mode: (t.i64(5, 0)? & 0o7777) as u32,
        uid: t.u32(6, 0)?,
        gid: t.u32(7, 0)?,
        mtime,
        mtime_nsec,
        size,
        link: t.bytes(4)?.unwrap_or_default().to_vec(),
        dev_major: small(11, "device major")?,
        dev_minor: small(12, "device minor")?,
        xattrs,
        data_offset: offset,
        data_len: if kind == EntryKind::File { size } else { 0 },
        sparse: None,
        path: name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzip layer of ~1.3 MB of tar with assorted entries, its blob in
    /// a temp file, and its verified index.
    fn layer() -> (tempfile::TempDir, Vec<u8>, Vec<u8>, LayerIndex) {
        use std::io::Write as _;
        let mut b = ::tar::Builder::new(Vec::new());
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut dir = ::tar::Header::new_gnu();
        dir.set_entry_type(::tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_mtime(1_700_000_000);
        b.append_data(&mut dir, "d/", &[][..]).unwrap();
        for f in 0..30 {
            let mut data = Vec::new();
            while data.len() < 40_000 + f * 1000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                data.extend_from_slice(format!("{:x} file {f}\n", x % 65536).as_bytes());
            }
            let mut h = ::tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o4755);
            h.set_uid(1000 + f as u64);
            h.set_mtime(1_600_000_000 + f as u64);
            b.append_data(&mut h, format!("d/f{f}"), &data[..]).unwrap();
        }
        let mut l = ::tar::Header::new_gnu();
        l.set_entry_type(::tar::EntryType::Symlink);
        l.set_size(0);
        b.append_link(&mut l, "d/link", "f1").unwrap();
        let tar = b.into_inner().unwrap();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(&tar).unwrap();
        let gz = e.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, &gz).unwrap();
        let ix = crate::layer_index::index_blob(
            &path,
            &Digest::sha256_of(&gz),
            &Digest::sha256_of(&tar),
            crate::source::manifest::Compression::Gzip,
        )
        .unwrap();
        (dir, tar, gz, ix)
    }

    #[test]
    fn a_ztoc_reads_back_into_an_index_that_decodes_every_span() {
        let (dir, tar, gz, ix) = layer();
        let blob = std::fs::File::open(dir.path().join("blob")).unwrap();
        let bytes = build(&ix, &blob, gz.len() as u64, 256 << 10, "test").unwrap();
        assert_eq!(
            bytes,
            build(&ix, &blob, gz.len() as u64, 256 << 10, "test").unwrap()
        );
        let parsed = parse(ix.layer(), &bytes).unwrap();
        assert_eq!(
            (parsed.build_tool.as_str(), parsed.span_size),
            ("test", 256 << 10)
        );
        assert_eq!(parsed.entries.len(), ix.entries().len());
        for (a, b) in parsed.entries.iter().zip(ix.entries()) {
            assert_eq!(a, b, "entry read back as written");
        }
        let back = parse(ix.layer(), &bytes)
            .unwrap()
            .into_index(ix.layer(), ix.diff_id(), gz.len() as u64)
            .unwrap();
        assert!(back.spans().len() >= 4, "{} spans", back.spans().len());
        for i in 0..back.spans().len() {
            let f = back.span_fetch(i, gz.len() as u64);
            let mut got = back
                .decode_spans(i, &gz[f.start as usize..f.end as usize])
                .unwrap();
            let (s, e) = back.span_range(i);
            assert_eq!(got.len(), 1);
            assert_eq!(
                got.pop().unwrap().1,
                &tar[s as usize..e as usize],
                "span {i}"
            );
            let mut bad = gz[f.start as usize..f.end as usize].to_vec();
            let mid = bad.len() / 2;
            bad[mid] ^= 1;
            assert!(matches!(
                back.decode_spans(i, &bad),
                Err(crate::layer_index::SpanError::Mismatch { .. })
            ));
        }
        assert_eq!(
            back.chunk_key(0),
            None,
            "no content address known before the fetch"
        );
        // A zTOC for another blob size, or cut short, is refused.
        assert!(matches!(
            parse(ix.layer(), &bytes)
                .unwrap()
                .into_index(ix.layer(), ix.diff_id(), 5),
            Err(ZtocError::Invalid { .. })
        ));
        assert!(parse(ix.layer(), &bytes[..bytes.len() - 100]).is_err());
    }

    #[test]
    fn zinfo_lengths_say_the_version() {
        let cp = |input: u64, out: u64| {
            let mut v = input.to_le_bytes().to_vec();
            v.extend_from_slice(&out.to_le_bytes());
            v.push(0);
            v.resize(PACKED, 7);
            v
        };
        let mut v2 = 2i32.to_le_bytes().to_vec();
        v2.extend_from_slice(&(1i64 << 22).to_le_bytes());
        v2.extend(cp(10, 0));
        v2.extend(cp(5000, 70_000));
        let (span, cps) = zinfo_checkpoints(&v2).unwrap();
        assert_eq!((span, cps.len(), cps[1].uncompressed), (1 << 22, 2, 70_000));
        let mut v1 = 2i32.to_le_bytes().to_vec();
        v1.extend_from_slice(&(1i64 << 22).to_le_bytes());
        v1.extend(cp(5000, 70_000));
        let (_, cps) = zinfo_checkpoints(&v1).unwrap();
        assert_eq!(
            (cps[0].compressed, cps[0].uncompressed, cps[1].compressed),
            (10, 0, 5000)
        );
        assert!(zinfo_checkpoints(&v2[..v2.len() - 1]).is_err());
        let mut neg = v2.clone();
        neg[0..4].copy_from_slice(&(-1i32).to_le_bytes());
        assert!(zinfo_checkpoints(&neg).is_err());
    }
}
