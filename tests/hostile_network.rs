//! The lazy disk behind a hostile network: a proxy between ocidisk and the
//! real registry resets connections mid-body, stalls past the read
//! timeout, truncates bodies under a full Content-Length, flips bytes,
//! answers 5xx bursts, sends the whole blob for a Range request, sends a
//! 206 of the wrong bytes, and drips. For every fault, over the whole
//! image: each read returns `materialize`'s bytes or an I/O error within a
//! bounded time, transient faults are absorbed by the retries, and reads
//! succeed again once the fault stops.

mod common;

use std::time::{Duration, Instant};

use common::cli::Ocidisk;
use common::imagegen::{self, Compression};
use common::lazy::disk_options;
use common::proxy::{Fault, FaultProxy};
use common::registry::Registry;
use ocidisk::BlobCache;
use ocidisk::disk::{Disk, DiskOptions};
use ocidisk::source::registry::RetryPolicy;

/// Longest one read may take under any fault.
const READ_BOUND: Duration = Duration::from_secs(20);

fn options(location: &str) -> DiskOptions {
    // Nothing kept: every read goes to the network.
    DiskOptions {
        cache_mem: 0,
        cache_disk: 0,
        ..disk_options(location, true)
    }
}

/// What one pass over the image saw.
#[derive(Debug, Default)]
struct Pass {
    ok: usize,
    failed: usize,
    slowest: Duration,
    first_error: Option<String>,
}

/// Read the whole image in 1 MiB pieces; any piece read must be right.
fn pass(disk: &Disk, want: &[u8], what: &str) -> Pass {
    let mut p = Pass::default();
    let mut buf = vec![0u8; 1 << 20];
    for (i, chunk) in want.chunks(1 << 20).enumerate() {
        let t = Instant::now();
        let r = disk.read_at((i as u64) << 20, &mut buf[..chunk.len()]);
        let took = t.elapsed();
        assert!(took < READ_BOUND, "{what}: read {i} took {took:?}");
        p.slowest = p.slowest.max(took);
        match r {
            Ok(()) => {
                assert!(
                    &buf[..chunk.len()] == chunk,
                    "{what}: read {i} returned wrong bytes"
                );
                p.ok += 1;
            }
            Err(e) => {
                p.failed += 1;
                p.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    p
}

#[test]
fn every_network_fault_gives_right_bytes_or_a_prompt_error_and_recovers() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(dir.path(), "v1", Compression::Gzip);
    let layout = format!("oci:{}:v1", dir.path().display());
    reg.push(&layout, "faults:v1", false);
    let reference = dir.path().join("reference.img");
    Ocidisk::new().ok(&[
        "materialize",
        "--read-only",
        &layout,
        reference.to_str().unwrap(),
    ]);
    let want = std::fs::read(&reference).unwrap();
    let home = Ocidisk::new();
    let cache = BlobCache::open(home.cache_dir()).unwrap();
    // Index the layers once, straight from the registry.
    drop(Disk::open(&options(&format!("{}/faults:v1", reg.host())), &cache).unwrap());

    let proxy = FaultProxy::start(&reg.host());
    let mut opts = options(&format!("{}/faults:v1", proxy.host()));
    opts.pull.source.registry.retry = RetryPolicy {
        attempts: 3,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        max_total: Duration::from_secs(10),
        read_timeout: Duration::from_secs(1),
    };
    // (fault, how many blob GETs get it, whether every read must still
    // succeed). Two faults in a row never exhaust three attempts; a
    // fault that never stops must fail the reads that need the network.
    // `Whole` goes last: it makes the disk cache the blobs whole.
    let matrix = [
        (Fault::Reset, 2, true),
        (Fault::Truncate, 2, true),
        (Fault::Stall(Duration::from_secs(3)), 2, true),
        (Fault::Status(503), 2, true),
        (Fault::Drip, 4, true),
        (Fault::FlipByte, u32::MAX, false),
        (Fault::WrongRange, u32::MAX, false),
        (Fault::Status(500), u32::MAX, false),
        (Fault::Whole, u32::MAX, true),
    ];
    for (fault, count, absorbed) in matrix {
        let what = format!("{fault:?}");
        let disk = Disk::open(&opts, &cache).unwrap();
        let before = proxy.faults_done();
        proxy.set_fault(fault, count);
        let during = pass(&disk, &want, &what);
        proxy.clear_fault();
        let hits = proxy.faults_done() - before;
        eprintln!("{what}: {hits} faulted fetches, {during:?}");
        assert!(hits > 0, "{what}: the fault never happened");
        if absorbed {
            assert_eq!(during.failed, 0, "{what}: {:?}", during.first_error);
        } else {
            assert!(during.failed > 0, "{what}: no read failed");
        }
        let after = pass(&disk, &want, &format!("{what}, after"));
        assert_eq!(
            after.failed, 0,
            "{what}: reads fail after the fault stopped: {:?}",
            after.first_error
        );
    }
}
