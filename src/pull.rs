//! `pull`: fetch an image's blobs into the cache, verifying every byte.
//!
//! Each layer streams once: the compressed bytes go to a temp file in the
//! cache and through a hasher (the descriptor digest) and a decompressor
//! feeding a second hasher (the config's diff_id). Only when both match is the
//! blob renamed into place; otherwise nothing is kept. A registry connection
//! that drops mid-blob is resumed with a Range request within the retry
//! budget. Blobs already cached (and still intact) are not fetched again.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::cache::{BlobCache, CacheError, ImageRecord, now_secs};
use crate::digest::{Digest, Hasher};
use crate::layer_index::{
    IndexError, IndexStore, LayerIndex, LayerIndexer, PushError, SpanOut, SpanSink, TarTap,
    index_blob,
};
use crate::platform::Platform;
use crate::source::manifest::{Compression, ImageManifest};
use crate::source::{
    ImageLocation, Layer, ResolvedImage, Source, SourceError, SourceOptions, is_digest_error,
    resolve_with,
};

/// Errors pulling an image.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Finding or reading the image failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The uncompressed layer does not match the config's diff_id.
    #[error(
        "layer {layer} of {image}: uncompressed content hashes to {actual}, but the config's diff_id is {expected}; nothing was kept"
    )]
    DiffIdMismatch {
        /// The image.
        image: String,
        /// The layer's digest.
        layer: Digest,
        /// The config's diff_id.
        expected: Digest,
        /// What the content hashes to.
        actual: Digest,
    },
    /// The layer's tar stream is invalid, or indexing failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The layer does not decompress.
    #[error(
        "layer {layer} of {image} is not valid {compression:?} data: {detail}; nothing was kept"
    )]
    Decode {
        /// The image.
        image: String,
        /// The layer's digest.
        layer: Digest,
        /// The compression claimed.
        compression: Compression,
        /// The decoder's complaint.
        detail: String,
    },
}

/// Observes a pull, for progress bars.
pub trait PullProgress: Send + Sync {
    /// A layer starts downloading (`resume_from` > 0 when resuming).
    fn start(&self, layer: &Layer, resume_from: u64);
    /// `bytes` more of the layer arrived.
    fn advance(&self, layer: &Layer, bytes: u64);
    /// The layer is in the cache; `downloaded` is false if it already was.
    fn finish(&self, layer: &Layer, downloaded: bool);
    /// `materialize` is writing the image file: `done` of `total` bytes
    /// (metadata blocks and file data) are in it.
    fn writing(&self, _done: u64, _total: u64) {}
}

/// A progress observer that shows nothing.
pub struct NoProgress;

impl PullProgress for NoProgress {
    fn start(&self, _: &Layer, _: u64) {}
    fn advance(&self, _: &Layer, _: u64) {}
    fn finish(&self, _: &Layer, _: bool) {}
}

/// Watches the layers of a pull go by, bottom first: `materialize` writes
/// file data to its final place in the image while a layer streams.
pub trait LayerTaps: Send + Sync {
    /// Layer `i` starts streaming (again, from its first byte, if the
    /// stream restarted): a tap for its uncompressed bytes, or `None`.
    fn tap(&self, i: usize) -> Option<Box<dyn TarTap>>;
    /// Layer `i`'s index is known, whether it streamed or was cached.
    fn indexed(&self, i: usize, index: &LayerIndex);
}

/// What to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Where the image is.
    pub location: ImageLocation,
    /// The platform asked for explicitly (`None`: the host's).
    pub platform: Option<Platform>,
    /// How to reach the source.
    pub source: SourceOptions,
    /// Layers fetched at once.
    pub concurrency: usize,
    /// Keep the layer blobs in the cache (`pull`, `materialize`), or only
    /// build their indexes and let the bytes go (as [`index_image`] does).
    pub keep_blobs: bool,
    /// The trust policy the image must satisfy before any layer is
    /// fetched (`None`: accept every image).
    pub trust: Option<std::sync::Arc<crate::trust::Trust>>,
    /// A lazy disk may start from a SOCI v1 index found among the image
    /// manifest's referrers instead of streaming the layers it covers
    /// (`--soci-v1`: anyone who can push to the repository can add one).
    pub soci_v1: bool,
}

