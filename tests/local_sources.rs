//! Images that need no registry: OCI layouts (`oci:DIR[:TAG]`) and `docker
//! save` archives (`docker-archive:FILE`, written here by skopeo), including
//! multi-arch layouts, tag selection and broken layouts.

mod common;

use std::process::Command;
use std::time::Duration;

use common::cli::{Ocidisk, corrupt_file, inspect_json};
use common::imagegen::{self, Compression, ImageOptions, Platform};
use common::registry::run_ok;

fn layout(c: Compression) -> (tempfile::TempDir, imagegen::BuiltImage) {
    let dir = tempfile::tempdir().unwrap();
    let img = imagegen::write_standard(dir.path(), "v1", c);
    (dir, img)
}

#[test]
fn oci_layout_each_compression() {
    for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let (dir, img) = layout(c);
        let r = format!("oci:{}:v1", dir.path().display());
        let o = Ocidisk::new();
        let info = inspect_json(&o.ok(&["inspect", "--json", &r]));
        assert_eq!(info["digest"], img.manifest_digest.as_str());
        assert_eq!(o.ok(&["pull", &r]).trim(), img.manifest_digest);
        let cached = o.cached_blobs();
        for d in img.blob_digests() {
            assert!(cached.contains(&d), "{c:?}: {d} not cached");
        }
        o.assert_cache_consistent();
        // Without a tag, a layout with one image is unambiguous.
        let untagged = format!("oci:{}", dir.path().display());
        assert_eq!(o.ok(&["pull", &untagged]).trim(), img.manifest_digest);
    }
}

#[test]
fn oci_layout_tag_errors_list_the_tags() {
    let (dir, _) = layout(Compression::Gzip);
    imagegen::write_sharing_image(dir.path(), "v2", Compression::Gzip);
    let o = Ocidisk::new();
    let err = o.fail(&["pull", &format!("oci:{}:v3", dir.path().display())]);
    assert!(
        err.contains("v3") && err.contains("v1") && err.contains("v2"),
        "{err}"
    );
    let err = o.fail(&["pull", &format!("oci:{}", dir.path().display())]);
    assert!(err.contains("holds 2 images"), "{err}");
    let err = o.fail(&["pull", "oci:/nonexistent/layout:v1"]);
    assert!(err.contains("not an OCI image layout"), "{err}");
}

#[test]
fn oci_layout_multi_arch() {
    let dir = tempfile::tempdir().unwrap();
    let idx = imagegen::write_multiarch(dir.path(), "multi", Compression::Zstd);
    let r = format!("oci:{}:multi", dir.path().display());
    let o = Ocidisk::new();
    let out = o.ok(&["pull", "--platform", "linux/arm64", &r]);
    assert_eq!(out.trim(), idx.images[1].manifest_digest);
    let out = o.ok(&["pull", "--platform", "linux/amd64", &r]);
    assert_eq!(out.trim(), idx.images[0].manifest_digest);
    let err = o.fail(&["pull", "--platform", "linux/arm/v7", &r]);
    assert!(
        err.contains("linux/arm/v7") && err.contains("linux/arm64"),
        "{err}"
    );
}

#[test]
fn docker_archive_from_skopeo() {
    let (dir, img) = layout(Compression::Gzip);
    let tar = dir.path().join("saved.tar");
    run_ok(
        Command::new("skopeo").args([
            "copy",
            "-q",
            &format!("oci:{}:v1", dir.path().display()),
            &format!("docker-archive:{}:example/app:v1", tar.display()),
        ]),
        Duration::from_secs(120),
    );
    let o = Ocidisk::new();
    for r in [
        format!("docker-archive:{}", tar.display()),
        format!("docker-archive:{}:example/app:v1", tar.display()),
        format!("docker-archive:{}:@0", tar.display()),
    ] {
        let info = inspect_json(&o.ok(&["inspect", "--json", &r]));
        let layers = info["layers"].as_array().unwrap();
        assert_eq!(layers.len(), img.layers.len());
        for (got, want) in layers.iter().zip(&img.layers) {
            assert_eq!(got["diff_id"], want.diff_id.as_str());
        }
    }
    let r = format!("docker-archive:{}", tar.display());
    let id = o.ok(&["pull", &r]);
    let info = inspect_json(&o.ok(&["inspect", "--json", &r]));
    assert_eq!(id.trim(), info["config_digest"].as_str().unwrap());
    let cached = o.cached_blobs();
    for l in info["layers"].as_array().unwrap() {
        assert!(cached.contains(l["digest"].as_str().unwrap()));
    }
    o.assert_cache_consistent();

    let err = o.fail(&[
        "pull",
        &format!("docker-archive:{}:other:tag", tar.display()),
    ]);
    assert!(err.contains("example/app:v1"), "{err}");
    let err = o.fail(&[
        "pull",
        &format!("docker-archive:{}", dir.path().join("index.json").display()),
    ]);
    assert!(err.contains("index.json"), "{err}");
}

