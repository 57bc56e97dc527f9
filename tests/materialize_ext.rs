//! `ocidisk materialize` writes ext4 and ext3 that e2fsck and the kernel
//! accept, with exactly mke2fs's feature sets, and whose mounted tree
//! (`mount -t ext4` / `mount -t ext3`) is exactly the image's merged tree:
//! the generated images against their oracle, a real debootstrap image from
//! the registry against a tar extraction, htree indexes, determinism, a
//! sparse file over 4 GiB (extent trees of depth 2; block maps through
//! triple-indirect blocks), large xattrs, ACLs, golden hashes, and bad input
//! that leaves no output behind.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::cli::Ocidisk;
use common::debian;
use common::fscheck::{
    LoopMount, assert_e2fsck_clean, compare_mounted_as, ext_features, with_lost_found,
};
use common::imagegen::{self, Compression, Platform};
use common::registry::{Registry, run_ok};
use sha2::Digest as _;

fn materialize(o: &Ocidisk, image: &str, out: &Path, extra: &[&str]) {
    let mut args = vec!["materialize", image, out.to_str().unwrap()];
    args.extend_from_slice(extra);
    o.ok(&args);
    assert!(out.is_file());
}

/// The two ext filesystems and the features `dumpe2fs -h` must list for
/// writable and read-only images, exactly as mke2fs makes them (less
/// `resize_inode`: ocidisk images are not grown in place).
const EXT: [(&str, &str, &str); 2] = [
    (
        "ext4",
        "has_journal ext_attr dir_index filetype extent 64bit flex_bg sparse_super large_file huge_file dir_nlink extra_isize metadata_csum",
        "ext_attr dir_index filetype extent 64bit flex_bg sparse_super large_file huge_file dir_nlink extra_isize metadata_csum",
    ),
    (
        "ext3",
        "has_journal ext_attr dir_index filetype sparse_super large_file",
        "has_journal ext_attr dir_index filetype sparse_super large_file",
    ),
];

fn assert_features(img: &Path, want: &str) {
    assert_eq!(ext_features(img).join(" "), want, "{}", img.display());
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
        for (fs, rw_features, ro_features) in EXT {
            for (mode, extra, features) in [
                ("rw", &[][..], rw_features),
                ("ro", &["--read-only"][..], ro_features),
            ] {
                let img = dir.path().join(format!("{fs}-{mode}.img"));
                let mut args = vec!["--fs", fs];
                args.extend_from_slice(extra);
                materialize(&o, &r, &img, &args);
                assert_e2fsck_clean(&img);
                assert_features(&img, features);
                compare_mounted_as(&expected, &img, fs);
            }
        }
    }
}

#[test]
fn each_platform_of_a_multi_arch_image() {
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_multiarch(dir.path(), "multi", Compression::Gzip);
    let r = format!("oci:{}:multi", dir.path().display());
    let o = Ocidisk::new();
    for (fs, _, _) in EXT {
        for p in [Platform::linux_amd64(), Platform::linux_arm64()] {
            let img = dir.path().join(format!("{fs}-{}.img", p.arch));
            let platform = format!("linux/{}", p.arch);
            materialize(&o, &r, &img, &["--fs", fs, "--platform", &platform]);
            assert_e2fsck_clean(&img);
            compare_mounted_as(
                &with_lost_found(imagegen::oracle(&imagegen::multiarch_layers(&p))),
                &img,
                fs,
            );
        }
    }
}

#[test]
fn big_directory_is_htree_indexed_and_output_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(dir.path(), "v1", Compression::Gzip);
    let r = format!("oci:{}:v1", dir.path().display());
    for (fs, _, _) in EXT {
        let a = dir.path().join(format!("{fs}-a.img"));
        let b = dir.path().join(format!("{fs}-b.img"));
        materialize(&Ocidisk::new(), &r, &a, &["--fs", fs]);
        materialize(&Ocidisk::new(), &r, &b, &["--fs", fs]);
        assert_eq!(file_sha256(&a), file_sha256(&b), "{fs}: two runs differ");

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
        assert!(leaves > 1, "{fs}: 2,000 entries span several leaf blocks");

        // An explicit UUID changes the superblock, deterministically.
        let c = dir.path().join(format!("{fs}-c.img"));
        let uuid = "0f0e0d0c-0b0a-4908-8706-050403020100";
        materialize(&Ocidisk::new(), &r, &c, &["--fs", fs, "--uuid", uuid]);
        let out = run_ok(
            Command::new("dumpe2fs").arg("-h").arg(&c),
            Duration::from_secs(60),
        );
        assert!(out.stdout.contains(uuid), "{}", out.stdout);
    }
}

