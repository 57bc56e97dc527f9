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

/// `xfs_repair -n IMG` exits 0 and reports nothing it would change.
pub fn assert_xfs_repair_clean(img: &Path) {
    let out = run_with_timeout(
        Command::new("xfs_repair").arg("-n").arg(img),
        Duration::from_secs(300),
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(out.success(), "xfs_repair -n {}:\n{text}", img.display());
    for bad in ["would", "Would", "bad", "error", "invalid", "ahead of log"] {
        assert!(
            !text.contains(bad),
            "xfs_repair -n {} says {bad:?}:\n{text}",
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

    /// Mount `img` read-only as filesystem type `fstype` (`mount -t`), and
    /// check the kernel reports that type for the mount.
    pub fn typed(img: &Path, fstype: &str) -> LoopMount {
        let m = LoopMount::mount(img, "loop,ro", Some(fstype));
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let target = m.path().to_str().unwrap().to_string();
        let got = mounts
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.get(1) == Some(&target.as_str())).then(|| f[2].to_string())
            })
            .next_back();
        assert_eq!(got.as_deref(), Some(fstype), "{} mounted as", img.display());
        m
    }

    fn with_options(img: &Path, options: &str) -> LoopMount {
        LoopMount::mount(img, options, None)
    }

    fn mount(img: &Path, options: &str, fstype: Option<&str>) -> LoopMount {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("mount");
        if let Some(t) = fstype {
            cmd.args(["-t", t]);
        }
        run_ok(
            cmd.args(["-o", options]).arg(img).arg(dir.path()),
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
    compare_mount(expected, img, &LoopMount::new(img));
}

/// As [`compare_mounted`], mounted with `mount -t FSTYPE`.
pub fn compare_mounted_as(expected: &Oracle, img: &Path, fstype: &str) {
    compare_mount(expected, img, &LoopMount::typed(img, fstype));
}

/// The features `dumpe2fs -h` lists, in its order.
pub fn ext_features(img: &Path) -> Vec<String> {
    let out = run_ok(
        Command::new("dumpe2fs").arg("-h").arg(img),
        Duration::from_secs(60),
    );
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem features:"))
        .unwrap_or_else(|| panic!("no feature line from dumpe2fs:\n{}", out.stdout))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn compare_mount(expected: &Oracle, img: &Path, m: &LoopMount) {
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
