//! Layers that carry their own table of contents (#18): eStargz, written
//! by a small writer in the test code, and zstd:chunked, written by
//! Debian's skopeo. From an empty cache a lazy disk is ready after a few
//! percent of the image, serves what the full pass writes, and never a
//! wrong byte when the table lies.

mod common;

use std::path::Path;

use common::cli::Ocidisk;
use common::fscheck::{compare_mounted, with_lost_found};
use common::imagegen::{self, Content, EntrySpec as E};
use common::lazy::disk_options;
use common::proxy::FaultProxy;
use common::registry::Registry;
use common::serve::Served;
use common::tocgen::{self, Format};
use ocidisk::cache::BlobCache;
use ocidisk::disk::Disk;

/// The standard layers plus a few MB of files, so that the table of
/// contents is the small part of the image it is in real ones.
fn layers() -> Vec<imagegen::LayerSpec> {
    imagegen::standard_layers_with(vec![
        E::file(
            "/opt/big",
            Content::Pattern {
                len: 3 << 20,
                seed: 9,
            },
            0o644,
        ),
        E::file(
            "/opt/mid",
            Content::Pattern {
                len: 700_000,
                seed: 10,
            },
            0o600,
        ),
    ])
}

/// Bytes the proxy passed until `serve --read-only FLAGS` was ready.
fn ready_bytes(proxy: &FaultProxy, via: &str, flags: &[&str]) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let before = proxy.bytes_down();
    let mut args = vec!["--read-only"];
    args.extend_from_slice(flags);
    let mut s = Served::start(&Ocidisk::new(), via, &dir.path().join("s.sock"), &args);
    let n = proxy.bytes_down() - before;
    s.stop();
    n
}

/// Every byte of a lazy disk of `via` from an empty cache, into `out`.
fn dump(via: &str, out: &Path) -> Disk {
    let o = Ocidisk::new();
    let cache = BlobCache::open(o.cache_dir()).unwrap();
    let disk = Disk::open(&disk_options(via, true), &cache).unwrap();
    common::lazy::dump(&disk, out);
    disk
}

#[test]
fn an_estargz_image_starts_from_its_toc_and_serves_what_materialize_writes() {
    let dir = tempfile::tempdir().unwrap();
    let p = pushed(dir.path(), Format::Estargz, &|_| {}, "stargz");
    // Each layer's tar holds its stargz.index.json too (a full pass, like
    // a tar extraction, keeps the top one).
    let mut expected = layers();
    for (l, s) in expected.iter_mut().zip(&p.built) {
        l.entries
            .push(E::file("/stargz.index.json", Content::Bytes(s.toc.clone()), 0o644).mtime(0));
    }
    assert_starts_from_table(&p.reg, "stargz", p.size, &p.want, &expected, "eStargz");
}

#[test]
fn a_zstd_chunked_image_from_skopeo_starts_from_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    imagegen::write_image(
        &layout,
        "v1",
        &layers(),
        imagegen::Compression::None,
        &imagegen::Platform::linux_amd64(),
    );
    let reg = Registry::start();
    reg.push_with(
        &format!("oci:{}:v1", layout.display()),
        "chunked:v1",
        &["--dest-compress-format", "zstd:chunked"],
    );
    let r = format!("{}/chunked:v1", reg.host());
    let manifest = reg.curl(&[
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &format!("{}/v2/chunked/manifests/v1", reg.url()),
    ]);
    assert!(
        manifest
            .stdout
            .contains("io.containers.zstd-chunked.manifest-checksum"),
        "skopeo wrote no zstd:chunked manifest: {}",
        manifest.stdout
    );
    let m: serde_json::Value = serde_json::from_str(&manifest.stdout).unwrap();
    let size: u64 = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();

    let want = dir.path().join("want.img");
    Ocidisk::new().ok(&["materialize", "--read-only", &r, want.to_str().unwrap()]);
    let want = std::fs::read(&want).unwrap();
    assert_starts_from_table(
        &reg,
        "chunked",
        size,
        &want,
        &layers(),
        "zstd:chunked (skopeo)",
    );
}

/// `layers()` in a table-of-contents format, pushed to a fresh registry.
struct Pushed {
    reg: Registry,
    /// The layers' size.
    size: u64,
    /// materialize's image of it.
    want: Vec<u8>,
    built: Vec<tocgen::Stargz>,
}

/// `layers()` in `format` with tables edited by `lie`, pushed as `repo:v1`.
fn pushed(dir: &Path, format: Format, lie: tocgen::Lie<'_>, repo: &str) -> Pushed {
    let layout = dir.join(repo);
    let (manifest, built) = tocgen::write_image(&layout, "v1", &layers(), 256 << 10, format, lie);
    let size = built.iter().map(|s| s.blob.len() as u64).sum();
    let reg = Registry::start();
    reg.push_layout_raw(&layout, &manifest, repo, "v1");
    let r = format!("{}/{repo}:v1", reg.host());
    let want = dir.join(format!("{repo}.img"));
    Ocidisk::new().ok(&["materialize", "--read-only", &r, want.to_str().unwrap()]);
    Pushed {
        reg,
        size,
        want: std::fs::read(&want).unwrap(),
        built,
    }
}

