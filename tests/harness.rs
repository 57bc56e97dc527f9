//! Self-tests proving that the integration-test infrastructure in
//! `tests/common` is real and right:
//!
//! * the generated OCI layouts are accepted by skopeo and unpacked by umoci
//!   (an independent implementation) into exactly the tree the oracle
//!   predicts, for uncompressed, gzip and zstd layers;
//! * layer blobs decompress (with the `gzip`/`zstd` CLIs) to their diff_ids,
//!   and generation is deterministic;
//! * the local `docker-registry` accepts pushes, serves them back byte for
//!   byte, logs requests with sizes, enforces TLS and basic auth, survives a
//!   restart, and lets tests tamper with stored blobs;
//! * deliberately broken images reach the registry unchanged.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::imagegen::*;
use common::registry::*;

const TIMEOUT: Duration = Duration::from_secs(300);

fn skopeo(args: &[&str]) -> CmdOutput {
    run_with_timeout(
        Command::new("skopeo")
            .args(["--insecure-policy", "--command-timeout", "300s"])
            .args(args),
        TIMEOUT,
    )
}

fn skopeo_ok(args: &[&str]) -> String {
    let out = skopeo(args);
    assert!(out.success(), "skopeo {args:?} failed:\n{}", out.stderr);
    out.stdout
}

fn oci_ref(layout: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", layout.display())
}

fn read_blob(layout: &Path, digest: &str) -> Vec<u8> {
    fs::read(blob_path(layout, digest)).expect("blob exists")
}

/// sha256 of `path` after decompressing it with an external tool.
fn external_decompressed_digest(path: &Path, compression: Compression) -> String {
    let tool = match compression {
        Compression::None => "cat",
        Compression::Gzip => "gzip -dc",
        Compression::Zstd => "zstd -dcq",
    };
    let out = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("{tool} \"$1\" | sha256sum"))
            .arg("sh")
            .arg(path),
        TIMEOUT,
    );
    format!("sha256:{}", out.stdout.split_whitespace().next().unwrap())
}

#[test]
fn access_log_lines_parse() {
    let line = r#"127.0.0.1 - - [26/Nov/2026:17:10:57 +0000] "GET /v2/t/gzip/blobs/sha256:e22f HTTP/1.1" 200 1430523 "" "skopeo/1.9.3""#;
    let request = parse_access_log_line(line).expect("parsed");
    assert_eq!(
        request,
        LoggedRequest {
            method: "GET".into(),
            uri: "/v2/t/gzip/blobs/sha256:e22f".into(),
            status: 200,
            bytes: 1_430_523,
            user_agent: "skopeo/1.9.3".into(),
        }
    );
    assert!(request.is_blob_fetch());
    assert!(!request.is_manifest());
    assert_eq!(request.reference(), Some("sha256:e22f"));
    let upload = r#"127.0.0.1 - - [26/Nov/2026:17:17:42 +0000] "POST /v2/t/m/blobs/uploads/ HTTP/1.1" 202 - "" "curl/7.88.1""#;
    let upload = parse_access_log_line(upload).expect("parsed");
    assert_eq!((upload.status, upload.bytes), (202, 0));
    assert!(!upload.is_blob_fetch());
    let app_line = r#"time="2026-11-26T17:10:48Z" level=info msg="response completed" http.request.method=GET"#;
    assert_eq!(parse_access_log_line(app_line), None);
}

