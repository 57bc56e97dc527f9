//! qcow2 output (`materialize --format qcow2`, `--compress`, `--flush-to
//! x.qcow2`), checked by QEMU's own tools: `qemu-img check` finds no error
//! and no leak, `qemu-img info` names the format and compression type,
//! `qemu-img compare` finds it equal to the raw image; QEMU boots it; two
//! runs give the same bytes; bad options are clear errors that leave no
//! file.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cli::Ocidisk;
use common::debian;
use common::fscheck::with_lost_found;
use common::imagegen::{self, Compression};
use common::mount::MountProc;
use common::registry::{Registry, run_ok};
use common::vm::{Vm, compare_listing, section};

fn qemu_img(args: &[&str]) -> String {
    run_ok(
        Command::new("qemu-img").args(args),
        Duration::from_secs(300),
    )
    .stdout
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&qemu_img(args)).unwrap()
}

/// `qemu-img check`: no corruption, no leak; returns its report.
fn assert_check_clean(img: &Path) -> serde_json::Value {
    let r = json(&["check", "--output=json", img.to_str().unwrap()]);
    for field in [
        "corruptions",
        "leaks",
        "check-errors",
        "corruptions-fixed",
        "leaks-fixed",
    ] {
        assert_eq!(
            r.get(field).and_then(|v| v.as_u64()).unwrap_or(0),
            0,
            "qemu-img check {}: {field} in {r}",
            img.display()
        );
    }
    assert!(r["allocated-clusters"].as_u64().unwrap() > 0, "{r}");
    r
}

/// `qemu-img compare` of a raw image and a qcow2: identical.
fn assert_same_disk(raw: &Path, qcow2: &Path) {
    let out = qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "qcow2",
        raw.to_str().unwrap(),
        qcow2.to_str().unwrap(),
    ]);
    assert!(out.contains("Images are identical"), "{out}");
}

fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// Raw, qcow2, qcow2 with zlib and with zstd of `image`: each qcow2 is
/// clean, says what it is, equals the raw image, and comes out the same
/// twice. Returns (raw allocated, zlib qcow2, zstd qcow2) bytes.
fn all_formats(o: &Ocidisk, image: &str, dir: &Path, extra: &[&str]) -> (u64, u64, u64) {
    let out = |name: &str| dir.join(name);
    let mat = |file: &str, flags: &[&str]| {
        let mut args = vec!["materialize"];
        args.extend_from_slice(extra);
        args.extend_from_slice(flags);
        let o_path = out(file);
        args.extend([image, o_path.to_str().unwrap()]);
        o.ok(&args);
        o_path
    };
    let raw = mat("disk.img", &[]);
    let raw_info = json(&["info", "--output=json", raw.to_str().unwrap()]);
    assert_eq!(raw_info["format"], "raw");
    let mut sizes = Vec::new();
    for (file, flags, codec) in [
        ("plain.qcow2", &[][..], "zlib"),
        ("zlib.qcow2", &["--compress"][..], "zlib"),
        // The extension does not decide when --format does.
        (
            "zstd.img",
            &["--format", "qcow2", "--compress=zstd"][..],
            "zstd",
        ),
    ] {
        let q = mat(file, flags);
        let report = assert_check_clean(&q);
        let compressed = report["compressed-clusters"].as_u64().unwrap_or(0);
        if flags.is_empty() {
            assert_eq!(compressed, 0, "{file}: {report}");
        } else {
            assert!(compressed > 0, "{file}: nothing compressed: {report}");
        }
        let info = json(&["info", "--output=json", q.to_str().unwrap()]);
        assert_eq!(info["format"], "qcow2", "{file}: {info}");
        assert_eq!(info["cluster-size"], 65536, "{file}: {info}");
        assert_eq!(info["format-specific"]["data"]["compat"], "1.1", "{info}");
        assert_eq!(
            info["format-specific"]["data"]["compression-type"], codec,
            "{file}: {info}"
        );
        assert_eq!(info["virtual-size"], raw_info["virtual-size"], "{info}");
        assert_same_disk(&raw, &q);
        sizes.push(allocated(&q));
        // The same input gives the same bytes.
        let again = mat(&format!("again-{file}"), flags);
        assert!(
            std::fs::read(&q).unwrap() == std::fs::read(&again).unwrap(),
            "{file}: two runs differ"
        );
        std::fs::remove_file(again).unwrap();
    }
    (allocated(&raw), sizes[1], sizes[2])
}

#[test]
fn the_standard_image_as_qcow2_passes_qemu_img_and_equals_raw() {
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(dir.path(), "v1", Compression::Gzip);
    let o = Ocidisk::new();
    let image = format!("oci:{}:v1", dir.path().display());
    for fs in ["ext4", "xfs"] {
        let work = tempfile::tempdir().unwrap();
        let extra: &[&str] = if fs == "xfs" {
            &["--fs", "xfs", "--read-only"]
        } else {
            &[]
        };
        let (raw, zlib, zstd) = all_formats(&o, &image, work.path(), extra);
        assert!(zlib < raw && zstd < raw, "{fs}: {raw} {zlib} {zstd}");
    }
    // Other cluster sizes, at both ends of what QEMU accepts.
    let work = tempfile::tempdir().unwrap();
    let raw = work.path().join("disk.img");
    o.ok(&["materialize", &image, raw.to_str().unwrap()]);
    for cluster in ["512", "4K", "2M"] {
        let q = work.path().join(format!("c{cluster}.qcow2"));
        o.ok(&[
            "materialize",
            "--compress",
            "--cluster-size",
            cluster,
            &image,
            q.to_str().unwrap(),
        ]);
        assert_check_clean(&q);
        assert_same_disk(&raw, &q);
    }
}

