//! Replays every committed fuzz corpus file (`fuzz/corpus/TARGET/*`)
//! through the functions the fuzz targets run, with stable `cargo test`:
//! what the fuzzer once found stays fixed. The seeds of the targets over
//! indexes, manifests, checkpoints and qcow2 files are made here from real
//! ocidisk output (`OCIDISK_WRITE_SEEDS=1` rewrites them); each replay
//! also checks that the committed seeds are exactly what this code makes,
//! so a format change cannot leave the corpus stale.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8]), min: usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| run(&data));
        assert!(r.is_ok(), "{} fails", path.display());
        n += 1;
    }
    assert!(n >= min, "{target}: only {n} corpus files");
}

#[test]
fn tar_indexer_corpus() {
    replay("tar_indexer", targets::tar_indexer, 10);
}

#[test]
fn tar_tree_fs_corpus() {
    replay("tar_tree_fs", targets::tar_tree_fs, 10);
}

/// The slow mode of `tar_tree_fs`: every image the writers plan for a
/// corpus input is written out and checked by the real tools, `e2fsck -fn`
/// (ext4, ext3) and `xfs_repair -n` (XFS). CI runs it over the committed
/// corpus; after a long fuzz run, point `OCIDISK_FSCK_CORPUS` at the grown
/// corpus directory to check every input the fuzzer kept.
#[test]
fn tar_tree_fs_images_pass_e2fsck_and_xfs_repair() {
    let dir = std::env::var_os("OCIDISK_FSCK_CORPUS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/tar_tree_fs"));
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("fs.img");
    let (mut inputs, mut images) = (0, 0);
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        inputs += 1;
        for (filesystem, read_only, image) in targets::planned_images(&data) {
            images += 1;
            targets::write_image(&image, data.get(1..).unwrap_or_default(), &img).unwrap();
            let out = match filesystem {
                ocidisk::fs::Filesystem::Xfs => std::process::Command::new("xfs_repair")
                    .args(["-n", "-f"])
                    .arg(&img)
                    .output(),
                _ => std::process::Command::new("e2fsck")
                    .args(["-fn"])
                    .arg(&img)
                    .output(),
            }
            .expect("e2fsck and xfs_repair are installed (scripts/setup.sh)");
            if !out.status.success() {
                failures.push(format!(
                    "{} as {filesystem:?} (read-only {read_only}): {}{}",
                    path.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    eprintln!("{inputs} inputs, {images} images checked");
    assert!(images >= 20, "only {images} images from {inputs} inputs");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn layer_index_decode_corpus() {
    seeds("layer_index_decode", index_seeds());
    replay("layer_index_decode", targets::layer_index_decode, 5);
}

#[test]
fn manifest_parse_corpus() {
    seeds("manifest_parse", manifest_seeds());
    replay("manifest_parse", targets::manifest_parse, 4);
}

#[test]
fn gzip_checkpoint_corpus() {
    seeds("gzip_checkpoint", checkpoint_seeds());
    replay("gzip_checkpoint", targets::gzip_checkpoint, 3);
}

#[test]
fn virtio_blk_request_corpus() {
    seeds("virtio_blk_request", virtio_seeds());
    replay("virtio_blk_request", targets::virtio_blk_request, 6);
}

/// The seeds do what their names say, so the fuzzer starts from requests
/// that reach every branch, and the target's checks really run.
#[test]
fn virtio_seeds_reach_the_handler() {
    use targets::Outcome;
    let ok = |checked| Outcome { checked, ok: true };
    let failed = |checked| Outcome { checked, ok: false };
    let seeds: std::collections::HashMap<String, Vec<u8>> = virtio_seeds().into_iter().collect();
    let run = |name: &str| targets::serve_chains(&seeds[name]);
    assert_eq!(run("read"), [ok(true)]);
    assert_eq!(run("write"), [ok(true)]);
    assert_eq!(run("write-read-only"), [failed(true)]);
    // flush, get-id, discard, write-zeroes succeed; the unknown type fails.
    assert_eq!(
        run("many"),
        [ok(true), ok(true), ok(true), ok(true), failed(true)]
    );
    assert_eq!(run("indirect"), [ok(true)]);
    assert_eq!(run("into-the-hole"), [failed(false)]);
    assert_eq!(run("loop").len(), 1);
    assert!(!run("loop")[0].ok);
}

#[test]
fn qcow2_open_corpus() {
    seeds("qcow2_open", qcow2_seeds());
    replay("qcow2_open", targets::qcow2_open, 5);
}

/// With `OCIDISK_WRITE_SEEDS=1`, write `made` as `seed-*` files of
/// `target`'s corpus; else check the committed ones are exactly `made`.
fn seeds(target: &str, made: Vec<(String, Vec<u8>)>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    for (name, bytes) in made {
        let path = dir.join(format!("seed-{name}"));
        if std::env::var_os("OCIDISK_WRITE_SEEDS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let committed = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("{}: {e} (OCIDISK_WRITE_SEEDS=1 writes it)", path.display())
            });
            assert!(committed == bytes, "{} is stale", path.display());
        }
    }
}

/// A tar of `files` (name, size): contents compressible but not trivial.
fn tar_of(files: &[(&str, usize)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (i, (name, size)) in files.iter().enumerate() {
        let data: Vec<u8> = (0..*size)
            .map(|j| ((j * 7 + i) % 251) as u8 ^ ((j / 4099) as u8))
            .collect();
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// A tar and its real index, compressed as `compression`.
fn indexed(
    tar: &[u8],
    compression: ocidisk::source::manifest::Compression,
) -> (Vec<u8>, ocidisk::layer_index::LayerIndex) {
    use ocidisk::source::manifest::Compression;
    use std::io::Write;
    let blob = match compression {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(tar, 3).unwrap(),
    };
    let digest = ocidisk::Digest::sha256_of(&blob);
    let diff_id = ocidisk::Digest::sha256_of(tar);
    let mut ix = ocidisk::layer_index::LayerIndexer::new(compression, diff_id.algorithm()).unwrap();
    ix.push(&blob).unwrap();
    (blob, ix.finish(&digest, &diff_id).unwrap())
}

fn index_seeds() -> Vec<(String, Vec<u8>)> {
    use ocidisk::source::manifest::Compression;
    let small = tar_of(&[("etc/a", 10), ("usr/b", 5000), ("usr/c", 0)]);
    let big = tar_of(&[("big", 3 << 20), ("small", 100)]);
    let mut out = Vec::new();
    for (name, tar, c) in [
        ("tar", &small, Compression::None),
        ("gzip", &small, Compression::Gzip),
        ("zstd", &small, Compression::Zstd),
        ("gzip-big", &big, Compression::Gzip),
    ] {
        let ix = indexed(tar, c).1;
        out.push((name.to_string(), ocidisk::layer_index::encode(&ix)));
        // The body alone, which the target also decodes: mutations of it
        // reach the parser past the checksum.
        out.push((
            format!("body-{name}"),
            ocidisk::layer_index::encode_body(&ix),
        ));
    }
    // A tampered one: a byte of the span table flipped.
    let mut bad = out[2].1.clone();
    let n = bad.len();
    bad[n - 20] ^= 0x5a;
    out.push(("gzip-flipped".into(), bad));
    out
}

fn manifest_seeds() -> Vec<(String, Vec<u8>)> {
    let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d('a'), "size": 100},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d('b'), "size": 1000},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": d('c'), "size": 2000},
            {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "digest": d('e'), "size": 5, "urls": ["https://x"]}
        ]
    });
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": d('d'), "size": 500,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d('f'), "size": 500,
             "platform": {"architecture": "arm", "os": "linux", "variant": "v7"}}
        ]
    });
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sh"], "User": "1000:1000", "StopSignal": "SIGINT"},
        "rootfs": {"type": "layers", "diff_ids": [d('1'), d('2')]}
    });
    let schema1 = serde_json::json!({"schemaVersion": 1, "name": "x", "fsLayers": []});
    [
        ("manifest", 0u8, manifest),
        ("index", 4, index),
        ("config", 0, config),
        ("schema1", 3, schema1),
    ]
    .into_iter()
    .map(|(name, ct, v)| {
        let mut b = vec![ct];
        b.extend(serde_json::to_vec(&v).unwrap());
        (name.to_string(), b)
    })
    .collect()
}

