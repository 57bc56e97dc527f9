//! Scale: an image of ~100,000 entries (three layers, a 20,000-entry
//! directory, whiteouts and an opaque directory) materializes e2fsck-clean
//! and tree-identical to the oracle, in bounded memory. Timings and
//! comparisons with other tools live in bench/.

mod common;

use std::process::Command;
use std::time::Instant;

use common::cli::Ocidisk;
use common::fscheck::{assert_e2fsck_clean, compare_mounted, with_lost_found};
use common::imagegen::{self, Compression, Platform};

#[test]
fn a_hundred_thousand_entries_materialize_clean_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let layers = common::scale::layers(80, 1000, 1);
    let entries: usize = layers.iter().map(|l| l.entries.len()).sum();
    assert!(entries >= 100_000, "{entries} entries");
    imagegen::write_image(
        dir.path(),
        "v1",
        &layers,
        Compression::Gzip,
        &Platform::linux_amd64(),
    );
    let r = format!("oci:{}:v1", dir.path().display());
    let out = dir.path().join("scale.img");
    let o = Ocidisk::new();
    o.ok(&["pull", &r]);
    let started = Instant::now();
    let run = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(env!("CARGO_BIN_EXE_ocidisk"))
        .args(["materialize", &r, out.to_str().unwrap()])
        .env("OCIDISK_CACHE_DIR", o.cache_dir())
        .output()
        .unwrap();
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    let peak_kib: u64 = err.lines().last().unwrap().trim().parse().unwrap();
    eprintln!(
        "materialize of {entries} entries (layers cached): {took:?}, peak RSS {peak_kib} KiB"
    );
    assert!(peak_kib < 256 * 1024, "peak RSS {peak_kib} KiB");
    assert_e2fsck_clean(&out);
    compare_mounted(&with_lost_found(imagegen::oracle(&layers)), &out);
}

/// Not a test: writes the scale image as an OCI layout for bench/scale.sh
/// (`OCIDISK_SCALE_OUT=DIR OCIDISK_SCALE_SIZE=N cargo test --release
/// --test scale write_scale_layout -- --ignored`), into DIR.partial and
/// renamed to DIR when complete, so a half-written layout is never used.
#[test]
#[ignore = "bench/scale.sh runs it"]
fn write_scale_layout() {
    let Ok(out) = std::env::var("OCIDISK_SCALE_OUT") else {
        return;
    };
    let scale: u64 = std::env::var("OCIDISK_SCALE_SIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let tmp = format!("{out}.partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    imagegen::write_image(
        std::path::Path::new(&tmp),
        "v1",
        &common::scale::layers(80, 1000, scale),
        Compression::Gzip,
        &Platform::linux_amd64(),
    );
    std::fs::rename(&tmp, &out).unwrap();
}
