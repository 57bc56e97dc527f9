//! The XFS writer (`--fs xfs`), checked by the real tools:
//! `xfs_repair -n` finds nothing, the kernel mounts it read-write,
//! `xfs_db` reads the geometry mkfs.xfs would choose, and a tree of every
//! inode type mounts equal to GNU tar's extraction.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::fscheck::assert_xfs_repair_clean;
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
        assert_xfs_repair_clean(&path);
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
        assert_xfs_repair_clean(&path);
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

/// The merged tree of `tar` as the only layer.
fn tree_of(tar: &[u8]) -> ocidisk::tree::Tree {
    let digest = ocidisk::digest::Digest::sha256_of(tar);
    let mut ix = ocidisk::layer_index::LayerIndexer::new(
        ocidisk::source::manifest::Compression::None,
        digest.algorithm(),
    )
    .unwrap();
    ix.push(tar).unwrap();
    let layer = ix.finish(&digest, &digest).unwrap();
    ocidisk::tree::Tree::flatten(&[layer]).unwrap()
}

/// Plan `tar` (one layer) as XFS through the library and write the image
/// with its file data, as materialize would.
fn materialize_xfs(tar: &[u8], path: &Path, uuid: [u8; 16]) {
    use std::os::unix::fs::FileExt;
    let tree = tree_of(tar);
    let opts = ocidisk::fs::FsOptions {
        uuid: Some(uuid),
        ..Default::default()
    };
    let img = ocidisk::fs::xfs::build(&tree, &opts).unwrap();
    img.validate().unwrap();
    write(&img, path);
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    for e in &img.data {
        let at = e.tar_offset as usize;
        f.write_all_at(&tar[at..at + e.len as usize], e.device_offset)
            .unwrap();
    }
}

