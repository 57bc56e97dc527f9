//! Hostile layers, each built byte by byte as an OCI layout: every case
//! ends with a clean one-line error and no output, or with an
//! e2fsck-clean image whose tree equals GNU tar's extraction. Every run is
//! bounded: no panic, no death by signal, under 60 s and 512 MiB of RSS
//! (measured with `wait4`). Also: temp files never follow a planted
//! symlink, an interrupted write leaves nothing behind, and `serve` and
//! `mount` refuse a bad sparse map at open without leaving state.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::Ocidisk;
use common::fscheck::{LoopMount, assert_e2fsck_clean};
use common::imagegen;
use common::rawtar::{Header, RawTar, write_layout, write_layout_blobs};
use common::registry::run_ok;

const TIME_LIMIT: Duration = Duration::from_secs(60);
const RSS_LIMIT_KIB: i64 = 512 * 1024;

/// How a bounded run ended.
struct Outcome {
    code: Option<i32>,
    stderr: String,
    max_rss_kib: i64,
}

/// Run `ocidisk ARGS` under GNU time, killing it after [`TIME_LIMIT`];
/// assert that it did not panic, die of a signal, run over time or use
/// more than [`RSS_LIMIT_KIB`]. (GNU time forks ocidisk from its own small
/// process: a child's peak RSS counts the memory of whoever forked it, and
/// this test process is large.)
fn run_bounded(o: &Ocidisk, args: &[&str]) -> Outcome {
    use std::os::unix::process::CommandExt;
    let logs = tempfile::tempdir().unwrap();
    let (err_path, time_path) = (logs.path().join("err"), logs.path().join("time"));
    let base = o.command(args);
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "exit %x maxrss %M", "-o"])
        .arg(&time_path)
        .arg(base.get_program())
        .args(base.get_args())
        .envs(base.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&err_path).unwrap())
        .process_group(0);
    let mut child = cmd.spawn().expect("spawn /usr/bin/time ocidisk");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > TIME_LIMIT {
            // SAFETY: signalling the process group of our own child.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
            panic!(
                "ocidisk {args:?} ran over {TIME_LIMIT:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    let report = std::fs::read_to_string(&time_path).unwrap();
    assert!(
        !report.contains("terminated by signal"),
        "ocidisk {args:?} died: {report}; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "ocidisk {args:?} panicked:\n{stderr}"
    );
    let field = |name: &str| -> i64 {
        let line = report.lines().last().unwrap_or_default();
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == name {
                return words.next().and_then(|v| v.parse().ok()).unwrap();
            }
        }
        panic!("no {name} in GNU time's report {report:?}")
    };
    let max_rss_kib = field("maxrss");
    assert!(
        max_rss_kib <= RSS_LIMIT_KIB,
        "ocidisk {args:?} used {} MiB of RSS; stderr:\n{stderr}",
        max_rss_kib / 1024
    );
    Outcome {
        code: Some(field("exit") as i32),
        stderr,
        max_rss_kib,
    }
}

/// The one error line, which must contain `needle`.
fn assert_clean_error(out: &Outcome, needle: &str) {
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("ocidisk: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line:\n{}", out.stderr);
    assert!(
        errors[0].contains(needle),
        "error should mention {needle:?}: {}",
        errors[0]
    );
}

/// Nothing but the layout is left in `dir`: no output, no partial file.
fn assert_no_output(dir: &Path) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "layout")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A case: one layout with these layers, and a place for the output.
struct Case {
    o: Ocidisk,
    dir: tempfile::TempDir,
    tars: Vec<Vec<u8>>,
}

impl Case {
    fn new(tars: Vec<Vec<u8>>) -> Case {
        let dir = tempfile::tempdir().unwrap();
        write_layout(&dir.path().join("layout"), "t", &tars);
        Case {
            o: Ocidisk::new(),
            dir,
            tars,
        }
    }

    fn image(&self) -> String {
        format!("oci:{}:t", self.dir.path().join("layout").display())
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out.img")
    }

    fn materialize(&self, extra: &[&str]) -> Outcome {
        let (image, out) = (self.image(), self.out());
        let mut args = vec!["materialize", &image, out.to_str().unwrap()];
        args.extend_from_slice(extra);
        run_bounded(&self.o, &args)
    }

