//! Small writers of layers that carry their own table of contents
//! (nothing packaged here writes them; skopeo writes only the old
//! zstd:chunked):
//! - eStargz: a layer's tar cut into gzip members at every file payload
//!   and chunk, the table (`stargz.index.json`, in a tar of its own in one
//!   more member) and the 51-byte footer, as containerd/stargz-snapshotter's
//!   `estargz.Writer` lays them out (docs/toc-formats.md §4);
//! - current zstd:chunked: payload chunks in zstd frames of their own, tar
//!   headers in frames between them, the zstd-compressed manifest in a
//!   skippable frame, the 64-byte `GNUlInUx` footer and the
//!   `io.github.containers.zstd-chunked.*` annotations, as
//!   containers/storage's compressor writes them (§5).
//!
//! One liberty: `modtime` keeps nanoseconds where the tar has them (the
//! eStargz reference writer cuts them), so a disk from the table equals
//! the full pass. `lie` edits the table before it is hashed and written.

#![allow(dead_code)]

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use serde_json::json;
use sha2::Digest as _;

use super::imagegen::{self, LayerSpec};

/// Which table-of-contents format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Estargz,
    ZstdChunked,
}

/// A layer blob and what its manifest entry needs.
pub struct Stargz {
    pub blob: Vec<u8>,
    /// sha256 of the whole decompressed stream.
    pub diff_id: String,
    /// The layer descriptor's annotations.
    pub annotations: serde_json::Value,
    /// The TOC JSON.
    pub toc: Vec<u8>,
    pub format: Format,
}

/// A table edit (a lie) applied before the table is hashed and written.
pub type Lie<'a> = &'a dyn Fn(&mut serde_json::Value);

fn zst(data: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(data, 3).unwrap()
}

