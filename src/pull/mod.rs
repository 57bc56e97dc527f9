//! `pull`: fetch an image's blobs into the cache, verifying every byte.
//!
//! Each layer streams once: the compressed bytes go to a temp file in the
//! cache and through a hasher (the descriptor digest) and a decompressor
//! feeding a second hasher (the config's diff_id). Only when both match is the
//! blob renamed into place; otherwise nothing is kept. A registry connection
//! that drops mid-blob is resumed with a Range request within the retry
//! budget. Blobs already cached (and still intact) are not fetched again.

use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::cache::{BlobCache, CacheError, ImageRecord, now_secs};
use crate::digest::Digest;
use crate::layer_index::{IndexError, IndexStore, LayerIndex, SpanSink, TarTap, index_blob};
use crate::platform::Platform;

mod stream;
use crate::source::manifest::{Compression, ImageManifest};
use crate::source::{
    ImageLocation, Layer, ResolvedImage, Source, SourceError, SourceOptions, resolve_with,
};
use stream::{Keep, fetch_layer};

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
    // Which layers are indexed here already, and (lazy, some are not) the
    // SOCI index, both known from the manifest alone.
    let soci_lookup = async |location: &str, subject: Option<&Digest>, manifest: &ImageManifest| {
        let stored: Vec<bool> = manifest
            .layers
            .iter()
            .map(|l| indexes.contains(&l.digest))
            .collect();
        if !(lazy && stored.contains(&false)) {
            return (stored, None);
        }
        let head = crate::toc::soci::Head {
            location,
            subject,
            manifest,
        };
        let found = crate::toc::soci::fetch(&source, &head, cache, opts.soci_v1).await;
        (stored, found)
    };
    let (image, (stored, soci)) = resolve_with(
        &source,
        &opts.location,
        cache,
        opts.platform.as_ref(),
        opts.trust.as_deref(),
        soci_lookup,
    )
    .await?;
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
    let record = ImageRecord {
        reference: image.location.clone(),
        platform: image.platform.clone(),
        image_id: image.id().clone(),
        blobs: image.blobs(),
        size,
        pulled_at: now_secs(),
    };
    if opts.keep_blobs {
        cache.record_image(&record)?;
    } else {
        // The record only feeds `images` and `prune`; a lazy disk serves
        // without it, so it need not wait for the record's fsyncs.
        let cache = cache.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = cache.record_image(&record) {
                tracing::warn!("{e}; the image is not listed in the cache");
            }
        });
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