    /// `materialize EXTRA` fails with `needle` and leaves nothing.
    fn refused(&self, extra: &[&str], needle: &str) {
        let out = self.materialize(extra);
        assert_clean_error(&out, needle);
        assert_no_output(self.dir.path());
    }

    /// `materialize` succeeds; the image is e2fsck-clean and its tree is
    /// GNU tar's extraction of the layers.
    fn accepted(&self, extra: &[&str]) -> Outcome {
        let out = self.materialize(extra);
        assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
        assert_e2fsck_clean(&self.out());
        assert_matches_gnu_tar(&self.tars, &self.out());
        std::fs::remove_file(self.out()).unwrap();
        out
    }
}

/// The image's tree equals what GNU tar extracts from `tars`, as root.
fn assert_matches_gnu_tar(tars: &[Vec<u8>], img: &Path) {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("rootfs");
    std::fs::create_dir(&root).unwrap();
    for (i, tar) in tars.iter().enumerate() {
        let file = work.path().join(format!("layer{i}.tar"));
        std::fs::write(&file, tar).unwrap();
        run_ok(
            Command::new("tar")
                .arg("-xf")
                .arg(&file)
                .arg("-C")
                .arg(&root)
                .args(["--numeric-owner", "--xattrs", "--xattrs-include=*"]),
            Duration::from_secs(120),
        );
    }
    let mut want = imagegen::scan_tree(&root);
    let m = LoopMount::new(img);
    let mut got = imagegen::scan_tree(m.path());
    want.entries.remove("/");
    got.entries.remove("/");
    let opts = imagegen::CompareOptions {
        skip_paths: vec!["/lost+found".into()],
        ..Default::default()
    };
    let diffs = imagegen::compare_trees(&want, &got, &opts);
    assert!(diffs.is_empty(), "differences:\n{}", diffs.join("\n"));
}

/// A GNU sparse file `name` of `size` bytes with these segments, their
/// data stored one after another.
fn gnu_sparse(name: &[u8], size: u64, segments: &[(u64, u64)]) -> Vec<u8> {
    let stored: u64 = segments.iter().map(|s| s.1).fold(0, u64::wrapping_add);
    let data = vec![b'x'; stored.min(1 << 20) as usize];
    let mut t = RawTar::new();
    t.entry(
        Header::gnu(name, b'S', stored.min(1 << 20)).sparse(segments, size, false),
        &data,
    );
    t.finish()
}

/// PAX sparse 0.1: the map in a record, a huge real size.
fn pax_sparse(map: &str, size: u64, stored: usize) -> Vec<u8> {
    let mut t = RawTar::new();
    t.pax(&[
        (b"GNU.sparse.major", b"0"),
        (b"GNU.sparse.minor", b"1"),
        (b"GNU.sparse.name", b"sparse.img"),
        (b"GNU.sparse.realsize", size.to_string().as_bytes()),
        (b"GNU.sparse.map", map.as_bytes()),
    ]);
    t.file(b"GNUSparseFile.0/sparse.img", &vec![b'y'; stored]);
    t.finish()
}

fn sparse_cases() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "backwards",
            gnu_sparse(b"back", 1 << 30, &[(1 << 20, 4096), (0, 4096)]),
        ),
        (
            "straddling",
            gnu_sparse(b"straddle", 1 << 20, &[(0, 8192), (4096, 8192)]),
        ),
        (
            "past the end",
            gnu_sparse(b"past", 1 << 20, &[(1 << 20, 4096)]),
        ),
        (
            "wrapping",
            pax_sparse(&format!("0,4096,{},4096", u64::MAX - 100), u64::MAX, 8192),
        ),
        (
            "summing over",
            pax_sparse(
                &format!("0,{},{},{}", u64::MAX / 2, u64::MAX / 2, u64::MAX / 2),
                u64::MAX,
                512,
            ),
        ),
    ]
}

#[test]
fn sparse_maps_out_of_order_overlapping_or_past_the_end_are_refused() {
    for (what, tar) in sparse_cases() {
        let c = Case::new(vec![tar]);
        for extra in [
            &[][..],
            &["--size", "100M"],
            &["--read-only", "--size", "100M"],
            &["--fs", "ext3"],
        ] {
            eprintln!("sparse map {what}, {extra:?}");
            c.refused(extra, "sparse map");
        }
    }
}

