//! The `ocidisk` command line: a thin layer over the library.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use ocidisk::cache::BlobCache;
use std::sync::atomic::{AtomicBool, Ordering};

use ocidisk::disk::{Disk, DiskOptions};
use ocidisk::fs::{Filesystem, FsOptions};
use ocidisk::image_format::{FlagNames, FormatRequest, ImageFormat};
use ocidisk::inspect::{human_size, inspect};
use ocidisk::materialize::{MaterializeOptions, materialize};
use ocidisk::progress::StderrProgress;
use ocidisk::pull::{PullOptions, pull};
use ocidisk::source::auth::Credentials;
use ocidisk::source::registries_conf::RegistriesConf;
use ocidisk::source::registry::{RegistryOptions, RetryPolicy};
use ocidisk::{ImageLocation, Platform, SourceOptions};

const IMAGE_FORMS: &str = "\
Image references:
  alpine                          docker.io/library/alpine:latest
  quay.io/org/img:tag             any registry, tag
  host:5000/img@sha256:…          pinned by digest (works offline once cached)
  docker://REF                    same as REF
  oci:DIR[:TAG]                   an OCI image layout directory
  docker-archive:FILE[:NAME:TAG]  a `docker save` archive (or :@N for the Nth image)
  containerd:[NS/]NAME            an image in a running containerd (namespace default;
                                  socket --containerd-address)";

/// Turn OCI container images into virtio block devices for VMs.
#[derive(Parser)]
#[command(name = "ocidisk", version, about, after_help = IMAGE_FORMS)]
struct Cli {
    /// Cache directory, shared by all images [default: $XDG_CACHE_HOME/ocidisk or ~/.cache/ocidisk]
    #[arg(long, global = true, env = "OCIDISK_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// More log output (-v: info, -vv: debug); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch an image's manifests, config and layers into the cache, verifying every blob
    #[command(after_help = "Examples:
  ocidisk pull alpine:3.20
  ocidisk pull --platform linux/arm64 docker.io/library/debian:bookworm
  ocidisk pull --username me --password-stdin registry.example.com/app:v1 < token.txt
  ocidisk pull oci:./layout:latest
  ocidisk pull docker-archive:app.tar
  ocidisk pull --policy /etc/containers/policy.json --registries.d /etc/containers/registries.d registry.example.com/app:v1
      (only if the policy accepts its signatures, as skopeo copy would; see docs/trust.md)")]
    Pull(ImageArgs),

    /// Show an image's digest, platforms, config and layers (fetches no layers)
    #[command(after_help = "Examples:
  ocidisk inspect alpine
  ocidisk inspect --json --platform linux/arm/v7 alpine | jq .layers
  ocidisk inspect --ca-cert ca.pem registry.internal:5000/app:v1")]
    Inspect {
        #[command(flatten)]
        image: ImageArgs,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },

    /// Write an image's filesystem to a disk image file, raw or qcow2 (no mkfs, no mount, no root)
    #[command(after_help = "Examples:
  ocidisk materialize alpine:3.20 alpine.img
  ocidisk materialize --read-only --platform linux/arm64 debian:bookworm debian.img
  ocidisk materialize --size 2G oci:./layout:app app.img
  ocidisk materialize --fs ext3 alpine:3.20 alpine-ext3.img
  ocidisk materialize --fs xfs debian:bookworm debian.xfs
  ocidisk materialize --compress debian:bookworm debian.qcow2
  ocidisk materialize --format qcow2 --compress=zstd --cluster-size 2M alpine:3.20 alpine.img
  ocidisk materialize --base app-v1.img registry.example.com/app:v2 app-v2.img
  ocidisk materialize --base app.img registry.example.com/app:v2 app.img   (in place)

Formats: raw (default) is a sparse file of the device's bytes; qcow2 (--format qcow2, or an
OUTPUT ending in .qcow2) is a qcow2 v3 file that QEMU, qemu-img and libvirt read, with all-zero
clusters unallocated. --compress stores each cluster compressed where that shrinks it, on every
core: zlib (the default, read by every qcow2 reader) or zstd (QEMU 5.1 and later).