#[test]
fn oracle_applies_changesets() {
    let o = oracle(&standard_layers());
    let entry = |p: &str| {
        o.get(p)
            .unwrap_or_else(|| panic!("{p} missing from oracle"))
    };
    let absent = |p: &str| assert!(o.get(p).is_none(), "{p} should be gone");
    let children =
        |p: &str| -> BTreeSet<String> { o.children(p).into_iter().map(str::to_string).collect() };
    let set = |v: &[&str]| -> BTreeSet<String> { v.iter().map(|s| s.to_string()).collect() };

    // Root and implied parents.
    assert!(entry("/").implied && entry("/").kind == Kind::Dir);
    let app = entry("/var/cache/app");
    assert!(app.implied);
    assert_eq!((app.mode, app.uid, app.gid, app.mtime), (0o755, 0, 0, 0));
    assert_eq!(
        children("/var/cache/app"),
        set(&["/var/cache/app/data.txt"])
    );
    // Whiteout then re-creation.
    let (_, sha) = Content::text("re-created in layer 3\n").sha256();
    assert_eq!(
        entry("/etc/delete-me").sha256.as_deref(),
        Some(sha.as_str())
    );
    // Opaque directories: marker first, and marker after a new child.
    assert_eq!(
        children("/opt/opaque-a"),
        set(&["/opt/opaque-a/new.txt", "/opt/opaque-a/sub"])
    );
    assert_eq!(
        children("/opt/opaque-a/sub"),
        set(&["/opt/opaque-a/sub/fresh.txt"])
    );
    assert_eq!(
        (entry("/opt/opaque-a").mode, entry("/opt/opaque-a").mtime),
        (0o750, T2 as i64)
    );
    assert_eq!(children("/etc/opaque-b"), set(&["/etc/opaque-b/kept.txt"]));
    assert_eq!(entry("/etc/opaque-b").mtime, T1 as i64);
    // Replacements.
    assert_eq!(entry("/opt/was-dir").kind, Kind::File);
    absent("/opt/was-dir/a");
    absent("/opt/was-dir/child-dir/b");
    assert_eq!(entry("/opt/was-file").kind, Kind::Dir);
    assert_eq!(children("/opt/was-file"), set(&["/opt/was-file/inner.txt"]));
    assert_eq!(
        entry("/etc/os-release").target.as_deref(),
        Some("../usr/lib/os-release")
    );
    assert_eq!(
        (entry("/etc/hostname").mode, entry("/etc/hostname").mtime),
        (0o600, T2 as i64)
    );
    // Directory attribute change keeps children.
    assert_eq!(entry("/var/log").mode, 0o750);
    assert!(o.get("/var/log/old.log").is_some());
    assert_eq!(entry("/etc/owned").uid, 1000);
    // Hard links.
    let group = |p: &str| {
        entry(p)
            .link_group
            .unwrap_or_else(|| panic!("{p} not linked"))
    };
    assert_eq!(group("/usr/lib/triple-1"), group("/usr/lib/triple-3"));
    assert_eq!(entry("/usr/lib/triple-1").nlink, 2);
    assert_eq!(
        (
            entry("/usr/lib/triple-2").nlink,
            entry("/usr/lib/triple-2").link_group
        ),
        (1, None)
    );
    assert_eq!(group("/bin/busybox"), group("/usr/bin/busybox-hardlink"));
    assert_eq!(group("/usr/bin/hl-a"), group("/usr/bin/hl-b"));
    assert_eq!(group("/usr/bin/sh"), group("/usr/bin/sh-hardlink"));
    assert_eq!(entry("/usr/bin/sh-hardlink").kind, Kind::Symlink);
    let groups: BTreeSet<u32> = o.entries.values().filter_map(|e| e.link_group).collect();
    assert_eq!(groups, (0..4).collect());
    // Special files, ids, xattrs, times, names.
    assert_eq!(entry("/dev/null").rdev, Some((1, 3)));
    assert_eq!(
        (entry("/dev/loop0").kind, entry("/dev/loop0").rdev),
        (Kind::Block, Some((7, 0)))
    );
    assert_eq!(entry("/run/initctl").kind, Kind::Fifo);
    assert_eq!(entry("/tmp").mode, 0o1777);
    assert_eq!(entry("/usr/bin/su").mode, 0o4755);
    assert_eq!(entry("/srv/shared").mode, 0o2775);
    assert_eq!(entry("/opt/hugeid").uid, 3_000_000_000);
    assert_eq!(
        entry("/usr/bin/ping").xattrs["security.capability"],
        hex::encode(capability_net_raw())
    );
    assert_eq!(capability_net_raw().len(), 20);
    assert_eq!(entry("/etc/nanotime").mtime_nsec, 123_456_789);
    assert!(long_path_file().len() > 255);
    assert_eq!(entry(&long_path_file()).kind, Kind::File);
    let long_name = format!("/opt/{}", long_file_name());
    assert!((101..=255).contains(&long_file_name().len()));
    assert_eq!(entry(&long_name).kind, Kind::File);
    assert_eq!(entry("/usr/lib/mostly-zero-16m").size, 16 << 20);
    assert!(o.get("/opt/ünïcødé/🦀-crab.txt").is_some());
    // /big-dir: one whiteout and one addition keep it at 2,000 entries.
    assert_eq!(o.children("/big-dir").len(), BIG_DIR_ENTRIES);
    absent("/big-dir/entry-0007");
    assert!(o.get("/big-dir/entry-2000").is_some());
    // Directory link counts: 2 + subdirectories.
    assert_eq!(entry("/opt/opaque-a").nlink, 3);
    // The oracle round-trips through JSON.
    let back: Oracle = serde_json::from_str(&o.to_json()).unwrap();
    assert_eq!(back, o);
}

