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