/// A layer with what the writer handles so far: every inode type,
/// shortform, block, leaf and node-form directories, files of edge sizes, short and remote
/// symlinks, hard links, owners, modes and nanosecond times.
fn sample_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let head = |kind: tar::EntryType, size: u64, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(100);
        h.set_mtime(1_700_000_000);
        h
    };
    for d in ["etc", "usr", "usr/bin", "big", "bigger", "huge"] {
        let mut h = head(tar::EntryType::Directory, 0, 0o755);
        b.append_data(&mut h, d, &[][..]).unwrap();
    }
    for (name, len) in [
        ("etc/empty", 0usize),
        ("etc/one", 1),
        ("etc/b4095", 4095),
        ("usr/bin/b4096", 4096),
        ("usr/bin/b4097", 4097),
        ("usr/bin/mib", (1 << 20) + 3),
    ] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut h = head(tar::EntryType::Regular, len as u64, 0o4755);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    // 60 entries: one block (block form); 400: leaf form; 3000: node form.
    for (dir, n) in [("big", 60), ("bigger", 400), ("huge", 3000)] {
        for i in 0..n {
            let name = format!("{dir}/entry-with-a-longer-name-{i:04}");
            let mut h = head(tar::EntryType::Regular, 3, 0o644);
            b.append_data(&mut h, &name, &b"abc"[..]).unwrap();
        }
    }
    for (name, target) in [
        ("etc/short-link", "one".to_string()),
        ("etc/remote-link", format!("/{}", "r".repeat(499))),
        ("etc/longest-link", format!("/{}", "t".repeat(1022))),
    ] {
        let mut h = head(tar::EntryType::Symlink, 0, 0o777);
        b.append_link(&mut h, name, &target).unwrap();
    }
    let mut h = head(tar::EntryType::Link, 0, 0o644);
    b.append_link(&mut h, "etc/hard", "etc/one").unwrap();
    let mut h = head(tar::EntryType::Char, 0, 0o666);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    b.append_data(&mut h, "etc/null", &[][..]).unwrap();
    let mut h = head(tar::EntryType::Block, 0, 0o660);
    h.set_device_major(259).unwrap();
    h.set_device_minor(70_000).unwrap();
    b.append_data(&mut h, "etc/nvme", &[][..]).unwrap();
    let mut h = head(tar::EntryType::Fifo, 0, 0o600);
    b.append_data(&mut h, "etc/fifo", &[][..]).unwrap();
    // Extended attributes in every namespace, and POSIX ACLs.
    let acl = |entries: &[(u16, u16, u32)]| {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    };
    let access = acl(&[
        (0x01, 7, u32::MAX),
        (0x02, 6, 1000),
        (0x04, 5, u32::MAX),
        (0x10, 7, u32::MAX),
        (0x20, 4, u32::MAX),
    ]);
    let default = acl(&[
        (0x01, 7, u32::MAX),
        (0x04, 5, u32::MAX),
        (0x20, 0, u32::MAX),
    ]);
    let cap = [
        1u8, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    b.append_pax_extensions([
        ("SCHILY.xattr.user.comment", &b"an xfs attribute"[..]),
        ("SCHILY.xattr.trusted.overlay", &b"y"[..]),
        ("SCHILY.xattr.security.capability", &cap[..]),
    ])
    .unwrap();
    let mut h = head(tar::EntryType::Regular, 4, 0o755);
    b.append_data(&mut h, "usr/bin/ping", &b"ping"[..]).unwrap();
    b.append_pax_extensions([
        ("SCHILY.xattr.system.posix_acl_access", &access[..]),
        ("SCHILY.xattr.system.posix_acl_default", &default[..]),
    ])
    .unwrap();
    let mut h = head(tar::EntryType::Directory, 0, 0o775);
    b.append_data(&mut h, "acl-dir", &[][..]).unwrap();
    // Attributes past the inode: a leaf with local values, and values
    // stored remotely (one block, several blocks).
    let v300: Vec<u8> = (0..300).map(|i| (i % 251) as u8).collect();
    let v3000: Vec<u8> = (0..3000).map(|i| (i % 241) as u8).collect();
    let v10000: Vec<u8> = (0..10_000).map(|i| (i % 239) as u8).collect();
    b.append_pax_extensions([
        ("SCHILY.xattr.user.local-300", &v300[..]),
        ("SCHILY.xattr.user.remote-3000", &v3000[..]),
        ("SCHILY.xattr.user.small", &b"s"[..]),
    ])
    .unwrap();
    let mut h = head(tar::EntryType::Regular, 5, 0o644);
    b.append_data(&mut h, "etc/big-attrs", &b"attrs"[..])
        .unwrap();
    // More than ext4 (where GNU tar extracts) holds: checked directly.
    b.append_pax_extensions([("SCHILY.xattr.trusted.remote-10000", &v10000[..])])
        .unwrap();
    let mut h = head(tar::EntryType::Regular, 5, 0o644);
    b.append_data(&mut h, "etc/huge-attr", &b"attrs"[..])
        .unwrap();
    let names: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            (
                format!("SCHILY.xattr.user.attribute-{i:02}"),
                vec![b'v'; 20],
            )
        })
        .collect();
    b.append_pax_extensions(names.iter().map(|(k, v)| (k.as_str(), &v[..])))
        .unwrap();
    let mut h = head(tar::EntryType::Regular, 4, 0o644);
    b.append_data(&mut h, "etc/many-attrs", &b"many"[..])
        .unwrap();
    b.into_inner().unwrap()
}

