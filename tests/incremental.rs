//! Incremental updates (#15): a new image version keeps the old one's
//! blocks. v1 is the standard test image, v2 the same plus a layer that
//! modifies a file, deletes one, adds a directory of files and whites out
//! a directory. Two fresh materializations share at least 90% of v1's
//! allocated 512 KiB chunks (allocation read by `dumpe2fs`), byte for
//! byte at the same offsets; `materialize --base` gives the fresh bytes.

mod common;

use std::path::Path;
use std::process::Command;

use common::cli::Ocidisk;
use common::imagegen::{self, Compression, EntrySpec as E, LayerSpec, Platform};

const CHUNK: u64 = 512 * 1024;

/// The layer v2 adds on top of the standard image.
fn update_layer() -> LayerSpec {
    let t = 1_700_000_000;
    LayerSpec::new(
        "v2 update",
        vec![
            E::text("/etc/hostname", "ocidisk-v2\n", 0o644).mtime(t),
            E::whiteout("/home/user/.profile").mtime(t),
            E::dir("/srv", 0o755).mtime(t),
            E::dir("/srv/new", 0o755).mtime(t),
            E::text("/srv/new/a", "new file a\n", 0o644).mtime(t),
            E::text("/srv/new/b", "new file b\n", 0o644).mtime(t),
            E::file(
                "/srv/new/c",
                imagegen::Content::Pattern {
                    len: 70_000,
                    seed: 7,
                },
                0o644,
            )
            .mtime(t),
            E::whiteout("/opt/was-file").mtime(t),
        ],
    )
}

/// v1 and v2 in one layout, tagged `v1` and `v2`.
fn write_versions(dir: &Path, compression: Compression) {
    imagegen::write_standard(dir, "v1", compression);
    let mut layers = imagegen::standard_layers();
    layers.push(update_layer());
    imagegen::write_image(dir, "v2", &layers, compression, &Platform::linux_amd64());
}

/// Allocated blocks of an ext image, from `dumpe2fs`'s free ranges.
fn allocated_blocks(img: &Path) -> Vec<bool> {
    let out = Command::new("dumpe2fs").arg(img).output().unwrap();
    assert!(out.status.success(), "dumpe2fs {}", img.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let blocks = std::fs::metadata(img).unwrap().len() / 4096;
    let mut used = vec![true; blocks as usize];
    for line in text.lines() {
        // Per-group lines are indented; the header's total is not.
        let Some(list) = line.strip_prefix("  Free blocks: ") else {
            continue;
        };
        for r in list.split(", ").filter(|r| !r.is_empty()) {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            for u in &mut used[a as usize..=b as usize] {
                *u = false;
            }
        }
    }
    used
}

/// (v1's allocated chunks, those v2 holds byte for byte at the same
/// offset).
fn chunk_sharing(v1: &Path, v2: &Path) -> (u64, u64) {
    let used = allocated_blocks(v1);
    let (a, b) = (std::fs::read(v1).unwrap(), std::fs::read(v2).unwrap());
    let per = (CHUNK / 4096) as usize;
    let (mut allocated, mut shared) = (0, 0);
    for (i, c) in a.chunks(CHUNK as usize).enumerate() {
        if !used[i * per..((i + 1) * per).min(used.len())]
            .iter()
            .any(|u| *u)
        {
            continue;
        }
        allocated += 1;
        let at = i * CHUNK as usize;
        if b.get(at..at + c.len()) == Some(c) {
            shared += 1;
        } else {
            eprintln!("{}: chunk {i} differs", v1.display());
        }
    }
    (allocated, shared)
}

#[test]
fn a_new_top_layer_keeps_the_old_chunks() {
    let dir = tempfile::tempdir().unwrap();
    write_versions(dir.path(), Compression::Gzip);
    let o = Ocidisk::new();
    for (name, extra) in [
        ("ext4", &[][..]),
        ("ext4-ro", &["--read-only"][..]),
        ("ext3", &["--fs", "ext3"][..]),
        ("ext3-ro", &["--fs", "ext3", "--read-only"][..]),
    ] {
        let img = |v: &str| dir.path().join(format!("{name}-{v}.img"));
        for v in ["v1", "v2"] {
            let r = format!("oci:{}:{v}", dir.path().display());
            let out = img(v);
            let mut args = vec!["materialize", &r, out.to_str().unwrap()];
            args.extend_from_slice(extra);
            o.ok(&args);
        }
        let (allocated, shared) = chunk_sharing(&img("v1"), &img("v2"));
        eprintln!("{name}: {shared} of {allocated} allocated chunks shared");
        assert!(
            shared * 10 >= allocated * 9,
            "{name}: only {shared} of v1's {allocated} allocated chunks kept"
        );
    }
}