fn checkpoint_seeds() -> Vec<(String, Vec<u8>)> {
    use ocidisk::layer_index::Access;
    use ocidisk::source::manifest::Compression;
    let (blob, ix) = indexed(&tar_of(&[("big", 3 << 20)]), Compression::Gzip);
    let Access::Gzip(cps) = ix.access() else {
        panic!("a gzip index has checkpoints")
    };
    assert!(
        cps.len() >= 2,
        "a 3 MiB layer has checkpoints past its start"
    );
    let mut out = Vec::new();
    for (i, cp) in [&cps[0], &cps[cps.len() / 2]].into_iter().enumerate() {
        let w = cp.window_bytes().unwrap();
        let from = (cp.compressed - u64::from(cp.bits > 0)) as usize;
        let mut b = vec![cp.bits];
        b.extend((w.len() as u16).to_le_bytes());
        b.extend_from_slice(&w);
        b.extend(100u16.to_le_bytes());
        b.extend(4000u16.to_le_bytes());
        b.extend(&blob[from..(from + 3000).min(blob.len())]);
        out.push((format!("checkpoint{i}"), b));
    }
    // The middle one's compressed bytes given to the first checkpoint.
    let mut wrong = out[0].1.clone();
    let wlen = u16::from_le_bytes([wrong[1], wrong[2]]) as usize;
    wrong.truncate(3 + wlen + 4);
    wrong.extend(&out[1].1[out[1].1.len() - 3000..]);
    out.push(("mismatched".into(), wrong));
    out
}

