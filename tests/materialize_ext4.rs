//! `ocidisk materialize` writes ext4 that e2fsck and the kernel accept, and
//! whose mounted tree is exactly the image's merged tree: the generated
//! images against their oracle, a real debootstrap image from the registry
//! against a tar extraction, htree indexes, determinism, a sparse file over
//! 4 GiB, large xattrs, ACLs, and bad input that leaves no output behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cli::Ocidisk;
use common::fscheck::{LoopMount, assert_e2fsck_clean, compare_mounted, with_lost_found};
use common::imagegen::{self, Compression, Platform};
use common::registry::{Registry, run_ok};
use sha2::Digest as _;

fn materialize(o: &Ocidisk, image: &str, out: &Path, extra: &[&str]) {
    let mut args = vec!["materialize", image, out.to_str().unwrap()];
    args.extend_from_slice(extra);
    o.ok(&args);
    assert!(out.is_file());
}

fn file_sha256(p: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

#[test]
fn generated_images_are_clean_and_mount_as_their_oracle() {
    let expected = with_lost_found(imagegen::oracle(&imagegen::standard_layers()));
    for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let dir = tempfile::tempdir().unwrap();
        imagegen::write_standard(dir.path(), "v1", c);
        let r = format!("oci:{}:v1", dir.path().display());
        let o = Ocidisk::new();
        for (name, extra) in [("rw.img", &[][..]), ("ro.img", &["--read-only"][..])] {
            let img = dir.path().join(name);
            materialize(&o, &r, &img, extra);
            assert_e2fsck_clean(&img);
            compare_mounted(&expected, &img);
        }
    }
}

#[test]
fn each_platform_of_a_multi_arch_image() {
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_multiarch(dir.path(), "multi", Compression::Gzip);
    let r = format!("oci:{}:multi", dir.path().display());
    let o = Ocidisk::new();
    for p in [Platform::linux_amd64(), Platform::linux_arm64()] {
        let img = dir.path().join(format!("{}.img", p.arch));
        materialize(&o, &r, &img, &["--platform", &format!("linux/{}", p.arch)]);
        assert_e2fsck_clean(&img);
        compare_mounted(
            &with_lost_found(imagegen::oracle(&imagegen::multiarch_layers(&p))),
            &img,
        );
    }
}

#[test]
fn big_directory_is_htree_indexed_and_output_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(dir.path(), "v1", Compression::Gzip);
    let r = format!("oci:{}:v1", dir.path().display());
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    materialize(&Ocidisk::new(), &r, &a, &[]);
    materialize(&Ocidisk::new(), &r, &b, &[]);
    assert_eq!(file_sha256(&a), file_sha256(&b), "two runs differ");

    let out = run_ok(
        Command::new("debugfs")
            .args(["-R", "htree /big-dir"])
            .arg(&a),
        Duration::from_secs(60),
    );
    assert!(out.stdout.contains("Root node dump:"), "{}", out.stdout);
    let leaves: usize = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Number of entries (count): "))
        .expect("an index count")
        .trim()
        .parse()
        .unwrap();
    assert!(leaves > 1, "2,000 entries span several leaf blocks");

    // An explicit UUID changes the superblock, deterministically.
    let c = dir.path().join("c.img");
    let uuid = "0f0e0d0c-0b0a-4908-8706-050403020100";
    materialize(&Ocidisk::new(), &r, &c, &["--uuid", uuid]);
    let out = run_ok(
        Command::new("dumpe2fs").arg("-h").arg(&c),
        Duration::from_secs(60),
    );
    assert!(out.stdout.contains(uuid), "{}", out.stdout);
}

#[test]
fn debootstrap_image_from_the_registry_equals_a_tar_extraction() {
    let layout = run_ok(
        Command::new("bash").arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/debian-image.sh"
        )),
        Duration::from_secs(900),
    );
    let layout = PathBuf::from(layout.stdout.trim());
    let reg = Registry::start();
    reg.push(
        &format!("oci:{}:bookworm", layout.display()),
        "debian:bookworm",
        false,
    );
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("debian.img");
    let o = Ocidisk::new();
    materialize(&o, &format!("{}/debian:bookworm", reg.host()), &img, &[]);
    assert_e2fsck_clean(&img);

    // The reference: GNU tar extracting the same layer as root.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(imagegen::blob_path(&layout, manifest_digest)).unwrap(),
    )
    .unwrap();
    let extracted = work.path().join("rootfs");
    std::fs::create_dir(&extracted).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let blob = imagegen::blob_path(&layout, layer["digest"].as_str().unwrap());
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
    let m = LoopMount::new(&img);
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