#[test]
fn generation_is_deterministic_and_sharing_image_shares_layer_one() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let platform = Platform::linux_amd64();
    let first = write_image(
        a.path(),
        "std",
        &standard_layers(),
        Compression::Gzip,
        &platform,
    );
    let second = write_image(
        b.path(),
        "std",
        &standard_layers(),
        Compression::Gzip,
        &platform,
    );
    assert_eq!(first, second);
    assert_eq!(
        fs::read(a.path().join("index.json")).unwrap(),
        fs::read(b.path().join("index.json")).unwrap()
    );
    // Bypass the in-process cache once: the tar itself is reproducible.
    assert_eq!(
        sha256_digest(&standard_layer2().tar()),
        first.layers[1].diff_id
    );

    let sharing = write_sharing_image(a.path(), "second", Compression::Gzip);
    assert_eq!(sharing.layers.len(), 2);
    assert_eq!(sharing.layers[0], first.layers[0]);
    assert_ne!(sharing.layers[1].digest, first.layers[2].digest);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(a.path().join("index.json")).unwrap()).unwrap();
    let tags: BTreeSet<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["annotations"][REF_NAME_ANNOTATION].as_str().unwrap())
        .collect();
    assert_eq!(tags, BTreeSet::from(["std", "second"]));
    // Re-tagging replaces the entry instead of duplicating it.
    write_sharing_image(a.path(), "second", Compression::Gzip);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(a.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    let oracle = oracle(&sharing_layers());
    assert!(oracle.get("/etc/second-image").is_some());
    assert!(oracle.get("/etc/passwd").is_none());
}

#[test]
fn layer_blobs_decompress_to_their_diff_ids_with_external_tools() {
    let dir = tempfile::tempdir().unwrap();
    for compression in Compression::ALL {
        let layout = dir.path().join(compression.name());
        let built = write_image(
            &layout,
            "std",
            &standard_layers(),
            compression,
            &Platform::linux_amd64(),
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&read_blob(&layout, &built.manifest_digest)).unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&read_blob(&layout, &built.config_digest)).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);
        for (i, layer) in built.layers.iter().enumerate() {
            let path = blob_path(&layout, &layer.digest);
            assert_eq!(fs::metadata(&path).unwrap().len(), layer.size);
            assert_eq!(manifest["layers"][i]["mediaType"], compression.media_type());
            assert_eq!(manifest["layers"][i]["digest"], layer.digest.as_str());
            assert_eq!(config["rootfs"]["diff_ids"][i], layer.diff_id.as_str());
            assert_eq!(
                external_decompressed_digest(&path, compression),
                layer.diff_id,
                "{compression:?} layer {i}"
            );
        }
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["config"]["User"], "1000:1000");
    }
}

