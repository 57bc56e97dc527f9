//! What the fuzz targets run, shared with `tests/fuzz_corpus.rs`, which
//! replays every committed corpus file through the same functions with
//! stable `cargo test`. Each function panics only on a broken invariant.

mod virtio;
pub use virtio::{Outcome, serve_chains, virtio_blk_request};

use std::io::Write;

use ocidisk::digest::Digest;
use ocidisk::fs::{self, Filesystem, FsOptions};
use ocidisk::layer_index::{Access, LayerIndex, Span};
use ocidisk::tar::{TarEntry, TarIndexer, check_map};
use ocidisk::tree::Tree;

/// Index `data` as a tar stream, fed in pieces whose size the first byte
/// picks (so that block boundaries fall everywhere). `None` if the stream
/// is refused; the entries, checked, if it is accepted.
pub fn index(data: &[u8]) -> Option<Vec<TarEntry>> {
    let (chunk, tar) = match data.split_first() {
        Some((c, rest)) => (usize::from(*c).max(1) * 7, rest),
        None => (1, data),
    };
    let mut ix = TarIndexer::new();
    for piece in tar.chunks(chunk) {
        if ix.write_all(piece).is_err() {
            return None;
        }
    }
    let entries = ix.finish().ok()?;
    for e in &entries {
        // Every entry's data lies inside the stream.
        let end = e.data_offset.checked_add(e.data_len);
        assert!(
            end.is_some_and(|end| end <= tar.len() as u64),
            "data of {:?} runs past the stream",
            e.path
        );
        if let Some(s) = &e.sparse {
            let total = check_map(s, e.size).expect("an accepted sparse map is valid");
            assert_eq!(total, e.data_len, "sparse map and stored length agree");
        }
        assert!(e.mtime_nsec < 1_000_000_000, "nanoseconds below a second");
    }
    Some(entries)
}

/// The sha256 of `data` as bytes.
fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(Digest::sha256_of(data).hex(), &mut out).unwrap_or_default();
    out
}

/// Fuzz target `tar_indexer`: arbitrary bytes into the tar indexer.
pub fn tar_indexer(data: &[u8]) {
    let _ = index(data);
}

/// Fuzz target `tar_tree_fs`: an accepted tar becomes a one-layer image,
/// its merged tree and then each filesystem (ext4, ext3, xfs), read-only
/// and writable; every image the writers produce must pass
/// `FsImage::validate`.
pub fn tar_tree_fs(data: &[u8]) {
    let _ = planned_images(data);
}

/// What [`tar_tree_fs`] plans for `data`: each filesystem image that a
/// writer accepted (validated), with its writer and mode. The layer's tar
/// is `data[1..]`.
pub fn planned_images(data: &[u8]) -> Vec<(Filesystem, bool, fs::FsImage)> {
    let mut planned = Vec::new();
    let Some(entries) = index(data) else {
        return planned;
    };
    // The stream `index` read (after the chunk-size byte), as one
    // uncompressed layer with one hashed span (none when it is empty).
    let tar = data.get(1..).unwrap_or_default();
    let digest = Digest::sha256_of(tar);
    let spans = if tar.is_empty() {
        Vec::new()
    } else {
        vec![Span {
            start: 0,
            sha256: sha256(tar),
            cend: tar.len() as u64,
        }]
    };
    let Ok(layer) = LayerIndex::new(
        digest.clone(),
        digest.clone(),
        tar.len() as u64,
        entries,
        Access::Tar,
        spans,
    ) else {
        panic!("an accepted tar makes a consistent index");
    };
    let Ok(tree) = Tree::flatten(&[layer]) else {
        return planned;
    };
    for filesystem in Filesystem::ALL {
        for read_only in [true, false] {
            let opts = FsOptions {
                filesystem,
                size: None,
                read_only,
                uuid: None,
                seed: None,
            }
            .for_image(&digest);
            if let Ok(image) = fs::plan(&tree, &opts) {
                image
                    .validate()
                    .expect("a planned filesystem is consistent");
                planned.push((filesystem, read_only, image));
            }
        }
    }
    planned
}

/// Write `image`, whose one layer is the uncompressed `tar`, to `path` as
/// a sparse raw disk (what `materialize` writes), for the real checkers.
pub fn write_image(image: &fs::FsImage, tar: &[u8], path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(path)?;
    file.set_len(image.size)?;
    image.write_metadata(&file)?;
    for e in &image.data {
        let bytes = usize::try_from(e.tar_offset)
            .ok()
            .zip(usize::try_from(e.tar_offset + e.len).ok())
            .and_then(|(a, b)| tar.get(a..b))
            .ok_or_else(|| std::io::Error::other("a data extent outside the layer"))?;
        file.write_all_at(bytes, e.device_offset)?;
    }
    Ok(())
}

/// Fuzz target `layer_index_decode`: arbitrary bytes as a stored layer
/// index file (what a tampered cache directory holds) and as the body
/// inside one (past the checksum, which random bytes never match). A
/// decoded index re-encodes to the same index, and every span can be
/// asked for.
pub fn layer_index_decode(data: &[u8]) {
    use ocidisk::layer_index::{decode, decode_body, encode, encode_body};
    if let Some(ix) = decode(data) {
        assert_eq!(decode(&encode(&ix)).as_ref(), Some(&ix), "file round trip");
        use_index(&ix);
    }
    if let Some(ix) = decode_body(data) {
        assert_eq!(
            decode_body(&encode_body(&ix)).as_ref(),
            Some(&ix),
            "body round trip"
        );
        assert_eq!(decode(&encode(&ix)).as_ref(), Some(&ix), "file round trip");
        use_index(&ix);
    }
}

