//! The command line's shared flags: the image and how to reach it, the
//! lazy disk's flags, output formats, filesystems and sizes.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use ocidisk::disk::DiskOptions;
use ocidisk::fs::{Filesystem, FsOptions};
use ocidisk::image_format::{FlagNames, FormatRequest, ImageFormat};
use ocidisk::pull::PullOptions;
use ocidisk::source::auth::Credentials;
use ocidisk::source::registries_conf::RegistriesConf;
use ocidisk::source::registry::{RegistryOptions, RetryPolicy};
use ocidisk::{ImageLocation, Platform, SourceOptions};

#[derive(Args)]
pub(crate) struct FormatArgs {
    /// Output file format: raw or qcow2 [default: qcow2 for an OUTPUT ending in .qcow2, else raw]
    #[arg(long, value_name = "FORMAT")]
    format: Option<String>,
    /// Compress qcow2 clusters: zlib (the default) or zstd (QEMU 5.1 and later)
    #[arg(long, value_name = "zlib|zstd", num_args = 0..=1, require_equals = true, default_missing_value = "zlib")]
    compress: Option<String>,
    /// qcow2 cluster size, a power of two from 512 to 2M [default: 64K, as qemu-img]
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    cluster_size: Option<u64>,
}

impl FormatArgs {
    pub(crate) fn request(&self) -> FormatRequest {
        FormatRequest {
            format: self.format.clone(),
            compress: self.compress.clone(),
            cluster_size: self.cluster_size,
            names: FlagNames::MATERIALIZE,
        }
    }
}

#[derive(Args)]
pub(crate) struct DiskArgs {
    /// Filesystem on the disk
    #[arg(long = "fs", value_enum, default_value_t = FsArg::Ext4)]
    fs: FsArg,
    /// Read-only disk: writes refused (and no journal on ext4)
    #[arg(long)]
    read_only: bool,
    /// Keep guest writes in this file (and FILE.bitmap) across restarts [default: a temporary file]
    #[arg(long, value_name = "FILE")]
    overlay: Option<PathBuf>,
    /// If the --overlay file was made for another image (an earlier version), drop its writes and start afresh
    #[arg(long, requires = "overlay")]
    discard_overlay: bool,
    /// Device size, e.g. 2G [default: fit the content, as materialize]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    size: Option<u64>,
    /// Filesystem UUID [default: derived from the image digest]
    #[arg(long, value_parser = parse_uuid)]
    uuid: Option<[u8; 16]>,
    /// Memory for decoded data
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256M")]
    cache_mem: u64,
    /// Disk space for fetched data, shared by all images (0 disables)
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "4G")]
    cache_disk: u64,
    /// Fetch the whole image in the background, so the disk ends up independent of the registry
    #[arg(long)]
    prefetch: bool,
    /// Add /.ocidisk/init: boot with init=/.ocidisk/init to run the image's own command
    #[arg(long)]
    init: bool,
    /// Keep a complete image here, filled as data arrives and writes land (raw, or qcow2 for a .qcow2 name)
    #[arg(long, value_name = "IMG")]
    flush_to: Option<PathBuf>,
    /// Format of the --flush-to image: raw or qcow2 [default: from its name, as materialize]
    #[arg(long, value_name = "FORMAT", requires = "flush_to")]
    flush_format: Option<String>,
    /// Compress the --flush-to qcow2: zlib (the default) or zstd
    #[arg(long, value_name = "zlib|zstd", num_args = 0..=1, require_equals = true, default_missing_value = "zlib", requires = "flush_to")]
    flush_compress: Option<String>,
    /// Cluster size of the --flush-to qcow2 [default: 64K]
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, requires = "flush_to")]
    flush_cluster_size: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (bound to that address only)
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<String>,
    /// Record the order in which readers (a booting VM) first touch the image's data; written to FILE on exit
    #[arg(long, value_name = "FILE")]
    record_profile: Option<PathBuf>,
    /// Fetch the data a recorded profile names first, in its order, in the background
    #[arg(long, value_name = "FILE")]
    prefetch_profile: Option<PathBuf>,
    /// Start from a SOCI v1 index among the image's referrers (ocidisk index push makes one) instead of streaming its layers; anyone who can push to the repository can add one, so use it only where you trust its writers
    #[arg(long)]
    soci_v1: bool,
    /// Seconds after start before the layers a --soci-v1 index described stream in the background to re-derive it (on any difference the disk refuses all I/O)
    #[arg(long, value_name = "SECS", default_value_t = 10, requires = "soci_v1")]
    soci_check_delay: u64,
}

