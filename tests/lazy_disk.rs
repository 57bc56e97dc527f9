//! The lazy disk against `materialize`'s output and a real registry: the same
//! bytes for any read, no layer bytes to open once indexes are cached, a
//! span or two to read one file, tampering caught, outages survived.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::cli::{Ocidisk, corrupt_file};
use common::imagegen::{self, Compression};
use common::lazy::disk_options;
use common::registry::{Registry, run_ok};
use ocidisk::BlobCache;
use ocidisk::disk::{Disk, DiskOptions};
use ocidisk::source::registry::RetryPolicy;

fn options(location: &str) -> DiskOptions {
    disk_options(location, true)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn assert_same_bytes(disk: &Disk, img: &[u8], random_reads: usize, seed: u64) {
    assert_eq!(disk.size(), img.len() as u64);
    let mut rng = Rng(seed);
    let mut buf = vec![0u8; 300_000];
    for i in 0..random_reads {
        let len = 1 + (rng.next() % buf.len() as u64) as usize;
        let off = rng.next() % (img.len() as u64 - len as u64);
        let want = &img[off as usize..off as usize + len];
        if i % 2 == 0 {
            disk.read_at(off, &mut buf[..len]).unwrap();
            assert!(buf[..len] == *want, "read of {len} at {off} differs");
        } else {
            assert!(
                read_with(disk, off, len) == want,
                "read_with of {len} at {off} differs"
            );
        }
    }
}

/// The bytes `Disk::read_with` hands out, collected.
fn read_with(disk: &Disk, off: u64, len: usize) -> Vec<u8> {
    let mut got = Vec::with_capacity(len);
    disk.read_with(off, len, &mut |piece| {
        got.extend_from_slice(piece);
        Ok(())
    })
    .unwrap();
    got
}

#[test]
fn reads_equal_the_materialized_image_cold_and_warm() {
    for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let dir = tempfile::tempdir().unwrap();
        imagegen::write_standard(dir.path(), "v1", c);
        let r = format!("oci:{}:v1", dir.path().display());
        let img_path = dir.path().join("m.img");
        Ocidisk::new().ok(&["materialize", "--read-only", &r, img_path.to_str().unwrap()]);
        let img = std::fs::read(&img_path).unwrap();

        let o = Ocidisk::new();
        let cache = BlobCache::open(o.cache_dir()).unwrap();
        let disk = Disk::open(&options(&r), &cache).unwrap();
        // Every byte, sequentially, then random reads.
        let mut whole = vec![0u8; img.len()];
        for (i, chunk) in whole.chunks_mut(1 << 20).enumerate() {
            disk.read_at((i as u64) << 20, chunk).unwrap();
        }
        assert!(whole == img, "{c:?}: sequential read differs");
        assert!(
            read_with(&disk, 0, img.len()) == img,
            "{c:?}: read_with differs"
        );
        assert_same_bytes(&disk, &img, 300, 0x1234 + c as u64);
        let err = disk.read_at(disk.size() - 10, &mut [0u8; 20]).unwrap_err();
        assert!(err.to_string().contains("beyond"), "{err}");
        assert!(
            !o.cached_blobs()
                .iter()
                .any(|b| std::fs::metadata(o.cached_blob_path(b)).unwrap().len() > 100_000),
            "{c:?}: the cold pass keeps no layer blob"
        );

        // Warm: indexes are cached now.
        let disk = Disk::open(&options(&r), &cache).unwrap();
        assert_same_bytes(&disk, &img, 200, 0x9876 + c as u64);
    }
}

/// A standard image pushed to a fresh registry, materialize's image of it
/// (the bytes a disk must serve) and an empty ocidisk cache.
struct Served {
    reg: Registry,
    dir: tempfile::TempDir,
    built: imagegen::BuiltImage,
    /// The registry reference.
    r: String,
    want: Vec<u8>,
    /// Owns the cache directory for as long as the fixture lives.
    _home: Ocidisk,
    cache: BlobCache,
}