#[test]
fn a_tree_of_every_inode_type_mounts_equal_to_gnu_tar() {
    let d = tempfile::tempdir().unwrap();
    let tar = sample_tar();
    let path = d.path().join("tree.xfs");
    materialize_xfs(&tar, &path, *b"ocidisk-xfs-tree");
    assert_xfs_repair_clean(&path);
    // GNU tar's extraction against the kernel's view.
    let tar_file = d.path().join("layer.tar");
    std::fs::write(&tar_file, &tar).unwrap();
    let root = d.path().join("rootfs");
    std::fs::create_dir(&root).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&tar_file)
            .arg("-C")
            .arg(&root)
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*"]),
        Duration::from_secs(60),
    );
    let mut want = common::imagegen::scan_tree(&root);
    let m = common::fscheck::LoopMount::typed(&path, "xfs");
    let mnt = m.path().to_path_buf();
    let mut got = common::imagegen::scan_tree(&mnt);
    let huge = common::imagegen::read_xattrs(&mnt.join("etc/huge-attr"));
    let want_hex: String = (0..10_000).map(|i| format!("{:02x}", i % 239)).collect();
    assert_eq!(huge.get("trusted.remote-10000"), Some(&want_hex));
    // GNU tar leaves these directories with the time of the extraction
    // (their children came later in the archive); check them directly.
    let dirs = [
        "/etc", "/usr", "/usr/bin", "/big", "/bigger", "/huge", "/acl-dir",
    ];
    for d in dirs {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(mnt.join(&d[1..])).unwrap();
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_700_000_000, 0), "{d}");
    }
    drop(m);
    want.entries.remove("/");
    got.entries.remove("/");
    // XFS lists its ACL attributes in the trusted namespace too (to root),
    // beside the system.posix_acl_* names every filesystem shows.
    let opts = common::imagegen::CompareOptions {
        ignore_mtime: dirs.iter().map(|d| d.to_string()).collect(),
        ignore_xattrs: vec![
            "trusted.SGI_ACL_FILE".into(),
            "trusted.SGI_ACL_DEFAULT".into(),
        ],
        skip_paths: vec!["/etc/huge-attr".into()],
        ..Default::default()
    };
    let diffs = common::imagegen::compare_trees(&want, &got, &opts);
    assert!(diffs.is_empty(), "differences:\n{}", diffs.join("\n"));
}

#[test]
fn limits_of_xfs_are_errors_naming_them() {
    use ocidisk::fs::xfs::XfsError;
    let plan =
        |tar: Vec<u8>| ocidisk::fs::xfs::build(&tree_of(&tar), &Default::default()).unwrap_err();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "long", "x".repeat(1024)).unwrap();
    let e = plan(b.into_inner().unwrap());
    assert!(
        matches!(e, XfsError::SymlinkTooLong { len: 1024, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("at most 1023"), "{e}");

    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Block);
    h.set_size(0);
    h.set_device_major(7).unwrap();
    h.set_device_minor(300_000).unwrap();
    b.append_data(&mut h, "dev", &[][..]).unwrap();
    let e = plan(b.into_inner().unwrap());
    assert!(
        matches!(e, XfsError::DeviceNumber { minor: 300_000, .. }),
        "{e}"
    );
}

#[test]
fn the_debian_image_as_xfs_equals_gnu_tar() {
    let layout = common::debian::layout();
    let o = common::cli::Ocidisk::new();
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("debian.xfs");
    let image = format!("oci:{}:bookworm", layout.display());
    o.ok(&["materialize", "--fs", "xfs", &image, img.to_str().unwrap()]);
    assert_xfs_repair_clean(&img);
    common::debian::assert_equals_tar_extraction(&layout, &img, Some("xfs"));
    // Deterministic: the same bytes again.
    let again = d.path().join("again.xfs");
    o.ok(&[
        "materialize",
        "--fs",
        "xfs",
        &image,
        again.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&img).unwrap() == std::fs::read(&again).unwrap());
}