#[test]
fn debootstrap_image_from_the_registry_equals_a_tar_extraction() {
    let layout = debian::layout();
    let reg = Registry::start();
    let image = debian::push(&reg, &layout);
    let work = tempfile::tempdir().unwrap();
    let o = Ocidisk::new();
    for (fs, features, _) in EXT {
        let img = work.path().join(format!("debian-{fs}.img"));
        materialize(&o, &image, &img, &["--fs", fs]);
        assert_e2fsck_clean(&img);
        assert_features(&img, features);
        debian::assert_equals_tar_extraction(&layout, &img, Some(fs));
        std::fs::remove_file(&img).unwrap();
    }
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
    let r = format!("oci:{}:v1", dir.path().display());
    let out = dir.path().join("small.img");
    let o = Ocidisk::new();
    for (fs, _, _) in EXT {
        let err = o.fail(&[
            "materialize",
            "--fs",
            fs,
            &r,
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
    // ext3 addresses 2^32 blocks (16 TiB); ocidisk writes up to 4 TiB.
    let err = o.fail(&[
        "materialize",
        "--fs",
        "ext3",
        &r,
        out.to_str().unwrap(),
        "--size",
        "17T",
    ]);
    assert!(
        err.contains("beyond the largest ext3 filesystem ocidisk writes (4 TiB)"),
        "{err}"
    );
    assert!(!out.exists());

    // A block-mapped file is limited by its 32-bit count of 512-byte
    // sectors: ext3 refuses a 3 TiB sparse file by name; ext4 takes it.
    let mut b = tar::Builder::new(Vec::new());
    let huge: u64 = 3 << 40;
    let mut data = format!("1\n{}\n1\n", huge - 1).into_bytes();
    data.resize(512, 0);
    data.push(b'z');
    b.append_pax_extensions([
        ("GNU.sparse.major", &b"1"[..]),
        ("GNU.sparse.minor", &b"0"[..]),
        ("GNU.sparse.name", &b"three-tib"[..]),
        ("GNU.sparse.realsize", huge.to_string().as_bytes()),
    ])
    .unwrap();
    b.append_data(
        &mut header(tar::EntryType::Regular, data.len() as u64),
        "GNUSparseFile.0/three-tib",
        &data[..],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = raw_image(dir.path(), &[b.into_inner().unwrap()]);
    let out = dir.path().join("big.img");
    let err = o.fail(&["materialize", "--fs", "ext3", &r, out.to_str().unwrap()]);
    assert!(
        err.contains("/three-tib") && err.contains("beyond ext3's limit"),
        "{err}"
    );
    assert!(!out.exists());
    materialize(&o, &r, &out, &["--read-only"]);
    assert_e2fsck_clean(&out);
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
    for (fs, _, _) in EXT {
        let img = dir.path().join(format!("sparse-{fs}.img"));
        materialize(&Ocidisk::new(), &r, &img, &["--read-only", "--fs", fs]);
        assert!(
            std::fs::metadata(&img).unwrap().len() < 1 << 30,
            "the 5 GiB file is stored sparsely"
        );
        assert_e2fsck_clean(&img);

        let m = LoopMount::typed(&img, fs);
        let huge = m.path().join("huge.img");
        let md = std::fs::metadata(&huge).unwrap();
        assert_eq!(md.len(), BIG);
        use std::os::unix::fs::{FileExt, MetadataExt};
        // Data blocks only, plus the block map's indirect blocks on ext3
        // (one IND, DIND and TIND each on the way to the two data blocks).
        assert!(
            md.blocks() <= 16 + 5 * 8,
            "{fs}: only the data blocks are allocated: {}",
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
        let stat = |path: &str| {
            run_ok(
                Command::new("debugfs")
                    .args(["-R", &format!("stat {path}")])
                    .arg(&img),
                Duration::from_secs(60),
            )
            .stdout
        };
        if fs == "ext4" {
            // debugfs lists external tree blocks as (ETB<level>): level 1
            // exists only when the tree has index blocks below the inode,
            // i.e. depth 2.
            let st = stat("/many-extents");
            assert!(
                st.contains("(ETB0)") && st.contains("(ETB1)"),
                "expected a depth-2 extent tree:\n{st}"
            );
        } else {
            // Block maps: the 1 GiB block sits under the double-indirect
            // block, the last one under the triple-indirect block.
            let st = stat("/huge.img");
            assert!(
                st.contains("BLOCKS:") && !st.contains("EXTENTS:"),
                "expected a block map:\n{st}"
            );
            assert!(
                st.contains("(DIND)") && st.contains("(TIND)"),
                "expected double- and triple-indirect blocks:\n{st}"
            );
            let st = stat("/many-extents");
            assert!(st.contains("(IND)") && st.contains("(DIND)"), "{st}");
        }

        let x = imagegen::read_xattrs(&m.path().join("attrs"));
        assert_eq!(x.get("user.big"), Some(&hex::encode(&big_value)));
        assert_eq!(
            x.get("system.posix_acl_access"),
            Some(&hex::encode(&acl)),
            "the kernel reads the ACL back"
        );
    }
}

/// The bytes of the standard test image (uncompressed layers, so no
/// compressor version enters) as ext4 and ext3, writable and read-only. A
/// change to the writers that moves a single byte fails here; update the
/// hashes only for a change that means to alter the output, and say why in
/// its commit.
#[test]
fn golden_hashes_pin_the_output() {
    const GOLDEN: [(&str, &[&str], &str); 4] = [
        (
            "rw.img",
            &[],
            "888230954b1470b4ddb56a184e41267e501cd56458d7c31cce6ea2a934cafd3c",
        ),
        (
            "ro.img",
            &["--read-only"],
            "7e2ffe1f6a83bad3017cecf409636219bb3ab08dd511e4fd6c3943d8b07dd48d",
        ),
        (
            "ext3-rw.img",
            &["--fs", "ext3"],
            "c1554e157ed95a468c336a0341d1c2eab558582f2c91c6ffdf717164642f6387",
        ),
        (
            "ext3-ro.img",
            &["--fs", "ext3", "--read-only"],
            "d204fdbce9d766169e677f8ed60dbd1827e7b862398ed59cb59bdb442a8b6ab8",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(dir.path(), "v1", Compression::None);
    let r = format!("oci:{}:v1", dir.path().display());
    let mut got = Vec::new();
    for (name, extra, _) in GOLDEN {
        // A fresh cache each time: ext4 takes the one pass
        // (tests/one_pass.rs shows it equals the warm write).
        let o = Ocidisk::new();
        let img = dir.path().join(name);
        materialize(&o, &r, &img, extra);
        got.push(file_sha256(&img));
    }
    let want: Vec<String> = GOLDEN.iter().map(|g| g.2.to_string()).collect();
    assert_eq!(got, want, "the output changed");
}

#[test]
fn the_write_phase_reports_progress() {
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(dir.path(), "v1", Compression::Gzip);
    let r = format!("oci:{}:v1", dir.path().display());
    let o = Ocidisk::new();
    let quarters = |out: &str| {
        let out = dir.path().join(out);
        let run = o.run(&["materialize", &r, out.to_str().unwrap()]);
        assert!(run.status.success());
        let err = String::from_utf8_lossy(&run.stderr).to_string();
        let pcts: Vec<String> = err
            .lines()
            .filter_map(|l| l.strip_prefix("writing the image: "))
            .map(|l| l.split('%').next().unwrap().to_string())
            .collect();
        (pcts, err)
    };
    // Cold, the file data went in while the layers streamed: the write
    // phase is the metadata (and says so).
    let (pcts, err) = quarters("cold.img");
    assert_eq!(pcts.first().map(String::as_str), Some("0"), "{err}");
    assert_eq!(pcts.last().map(String::as_str), Some("100"), "{err}");
    assert!(err.contains("of it as the layers streamed"), "{err}");
    // Warm, the write phase streams the cached layers: every quarter shows.
    let (pcts, err) = quarters("warm.img");
    assert_eq!(pcts, ["0", "25", "50", "75", "100"], "{err}");
    assert!(!err.contains("as the layers streamed"), "{err}");
}
