//! Incremental updates (#15): a new image version keeps the old one's
//! blocks. v1 is the standard test image, v2 the same plus a layer that
//! modifies a file, deletes one, adds a directory of files and whites out
//! a directory. Two fresh materializations (ext4, ext3, XFS) share at
//! least 90% of v1's allocated 512 KiB chunks (allocation read by
//! `dumpe2fs` and `xfs_db`), byte for byte at the same offsets;
//! `materialize --base` gives the fresh bytes (new file and in place, then
//! back); a foreign, modified or damaged OLD is refused; a killed in-place
//! update is detected and finished; `ocidisk diff` predicts the chunks;
//! serving v2 after v1 fetches about v2's new layer; the same with the
//! Debian image plus a small layer.

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

/// Allocated blocks of an ext or XFS image (`dumpe2fs`'s or
/// `xfs_db freesp`'s free ranges).
fn allocated_blocks(img: &Path) -> Vec<bool> {
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut std::fs::File::open(img).unwrap(), &mut magic).unwrap();
    if &magic != b"XFSB" {
        return ext_allocated(img);
    }
    let out = Command::new("xfs_db")
        .args(["-r", "-c", "sb 0", "-c", "p agblocks"])
        .arg(img)
        .output()
        .unwrap();
    let agblocks = String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("agblocks = ")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("xfs_db gave no agblocks for {}", img.display()));
    xfs_allocated(img, agblocks)
}

/// Allocated blocks of an XFS image with `agblocks` blocks per AG.
fn xfs_allocated(img: &Path, agblocks: usize) -> Vec<bool> {
    let out = Command::new("xfs_db")
        .args(["-r", "-c", "freesp -d"])
        .arg(img)
        .output()
        .unwrap();
    assert!(out.status.success(), "xfs_db {}", img.display());
    let blocks = std::fs::metadata(img).unwrap().len() as usize / 4096;
    let mut used = vec![true; blocks];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<usize> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if let [ag, agbno, len] = f[..] {
            let start = ag * agblocks + agbno;
            for u in &mut used[start..start + len] {
                *u = false;
            }
        }
    }
    used
}