// ---- hand-made layers ------------------------------------------------------

/// An OCI layout with the given uncompressed tars as gzip layers.
fn raw_image(dir: &Path, tars: &[Vec<u8>]) -> String {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for t in tars {
        let blob = Compression::Gzip.compress(t);
        let digest = imagegen::write_blob(dir, &blob);
        layers.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest, "size": blob.len(),
        }));
        diff_ids.push(imagegen::sha256_digest(t));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_digest = imagegen::write_blob(dir, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": layers,
    }))
    .unwrap();
    let digest = imagegen::write_blob(dir, &manifest);
    imagegen::add_to_index(
        dir,
        "v1",
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": manifest.len(),
        }),
    );
    format!("oci:{}:v1", dir.display())
}

fn header(kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h
}

/// A tar with one entry whose raw name bytes are `name` (no validation).
fn raw_entry_tar(name: &[u8], kind: tar::EntryType, link: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(kind, 0);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.name[..name.len()].copy_from_slice(name);
    gnu.linkname[..link.len()].copy_from_slice(link);
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn bad_input_is_a_clear_error_and_leaves_no_file() {
    let long = vec![b'n'; 256];
    let long_name = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Regular, 0);
        let path = format!("dir/{}", String::from_utf8(long.clone()).unwrap());
        b.append_data(&mut h, &path, &[][..]).unwrap();
        b.into_inner().unwrap()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            raw_entry_tar(b"../../etc/evil", tar::EntryType::Regular, b""),
            "escapes the root",
        ),
        (
            raw_entry_tar(b"a/../../x", tar::EntryType::Regular, b""),
            "escapes the root",
        ),
        (
            raw_entry_tar(b"link", tar::EntryType::Link, b"missing/target"),
            "missing/target",
        ),
        (long_name, "256 bytes"),
    ];
    for (tar, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let r = raw_image(dir.path(), &[tar]);
        let out = dir.path().join("out.img");
        let err = Ocidisk::new().fail(&["materialize", &r, out.to_str().unwrap()]);
        assert!(err.contains(want), "expected {want:?} in: {err}");
        assert!(!out.exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("partial"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    // More content than --size holds: the error states the size needed.
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(dir.path(), "v1", Compression::Gzip);
    let out = dir.path().join("small.img");
    let err = Ocidisk::new().fail(&[
        "materialize",
        &format!("oci:{}:v1", dir.path().display()),
        out.to_str().unwrap(),
        "--size",
        "12M",
    ]);
    assert!(
        err.contains("needs at least") && err.contains("MiB"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn sparse_file_over_4gib_large_xattr_and_acl() {
    const BIG: u64 = 5 << 30;
    let mut b = tar::Builder::new(Vec::new());
    // PAX sparse 1.0: a 5 GiB file with 4 KiB of data at 1 GiB and 4 bytes at the end.
    let head = vec![0xabu8; 4096];
    let mut data = format!("2\n{}\n4096\n{}\n4\n", 1u64 << 30, BIG - 4).into_bytes();
    data.resize(512, 0);
    data.extend_from_slice(&head);
    data.extend_from_slice(b"tail");
    b.append_pax_extensions([
        ("GNU.sparse.major", &b"1"[..]),
        ("GNU.sparse.minor", &b"0"[..]),
        ("GNU.sparse.name", &b"huge.img"[..]),
        ("GNU.sparse.realsize", BIG.to_string().as_bytes()),
    ])
    .unwrap();
    b.append_data(
        &mut header(tar::EntryType::Regular, data.len() as u64),
        "GNUSparseFile.0/huge.img",
        &data[..],
    )
    .unwrap();
    // 1,500 one-byte segments in separate blocks: 1,500 extents need a
    // depth-2 tree, and the sparse map spans several 512-byte blocks.
    const SEGS: u64 = 1500;
    let mut map = format!("{SEGS}\n");
    for i in 0..SEGS {
        map.push_str(&format!("{}\n1\n", i * 8192 + 7));
    }
    let mut data = map.into_bytes();
    data.resize(data.len().div_ceil(512) * 512, 0);
    data.extend((0..SEGS).map(|i| (i % 250) as u8 + 1));
    b.append_pax_extensions([
        ("GNU.sparse.major", &b"1"[..]),
        ("GNU.sparse.minor", &b"0"[..]),
        ("GNU.sparse.name", &b"many-extents"[..]),
        ("GNU.sparse.realsize", (SEGS * 8192).to_string().as_bytes()),
    ])
    .unwrap();
    b.append_data(
        &mut header(tar::EntryType::Regular, data.len() as u64),
        "GNUSparseFile.0/many-extents",
        &data[..],
    )
    .unwrap();
    // A 3,000-byte xattr (needs an xattr block) and a POSIX ACL.
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 4, 1000),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    let big_value: Vec<u8> = (0..3000).map(|i| (i % 251) as u8).collect();
    b.append_pax_extensions([
        ("SCHILY.xattr.user.big", &big_value[..]),
        ("SCHILY.xattr.system.posix_acl_access", &acl[..]),
    ])
    .unwrap();
    b.append_data(&mut header(tar::EntryType::Regular, 2), "attrs", &b"hi"[..])
        .unwrap();
    let tar = b.into_inner().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let r = raw_image(dir.path(), &[tar]);
    let img = dir.path().join("sparse.img");
    materialize(&Ocidisk::new(), &r, &img, &["--read-only"]);
    assert!(
        std::fs::metadata(&img).unwrap().len() < 1 << 30,
        "the 5 GiB file is stored sparsely"
    );
    assert_e2fsck_clean(&img);

    let m = LoopMount::new(&img);
    let huge = m.path().join("huge.img");
    let md = std::fs::metadata(&huge).unwrap();
    assert_eq!(md.len(), BIG);
    use std::os::unix::fs::{FileExt, MetadataExt};
    assert!(
        md.blocks() <= 16,
        "only the data blocks are allocated: {}",
        md.blocks()
    );
    let f = std::fs::File::open(&huge).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 1 << 30).unwrap();
    assert_eq!(buf, head);
    f.read_exact_at(&mut buf[..4], BIG - 4).unwrap();
    assert_eq!(&buf[..4], b"tail");
    f.read_exact_at(&mut buf, 4 << 30).unwrap();
    assert!(buf.iter().all(|b| *b == 0), "holes read as zeros");

    let many = std::fs::read(m.path().join("many-extents")).unwrap();
    assert_eq!(many.len() as u64, SEGS * 8192);
    for i in 0..SEGS {
        let at = (i * 8192 + 7) as usize;
        assert_eq!(many[at], (i % 250) as u8 + 1, "segment {i}");
        assert_eq!(many[at - 1], 0);
    }
    let stat = run_ok(
        Command::new("debugfs")
            .args(["-R", "stat /many-extents"])
            .arg(&img),
        Duration::from_secs(60),
    );
    // debugfs lists external tree blocks as (ETB<level>): level 1 exists only
    // when the tree has index blocks below the inode, i.e. depth 2.
    assert!(
        stat.stdout.contains("(ETB0)") && stat.stdout.contains("(ETB1)"),
        "expected a depth-2 extent tree:\n{}",
        stat.stdout
    );

    let x = imagegen::read_xattrs(&m.path().join("attrs"));
    assert_eq!(x.get("user.big"), Some(&hex::encode(&big_value)));
    assert_eq!(
        x.get("system.posix_acl_access"),
        Some(&hex::encode(&acl)),
        "the kernel reads the ACL back"
    );
}

/// The bytes of the standard test image (uncompressed layers, so no
/// compressor version enters) as ext4, writable and read-only. A change to
/// the writers that moves a single byte fails here; update the hashes only
/// for a change that means to alter the output, and say why in its commit.
#[test]
fn golden_hashes_pin_the_ext4_output() {
    const GOLDEN: [(&str, &[&str], &str); 2] = [
        (
            "rw.img",
            &[],
            "53346076e0b587f9d594b7ac31ef5ba7fdf4e2dfa5daa70488fadd129411045b",
        ),
        (
            "ro.img",
            &["--read-only"],
            "7110f76b1c500386a2833f18205f47b77c30a99844c745796ef3de6c9cfa3dd0",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(dir.path(), "v1", Compression::None);
    let r = format!("oci:{}:v1", dir.path().display());
    let o = Ocidisk::new();
    let mut got = Vec::new();
    for (name, extra, _) in GOLDEN {
        let img = dir.path().join(name);
        materialize(&o, &r, &img, extra);
        got.push(file_sha256(&img));
    }
    let want: Vec<String> = GOLDEN.iter().map(|g| g.2.to_string()).collect();
    assert_eq!(got, want, "the ext4 output changed");
}