/// What a pull did.
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    /// The image as resolved.
    pub reference: String,
    /// Manifest digest (config digest for docker archives).
    pub image_id: Digest,
    /// The platform pulled.
    pub platform: Platform,
    /// Layers in the image.
    pub layers: usize,
    /// Layers fetched from the source this time.
    pub downloaded_layers: usize,
    /// Compressed bytes fetched this time.
    pub downloaded_bytes: u64,
    /// Layers that were already cached.
    pub cached_layers: usize,
}

/// Pull an image into the cache.
pub async fn pull(
    opts: &PullOptions,
    cache: &BlobCache,
    progress: Arc<dyn PullProgress>,
) -> Result<PullReport, PullError> {
    pull_image(opts, cache, progress).await.map(|(r, _, _)| r)
}

/// Pull an image into the cache and return it resolved, with its layer
/// indexes (bottom first): every layer is then verified and indexed, and its
/// blob cached when `keep_blobs` is set.
pub async fn pull_image(
    opts: &PullOptions,
    cache: &BlobCache,
    progress: Arc<dyn PullProgress>,
) -> Result<(PullReport, ResolvedImage, Vec<LayerIndex>), PullError> {
    let p = pull_inner(opts, cache, progress, None, None).await?;
    Ok((p.report, p.image, p.indexes))
}

/// [`pull_image`], showing each layer to `taps` as it streams. Layers are
/// then fetched one at a time, bottom first, so that a tap of layer `i`
/// starts after [`LayerTaps::indexed`] has seen every layer below.
///
/// The indexes of the layers that streamed are not saved yet (the
/// returned flags say which): the caller saves them with
/// [`save_indexes`] while it does something else with them.
pub async fn pull_image_tapped(
    opts: &PullOptions,
    cache: &BlobCache,
    progress: Arc<dyn PullProgress>,
    taps: Arc<dyn LayerTaps>,
) -> Result<(PullReport, ResolvedImage, Vec<LayerIndex>, Vec<bool>), PullError> {
    let opts = PullOptions {
        concurrency: 1,
        ..opts.clone()
    };
    let p = pull_inner(&opts, cache, progress, None, Some(taps)).await?;
    Ok((p.report, p.image, p.indexes, p.unsaved))
}

/// Save the indexes `unsaved` marks (see [`pull_image_tapped`]).
pub fn save_indexes(
    cache: &BlobCache,
    indexes: &[LayerIndex],
    unsaved: &[bool],
) -> Result<(), PullError> {
    let store = IndexStore::new(cache)?;
    for (ix, _) in indexes.iter().zip(unsaved).filter(|(_, u)| **u) {
        store.save(ix)?;
    }
    Ok(())
}

/// The lazy disk's cold pass: resolve the image and make sure every layer
/// is verified and indexed, without keeping layer blobs (an index already
/// cached costs no fetch). The decoded spans of zstd layers, whose only
/// access point may be their start, and of small layers go to `spans` as
/// the pass meets them.
/// Returns the opened source for later range reads, and per layer whether
/// its index came from a table of contents that must be re-derived (a
/// `--soci-v1` referrer: nothing the manifest vouches for).
pub async fn index_image(
    opts: &PullOptions,
    cache: &BlobCache,
    spans: Arc<dyn SpanSink>,
) -> Result<(Source, ResolvedImage, Vec<LayerIndex>, Vec<bool>), PullError> {
    let opts = PullOptions {
        keep_blobs: false,
        ..opts.clone()
    };
    let p = pull_inner(&opts, cache, Arc::new(NoProgress), Some(spans), None).await?;
    Ok((p.source, p.image, p.indexes, p.rederive))
}

