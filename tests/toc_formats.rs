//! Layers that carry their own table of contents (#18): eStargz, written
//! by a small writer in the test code, and zstd:chunked, written by
//! Debian's skopeo. From an empty cache a lazy disk is ready after a few
//! percent of the image, serves what the full pass writes, and never a
//! wrong byte when the table lies.

mod common;

use std::path::Path;

use common::cli::Ocidisk;
use common::estargz;
use common::fscheck::{compare_mounted, with_lost_found};
use common::imagegen::{self, Content, EntrySpec as E};
use common::lazy::disk_options;
use common::proxy::FaultProxy;
use common::registry::Registry;
use common::serve::Served;
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
    use std::io::Write as _;
    let o = Ocidisk::new();
    let cache = BlobCache::open(o.cache_dir()).unwrap();
    let disk = Disk::open(&disk_options(via, true), &cache).unwrap();
    let mut f = std::fs::File::create(out).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < disk.size() {
        let n = ((disk.size() - at) as usize).min(buf.len());
        disk.read_at(at, &mut buf[..n]).unwrap();
        f.write_all(&buf[..n]).unwrap();
        at += n as u64;
    }
    disk
}

#[test]
fn an_estargz_image_starts_from_its_toc_and_serves_what_materialize_writes() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let (manifest, built) = estargz::write_image(&layout, "v1", &layers(), 256 << 10);
    let size: u64 = built.iter().map(|s| s.blob.len() as u64).sum();
    let reg = Registry::start();
    reg.push_layout_raw(&layout, &manifest, "stargz", "v1");
    let r = format!("{}/stargz:v1", reg.host());
    let want = dir.path().join("want.img");
    Ocidisk::new().ok(&["materialize", "--read-only", &r, want.to_str().unwrap()]);

    let proxy = FaultProxy::start(&reg.host());
    let via = format!("{}/stargz:v1", proxy.host());
    let n = ready_bytes(&proxy, &via, &[]);
    eprintln!("eStargz: ready after {n} of {size} bytes");
    assert!(
        (n as f64) < 0.05 * size as f64,
        "ready after {n} of {size} bytes"
    );

    let got = dir.path().join("got.img");
    dump(&via, &got);
    assert!(
        std::fs::read(&got).unwrap() == std::fs::read(&want).unwrap(),
        "the disk from the TOC differs from materialize's image"
    );
    // Each layer's tar holds its stargz.index.json too (a full pass, like
    // a tar extraction, keeps the top one).
    let mut expected = layers();
    for (l, s) in expected.iter_mut().zip(&built) {
        l.entries
            .push(E::file("/stargz.index.json", Content::Bytes(s.toc.clone()), 0o644).mtime(0));
    }
    compare_mounted(&with_lost_found(imagegen::oracle(&expected)), &got);

    let o = Ocidisk::new();
    let at = dir.path().join("mounted.img");
    std::fs::write(&at, b"").unwrap();
    let m = common::mount::MountProc::start(&o, &via, &at, &["--read-only"]);
    assert!(std::fs::read(&m.image).unwrap() == std::fs::read(&want).unwrap());
    assert_eq!(m.stop(), Some(0));
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
        manifest.stdout.contains("io.containers.zstd-chunked.manifest-checksum"),
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

    // From the table: ready after a few percent, the bytes materialize
    // writes, the tree the layers make.
    let proxy = FaultProxy::start(&reg.host());
    let via = format!("{}/chunked:v1", proxy.host());
    let n = ready_bytes(&proxy, &via, &[]);
    eprintln!("zstd:chunked: ready after {n} of {size} bytes");
    assert!((n as f64) < 0.05 * size as f64, "ready after {n} of {size} bytes");
    let got = dir.path().join("got.img");
    dump(&via, &got);
    assert!(
        std::fs::read(&got).unwrap() == std::fs::read(&want).unwrap(),
        "the disk from the zstd:chunked table differs from materialize's image"
    );
    compare_mounted(&with_lost_found(imagegen::oracle(&layers())), &got);
}