#[test]
fn serve_and_mount_refuse_a_bad_sparse_map_at_open() {
    let (_, tar) = sparse_cases().swap_remove(0);
    let c = Case::new(vec![tar]);
    let sock = c.dir.path().join("vhost.sock");
    let out = run_bounded(
        &c.o,
        &["serve", &c.image(), "--socket", sock.to_str().unwrap()],
    );
    assert_clean_error(&out, "sparse map");
    let mnt = c.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = run_bounded(&c.o, &["mount", &c.image(), mnt.to_str().unwrap()]);
    assert_clean_error(&out, "sparse map");
    // No socket, no image file under the mount point, nothing mounted.
    assert!(!sock.exists());
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(mnt.to_str().unwrap()), "{mounts}");
}

fn good_sparse() -> Vec<u8> {
    gnu_sparse(
        b"good",
        3 << 20,
        &[(0, 4096), (1 << 20, 8192), (3 << 20, 0)],
    )
}

#[test]
fn a_good_sparse_file_still_matches_gnu_tar() {
    Case::new(vec![good_sparse()]).accepted(&[]);
}

fn symlink_with_nul() -> Vec<u8> {
    let mut t = RawTar::new();
    t.pax(&[(b"linkpath", b"/etc/pass\0wd")]);
    t.entry(Header::ustar(b"nul-link", b'2', 0), &[]);
    t.finish()
}

fn symlink_empty() -> Vec<u8> {
    let mut t = RawTar::new();
    t.entry(Header::ustar(b"empty-link", b'2', 0), &[]);
    t.finish()
}

fn symlink_too_long() -> Vec<u8> {
    let mut t = RawTar::new();
    t.pax(&[(b"linkpath", &[b'l'; 5000])]);
    t.entry(Header::ustar(b"long-link", b'2', 0), &[]);
    t.finish()
}

#[test]
fn symlinks_whose_target_no_filesystem_holds_are_refused() {
    Case::new(vec![symlink_with_nul()]).refused(&[], "NUL");
    Case::new(vec![symlink_empty()]).refused(&[], "empty target");
    Case::new(vec![symlink_too_long()]).refused(&[], "PATH_MAX");
}

#[test]
fn too_many_hard_links_are_refused_with_the_limit() {
    let mut t = RawTar::new();
    t.file(b"f", b"shared\n");
    for i in 0..65_000 {
        t.entry(
            Header::ustar(format!("l{i}").as_bytes(), b'1', 0).link(b"f"),
            &[],
        );
    }
    let c = Case::new(vec![t.finish()]);
    c.refused(&[], "65000");
    c.refused(&["--fs", "ext3"], "32000");
}

fn xattr_name_too_long() -> Vec<u8> {
    let long = format!("SCHILY.xattr.user.{}", "n".repeat(300));
    let mut t = RawTar::new();
    t.pax(&[(long.as_bytes(), b"v")]);
    t.file(b"long-xattr", b"x");
    t.finish()
}

fn xattr_name_with_nul() -> Vec<u8> {
    let mut t = RawTar::new();
    t.pax(&[(b"SCHILY.xattr.user.a\0b", b"v")]);
    t.file(b"nul-xattr", b"x");
    t.finish()
}

fn xattr_foreign_namespace() -> Vec<u8> {
    let mut t = RawTar::new();
    t.pax(&[
        (b"SCHILY.xattr.user.kept", b"yes"),
        (b"SCHILY.xattr.weird.ns", b"dropped"),
    ]);
    t.file(b"foreign-xattr", b"x");
    t.finish()
}

#[test]
fn bad_xattr_names_are_refused_and_foreign_namespaces_warned() {
    Case::new(vec![xattr_name_too_long()]).refused(&[], "the limit is 255");
    Case::new(vec![xattr_name_with_nul()]).refused(&[], "NUL");
    let stderr = Case::new(vec![xattr_foreign_namespace()])
        .accepted(&[])
        .stderr;
    assert!(
        stderr.contains("weird.ns") && stderr.contains("foreign-xattr"),
        "the warning names the attribute and the file:\n{stderr}"
    );
}

/// Directories nested `levels` deep (`d/d/d/…`), each path in a PAX record.
fn nested_dirs(levels: usize) -> Vec<u8> {
    let mut t = RawTar::new();
    let mut path = Vec::new();
    for _ in 0..levels {
        path.extend_from_slice(b"d/");
        t.pax(&[(b"path", &path)]);
        t.entry(Header::ustar(b"d", b'5', 0).mode(0o755), &[]);
    }
    t.finish()
}

