//! `ocidisk pull` / `inspect` against a real docker-registry (distribution
//! 2.8) fed by skopeo: every compression, multi-arch selection, cache reuse
//! counted at the registry, offline digest references, and bad input.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cli::{Ocidisk, corrupt_file, inspect_json};
use common::imagegen::{self, Compression, ImageOptions, Platform};
use common::registry::Registry;

fn push_standard(reg: &Registry, c: Compression, repo: &str) -> imagegen::BuiltImage {
    let dir = tempfile::tempdir().unwrap();
    let img = imagegen::write_standard(dir.path(), "v1", c);
    reg.push(
        &format!("oci:{}:v1", dir.path().display()),
        &format!("{repo}:v1"),
        false,
    );
    img
}

/// Blob GETs the registry logged after `skip` requests.
fn blob_fetches(reg: &Registry, skip: usize) -> Vec<String> {
    reg.requests()[skip..]
        .iter()
        .filter(|r| r.is_blob_fetch() && r.method == "GET")
        .map(|r| r.reference().unwrap().to_string())
        .collect()
}

#[test]
fn pull_and_inspect_every_layer_compression() {
    let reg = Registry::start();
    for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let repo = format!("std-{}", c.name());
        let img = push_standard(&reg, c, &repo);
        let r = format!("{}/{repo}:v1", reg.host());
        let o = Ocidisk::new();

        let info = inspect_json(&o.ok(&["inspect", "--json", &r]));
        assert_eq!(info["digest"], img.manifest_digest.as_str());
        assert_eq!(info["config_digest"], img.config_digest.as_str());
        assert_eq!(info["platform"]["architecture"], "amd64");
        assert_eq!(
            info["config"]["Cmd"],
            serde_json::json!(["sh", "-c", "echo hello"])
        );
        assert_eq!(info["config"]["User"], "1000:1000");
        let layers = info["layers"].as_array().unwrap();
        assert_eq!(layers.len(), img.layers.len());
        for (got, want) in layers.iter().zip(&img.layers) {
            assert_eq!(got["digest"], want.digest.as_str());
            assert_eq!(got["diff_id"], want.diff_id.as_str());
            assert_eq!(got["size"], want.size);
            assert_eq!(got["media_type"], want.media_type.as_str());
        }
        assert!(
            o.cached_blobs()
                .iter()
                .all(|b| !img.layers.iter().any(|l| &l.digest == b)),
            "inspect must not fetch layers"
        );

        let stdout = o.ok(&["pull", &r]);
        assert_eq!(stdout.trim(), img.manifest_digest);
        let cached = o.cached_blobs();
        for d in img.blob_digests().iter().chain([&img.manifest_digest]) {
            assert!(cached.contains(d), "{c:?}: {d} not cached");
        }
        o.assert_cache_consistent();
    }
}

#[test]
fn second_pull_downloads_nothing_and_shared_layers_only_once() {
    let reg = Registry::start();
    let std_img = push_standard(&reg, Compression::Gzip, "base");
    let dir = tempfile::tempdir().unwrap();
    let sharing = imagegen::write_sharing_image(dir.path(), "v1", Compression::Gzip);
    reg.push(&format!("oci:{}:v1", dir.path().display()), "app:v1", false);
    assert_eq!(
        sharing.layers[0].digest, std_img.layers[0].digest,
        "the generator's second image must share the base layer"
    );
    let o = Ocidisk::new();
    let base = format!("{}/base:v1", reg.host());

    let n = reg.requests().len();
    o.ok(&["pull", &base]);
    let first: BTreeSet<String> = blob_fetches(&reg, n).into_iter().collect();
    let want: BTreeSet<String> = std_img.blob_digests().into_iter().collect();
    assert_eq!(first, want, "first pull fetches config and every layer");

    let n = reg.requests().len();
    o.ok(&["pull", &base]);
    let again = blob_fetches(&reg, n);
    assert!(again.is_empty(), "second pull fetched blobs: {again:?}");
    let bytes_again: u64 = reg.requests()[n..].iter().map(|r| r.bytes).sum();
    assert!(
        bytes_again < 4096,
        "second pull transferred {bytes_again} bytes"
    );

    let n = reg.requests().len();
    o.ok(&["pull", &format!("{}/app:v1", reg.host())]);
    let fetched: BTreeSet<String> = blob_fetches(&reg, n).into_iter().collect();
    let new: BTreeSet<String> = sharing
        .blob_digests()
        .into_iter()
        .filter(|d| !want.contains(d))
        .collect();
    assert_eq!(
        fetched, new,
        "only the blobs the first image lacked are fetched"
    );
    assert!(!fetched.contains(&std_img.layers[0].digest));

    let list = inspect_json(&o.ok(&["cache", "list", "--json"]));
    assert_eq!(list["images"].as_array().unwrap().len(), 2);
}

