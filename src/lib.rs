//! ocidisk turns OCI container images into virtio block devices that a VM
//! boots from, without mkfs, mount or root.
//!
//! Data flows one way through the modules:
//!
//! ```text
//! source (registry + mirrors / oci layout / docker archive / containerd)   src/source/
//!   → verified blobs in the shared cache              src/cache.rs, src/pull.rs
//!   → layer index (tar entries, access points, span hashes)   src/layer_index/
//!   → merged tree (whiteouts applied)                 src/tree.rs
//!   → filesystem plan: metadata blocks + data extents   src/fs/ (writers: src/fs/extfs/)
//!   → materialize (a raw or qcow2 image file)         src/materialize.rs, src/qcow2/
//!   → Disk (read_at / write_at: metadata, lazy data, overlay)   src/disk/
//!   → frontends: vhost-user `serve`, FUSE `mount`     src/serve/, src/mount.rs
//! ```
//!
//! Beside the flow: [`partial`] writes every output file under a temporary
//! name that a planted symlink cannot redirect, and renames it into place;
//! [`trust`] decides on an image before any layer is fetched; [`metrics`]
//! counts what a running disk fetches and serves; [`heap`] faults in the
//! memory a disk's planning needs while its image is still being fetched.
//!
//! The original Go package's `ContainerToVirtioOptions` maps onto
//! [`materialize::MaterializeOptions`]:
//!
//! | Go field | Rust |
//! | --- | --- |
//! | `ImageRef` | `pull.location` (any transport: `alpine`, `oci:DIR:TAG`, `docker-archive:FILE`) |
//! | `Platform` | `pull.platform` (default: the host's) |
//! | `OutputPath` | `output` |
//! | `FilesystemType` | `fs.filesystem` ([`fs::Filesystem`]: ext4, ext3) |
//! | `Size` | `fs.size` (`None`: fit the content) |
//! | `ReadOnly` | `fs.read_only` |
//! | (new) | `init` (`--init`: [`init_layer`], boot the image's own process) |
//! | (new) | `format` ([`image_format::ImageFormat`]: raw, or qcow2 with compression) |
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use ocidisk::{BlobCache, PullOptions, pull::NoProgress};
//!
//! let cache = BlobCache::open(BlobCache::default_root()?)?;
//! let opts = PullOptions {
//!     location: "alpine:3.20".parse()?,
//!     platform: Some("linux/arm64".parse()?),
//!     source: Default::default(),
//!     concurrency: 3,
//!     keep_blobs: true,
//!     trust: None,
//!     soci_v1: false,
//! };
//! let report = ocidisk::pull::pull(&opts, &cache, Arc::new(NoProgress)).await?;
//! println!("{} is {}", report.reference, report.image_id);
//! # Ok(()) }
//! ```

pub mod cache;
pub mod diff;
pub mod digest;
pub mod disk;
pub mod fs;
pub mod heap;
pub mod image_format;
pub mod init_layer;
pub mod inspect;
pub mod layer_index;
pub mod materialize;
pub mod metrics;
pub mod mount;
pub mod partial;
pub mod platform;
pub mod progress;
pub mod pull;
pub mod qcow2;
pub mod serve;

pub mod source;
pub mod sparse;
pub mod sync;
pub mod tar;
pub mod toc;
pub mod tree;
pub mod trust;
pub mod units;

pub use cache::BlobCache;
pub use digest::Digest;
pub use platform::Platform;
pub use pull::{PullOptions, PullReport};
pub use source::{ImageLocation, SourceOptions};