/// What [`pull_inner`] did and found.
struct Pulled {
    report: PullReport,
    source: Source,
    image: ResolvedImage,
    indexes: Vec<LayerIndex>,
    /// Per layer: streamed by a tapped pull, its index not yet saved.
    unsaved: Vec<bool>,
    /// Per layer: indexed from a table of contents to re-derive.
    rederive: Vec<bool>,
}

async fn pull_inner(
    opts: &PullOptions,
    cache: &BlobCache,
    progress: Arc<dyn PullProgress>,
    spans: Option<Arc<dyn SpanSink>>,
    taps: Option<Arc<dyn LayerTaps>>,
) -> Result<Pulled, PullError> {
    let source = Source::open(&opts.location, &opts.source).await?;
    let indexes = IndexStore::new(cache)?;
    // A lazy pass may start layers not yet indexed here from a table of
    // contents instead of streaming them; a SOCI index is looked up while
    // the config is fetched.
    let lazy = !opts.keep_blobs && taps.is_none();
    let soci_lookup = async |location: &str, subject: Option<&Digest>, manifest: &ImageManifest| {
        let unindexed = manifest.layers.iter().any(|l| !indexes.contains(&l.digest));
        if !(lazy && unindexed) {
            return None;
        }
        let head = crate::toc::soci::Head {
            location,
            subject,
            manifest,
        };
        crate::toc::soci::fetch(&source, &head, cache, opts.soci_v1).await
    };
    let (image, soci) = resolve_with(
        &source,
        &opts.location,
        cache,
        opts.platform.as_ref(),
        opts.trust.as_deref(),
        soci_lookup,
    )
    .await?;
    let stored: Vec<bool> = image
        .layers
        .iter()
        .map(|l| indexes.contains(&l.descriptor.digest))
        .collect();
    let tables = crate::toc::Tables::from_fetched(soci, &image);
    let results: Vec<(bool, u64, LayerIndex)> =
        futures_util::stream::iter(image.layers.iter().enumerate())
            .map(|(i, layer)| {
                let (source, indexes, image, taps) = (&source, &indexes, &image, taps.as_ref());
                let keep = Keep {
                    blobs: opts.keep_blobs,
                    spans: spans.as_ref(),
                    // A tapped pull's caller saves the indexes later.
                    save_index: taps.is_none(),
                };
                let progress = progress.as_ref();
                let (tables, from_table) = (&tables, lazy && !stored[i]);
                async move {
                    if from_table && let Some(ix) = tables.index(source, layer, cache).await {
                        progress.finish(layer, false);
                        return Ok((false, 0, ix));
                    }
                    let tap = taps.map(|t| (t.clone(), i));
                    let r = fetch_layer(source, cache, indexes, image, layer, progress, keep, tap)
                        .await?;
                    if let Some(t) = taps {
                        t.indexed(i, &r.2);
                    }
                    Ok::<_, PullError>(r)
                }
            })
            .buffered(opts.concurrency.max(1))
            .try_collect()
            .await?;
    let downloaded_layers = results.iter().filter(|(d, _, _)| *d).count();
    let report = PullReport {
        reference: image.location.clone(),
        image_id: image.id().clone(),
        platform: image.platform.clone(),
        layers: image.layers.len(),
        downloaded_layers,
        downloaded_bytes: results.iter().map(|(_, b, _)| b).sum(),
        cached_layers: image.layers.len() - downloaded_layers,
    };
    let mut size = image.manifest.config.size + image.layers_size();
    if let Some(d) = &image.manifest_digest {
        size += std::fs::metadata(cache.blob_path(d)).map_or(0, |m| m.len());
    }
    let recorded = cache.record_image(&ImageRecord {
        reference: image.location.clone(),
        platform: image.platform.clone(),
        image_id: image.id().clone(),
        blobs: image.blobs(),
        size,
        pulled_at: now_secs(),
    });
    if let Err(e) = recorded {
        // The record only feeds `images` and `prune`; a lazy disk serves
        // without it.
        if opts.keep_blobs {
            return Err(e.into());
        }
        tracing::warn!("{e}; the image is not listed in the cache");
    }
    let unsaved = results
        .iter()
        .map(|(downloaded, _, _)| *downloaded && taps.is_some())
        .collect();
    let rederive = image
        .layers
        .iter()
        .zip(&results)
        .map(|(l, (_, _, ix))| tables.rederive(l, ix))
        .collect();
    let indexes = results.into_iter().map(|(_, _, ix)| ix).collect();
    Ok(Pulled {
        report,
        source,
        image,
        indexes,
        unsaved,
        rederive,
    })
}