#[test]
fn multi_arch_index_platform_selection() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let idx = imagegen::write_multiarch(dir.path(), "multi", Compression::Gzip);
    reg.push(
        &format!("oci:{}:multi", dir.path().display()),
        "multi:v1",
        true,
    );
    let r = format!("{}/multi:v1", reg.host());
    let o = Ocidisk::new();

    for (platform, img) in [
        ("linux/amd64", &idx.images[0]),
        ("linux/arm64", &idx.images[1]),
    ] {
        let info = inspect_json(&o.ok(&["inspect", "--json", "--platform", platform, &r]));
        assert_eq!(info["digest"], img.manifest_digest.as_str(), "{platform}");
        assert_eq!(info["index_digest"], idx.digest.as_str());
        assert_eq!(info["platforms"].as_array().unwrap().len(), 2);
    }
    // arm64 with its default variant spelled out matches the v8 entry.
    let info = inspect_json(&o.ok(&["inspect", "--json", "--platform", "linux/arm64/v8", &r]));
    assert_eq!(info["digest"], idx.images[1].manifest_digest.as_str());

    let fresh = Ocidisk::new();
    let out = fresh.ok(&["pull", "--platform", "linux/arm64", &r]);
    assert_eq!(out.trim(), idx.images[1].manifest_digest);
    let cached = fresh.cached_blobs();
    assert!(cached.contains(&idx.images[1].config_digest));
    assert!(
        !cached.contains(&idx.images[0].config_digest),
        "amd64 must not be fetched"
    );

    let err = o.fail(&["inspect", "--platform", "linux/s390x", &r]);
    assert!(err.contains("linux/s390x"), "{err}");
    assert!(
        err.contains("linux/amd64") && err.contains("linux/arm64"),
        "{err}"
    );
    // A malformed --platform is a usage error: exit status 2 and the reason.
    let out = o.run(&["pull", "--platform", "linux", &r]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid platform \"linux\""), "{stderr}");
}

#[test]
fn digest_reference_works_offline_once_cached() {
    let mut reg = Registry::start();
    let img = push_standard(&reg, Compression::Zstd, "pinned");
    let by_digest = format!("{}/pinned@{}", reg.host(), img.manifest_digest);
    let by_tag_and_digest = format!("{}/pinned:v1@{}", reg.host(), img.manifest_digest);
    let o = Ocidisk::new();
    o.ok(&["pull", &by_digest]);
    reg.stop();
    assert_eq!(o.ok(&["pull", &by_digest]).trim(), img.manifest_digest);
    assert_eq!(
        o.ok(&["pull", &by_tag_and_digest]).trim(),
        img.manifest_digest
    );
    let info = inspect_json(&o.ok(&["inspect", "--json", &by_digest]));
    assert_eq!(info["layers"].as_array().unwrap().len(), img.layers.len());
    // A tag needs the registry to resolve it.
    let err = o.fail(&[
        "pull",
        "--retry-times",
        "1",
        &format!("{}/pinned:v1", reg.host()),
    ]);
    assert!(err.contains("unreachable"), "{err}");
}

#[test]
fn unknown_repository_and_tag_are_clear_not_found_errors() {
    let reg = Registry::start();
    push_standard(&reg, Compression::Gzip, "exists");
    let o = Ocidisk::new();
    let err = o.fail(&["pull", &format!("{}/exists:nope", reg.host())]);
    assert!(
        err.contains("not found") && err.contains("tag nope"),
        "{err}"
    );
    let err = o.fail(&["inspect", &format!("{}/missing/repo:v1", reg.host())]);
    assert!(
        err.contains("not found") && err.contains("missing/repo"),
        "{err}"
    );
    let err = o.fail(&["pull", "Bad Ref!"]);
    assert!(err.contains("invalid image reference"), "{err}");
}

#[test]
fn registry_down_gives_bounded_retries_then_a_clear_error() {
    let port = common::registry::free_port();
    let o = Ocidisk::new();
    let t = Instant::now();
    let err = o.fail(&[
        "pull",
        "--retry-times",
        "2",
        &format!("127.0.0.1:{port}/img:v1"),
    ]);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(
        err.contains("unreachable") && err.contains("3 attempts"),
        "{err}"
    );
}