/// Unpacks the standard image with umoci and compares the result with the
/// oracle, field by field.
fn umoci_matches_oracle(compression: Compression) {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let layers = standard_layers();
    let built = write_image(
        &layout,
        "std",
        &layers,
        compression,
        &Platform::linux_amd64(),
    );
    let raw = skopeo_ok(&["inspect", "--raw", &oci_ref(&layout, "std")]);
    assert_eq!(raw.as_bytes(), read_blob(&layout, &built.manifest_digest));
    let config = skopeo_ok(&["inspect", "--config", "--raw", &oci_ref(&layout, "std")]);
    assert_eq!(config.as_bytes(), read_blob(&layout, &built.config_digest));

    // umoci 0.4.7 rejects zstd layers ("blob is not correct mediatype"):
    // let skopeo (an independent zstd decoder) re-compress them to gzip.
    let unpack_layout = if compression == Compression::Zstd {
        let converted = dir.path().join("converted");
        skopeo_ok(&[
            "copy",
            "--dest-compress",
            "--dest-compress-format",
            "gzip",
            &oci_ref(&layout, "std"),
            &oci_ref(&converted, "std"),
        ]);
        let converted_config =
            skopeo_ok(&["inspect", "--config", "--raw", &oci_ref(&converted, "std")]);
        assert_eq!(converted_config, config, "diff_ids survive re-compression");
        converted
    } else {
        layout
    };

    let bundle = dir.path().join("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:std", unpack_layout.display()))
            .arg(&bundle),
        TIMEOUT,
    );
    let expected = oracle(&layers);
    let actual = scan_tree(&bundle.join("rootfs"));
    assert_eq!(actual.len(), expected.len());

    // Known umoci behaviour: a directory it has to create as an implied
    // parent (MkdirAll) gets the extraction time as mtime, and the mtime of
    // *its* parent is not restored afterwards. Everything else (modes incl.
    // setuid/setgid/sticky, owners incl. ids >= 2^21, nanosecond mtimes,
    // symlink mtimes, device numbers, hard-link groups incl. a hard link to
    // a symlink, security.capability and user.* xattrs) umoci preserves.
    let mut options = CompareOptions {
        implied_metadata: false,
        ..CompareOptions::default()
    };
    let implied_parents: Vec<String> = expected
        .entries
        .iter()
        .filter(|(p, e)| e.implied && p.as_str() != "/")
        .map(|(p, _)| p.rsplit_once('/').unwrap().0.to_string())
        .collect();
    assert_eq!(implied_parents, ["/var/cache"]);
    options.ignore_mtime = implied_parents;
    let diffs = compare_trees(&expected, &actual, &options);
    assert!(
        diffs.is_empty(),
        "umoci's rootfs differs from the oracle ({} differences):\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(50)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The comparison is not vacuous: it does see a wrong expectation.
    let mut wrong = expected.clone();
    wrong.entries.get_mut("/usr/bin/su").unwrap().mode = 0o755;
    wrong
        .entries
        .get_mut("/usr/bin/ping")
        .unwrap()
        .xattrs
        .clear();
    wrong
        .entries
        .get_mut("/usr/lib/triple-2")
        .unwrap()
        .link_group = Some(3);
    wrong.entries.get_mut("/dev/null").unwrap().rdev = Some((1, 5));
    wrong.entries.remove("/big-dir/entry-1999");
    let caught = compare_trees(&wrong, &actual, &options);
    assert_eq!(caught.len(), 5, "{caught:#?}");
}

#[test]
fn umoci_unpack_matches_oracle_uncompressed() {
    umoci_matches_oracle(Compression::None);
}

#[test]
fn umoci_unpack_matches_oracle_gzip() {
    umoci_matches_oracle(Compression::Gzip);
}

#[test]
fn umoci_unpack_matches_oracle_zstd() {
    umoci_matches_oracle(Compression::Zstd);
}

/// Requests logged after the first `skip` ones.
fn requests_since(registry: &Registry, skip: usize) -> Vec<LoggedRequest> {
    registry.requests().into_iter().skip(skip).collect()
}