Without --size the image fits the content plus headroom: read-only images get 10% + 16 MiB,
writable ones 50% + 256 MiB (the file is sparse, so unused space costs nothing on the host).
--size goes up to 4 TiB (XFS: from 300 MiB, as mkfs.xfs); grow an image beyond that afterwards
with truncate -s and resize2fs (ext4) or xfs_growfs once mounted (XFS).
--base OLD.img starts from a raw image ocidisk wrote for an earlier version (its record
OLD.img.ocidisk.json says which) and writes only what changed; the result is byte-identical to
a fresh materialize. A modified or foreign OLD is refused (docs/incremental.md).
What an image may hold, and what is refused or clamped: docs/input-rules.md.")]
    Materialize {
        #[command(flatten)]
        image: ImageArgs,
        /// Output file (raw, or qcow2 for a .qcow2 name), written under a temporary name and renamed
        #[arg(value_name = "OUTPUT")]
        output: PathBuf,
        #[command(flatten)]
        format: FormatArgs,
        /// Filesystem to write
        #[arg(long = "fs", value_enum, default_value_t = FsArg::Ext4)]
        fs: FsArg,
        /// Image size, e.g. 512M or 2G (a bare number means MiB) [default: fit the content]
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        size: Option<u64>,
        /// Read-only image: little free space, and no journal on ext4 (ext3 always has one)
        #[arg(long)]
        read_only: bool,
        /// Filesystem UUID [default: derived from the image digest, so output is reproducible]
        #[arg(long, value_parser = parse_uuid)]
        uuid: Option<[u8; 16]>,
        /// Add /.ocidisk/init: boot with init=/.ocidisk/init to run the image's own command (see ocidisk inspect)
        #[arg(long)]
        init: bool,
        /// Update from OLD, a raw image ocidisk wrote for an earlier version (may be OUTPUT itself): only what changed is written
        #[arg(long, value_name = "OLD")]
        base: Option<PathBuf>,
    },

    /// Show the image's disk as one regular file through FUSE (lazy: data is fetched when read)
    #[command(after_help = "Examples:
  touch debian.img && ocidisk mount --read-only debian:bookworm debian.img
  touch app.img && ocidisk mount --fs ext3 registry.example.com/app:v1 app.img
  mkdir /mnt/app && ocidisk mount --overlay app.overlay registry.example.com/app:v1 /mnt/app
      (the disk appears as /mnt/app/disk.img; writes go to app.overlay)
  ocidisk umount debian.img

The mount stays in the foreground; Ctrl-C or SIGTERM unmounts cleanly and flushes writes.
Mounting needs root (a plain mount(2)) or fusermount3 from the fuse3 package.")]
    Mount {
        #[command(flatten)]
        image: ImageArgs,
        /// Where the disk appears: an existing regular file, or a directory (then PATH/disk.img)
        #[arg(value_name = "PATH")]
        path: PathBuf,
        #[command(flatten)]
        disk: DiskArgs,
    },

    /// Serve the image's disk to a VM over a vhost-user-blk socket (lazy: data is fetched when read)
    #[command(after_help = "Examples:
  ocidisk serve --read-only debian:bookworm --socket /run/ocidisk/debian.sock
  ocidisk serve --overlay app.overlay --queues 2 registry.example.com/app:v1 --socket app.sock
  ocidisk serve --policy signed-only.json --read-only registry.example.com/app:v1 --socket app.sock

Then attach the socket to a VMM (guest RAM must be shared memory):
  qemu-system-x86_64 -object memory-backend-memfd,id=mem,size=1G,share=on \\
    -machine q35,memory-backend=mem -chardev socket,id=c0,path=SOCK \\
    -device vhost-user-blk-pci,chardev=c0,num-queues=N ...
  cloud-hypervisor --memory size=1G,shared=on --disk vhost_user=true,socket=SOCK,num_queues=N ...

