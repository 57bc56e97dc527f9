//! Options for opening a lazy [`Disk`](ocidisk::disk::Disk) through the
//! library, as the tests that drive it directly need them.

#![allow(dead_code)]

use ocidisk::SourceOptions;
use ocidisk::disk::DiskOptions;
use ocidisk::pull::PullOptions;

/// A disk of `location` (a registry reference), read-only or writable,
/// with 64 MiB of memory cache and a 1 GiB chunk store, no overlay path,
/// no flush-to, no prefetch.
pub fn disk_options(location: &str, read_only: bool) -> DiskOptions {
    DiskOptions {
        pull: PullOptions {
            location: location.parse().unwrap(),
            platform: None,
            source: SourceOptions::default(),
            concurrency: 2,
            keep_blobs: false,
            trust: None,
            soci_v1: false,
        },
        fs: ocidisk::fs::FsOptions {
            read_only,
            ..Default::default()
        },
        cache_mem: 64 << 20,
        cache_disk: 1 << 30,
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

/// Every byte of `disk` into the file `out`, in 4 MiB reads that must all
/// succeed.
pub fn dump(disk: &ocidisk::disk::Disk, out: &std::path::Path) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(out).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    let mut at = 0;
    while at < disk.size() {
        let n = ((disk.size() - at) as usize).min(buf.len());
        disk.read_at(at, &mut buf[..n]).unwrap();
        f.write_all(&buf[..n]).unwrap();
        at += n as u64;
    }
}

/// Read `disk` whole in `piece`-byte reads: every read that succeeds must
/// equal `want` (the expected device bytes) there; returns how many
/// failed.
pub fn failed_reads(disk: &ocidisk::disk::Disk, want: &[u8], piece: usize) -> usize {
    assert_eq!(disk.size(), want.len() as u64);
    let mut failed = 0;
    let mut buf = vec![0u8; piece];
    for (i, exp) in want.chunks(piece).enumerate() {
        let got = &mut buf[..exp.len()];
        if disk.read_at((i * piece) as u64, got).is_ok() {
            assert!(got == exp, "wrong bytes served at {}", i * piece);
        } else {
            failed += 1;
        }
    }
    failed
}