/// From an empty cache, through a counting proxy, `repo:v1` is ready after
/// under 5% of its `size` bytes, its lazy disk holds `want` (materialize's
/// image), and that filesystem mounts as the oracle of `expected`.
/// `ocidisk mount` shows the same bytes.
fn assert_starts_from_table(
    reg: &Registry,
    repo: &str,
    size: u64,
    want: &[u8],
    expected: &[imagegen::LayerSpec],
    what: &str,
) {
    let proxy = FaultProxy::start(&reg.host());
    let via = format!("{}/{repo}:v1", proxy.host());
    let n = ready_bytes(&proxy, &via, &[]);
    eprintln!("{what}: ready after {n} of {size} bytes");
    assert!(
        (n as f64) < 0.05 * size as f64,
        "{what}: ready after {n} of {size} bytes"
    );
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("got.img");
    dump(&via, &got);
    assert!(
        std::fs::read(&got).unwrap() == want,
        "{what}: the disk differs from materialize's image"
    );
    compare_mounted(&with_lost_found(imagegen::oracle(expected)), &got);
    // ocidisk mount, from another empty cache, shows the same bytes.
    let o = Ocidisk::new();
    let at = dir.path().join("mounted.img");
    std::fs::write(&at, b"").unwrap();
    let m = common::mount::MountProc::start(&o, &via, &at, &["--read-only"]);
    assert!(
        std::fs::read(&m.image).unwrap() == want,
        "{what}: mount differs from materialize"
    );
    assert_eq!(m.stop(), Some(0));
}

#[test]
fn a_current_zstd_chunked_image_starts_from_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let p = pushed(dir.path(), Format::ZstdChunked, &|_| {}, "zc");
    assert_starts_from_table(&p.reg, "zc", p.size, &p.want, &layers(), "zstd:chunked");
}

/// Read a lazy disk of `via` whole in 64 KiB pieces: each piece that
/// reads equals `want`'s bytes; returns how many failed.
fn failed_reads(via: &str, want: &[u8]) -> usize {
    let o = Ocidisk::new();
    let cache = BlobCache::open(o.cache_dir()).unwrap();
    let disk = Disk::open(&disk_options(via, true), &cache).unwrap();
    common::lazy::failed_reads(&disk, want, 64 << 10)
}

#[test]
fn tables_that_lie_fail_reads_or_fall_back_never_a_wrong_byte() {
    for format in [Format::Estargz, Format::ZstdChunked] {
        let dir = tempfile::tempdir().unwrap();
        let entries = |t: &mut serde_json::Value| t["entries"].as_array_mut().unwrap().clone();
        let find = |t: &serde_json::Value, name: &str| {
            t["entries"]
                .as_array()
                .unwrap()
                .iter()
                .position(|e| e["name"].as_str().is_some_and(|n| n.ends_with(name)))
        };
        // Another file's offset: its chunks decode to bytes whose sha256
        // is not the one the table holds.
        // (Each layer's table is edited; only one holds these files.)
        let swapped = |t: &mut serde_json::Value| {
            let (Some(a), Some(b)) = (find(t, "opt/big"), find(t, "opt/mid")) else {
                return;
            };
            let list = entries(t);
            let (oa, ob) = (list[a]["offset"].clone(), list[b]["offset"].clone());
            t["entries"][a]["offset"] = ob;
            t["entries"][b]["offset"] = oa;
        };
        let p = pushed(dir.path(), format, &swapped, "swapped");
        let failed = failed_reads(&format!("{}/swapped:v1", p.reg.host()), &p.want);
        assert!(
            failed > 0,
            "{format:?}: reads of the moved files did not fail"
        );

        // A chunk digest that is not the chunk's.
        let wrong = |t: &mut serde_json::Value| {
            let Some(i) = find(t, "bin/busybox") else {
                return;
            };
            let key = if t["entries"][i]["chunkDigest"].is_string() {
                "chunkDigest"
            } else {
                "digest"
            };
            t["entries"][i][key] = serde_json::json!(format!("sha256:{}", "0".repeat(64)));
        };
        let p = pushed(dir.path(), format, &wrong, "wrong");
        let failed = failed_reads(&format!("{}/wrong:v1", p.reg.host()), &p.want);
        assert!(failed > 0, "{format:?}: the bad chunk read");
    }

    // A table the manifest does not vouch for (its digest in the
    // annotation is another's): refused, the layers stream, all is right.
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("l");
    let (manifest, built) = tocgen::write_image(
        &layout,
        "v1",
        &layers(),
        256 << 10,
        Format::Estargz,
        &|_| {},
    );
    let m = imagegen::blob_path(&layout, &manifest);
    let mut lied = std::fs::read_to_string(&m).unwrap();
    for b in &built {
        let digest = b.annotations["containerd.io/snapshot/stargz/toc.digest"]
            .as_str()
            .unwrap();
        lied = lied.replace(digest, &format!("sha256:{}", "1".repeat(64)));
    }
    let lied_digest = imagegen::write_blob(&layout, lied.as_bytes());
    let reg = Registry::start();
    reg.push_layout_raw(&layout, &lied_digest, "unvouched", "v1");
    let size: u64 = built.iter().map(|s| s.blob.len() as u64).sum();
    let proxy = FaultProxy::start(&reg.host());
    let via = format!("{}/unvouched:v1", proxy.host());
    let n = ready_bytes(&proxy, &via, &[]);
    assert!(
        n >= size,
        "an unvouched table was used: ready after {n} of {size}"
    );
    let want = dir.path().join("want.img");
    Ocidisk::new().ok(&["materialize", "--read-only", &via, want.to_str().unwrap()]);
    assert_eq!(failed_reads(&via, &std::fs::read(&want).unwrap()), 0);
}
