//! SOCI v1 indexes (#18): `ocidisk index push` publishes one beside an
//! image in a real registry (distribution 2.8, referrers through the tag
//! fallback), and a lazy disk on a fresh host starts from it: ready after
//! a few percent of the image, serving exactly what `materialize` writes.
//! The zTOC codec is checked against flatc, a second implementation of
//! FlatBuffers, with soci's schema.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::cli::Ocidisk;
use common::debian;
use common::lazy::disk_options;
use common::proxy::FaultProxy;
use common::registry::{Registry, run_ok};
use common::serve::Served;
use ocidisk::cache::BlobCache;
use ocidisk::digest::Digest;
use ocidisk::disk::Disk;
use ocidisk::source::manifest::Compression;
use sha2::Digest as _;

/// A gzip layer with assorted entries: (tar, gzip blob, its verified index).
fn small_layer(dir: &Path) -> (Vec<u8>, Vec<u8>, ocidisk::layer_index::LayerIndex) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, "etc/", &[][..]).unwrap();
    let mut x = 7u64;
    for f in 0..40u64 {
        let mut data = Vec::new();
        while data.len() < 30_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            data.extend_from_slice(format!("{:x} line of file {f}\n", x >> 48).as_bytes());
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o640);
        h.set_uid(f);
        h.set_gid(100);
        h.set_mtime(1_600_000_000 + f);
        b.append_data(&mut h, format!("etc/file{f}"), &data[..])
            .unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "etc/link", "file1").unwrap();
    let tar = b.into_inner().unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&tar).unwrap();
    let gz = e.finish().unwrap();
    let path = dir.join("layer.gz");
    std::fs::write(&path, &gz).unwrap();
    let ix = ocidisk::layer_index::index_blob(
        &path,
        &Digest::sha256_of(&gz),
        &Digest::sha256_of(&tar),
        Compression::Gzip,
    )
    .unwrap();
    (tar, gz, ix)
}

/// `flatc OPTIONS SCHEMA FILES` in `dir`, with soci's zTOC schema.
fn flatc(options: &[&str], files: &[&str], dir: &Path) {
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ztoc.fbs");
    let mut cmd = Command::new("flatc");
    cmd.current_dir(dir).args(options).arg(schema).args(files);
    run_ok(&mut cmd, Duration::from_secs(60));
}

#[test]
fn flatc_reads_our_ztocs_and_we_read_flatcs() {
    let dir = tempfile::tempdir().unwrap();
    let (tar, gz, ix) = small_layer(dir.path());
    let blob = std::fs::File::open(dir.path().join("layer.gz")).unwrap();
    let ours = ocidisk::toc::ztoc::build(&ix, &blob, gz.len() as u64, 64 << 10, "tests").unwrap();
    std::fs::write(dir.path().join("ours.ztoc"), &ours).unwrap();

    // flatc decodes ours (its verifier checks offsets and alignment) ...
    flatc(
        &["--json", "--strict-json", "--raw-binary", "-o", "json"],
        &["--", "ours.ztoc"],
        dir.path(),
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("json/ours.json")).unwrap()).unwrap();
    assert_eq!(json["version"], "0.9");
    assert_eq!(json["compressed_archive_size"], gz.len() as u64);
    assert_eq!(json["uncompressed_archive_size"], tar.len() as u64);
    let files = json["toc"]["metadata"].as_array().unwrap();
    assert_eq!(files.len(), ix.entries().len());
    assert_eq!(files[0]["name"], "etc/");
    assert_eq!(files[0]["type"], "dir");
    assert_eq!(files[2]["name"], "etc/file1");
    assert_eq!(files[2]["uid"], 1);
    assert_eq!(files[2]["mode"], 0o640);
    assert_eq!(files[2]["uncompressed_offset"], ix.entries()[2].data_offset);
    assert_eq!(files[2]["mod_time"], "2020-09-13T12:26:41Z");
    assert_eq!(files.last().unwrap()["linkname"], "file1");
    let info = &json["compression_info"];
    let spans = info["span_digests"].as_array().unwrap();
    assert!(spans.len() >= 3, "{} spans", spans.len());
    assert_eq!(info["max_span_id"], spans.len() as u64 - 1);
    assert_eq!(
        info["checkpoints"].as_array().unwrap().len(),
        12 + spans.len() * (17 + 32768),
        "zinfo v2: a header and every checkpoint"
    );

    // ... and encodes it again its own way (other layout, every field
    // written), which ours reads back to the same index.
    flatc(&["--binary", "-o", "bin"], &["json/ours.json"], dir.path());
    let theirs = std::fs::read(dir.path().join("bin/ours.bin")).unwrap();
    assert_ne!(theirs, ours, "flatc lays the buffer out differently");
    let index = |bytes: &[u8]| {
        ocidisk::toc::ztoc::parse(ix.layer(), bytes)
            .unwrap()
            .into_index(ix.layer(), ix.diff_id(), gz.len() as u64)
            .unwrap()
    };
    let (a, b) = (index(&ours), index(&theirs));
    assert_eq!(a, b);
    assert_eq!(a.entries(), ix.entries());
    for i in 0..b.spans().len() {
        let f = b.span_fetch(i, gz.len() as u64);
        let (s, e) = b.span_range(i);
        let got = b
            .decode_spans(i, &gz[f.start as usize..f.end as usize])
            .unwrap();
        assert_eq!(got[0].1, &tar[s as usize..e as usize]);
    }
}

