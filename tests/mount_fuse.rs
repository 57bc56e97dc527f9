//! `ocidisk mount`: the lazy disk as one regular file through FUSE, checked
//! with the tools that use such files: cmp against materialize's image,
//! e2fsck, and kernel loop mounts (read-only against the oracle, and
//! writable across a remount with the same overlay).

mod common;

use std::path::Path;
use std::process::Command;

use common::cli::Ocidisk;
use common::fscheck::{LoopMount, assert_e2fsck_clean, compare_mounted, with_lost_found};
use common::imagegen::{self, Compression};
use common::mount::MountProc;

fn mounted(path: &Path) -> bool {
    let abs = std::fs::canonicalize(path.parent().unwrap())
        .unwrap()
        .join(path.file_name().unwrap());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(abs.to_str().unwrap()))
}

#[test]
fn read_only_mount_on_a_file_and_in_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(&dir.path().join("layout"), "v1", Compression::Gzip);
    let r = format!("oci:{}:v1", dir.path().join("layout").display());
    let reference = dir.path().join("ref.img");
    Ocidisk::new().ok(&[
        "materialize",
        "--read-only",
        &r,
        reference.to_str().unwrap(),
    ]);
    let want = std::fs::read(&reference).unwrap();
    let expected = with_lost_found(imagegen::oracle(&imagegen::standard_layers()));

    let file_point = dir.path().join("disk-file");
    std::fs::write(&file_point, b"").unwrap();
    let dir_point = dir.path().join("disk-dir");
    std::fs::create_dir(&dir_point).unwrap();
    let o = Ocidisk::new();
    for point in [&file_point, &dir_point] {
        let m = MountProc::start(&o, &r, point, &["--read-only"]);
        assert!(
            std::fs::read(&m.image).unwrap() == want,
            "{}: FUSE file differs from materialize's image",
            point.display()
        );
        assert_e2fsck_clean(&m.image);
        compare_mounted(&expected, &m.image);
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(&m.image)
            .unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EROFS),
            "a read-only disk refuses writers"
        );
        // Reads past the end are short; the file cannot be resized.
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&m.image).unwrap();
        let mut buf = [0u8; 100];
        assert_eq!(f.read_at(&mut buf, want.len() as u64 - 10).unwrap(), 10);
        assert_eq!(f.read_at(&mut buf, want.len() as u64 + 5).unwrap(), 0);
        let c = std::ffi::CString::new(m.image.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        let rc = unsafe { libc::truncate(c.as_ptr(), 4096) };
        assert_eq!(rc, -1, "truncating the disk file must fail");
        drop(f);
        assert_eq!(m.stop(), Some(0));
        assert!(!mounted(point), "SIGTERM unmounts {}", point.display());
    }
}

/// `mount --fs FS` of `r` with an overlay in `dir`: its file is
/// byte-identical to `materialize --fs FS`.
fn mount_equal_to_materialize(o: &Ocidisk, r: &str, fs: &str, dir: &Path) -> MountProc {
    let reference = dir.join("ref.img");
    o.ok(&["materialize", "--fs", fs, r, reference.to_str().unwrap()]);
    let point = dir.join("disk");
    std::fs::write(&point, b"").unwrap();
    let overlay = dir.join("overlay");
    let m = MountProc::start(
        o,
        r,
        &point,
        &["--fs", fs, "--overlay", overlay.to_str().unwrap()],
    );
    assert!(
        std::fs::read(&m.image).unwrap() == std::fs::read(&reference).unwrap(),
        "the FUSE file differs from materialize --fs {fs}"
    );
    m
}

/// Write a file through a writable loop mount of `img`, and sync.
fn write_through_loop_mount(img: &Path) {
    let fs = LoopMount::writable(img);
    std::fs::write(fs.path().join("written-by-guest"), b"a guest write").unwrap();
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
}

#[test]
fn an_ext3_mount_equals_materialize_and_takes_writes() {
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(&dir.path().join("layout"), "v1", Compression::Gzip);
    let r = format!("oci:{}:v1", dir.path().join("layout").display());
    let o = Ocidisk::new();
    let m = mount_equal_to_materialize(&o, &r, "ext3", dir.path());
    let expected = with_lost_found(imagegen::oracle(&imagegen::standard_layers()));
    common::fscheck::compare_mounted_as(&expected, &m.image, "ext3");
    write_through_loop_mount(&m.image);
    assert_e2fsck_clean(&m.image);
    assert_eq!(m.stop(), Some(0));
}

#[test]
fn an_xfs_mount_equals_materialize_and_takes_writes() {
    let layout = common::debian::layout();
    let r = format!("oci:{}:bookworm", layout.display());
    let dir = tempfile::tempdir().unwrap();
    let o = Ocidisk::new();
    let m = mount_equal_to_materialize(&o, &r, "xfs", dir.path());
    write_through_loop_mount(&m.image);
    common::fscheck::assert_xfs_repair_clean(&m.image);
    assert_eq!(m.stop(), Some(0));
}