#[test]
fn plain_registry_serves_pushed_images_and_logs_requests() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let std_image = write_image(
        &layout,
        "std",
        &standard_layers(),
        Compression::Gzip,
        &Platform::linux_amd64(),
    );
    let plain = write_image(
        &layout,
        "plain",
        &standard_layers(),
        Compression::None,
        &Platform::linux_amd64(),
    );
    let multi = write_multiarch(&layout, "multi", Compression::Zstd);

    let registry = Registry::start();
    assert!(registry.host().starts_with("127.0.0.1:"));
    assert!(!registry.is_tls() && registry.ca_cert().is_none() && registry.credentials().is_none());
    registry.push(&oci_ref(&layout, "std"), "test/std:v1", false);
    registry.push(&oci_ref(&layout, "plain"), "test/plain:v1", false);
    registry.push(&oci_ref(&layout, "multi"), "test/multi:v1", true);

    // Manifests come back byte for byte (also the uncompressed one).
    for (repo, image) in [("test/std:v1", &std_image), ("test/plain:v1", &plain)] {
        let raw = registry.skopeo_inspect(repo, true).expect("inspect --raw");
        assert_eq!(raw.as_bytes(), read_blob(&layout, &image.manifest_digest));
    }
    let inspected: serde_json::Value =
        serde_json::from_str(&registry.skopeo_inspect("test/std:v1", false).unwrap()).unwrap();
    assert_eq!(inspected["Digest"], std_image.manifest_digest.as_str());
    assert_eq!(inspected["Architecture"], "amd64");
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 3);
    let raw_index = registry.skopeo_inspect("test/multi:v1", true).unwrap();
    assert_eq!(raw_index.as_bytes(), read_blob(&layout, &multi.digest));
    let arm: serde_json::Value = serde_json::from_str(&skopeo_ok(&[
        "inspect",
        "--tls-verify=false",
        "--override-arch",
        "arm64",
        &format!("docker://{}/test/multi:v1", registry.host()),
    ]))
    .unwrap();
    // skopeo reports the digest of the index the tag points to; the chosen
    // instance shows in its layers (the top layer differs per platform).
    assert_eq!(arm["Digest"], multi.digest.as_str());
    assert_eq!(arm["Architecture"], "arm64");
    assert_eq!(arm["Layers"][2], multi.images[1].layers[2].digest.as_str());
    assert_ne!(
        multi.images[0].layers[2].digest,
        multi.images[1].layers[2].digest
    );

    // The pushes are in the log: tag and child-manifest PUTs, blob uploads.
    let requests = registry.requests();
    let created = |uri: &str| {
        requests
            .iter()
            .any(|r| r.method == "PUT" && r.uri == uri && r.status == 201)
    };
    assert!(created("/v2/test/std/manifests/v1"));
    assert!(created("/v2/test/multi/manifests/v1"));
    for image in &multi.images {
        assert!(created(&format!(
            "/v2/test/multi/manifests/{}",
            image.manifest_digest
        )));
    }
    for digest in std_image.blob_digests() {
        let encoded = digest.replace(':', "%3A");
        assert!(
            requests.iter().any(|r| r.method == "PUT"
                && r.uri.starts_with("/v2/test/std/blobs/uploads/")
                && r.uri.contains(&encoded)
                && r.status == 201),
            "no upload of {digest}"
        );
    }

    // A pull shows manifest and blob GETs with the exact sizes.
    let before = registry.requests().len();
    let pulled = dir.path().join("pulled");
    let mut args = vec!["copy".to_string()];
    args.extend(registry.skopeo_flags("src-"));
    args.push(format!("docker://{}/test/std:v1", registry.host()));
    args.push(oci_ref(&pulled, "x"));
    skopeo_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let pull = requests_since(&registry, before);
    assert!(pull.iter().all(|r| r.user_agent.starts_with("skopeo/")));
    assert!(pull.iter().any(|r| r.method == "GET"
        && r.uri == "/v2/test/std/manifests/v1"
        && r.status == 200
        && r.bytes == std_image.manifest_size));
    let fetched = |digest: &str| {
        pull.iter()
            .find(|r| r.method == "GET" && r.is_blob_fetch() && r.reference() == Some(digest))
            .map(|r| (r.status, r.bytes))
    };
    assert_eq!(
        fetched(&std_image.config_digest),
        Some((200, std_image.config_size))
    );
    for layer in &std_image.layers {
        assert_eq!(fetched(&layer.digest), Some((200, layer.size)));
    }
    assert_eq!(
        read_blob(&pulled, &std_image.layers[0].digest),
        read_blob(&layout, &std_image.layers[0].digest)
    );
    // Storage layout: blob_data_path points at the stored bytes.
    for layer in &std_image.layers {
        assert_eq!(
            fs::read(registry.blob_data_path(&layer.digest)).unwrap(),
            read_blob(&layout, &layer.digest)
        );
    }
}