fn skippable(data: &[u8]) -> Vec<u8> {
    let mut f = 0x184D_2A50u32.to_le_bytes().to_vec();
    f.extend_from_slice(&(data.len() as u32).to_le_bytes());
    f.extend_from_slice(data);
    f
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// `tar` (a whole tar, end-of-archive blocks included) in `format`, with
/// file payloads cut into chunks of at most `chunk` bytes.
pub fn convert(tar: &[u8], chunk: u64, format: Format, lie: Lie<'_>) -> Stargz {
    let mut ix = ocidisk::tar::TarIndexer::new();
    ix.write_all(tar).unwrap();
    let entries = ix.finish().unwrap();
    // eStargz: the entries' stream without the end-of-archive blocks (the
    // TOC's tar follows it); zstd:chunked compresses the whole tar.
    let main = match format {
        Format::Estargz => &tar[..tar.len() - 1024],
        Format::ZstdChunked => tar,
    };
    // Cut points: each chunk of each non-empty file starts a member.
    let mut cuts = vec![0u64];
    for e in &entries {
        if e.kind == ocidisk::tar::EntryKind::File && e.data_len > 0 {
            let mut at = 0;
            while at < e.data_len {
                cuts.push(e.data_offset + at);
                at += chunk;
            }
            if format == Format::ZstdChunked {
                // Payload frames end with the payload: headers go apart.
                cuts.push(e.data_offset + e.data_len);
            }
        }
    }
    cuts.sort_unstable();
    cuts.dedup();
    cuts.push(main.len() as u64);
    let mut blob = Vec::new();
    let mut member_at = std::collections::HashMap::new();
    for w in cuts.windows(2) {
        member_at.insert(w[0], blob.len() as u64);
        let piece = &main[w[0] as usize..w[1] as usize];
        blob.extend_from_slice(&match format {
            Format::Estargz => gz(piece),
            Format::ZstdChunked => zst(piece),
        });
    }
    member_at.insert(main.len() as u64, blob.len() as u64);
    let mut toc_entries = Vec::new();
    for e in &entries {
        use ocidisk::tar::EntryKind as K;
        let kind = match e.kind {
            K::File => "reg",
            K::Dir => "dir",
            K::Symlink => "symlink",
            K::Hardlink => "hardlink",
            K::CharDevice => "char",
            K::BlockDevice => "block",
            K::Fifo => "fifo",
        };
        let name = String::from_utf8(e.path.clone()).unwrap();
        let mut j = json!({
            "name": name,
            "type": kind,
            "modtime": ocidisk::toc::time::rfc3339(e.mtime, e.mtime_nsec),
            "mode": e.mode,
            "uid": e.uid,
            "gid": e.gid,
        });
        if !e.link.is_empty() {
            j["linkName"] = json!(String::from_utf8(e.link.clone()).unwrap());
        }
        if matches!(e.kind, K::CharDevice | K::BlockDevice) {
            j["devMajor"] = json!(e.dev_major);
            j["devMinor"] = json!(e.dev_minor);
        }
        if !e.xattrs.is_empty() {
            let x: serde_json::Map<String, serde_json::Value> = e
                .xattrs
                .iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8(k.clone()).unwrap(),
                        json!(base64::engine::general_purpose::STANDARD.encode(v)),
                    )
                })
                .collect();
            j["xattrs"] = json!(x);
        }
        if e.kind == K::File {
            let data = &main[e.data_offset as usize..(e.data_offset + e.data_len) as usize];
            j["size"] = json!(e.data_len);
            j["digest"] = json!(sha(data));
            let chunks = e.data_len.div_ceil(chunk);
            let mut at = 0;
            while at < e.data_len {
                let len = chunk.min(e.data_len - at);
                let piece = &data[at as usize..(at + len) as usize];
                let mut c = if at == 0 {
                    j.clone()
                } else {
                    json!({"type": "chunk", "name": name, "chunkOffset": at})
                };
                c["offset"] = json!(member_at[&(e.data_offset + at)]);
                // zstd:chunked names a single chunk by the file's digest.
                if format == Format::Estargz || chunks > 1 {
                    if len < e.data_len - at {
                        c["chunkSize"] = json!(len);
                    }
                    c["chunkDigest"] = json!(sha(piece));
                }
                if format == Format::ZstdChunked && at == 0 {
                    c["endOffset"] = json!(member_at[&(e.data_offset + e.data_len)]);
                }
                if format == Format::ZstdChunked && chunks > 1 {
                    c["chunkSize"] = json!(len);
                }
                toc_entries.push(c);
                at += len;
            }
            if e.data_len > 0 {
                continue;
            }
        }
        toc_entries.push(j);
    }
    let mut toc = json!({"version": 1, "entries": toc_entries});
    lie(&mut toc);
    match format {
        Format::Estargz => {
            let toc = serde_json::to_vec_pretty(&toc).unwrap();
            let mut toc_tar = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_ustar();
            h.set_size(toc.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            toc_tar
                .append_data(&mut h, "stargz.index.json", &toc[..])
                .unwrap();
            let toc_tar = toc_tar.into_inner().unwrap();
            let toc_at = blob.len() as u64;
            blob.extend_from_slice(&gz(&toc_tar));
            // The footer: an empty gzip member whose extra field names the TOC.
            let mut footer = vec![
                0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
            ];
            footer.extend_from_slice(format!("{toc_at:016x}STARGZ").as_bytes());
            footer.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
            assert_eq!(footer.len(), 51);
            blob.extend_from_slice(&footer);
            let mut plain = main.to_vec();
            plain.extend_from_slice(&toc_tar);
            Stargz {
                blob,
                diff_id: sha(&plain),
                annotations: json!({"containerd.io/snapshot/stargz/toc.digest": sha(&toc)}),
                toc,
                format,
            }
        }
        Format::ZstdChunked => {
            let toc = serde_json::to_vec(&toc).unwrap();
            let z = zst(&toc);
            let offset = blob.len() as u64 + 8;
            blob.extend_from_slice(&skippable(&z));
            let mut footer = Vec::new();
            for v in [offset, z.len() as u64, toc.len() as u64, 1, 0, 0, 0] {
                footer.extend_from_slice(&v.to_le_bytes());
            }
            footer.extend_from_slice(b"GNUlInUx");
            blob.extend_from_slice(&skippable(&footer));
            let p = "io.github.containers.zstd-chunked.";
            Stargz {
                blob,
                diff_id: sha(main),
                annotations: json!({
                    format!("{p}manifest-checksum"): sha(&z),
                    format!("{p}manifest-position"): format!("{offset}:{}:{}:1", z.len(), toc.len()),
                }),
                toc,
                format,
            }
        }
    }
}

/// An OCI layout at `dir` tagged `tag` whose layers are `layers` in
/// `format` (chunks of at most `chunk` bytes, tables edited by `lie`),
/// each layer descriptor with its annotations. Returns the manifest's
/// digest and the layers.
pub fn write_image(
    dir: &Path,
    tag: &str,
    layers: &[LayerSpec],
    chunk: u64,
    format: Format,
    lie: Lie<'_>,
) -> (String, Vec<Stargz>) {
    let built: Vec<Stargz> = layers
        .iter()
        .map(|l| convert(&l.tar(), chunk, format, lie))
        .collect();
    let mut descs = Vec::new();
    for s in &built {
        let digest = imagegen::write_blob(dir, &s.blob);
        descs.push(json!({
            "mediaType": match s.format {
                Format::Estargz => "application/vnd.oci.image.layer.v1.tar+gzip",
                Format::ZstdChunked => "application/vnd.oci.image.layer.v1.tar+zstd",
            },
            "digest": digest,
            "size": s.blob.len(),
            "annotations": s.annotations,
        }));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": built.iter().map(|s| s.diff_id.clone()).collect::<Vec<_>>()},
    }))
    .unwrap();
    let config_digest = imagegen::write_blob(dir, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let manifest_digest = imagegen::write_blob(dir, &manifest);
    imagegen::add_to_index(
        dir,
        tag,
        json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
        }),
    );
    (manifest_digest, built)
}
