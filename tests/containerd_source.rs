//! containerd as a source (`containerd:[NS/]NAME`): a private containerd
//! (Debian's package, CRI off) holds the standard test image imported with
//! `ctr images import`; what ocidisk makes of it must equal what it makes
//! of the same image from the real registry, eagerly and lazily, and a
//! missing image or a stopped containerd must be clear errors.

mod common;

use common::cli::{Ocidisk, inspect_json};
use common::containerd::Containerd;
use common::imagegen::{self, Compression};
use common::lazy::disk_options;
use common::mount::MountProc;
use common::registry::Registry;
use ocidisk::cache::BlobCache;
use ocidisk::disk::Disk;

#[test]
fn containerd_images_equal_the_registry_image_eager_and_lazy() {
    let dir = tempfile::tempdir().unwrap();
    let img = imagegen::write_standard(dir.path(), "v1", Compression::Gzip);
    let ctd = Containerd::start();
    ctd.import_layout("team", dir.path(), "v1", "example.com/app");
    ctd.import_layout("default", dir.path(), "v1", "example.com/app");
    let listed = ctd.ctr("team", &["images", "ls", "-q"]);
    assert!(listed.contains("example.com/app:v1"), "{listed}");

    let reg = Registry::start();
    reg.push(&format!("oci:{}:v1", dir.path().display()), "app:v1", false);
    let from_registry = dir.path().join("registry.img");
    let o = Ocidisk::new();
    o.ok(&[
        "materialize",
        &format!("{}/app:v1", reg.host()),
        from_registry.to_str().unwrap(),
    ]);
    let want = std::fs::read(&from_registry).unwrap();

    let sock = ctd.socket();
    let sock = sock.to_str().unwrap();
    for reference in [
        "containerd:team/example.com/app:v1",
        "containerd:example.com/app:v1",
    ] {
        // A fresh cache each time: nothing may come from elsewhere.
        let o = Ocidisk::new();
        let info =
            inspect_json(&o.ok(&["inspect", "--json", "--containerd-address", sock, reference]));
        assert_eq!(info["digest"], img.manifest_digest.as_str(), "{reference}");
        let out = dir.path().join("ctd.img");
        o.ok(&[
            "materialize",
            "--containerd-address",
            sock,
            reference,
            out.to_str().unwrap(),
        ]);
        assert!(
            std::fs::read(&out).unwrap() == want,
            "{reference}: differs from the registry's image"
        );
    }
    assert!(
        reg.requests().iter().filter(|r| r.is_blob_fetch()).count() > 0,
        "the registry image was fetched from the registry"
    );

    // Lazily, by ranges of the content store.
    let o = Ocidisk::new();
    let cache = BlobCache::open(o.cache_dir()).unwrap();
    let mut opts = disk_options("containerd:team/example.com/app:v1", false);
    opts.pull.source.containerd_address = Some(ctd.socket());
    let disk = Disk::open(&opts, &cache).unwrap();
    assert_eq!(disk.size(), want.len() as u64);
    let mut got = vec![0u8; want.len()];
    for (i, chunk) in got.chunks_mut(1 << 20).enumerate() {
        disk.read_at((i as u64) << 20, chunk).unwrap();
    }
    assert!(
        got == want,
        "the lazy disk differs from the registry's image"
    );
    assert!(
        !o.cached_blobs()
            .iter()
            .any(|b| std::fs::metadata(o.cached_blob_path(b)).unwrap().len() > 100_000),
        "the lazy disk kept no whole layer"
    );
    drop(disk);

    // `mount` over FUSE, as a user runs it.
    let o = Ocidisk::new();
    let file = dir.path().join("fuse.img");
    std::fs::write(&file, b"").unwrap();
    let m = MountProc::start(
        &o,
        "containerd:team/example.com/app:v1",
        &file,
        &["--containerd-address", sock],
    );
    assert!(
        std::fs::read(&m.image).unwrap() == want,
        "the FUSE file differs from the registry's image"
    );
    assert_eq!(m.stop(), Some(0));
}

#[test]
fn missing_images_and_a_stopped_containerd_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(dir.path(), "v1", Compression::Zstd);
    let mut ctd = Containerd::start();
    ctd.import_layout("default", dir.path(), "v1", "example.com/app");
    let sock = ctd.socket();
    let sock = sock.to_str().unwrap();
    let o = Ocidisk::new();
    let out = dir.path().join("x.img");
    let err = o.fail(&[
        "materialize",
        "--containerd-address",
        sock,
        "containerd:example.com/app:v2",
        out.to_str().unwrap(),
    ]);
    assert!(
        err.contains("image \"example.com/app:v2\" not found in containerd namespace \"default\""),
        "{err}"
    );
    assert!(!out.exists());
    let err = o.fail(&[
        "inspect",
        "--containerd-address",
        sock,
        "containerd:nosuchns/example.com/app:v1",
    ]);
    assert!(err.contains("not found in containerd namespace"), "{err}");

    ctd.stop();
    let err = o.fail(&[
        "materialize",
        "--containerd-address",
        sock,
        "containerd:example.com/app:v1",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("is not reachable"), "{err}");
    assert!(err.contains(sock), "{err}");
    assert!(!out.exists());
    let err = o.fail(&["inspect", "containerd:"]);
    assert!(err.contains("needs an image name"), "{err}");
}