#[test]
fn tls_auth_registry_requires_credentials_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let image = write_image(
        &layout,
        "std",
        &standard_layers(),
        Compression::Gzip,
        &Platform::linux_amd64(),
    );
    let mut registry = Registry::start_tls_auth("tester", "s3cret-pw");
    assert!(registry.is_tls());
    assert!(registry.url().starts_with("https://127.0.0.1:"));
    assert_eq!(
        registry.credentials(),
        Some(("tester".to_string(), "s3cret-pw".to_string()))
    );
    let ca = registry.ca_cert().expect("CA certificate");
    let pem = fs::read_to_string(&ca).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));

    registry.push(&oci_ref(&layout, "std"), "secure/std:v1", false);
    let raw = registry
        .skopeo_inspect("secure/std:v1", true)
        .expect("inspect with creds");
    assert_eq!(raw.as_bytes(), read_blob(&layout, &image.manifest_digest));

    // Anonymous and wrong-password access are refused; TLS is verified.
    let reference = format!("docker://{}/secure/std:v1", registry.host());
    let cert_dir = format!("--cert-dir={}", registry.cert_dir().unwrap().display());
    let anonymous = skopeo(&["inspect", "--raw", &cert_dir, "--no-creds", &reference]);
    assert!(!anonymous.success());
    assert!(
        anonymous.stderr.contains("authentication required")
            || anonymous.stderr.contains("unauthorized"),
        "{}",
        anonymous.stderr
    );
    let wrong = skopeo(&[
        "inspect",
        "--raw",
        &cert_dir,
        "--creds=tester:nope",
        &reference,
    ]);
    assert!(!wrong.success());
    let untrusted = skopeo(&["inspect", "--raw", "--creds=tester:s3cret-pw", &reference]);
    assert!(!untrusted.success());
    assert!(
        untrusted.stderr.contains("certificate"),
        "{}",
        untrusted.stderr
    );
    // The certificate is valid for both SAN names.
    for url in [
        format!("https://127.0.0.1:{}/v2/", registry.port()),
        format!("https://localhost:{}/v2/", registry.port()),
    ] {
        let code = run_ok(
            Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "30",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                ])
                .arg("--cacert")
                .arg(&ca)
                .arg(&url),
            TIMEOUT,
        );
        assert_eq!(code.stdout, "401", "{url}");
    }
    let authed = registry.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{}/v2/", registry.url()),
    ]);
    assert_eq!(authed.stdout, "200");
    let requests = registry.requests();
    assert!(requests.iter().any(|r| r.status == 401 && r.uri == "/v2/"));
    assert!(
        requests.iter().any(|r| r.method == "GET"
            && r.uri == "/v2/secure/std/manifests/v1"
            && r.status == 200)
    );

    // stop() really stops it; restart() brings back the same port and content.
    let port = registry.port();
    registry.stop();
    assert!(registry.skopeo_inspect("secure/std:v1", true).is_err());
    registry.restart();
    assert_eq!(registry.port(), port);
    let before = registry.requests().len();
    let raw = registry
        .skopeo_inspect("secure/std:v1", true)
        .expect("inspect after restart");
    assert_eq!(raw.as_bytes(), read_blob(&layout, &image.manifest_digest));
    let after = registry.requests();
    assert!(
        after.len() > before,
        "requests after the restart are logged"
    );
    assert_eq!(after[..requests.len()], requests[..], "the log is appended");
}