/// Allocated blocks of an ext image, from `dumpe2fs`'s free ranges.
fn ext_allocated(img: &Path) -> Vec<bool> {
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
        ("xfs", &["--fs", "xfs"][..]),
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

fn sha256_file(p: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

fn materialize(o: &Ocidisk, r: &str, out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["materialize", r, out.to_str().unwrap()];
    args.extend_from_slice(extra);
    o.ok(&args)
}

/// `--base` to a new file and in place gives the bytes of a fresh
/// materialize, e2fsck-clean, for each ext flavour.
#[test]
fn base_updates_equal_fresh_images() {
    let dir = tempfile::tempdir().unwrap();
    write_versions(dir.path(), Compression::Gzip);
    let (v1, v2) = (
        format!("oci:{}:v1", dir.path().display()),
        format!("oci:{}:v2", dir.path().display()),
    );
    let o = Ocidisk::new();
    for (name, extra) in [
        ("ext4", &[][..]),
        ("ext4-ro", &["--read-only"][..]),
        ("ext3", &["--fs", "ext3"][..]),
        ("xfs", &["--fs", "xfs"][..]),
    ] {
        let check = |img: &Path| {
            if name == "xfs" {
                common::fscheck::assert_xfs_repair_clean(img)
            } else {
                common::fscheck::assert_e2fsck_clean(img)
            }
        };
        let p = |n: &str| dir.path().join(format!("{name}-{n}.img"));
        materialize(&o, &v2, &p("fresh"), extra);
        let fresh = sha256_file(&p("fresh"));
        materialize(&o, &v1, &p("old"), extra);
        let old_sha = sha256_file(&p("old"));
        let base = p("old");
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(["--base", base.to_str().unwrap()]);
        let out = o.run(&[&["materialize", &v2, p("new").to_str().unwrap()][..], &args].concat());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("kept"), "{said}");
        assert_eq!(
            sha256_file(&p("new")),
            fresh,
            "{name}: --base to a new file"
        );
        assert_eq!(sha256_file(&p("old")), old_sha, "{name}: OLD untouched");
        check(&p("new"));
        // In place, then the result is itself a base for going back.
        o.ok(&[&["materialize", &v2, base.to_str().unwrap()][..], &args].concat());
        assert_eq!(sha256_file(&base), fresh, "{name}: --base in place");
        o.ok(&[&["materialize", &v1, base.to_str().unwrap()][..], &args].concat());
        assert_eq!(sha256_file(&base), old_sha, "{name}: back to v1 in place");
        check(&base);
    }
}

/// A foreign or modified OLD is refused, and refusing leaves it alone.
#[test]
fn foreign_or_modified_bases_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_versions(dir.path(), Compression::Gzip);
    let v1 = format!("oci:{}:v1", dir.path().display());
    let v2 = format!("oci:{}:v2", dir.path().display());
    let o = Ocidisk::new();
    let old = dir.path().join("old.img");
    let out = dir.path().join("out.img");
    let base_args = |b: &Path| {
        vec![
            "materialize".to_string(),
            v2.clone(),
            out.to_str().unwrap().to_string(),
            "--base".into(),
            b.to_str().unwrap().to_string(),
        ]
    };
    let fail = |b: &Path| {
        let a = base_args(b);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let e = o.fail(&a);
        assert!(!out.exists(), "a refused update leaves no output");
        let partial: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".ocidisk-partial"))
            .collect();
        assert!(partial.is_empty(), "the copy of OLD is left: {partial:?}");
        e
    };
    // Foreign: an ext4 image mke2fs made, with no record.
    let foreign = dir.path().join("foreign.img");
    std::fs::File::create(&foreign)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    assert!(
        Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-F"])
            .arg(&foreign)
            .status()
            .unwrap()
            .success()
    );
    let e = fail(&foreign);
    assert!(e.contains("not written by ocidisk materialize"), "{e}");

    // Modified through the filesystem: mounted read-write and a file added.
    materialize(&o, &v1, &old, &[]);
    {
        let m = common::fscheck::LoopMount::writable(&old);
        std::fs::write(m.path().join("added"), b"x").unwrap();
    }
    let e = fail(&old);
    assert!(e.contains("was modified after ocidisk wrote it"), "{e}");

    // Modified underneath with the stamp put back: a metadata block differs.
    materialize(&o, &v1, &old, &[]);
    let stamp = std::fs::metadata(&old).unwrap().modified().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&old).unwrap();
        f.write_all_at(&[0xff; 16], 4096 + 8).unwrap();
        f.set_modified(stamp).unwrap();
    }
    let e = fail(&old);
    assert!(e.contains("filesystem block"), "{e}");

    // A damaged record.
    materialize(&o, &v1, &old, &[]);
    let record = dir.path().join("old.img.ocidisk.json");
    std::fs::write(&record, b"{ not json").unwrap();
    let e = fail(&old);
    assert!(e.contains("is damaged"), "{e}");

    // qcow2 output.
    materialize(&o, &v1, &old, &[]);
    let q = dir.path().join("out.qcow2");
    let e = o.fail(&[
        "materialize",
        &v2,
        q.to_str().unwrap(),
        "--base",
        old.to_str().unwrap(),
    ]);
    assert!(e.contains("--base updates raw images"), "{e}");
}

/// An in-place update killed half-way leaves an image that does not pass
/// for either version, that other targets refuse, and that the next run
/// to the same version finishes.
#[test]
fn a_killed_in_place_update_is_detected_and_finished() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    write_versions(dir.path(), Compression::Gzip);
    let v1 = format!("oci:{}:v1", dir.path().display());
    let v2 = format!("oci:{}:v2", dir.path().display());
    let o = Ocidisk::new();
    let fresh = dir.path().join("fresh.img");
    materialize(&o, &v2, &fresh, &[]);
    let img = dir.path().join("disk.img");
    materialize(&o, &v1, &img, &[]);
    let p = img.to_str().unwrap();
    let mut child = o
        .command(&["materialize", &v2, p, "--base", p])
        .env("OCIDISK_TEST_UPDATE_PAUSE_MS", "120000")
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        let paused = line.contains("OCIDISK_TEST_UPDATE_PAUSE_MS: pausing");
        seen.push(line);
        if paused {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.contains("pausing")),
        "the update never reached its pause: {seen:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("disk.img.ocidisk.json")).unwrap())
            .unwrap();
    assert!(record["updating_to"].is_object(), "{record}");
    assert!(record["stamp"].is_null(), "{record}");
    // No primary superblock yet: nothing mounts it as either version.
    let bytes = std::fs::read(&img).unwrap();
    assert_ne!(&bytes[1024 + 56..1024 + 58], &[0x53, 0xef]);
    assert!(bytes != std::fs::read(&fresh).unwrap());
    // Another target is refused; the same one finishes it.
    let e = o.fail(&["materialize", &v1, p, "--base", p]);
    assert!(e.contains("half-way through an update"), "{e}");
    let said = o.run(&["materialize", &v2, p, "--base", p]);
    assert!(said.status.success());
    assert!(String::from_utf8_lossy(&said.stderr).contains("finished an interrupted update"));
    assert_eq!(sha256_file(&img), sha256_file(&fresh));
    common::fscheck::assert_e2fsck_clean(&img);
}