#[test]
fn deep_trees_cost_memory_linear_in_entries() {
    // 2,000 levels: a path of 4,000 bytes, under PATH_MAX.
    let out = Case::new(vec![nested_dirs(2000)]).accepted(&[]);
    assert!(
        out.max_rss_kib < 128 * 1024,
        "{} MiB for 2,000 levels",
        out.max_rss_kib / 1024
    );
    // 5,000 levels: a 10,000-byte path, refused by name of the limit.
    Case::new(vec![nested_dirs(5000)]).refused(&[], "PATH_MAX");
}

fn device(major: u64, minor: u64) -> Vec<u8> {
    let mut t = RawTar::new();
    t.entry(Header::ustar(b"dev", b'3', 0).device(major, minor), &[]);
    t.finish()
}

#[test]
fn device_numbers_linux_cannot_hold_are_refused() {
    for (major, minor) in [(5000, 1), (1, 1_048_581)] {
        Case::new(vec![device(major, minor)]).refused(&[], &format!("{major}:{minor}"));
    }
    Case::new(vec![device(4095, 1_048_575)]).accepted(&[]);
}

fn timestamps_out_of_range() -> Vec<u8> {
    let mut t = RawTar::new();
    t.pax(&[(b"mtime", b"-99999999999.5")]);
    t.file(b"ancient", b"a");
    t.pax(&[(b"mtime", b"99999999999")]);
    t.file(b"future", b"f");
    t.finish()
}

#[test]
fn timestamps_out_of_range_are_clamped_with_a_warning() {
    let c = Case::new(vec![timestamps_out_of_range()]);
    let stderr = c.accepted(&[]).stderr;
    assert!(
        stderr.contains("2 timestamp(s)") && stderr.contains("clamped"),
        "{stderr}"
    );
    let out = c.materialize(&[]);
    assert_eq!(out.code, Some(0));
    let m = LoopMount::new(&c.out());
    use std::os::unix::fs::MetadataExt;
    let ancient = std::fs::metadata(m.path().join("ancient")).unwrap();
    let future = std::fs::metadata(m.path().join("future")).unwrap();
    assert_eq!(ancient.mtime(), -2_147_483_648, "1901-12-13");
    assert_eq!(future.mtime(), 15_032_385_535, "2446-05-10");
}

/// The small cases, which the fuzz targets start from.
fn seed_cases() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = sparse_cases()
        .into_iter()
        .map(|(what, tar)| (format!("sparse map {what}"), tar))
        .collect();
    v.push(("good sparse file".into(), good_sparse()));
    v.push(("symlink with NUL".into(), symlink_with_nul()));
    v.push(("empty symlink".into(), symlink_empty()));
    v.push(("symlink too long".into(), symlink_too_long()));
    v.push(("xattr name too long".into(), xattr_name_too_long()));
    v.push(("xattr name with NUL".into(), xattr_name_with_nul()));
    v.push(("xattr foreign namespace".into(), xattr_foreign_namespace()));
    v.push(("major 5000".into(), device(5000, 1)));
    v.push(("minor 1048581".into(), device(1, 1_048_581)));
    v.push(("timestamps out of range".into(), timestamps_out_of_range()));
    v
}