#[test]
fn tampered_blob_is_served_and_detected_by_clients() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let image = write_image(
        &layout,
        "std",
        &standard_layers(),
        Compression::Gzip,
        &Platform::linux_amd64(),
    );
    let registry = Registry::start();
    registry.push(&oci_ref(&layout, "std"), "tamper/std:v1", false);
    let victim = &image.layers[1];
    let data = registry.blob_data_path(&victim.digest);
    let mut bytes = fs::read(&data).unwrap();
    assert_eq!(sha256_digest(&bytes), victim.digest);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&data, &bytes).unwrap();

    // The registry serves the tampered bytes as they are...
    let served = dir.path().join("served");
    let code = registry.curl(&[
        "-o",
        served.to_str().unwrap(),
        "-w",
        "%{http_code}",
        &format!("{}/v2/tamper/std/blobs/{}", registry.url(), victim.digest),
    ]);
    assert_eq!(code.stdout, "200");
    assert_eq!(fs::read(&served).unwrap(), bytes);
    // ...and a verifying client notices.
    let mut args = vec!["copy".to_string()];
    args.extend(registry.skopeo_flags("src-"));
    args.push(format!("docker://{}/tamper/std:v1", registry.host()));
    args.push(oci_ref(&dir.path().join("pulled"), "x"));
    let out = skopeo(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.success());
    assert!(
        out.stderr.to_lowercase().contains("digest did not match"),
        "{}",
        out.stderr
    );
}

#[test]
fn broken_images_reach_the_registry_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let platform = Platform::linux_amd64();
    let mut wrong_diff = ImageOptions::new(Compression::Gzip, platform.clone());
    wrong_diff.wrong_diff_id = true;
    let wrong_diff = write_image_with(&layout, Some("wrong-diff"), &standard_layers(), &wrong_diff);
    let mut odd_type = ImageOptions::new(Compression::Gzip, platform.clone());
    odd_type.layer_media_type_override =
        Some("application/vnd.example.unsupported.layer.v1+gzip".into());
    let odd_type = write_image_with(&layout, Some("odd-type"), &standard_layers(), &odd_type);
    let mut missing = ImageOptions::new(Compression::Zstd, platform);
    missing.missing_diff_id = true;
    let missing = write_image_with(&layout, None, &standard_layers(), &missing);

    let config: serde_json::Value =
        serde_json::from_slice(&read_blob(&layout, &wrong_diff.config_digest)).unwrap();
    assert_ne!(
        config["rootfs"]["diff_ids"][2],
        wrong_diff.layers[2].diff_id.as_str()
    );
    let config: serde_json::Value =
        serde_json::from_slice(&read_blob(&layout, &missing.config_digest)).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);

    let registry = Registry::start();
    // skopeo copies neither verifies diff_ids nor rejects unknown layer
    // media types when nothing has to be converted.
    registry.push(&oci_ref(&layout, "wrong-diff"), "broken/diff:v1", false);
    registry.push(&oci_ref(&layout, "odd-type"), "broken/type:v1", false);
    // The raw uploader handles anything else, byte for byte.
    registry.push_layout_raw(&layout, &missing.manifest_digest, "broken/missing", "v1");
    for (repo, image) in [
        ("broken/diff:v1", &wrong_diff),
        ("broken/type:v1", &odd_type),
        ("broken/missing:v1", &missing),
    ] {
        let raw = registry.skopeo_inspect(repo, true).expect("inspect --raw");
        assert_eq!(
            raw.as_bytes(),
            read_blob(&layout, &image.manifest_digest),
            "{repo}"
        );
        let served = registry.curl(&[&format!(
            "{}/v2/{}/blobs/{}",
            registry.url(),
            repo.split(':').next().unwrap(),
            image.config_digest
        )]);
        assert_eq!(
            served.stdout.as_bytes(),
            read_blob(&layout, &image.config_digest)
        );
    }
    // Raw push of a whole index, too.
    let multi = write_multiarch(&layout, "multi", Compression::Gzip);
    registry.push_layout_raw(&layout, &multi.digest, "raw/multi", "v1");
    let raw = registry.skopeo_inspect("raw/multi:v1", true).unwrap();
    assert_eq!(raw.as_bytes(), read_blob(&layout, &multi.digest));
    for image in &multi.images {
        let raw = registry
            .skopeo_inspect(&format!("raw/multi@{}", image.manifest_digest), true)
            .unwrap();
        assert_eq!(raw.as_bytes(), read_blob(&layout, &image.manifest_digest));
    }
}