#[test]
fn toc_parse_corpus() {
    seeds("toc_parse", toc_seeds());
    replay("toc_parse", targets::toc_parse, 3);
}

/// A zTOC (kind byte 0) and eStargz / zstd:chunked JSON tables of a small
/// gzip layer, as ocidisk and the formats' writers make them.
fn toc_seeds() -> Vec<(String, Vec<u8>)> {
    use std::io::Write as _;
    let tar = tar_of(&[("a", 70_000), ("b", 3), ("c", 300_000)]);
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&tar).unwrap();
    let gz = e.finish().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer");
    std::fs::write(&path, &gz).unwrap();
    let ix = ocidisk::layer_index::index_blob(
        &path,
        &ocidisk::digest::Digest::sha256_of(&gz),
        &ocidisk::digest::Digest::sha256_of(&tar),
        ocidisk::source::manifest::Compression::Gzip,
    )
    .unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let z = ocidisk::toc::ztoc::build(&ix, &f, gz.len() as u64, 64 << 10, "seed").unwrap();
    let sha = |b: &[u8]| format!("sha256:{}", ocidisk::digest::Digest::sha256_of(b).hex());
    let body = |i: usize| {
        let e = &ix.entries()[i];
        &tar[e.data_offset as usize..(e.data_offset + e.data_len) as usize]
    };
    let json = serde_json::json!({"version": 1, "entries": [
        {"name": "a", "type": "reg", "size": 70_000, "offset": 10, "chunkSize": 65_536,
         "chunkDigest": sha(&body(0)[..65_536]), "digest": sha(body(0)), "modtime": "2024-01-02T03:04:05Z"},
        {"name": "a", "type": "chunk", "offset": 900, "chunkOffset": 65_536,
         "chunkDigest": sha(&body(0)[65_536..])},
        {"name": "b", "type": "reg", "size": 3, "offset": 1200, "digest": sha(body(1)), "endOffset": 1300},
        {"name": "d", "type": "dir", "mode": 493, "uid": 1, "gid": 2,
         "xattrs": {"user.x": "eHl6"}},
        {"name": "l", "type": "symlink", "linkName": "a"},
    ]});
    let json = serde_json::to_vec(&json).unwrap();
    vec![
        ("ztoc".into(), [&[0u8][..], &z].concat()),
        ("estargz".into(), [&[1u8][..], &json].concat()),
        ("zstd-chunked".into(), [&[2u8][..], &json].concat()),
    ]
}

fn qcow2_seeds() -> Vec<(String, Vec<u8>)> {
    use ocidisk::qcow2::{Codec, Qcow2Options, Qcow2Writer};
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    for (name, compression) in [
        ("plain", None),
        ("zlib", Some(Codec::Zlib)),
        ("zstd", Some(Codec::Zstd)),
    ] {
        let path = dir.path().join(name);
        let f = std::fs::File::create_new(&path).unwrap();
        let opts = Qcow2Options {
            cluster_bits: 9,
            compression,
        };
        let mut w = Qcow2Writer::new(f, &path, 8192, opts).unwrap();
        for c in [0u64, 3, 15] {
            let data: Vec<u8> = (0..512).map(|i| (i % 7) as u8 + c as u8).collect();
            w.push(c, data).unwrap();
        }
        w.finish().unwrap();
        out.push((name.to_string(), std::fs::read(&path).unwrap()));
    }
    let mut truncated = out[1].1.clone();
    truncated.truncate(truncated.len() - 700);
    out.push(("truncated".into(), truncated));
    let mut l1 = out[0].1.clone();
    l1[47] ^= 0x10; // the L1 table's offset, moved
    out.push(("moved-l1".into(), l1));
    out
}