/// 512 KiB chunks whose bytes differ between two images of the same size.
fn differing_chunks(old: &Path, new: &Path) -> u64 {
    let (a, b) = (std::fs::read(old).unwrap(), std::fs::read(new).unwrap());
    assert_eq!(a.len(), b.len());
    a.chunks(CHUNK as usize)
        .zip(b.chunks(CHUNK as usize))
        .filter(|(x, y)| x != y)
        .count() as u64
}

/// `ocidisk diff` predicts, from the plans alone, the chunks in which two
/// fresh images differ (every one that does; the plans cannot see that
/// layer bytes happen to be zeros, so it may name one more), and names
/// the added layer.
#[test]
fn diff_reports_what_v2_shares_and_adds() {
    let dir = tempfile::tempdir().unwrap();
    write_versions(dir.path(), Compression::Gzip);
    let v1 = format!("oci:{}:v1", dir.path().display());
    let v2 = format!("oci:{}:v2", dir.path().display());
    let o = Ocidisk::new();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    materialize(&o, &v1, &a, &[]);
    materialize(&o, &v2, &b, &[]);
    let differ = differing_chunks(&a, &b);
    let j: serde_json::Value = serde_json::from_str(&o.ok(&["diff", "--json", &v1, &v2])).unwrap();
    assert_eq!(j["shared_layers"], 3, "{j}");
    assert_eq!(j["added_layers"], 1, "{j}");
    let top = update_layer();
    let blob = imagegen::build_layer(&top, Compression::Gzip);
    assert_eq!(j["added_layers_bytes"], blob.blob.len() as u64, "{j}");
    let changed = j["changed_chunks"].as_u64().unwrap();
    eprintln!("chunks differing: {differ} in the bytes, {changed} in the plans");
    assert!(
        differ <= changed && changed <= differ + 1,
        "{differ} differ: {j}"
    );
    let (chunks, shared) = (
        j["new"]["chunks"].as_u64().unwrap(),
        j["shared_chunks"].as_u64().unwrap(),
    );
    assert!(chunks <= shared + changed, "{j}");
    assert!(shared * 10 >= chunks * 8, "{j}");
    // The text says the same.
    let text = o.ok(&["diff", &v1, &v2]);
    assert!(
        text.contains(&format!("{shared} of NEW's {chunks}")),
        "{text}"
    );
    assert!(text.contains("1 added"), "{text}");
    // An image against itself shares everything.
    let j: serde_json::Value = serde_json::from_str(&o.ok(&["diff", "--json", &v2, &v2])).unwrap();
    assert_eq!(j["changed_bytes"], 0, "{j}");
    assert_eq!(j["added_layers"], 0, "{j}");
}