The server prints a ready line once the socket accepts connections and keeps
serving across VM reboots and restarts; with reconnect-ms=1000 on QEMU's -chardev,
a running VM also survives a restart of serve itself. Ctrl-C or SIGTERM flushes
writes and exits.")]
    Serve {
        #[command(flatten)]
        image: ImageArgs,
        /// The vhost-user socket to create (a stale one is replaced; a live one refused)
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// Virtqueues, one worker thread each (at most one per core)
        #[arg(long, default_value_t = 1)]
        queues: usize,
        /// Write the server's pid here once the socket accepts connections
        #[arg(long, value_name = "FILE")]
        pid_file: Option<PathBuf>,
        #[command(flatten)]
        disk: DiskArgs,
    },

    /// Unmount an ocidisk mount (also one whose process died)
    Umount {
        /// The mount point
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },

    /// Manage the blob cache
    #[command(subcommand)]
    Cache(CacheCommand),
}

#[derive(Args)]
struct FormatArgs {
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
    fn request(&self) -> FormatRequest {
        FormatRequest {
            format: self.format.clone(),
            compress: self.compress.clone(),
            cluster_size: self.cluster_size,
            names: FlagNames::MATERIALIZE,
        }
    }
}

#[derive(Args)]
struct DiskArgs {
    /// Filesystem on the disk
    #[arg(long = "fs", value_enum, default_value_t = FsArg::Ext4)]
    fs: FsArg,
    /// Read-only disk: writes refused (and no journal on ext4)
    #[arg(long)]
    read_only: bool,
    /// Keep guest writes in this file (and FILE.bitmap) across restarts [default: a temporary file]
    #[arg(long, value_name = "FILE")]
    overlay: Option<PathBuf>,
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
}

impl DiskArgs {
    /// Start the metrics endpoint if asked (before the disk opens, so
    /// the open's fetches show).
    fn start_metrics(&self) -> anyhow::Result<()> {
        if let Some(addr) = &self.metrics {
            let bound = ocidisk::metrics::serve(addr)?;
            eprintln!("metrics at http://{bound}/metrics");
        }
        Ok(())
    }
}

impl DiskArgs {
    fn options(&self, pull: PullOptions) -> anyhow::Result<DiskOptions> {
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
            pull,
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
            flush_to: self.flush_to.clone(),
            flush_format,
            prefetch: self.prefetch,
            init: self.init,
            profile: ocidisk::disk::profile::ProfileOptions {
                record: self.record_profile.clone(),
                prefetch: self.prefetch_profile.clone(),
            },
        })
    }
}