/// One input of the `virtio_blk_request` target (see its docs): options
/// byte, avail index, descriptors `(addr, len, flags, next)`, heads, and
/// the bytes copied to guest address 0x1000.
fn virtio_input(
    opts: u8,
    avail: u16,
    descs: &[(u32, u32, u16, u16)],
    heads: &[u16],
    fill: &[(usize, &[u8])],
) -> Vec<u8> {
    let qsize = 1usize << ((opts >> 1) % 5);
    let mut out = vec![opts];
    out.extend_from_slice(&avail.to_le_bytes());
    for i in 0..qsize {
        let (a, l, f, n) = descs.get(i).copied().unwrap_or_default();
        out.extend_from_slice(&a.to_le_bytes());
        out.extend_from_slice(&l.to_le_bytes());
        out.extend_from_slice(&f.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
    }
    for i in 0..qsize {
        out.extend_from_slice(&heads.get(i).copied().unwrap_or_default().to_le_bytes());
    }
    let mut mem = Vec::new();
    for (at, bytes) in fill {
        if mem.len() < at + bytes.len() {
            mem.resize(at + bytes.len(), 0);
        }
        mem[*at..at + bytes.len()].copy_from_slice(bytes);
    }
    out.extend_from_slice(&mem);
    out
}

/// A virtio-blk request header.
fn blk_header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = vec![0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

fn virtio_seeds() -> Vec<(String, Vec<u8>)> {
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT: u16 = 4;
    // Guest address 0x1000 + offset holds fill offset `offset`.
    let read = blk_header(0, 3);
    let write = blk_header(1, 5);
    let data = vec![0xa5u8; 1024];
    let mut seg = vec![0u8; 16];
    seg[0..8].copy_from_slice(&7u64.to_le_bytes());
    seg[8..12].copy_from_slice(&4u32.to_le_bytes());
    let mut out = Vec::new();
    // queue size 4 (options byte 4; +1 = read-only device).
    let simple = |h: &[u8], w: bool| {
        let f = if w { NEXT } else { NEXT | WRITE };
        virtio_input(
            4,
            1,
            &[
                (0x1000, 16, NEXT, 1),
                (0x1800, 1024, f, 2),
                (0x3000, 1, WRITE, 0),
            ],
            &[0],
            &[(0, h), (0x800, &data)],
        )
    };
    out.push(("read".into(), simple(&read, false)));
    out.push(("write".into(), simple(&write, true)));
    let mut ro = simple(&write, true);
    ro[0] = 5;
    out.push(("write-read-only".into(), ro));
    // Queue size 16: flush, get-id, discard, write-zeroes, an unknown type.
    let (flush, id) = (blk_header(4, 0), blk_header(8, 0));
    let (discard, zeroes, odd) = (blk_header(11, 0), blk_header(13, 0), blk_header(99, 0));
    out.push((
        "many".into(),
        virtio_input(
            8,
            5,
            &[
                (0x1000, 16, NEXT, 1),
                (0x3000, 1, WRITE, 0),
                (0x1010, 16, NEXT, 3),
                (0x2000, 21, WRITE, 0),
                (0x1020, 16, NEXT, 5),
                (0x1100, 16, NEXT, 6),
                (0x3001, 1, WRITE, 0),
                (0x1030, 16, NEXT, 8),
                (0x1100, 16, NEXT, 9),
                (0x3002, 1, WRITE, 0),
                (0x1040, 16, NEXT, 11),
                (0x3003, 1, WRITE, 0),
            ],
            &[0, 2, 4, 7, 10],
            &[
                (0, &flush),
                (0x10, &id),
                (0x20, &discard),
                (0x30, &zeroes),
                (0x40, &odd),
                (0x100, &seg),
            ],
        ),
    ));
    // An indirect table at 0x4000 holding header, data and status.
    let mut table = Vec::new();
    for (a, l, f, n) in [
        (0x1000u64, 16u32, NEXT, 1u16),
        (0x10000, 2048, NEXT | WRITE, 2),
        (0x3000, 1, WRITE, 0),
    ] {
        table.extend_from_slice(&a.to_le_bytes());
        table.extend_from_slice(&l.to_le_bytes());
        table.extend_from_slice(&f.to_le_bytes());
        table.extend_from_slice(&n.to_le_bytes());
    }
    out.push((
        "indirect".into(),
        virtio_input(
            4,
            1,
            &[(0x4000, 48, INDIRECT, 0)],
            &[0],
            &[(0, &read), (0x3000, &table)],
        ),
    ));
    // A buffer that runs from the first region into the hole.
    out.push((
        "into-the-hole".into(),
        virtio_input(
            4,
            1,
            &[
                (0x1000, 16, NEXT, 1),
                (0x7e00, 1024, NEXT | WRITE, 2),
                (0x3000, 1, WRITE, 0),
            ],
            &[0],
            &[(0, &read)],
        ),
    ));
    // A chain that loops back on itself.
    out.push((
        "loop".into(),
        virtio_input(
            4,
            1,
            &[(0x1000, 16, NEXT, 1), (0x1800, 512, NEXT | WRITE, 0)],
            &[0],
            &[(0, &read)],
        ),
    ));
    out
}
