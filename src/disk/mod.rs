//! The lazy disk: the block device a frontend serves, with file data fetched
//! only when someone reads it.
//!
//! Opening resolves the image and makes sure every layer has an index (a
//! cold first pass streams each layer through the indexer without keeping
//! it). The filesystem is planned by [`crate::fs::plan_layers`], as for
//! `materialize`, so the device bytes are the same whatever the writer. A
//! read is then served from three sources: synthesized metadata blocks,
//! file data from layer spans, zeros elsewhere.
//!
//! A span is fetched by its compressed byte range (HTTP Range for
//! registries, `pread` for local files), decoded from its access point, and
//! checked against the sha256 recorded while the layer was verified; only
//! then does it reach a reader or the in-memory LRU (bounded in bytes).
//! Concurrent misses on one span share one fetch (`spans.rs`); guest writes
//! go to a copy-on-write overlay (`overlay.rs`), decoded spans to the shared
//! chunk store (`chunks.rs`), and `--flush-to` keeps a raw copy
//! (`flush_to.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub mod chunks;
pub mod flush_to;
pub mod metadata;
mod open;
pub mod overlay;
pub mod profile;
mod spans;
mod toc_check;

use chunks::ChunkStore;
use overlay::{Overlay, OverlayError};
use spans::{Pending, Prefixes, SpanCache};

use crate::cache::{BlobCache, CacheError};
use crate::fs::{BLOCK_SIZE, FsError, FsImage, FsOptions, Region};
use crate::layer_index::{LayerIndex, SpanError};
use crate::pull::{PullError, PullOptions};
use crate::source::manifest::Descriptor;
use crate::source::{Source, SourceError};

