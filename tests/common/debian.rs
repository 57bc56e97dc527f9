//! The realistic test image: `debootstrap --variant=minbase bookworm` as an
//! OCI layout (built once by scripts/debian-image.sh and cached), and the
//! check that a filesystem holding it equals GNU tar's extraction of its
//! layers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::fscheck::LoopMount;
use super::imagegen;
use super::registry::{Registry, run_ok};

/// The Debian image's OCI layout (tag `bookworm`).
pub fn layout() -> PathBuf {
    let out = run_ok(
        Command::new("bash").arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/debian-image.sh"
        )),
        Duration::from_secs(900),
    );
    PathBuf::from(out.stdout.trim())
}

/// Push the Debian image into `reg` as `debian:bookworm`; its reference.
pub fn push(reg: &Registry, layout: &Path) -> String {
    reg.push(
        &format!("oci:{}:bookworm", layout.display()),
        "debian:bookworm",
        false,
    );
    format!("{}/debian:bookworm", reg.host())
}

/// The filesystem in `img`, mounted (as `fstype` when given), equals GNU
/// tar's extraction of the layout's layers as root, entry for entry.
pub fn assert_equals_tar_extraction(layout: &Path, img: &Path, fstype: Option<&str>) {
    let work = tempfile::tempdir().unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(imagegen::blob_path(layout, manifest_digest)).unwrap(),
    )
    .unwrap();
    let extracted = work.path().join("rootfs");
    std::fs::create_dir(&extracted).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let blob = imagegen::blob_path(layout, layer["digest"].as_str().unwrap());
        run_ok(
            Command::new("tar")
                .args(["-xzf"])
                .arg(&blob)
                .arg("-C")
                .arg(&extracted)
                .args(["--numeric-owner", "--xattrs", "--xattrs-include=*"]),
            Duration::from_secs(300),
        );
    }
    let mut want = imagegen::scan_tree(&extracted);
    let m = match fstype {
        Some(t) => LoopMount::typed(img, t),
        None => LoopMount::new(img),
    };
    let mut got = imagegen::scan_tree(m.path());
    // The root's own metadata comes from the temp dir on one side.
    want.entries.remove("/");
    got.entries.remove("/");
    assert!(want.entries.len() > 6000, "{} entries", want.entries.len());
    let opts = imagegen::CompareOptions {
        skip_paths: vec!["/lost+found".into()],
        ..Default::default()
    };
    let diffs = imagegen::compare_trees(&want, &got, &opts);
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}
