//! A large image for scale tests and bench/: three layers of ~100,000
//! entries in all, deterministic. Layer 1 holds `dirs` directories of
//! `per_dir` small files plus one directory of 20,000 entries; layer 2
//! modifies and whites out files and makes one directory opaque; layer 3
//! adds new directories. File sizes cycle through a few shapes (empty,
//! tiny, one block, a few blocks) scaled by `size_scale`.

#![allow(dead_code)]

use super::imagegen::{Content, EntrySpec as E, LayerSpec};

/// Entries in the one wide directory.
pub const WIDE_DIR_ENTRIES: usize = 20_000;

fn content(i: usize, size_scale: u64) -> Content {
    let len = match i % 7 {
        0 => 0,
        1 | 2 => 37,
        3 | 4 => 1000 * size_scale,
        5 => 4096 * size_scale,
        _ => 9000 * size_scale,
    };
    Content::Pattern {
        len,
        seed: i as u64,
    }
}

/// The three layers: `dirs` × `per_dir` files in layer 1 besides the wide
/// directory (`dirs = 80, per_dir = 1000` gives ~100k entries in all).
pub fn layers(dirs: usize, per_dir: usize, size_scale: u64) -> Vec<LayerSpec> {
    let mut base = vec![E::dir("/data", 0o755), E::dir("/wide", 0o755)];
    let mut n = 0usize;
    for d in 0..dirs {
        base.push(E::dir(&format!("/data/d{d:03}"), 0o755));
        for f in 0..per_dir {
            base.push(E::file(
                &format!("/data/d{d:03}/file-{f:05}"),
                content(n, size_scale),
                0o644,
            ));
            n += 1;
        }
    }
    for w in 0..WIDE_DIR_ENTRIES {
        let path = format!("/wide/entry-with-a-longer-name-{w:06}");
        base.push(if w % 10 == 9 {
            E::symlink(&path, "../data/d000/file-00001")
        } else {
            E::file(&path, content(w, 1), 0o600)
        });
    }
    let mut mid = Vec::new();
    for d in (0..dirs).step_by(4) {
        for f in (0..per_dir).step_by(10) {
            mid.push(E::whiteout(&format!("/data/d{d:03}/file-{f:05}")));
        }
        for f in (5..per_dir).step_by(10) {
            mid.push(E::file(
                &format!("/data/d{d:03}/file-{f:05}"),
                content(f + 7, size_scale),
                0o640,
            ));
        }
    }
    if dirs > 1 {
        mid.push(E::opaque("/data/d001"));
        mid.push(E::text("/data/d001/only-this", "opaque\n", 0o644));
    }
    let mut top = vec![E::dir("/new", 0o755)];
    for d in 0..(dirs / 10).max(1) {
        top.push(E::dir(&format!("/new/n{d:02}"), 0o755));
        for f in 0..per_dir / 2 {
            top.push(E::file(
                &format!("/new/n{d:02}/f{f:05}"),
                content(f * 3, size_scale),
                0o644,
            ));
        }
    }
    vec![
        LayerSpec::new("scale base", base),
        LayerSpec::new("scale changes", mid),
        LayerSpec::new("scale additions", top),
    ]
}