/// A host that served v1 fetches little more than v2's new layer to serve
/// v2 (its shared layers' spans come from the chunk store), and an overlay
/// made on v1 is refused on v2 unless discarded.
#[test]
fn serving_v2_after_v1_fetches_only_the_new_layer() {
    use common::mount::MountProc;
    use common::registry::Registry;
    let dir = tempfile::tempdir().unwrap();
    write_versions(dir.path(), Compression::Gzip);
    let reg = Registry::start();
    for v in ["v1", "v2"] {
        reg.push(
            &format!("oci:{}:{v}", dir.path().display()),
            &format!("app:{v}"),
            false,
        );
    }
    let (r1, r2) = (
        format!("{}/app:v1", reg.host()),
        format!("{}/app:v2", reg.host()),
    );
    let o = Ocidisk::new();
    let fresh = dir.path().join("fresh-v2.img");
    materialize(
        &Ocidisk::new(),
        &format!("oci:{}:v2", dir.path().display()),
        &fresh,
        &["--read-only"],
    );
    let point = dir.path().join("disk");
    std::fs::write(&point, b"").unwrap();
    let m = MountProc::start(&o, &r1, &point, &["--read-only"]);
    std::fs::read(&m.image).unwrap();
    assert_eq!(m.stop(), Some(0));

    let before = reg.requests().len();
    let m = MountProc::start(&o, &r2, &point, &["--read-only"]);
    assert!(
        std::fs::read(&m.image).unwrap() == std::fs::read(&fresh).unwrap(),
        "the lazy v2 differs from materialize's"
    );
    assert_eq!(m.stop(), Some(0));
    let fetched: u64 = reg.requests()[before..]
        .iter()
        .filter(|q| q.method == "GET")
        .map(|q| q.bytes)
        .sum();
    let new_layer = imagegen::build_layer(&update_layer(), Compression::Gzip)
        .blob
        .len() as u64;
    assert!(
        fetched * 2 <= new_layer * 3,
        "serving v2 after v1 fetched {fetched} bytes; its new layer is {new_layer}"
    );

    // Overlays: one made on v1 is refused on v2, unless discarded.
    let overlay = dir.path().join("app.overlay");
    let ov = overlay.to_str().unwrap();
    let m = MountProc::start(&o, &r1, &point, &["--overlay", ov]);
    {
        let fs = common::fscheck::LoopMount::writable(&m.image);
        std::fs::write(fs.path().join("written-on-v1"), b"v1").unwrap();
        // SAFETY: sync(2) has no preconditions.
        unsafe { libc::sync() };
    }
    assert_eq!(m.stop(), Some(0));
    let e = o.fail(&["mount", "--overlay", ov, &r2, point.to_str().unwrap()]);
    assert!(
        e.contains("its blocks mean nothing on another image"),
        "{e}"
    );
    assert!(e.contains("--discard-overlay"), "{e}");
    let m = MountProc::start(&o, &r2, &point, &["--overlay", ov, "--discard-overlay"]);
    {
        let fs = common::fscheck::LoopMount::new(&m.image);
        assert!(!fs.path().join("written-on-v1").exists());
        assert_eq!(
            std::fs::read(fs.path().join("etc/hostname")).unwrap(),
            b"ocidisk-v2\n"
        );
    }
    assert_eq!(m.stop(), Some(0));
}

/// Tag `to` in `layout`: the image tagged `from` plus `layer` (gzip) on top.
fn derive(layout: &Path, from: &str, layer: &LayerSpec, to: &str) {
    let read = |digest: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(imagegen::blob_path(layout, digest)).unwrap())
            .unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == from)
        .unwrap()
        .clone();
    let mut manifest = read(desc["digest"].as_str().unwrap());
    let mut config = read(manifest["config"]["digest"].as_str().unwrap());
    let built = imagegen::build_layer(layer, Compression::Gzip);
    let layer_digest = imagegen::write_blob(layout, &built.blob);
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(built.diff_id.clone().into());
    let config_bytes = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = imagegen::write_blob(layout, &config_bytes).into();
    manifest["config"]["size"] = config_bytes.len().into();
    manifest["layers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": built.blob.len(),
        }));
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let mut new_desc = desc.clone();
    new_desc["digest"] = imagegen::write_blob(layout, &manifest_bytes).into();
    new_desc["size"] = manifest_bytes.len().into();
    imagegen::add_to_index(layout, to, new_desc);
}