/// Fetch one layer through the verified pass (blob digest, diff_id) into
/// the cache, unless it is there, and index it (the index is stored):
/// what re-derives a layer a table of contents described.
pub async fn fetch_verified(
    source: &Source,
    cache: &BlobCache,
    image: &ResolvedImage,
    layer: &Layer,
) -> Result<LayerIndex, PullError> {
    let indexes = IndexStore::new(cache)?;
    let keep = Keep {
        blobs: true,
        spans: None,
        save_index: true,
    };
    fetch_layer(
        source,
        cache,
        &indexes,
        image,
        layer,
        &NoProgress,
        keep,
        None,
    )
    .await
    .map(|r| r.2)
}

/// The index of a cached layer: from the store, or built from the blob.
pub async fn ensure_index(
    cache: &BlobCache,
    indexes: &IndexStore,
    layer: &Layer,
) -> Result<LayerIndex, PullError> {
    if let Some(ix) = indexes.load(&layer.descriptor.digest) {
        return Ok(ix);
    }
    let (path, digest, diff_id, compression) = (
        cache.blob_path(&layer.descriptor.digest),
        layer.descriptor.digest.clone(),
        layer.diff_id.clone(),
        layer.compression,
    );
    let ix = tokio::task::spawn_blocking(move || index_blob(&path, &digest, &diff_id, compression))
        .await
        .expect("indexing does not panic")?;
    indexes.save(&ix)?;
    Ok(ix)
}

/// Checks a layer as it streams: blob digest, diff_id and tar structure,
/// building the layer index (entries, access points, span hashes) on the way.
struct LayerVerifier {
    blob: Hasher,
    /// Compressed bytes on their way to the inflate thread (`None` once
    /// it stopped, on a decode error).
    feed: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    inflate: std::thread::JoinHandle<Result<LayerIndexer, PushError>>,
    /// Where decoded zstd spans go, for a restart from byte 0.
    spans: Option<Arc<dyn SpanSink>>,
    /// Who taps the layer's bytes, and its position, for a restart too.
    taps: Option<(Arc<dyn LayerTaps>, usize)>,
    /// Where gzip checkpoint windows go as they are made.
    cache: BlobCache,
}

/// Compressed chunks queued for the inflate thread: bounded, so a fast
/// download waits for inflate instead of growing memory.
const INFLATE_QUEUE: usize = 16;