impl DiskArgs {
    /// Start the metrics endpoint if asked (before the disk opens, so
    /// the open's fetches show).
    pub(crate) fn start_metrics(&self) -> anyhow::Result<()> {
        if let Some(addr) = &self.metrics {
            let bound = ocidisk::metrics::serve(addr)?;
            eprintln!("metrics at http://{bound}/metrics");
        }
        Ok(())
    }
}

impl DiskArgs {
    pub(crate) fn options(&self, pull: PullOptions) -> anyhow::Result<DiskOptions> {
        let flush_format = match &self.flush_to {
            Some(path) => FormatRequest {
                format: self.flush_format.clone(),
                compress: self.flush_compress.clone(),
                cluster_size: self.flush_cluster_size,
                names: FlagNames::FLUSH_TO,
            }
            .resolve(path)
            .context("--flush-to")?,
            None => ImageFormat::Raw,
        };
        Ok(DiskOptions {
            pull: PullOptions {
                soci_v1: self.soci_v1,
                ..pull
            },
            fs: FsOptions {
                filesystem: self.fs.into(),
                size: self.size,
                read_only: self.read_only,
                uuid: self.uuid,
                seed: None,
            },
            cache_mem: self.cache_mem,
            cache_disk: self.cache_disk,
            overlay: self.overlay.clone(),
            discard_overlay: self.discard_overlay,
            flush_to: self.flush_to.clone(),
            flush_format,
            prefetch: self.prefetch,
            init: self.init,
            profile: ocidisk::disk::profile::ProfileOptions {
                record: self.record_profile.clone(),
                prefetch: self.prefetch_profile.clone(),
            },
            toc_check_delay: std::time::Duration::from_secs(self.soci_check_delay),
        })
    }
}

/// `mount` and `umount`: synchronous (the disk runs its own I/O runtime).
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum FsArg {
    /// ext4 with the features of a current mke2fs -t ext4
    Ext4,
    /// ext3 as mke2fs -t ext3 makes it: a journal always, block maps, no checksums
    Ext3,
    /// XFS v5 as mkfs.xfs makes it (in progress: no xattrs, directories up to ~500 entries)
    Xfs,
}

impl From<FsArg> for Filesystem {
    fn from(f: FsArg) -> Filesystem {
        match f {
            FsArg::Ext4 => Filesystem::Ext4,
            FsArg::Ext3 => Filesystem::Ext3,
            FsArg::Xfs => Filesystem::Xfs,
        }
    }
}

pub(crate) fn parse_uuid(s: &str) -> Result<[u8; 16], String> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let bytes = hex::decode(&hex).map_err(|_| format!("invalid UUID {s:?}"))?;
    bytes
        .try_into()
        .map_err(|_| format!("invalid UUID {s:?}: expected 32 hex digits"))
}

#[derive(Args)]
pub(crate) struct ImageArgs {
    /// The image (see "Image references" below)
    #[arg(value_name = "IMAGE")]
    pub(crate) image: String,

    /// Platform to choose from a multi-arch image: OS/ARCH[/VARIANT] [default: the host's]
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<Platform>,

    /// Registry user name; the password is read from stdin (--password-stdin)
    #[arg(long, requires = "password_stdin")]
    username: Option<String>,

    /// Read the registry password (or token) from stdin
    #[arg(long, requires = "username")]
    password_stdin: bool,

    /// Docker config with credentials [default: $DOCKER_CONFIG/config.json or ~/.docker/config.json]
    #[arg(long, value_name = "FILE")]
    authfile: Option<PathBuf>,

    /// Trust this CA certificate (PEM) for registry TLS; repeatable
    #[arg(long = "ca-cert", value_name = "FILE")]
    ca_cert: Vec<PathBuf>,