#[test]
fn tampered_blob_is_rejected_and_not_cached() {
    let reg = Registry::start();
    let img = push_standard(&reg, Compression::Gzip, "tampered");
    let victim = &img.layers[1].digest;
    corrupt_file(&reg.blob_data_path(victim));
    let o = Ocidisk::new();
    let err = o.fail(&["pull", &format!("{}/tampered:v1", reg.host())]);
    assert!(
        err.contains(victim.as_str()) && err.contains("hashes to"),
        "{err}"
    );
    assert!(
        !o.cached_blobs().contains(victim),
        "tampered blob was cached"
    );
    o.assert_cache_consistent();
}

#[test]
fn diff_id_mismatch_is_rejected_and_not_cached() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let opts = ImageOptions {
        wrong_diff_id: true,
        ..ImageOptions::new(Compression::Gzip, Platform::linux_amd64())
    };
    let img =
        imagegen::write_image_with(dir.path(), Some("v1"), &imagegen::standard_layers(), &opts);
    reg.push_layout_raw(dir.path(), &img.manifest_digest, "baddiff", "v1");
    let o = Ocidisk::new();
    let err = o.fail(&["pull", &format!("{}/baddiff:v1", reg.host())]);
    let last = img.layers.last().unwrap();
    assert!(
        err.contains("diff_id") && err.contains(last.digest.as_str()),
        "{err}"
    );
    assert!(!o.cached_blobs().contains(&last.digest));
    o.assert_cache_consistent();
}

#[test]
fn unsupported_layer_media_type_is_named() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let mt = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted";
    let opts = ImageOptions {
        layer_media_type_override: Some(mt.into()),
        ..ImageOptions::new(Compression::Gzip, Platform::linux_amd64())
    };
    let img =
        imagegen::write_image_with(dir.path(), Some("v1"), &imagegen::standard_layers(), &opts);
    reg.push_layout_raw(dir.path(), &img.manifest_digest, "encrypted", "v1");
    let o = Ocidisk::new();
    let n = reg.requests().len();
    let err = o.fail(&["pull", &format!("{}/encrypted:v1", reg.host())]);
    assert!(err.contains(mt) && err.contains("encrypted"), "{err}");
    let layer_gets: Vec<_> = blob_fetches(&reg, n)
        .into_iter()
        .filter(|d| img.layers.iter().any(|l| &l.digest == d))
        .collect();
    assert!(
        layer_gets.is_empty(),
        "layers fetched before refusing: {layer_gets:?}"
    );
}

#[test]
fn corrupt_cached_blob_is_detected_and_fetched_again() {
    let reg = Registry::start();
    let img = push_standard(&reg, Compression::Gzip, "heal");
    let r = format!("{}/heal:v1", reg.host());
    let o = Ocidisk::new();
    o.ok(&["pull", &r]);
    let victim = &img.layers[0].digest;
    corrupt_file(&o.cached_blob_path(victim));
    let n = reg.requests().len();
    o.ok(&["pull", &r]);
    assert_eq!(
        blob_fetches(&reg, n),
        vec![victim.clone()],
        "only the corrupt blob is refetched"
    );
    o.assert_cache_consistent();
}

/// Make the registry answer 500 for a blob: its data file becomes a
/// symlink loop, which distribution's filesystem driver cannot read.
fn break_blob(reg: &Registry, digest: &str) -> std::path::PathBuf {
    let data = reg.blob_data_path(digest);
    let saved = data.with_extension("saved");
    std::fs::rename(&data, &saved).unwrap();
    std::os::unix::fs::symlink("data", &data).unwrap();
    saved
}

fn saw_status(reg: &Registry, digest: &str, status: u16) -> bool {
    reg.requests()
        .iter()
        .any(|r| r.is_blob_fetch() && r.reference() == Some(digest) && r.status == status)
}

#[test]
fn server_errors_are_retried_until_the_registry_recovers() {
    let reg = Registry::start();
    let img = push_standard(&reg, Compression::Gzip, "flaky");
    let victim = img.layers[2].digest.clone();
    let data = reg.blob_data_path(&victim);
    let saved = break_blob(&reg, &victim);
    let o = Ocidisk::new();
    let r = format!("{}/flaky:v1", reg.host());
    std::thread::scope(|s| {
        // Repair the blob only once the registry has answered 500 for it.
        let repair = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !saw_status(&reg, &victim, 500) {
                assert!(Instant::now() < deadline, "no 500 logged for {victim}");
                std::thread::sleep(Duration::from_millis(10));
            }
            std::fs::remove_file(&data).unwrap();
            std::fs::rename(&saved, &data).unwrap();
        });
        assert_eq!(o.ok(&["pull", &r]).trim(), img.manifest_digest);
        repair.join().unwrap();
    });
    assert!(saw_status(&reg, &victim, 200), "the retry fetched the blob");
    o.assert_cache_consistent();
}

