//! Lazy-disk benchmark driver (see bench/lazy_disk.sh): time to ready cold
//! and warm, registry bytes to read a set of device blocks, and random 4 KiB
//! reads from the warm in-memory span cache.
//!
//! Usage: lazy_bench REF CACHE_DIR BLOCKS_FILE RUNS

use std::time::Instant;

use ocidisk::disk::{Disk, DiskOptions};
use ocidisk::pull::PullOptions;
use ocidisk::{BlobCache, SourceOptions};

fn options(r: &str) -> DiskOptions {
    DiskOptions {
        pull: PullOptions {
            location: r.parse().expect("image reference"),
            platform: None,
            source: SourceOptions::default(),
            concurrency: 3,
            keep_blobs: false,
            trust: None,
            soci_v1: false,
        },
        fs: ocidisk::fs::FsOptions {
            read_only: true,
            ..Default::default()
        },
        cache_mem: 256 << 20,
        cache_disk: 0,
        overlay: None,
        discard_overlay: false,
        flush_to: None,
        flush_format: Default::default(),
        prefetch: false,
        init: false,
        profile: Default::default(),
        toc_check_delay: std::time::Duration::ZERO,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (r, cache_dir, blocks_file) = (&args[1], std::path::Path::new(&args[2]), &args[3]);
    let runs: usize = args.get(4).map_or(5, |s| s.parse().expect("runs"));
    let blocks: Vec<u64> = std::fs::read_to_string(blocks_file)
        .expect("blocks file")
        .split_whitespace()
        .map(|b| b.parse().expect("block number"))
        .collect();

    let mut cold = Vec::new();
    for _ in 0..runs {
        let _ = std::fs::remove_dir_all(cache_dir);
        let cache = BlobCache::open(cache_dir).expect("cache");
        let t = Instant::now();
        let d = Disk::open(&options(r), &cache).expect("open");
        cold.push(t.elapsed().as_secs_f64());
        drop(d);
    }
    let cache = BlobCache::open(cache_dir).expect("cache");
    let mut warm = Vec::new();
    let mut boot_bytes = 0;
    let mut boot_spans = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let d = Disk::open(&options(r), &cache).expect("open");
        warm.push(t.elapsed().as_secs_f64());
        let mut buf = vec![0u8; 4096];
        for b in &blocks {
            d.read_at(b * 4096, &mut buf).expect("read");
        }
        boot_bytes = d
            .stats()
            .bytes_fetched
            .load(std::sync::atomic::Ordering::Relaxed);
        boot_spans = d
            .stats()
            .spans_fetched
            .load(std::sync::atomic::Ordering::Relaxed);
    }
    // Warm memory cache: read the whole device once, then random 4 KiB reads.
    let d = Disk::open(&options(r), &cache).expect("open");
    let mut chunk = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < d.size() {
        let n = (d.size() - at).min(chunk.len() as u64) as usize;
        d.read_at(at, &mut chunk[..n]).expect("read");
        at += n as u64;
    }
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut buf = vec![0u8; 4096];
    let reads = 200_000;
    let t = Instant::now();
    for _ in 0..reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let blk = x % (d.size() / 4096);
        d.read_at(blk * 4096, &mut buf).expect("read");
    }
    let secs = t.elapsed().as_secs_f64();
    println!("cold_ready_s {:.3}", median(cold));
    println!("warm_ready_s {:.4}", median(warm));
    println!("boot_blocks {}", blocks.len());
    println!("boot_spans {boot_spans}");
    println!("boot_bytes {boot_bytes}");
    println!("random_4k_iops {:.0}", reads as f64 / secs);
    println!(
        "random_4k_mib_s {:.0}",
        reads as f64 * 4096.0 / secs / (1 << 20) as f64
    );
}
