//! A cold `materialize` of an ext4 image writes file data while the layers
//! stream (one pass over each layer): its output must be byte-identical to
//! the output written from a warm cache (the second pass), with every
//! file byte written in the pass, e2fsck-clean and mounting as the oracle.
//! When the guess of where data goes is wrong, the check after planning
//! rewrites what it must: still the same bytes.

mod common;

use std::path::Path;

use common::cli::Ocidisk;
use common::fscheck::{assert_e2fsck_clean, compare_mounted_as, with_lost_found};
use common::imagegen::{self, Compression, Content, EntrySpec as E, LayerSpec, Platform};
use sha2::Digest as _;

/// Materialize with `--json`: (data bytes, streamed bytes).
fn materialize(o: &Ocidisk, image: &str, out: &Path, extra: &[&str]) -> (u64, u64) {
    let mut args = vec!["materialize", "--json", image, out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let run = o.run(&args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    (
        r["data_bytes"].as_u64().unwrap(),
        r["streamed_bytes"].as_u64().unwrap(),
    )
}

fn file_sha256(p: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

#[test]
fn cold_one_pass_equals_the_warm_write() {
    let expected = with_lost_found(imagegen::oracle(&imagegen::standard_layers()));
    for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let dir = tempfile::tempdir().unwrap();
        imagegen::write_standard(dir.path(), "v1", c);
        let r = format!("oci:{}:v1", dir.path().display());
        for (mode, extra) in [("rw", &[][..]), ("ro", &["--read-only"][..])] {
            // A fresh cache: every layer streams, bottom first.
            let o = Ocidisk::new();
            let cold = dir.path().join(format!("cold-{mode}.img"));
            let (data, streamed) = materialize(&o, &r, &cold, extra);
            assert!(data > 1 << 20, "{c:?} {mode}: {data} bytes of file data");
            assert_eq!(
                streamed, data,
                "{c:?} {mode}: every file byte of all three layers goes in while they stream"
            );
            // The pass's indexes were saved (beside the planning): the warm
            // run below finds them instead of indexing the blobs again.
            let saved = std::fs::read_dir(o.cache_dir().join("index"))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".idx")
                })
                .count();
            assert_eq!(saved, 3, "{c:?} {mode}: an index per layer");
            // The same cache, now warm: the write pass streams the layers.
            let warm = dir.path().join(format!("warm-{mode}.img"));
            let (data2, streamed2) = materialize(&o, &r, &warm, extra);
            assert_eq!((data2, streamed2), (data, 0), "{c:?} {mode}");
            assert_eq!(file_sha256(&cold), file_sha256(&warm), "{c:?} {mode}");
            assert_e2fsck_clean(&cold);
            compare_mounted_as(&expected, &cold, "ext4");
        }
    }
}

#[test]
fn filesystems_without_a_guess_take_the_second_pass() {
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(dir.path(), "v1", Compression::Gzip);
    let r = format!("oci:{}:v1", dir.path().display());
    for fs in ["ext3", "xfs"] {
        let o = Ocidisk::new();
        let out = dir.path().join(format!("{fs}.img"));
        let (data, streamed) = materialize(&o, &r, &out, &["--fs", fs]);
        assert!(data > 0);
        assert_eq!(streamed, 0, "{fs}: its zone's skips depend on the size");
    }
    // qcow2 assembles clusters in order: no one pass either.
    let o = Ocidisk::new();
    let out = dir.path().join("q.qcow2");
    let (_, streamed) = materialize(&o, &r, &out, &[]);
    assert_eq!(streamed, 0);
}

/// A regular file named like a whiteout, with data: the tree drops it, so
/// every slot after it in its layer, and every later layer's region, is
/// not where the pass guessed.
fn misleading_layers() -> Vec<LayerSpec> {
    vec![
        LayerSpec::new(
            "base",
            vec![
                E::dir("/a", 0o755),
                E::file("/a/one", Content::Pattern { len: 9000, seed: 1 }, 0o644),
                E::file(
                    "/a/.wh.nothing",
                    // More than the 512 KiB a region is rounded to.
                    Content::Pattern {
                        len: 600_000,
                        seed: 2,
                    },
                    0o644,
                ),
                E::file(
                    "/a/two",
                    Content::Pattern {
                        len: 50_000,
                        seed: 3,
                    },
                    0o644,
                ),
                E::file("/a/three", Content::text("three\n"), 0o600),
            ],
        ),
        LayerSpec::new(
            "top",
            vec![
                E::file(
                    "/a/one",
                    Content::Pattern {
                        len: 12_345,
                        seed: 4,
                    },
                    0o644,
                ),
                E::file("/b", Content::Pattern { len: 4097, seed: 5 }, 0o644),
            ],
        ),
    ]
}

#[test]
fn a_wrong_guess_costs_a_second_pass_not_a_byte() {
    let layers = misleading_layers();
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_image(
        dir.path(),
        "v1",
        &layers,
        Compression::Gzip,
        &Platform::linux_amd64(),
    );
    let r = format!("oci:{}:v1", dir.path().display());
    let o = Ocidisk::new();
    let cold = dir.path().join("cold.img");
    let (data, streamed) = materialize(&o, &r, &cold, &[]);
    // Only /a/one's first version precedes the misleading entry, and a
    // later layer replaces it: nothing the plan keeps was guessed right.
    assert_eq!(streamed, 0, "{data} bytes of file data");
    assert_eq!(data, 50_000 + 6 + 12_345 + 4097);
    let warm = dir.path().join("warm.img");
    materialize(&o, &r, &warm, &[]);
    assert_eq!(file_sha256(&cold), file_sha256(&warm));
    assert_e2fsck_clean(&cold);
    // A whiteout name is a whiteout whatever its type (the oracle only
    // knows whiteouts made as such).
    let mut expected = with_lost_found(imagegen::oracle(&layers));
    assert!(expected.entries.remove("/a/.wh.nothing").is_some());
    compare_mounted_as(&expected, &cold, "ext4");
}