#[test]
fn the_debian_image_as_qcow2_is_clean_equal_and_half_the_raw_size() {
    let layout = debian::layout();
    let dir = tempfile::tempdir().unwrap();
    let o = Ocidisk::new();
    let image = format!("oci:{}:bookworm", layout.display());
    let (raw, zlib, zstd) = all_formats(&o, &image, dir.path(), &[]);
    eprintln!("debian: raw allocated {raw}, qcow2 zlib {zlib}, zstd {zstd}");
    assert!(zlib * 2 <= raw, "zlib qcow2 {zlib} vs raw {raw}");
    assert!(zstd * 2 <= raw, "zstd qcow2 {zstd} vs raw {raw}");
}

#[test]
fn bad_format_options_are_clear_errors_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(dir.path(), "v1", Compression::Gzip);
    let o = Ocidisk::new();
    let image = format!("oci:{}:v1", dir.path().display());
    let work = tempfile::tempdir().unwrap();
    let p = |n: &str| work.path().join(n).to_str().unwrap().to_string();
    for (args, want) in [
        (
            vec!["--format", "vmdk", &image, &p("a.img")],
            "unknown image format \"vmdk\": use raw or qcow2",
        ),
        (
            vec!["--compress", &image, &p("a.img")],
            "--compress needs --format qcow2",
        ),
        (
            vec!["--format", "raw", "--compress=zstd", &image, &p("a.qcow2")],
            "--compress needs --format qcow2",
        ),
        (
            vec!["--compress=lz4", &image, &p("a.qcow2")],
            "unknown qcow2 compression \"lz4\": use zlib or zstd",
        ),
        (
            vec!["--cluster-size", "3000", &image, &p("a.qcow2")],
            "qcow2 cluster size 3000 is not a power of two",
        ),
        (
            vec!["--cluster-size", "4M", &image, &p("a.qcow2")],
            "qcow2 cluster size 4194304",
        ),
        (
            vec![
                "--cluster-size",
                "512",
                "--size",
                "200G",
                &image,
                &p("a.qcow2"),
            ],
            "qcow2 readers allow at most 33554432 (use a larger --cluster-size)",
        ),
    ] {
        let mut all = vec!["materialize"];
        all.extend(args.iter().map(|s| s as &str));
        let err = o.fail(&all);
        assert!(err.contains(want), "{all:?}: {err}");
        let left: Vec<_> = std::fs::read_dir(work.path()).unwrap().collect();
        assert!(left.is_empty(), "{all:?} left {left:?}");
    }
}

#[test]
fn a_vm_boots_a_compressed_qcow2_and_sees_every_file() {
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(dir.path(), "v1", Compression::Gzip);
    let oracle = with_lost_found(imagegen::oracle(&imagegen::standard_layers()));
    let o = Ocidisk::new();
    let q = dir.path().join("boot.qcow2");
    o.ok(&[
        "materialize",
        "--read-only",
        "--compress",
        &format!("oci:{}:v1", dir.path().display()),
        q.to_str().unwrap(),
    ]);
    let mut vm = Vm::new("tree");
    vm.drive = Some((q.clone(), "qcow2"));
    let console = vm.run(&dir.path().join("unused.sock"), Duration::from_secs(240));
    assert!(console.contains("OCIDISK-MOUNTED ro ext4"), "{console}");
    let listing = section(&console, "TREE");
    assert!(listing.len() > 10, "guest listing too short:\n{console}");
    let diffs = compare_listing(&listing, &oracle);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[test]
fn mount_flush_to_qcow2_after_prefetch_equals_materialize() {
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(dir.path(), "v1", Compression::Gzip);
    let reg = Registry::start();
    reg.push(
        &format!("oci:{}:v1", dir.path().display()),
        "flushq:v1",
        false,
    );
    let image = format!("{}/flushq:v1", reg.host());
    let o = Ocidisk::new();
    let reference = dir.path().join("ref.img");
    o.ok(&[
        "materialize",
        "--read-only",
        &image,
        reference.to_str().unwrap(),
    ]);
    for (name, flags) in [
        ("plain.qcow2", &[][..]),
        ("z.qcow2", &["--flush-compress=zstd"][..]),
    ] {
        let flushed = dir.path().join(name);
        let point = dir.path().join("disk");
        std::fs::write(&point, b"").unwrap();
        let mut args = vec![
            "--read-only",
            "--prefetch",
            "--flush-to",
            flushed.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        let m = MountProc::start(&o, &image, &point, &args);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !flushed.exists() {
            assert!(Instant::now() < deadline, "{name} never completed");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_check_clean(&flushed);
        assert_same_disk(&reference, &flushed);
        assert_eq!(m.stop(), Some(0));
        let info = json(&["info", "--output=json", flushed.to_str().unwrap()]);
        let want = if flags.is_empty() { "zlib" } else { "zstd" };
        assert_eq!(info["format-specific"]["data"]["compression-type"], want);
    }
    // The format options need --flush-to, and say what is wrong.
    let usage = o.run(&["mount", "--flush-compress", &image, "x"]);
    let err = String::from_utf8_lossy(&usage.stderr);
    assert_eq!(usage.status.code(), Some(2), "a usage error: {err}");
    assert!(
        err.contains("required arguments were not provided:\n  --flush-to"),
        "{err}"
    );
    let bad = dir.path().join("bad.img");
    let err = o.fail(&[
        "mount",
        "--flush-to",
        bad.to_str().unwrap(),
        "--flush-compress",
        &image,
        "x",
    ]);
    assert!(
        err.contains("--flush-compress needs --flush-format qcow2"),
        "{err}"
    );
}
