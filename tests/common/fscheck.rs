//! Filesystem checks shared by the tests: `e2fsck -fn` with no complaint,
//! loop mounts that unmount themselves, and comparing a mounted tree with
//! the generator's oracle.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::imagegen::{self, Oracle};
use super::registry::{run_ok, run_with_timeout};

/// `e2fsck -fn` finds nothing at all to complain about.
pub fn assert_e2fsck_clean(img: &Path) {
    let out = run_with_timeout(
        Command::new("e2fsck").args(["-fn"]).arg(img),
        Duration::from_secs(300),
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(out.success(), "e2fsck -fn {}:\n{text}", img.display());
    for line in text.lines() {
        let ok = line.starts_with("e2fsck ")
            || line.starts_with("Pass ")
            || line.contains(" files (")
            || line.trim().is_empty();
        assert!(
            ok,
            "e2fsck complained about {}: {line:?}\n{text}",
            img.display()
        );
    }
}

/// A read-only loop mount, unmounted on drop.
pub struct LoopMount {
    dir: tempfile::TempDir,
}

impl LoopMount {
    /// Mount `img` read-only.
    pub fn new(img: &Path) -> LoopMount {
        LoopMount::with_options(img, "loop,ro")
    }

    /// Mount `img` read-write.
    pub fn writable(img: &Path) -> LoopMount {
        LoopMount::with_options(img, "loop")
    }

    fn with_options(img: &Path, options: &str) -> LoopMount {
        let dir = tempfile::tempdir().unwrap();
        run_ok(
            Command::new("mount")
                .args(["-o", options])
                .arg(img)
                .arg(dir.path()),
            Duration::from_secs(60),
        );
        LoopMount { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// The oracle as the filesystem shows it: plus the `lost+found` that every
/// ext4 (like mke2fs's) has, which adds one link to `/`.
pub fn with_lost_found(mut o: Oracle) -> Oracle {
    o.entries.get_mut("/").expect("root").nlink += 1;
    o
}

pub fn compare_mounted(expected: &Oracle, img: &Path) {
    let m = LoopMount::new(img);
    let got = imagegen::scan_tree(m.path());
    let opts = imagegen::CompareOptions {
        skip_paths: vec!["/lost+found".into()],
        ..Default::default()
    };
    let diffs = imagegen::compare_trees(expected, &got, &opts);
    assert!(
        diffs.is_empty(),
        "{}: {} differences:\n{}",
        img.display(),
        diffs.len(),
        diffs.join("\n")
    );
}