#[test]
fn writes_through_a_loop_mount_survive_a_remount_with_the_overlay() {
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(&dir.path().join("layout"), "v1", Compression::Zstd);
    let r = format!("oci:{}:v1", dir.path().join("layout").display());
    let point = dir.path().join("disk");
    std::fs::write(&point, b"").unwrap();
    let overlay = dir.path().join("overlay");
    let o = Ocidisk::new();
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();

    let m = MountProc::start(&o, &r, &point, &["--overlay", overlay.to_str().unwrap()]);
    {
        let fs = LoopMount::writable(&m.image);
        std::fs::write(fs.path().join("written-by-guest"), &content).unwrap();
        std::fs::remove_file(fs.path().join("etc/hostname")).unwrap();
        // SAFETY: sync(2) has no preconditions.
        unsafe { libc::sync() };
    }
    assert_eq!(m.stop(), Some(0));

    let m = MountProc::start(&o, &r, &point, &["--overlay", overlay.to_str().unwrap()]);
    assert_e2fsck_clean(&m.image);
    let fs = LoopMount::new(&m.image);
    assert_eq!(
        std::fs::read(fs.path().join("written-by-guest")).unwrap(),
        content
    );
    assert!(!fs.path().join("etc/hostname").exists());
    drop(fs);
    assert_eq!(m.stop(), Some(0));
}

#[test]
fn missing_path_existing_mount_stale_mount_and_no_permission() {
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(&dir.path().join("layout"), "v1", Compression::Gzip);
    let r = format!("oci:{}:v1", dir.path().join("layout").display());
    let o = Ocidisk::new();

    let err = o.fail(&["mount", &r, dir.path().join("nope").to_str().unwrap()]);
    assert!(err.contains("does not exist"), "{err}");

    let point = dir.path().join("disk");
    std::fs::write(&point, b"").unwrap();
    let mut m = MountProc::start(&o, &r, &point, &["--read-only"]);
    let err = o.fail(&["mount", "--read-only", &r, point.to_str().unwrap()]);
    assert!(err.contains("already a mount point"), "{err}");

    // A crash leaves a stale mount: reported as such, cleared by umount.
    m.child.kill().unwrap();
    m.child.wait().unwrap();
    let err = o.fail(&["mount", "--read-only", &r, point.to_str().unwrap()]);
    assert!(err.contains("stale mount"), "{err}");
    o.ok(&["umount", point.to_str().unwrap()]);
    assert!(!mounted(&point));
    let m = MountProc::start(&o, &r, &point, &["--read-only"]);
    assert_eq!(m.stop(), Some(0));

    // An unprivileged user without fusermount3 gets a clear refusal.
    let open = |p: &Path| {
        let _ = Command::new("chmod").args(["-R", "a+rwX"]).arg(p).status();
    };
    open(dir.path());
    open(&o.cache_dir());
    let out = Command::new("runuser")
        .args([
            "-u",
            "nobody",
            "--",
            env!("CARGO_BIN_EXE_ocidisk"),
            "mount",
            "--read-only",
        ])
        .arg(&r)
        .arg(&point)
        .env("OCIDISK_CACHE_DIR", dir.path().join("nobody-cache"))
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not permitted") && stderr.contains("fusermount3"),
        "{stderr}"
    );
}

#[test]
fn mount_records_a_profile_on_exit_and_replays_it() {
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(&dir.path().join("layout"), "v1", Compression::Gzip);
    let r = format!("oci:{}:v1", dir.path().join("layout").display());
    let point = dir.path().join("disk.img");
    std::fs::write(&point, b"").unwrap();
    let profile = dir.path().join("boot.profile");
    let p = profile.to_str().unwrap();
    let o = Ocidisk::new();
    let m = MountProc::start(&o, &r, &point, &["--read-only", "--record-profile", p]);
    let whole = std::fs::read(&m.image).unwrap();
    assert_eq!(m.stop(), Some(0));
    let text = std::fs::read_to_string(&profile).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let spans = v["spans"].as_array().unwrap();
    assert!(spans.len() > 5, "{text}");
    // Replayed by a fresh cache: the same bytes.
    let fresh = Ocidisk::new();
    let m = MountProc::start(
        &fresh,
        &r,
        &point,
        &["--read-only", "--prefetch-profile", p],
    );
    assert!(std::fs::read(&m.image).unwrap() == whole);
    assert_eq!(m.stop(), Some(0));
    let err = o.fail(&[
        "mount",
        "--prefetch-profile",
        dir.path().join("missing").to_str().unwrap(),
        &r,
        point.to_str().unwrap(),
    ]);
    assert!(
        err.contains("prefetch profile") && err.contains("missing"),
        "{err}"
    );
}