#[test]
fn the_standard_image_as_xfs_equals_its_oracle() {
    use common::imagegen::{self, Compression};
    let d = tempfile::tempdir().unwrap();
    let o = common::cli::Ocidisk::new();
    let oracle = imagegen::oracle(&imagegen::standard_layers());
    for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let layout = d.path().join(compression.name());
        imagegen::write_standard(&layout, "v1", compression);
        let image = format!("oci:{}:v1", layout.display());
        for ro in [true, false] {
            let img = d.path().join(format!("{}-{ro}.xfs", compression.name()));
            let mut args = vec!["materialize", "--fs", "xfs", &image, img.to_str().unwrap()];
            if ro {
                args.push("--read-only");
            }
            o.ok(&args);
            assert_xfs_repair_clean(&img);
            common::fscheck::compare_mounted_as(&oracle, &img, "xfs");
            let version = xfs_db(&img, &["version"]);
            for feature in ["V5", "CRC", "FTYPE", "BIGTIME"] {
                assert!(version.contains(feature), "{version}");
            }
            // The 2,000-entry directory is in node form: a free index
            // block at the 64 GiB offset beside the leaves at 32 GiB.
            let big_dir = {
                let m = common::fscheck::LoopMount::typed(&img, "xfs");
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(m.path().join("big-dir")).unwrap().ino()
            };
            let bmap = xfs_db(&img, &[&format!("inode {big_dir}"), "bmap"]);
            assert!(
                bmap.contains("data offset 8388608") && bmap.contains("data offset 16777216"),
                "{bmap}"
            );
            std::fs::remove_file(&img).unwrap();
        }
    }
}

#[test]
fn a_file_of_1500_extents_gets_a_block_map_tree() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    // PAX sparse 1.0: 1,500 one-byte segments in separate blocks, and a
    // 5 GiB file with data at 1 GiB and at its end.
    const SEGS: u64 = 1500;
    let mut b = tar::Builder::new(Vec::new());
    let mut map = format!("{SEGS}\n");
    for i in 0..SEGS {
        map.push_str(&format!("{}\n1\n", i * 8192 + 7));
    }
    let mut data = map.into_bytes();
    data.resize(data.len().div_ceil(512) * 512, 0);
    data.extend((0..SEGS).map(|i| (i % 250) as u8 + 1));
    let big: u64 = 5 << 30;
    let mut huge = format!("2\n{}\n4096\n{}\n4\n", 1u64 << 30, big - 4).into_bytes();
    huge.resize(512, 0);
    huge.extend_from_slice(&[0xab; 4096]);
    huge.extend_from_slice(b"tail");
    for (name, size, body) in [
        ("many-extents", SEGS * 8192, &data),
        ("huge.img", big, &huge),
    ] {
        b.append_pax_extensions([
            ("GNU.sparse.major", &b"1"[..]),
            ("GNU.sparse.minor", &b"0"[..]),
            ("GNU.sparse.name", name.as_bytes()),
            ("GNU.sparse.realsize", size.to_string().as_bytes()),
        ])
        .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("GNUSparseFile.0/{name}"), &body[..])
            .unwrap();
    }
    let tar = b.into_inner().unwrap();
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("sparse.xfs");
    materialize_xfs(&tar, &path, *b"ocidisk-xfs-bmbt");
    assert!(std::fs::metadata(&path).unwrap().blocks() < (64 << 20) / 512 + 40_000);
    assert_xfs_repair_clean(&path);
    let m = common::fscheck::LoopMount::typed(&path, "xfs");
    let mnt = m.path().to_path_buf();
    let f = std::fs::File::open(mnt.join("many-extents")).unwrap();
    let md = f.metadata().unwrap();
    assert_eq!(md.len(), SEGS * 8192);
    for i in 0..SEGS {
        let mut byte = [0u8; 2];
        f.read_exact_at(&mut byte, i * 8192 + 6).unwrap();
        assert_eq!(byte, [0, (i % 250) as u8 + 1], "segment {i}");
    }
    let ino = md.ino();
    let h = std::fs::File::open(mnt.join("huge.img")).unwrap();
    assert_eq!(h.metadata().unwrap().len(), big);
    let mut tail = [0u8; 4];
    h.read_exact_at(&mut tail, big - 4).unwrap();
    assert_eq!(&tail, b"tail");
    let mut head = [0u8; 4096];
    h.read_exact_at(&mut head, 1 << 30).unwrap();
    assert!(head.iter().all(|b| *b == 0xab));
    drop((f, h));
    drop(m);
    let out = run_ok(
        Command::new("xfs_db")
            .args([
                "-r",
                "-c",
                &format!("inode {ino}"),
                "-c",
                "print core.format core.nextents",
            ])
            .arg(&path),
        Duration::from_secs(60),
    );
    assert!(
        out.stdout.contains("core.format = 3 (btree)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("core.nextents = 1500"),
        "{}",
        out.stdout
    );
}