#[test]
fn broken_layouts_are_refused_and_nothing_is_kept() {
    // A layer whose bytes do not match its digest.
    let (dir, img) = layout(Compression::Gzip);
    let victim = img.layers[0].digest.clone();
    corrupt_file(&imagegen::blob_path(dir.path(), &victim));
    let o = Ocidisk::new();
    let err = o.fail(&["pull", &format!("oci:{}:v1", dir.path().display())]);
    assert!(err.contains(&victim) && err.contains("hashes to"), "{err}");
    assert!(!o.cached_blobs().contains(&victim));
    o.assert_cache_consistent();

    // A config whose diff_id does not match the layer.
    let dir = tempfile::tempdir().unwrap();
    let opts = ImageOptions {
        wrong_diff_id: true,
        ..ImageOptions::new(Compression::Zstd, Platform::linux_amd64())
    };
    let img =
        imagegen::write_image_with(dir.path(), Some("v1"), &imagegen::standard_layers(), &opts);
    let err = o.fail(&["pull", &format!("oci:{}:v1", dir.path().display())]);
    assert!(err.contains("diff_id"), "{err}");
    assert!(
        !o.cached_blobs()
            .contains(&img.layers.last().unwrap().digest)
    );

    // A config listing fewer diff_ids than there are layers.
    let dir = tempfile::tempdir().unwrap();
    let opts = ImageOptions {
        missing_diff_id: true,
        ..ImageOptions::new(Compression::Gzip, Platform::linux_amd64())
    };
    imagegen::write_image_with(dir.path(), Some("v1"), &imagegen::standard_layers(), &opts);
    let err = o.fail(&["pull", &format!("oci:{}:v1", dir.path().display())]);
    assert!(err.contains("diff_ids"), "{err}");

    // A foreign layer.
    let dir = tempfile::tempdir().unwrap();
    let mt = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    let opts = ImageOptions {
        layer_media_type_override: Some(mt.into()),
        ..ImageOptions::new(Compression::Gzip, Platform::linux_amd64())
    };
    imagegen::write_image_with(dir.path(), Some("v1"), &imagegen::standard_layers(), &opts);
    let err = o.fail(&["inspect", &format!("oci:{}:v1", dir.path().display())]);
    assert!(err.contains(mt), "{err}");
    o.assert_cache_consistent();
}

#[test]
fn schema1_manifest_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = br#"{"schemaVersion":1,"name":"old/image","tag":"v1","architecture":"amd64","fsLayers":[],"history":[]}"#;
    let digest = imagegen::write_blob(dir.path(), manifest);
    imagegen::add_to_index(
        dir.path(),
        "v1",
        serde_json::json!({
            "mediaType": "application/vnd.docker.distribution.manifest.v1+prettyjws",
            "digest": digest,
            "size": manifest.len(),
        }),
    );
    let err = Ocidisk::new().fail(&["inspect", &format!("oci:{}:v1", dir.path().display())]);
    assert!(err.contains("schema 1"), "{err}");
}

#[test]
fn cache_list_and_prune() {
    let (dir, img) = layout(Compression::Gzip);
    let o = Ocidisk::new();
    o.ok(&["pull", &format!("oci:{}:v1", dir.path().display())]);
    let list = inspect_json(&o.ok(&["cache", "list", "--json", "--blobs"]));
    assert_eq!(list["images"][0]["image_id"], img.manifest_digest.as_str());
    let blobs = list["blobs"].as_array().unwrap().len();
    assert_eq!(
        blobs,
        img.blob_digests().len() + 1,
        "manifest, config, layers"
    );

    // A blob no image refers to goes on a plain prune; the image's stay.
    let orphan = b"an orphan blob";
    let orphan_digest = imagegen::sha256_digest(orphan);
    std::fs::write(o.cached_blob_path(&orphan_digest), orphan).unwrap();
    let out = o.ok(&["cache", "prune"]);
    assert!(out.contains("removed 1 blobs"), "{out}");
    assert!(!o.cached_blobs().contains(&orphan_digest));
    assert_eq!(o.cached_blobs().len(), blobs);

    // --max-size shrinks the cache and forgets the image whose blobs went.
    let out = o.ok(&["cache", "prune", "--max-size", "1K"]);
    assert!(out.contains("1 image records"), "{out}");
    let total: u64 = o
        .cached_blobs()
        .iter()
        .map(|d| std::fs::metadata(o.cached_blob_path(d)).unwrap().len())
        .sum();
    assert!(total <= 1024, "{total} bytes left");
    let list = inspect_json(&o.ok(&["cache", "list", "--json"]));
    assert!(list["images"].as_array().unwrap().is_empty());
    // A usage error is clap's: exit status 2, the reason on stderr.
    let out = o.run(&["cache", "prune", "--max-size", "lots"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid size \"lots\""));
}