/// The Debian image in a fresh registry with its SOCI index pushed by
/// `ocidisk index push`.
struct Published {
    reg: Registry,
    layout: std::path::PathBuf,
    /// The index push's JSON report.
    report: serde_json::Value,
    /// Compressed size of the image's layers.
    layers_size: u64,
}

fn published() -> Published {
    let reg = Registry::start();
    let layout = debian::layout();
    let r = debian::push(&reg, &layout);
    let out = Ocidisk::new().ok(&["index", "push", "--json", &r]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let layers_size = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["layer_size"].as_u64().unwrap())
        .sum();
    Published {
        reg,
        layout,
        report,
        layers_size,
    }
}

/// `serve --read-only FLAGS` of `via` (through `proxy`) from an empty
/// cache is ready before 5% of the image crossed the proxy; the bytes.
fn assert_ready_from_a_few_percent(
    p: &Published,
    proxy: &FaultProxy,
    via: &str,
    flags: &[&str],
) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let before = proxy.bytes_down();
    let mut args = vec!["--read-only"];
    args.extend_from_slice(flags);
    let mut served = Served::start(&Ocidisk::new(), via, &dir.path().join("s.sock"), &args);
    let to_ready = proxy.bytes_down() - before;
    served.stop();
    assert!(
        (to_ready as f64) < 0.05 * p.layers_size as f64,
        "ready after {to_ready} bytes of a {} byte image",
        p.layers_size
    );
    to_ready
}