/// `xfs_db -r -c CMD… IMG`'s output.
fn xfs_db(img: &Path, commands: &[&str]) -> String {
    let mut cmd = Command::new("xfs_db");
    cmd.arg("-r");
    for c in commands {
        cmd.args(["-c", c]);
    }
    run_ok(cmd.arg(img), Duration::from_secs(60)).stdout
}

#[test]
fn bad_input_is_a_clear_error_and_leaves_no_file() {
    let d = tempfile::tempdir().unwrap();
    let o = common::cli::Ocidisk::new();
    let out = d.path().join("out.xfs");
    let layout = d.path().join("layout");
    common::imagegen::write_standard(&layout, "v1", common::imagegen::Compression::Gzip);
    let image = format!("oci:{}:v1", layout.display());
    let args = ["materialize", "--fs", "xfs", &image, out.to_str().unwrap()];
    let err = o.fail(&[&args[..], &["--size", "100M"]].concat());
    assert!(
        err.contains("too small for an xfs filesystem") && err.contains("300 MiB"),
        "{err}"
    );
    let err = o.fail(&[&args[..], &["--size", "5T"]].concat());
    assert!(err.contains("beyond the largest xfs filesystem"), "{err}");
    // What the message advises works: grow a smaller image with xfs_growfs.
    o.ok(&[&args[..], &["--size", "1G"]].concat());
    run_ok(
        Command::new("truncate").args(["-s", "6G"]).arg(&out),
        Duration::from_secs(10),
    );
    {
        let m = common::fscheck::LoopMount::writable(&out);
        run_ok(
            Command::new("xfs_growfs").arg(m.path()),
            Duration::from_secs(60),
        );
    }
    assert_xfs_repair_clean(&out);
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_file(d.path().join("out.xfs.ocidisk.json")).unwrap();
    // A name no Linux filesystem holds.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1);
    b.append_data(&mut h, "n".repeat(256), &b"x"[..]).unwrap();
    let bad = d.path().join("bad");
    common::rawtar::write_layout(&bad, "t", &[b.into_inner().unwrap()]);
    let err = o.fail(&[
        "materialize",
        "--fs",
        "xfs",
        &format!("oci:{}:t", bad.display()),
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("the limit is 255"), "{err}");
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "layout" && n != "bad")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn twenty_thousand_files_get_a_two_level_inode_tree() {
    let mut b = tar::Builder::new(Vec::new());
    for d in 0..100 {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        b.append_data(&mut h, format!("d{d:03}"), &[][..]).unwrap();
        for f in 0..200 {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(2);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            b.append_data(&mut h, format!("d{d:03}/f{f:03}"), &b"ok"[..])
                .unwrap();
        }
    }
    let tar = b.into_inner().unwrap();
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("many.xfs");
    materialize_xfs(&tar, &path, *b"ocidisk-xfs-many");
    assert_xfs_repair_clean(&path);
    let agi = xfs_db(&path, &["agi 0", "print level count"]);
    assert!(agi.contains("level = 2"), "{agi}");
    let m = common::fscheck::LoopMount::typed(&path, "xfs");
    let mnt = m.path().to_path_buf();
    let mut files = 0;
    for dir in std::fs::read_dir(&mnt).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            assert_eq!(std::fs::read(f.unwrap().path()).unwrap(), b"ok");
            files += 1;
        }
    }
    drop(m);
    assert_eq!(files, 20_000);
}