/// `mount` and `umount`: synchronous (the disk runs its own I/O runtime).
fn run_sync(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Mount { image, path, disk } => {
            let cache = open_cache(cli.cache_dir)?;
            let pull = image.options()?;
            let name = image.image.clone();
            disk.start_metrics()?;
            let disk = Arc::new(Disk::open(&disk.options(pull)?, &cache)?);
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, stop.clone())
                    .context("installing signal handlers")?;
            }
            let size = disk.size();
            let mounted = ocidisk::mount::mount(disk.clone(), &path, &name)?;
            println!(
                "mounted {name} at {} ({}); Ctrl-C or SIGTERM unmounts",
                mounted.image_path().display(),
                human_size(size)
            );
            while !stop.load(Ordering::Relaxed) && mounted.is_running() {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            mounted.unmount()?;
            disk.save_profile()?;
            eprintln!("unmounted {}", path.display());
        }
        Command::Serve {
            image,
            socket,
            queues,
            pid_file,
            disk,
        } => {
            let cache = open_cache(cli.cache_dir)?;
            let pull = image.options()?;
            let name = image.image.clone();
            // Before the (possibly slow) disk open.
            ocidisk::serve::check_queues(queues)?;
            disk.start_metrics()?;
            let disk = Arc::new(Disk::open(&disk.options(pull)?, &cache)?);
            let serial = disk.image_id().to_string();
            let (size, ro) = (disk.size(), disk.read_only());
            let server = ocidisk::serve::Server::bind(
                disk.clone(),
                ocidisk::serve::ServeOptions {
                    socket: socket.clone(),
                    queues,
                    pid_file,
                    serial,
                },
            )?;
            server.stop_on_signals()?;
            server.write_pid_file()?;
            println!(
                "serving {name} on {} ({}, {}, {queues} queue{}); Ctrl-C or SIGTERM stops",
                socket.display(),
                human_size(size),
                if ro { "read-only" } else { "writable" },
                if queues == 1 { "" } else { "s" }
            );
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            server.run()?;
            disk.save_profile()?;
            eprintln!("stopped serving {}", socket.display());
        }
        Command::Umount { path } => {
            ocidisk::mount::umount(&path)?;
            eprintln!("unmounted {}", path.display());
        }
        _ => unreachable!("only mount, umount and serve run synchronously"),
    }
    Ok(())
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FsArg {
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

fn parse_uuid(s: &str) -> Result<[u8; 16], String> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let bytes = hex::decode(&hex).map_err(|_| format!("invalid UUID {s:?}"))?;
    bytes
        .try_into()
        .map_err(|_| format!("invalid UUID {s:?}: expected 32 hex digits"))
}

#[derive(Subcommand)]
enum CacheCommand {
    /// List cached images (and with --blobs, every blob)
    List {
        /// Also list every blob
        #[arg(long)]
        blobs: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove blobs no cached image uses, and with --max-size the least recently used ones
    #[command(after_help = "Examples:
  ocidisk cache prune              # drop unreferenced blobs and stale temp files
  ocidisk cache prune --max-size 5G")]
    Prune {
        /// Shrink the cache to at most this size (e.g. 500M, 5G; a bare number means MiB)
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: Option<u64>,
    },
}

#[derive(Args)]
struct ImageArgs {
    /// The image (see "Image references" below)
    #[arg(value_name = "IMAGE")]
    image: String,

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
fn parse_bytes(s: &str) -> Result<u64, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|e| format!("{s}: {e}"));
    }
    parse_size(s)
}

fn parse_size(s: &str) -> Result<u64, String> {
    ocidisk::units::parse_size(s).map_err(|e| e.to_string())
}

impl ImageArgs {
    fn options(&self) -> anyhow::Result<PullOptions> {
        let registries_conf = RegistriesConf::load(self.registries_conf.as_deref())?;
        let (location, search) =
            ImageLocation::resolve_short_name(&self.image, registries_conf.as_ref())?;
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
        })
    }
}