#[test]
fn persistent_server_errors_fail_naming_registry_and_blob() {
    let reg = Registry::start();
    let img = push_standard(&reg, Compression::Gzip, "broken");
    let victim = img.layers[0].digest.clone();
    break_blob(&reg, &victim);
    let o = Ocidisk::new();
    let err = o.fail(&[
        "pull",
        "--retry-times",
        "1",
        &format!("{}/broken:v1", reg.host()),
    ]);
    assert!(err.contains(&reg.host()) && err.contains(&victim), "{err}");
    assert!(
        err.contains("HTTP 500") && err.contains("2 attempts"),
        "{err}"
    );
    assert!(!o.cached_blobs().contains(&victim));
    o.assert_cache_consistent();
}

#[test]
fn download_cut_mid_blob_resumes_with_a_range_request() {
    let reg = Registry::start();
    // Uncompressed, so the base layer (with its 16 MiB file) is large.
    let img = push_standard(&reg, Compression::None, "resume");
    let big = img.layers.iter().max_by_key(|l| l.size).unwrap().clone();
    assert!(big.size > 8 << 20, "base layer is {} bytes", big.size);
    let proxy = common::proxy::FaultProxy::start(&reg.host());
    proxy.cut_connections_after(4 << 20, 1);
    let o = Ocidisk::new();
    let out = o.ok(&[
        "pull",
        "--jobs",
        "1",
        &format!("{}/resume:v1", proxy.host()),
    ]);
    assert_eq!(out.trim(), img.manifest_digest);
    assert_eq!(proxy.cuts_done(), 1, "the proxy cut one connection");
    let ranged: Vec<_> = reg
        .requests()
        .into_iter()
        .filter(|r| r.is_blob_fetch() && r.reference() == Some(big.digest.as_str()))
        .map(|r| r.status)
        .collect();
    assert!(
        ranged.contains(&206),
        "no 206 range answer for the cut blob: {ranged:?}"
    );
    // Resumed, not restarted: well under two full copies crossed the proxy.
    assert!(
        proxy.bytes_down() < big.size + (big.size / 2),
        "{} bytes",
        proxy.bytes_down()
    );
    o.assert_cache_consistent();
}

/// A plain-HTTP registry on this host whose blobs live in HTTPS storage
/// (distribution's S3 / GCS `redirect`): the layers come from the storage,
/// whose certificate is checked against the system's roots and --ca-cert,
/// not from the registry; without the storage's CA the pull fails naming
/// the certificate.
#[test]
fn blobs_redirected_to_https_storage_come_from_there() {
    let front = Registry::start();
    let storage = Registry::start_tls();
    let dir = tempfile::tempdir().unwrap();
    let img = imagegen::write_standard(dir.path(), "v1", Compression::Gzip);
    let src = format!("oci:{}:v1", dir.path().display());
    front.push(&src, "redir:v1", false);
    storage.push(&src, "redir:v1", false);
    let proxy = common::proxy::FaultProxy::start(&front.host());
    proxy.redirect_blobs_to(&storage.url());
    let r = format!("{}/redir:v1", proxy.host());

    let o = Ocidisk::new();
    let err = o.fail(&["pull", &r]);
    assert!(
        err.contains("TLS connection") && err.contains("certificate"),
        "{err}"
    );
    assert!(
        o.cached_blobs()
            .iter()
            .all(|b| !img.layers.iter().any(|l| &l.digest == b))
    );

    let (front_seen, storage_seen) = (front.requests().len(), storage.requests().len());
    let ca = storage.ca_cert().unwrap();
    let out = o.ok(&["pull", "--ca-cert", ca.to_str().unwrap(), &r]);
    assert_eq!(out.trim(), img.manifest_digest);
    let fetched: BTreeSet<String> = blob_fetches(&storage, storage_seen).into_iter().collect();
    for l in &img.layers {
        assert!(
            fetched.contains(&l.digest),
            "{} not from the storage",
            l.digest
        );
    }
    assert!(
        blob_fetches(&front, front_seen).is_empty(),
        "the front served blobs"
    );
    o.assert_cache_consistent();
}