impl LayerVerifier {
    /// The blob digest is computed on the download's side; inflating, the
    /// diff_id and the index run on a thread of their own, so the two
    /// halves overlap on two cores. `spans`: keep decoded zstd spans.
    fn new(
        layer: &Layer,
        spans: Option<Arc<dyn SpanSink>>,
        taps: Option<(Arc<dyn LayerTaps>, usize)>,
        cache: &BlobCache,
    ) -> Result<LayerVerifier, String> {
        let mut indexer = LayerIndexer::new(layer.compression, layer.diff_id.algorithm()).map_err(
            |e| match e {
                PushError::Decode(d) => d,
                PushError::Tar(t) => t.to_string(),
            },
        )?;
        if let Some(store) = spans.clone() {
            let out: SpanOut = Box::new(move |hash, data| store.put(hash, data));
            indexer.keep_spans(out);
        }
        if let Some(tap) = taps.as_ref().and_then(|(t, i)| t.tap(*i)) {
            indexer.tap(tap);
        }
        if layer.compression == Compression::Gzip {
            // Windows (32 KiB each per access point) would otherwise be held
            // until the index is dropped: a GB-sized layer's add up.
            match cache.scratch_file("windows") {
                Ok(f) => indexer.spill_windows_to(Arc::new(f)),
                Err(e) => tracing::debug!("no scratch file for windows: {e}"),
            }
        }
        let mut indexer = indexer.threaded().map_err(|e| match e {
            PushError::Decode(d) => d,
            PushError::Tar(t) => t.to_string(),
        })?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(INFLATE_QUEUE);
        let inflate = std::thread::Builder::new()
            .name("ocidisk-inflate".into())
            .spawn(move || {
                while let Some(chunk) = rx.blocking_recv() {
                    indexer.push(&chunk)?;
                }
                Ok(indexer)
            })
            .map_err(|e| format!("starting the inflate thread: {e}"))?;
        Ok(LayerVerifier {
            blob: Hasher::new(layer.descriptor.digest.algorithm()),
            feed: Some(tx),
            inflate,
            spans,
            taps,
            cache: cache.clone(),
        })
    }

    /// A fresh verifier for the same layer (the stream restarts at 0).
    fn restart(&self, layer: &Layer) -> Result<LayerVerifier, String> {
        LayerVerifier::new(layer, self.spans.clone(), self.taps.clone(), &self.cache)
    }

    async fn update(&mut self, bytes: bytes::Bytes) {
        self.blob.update(&bytes);
        if let Some(tx) = &self.feed
            && tx.send(bytes).await.is_err()
        {
            // The thread stopped on a decode error; finish() reports it.
            self.feed = None;
        }
    }

    /// The blob digest, and the indexer (or why the stream broke).
    async fn finish(self) -> (Digest, Result<LayerIndexer, PushError>) {
        let LayerVerifier {
            blob,
            feed,
            inflate,
            ..
        } = self;
        // Closing the queue lets the thread finish; dropping a verifier
        // without finish() ends it the same way.
        drop(feed);
        let blob = blob.finish();
        let joined = tokio::task::spawn_blocking(move || inflate.join()).await;
        let verdict = match joined {
            Ok(Ok(r)) => r,
            _ => Err(PushError::Decode("the inflate thread failed".into())),
        };
        (blob, verdict)
    }
}

/// Where a streaming layer's bytes go: a cache temp file, or nowhere (only
/// counted) when blobs are not kept.
struct Received {
    writer: Option<crate::cache::BlobWriter>,
    len: u64,
}

impl Received {
    fn reset(&mut self) -> Result<(), CacheError> {
        if let Some(w) = &mut self.writer {
            w.reset()?;
        }
        self.len = 0;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), CacheError> {
        if let Some(w) = &mut self.writer {
            w.write_all(bytes).map_err(|source| CacheError::Io {
                op: "write",
                path: w.path().to_path_buf(),
                source,
            })?;
        }
        self.len += bytes.len() as u64;
        Ok(())
    }
}

enum StreamFailure {
    Transient(String),
    Final(PullError),
}

/// Compressed size up to which a lazy pass keeps a layer's decoded spans
/// whatever its compression: a later read of any part of a small layer
/// would fetch much of it again (a new version's top layer, typically).
pub const SMALL_LAYER: u64 = 1 << 20;