fn served(c: Compression, repo: &str, read_only: bool) -> Served {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let built = imagegen::write_standard(dir.path(), "v1", c);
    let layout = format!("oci:{}:v1", dir.path().display());
    reg.push(&layout, &format!("{repo}:v1"), false);
    let r = format!("{}/{repo}:v1", reg.host());
    let reference = dir.path().join("reference.img");
    let mut args = vec!["materialize"];
    if read_only {
        args.push("--read-only");
    }
    args.extend([layout.as_str(), reference.to_str().unwrap()]);
    Ocidisk::new().ok(&args);
    let want = std::fs::read(&reference).unwrap();
    let o = Ocidisk::new();
    let cache = BlobCache::open(o.cache_dir()).unwrap();
    Served {
        reg,
        dir,
        built,
        r,
        want,
        _home: o,
        cache,
    }
}

/// Device block numbers of a file, from debugfs on a materialized copy.
fn file_blocks(img: &Path, path: &str) -> Vec<u64> {
    let out = run_ok(
        Command::new("debugfs")
            .args(["-R", &format!("blocks {path}")])
            .arg(img),
        Duration::from_secs(60),
    );
    out.stdout
        .split_whitespace()
        .map(|b| b.parse().unwrap())
        .collect()
}

#[test]
fn opening_transfers_no_layer_bytes_and_a_file_costs_a_span() {
    let layout = run_ok(
        Command::new("bash").arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/debian-image.sh"
        )),
        Duration::from_secs(900),
    );
    let layout = layout.stdout.trim().to_string();
    let reg = Registry::start();
    reg.push(&format!("oci:{layout}:bookworm"), "debian:bookworm", false);
    let r = format!("{}/debian:bookworm", reg.host());
    let work = tempfile::tempdir().unwrap();
    let img_path = work.path().join("m.img");
    // The reference image, built from the layout (not the registry).
    Ocidisk::new().ok(&[
        "materialize",
        "--read-only",
        &format!("oci:{layout}:bookworm"),
        img_path.to_str().unwrap(),
    ]);
    let img = std::fs::read(&img_path).unwrap();
    let layer_size: u64 = std::fs::read_dir(format!("{layout}/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .max()
        .unwrap();

    let o = Ocidisk::new();
    let cache = BlobCache::open(o.cache_dir()).unwrap();
    drop(Disk::open(&options(&r), &cache).unwrap()); // cold: indexes the layer once

    let n = reg.requests().len();
    let disk = Disk::open(&options(&r), &cache).unwrap();
    let opened: Vec<_> = reg.requests()[n..]
        .iter()
        .filter(|q| q.is_blob_fetch())
        .cloned()
        .collect();
    assert!(
        opened.is_empty(),
        "opening with cached indexes fetched blobs: {opened:?}"
    );
    assert_eq!(
        disk.stats()
            .bytes_fetched
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    let n = reg.requests().len();
    for path in ["/usr/lib/os-release", "/usr/bin/dash"] {
        for b in file_blocks(&img_path, path) {
            let mut buf = vec![0u8; 4096];
            disk.read_at(b * 4096, &mut buf).unwrap();
            assert!(
                buf == img[(b * 4096) as usize..][..4096],
                "{path} block {b}"
            );
        }
    }
    let reads: Vec<_> = reg.requests()[n..]
        .iter()
        .filter(|q| q.is_blob_fetch())
        .cloned()
        .collect();
    assert!(!reads.is_empty());
    assert!(
        reads.iter().all(|q| q.status == 206),
        "range requests only: {reads:?}"
    );
    let bytes: u64 = reads.iter().map(|q| q.bytes).sum();
    assert!(
        bytes < layer_size / 20,
        "reading two files fetched {bytes} of {layer_size} bytes"
    );
    eprintln!(
        "two files: {} range requests, {bytes} bytes of a {layer_size}-byte layer",
        reads.len()
    );
}

#[test]
fn tampered_registry_blob_fails_reads_but_never_returns_wrong_bytes() {
    let f = served(Compression::Gzip, "tamper", true);
    drop(Disk::open(&options(&f.r), &f.cache).unwrap()); // index the genuine layers
    let big = f.built.layers.iter().max_by_key(|l| l.size).unwrap();
    corrupt_file(&f.reg.blob_data_path(&big.digest));

    let disk = Disk::open(&options(&f.r), &f.cache).unwrap();
    let mut failures = 0;
    let mut buf = vec![0u8; 1 << 20];
    for (i, want) in f.want.chunks(1 << 20).enumerate() {
        match disk.read_at((i as u64) << 20, &mut buf[..want.len()]) {
            Ok(()) => assert!(&buf[..want.len()] == want, "chunk {i} returned wrong bytes"),
            Err(e) => {
                failures += 1;
                assert!(
                    e.to_string().contains(&big.digest) || e.to_string().contains("span"),
                    "{e}"
                );
            }
        }
    }
    assert!(failures > 0, "the tampered span must fail");
}

#[test]
fn registry_outage_gives_io_errors_then_recovers() {
    // gzip: its spans come from the registry (zstd spans would be kept on disk).
    let mut f = served(Compression::Gzip, "flaky", true);
    let mut opts = options(&f.r);
    opts.pull.source.registry.retry = RetryPolicy {
        attempts: 2,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(100),
        max_total: Duration::from_secs(5),
        ..RetryPolicy::default()
    };
    let disk = Disk::open(&opts, &f.cache).unwrap();
    f.reg.stop();
    let t = std::time::Instant::now();
    let mut buf = vec![0u8; f.want.len()];
    let err = disk.read_at(0, &mut buf).unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "a read must not hang: {:?}",
        t.elapsed()
    );
    assert!(err.to_string().contains("unreachable"), "{err}");
    f.reg.restart();
    disk.read_at(0, &mut buf).unwrap();
    assert!(buf == f.want, "after the registry is back, reads succeed");
}

#[test]
fn overlay_writes_survive_kill_9_once_flushed() {
    let a_at = |size: u64| size - (8 << 20) + 100; // unaligned, in free space
    let b_at = |size: u64| size - (4 << 20);
    if let Ok(work) = std::env::var("OCIDISK_OVERLAY_CHILD") {
        // The child: write A, flush, write B (never flushed), then wait to be killed.
        let work = std::path::PathBuf::from(work);
        let cache = BlobCache::open(work.join("cache")).unwrap();
        let mut opts = options(&format!("oci:{}:v1", work.join("layout").display()));
        opts.fs.read_only = false;
        opts.overlay = Some(work.join("overlay"));
        let disk = Disk::open(&opts, &cache).unwrap();
        disk.write_at(a_at(disk.size()), &[0xa5; 10_000]).unwrap();
        disk.flush().unwrap();
        disk.write_at(b_at(disk.size()), &[0x5b; 8192]).unwrap();
        println!("OVERLAY-FLUSHED");
        std::thread::sleep(Duration::from_secs(120));
        return;
    }
    let work = tempfile::tempdir().unwrap();
    imagegen::write_standard(&work.path().join("layout"), "v1", Compression::Gzip);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "overlay_writes_survive_kill_9_once_flushed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("OCIDISK_OVERLAY_CHILD", work.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut line = String::new();
    loop {
        line.clear();
        use std::io::BufRead;
        assert!(out.read_line(&mut line).unwrap() > 0, "child exited early");
        if line.contains("OVERLAY-FLUSHED") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "child never flushed");
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let cache = BlobCache::open(work.path().join("cache")).unwrap();
    let mut opts = options(&format!("oci:{}:v1", work.path().join("layout").display()));
    opts.fs.read_only = false;
    opts.overlay = Some(work.path().join("overlay"));
    let disk = Disk::open(&opts, &cache).unwrap();
    let mut buf = vec![0u8; 10_000];
    disk.read_at(a_at(disk.size()), &mut buf).unwrap();
    assert!(
        buf.iter().all(|b| *b == 0xa5),
        "flushed write lost after kill -9"
    );
    // The rest of the device is the image as materialize writes it.
    let img_path = work.path().join("rw.img");
    Ocidisk::new().ok(&[
        "materialize",
        &format!("oci:{}:v1", work.path().join("layout").display()),
        img_path.to_str().unwrap(),
    ]);
    let img = std::fs::read(&img_path).unwrap();
    let mut head = vec![0u8; 8 << 20];
    disk.read_at(0, &mut head).unwrap();
    assert!(
        head == img[..8 << 20],
        "the base image under the overlay changed"
    );
    // Writes on a read-only disk are refused.
    let ro = Disk::open(
        &options(&format!("oci:{}:v1", work.path().join("layout").display())),
        &cache,
    )
    .unwrap();
    assert!(
        ro.write_at(0, &[1])
            .unwrap_err()
            .to_string()
            .contains("read-only")
    );
}

#[test]
fn random_writes_and_zeroes_read_back_over_the_image() {
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(dir.path(), "v1", Compression::Zstd);
    let r = format!("oci:{}:v1", dir.path().display());
    let img_path = dir.path().join("rw.img");
    Ocidisk::new().ok(&["materialize", &r, img_path.to_str().unwrap()]);
    const REGION: usize = 32 << 20;
    let mut shadow = std::fs::read(&img_path).unwrap()[..REGION].to_vec();
    let o = Ocidisk::new();
    let cache = BlobCache::open(o.cache_dir()).unwrap();
    let mut opts = options(&r);
    opts.fs.read_only = false;
    let disk = Disk::open(&opts, &cache).unwrap();
    let mut rng = Rng(0xfeed);
    for i in 0..300 {
        let len = 1 + (rng.next() % 20_000) as usize;
        let off = (rng.next() % (REGION - len) as u64) as usize;
        if i % 10 == 0 {
            disk.write_zeroes(off as u64, len as u64).unwrap();
            shadow[off..off + len].fill(0);
        } else {
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            disk.write_at(off as u64, &data).unwrap();
            shadow[off..off + len].copy_from_slice(&data);
        }
    }
    let mut got = vec![0u8; REGION];
    disk.read_at(0, &mut got).unwrap();
    assert!(
        got == shadow,
        "device differs from the shadow copy after random writes"
    );
    // read_with hands out the same bytes, over overlay blocks or not.
    assert!(read_with(&disk, 0, REGION) == shadow);
    for _ in 0..200 {
        let len = 1 + (rng.next() % 300_000) as usize;
        let off = (rng.next() % (REGION - len) as u64) as usize;
        assert!(read_with(&disk, off as u64, len) == shadow[off..off + len]);
    }
    assert!(
        disk.write_at(disk.size() - 1, &[1, 2]).is_err(),
        "a write past the end is refused"
    );
}

#[test]
fn zeroing_whole_blocks_costs_no_overlay_space() {
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(dir.path(), "v1", Compression::Gzip);
    let r = format!("oci:{}:v1", dir.path().display());
    let o = Ocidisk::new();
    let cache = BlobCache::open(o.cache_dir()).unwrap();
    let mut opts = options(&r);
    opts.fs.read_only = false;
    let overlay = dir.path().join("overlay");
    opts.overlay = Some(overlay.clone());
    let disk = Disk::open(&opts, &cache).unwrap();
    let allocated = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&overlay).unwrap().blocks() * 512
    };
    // Fill 8 MiB with data, then zero 64 MiB around it (unaligned ends).
    disk.write_at(1 << 20, &vec![0xeeu8; 8 << 20]).unwrap();
    assert!(allocated() >= 8 << 20);
    let (off, len) = (4095u64, (64u64 << 20) + 3);
    disk.write_zeroes(off, len).unwrap();
    assert!(
        allocated() < 1 << 20,
        "zeroed whole blocks still take {} bytes",
        allocated()
    );
    let got = read_with(&disk, off, len as usize);
    assert!(got.iter().all(|&b| b == 0));
    // The bytes just outside the range are untouched.
    let mut edge = [0u8; 2];
    disk.read_at(off - 1, &mut edge[..1]).unwrap();
    disk.read_at(off + len, &mut edge[1..]).unwrap();
    let mut want = [0u8; 2];
    let img_path = dir.path().join("rw.img");
    o.ok(&["materialize", &r, img_path.to_str().unwrap()]);
    let img = std::fs::read(&img_path).unwrap();
    want[0] = img[off as usize - 1];
    want[1] = img[(off + len) as usize];
    assert_eq!(edge, want);
    // And it all survives a flush and reopen.
    disk.flush().unwrap();
    drop(disk);
    let disk = Disk::open(&opts, &cache).unwrap();
    assert!(read_with(&disk, off, len as usize).iter().all(|&b| b == 0));
}