/// Ask a decoded index for everything a reader asks for.
fn use_index(ix: &LayerIndex) {
    for i in 0..ix.spans().len() {
        let _ = ix.span_fetch(i, u64::MAX / 2);
        let _ = ix.span_range(i);
    }
    let _ = ix.span_at(ix.tar_size() / 2);
    let _ = ix.span_at(ix.tar_size());
}

/// Fuzz target `toc_parse`: arbitrary bytes as a table of contents (the
/// first byte picks the format: 0 a SOCI zTOC, odd an eStargz JSON table,
/// other even values a zstd:chunked one): refused with an error, or made
/// into a layer index that survives the store's round trip and answers
/// every reader's question; decoding junk as its first span is an error,
/// not a panic.
pub fn toc_parse(data: &[u8]) {
    use ocidisk::layer_index::{ChunkCodec, decode_body, encode_body};
    use ocidisk::toc::{chunked, ztoc};
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let layer = Digest::sha256_of(b"fuzz layer");
    let diff_id = Digest::sha256_of(b"fuzz tar");
    let ix = if kind == 0 {
        ztoc::parse(&layer, body).ok().and_then(|p| {
            let size = p.compressed_size;
            p.into_index(&layer, &diff_id, size).ok()
        })
    } else {
        let codec = if kind % 2 == 1 {
            ChunkCodec::Gzip
        } else {
            ChunkCodec::Zstd
        };
        chunked::JsonToc::parse(body)
            .ok()
            .and_then(|t| chunked::build(&layer, &diff_id, t, codec, 1 << 40, None).ok())
    };
    let Some(ix) = ix else {
        return;
    };
    assert_eq!(
        decode_body(&encode_body(&ix)).as_ref(),
        Some(&ix),
        "body round trip"
    );
    use_index(&ix);
    if !ix.spans().is_empty() {
        let _ = ix.decode_spans(0, &body[..body.len().min(4096)]);
    }
}

/// Content types a registry may send with a manifest.
const CONTENT_TYPES: [Option<&str>; 6] = [
    None,
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
    Some("application/json; charset=utf-8"),
];

/// Fuzz target `manifest_parse`: arbitrary bytes as a manifest or index
/// (the first byte picks the transport's content type) and as an image
/// config, through the media-type policy: no panic.
pub fn manifest_parse(data: &[u8]) {
    use ocidisk::source::manifest::{
        ImageConfig, Manifest, check_image_manifest, layer_compression,
    };
    let (ct, body) = match data.split_first() {
        Some((c, rest)) => (CONTENT_TYPES[usize::from(*c) % CONTENT_TYPES.len()], rest),
        None => (None, data),
    };
    match Manifest::parse(body, ct) {
        Ok(Manifest::Image(m)) => {
            if check_image_manifest(&m).is_ok() {
                for l in &m.layers {
                    let _ = layer_compression(l);
                }
            }
        }
        Ok(Manifest::Index(ix)) => {
            let _ = ix.image_entries().count();
            for p in ix.platforms() {
                let _ = ix.select(&p);
            }
        }
        Err(_) => {}
    }
    if let Ok(c) = ImageConfig::parse(body) {
        let _ = c.platform();
    }
}

/// Fuzz target `gzip_checkpoint`: a checkpoint from a tampered index
/// (bit count, stored window) and compressed bytes that may not belong to
/// it. Layout: bits, window length (2 bytes LE), window, skip (2 bytes
/// LE), length (2 bytes LE), compressed bytes. Decoding fails cleanly or
/// gives exactly the length asked for.
pub fn gzip_checkpoint(data: &[u8]) {
    use ocidisk::layer_index::gzip::{Checkpoint, read_span};
    let take = |d: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        let (a, b) = (d.get(..n)?.to_vec(), d.get(n..)?);
        *d = b;
        Some(a)
    };
    let mut d = data;
    let Some(head) = take(&mut d, 3) else { return };
    let wlen = usize::from(u16::from_le_bytes([head[1], head[2]]));
    let wlen = wlen.min(d.len());
    let Some(window) = take(&mut d, wlen) else {
        return;
    };
    let Some(tail) = take(&mut d, 4) else { return };
    let skip = u64::from(u16::from_le_bytes([tail[0], tail[1]]));
    let len = usize::from(u16::from_le_bytes([tail[2], tail[3]]));
    let Some(cp) = Checkpoint::from_stored(0, head[0], 0, window) else {
        return;
    };
    if let Ok(out) = read_span(&cp, d, skip, len) {
        assert_eq!(out.len(), len, "a span of the length asked for");
    }
}

/// Fuzz target `qcow2_open`: arbitrary bytes as a qcow2 file given to
/// `--flush-to`'s updater: refused with an error, or read and written
/// without a panic, and what was written reads back.
pub fn qcow2_open(data: &[u8]) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "ocidisk-fuzz-qcow2-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, data).expect("write the input to a temp file");
    if let Ok(mut q) = ocidisk::qcow2::Qcow2File::open(&path) {
        let mut buf = vec![0u8; 4096];
        if q.read_at(&mut buf, 0).is_ok() && q.write_at(b"fuzz", 100).is_ok() {
            q.read_at(&mut buf, 0)
                .expect("a written cluster reads back");
            assert_eq!(&buf[100..104], b"fuzz");
        }
    }
    let _ = std::fs::remove_file(&path);
}