/// The Debian image as v1 and v1 plus a small layer as v2: chunk
/// sharing (ext4 and XFS), `--base` to a new file and in place equal to
/// fresh, e2fsck.
#[test]
fn debian_plus_a_small_layer() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("debian");
    let src = common::debian::layout();
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(&layout)
            .status()
            .unwrap()
            .success()
    );
    let t = 1_700_000_000;
    let update = LayerSpec::new(
        "app update",
        vec![
            E::text("/etc/hostname", "app-v2\n", 0o644).mtime(t),
            E::whiteout("/etc/motd").mtime(t),
            E::dir("/srv/app", 0o755).mtime(t),
            E::text("/srv/app/config.toml", "port = 8080\n", 0o644).mtime(t),
            E::file(
                "/srv/app/app.bin",
                imagegen::Content::Pattern {
                    len: 200_000,
                    seed: 3,
                },
                0o755,
            )
            .mtime(t),
            E::whiteout("/usr/share/doc/apt").mtime(t),
        ],
    );
    derive(&layout, "bookworm", &update, "v2");
    let (v1, v2) = (
        format!("oci:{}:bookworm", layout.display()),
        format!("oci:{}:v2", layout.display()),
    );
    let o = Ocidisk::new();
    let p = |n: &str| dir.path().join(n);
    materialize(&o, &v1, &p("v1.img"), &[]);
    materialize(&o, &v2, &p("v2.img"), &[]);
    let (allocated, shared) = chunk_sharing(&p("v1.img"), &p("v2.img"));
    eprintln!("debian: {shared} of {allocated} allocated chunks shared");
    assert!(
        shared * 10 >= allocated * 9,
        "only {shared} of v1's {allocated} allocated chunks kept"
    );
    for v in ["v1", "v2"] {
        materialize(
            &o,
            if v == "v1" { &v1 } else { &v2 },
            &p(&format!("{v}.xfs")),
            &["--fs", "xfs"],
        );
    }
    let (allocated, shared) = chunk_sharing(&p("v1.xfs"), &p("v2.xfs"));
    eprintln!("debian, xfs: {shared} of {allocated} allocated chunks shared");
    assert!(
        shared * 10 >= allocated * 9,
        "xfs: only {shared} of v1's {allocated} allocated chunks kept"
    );
    let fresh = sha256_file(&p("v2.img"));
    let base = p("v1.img");
    let b = base.to_str().unwrap();
    o.ok(&[
        "materialize",
        &v2,
        p("new.img").to_str().unwrap(),
        "--base",
        b,
    ]);
    assert_eq!(sha256_file(&p("new.img")), fresh, "--base to a new file");
    common::fscheck::assert_e2fsck_clean(&p("new.img"));
    o.ok(&["materialize", &v2, b, "--base", b]);
    assert_eq!(sha256_file(&base), fresh, "--base in place");
    common::fscheck::assert_e2fsck_clean(&base);
    let fs = common::fscheck::LoopMount::new(&base);
    assert_eq!(
        std::fs::read(fs.path().join("etc/hostname")).unwrap(),
        b"app-v2\n"
    );
    assert!(!fs.path().join("usr/share/doc/apt").exists());
    assert!(fs.path().join("usr/bin/dash").exists());
}

/// A layer that deletes every other file of a big lower layer leaves
/// more holes than XFS's one-leaf free-space trees hold: the XFS writer
/// then packs the data (still a clean filesystem with the right tree);
/// ext4 keeps the stable layout.
#[test]
fn a_fragmenting_update_still_gives_clean_filesystems() {
    let t = 1_700_000_000;
    let mut files = vec![E::dir("/f", 0o755).mtime(t)];
    for i in 0..1200 {
        files.push(E::text(&format!("/f/{i:04}"), &format!("file {i}\n"), 0o644).mtime(t));
    }
    let deletes = (0..1200)
        .step_by(2)
        .map(|i| E::whiteout(&format!("/f/{i:04}")).mtime(t))
        .collect();
    let layers = vec![
        LayerSpec::new("many files", files),
        LayerSpec::new("every other one deleted", deletes),
    ];
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_image(
        dir.path(),
        "v",
        &layers,
        Compression::Gzip,
        &Platform::linux_amd64(),
    );
    let r = format!("oci:{}:v", dir.path().display());
    let expected = common::fscheck::with_lost_found(imagegen::oracle(&layers));
    let o = Ocidisk::new();
    let xfs = dir.path().join("v.xfs");
    let out = o.run(&[
        "materialize",
        "-v",
        "--fs",
        "xfs",
        &r,
        xfs.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("packing the data instead"), "{said}");
    common::fscheck::assert_xfs_repair_clean(&xfs);
    common::fscheck::compare_mounted_as(&imagegen::oracle(&layers), &xfs, "xfs");
    let ext4 = dir.path().join("v.img");
    materialize(&o, &r, &ext4, &[]);
    common::fscheck::assert_e2fsck_clean(&ext4);
    common::fscheck::compare_mounted_as(&expected, &ext4, "ext4");
}