    /// Allow plain HTTP and unverified TLS for this registry (loopback registries may use HTTP without it)
    #[arg(long)]
    insecure: bool,

    /// Retries of a failed registry request (connection errors, 5xx, 429)
    #[arg(long, default_value_t = 4, value_name = "N")]
    retry_times: u32,

    /// Layers fetched at once
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,

    /// Trust policy (containers-policy.json(5)) the image must satisfy before any layer is fetched [default: $HOME/.config/containers/policy.json, then /etc/containers/policy.json; none: accept all]
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,

    /// Where signatures live (containers-registries.d(5)) [default: $HOME/.config/containers/registries.d, then /etc/containers/registries.d]
    #[arg(long = "registries.d", value_name = "DIR")]
    registries_d: Option<PathBuf>,

    /// Mirrors, blocked and insecure registries, short-name aliases and search registries (containers-registries.conf(5) v2, plus FILE.d/*.conf) [default: /etc/containers/registries.conf if present]
    #[arg(long, value_name = "FILE")]
    registries_conf: Option<PathBuf>,

    /// containerd's socket, for containerd:[NS/]NAME images
    #[arg(long, value_name = "SOCK", default_value = ocidisk::source::containerd::DEFAULT_ADDRESS)]
    containerd_address: PathBuf,
}

/// A byte count: a bare number is bytes, else a size with a unit (64K, 2M).
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|e| format!("{s}: {e}"));
    }
    parse_size(s)
}

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    ocidisk::units::parse_size(s).map_err(|e| e.to_string())
}

impl ImageArgs {
    pub(crate) fn options(&self) -> anyhow::Result<PullOptions> {
        self.options_for(&self.image)
    }

    /// The options for another image with the same flags.
    pub(crate) fn options_for(&self, image: &str) -> anyhow::Result<PullOptions> {
        let registries_conf = RegistriesConf::load(self.registries_conf.as_deref())?;
        let (location, search) =
            ImageLocation::resolve_short_name(image, registries_conf.as_ref())?;
        let credentials = match &self.username {
            Some(username) => {
                let mut password = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut password)
                    .context("reading the password from stdin")?;
                let password = password.trim_end_matches(['\n', '\r']).to_string();
                if password.is_empty() {
                    bail!("--password-stdin: stdin gave an empty password");
                }
                Some(Credentials {
                    username: username.clone(),
                    password,
                })
            }
            None => None,
        };
        Ok(PullOptions {
            location,
            platform: self.platform.clone(),
            source: SourceOptions {
                registry: RegistryOptions {
                    credentials,
                    auth_file: self.authfile.clone(),
                    ca_certs: self.ca_cert.clone(),
                    insecure: self.insecure,
                    retry: RetryPolicy {
                        attempts: self.retry_times.saturating_add(1),
                        ..RetryPolicy::default()
                    },
                },
                containerd_address: Some(self.containerd_address.clone()),
                registries_conf,
                search,
            },
            concurrency: usize::from(self.jobs),
            keep_blobs: true,
            trust: ocidisk::trust::Trust::load(&ocidisk::trust::TrustOptions {
                policy: self.policy.clone(),
                registries_d: self.registries_d.clone(),
            })?
            .map(std::sync::Arc::new),
            soci_v1: false,
        })
    }
}

/// How an image's filesystem is planned: for `materialize` and `diff`.
#[derive(Args)]
pub(crate) struct PlanArgs {
    /// Filesystem to write
    #[arg(long = "fs", value_enum, default_value_t = FsArg::Ext4)]
    pub(crate) fs: FsArg,
    /// Image size, e.g. 512M or 2G (a bare number means MiB) [default: fit the content]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) size: Option<u64>,
    /// Read-only image: little free space, and no journal on ext4 (ext3 always has one)
    #[arg(long)]
    pub(crate) read_only: bool,
}

impl PlanArgs {
    /// The filesystem options, with `uuid` if given.
    pub(crate) fn options(&self, uuid: Option<[u8; 16]>) -> FsOptions {
        FsOptions {
            filesystem: self.fs.into(),
            size: self.size,
            read_only: self.read_only,
            uuid,
            seed: None,
        }
    }
}
