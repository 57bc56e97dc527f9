//! The `ocidisk` command line: a thin layer over the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ocidisk::cache::BlobCache;
use std::sync::atomic::{AtomicBool, Ordering};

mod args;
use args::{DiskArgs, FormatArgs, ImageArgs, PlanArgs, parse_size, parse_uuid};

use ocidisk::disk::Disk;
use ocidisk::inspect::{human_size, inspect};
use ocidisk::materialize::{MaterializeOptions, materialize};
use ocidisk::progress::StderrProgress;
use ocidisk::pull::pull;

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
        #[command(flatten)]
        plan: PlanArgs,
        /// Filesystem UUID [default: derived from the image digest, so output is reproducible]
        #[arg(long, value_parser = parse_uuid)]
        uuid: Option<[u8; 16]>,
        /// Add /.ocidisk/init: boot with init=/.ocidisk/init to run the image's own command (see ocidisk inspect)
        #[arg(long)]
        init: bool,
        /// Update from OLD, a raw image ocidisk wrote for an earlier version (may be OUTPUT itself): only what changed is written
        #[arg(long, value_name = "OLD")]
        base: Option<PathBuf>,
        /// Also print what was written as JSON on standard output
        #[arg(long)]
        json: bool,
    },

    /// Compare two image versions' disks: shared and added layers, and the 512 KiB chunks NEW keeps from OLD
    #[command(
        after_help = "Examples:
  ocidisk diff registry.example.com/app:v1 registry.example.com/app:v2
  ocidisk diff --json --fs ext3 oci:./layout:v1 oci:./layout:v2

OLD and NEW are planned as materialize would write them with the same --fs, --size and
--read-only; only layer indexes are fetched (no image is written). Chunks equal at the same
offset are what materialize --base keeps; added layers are what a host with OLD cached fetches.",
        override_usage = "ocidisk diff [OPTIONS] <OLD> <NEW>"
    )]
    Diff {
        /// OLD: the image to compare with (source flags apply to both)
        #[command(flatten)]
        image: ImageArgs,
        /// NEW: the image version to compare
        #[arg(value_name = "NEW")]
        new: String,
        #[command(flatten)]
        plan: PlanArgs,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
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
  ocidisk serve --push-index --read-only registry.example.com/app:v1 --socket app.sock
      (publishes the image's SOCI index once serving; other hosts then start from it with --soci-v1)

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
        /// Once serving, publish the image's SOCI index in the background, as ocidisk index push does (needs write access)
        #[arg(long)]
        push_index: bool,
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

    /// Publish an image's table of contents, so lazy disks start without streaming its layers
    #[command(subcommand)]
    Index(IndexCommand),
}

#[derive(Subcommand)]
enum IndexCommand {
    /// Make a SOCI v1 index of an image (a zTOC per gzip layer) and push it beside the image as a referrer
    #[command(after_help = "Examples:
  ocidisk index push registry.example.com/app:v1
  ocidisk index push --span-size 1M --json localhost:5000/debian:bookworm

The image is pulled (verified) into the cache first. The index is an OCI manifest whose
subject is the image manifest, listed by the registry's referrers API and, for registries
without one, in the referrers tag sha256-<hex>. Its bytes depend only on the image and the
span size, so hosts that push concurrently push the same digests. Pushing needs write access
(--username with --password-stdin, or the docker config). Readers use it with
ocidisk serve --soci-v1 / ocidisk mount --soci-v1.")]
    Push {
        #[command(flatten)]
        image: ImageArgs,
        /// Uncompressed bytes between checkpoints: smaller spans mean smaller first reads and a bigger index
        #[arg(long, value_name = "SIZE", value_parser = args::parse_bytes, default_value = "4M")]
        span_size: u64,
        /// Layers smaller than this get no zTOC (they stream instead)
        #[arg(long, value_name = "SIZE", value_parser = args::parse_bytes, default_value = "0")]
        min_layer_size: u64,
        /// Print what was pushed as JSON
        #[arg(long)]
        json: bool,
    },
}

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
            push_index,
            disk,
        } => {
            let cache = open_cache(cli.cache_dir)?;
            let pull = image.options()?;
            let publish = push_index.then(|| ocidisk::toc::publish::PublishOptions {
                pull: pull.clone(),
                span_size: ocidisk::toc::publish::DEFAULT_SPAN,
                min_layer_size: 0,
            });
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
            if let Some(opts) = publish {
                push_index_later(opts, cache.clone())?;
            }
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

/// `serve --push-index`: publish the image's SOCI index on a thread of
/// its own while the disk serves; the outcome goes to the log.
fn push_index_later(
    opts: ocidisk::toc::publish::PublishOptions,
    cache: BlobCache,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("ocidisk-push-index".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return eprintln!("--push-index: starting a runtime: {e}"),
            };
            let progress = Arc::new(ocidisk::pull::NoProgress);
            match rt.block_on(ocidisk::toc::publish::publish(&opts, &cache, progress)) {
                Ok(r) => eprintln!(
                    "--push-index: pushed SOCI index {} for {}, listed under tag {}",
                    r.index, r.reference, r.referrers_tag
                ),
                Err(e) => eprintln!("--push-index: {e}"),
            }
        })
        .context("starting the --push-index thread")?;
    Ok(())
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
            plan,
            uuid,
            init,
            base,
            json,
        } => {
            let format = format.request().resolve(&output)?;
            let opts = MaterializeOptions {
                pull: image.options()?,
                format,
                init,
                base,
                output,
                fs: plan.options(uuid),
            };
            // Ctrl-C or SIGTERM must not leave a multi-GiB partial file.
            ocidisk::partial::remove_on_signals().context("installing signal handlers")?;
            let r = materialize(&opts, &cache, Arc::new(StderrProgress::new())).await?;
            let streamed = if r.streamed_bytes > 0 {
                format!(
                    ", {} of it as the layers streamed",
                    human_size(r.streamed_bytes)
                )
            } else {
                String::new()
            };
            eprintln!(
                "wrote {} ({} {}, {} on disk, {} of file data{streamed}) from {} ({})",
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
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            }
        }
        Command::Diff {
            image,
            new,
            plan,
            json,
        } => {
            let fs = plan.options(None);
            let (old, new) = (image.options()?, image.options_for(&new)?);
            let r = ocidisk::diff::diff(&old, &new, &fs, &cache).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", r.to_text());
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
        Command::Index(IndexCommand::Push {
            image,
            span_size,
            min_layer_size,
            json,
        }) => {
            if span_size < 64 << 10 {
                anyhow::bail!(
                    "--span-size {span_size}: at least 64K (each span costs a 32 KiB window)"
                );
            }
            let opts = ocidisk::toc::publish::PublishOptions {
                pull: image.options()?,
                span_size,
                min_layer_size,
            };
            let r = ocidisk::toc::publish::publish(&opts, &cache, Arc::new(StderrProgress::new()))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for l in &r.layers {
                    match (&l.ztoc, &l.skipped) {
                        (Some(z), _) => eprintln!(
                            "layer {}: zTOC {} ({} for {})",
                            l.layer.short(),
                            z.short(),
                            human_size(l.ztoc_size),
                            human_size(l.layer_size)
                        ),
                        (None, why) => eprintln!(
                            "layer {}: no zTOC ({})",
                            l.layer.short(),
                            why.as_deref().unwrap_or("skipped")
                        ),
                    }
                }
                println!(
                    "pushed SOCI index {} for {} ({}), listed under tag {}",
                    r.index, r.reference, r.subject, r.referrers_tag
                );
            }
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