fn sha256_file(path: &Path) -> String {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

#[test]
fn a_pushed_index_starts_a_fresh_host_from_a_few_percent_and_serves_what_materialize_writes() {
    let p = published();
    let ztocs: Vec<&serde_json::Value> = p.report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["ztoc"].is_string())
        .collect();
    assert!(!ztocs.is_empty(), "no zTOC pushed: {}", p.report);
    // Listed where a registry without the referrers API lists referrers.
    let tag = p.report["referrers_tag"].as_str().unwrap();
    let listed = p.reg.curl(&[
        "-H",
        "Accept: application/vnd.oci.image.index.v1+json",
        &format!("{}/v2/debian/manifests/{tag}", p.reg.url()),
    ]);
    assert!(listed.success(), "{}", listed.stderr);
    let index = p.report["index"].as_str().unwrap();
    assert!(listed.stdout.contains(index), "{}", listed.stdout);
    assert!(
        listed
            .stdout
            .contains("application/vnd.amazon.soci.index.v1+json")
    );
    // Pushing again pushes the same digests (deterministic) and lists once.
    let again: serde_json::Value = serde_json::from_str(&Ocidisk::new().ok(&[
        "index",
        "push",
        "--json",
        &format!("{}/debian:bookworm", p.reg.host()),
    ]))
    .unwrap();
    assert_eq!(again["index"], p.report["index"]);
    let relisted = p.reg.curl(&[
        "-H",
        "Accept: application/vnd.oci.image.index.v1+json",
        &format!("{}/v2/debian/manifests/{tag}", p.reg.url()),
    ]);
    assert_eq!(relisted.stdout.matches(index).count(), 1);

    let want_dir = tempfile::tempdir().unwrap();
    let want = want_dir.path().join("m.img");
    let r = format!("{}/debian:bookworm", p.reg.host());
    Ocidisk::new().ok(&["materialize", "--read-only", &r, want.to_str().unwrap()]);

    // serve on a fresh host: ready after the index, not the layers.
    let proxy = FaultProxy::start(&p.reg.host());
    let via = format!("{}/debian:bookworm", proxy.host());
    let to_ready = assert_ready_from_a_few_percent(&p, &proxy, &via, &["--soci-v1"]);
    eprintln!(
        "serve --soci-v1 ready after {to_ready} bytes ({:.2}% of {})",
        100.0 * to_ready as f64 / p.layers_size as f64,
        p.layers_size
    );

    // Not asked to trust referrers: the index is ignored, layers stream.
    let proxy2 = FaultProxy::start(&p.reg.host());
    let o2 = Ocidisk::new();
    let mut plain = Served::start(
        &o2,
        &format!("{}/debian:bookworm", proxy2.host()),
        &want_dir.path().join("s2.sock"),
        &["--read-only"],
    );
    plain.stop();
    assert!(
        proxy2.bytes_down() >= p.layers_size,
        "without --soci-v1 the layers stream: {} of {}",
        proxy2.bytes_down(),
        p.layers_size
    );

    // ocidisk mount from the index shows exactly what materialize wrote.
    let o4 = Ocidisk::new();
    let at = want_dir.path().join("mounted.img");
    std::fs::write(&at, b"").unwrap();
    let m = common::mount::MountProc::start(&o4, &via, &at, &["--read-only", "--soci-v1"]);
    assert_eq!(sha256_file(&m.image), sha256_file(&want), "mount --soci-v1");
    assert_eq!(m.stop(), Some(0));

    // The lazy disk from the index reads exactly what materialize wrote,
    // and that filesystem is the tar extraction of the layers.
    let o3 = Ocidisk::new();
    let cache = BlobCache::open(o3.cache_dir()).unwrap();
    let mut opts = disk_options(&via, true);
    opts.pull.soci_v1 = true;
    let before = proxy.bytes_down();
    let disk = Disk::open(&opts, &cache).unwrap();
    assert!(proxy.bytes_down() - before < p.layers_size / 20);
    let got = want_dir.path().join("lazy.img");
    common::lazy::dump(&disk, &got);
    assert_eq!(
        sha256_file(&got),
        sha256_file(&want),
        "lazy disk from the SOCI index"
    );
    debian::assert_equals_tar_extraction(&p.layout, &got, None);
    // The re-derivation in the background finds the index honest, and
    // the disk keeps serving.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !disk.toc_held() {
        assert!(
            std::time::Instant::now() < deadline,
            "the index was never re-derived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    disk.read_at(0, &mut [0u8; 4096]).unwrap();
}

/// The Debian image pushed to `repo`, with a SOCI index made from its
/// layer by `lie` (which may change the layer's index before the zTOC is
/// built, or the zTOC bytes after) pushed beside it as its only referrer.
fn push_lying_index(
    reg: &Registry,
    layout: &Path,
    repo: &str,
    lie: &dyn Fn(ocidisk::layer_index::LayerIndex) -> ocidisk::layer_index::LayerIndex,
    lie_bytes: &dyn Fn(Vec<u8>) -> Vec<u8>,
) -> String {
    use ocidisk::source::manifest::Descriptor;
    use ocidisk::toc::soci;
    reg.push(
        &format!("oci:{}:bookworm", layout.display()),
        &format!("{repo}:bookworm"),
        false,
    );
    let manifest = reg.curl(&[
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &format!("{}/v2/{repo}/manifests/bookworm", reg.url()),
    ]);
    let m: serde_json::Value = serde_json::from_str(&manifest.stdout).unwrap();
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::imagegen::blob_path(
            layout,
            m["config"]["digest"].as_str().unwrap(),
        ))
        .unwrap(),
    )
    .unwrap();
    let subject = Descriptor {
        media_type: soci::OCI_MANIFEST.into(),
        digest: Digest::sha256_of(manifest.stdout.as_bytes()),
        size: manifest.stdout.len() as u64,
        platform: None,
        annotations: None,
        urls: None,
    };
    let work = tempfile::tempdir().unwrap();
    let mut entries = Vec::new();
    for (i, l) in m["layers"].as_array().unwrap().iter().enumerate() {
        let layer: Descriptor = serde_json::from_value(l.clone()).unwrap();
        let blob = common::imagegen::blob_path(layout, &layer.digest.to_string());
        let diff_id: Digest = config["rootfs"]["diff_ids"][i]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let ix =
            ocidisk::layer_index::index_blob(&blob, &layer.digest, &diff_id, Compression::Gzip)
                .unwrap();
        let f = std::fs::File::open(&blob).unwrap();
        let z = ocidisk::toc::ztoc::build(&lie(ix), &f, layer.size, 4 << 20, "liar").unwrap();
        let z = lie_bytes(z);
        let digest = Digest::sha256_of(&z);
        let path = work.path().join(format!("ztoc{i}"));
        std::fs::write(&path, &z).unwrap();
        reg.upload_blob(repo, &digest.to_string(), &path);
        entries.push(soci::ZtocEntry {
            digest,
            size: z.len() as u64,
            layer,
            span_size: 4 << 20,
        });
    }
    let cfg = work.path().join("config");
    std::fs::write(&cfg, soci::EMPTY_CONFIG).unwrap();
    reg.upload_blob(
        repo,
        &Digest::sha256_of(soci::EMPTY_CONFIG).to_string(),
        &cfg,
    );
    let index = soci::index_manifest(&subject, &entries, "liar");
    let index_digest = Digest::sha256_of(&index);
    reg.put_manifest(repo, &index_digest.to_string(), soci::OCI_MANIFEST, &index);
    let referrers = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": soci::OCI_MANIFEST,
            "digest": index_digest.to_string(),
            "size": index.len(),
            "artifactType": soci::ARTIFACT_TYPE_V1,
        }],
    });
    reg.put_manifest(
        repo,
        &ocidisk::source::registry::referrers_tag(&subject.digest),
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&referrers).unwrap(),
    );
    format!("{}/{repo}:bookworm", reg.host())
}

