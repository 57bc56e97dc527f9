//! The XFS writer's empty filesystem, checked by the real tools:
//! `xfs_repair -n` finds nothing, the kernel mounts it read-write, and
//! `xfs_db` reads the geometry mkfs.xfs would choose.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::registry::run_ok;

fn write(img: &ocidisk::fs::FsImage, path: &Path) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(img.size).unwrap();
    img.write_metadata(&f).unwrap();
}

#[test]
fn the_empty_filesystem_passes_xfs_repair_and_mounts() {
    let d = tempfile::tempdir().unwrap();
    for size in [300u64 << 20, 2 << 30] {
        // A UUID of its own per image: the kernel refuses to mount two
        // filesystems with the same one.
        let mut uuid = *b"ocidisk-xfs-test";
        uuid[15] = (size >> 20) as u8;
        let img = ocidisk::fs::xfs::build_empty(size, uuid, (1_700_000_000, 5)).unwrap();
        img.validate().unwrap();
        let path = d.path().join(format!("empty-{size}.xfs"));
        write(&img, &path);
        let out = run_ok(
            Command::new("xfs_repair").arg("-n").arg(&path),
            Duration::from_secs(120),
        );
        let text = format!("{}{}", out.stdout, out.stderr);
        for bad in ["would", "Would", "bad", "error", "invalid", "ahead of log"] {
            assert!(!text.contains(bad), "xfs_repair -n {size}: {bad}:\n{text}");
        }
        let mnt = d.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "xfs", "-o", "loop"])
                .arg(&path)
                .arg(&mnt),
            Duration::from_secs(60),
        );
        std::fs::write(mnt.join("written"), b"by the kernel").unwrap();
        let listed: Vec<String> = std::fs::read_dir(&mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        run_ok(Command::new("umount").arg(&mnt), Duration::from_secs(60));
        assert_eq!(listed, ["written"]);
        let out = run_ok(
            Command::new("xfs_repair").arg("-n").arg(&path),
            Duration::from_secs(120),
        );
        assert!(
            !out.stdout.contains("would"),
            "after a write:\n{}",
            out.stdout
        );
    }
}

/// `xfs_db -r -c 'sb 0' -c 'print FIELDS'` as (field, value) lines.
fn sb_fields(path: &Path, fields: &str) -> Vec<String> {
    let out = run_ok(
        Command::new("xfs_db")
            .args(["-r", "-c", "sb 0", "-c", &format!("print {fields}")])
            .arg(path),
        Duration::from_secs(60),
    );
    out.stdout.lines().map(str::to_string).collect()
}

#[test]
fn geometry_and_counters_equal_what_mkfs_makes() {
    let d = tempfile::tempdir().unwrap();
    let fields = "dblocks agcount agblocks logblocks logstart rootino rbmino rsumino \
                  versionnum inoalignmt features2 features_incompat features_ro_compat \
                  icount ifree fdblocks imax_pct";
    for size in [300u64 << 20, 5 << 30] {
        let reference = d.path().join("mkfs.xfs");
        let f = std::fs::File::create(&reference).unwrap();
        f.set_len(size).unwrap();
        drop(f);
        run_ok(
            Command::new("mkfs.xfs")
                .args([
                    "-q",
                    "-m",
                    "crc=1,finobt=0,rmapbt=0,reflink=0,inobtcount=0,bigtime=1",
                    "-i",
                    "sparse=0",
                    "-n",
                    "ftype=1",
                ])
                .arg(&reference),
            Duration::from_secs(60),
        );
        let ours = d.path().join("ours.xfs");
        let img = ocidisk::fs::xfs::build_empty(size, [7; 16], (0, 0)).unwrap();
        write(&img, &ours);
        assert_eq!(
            sb_fields(&ours, fields),
            sb_fields(&reference, fields),
            "{size} bytes"
        );
    }
}