fn open_cache(dir: Option<PathBuf>) -> anyhow::Result<BlobCache> {
    let root = match dir {
        Some(d) => d,
        None => BlobCache::default_root()?,
    };
    Ok(BlobCache::open(root)?)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cache = open_cache(cli.cache_dir)?;
    match cli.command {
        Command::Pull(args) => {
            let opts = args.options()?;
            let report = pull(&opts, &cache, Arc::new(StderrProgress::new())).await?;
            eprintln!(
                "pulled {} ({}) for {}: {} layers, {} downloaded ({}), {} already cached",
                report.reference,
                report.image_id,
                report.platform,
                report.layers,
                report.downloaded_layers,
                human_size(report.downloaded_bytes),
                report.cached_layers
            );
            println!("{}", report.image_id);
        }
        Command::Inspect { image, json } => {
            let info = inspect(&image.options()?, &cache).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{}", info.to_text());
            }
        }
        Command::Materialize {
            image,
            output,
            format,
            fs,
            size,
            read_only,
            uuid,
            init,
            base,
        } => {
            let format = format.request().resolve(&output)?;
            let opts = MaterializeOptions {
                pull: image.options()?,
                format,
                init,
                base,
                output,
                fs: FsOptions {
                    filesystem: fs.into(),
                    size,
                    read_only,
                    uuid,
                    seed: None,
                },
            };
            // Ctrl-C or SIGTERM must not leave a multi-GiB partial file.
            ocidisk::partial::remove_on_signals().context("installing signal handlers")?;
            let r = materialize(&opts, &cache, Arc::new(StderrProgress::new())).await?;
            eprintln!(
                "wrote {} ({} {}, {} on disk, {} of file data) from {} ({})",
                r.output.display(),
                human_size(r.size),
                r.format,
                human_size(r.file_bytes),
                human_size(r.data_bytes),
                r.reference,
                r.image_id
            );
            if let Some(u) = &r.update {
                eprintln!(
                    "from {}{}: kept {} of {} non-zero 512 KiB chunks, rewrote {}{}",
                    u.base.display(),
                    if u.in_place { " in place" } else { "" },
                    u.chunks.shared,
                    u.chunks.chunks,
                    human_size(u.changed_bytes),
                    if u.resumed {
                        " (finished an interrupted update)"
                    } else {
                        ""
                    }
                );
            }
        }
        Command::Cache(CacheCommand::List { blobs, json }) => {
            let images = cache.list_images()?;
            let all = cache.list_blobs()?;
            let total: u64 = all.iter().map(|b| b.size).sum();
            if json {
                let v = serde_json::json!({
                    "root": cache.root(),
                    "images": images,
                    "blobs": if blobs { serde_json::to_value(&all)? } else { serde_json::Value::Null },
                    "total_bytes": total,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("cache: {}", cache.root().display());
                println!(
                    "{:<60} {:<14} {:<20} {:>10}",
                    "IMAGE", "PLATFORM", "ID", "SIZE"
                );
                for r in &images {
                    println!(
                        "{:<60} {:<14} {:<20} {:>10}",
                        r.reference,
                        r.platform.to_string(),
                        r.image_id.short(),
                        human_size(r.size)
                    );
                }
                if blobs {
                    println!();
                    println!("{:<72} {:>10}", "BLOB", "SIZE");
                    for b in &all {
                        println!("{:<72} {:>10}", b.digest.to_string(), human_size(b.size));
                    }
                }
                println!(
                    "{} images, {} blobs, {} in total",
                    images.len(),
                    all.len(),
                    human_size(total)
                );
            }
        }
        Command::Mount { .. } | Command::Umount { .. } | Command::Serve { .. } => {
            unreachable!("mount and umount run outside the async runtime")
        }
        Command::Cache(CacheCommand::Prune { max_size }) => {
            let r = cache.prune(max_size)?;
            println!(
                "removed {} blobs ({}) and {} image records; {} remain",
                r.removed_blobs,
                human_size(r.freed_bytes),
                r.removed_images,
                human_size(r.remaining_bytes)
            );
        }
    }
    Ok(())
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// An error and its causes on one line, each said once: a cause whose text
/// the message already holds (most do, as "{source}") is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out.replace('\n', " ")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    if matches!(
        cli.command,
        Command::Mount { .. } | Command::Umount { .. } | Command::Serve { .. }
    ) {
        return match run_sync(cli) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ocidisk: error: {}", one_line(&e));
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ocidisk: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ocidisk: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that, like most here, says its source in its own text.
    #[derive(Debug, thiserror::Error)]
    #[error("reading layer sha256:ab: {source}")]
    struct Read {
        source: std::io::Error,
    }

    #[test]
    fn one_line_says_each_cause_once() {
        let source = std::io::Error::from_raw_os_error(libc::ENOENT);
        let e = anyhow::Error::new(Read { source }).context("materializing x");
        let line = one_line(&e);
        assert_eq!(line.matches("(os error 2)").count(), 1, "{line}");
        assert!(line.starts_with("materializing x: reading layer"), "{line}");
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&plain), "outer: inner");
    }
}