#[test]
fn chunk_store_serves_a_new_disk_without_the_registry() {
    let f = served(Compression::Gzip, "chunks", true);
    let disk = Disk::open(&options(&f.r), &f.cache).unwrap();
    let mut first = vec![0u8; disk.size() as usize];
    disk.read_at(0, &mut first).unwrap();
    assert!(first == f.want);
    assert!(
        disk.stats()
            .spans_fetched
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    drop(disk);

    let n = f.reg.requests().len();
    let disk = Disk::open(&options(&f.r), &f.cache).unwrap();
    let mut again = vec![0u8; disk.size() as usize];
    disk.read_at(0, &mut again).unwrap();
    assert!(again == f.want);
    assert_from_chunk_store(
        &f,
        &disk,
        n,
        "the chunk store should have served every span",
    );
}

#[test]
fn prefetch_frees_the_disk_from_the_registry_and_flush_to_keeps_a_full_image() {
    let f = served(Compression::Gzip, "pre", false);
    let (mut reg, dir, cache) = (f.reg, f.dir, f.cache);
    let mut want = f.want;
    let flushed = dir.path().join("flushed.img");
    let mut opts = options(&f.r);
    opts.fs.read_only = false;
    opts.prefetch = true;
    opts.flush_to = Some(flushed.clone());
    opts.overlay = Some(dir.path().join("overlay"));
    opts.pull.source.registry.retry = RetryPolicy {
        attempts: 2,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(100),
        max_total: Duration::from_secs(5),
        ..RetryPolicy::default()
    };
    let disk = Disk::open(&opts, &cache).unwrap();
    disk.wait_prefetch();
    assert!(
        disk.flush_to_complete(),
        "after prefetch every span has arrived"
    );
    assert!(
        std::fs::read(&flushed).unwrap() == want,
        "flush-to image differs from materialize's"
    );

    // A guest write lands in the flushed image on flush.
    let at = want.len() - (3 << 20) + 7;
    disk.write_at(at as u64, b"guest was here").unwrap();
    disk.flush().unwrap();
    want[at..at + 14].copy_from_slice(b"guest was here");
    assert!(
        std::fs::read(&flushed).unwrap() == want,
        "guest write missing from the flush-to image"
    );

    // Independent of the registry now.
    reg.stop();
    let fresh = Disk::open(
        &DiskOptions {
            prefetch: false,
            init: false,
            profile: Default::default(),
            toc_check_delay: std::time::Duration::ZERO,
            flush_to: None,
            flush_format: Default::default(),
            ..opts.clone()
        },
        &cache,
    );
    // Opening needs the manifest (by tag), which the stopped registry cannot give;
    // the running disk needs nothing more:
    assert!(fresh.is_err());
    let mut all = vec![0u8; want.len()];
    disk.read_at(0, &mut all).unwrap();
    assert!(all == want, "reads after prefetch, registry down");
}

#[test]
fn a_registry_that_ignores_range_gets_its_blobs_cached_whole() {
    let f = served(Compression::Gzip, "norange", true);
    let (reg, built, want, cache) = (&f.reg, &f.built, &f.want, &f.cache);
    let proxy = common::proxy::FaultProxy::start(&reg.host());
    proxy.strip_range();
    let r = format!("{}/norange:v1", proxy.host());
    let mut opts = options(&r);
    opts.cache_disk = 0;
    let layer_gets = |from: usize| -> Vec<(String, u16)> {
        reg.requests()[from..]
            .iter()
            .filter(|q| q.is_blob_fetch() && q.method == "GET")
            .filter(|q| {
                built
                    .layers
                    .iter()
                    .any(|l| q.reference() == Some(l.digest.as_str()))
            })
            .map(|q| (q.reference().unwrap().to_string(), q.status))
            .collect()
    };
    let mut after_first = 0;
    for round in 0..2 {
        let disk = Disk::open(&opts, cache).unwrap();
        let mut all = vec![0u8; want.len()];
        for (i, chunk) in all.chunks_mut(1 << 20).enumerate() {
            disk.read_at((i as u64) << 20, chunk).unwrap();
        }
        assert!(
            all == *want,
            "reads through a Range-ignoring registry differ"
        );
        if round == 0 {
            after_first = reg.requests().len();
        }
    }
    let gets = layer_gets(0);
    assert!(gets.iter().all(|(_, s)| *s == 200), "{gets:?}");
    for layer in &built.layers {
        let n = gets.iter().filter(|(d, _)| *d == layer.digest).count();
        // The index pass, at most one Range attempt answered 200 (dropped
        // once seen), and one fill of the cache.
        assert!(n <= 3, "layer {} fetched {n} times", layer.digest);
    }
    assert!(
        layer_gets(after_first).is_empty(),
        "later reads come from the cached blobs"
    );
}

#[test]
fn concurrent_misses_on_one_span_share_one_fetch() {
    let f = served(Compression::Gzip, "together", true);
    // The data block of a small file.
    let block = file_blocks(&f.dir.path().join("reference.img"), "/etc/hostname")[0];
    let want = f.want[(block * 4096) as usize..][..4096].to_vec();
    let mut opts = options(&f.r);
    opts.cache_disk = 0;
    let disk = Disk::open(&opts, &f.cache).unwrap();
    let n = f.reg.requests().len();
    let barrier = std::sync::Barrier::new(8);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                barrier.wait();
                let mut buf = vec![0u8; 4096];
                disk.read_at(block * 4096, &mut buf).unwrap();
                assert_eq!(buf, want);
            });
        }
    });
    let gets = f.reg.requests()[n..]
        .iter()
        .filter(|q| q.is_blob_fetch())
        .count();
    assert_eq!(
        gets, 1,
        "eight concurrent readers of one span caused {gets} fetches"
    );
    assert_eq!(
        disk.stats()
            .spans_fetched
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn single_frame_zstd_layers_keep_their_spans_from_the_first_pass() {
    // The generator writes each zstd layer as one frame: no access point but its start.
    let f = served(Compression::Zstd, "onezstd", true);
    let disk = Disk::open(&options(&f.r), &f.cache).unwrap();
    let n = f.reg.requests().len();
    let mut all = vec![0u8; f.want.len()];
    disk.read_at(0, &mut all).unwrap();
    assert!(all == f.want);
    assert_from_chunk_store(
        &f,
        &disk,
        n,
        "spans should come from the first pass's chunk store",
    );
}

/// No blob was fetched from the registry since request `n`, and the disk
/// answered from its on-disk chunk store.
fn assert_from_chunk_store(f: &Served, disk: &Disk, n: usize, what: &str) {
    let fetched: Vec<_> = f.reg.requests()[n..]
        .iter()
        .filter(|q| q.is_blob_fetch())
        .cloned()
        .collect();
    assert!(fetched.is_empty(), "{what}: {fetched:?}");
    assert!(
        disk.stats()
            .chunk_hits
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}

#[test]
fn a_qcow2_flush_to_completes_and_takes_later_guest_writes() {
    let f = served(Compression::Zstd, "preq", false);
    let (dir, cache) = (&f.dir, &f.cache);
    let mut want = f.want.clone();
    let flushed = dir.path().join("flushed.qcow2");
    let mut opts = options(&f.r);
    opts.fs.read_only = false;
    opts.prefetch = true;
    opts.flush_to = Some(flushed.clone());
    opts.flush_format = ocidisk::image_format::ImageFormat::Qcow2(ocidisk::qcow2::Qcow2Options {
        cluster_bits: 16,
        compression: Some(ocidisk::qcow2::Codec::Zlib),
    });
    opts.overlay = Some(dir.path().join("overlay"));
    let disk = Disk::open(&opts, cache).unwrap();
    disk.wait_prefetch();
    assert!(disk.flush_to_complete());
    let raw = dir.path().join("want.img");
    let check = |want: &[u8], what: &str| {
        std::fs::write(&raw, want).unwrap();
        let out = Command::new("qemu-img")
            .args(["check", flushed.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: qemu-img check: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let out = Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "qcow2"])
            .arg(&raw)
            .arg(&flushed)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    };
    check(&want, "complete");
    // Guest writes after completion: into compressed clusters, across a
    // cluster boundary, into a never-allocated one, zeros over data.
    let size = want.len();
    for (at, bytes) in [
        (7usize, vec![0x5a; 100]),
        (65536 * 3 - 50, vec![0xa5; 200]),
        (size - (3 << 20) + 7, b"guest was here".to_vec()),
        (1024 * 1024, vec![0u8; 8192]),
    ] {
        disk.write_at(at as u64, &bytes).unwrap();
        want[at..at + bytes.len()].copy_from_slice(&bytes);
    }
    disk.flush().unwrap();
    check(&want, "after guest writes");
}

/// Scattered 4 KiB reads over the device, in a fixed shuffled order: a
/// stand-in for a boot touching a few files.
fn boot_like_reads(size: u64) -> Vec<u64> {
    let mut rng = Rng(0x5eed);
    (0..40)
        .map(|_| (rng.next() % (size / 4096)) * 4096)
        .collect()
}

#[test]
fn a_recorded_profile_is_fetched_first_and_in_order_on_a_cold_cache() {
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(dir.path(), "v1", Compression::Gzip);
    let reg = Registry::start();
    reg.push(
        &format!("oci:{}:v1", dir.path().display()),
        "prof:v1",
        false,
    );
    let r = format!("{}/prof:v1", reg.host());
    let img_path = dir.path().join("m.img");
    Ocidisk::new().ok(&["materialize", "--read-only", &r, img_path.to_str().unwrap()]);
    let img = std::fs::read(&img_path).unwrap();
    let reads = boot_like_reads(img.len() as u64);
    let profile = dir.path().join("boot.profile");

    // Record.
    let o = Ocidisk::new();
    let cache = BlobCache::open(o.cache_dir()).unwrap();
    let mut opts = options(&r);
    opts.profile.record = Some(profile.clone());
    let disk = Disk::open(&opts, &cache).unwrap();
    let mut buf = vec![0u8; 4096];
    for &off in &reads {
        disk.read_at(off, &mut buf).unwrap();
        assert!(buf[..] == img[off as usize..off as usize + 4096]);
    }
    let touched = disk.stats().fetch_log.lock().unwrap().clone();
    assert!(
        touched.len() >= 5,
        "the reads touched {} spans",
        touched.len()
    );
    drop(disk); // writes the profile
    let text = std::fs::read_to_string(&profile).unwrap();
    assert!(text.contains("\"layer\": \"sha256:"), "{text}");

    // Replay on an empty cache: the profile's spans arrive first, in its
    // order, before any read; the reads then fetch nothing more.
    let o = Ocidisk::new();
    let cache = BlobCache::open(o.cache_dir()).unwrap();
    let mut opts = options(&r);
    opts.profile.prefetch = Some(profile.clone());
    let disk = Disk::open(&opts, &cache).unwrap();
    disk.wait_prefetch();
    let fetched = disk.stats().fetch_log.lock().unwrap().clone();
    assert_eq!(fetched, touched, "fetch order differs from the profile's");
    for &off in &reads {
        disk.read_at(off, &mut buf).unwrap();
        assert!(buf[..] == img[off as usize..off as usize + 4096]);
    }
    assert_eq!(
        disk.stats().fetch_log.lock().unwrap().len(),
        touched.len(),
        "the reads after the profile fetched more"
    );
    drop(disk);

    // A damaged profile is a clear error, not a silent no-op.
    std::fs::write(&profile, b"{\"version\": 1, \"spans\": 7}").unwrap();
    let err = Disk::open(&opts, &cache)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("prefetch profile") && err.contains("is not valid"),
        "{err}"
    );
}