/// Every small case is in both fuzz targets' seed corpora, as the byte
/// that picks the feeding chunk (73) and the tar. With
/// `OCIDISK_WRITE_SEEDS=1` the missing ones are written.
#[test]
fn hostile_cases_are_in_the_fuzz_seed_corpus() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = std::env::var_os("OCIDISK_WRITE_SEEDS").is_some();
    let mut missing = Vec::new();
    for (what, tar) in seed_cases() {
        let mut seed = vec![73u8];
        seed.extend_from_slice(&tar);
        let name = format!(
            "hostile-{}",
            imagegen::sha256_digest(&seed)[7..23].to_owned()
        );
        for target in ["tar_indexer", "tar_tree_fs"] {
            let path = corpus.join(target).join(&name);
            if std::fs::read(&path).ok().as_deref() == Some(&seed[..]) {
                continue;
            }
            if write {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &seed).unwrap();
            } else {
                missing.push(format!("{what} ({})", path.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "seeds missing (run with OCIDISK_WRITE_SEEDS=1): {missing:?}"
    );
}

#[test]
fn sizes_beyond_the_filesystem_are_refused_quickly() {
    let mut t = RawTar::new();
    t.file(b"f", b"x");
    let c = Case::new(vec![t.finish()]);
    let limit = |fs: &str| format!("beyond the largest {fs} filesystem ocidisk writes (4 TiB)");
    c.refused(&["--size", "100T"], &limit("ext4"));
    c.refused(&["--read-only", "--size", "100T"], &limit("ext4"));
    c.refused(&["--fs", "ext3", "--size", "100T"], &limit("ext3"));
    // What the message advises for a bigger ext4 disk works.
    let out = c.materialize(&["--size", "1G"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let img = c.out();
    run_ok(
        Command::new("truncate").args(["-s", "6T"]).arg(&img),
        Duration::from_secs(10),
    );
    run_ok(
        Command::new("resize2fs").arg(&img),
        Duration::from_secs(120),
    );
    assert_e2fsck_clean(&img);
}

#[test]
fn blobs_that_lie_about_their_size_are_named_with_the_real_size() {
    let mut t = RawTar::new();
    t.file(b"f", &vec![7u8; 100_000]);
    let c = Case::new(vec![t.finish()]);
    let layout = c.dir.path().join("layout");
    // Find the layer and give its blob other bytes of another length.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(imagegen::blob_path(
            &layout,
            index["manifests"][0]["digest"].as_str().unwrap(),
        ))
        .unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let size = manifest["layers"][0]["size"].as_u64().unwrap();
    let blob = imagegen::blob_path(&layout, layer);
    let original = std::fs::read(&blob).unwrap();

    let mut longer = original.clone();
    longer.extend(std::iter::repeat_n(0u8, 1_000_000));
    std::fs::write(&blob, &longer).unwrap();
    let real = longer.len().to_string();
    c.refused(
        &[],
        &format!("is {real} bytes, but its descriptor says {size}"),
    );

    std::fs::write(&blob, &original[..original.len() / 2]).unwrap();
    let real = (original.len() / 2).to_string();
    c.refused(
        &[],
        &format!("is {real} bytes, but its descriptor says {size}"),
    );
}

#[test]
fn causes_are_said_once() {
    let o = Ocidisk::new();
    let d = tempfile::tempdir().unwrap();
    let missing = format!("oci:{}:t", d.path().join("nowhere").display());
    let out = run_bounded(&o, &["materialize", &missing, "/tmp/never.img"]);
    assert_eq!(out.code, Some(1));
    let errors = out.stderr.matches("(os error 2)").count();
    assert!(
        errors <= 1,
        "the OS error is said {errors} times: {}",
        out.stderr
    );
}

#[test]
fn output_symlinks_and_devices_are_never_written_through() {
    let mut t = RawTar::new();
    t.file(b"f", b"content\n");
    let c = Case::new(vec![t.finish()]);
    let victim = c.dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    // A symlink at OUTPUT and at names shaped like the partial files.
    std::os::unix::fs::symlink(&victim, c.out()).unwrap();
    for name in [
        ".out.img.0000000000000000.ocidisk-partial",
        &format!(".out.img.ocidisk-{}.partial", std::process::id()),
        "out.img.partial",
    ] {
        std::os::unix::fs::symlink(&victim, c.dir.path().join(name)).unwrap();
    }
    let out = c.materialize(&[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(std::fs::symlink_metadata(c.out()).unwrap().is_file());
    assert_e2fsck_clean(&c.out());

    // A device node at OUTPUT is refused and stays a device.
    let dev = c.dir.path().join("dev-null");
    run_ok(
        Command::new("mknod").arg(&dev).args(["c", "1", "3"]),
        Duration::from_secs(5),
    );
    let image = c.image();
    let out = run_bounded(&c.o, &["materialize", &image, dev.to_str().unwrap()]);
    assert_clean_error(&out, "not a regular file");
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::metadata(&dev)
            .unwrap()
            .file_type()
            .is_char_device()
    );
}

#[test]
fn an_interrupted_write_leaves_no_partial_and_the_next_run_cleans_stale_ones() {
    // 640 MiB of data that does not compress to nothing: the write phase
    // lasts long enough to be interrupted.
    let mut data = vec![0u8; 640 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let mut t = RawTar::new();
    t.file(b"big", &data);
    drop(data);
    let c = Case::new(vec![t.finish()]);
    // Pull once, so the interrupted run is in its write phase at once.
    assert_eq!(run_bounded(&c.o, &["pull", &c.image()]).code, Some(0));
    let stale = c
        .dir
        .path()
        .join(".out.img.1111111111111111.ocidisk-partial");
    std::fs::write(&stale, b"left by a killed run").unwrap();

    let (image, out) = (c.image(), c.out());
    let mut child =
        c.o.command(&["materialize", &image, out.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    let start = Instant::now();
    let partial = loop {
        let found = std::fs::read_dir(c.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.ends_with(".ocidisk-partial") && p != &stale
            });
        if let Some(p) = found {
            break p;
        }
        assert!(start.elapsed() < TIME_LIMIT, "no partial file appeared");
        assert!(child.try_wait().unwrap().is_none(), "finished too soon");
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(!stale.exists(), "the stale partial was removed first");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(status.signal().is_none());
    assert!(!partial.exists(), "{} was left behind", partial.display());
    assert!(!out.exists());
}

#[test]
fn a_gzip_bomb_is_indexed_in_bounded_memory() {
    // A 4 MiB blob of gzip members that inflates to a tar holding one
    // 4 GiB file of zeros.
    use sha2::Digest as _;
    let zeros = vec![0u8; 64 << 20];
    let zero_member = imagegen::Compression::Gzip.compress(&zeros);
    let header = Header::ustar(b"zeros", b'0', 64 * zeros.len() as u64).bytes();
    let end = [0u8; 1024];
    let mut blob = imagegen::Compression::Gzip.compress(&header);
    let mut diff = sha2::Sha256::new();
    diff.update(header);
    for _ in 0..64 {
        blob.extend_from_slice(&zero_member);
        diff.update(&zeros);
    }
    blob.extend_from_slice(&imagegen::Compression::Gzip.compress(&end));
    diff.update(end);
    assert!(blob.len() < 5 << 20, "{} bytes", blob.len());
    let diff_id = format!("sha256:{}", hex::encode(diff.finalize()));

    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    write_layout_blobs(&layout, "t", &[(blob, diff_id)]);
    let o = Ocidisk::new();
    let image = format!("oci:{}:t", layout.display());
    let out = run_bounded(&o, &["pull", &image]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.max_rss_kib < 128 * 1024,
        "indexing 4 GiB of tar took {} MiB",
        out.max_rss_kib / 1024
    );
}

#[test]
fn serve_never_writes_through_symlinks_planted_at_its_files() {
    use common::serve::Served;
    let mut t = RawTar::new();
    t.file(b"f", &vec![5u8; 300_000]);
    let c = Case::new(vec![t.finish()]);
    let d = c.dir.path();
    let victim = d.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let plant = |name: &str| {
        let p = d.join(name);
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        p
    };
    // The overlay's data file through a symlink: refused at open.
    let overlay = plant("link.overlay");
    let sock = d.join("vhost.sock");
    let out = run_bounded(
        &c.o,
        &[
            "serve",
            &c.image(),
            "--socket",
            sock.to_str().unwrap(),
            "--overlay",
            overlay.to_str().unwrap(),
        ],
    );
    assert_clean_error(&out, "is a symlink");
    // Symlinks at the flush-to image and the pid file are replaced by
    // renames, never followed (the overlay bitmap's rename is the same
    // code: src/partial.rs).
    let (img, pid) = (plant("flush.img"), plant("serve.pid"));
    let overlay = d.join("disk.overlay");
    let mut s = Served::start(
        &c.o,
        &c.image(),
        &sock,
        &[
            "--prefetch",
            "--flush-to",
            img.to_str().unwrap(),
            "--pid-file",
            pid.to_str().unwrap(),
            "--overlay",
            overlay.to_str().unwrap(),
        ],
    );
    let start = Instant::now();
    while !std::fs::symlink_metadata(&img).unwrap().is_file() {
        assert!(start.elapsed() < TIME_LIMIT, "flush-to never completed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(std::fs::symlink_metadata(&pid).unwrap().is_file());
    assert!(s.stop().success(), "{}", s.stderr());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_e2fsck_clean(&img);
}