/// Where a pass that keeps no blob keeps a layer's decoded spans: those
/// of zstd layers (whose only access point may be their start) and of
/// small layers.
fn span_store(keep: Keep<'_>, layer: &Layer) -> Option<Arc<dyn SpanSink>> {
    let wanted = layer.compression == Compression::Zstd || layer.descriptor.size <= SMALL_LAYER;
    match keep.spans {
        Some(store) if !keep.blobs && wanted => Some(store.clone()),
        _ => None,
    }
}

/// What a pass keeps besides the index.
#[derive(Clone, Copy)]
struct Keep<'a> {
    /// The layer blob, in the cache.
    blobs: bool,
    /// The decoded spans of zstd layers.
    spans: Option<&'a Arc<dyn SpanSink>>,
    /// Save the index of a layer that streamed (else the caller does).
    save_index: bool,
}

/// Fetch one layer into the cache unless it is there. Returns whether it was
/// downloaded, how many bytes were transferred, and the layer's index.
/// `taps`: who sees its bytes if it streams, and its position.
#[allow(clippy::too_many_arguments)]
async fn fetch_layer(
    source: &Source,
    cache: &BlobCache,
    indexes: &IndexStore,
    image: &ResolvedImage,
    layer: &Layer,
    progress: &dyn PullProgress,
    keep: Keep<'_>,
    taps: Option<(Arc<dyn LayerTaps>, usize)>,
) -> Result<(bool, u64, LayerIndex), PullError> {
    let keep_blobs = keep.blobs;
    let desc = &layer.descriptor;
    if !keep_blobs && let Some(ix) = indexes.load(&desc.digest) {
        progress.finish(layer, false);
        return Ok((false, 0, ix));
    }
    let check = {
        let (cache, digest, size) = (cache.clone(), desc.digest.clone(), desc.size);
        tokio::task::spawn_blocking(move || cache.has_verified(&digest, Some(size)))
    };
    if check.await.expect("cache check does not panic")? {
        let ix = ensure_index(cache, indexes, layer).await?;
        progress.finish(layer, false);
        return Ok((false, 0, ix));
    }
    let mut received = Received {
        writer: if keep_blobs {
            Some(cache.begin()?)
        } else {
            None
        },
        len: 0,
    };
    let mut verifier =
        LayerVerifier::new(layer, span_store(keep, layer), taps, cache).map_err(|detail| {
            PullError::Decode {
                image: image.location.clone(),
                layer: desc.digest.clone(),
                compression: layer.compression,
                detail,
            }
        })?;
    let started = Instant::now();
    let mut attempt = 1;
    let mut transferred = 0u64;
    loop {
        progress.start(layer, received.len);
        match stream_once(
            source,
            image,
            layer,
            &mut received,
            &mut verifier,
            progress,
            &mut transferred,
        )
        .await
        {
            Ok(()) => break,
            Err(StreamFailure::Final(e)) => return Err(e),
            Err(StreamFailure::Transient(detail)) => {
                let policy = source.retry_policy().cloned().unwrap_or_default();
                match policy.backoff(attempt, started) {
                    Some(pause) => {
                        tracing::info!(layer = %desc.digest, attempt, "resuming in {pause:?}: {detail}");
                        tokio::time::sleep(pause).await;
                        attempt += 1;
                    }
                    None => {
                        return Err(PullError::Source(SourceError::Read {
                            image: image.location.clone(),
                            what: format!("layer {}", desc.digest),
                            source: std::io::Error::other(format!(
                                "{detail} (gave up after {attempt} attempts)"
                            )),
                        }));
                    }
                }
            }
        }
    }
    let (blob, verdict) = verifier.finish().await;
    if blob != desc.digest {
        return Err(SourceError::DigestMismatch {
            image: image.location.clone(),
            what: format!("layer {}", desc.digest),
            expected: desc.digest.clone(),
            actual: blob,
        }
        .into());
    }
    let index = match verdict {
        Err(PushError::Decode(detail)) => {
            return Err(PullError::Decode {
                image: image.location.clone(),
                layer: desc.digest.clone(),
                compression: layer.compression,
                detail,
            });
        }
        Err(PushError::Tar(source)) => {
            return Err(IndexError::Tar {
                layer: desc.digest.clone(),
                source,
            }
            .into());
        }
        Ok(ix) => match ix.finish(&desc.digest, &layer.diff_id) {
            Ok(ix) => ix,
            Err(IndexError::DiffId {
                expected, actual, ..
            }) => {
                return Err(PullError::DiffIdMismatch {
                    image: image.location.clone(),
                    layer: desc.digest.clone(),
                    expected,
                    actual,
                });
            }
            Err(e) => return Err(e.into()),
        },
    };
    if let Some(w) = received.writer {
        w.commit(&desc.digest)?;
    }
    if !keep.save_index {
        progress.finish(layer, true);
        return Ok((true, transferred, index));
    }
    if let Err(e) = indexes.save(&index) {
        // `pull` fills the cache: failing to is its error. A lazy disk
        // (no blobs kept) has the index in memory and serves on.
        if keep_blobs {
            return Err(e.into());
        }
        tracing::warn!(
            layer = %desc.digest,
            "{e}; the index stays in memory (the next start indexes this layer again)"
        );
    }
    progress.finish(layer, true);
    Ok((true, transferred, index))
}