/// Read the whole disk in 1 MiB pieces: every piece that reads must
/// equal `want`'s; returns how many failed.
fn read_all_checked(disk: &Disk, want: &Path) -> usize {
    common::lazy::failed_reads(disk, &std::fs::read(want).unwrap(), 1 << 20)
}

/// The disk withdraws itself within two minutes, naming why.
fn assert_withdrawn(disk: &Disk, why: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        match disk.read_at(0, &mut [0u8; 512]) {
            Err(e) if e.to_string().contains("withdrawn") => {
                assert!(e.to_string().contains(why), "{e}");
                return;
            }
            _ if std::time::Instant::now() > deadline => {
                panic!("the disk still serves after a lying index was re-derived")
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn lying_indexes_fail_reads_or_withdraw_the_disk() {
    let reg = Registry::start();
    let layout = debian::layout();
    let r = debian::push(&reg, &layout);
    let want_dir = tempfile::tempdir().unwrap();
    let want = want_dir.path().join("m.img");
    Ocidisk::new().ok(&["materialize", "--read-only", &r, want.to_str().unwrap()]);
    let open = |reference: &str| {
        let o = Ocidisk::new();
        let cache = BlobCache::open(o.cache_dir()).unwrap();
        let mut opts = disk_options(reference, true);
        opts.pull.soci_v1 = true;
        (Disk::open(&opts, &cache).unwrap(), o)
    };
    let same = |ix| ix;
    let keep = |z| z;

    // A span digest that does not match the blob: reads of that span fail,
    // no read returns other bytes, and the re-derivation withdraws the disk.
    let wrong_digest = |mut z: Vec<u8>| {
        let at = z
            .windows(7)
            .enumerate()
            .filter(|(_, w)| *w == b"sha256:")
            .nth(1)
            .map(|(i, _)| i + 7)
            .expect("a second span digest");
        z[at] = if z[at] == b'0' { b'1' } else { b'0' };
        z
    };
    let (disk, _o) = open(&push_lying_index(
        &reg,
        &layout,
        "digest",
        &same,
        &wrong_digest,
    ));
    assert!(
        read_all_checked(&disk, &want) > 0,
        "the tampered span was read"
    );
    assert_withdrawn(&disk, "span 1");

    // A file's data offset moved by a byte, spans intact: the
    // re-derivation finds the entries differ.
    let moved = |ix: ocidisk::layer_index::LayerIndex| {
        let mut entries = ix.entries().to_vec();
        let f = entries
            .iter_mut()
            .find(|e| e.kind == ocidisk::tar::EntryKind::File && e.size > 4096)
            .unwrap();
        f.data_offset += 1;
        ocidisk::layer_index::LayerIndex::new(
            ix.layer().clone(),
            ix.diff_id().clone(),
            ix.tar_size(),
            entries,
            ix.access().clone(),
            ix.spans().to_vec(),
        )
        .unwrap()
    };
    let (disk, _o) = open(&push_lying_index(&reg, &layout, "offsets", &moved, &keep));
    assert_withdrawn(&disk, "entries differ");

    // Checkpoint windows that are not the stream's: the compressed ranges
    // still match their digests, but they decode to other bytes.
    let windows = |ix: ocidisk::layer_index::LayerIndex| {
        let ocidisk::layer_index::Access::Gzip(cps) = ix.access() else {
            panic!("gzip")
        };
        let forged = cps
            .iter()
            .map(|c| {
                ocidisk::layer_index::gzip::Checkpoint::new(
                    c.compressed,
                    c.bits,
                    c.uncompressed,
                    &[b'x'; 32768],
                )
            })
            .collect();
        ocidisk::layer_index::LayerIndex::new(
            ix.layer().clone(),
            ix.diff_id().clone(),
            ix.tar_size(),
            ix.entries().to_vec(),
            ocidisk::layer_index::Access::Gzip(forged),
            ix.spans().to_vec(),
        )
        .unwrap()
    };
    let (disk, _o) = open(&push_lying_index(&reg, &layout, "windows", &windows, &keep));
    assert_withdrawn(&disk, "decodes to other bytes");
}

#[test]
fn a_soci_v2_index_the_manifest_names_is_used_without_asking() {
    let p = published();
    let get = |what: &str, accept: &str| {
        let out = p.reg.curl(&[
            "-H",
            &format!("Accept: {accept}"),
            &format!("{}/v2/debian/manifests/{what}", p.reg.url()),
        ]);
        assert!(out.success(), "{}", out.stderr);
        out.stdout
    };
    // soci convert's shape, built here from the v1 index: the same zTOCs
    // under a v2 config and no subject, named by an annotation in a new
    // image manifest.
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let mut index: serde_json::Value =
        serde_json::from_str(&get(p.report["index"].as_str().unwrap(), oci)).unwrap();
    index["config"]["mediaType"] = "application/vnd.amazon.soci.index.v2+json".into();
    index.as_object_mut().unwrap().remove("subject");
    let index = serde_json::to_vec(&index).unwrap();
    let index_digest = Digest::sha256_of(&index).to_string();
    p.reg.put_manifest("debian", &index_digest, oci, &index);
    let mut image: serde_json::Value = serde_json::from_str(&get("bookworm", oci)).unwrap();
    image["annotations"] = serde_json::json!({ "com.amazon.soci.index-digest": index_digest });
    p.reg
        .put_manifest("debian", "soci", oci, &serde_json::to_vec(&image).unwrap());

    let proxy = FaultProxy::start(&p.reg.host());
    let via = format!("{}/debian:soci", proxy.host());
    let dir = tempfile::tempdir().unwrap();
    assert_ready_from_a_few_percent(&p, &proxy, &via, &[]);

    // What it serves is what materialize writes; the manifest vouches for
    // the index, so nothing streams in the background to re-derive it.
    let want = dir.path().join("m.img");
    Ocidisk::new().ok(&["materialize", "--read-only", &via, want.to_str().unwrap()]);
    let o = Ocidisk::new();
    let cache = BlobCache::open(o.cache_dir()).unwrap();
    let before = proxy.bytes_down();
    let disk = Disk::open(&disk_options(&via, true), &cache).unwrap();
    assert!(proxy.bytes_down() - before < p.layers_size / 20);
    assert_eq!(read_all_checked(&disk, &want), 0);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!disk.toc_held(), "a v2 index is not re-derived");
    assert!(
        !o.cached_blobs()
            .iter()
            .any(|b| std::fs::metadata(o.cached_blob_path(b)).unwrap().len() > 1 << 20),
        "no layer blob fetched in the background"
    );
}

#[test]
fn serve_push_index_publishes_what_the_next_host_starts_from() {
    let reg = Registry::start();
    let layout = debian::layout();
    let r = debian::push(&reg, &layout);
    let dir = tempfile::tempdir().unwrap();
    let home = Ocidisk::new();
    let mut first = Served::start(
        &home,
        &r,
        &dir.path().join("a.sock"),
        &["--read-only", "--push-index"],
    );
    // The index appears beside the image while the first host serves.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let listed = loop {
        let tags = reg.curl(&[&format!("{}/v2/debian/tags/list", reg.url())]);
        if tags.stdout.contains("sha256-") {
            break tags.stdout;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no referrers tag after 2 minutes; serve said:\n{}",
            first.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(first.running(), "serve stopped while pushing: {listed}");
    first.stop();
    let p = Published {
        report: serde_json::Value::Null,
        layers_size: std::fs::metadata(common::imagegen::blob_path(
            &layout,
            &layer_digest(&layout),
        ))
        .unwrap()
        .len(),
        layout,
        reg,
    };
    let proxy = FaultProxy::start(&p.reg.host());
    assert_ready_from_a_few_percent(
        &p,
        &proxy,
        &format!("{}/debian:bookworm", proxy.host()),
        &["--soci-v1"],
    );
}

/// The Debian layout's one layer.
fn layer_digest(layout: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::imagegen::blob_path(
            layout,
            index["manifests"][0]["digest"].as_str().unwrap(),
        ))
        .unwrap(),
    )
    .unwrap();
    m["layers"][0]["digest"].as_str().unwrap().to_string()
}