/// Errors of the lazy disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Resolving or indexing the image failed.
    #[error(transparent)]
    Pull(#[from] Box<PullError>),
    /// Planning the filesystem failed.
    #[error(transparent)]
    Plan(#[from] Box<FsError>),
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A read beyond the end of the device.
    #[error("read of {len} bytes at offset {offset} is beyond the device's {size} bytes")]
    OutOfRange {
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: usize,
        /// Device size.
        size: u64,
    },
    /// Fetching a span's bytes failed.
    #[error("fetching layer {layer}: {source}")]
    Fetch {
        /// The layer.
        layer: String,
        /// What went wrong.
        source: Box<SourceError>,
    },
    /// A fetched span does not decode or does not match its hash.
    #[error(transparent)]
    Span(#[from] SpanError),
    /// A span fetch failed in another reader that this one waited for.
    #[error("{0}")]
    Shared(String),
    /// The I/O runtime could not start.
    #[error("starting the I/O runtime: {0}")]
    Runtime(std::io::Error),
    /// A write to a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// Writing the --flush-to image failed.
    #[error("--flush-to {0}: {1}")]
    FlushTo(std::path::PathBuf, std::io::Error),
    /// Creating or completing the --flush-to image failed.
    #[error("--flush-to: {0}")]
    FlushToCreate(crate::partial::PartialError),
    /// Adding the `--init` layer failed.
    #[error(transparent)]
    Init(#[from] crate::init_layer::InitError),
    /// Writing or updating the --flush-to qcow2 failed.
    #[error("--flush-to: {0}")]
    FlushToQcow2(crate::qcow2::Qcow2Error),
    /// The overlay failed.
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    /// A prefetch profile could not be read or written.
    #[error(transparent)]
    Profile(#[from] profile::ProfileError),
    /// The consumer of `read_with` could not take the bytes.
    #[error("delivering read data: {0}")]
    Sink(std::io::Error),
    /// A metadata block could not be read back.
    #[error(transparent)]
    Metadata(#[from] metadata::MetadataError),
    /// The table of contents the disk started from proved wrong.
    #[error("the disk is withdrawn: {0}")]
    Withdrawn(String),
}

/// How to open a disk.
#[derive(Debug, Clone)]
pub struct DiskOptions {
    /// The image and how to reach it.
    pub pull: PullOptions,
    /// The filesystem, as `materialize` would write it; read-only also
    /// means the disk refuses writes.
    pub fs: FsOptions,
    /// Bytes of decoded spans kept in memory.
    pub cache_mem: u64,
    /// Bytes of compressed spans kept on disk, shared by all images (0: none).
    pub cache_disk: u64,
    /// Where guest writes go (writable disks); `None`: a temporary file in
    /// the cache dir, removed when the disk closes.
    pub overlay: Option<std::path::PathBuf>,
    /// An overlay made for another image (an earlier version) is removed
    /// and started afresh instead of refused.
    pub discard_overlay: bool,
    /// Keep a complete image here, filled as data arrives.
    pub flush_to: Option<std::path::PathBuf>,
    /// The file format of `flush_to`.
    pub flush_format: crate::image_format::ImageFormat,
    /// Fetch the whole image in the background after opening.
    pub prefetch: bool,
    /// Add `/.ocidisk/init` and its config ([`crate::init_layer`]).
    pub init: bool,
    /// Record a prefetch profile, or replay one.
    pub profile: profile::ProfileOptions,
    /// How long after opening the layers a table of contents described
    /// start streaming to re-derive it (`--soci-v1`).
    pub toc_check_delay: std::time::Duration,
}

/// Counters, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct DiskStats {
    /// Spans fetched from a blob source.
    pub spans_fetched: AtomicU64,
    /// Compressed bytes fetched.
    pub bytes_fetched: AtomicU64,
    /// Span lookups answered from memory.
    pub hits: AtomicU64,
    /// Span lookups answered from the on-disk chunk store.
    pub chunk_hits: AtomicU64,
    /// The first [`FETCH_LOG_LEN`] spans fetched from the source, in
    /// order, as (layer, span).
    pub fetch_log: Mutex<Vec<(usize, usize)>>,
}

/// How many fetches [`DiskStats::fetch_log`] keeps.
pub const FETCH_LOG_LEN: usize = 1 << 16;

/// The shared state of a disk (background readahead and prefetch hold it too).
struct Inner {
    blob_cache: BlobCache,
    flush_to: Option<flush_to::FlushTo>,
    /// Per layer: the last span read and how many spans in a row led to it.
    last_span: Mutex<HashMap<usize, (usize, usize)>>,
    readahead: Mutex<Option<std::sync::mpsc::Sender<(usize, usize)>>>,
    image: FsImage,
    /// The image's metadata blocks (`image` keeps none): in the heap until
    /// the settle thread moves them to a scratch file.
    metadata: metadata::Metadata,
    /// The image identity (manifest digest hex; config digest for archives).
    image_id: String,
    layers: Vec<(Arc<LayerIndex>, Descriptor)>,
    source: Source,
    rt: tokio::runtime::Runtime,
    cache: Mutex<SpanCache>,
    inflight: Mutex<HashMap<(usize, usize), Pending>>,
    /// Compressed bytes already fetched from each access point: the next
    /// span of the same region fetches only what is missing.
    prefixes: Mutex<Prefixes>,
    chunks: Arc<ChunkStore>,
    stats: DiskStats,
    /// `--record-profile`: where, and the spans readers touched.
    recorder: Option<(std::path::PathBuf, Mutex<profile::Recorder>)>,
    overlay: Option<Overlay>,
    temp_overlay: Option<std::path::PathBuf>,
    /// The layers a table of contents described, to re-derive.
    toc_check: Option<toc_check::TocCheck>,
    /// Why the disk refuses all I/O (its table of contents proved wrong).
    withdrawn: std::sync::OnceLock<String>,
    /// The table of contents was re-derived from the layers and held.
    toc_held: std::sync::atomic::AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(p) = self.temp_overlay.take() {
            let _ = std::fs::remove_file(&p);
            let _ = std::fs::remove_file(format!("{}.bitmap", p.display()));
        }
    }
}

impl Inner {
    /// Device size in bytes.
    pub fn size(&self) -> u64 {
        self.image.size
    }

    /// Counters.
    pub fn stats(&self) -> &DiskStats {
        &self.stats
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.overlay.is_none()
    }

    /// Fill `buf` with the device bytes at `offset`. Blocks the overlay
    /// holds are not read from below (no fetch for data the guest wrote).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let Some(o) = &self.overlay else {
            return self.read_lower(offset, buf);
        };
        self.check_range(offset, buf.len())?;
        let covered = o.covered(offset, buf.len());
        let first = offset / BLOCK_SIZE;
        let end = offset + buf.len() as u64;
        // Read each run of blocks the overlay does not hold from below.
        let mut i = 0;
        while i < covered.len() {
            if covered[i] {
                i += 1;
                continue;
            }
            let run = covered[i..].iter().take_while(|c| !**c).count();
            let lo = ((first + i as u64) * BLOCK_SIZE).max(offset);
            let hi = ((first + (i + run) as u64) * BLOCK_SIZE).min(end);
            self.read_lower(lo, &mut buf[(lo - offset) as usize..(hi - offset) as usize])?;
            i += run;
        }
        o.read_into(offset, buf)?;
        Ok(())
    }

    /// Write `data` at `offset` (into the overlay).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let o = self.overlay.as_ref().ok_or(DiskError::ReadOnly)?;
        self.check_range(offset, data.len())?;
        let lower =
            |off: u64, buf: &mut [u8]| self.read_lower(off, buf).map_err(std::io::Error::other);
        o.write(offset, data, &lower)
            .inspect_err(|_| crate::metrics::global().error(crate::metrics::ErrorKind::Overlay))?;
        self.guest_wrote(offset, data.len() as u64)
    }

    /// Make `len` bytes at `offset` read as zeros (virtio WRITE_ZEROES and
    /// DISCARD). Whole blocks cost no space in the overlay.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        let o = self.overlay.as_ref().ok_or(DiskError::ReadOnly)?;
        self.check_range(offset, usize::try_from(len).unwrap_or(usize::MAX))?;
        let lower =
            |off: u64, buf: &mut [u8]| self.read_lower(off, buf).map_err(std::io::Error::other);
        o.zero(offset, len, &lower)
            .inspect_err(|_| crate::metrics::global().error(crate::metrics::ErrorKind::Overlay))?;
        self.guest_wrote(offset, len)
    }

    /// Tell `--flush-to` about a guest write: the whole blocks it touched,
    /// as the device now reads them, in pieces of at most 1 MiB.
    fn guest_wrote(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        let Some(f) = &self.flush_to else {
            return Ok(());
        };
        let start = offset / BLOCK_SIZE * BLOCK_SIZE;
        let end = ((offset + len).div_ceil(BLOCK_SIZE) * BLOCK_SIZE).min(self.image.size);
        let mut merged = vec![0u8; ((end - start) as usize).min(1 << 20)];
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(merged.len());
            self.read_at(at, &mut merged[..n])?;
            f.guest_wrote(at, &merged[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    /// Make every write so far durable (virtio FLUSH).
    pub fn flush(&self) -> Result<(), DiskError> {
        if let Some(o) = &self.overlay {
            o.flush()?;
        }
        if let Some(f) = &self.flush_to {
            f.flush()?;
        }
        Ok(())
    }

    /// Tell `--flush-to` that span `span` of `layer` arrived.
    fn arrived(&self, layer: usize, span: usize, data: &[u8]) -> Result<(), DiskError> {
        if let Some(f) = &self.flush_to {
            let start = self.layers[layer].0.spans()[span].start;
            let guest_has = |block: u64| self.overlay.as_ref().is_some_and(|o| o.has(block));
            f.span_arrived(layer, span, start, data, &guest_has)?;
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<u64, DiskError> {
        if let Some(why) = self.withdrawn.get() {
            return Err(DiskError::Withdrawn(why.clone()));
        }
        offset
            .checked_add(len as u64)
            .filter(|e| *e <= self.image.size)
            .ok_or(DiskError::OutOfRange {
                offset,
                len,
                size: self.image.size,
            })
    }

    /// Refuse all further I/O, for `why`, and forget every span decoded
    /// so far.
    fn poison(&self, why: String) {
        tracing::error!("{why}; the disk refuses all I/O from now on");
        crate::metrics::global().error(crate::metrics::ErrorKind::Verify);
        let _ = self.withdrawn.set(why);
        let mut c = crate::sync::lock(&self.cache);
        c.lru.clear();
        c.bytes = 0;
        drop(c);
        crate::sync::lock(&self.prefixes).clear();
        // Spans decoded through a table of contents never go to the shared
        // chunk store (see `LayerIndex::chunk_key`): nothing to drop there.
    }

    /// The device bytes below the overlay.
    fn read_lower(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.check_range(offset, buf.len())?;
        for (at, region) in self.image.regions(offset, buf.len() as u64) {
            let out = &mut buf[(at - offset) as usize..(at - offset + region.len()) as usize];
            match region {
                Region::Metadata(bytes) => out.copy_from_slice(bytes),
                Region::Zeros(_) => self.metadata.overlay(at, out)?,
                Region::Data {
                    layer, tar_offset, ..
                } => self.read_layer(layer, tar_offset, out)?,
            }
        }
        Ok(())
    }

    /// Hand the device bytes `[offset, offset+len)` to `emit` in order,
    /// without an intermediate buffer where the bytes already exist in
    /// memory (metadata blocks, cached spans, zeros). Ranges the overlay
    /// covers go through `read_at` in pieces.
    pub fn read_with(
        &self,
        offset: u64,
        len: usize,
        emit: &mut dyn FnMut(&[u8]) -> Result<(), DiskError>,
    ) -> Result<(), DiskError> {
        let end = self.check_range(offset, len)?;
        if let Some(o) = &self.overlay
            && o.covered(offset, len).into_iter().any(|b| b)
        {
            let mut buf = vec![0u8; len.min(1 << 20)];
            let mut at = offset;
            while at < end {
                let n = ((end - at) as usize).min(buf.len());
                self.read_at(at, &mut buf[..n])?;
                emit(&buf[..n])?;
                at += n as u64;
            }
            return Ok(());
        }
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        for (at, region) in self.image.regions(offset, len as u64) {
            match region {
                Region::Metadata(bytes) => emit(bytes)?,
                Region::Zeros(n) if self.metadata.touches(at, n) => {
                    let mut buf = vec![0u8; n as usize];
                    self.metadata.overlay(at, &mut buf)?;
                    emit(&buf)?;
                }
                Region::Data {
                    layer,
                    tar_offset,
                    len,
                } => self.layer_pieces(layer, tar_offset, len as usize, emit)?,
                Region::Zeros(mut n) => {
                    while n > 0 {
                        let k = n.min(ZEROS.len() as u64) as usize;
                        emit(&ZEROS[..k])?;
                        n -= k as u64;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A lazily filled block device.
pub struct Disk {
    inner: Arc<Inner>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Disk {
    /// Open the image: resolve, index (without keeping layer blobs), plan;
    /// start read-ahead, and `--prefetch` if asked.
    pub fn open(opts: &DiskOptions, cache: &BlobCache) -> Result<Disk, DiskError> {
        let (inner, leftovers) = Inner::open(opts, cache)?;
        let settle = open::settle(&inner, leftovers)?;
        let (tx, rx) = std::sync::mpsc::channel::<(usize, usize)>();
        *crate::sync::lock(&inner.readahead) = Some(tx);
        let weak = Arc::downgrade(&inner);
        let ra = std::thread::Builder::new()
            .name("ocidisk-readahead".into())
            .spawn(move || {
                for (layer, span) in rx {
                    let Some(inner) = weak.upgrade() else { break };
                    if let Err(e) = inner.span(layer, span) {
                        tracing::debug!("read-ahead of layer {layer} span {span}: {e}");
                    }
                }
            })
            .map_err(DiskError::Runtime)?;
        let disk = Disk {
            inner,
            stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            workers: Mutex::new(vec![ra, settle]),
        };
        if let Some(p) = &opts.profile.prefetch {
            let spans = profile::load(p, &disk.inner.layers)?;
            tracing::info!(profile = %p.display(), spans = spans.len(), "prefetching the profile's spans");
            disk.start_fetching("ocidisk-profile", spans)?;
        }
        if opts.prefetch {
            disk.start_prefetch()?;
        }
        if disk.inner.toc_check.is_some() {
            let h = toc_check::spawn(
                Arc::downgrade(&disk.inner),
                disk.stop.clone(),
                opts.toc_check_delay,
            )
            .map_err(DiskError::Runtime)?;
            crate::sync::lock(&disk.workers).push(h);
        }
        Ok(disk)
    }

    /// Whether the table of contents the disk started from (`--soci-v1`)
    /// has been re-derived from the layers and held.
    pub fn toc_held(&self) -> bool {
        self.inner.toc_held.load(Ordering::Relaxed)
    }

    /// Fetch `spans` in order in the background.
    fn start_fetching(&self, name: &str, spans: Vec<(usize, usize)>) -> Result<(), DiskError> {
        let inner = self.inner.clone();
        let stop = self.stop.clone();
        let what = name.trim_start_matches("ocidisk-").to_string();
        let h = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for (layer, span) in spans {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Err(e) = inner.span(layer, span) {
                        tracing::warn!("{what}: layer {layer} span {span}: {e}");
                    }
                }
                tracing::info!("{what} done");
            })
            .map_err(DiskError::Runtime)?;
        crate::sync::lock(&self.workers).push(h);
        Ok(())
    }

    /// Write the `--record-profile` file with what readers touched so
    /// far (also done when the disk closes).
    pub fn save_profile(&self) -> Result<(), DiskError> {
        let Some((path, rec)) = &self.inner.recorder else {
            return Ok(());
        };
        let rec = crate::sync::lock(rec);
        rec.save(path, &self.inner.image_id, &self.inner.layers)?;
        tracing::info!(profile = %path.display(), spans = rec.len(), "prefetch profile written");
        Ok(())
    }

    /// Fetch every span in the background (one thread, in layer order), so a
    /// long-running disk ends up independent of the registry.
    pub fn start_prefetch(&self) -> Result<(), DiskError> {
        let all = self
            .inner
            .layers
            .iter()
            .enumerate()
            .flat_map(|(l, (index, _))| (0..index.spans().len()).map(move |s| (l, s)))
            .collect();
        self.start_fetching("ocidisk-prefetch", all)
    }

    /// Wait for a running prefetch to finish.
    pub fn wait_prefetch(&self) {
        let mut w = crate::sync::lock(&self.workers);
        // The read-ahead worker (first) runs until the disk closes.
        while w.len() > 1 {
            let h = w.pop().expect("a worker");
            let _ = h.join();
        }
    }

    /// Whether the `--flush-to` image is complete (every span arrived).
    pub fn flush_to_complete(&self) -> bool {
        self.inner.flush_to.as_ref().is_some_and(|f| f.complete())
    }

    /// Device size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size()
    }

    /// The image identity (manifest digest hex; the config digest for docker
    /// archives), e.g. for a device serial number.
    pub fn image_id(&self) -> &str {
        &self.inner.image_id
    }

    /// Counters.
    pub fn stats(&self) -> &DiskStats {
        self.inner.stats()
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.inner.read_only()
    }

    /// Fill `buf` with the device bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.inner.read_at(offset, buf)
    }

    /// Hand the device bytes `[offset, offset+len)` to `emit` in order, as
    /// slices of the decoded data itself (no copy into a caller's buffer):
    /// a frontend copies them straight to where they go, e.g. guest memory.
    pub fn read_with(
        &self,
        offset: u64,
        len: usize,
        emit: &mut dyn FnMut(&[u8]) -> Result<(), DiskError>,
    ) -> Result<(), DiskError> {
        self.inner.read_with(offset, len, emit)
    }

    /// Write `data` at `offset` (into the overlay).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        self.inner.write_at(offset, data)
    }

    /// Make `len` bytes at `offset` read as zeros.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.inner.write_zeroes(offset, len)
    }

    /// Make every write so far durable.
    pub fn flush(&self) -> Result<(), DiskError> {
        self.inner.flush()
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if let Err(e) = self.save_profile() {
            tracing::error!("{e}");
        }
        self.stop.store(true, Ordering::Relaxed);
        // Closing the channel ends the read-ahead worker.
        crate::sync::lock(&self.inner.readahead).take();
        for h in crate::sync::lock(&self.workers).drain(..) {
            let _ = h.join();
        }
    }
}