async fn stream_once(
    source: &Source,
    image: &ResolvedImage,
    layer: &Layer,
    received: &mut Received,
    verifier: &mut LayerVerifier,
    progress: &dyn PullProgress,
    transferred: &mut u64,
) -> Result<(), StreamFailure> {
    let desc = &layer.descriptor;
    let is_registry = matches!(source, Source::Registry(_));
    let mut body = match source.blob(desc, received.len).await {
        Ok(b) => b,
        Err(e) => return Err(StreamFailure::Final(e.into())),
    };
    if body.start == 0 && received.len > 0 {
        received
            .reset()
            .map_err(|e| StreamFailure::Final(e.into()))?;
        *verifier = verifier.restart(layer).map_err(|detail| {
            StreamFailure::Final(PullError::Decode {
                image: image.location.clone(),
                layer: desc.digest.clone(),
                compression: layer.compression,
                detail,
            })
        })?;
    }
    let read_err = |source: std::io::Error| SourceError::Read {
        image: image.location.clone(),
        what: format!("layer {}", desc.digest),
        source,
    };
    while let Some(chunk) = body.stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let e = read_err(e);
                if is_digest_error(&e) {
                    break; // oci-client's own end-of-blob check; ours below names the blob
                }
                return Err(if is_registry {
                    StreamFailure::Transient(e.to_string())
                } else {
                    StreamFailure::Final(e.into())
                });
            }
        };
        if received.len + chunk.len() as u64 > desc.size {
            let (image, what) = (image.location.clone(), format!("layer {}", desc.digest));
            let expected = desc.size;
            return Err(StreamFailure::Final(
                match source.stored_size(&desc.digest) {
                    Some(actual) => SourceError::SizeMismatch {
                        image,
                        what,
                        expected,
                        actual,
                    },
                    None => SourceError::LongerThanDescriptor {
                        image,
                        what,
                        expected,
                    },
                }
                .into(),
            ));
        }
        if let Err(e) = received.write(&chunk) {
            return Err(StreamFailure::Final(PullError::Cache(e)));
        }
        let n = chunk.len() as u64;
        verifier.update(chunk).await;
        *transferred += n;
        progress.advance(layer, n);
    }
    if received.len < desc.size {
        let msg = format!("stream ended after {} of {} bytes", received.len, desc.size);
        return Err(if is_registry {
            StreamFailure::Transient(msg)
        } else {
            StreamFailure::Final(
                SourceError::SizeMismatch {
                    image: image.location.clone(),
                    what: format!("layer {}", desc.digest),
                    expected: desc.size,
                    actual: received.len,
                }
                .into(),
            )
        });
    }
    Ok(())
}
