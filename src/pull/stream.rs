//! One layer's stream: fetched once (resumed with a Range request when a
//! connection drops), its bytes through the blob digest, the decompressor,
//! the diff_id and the tar indexer on the way into the cache (or only the
//! index, for a lazy disk), verified before anything is kept.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;

use super::{LayerTaps, PullError, PullProgress, ensure_index};
use crate::cache::{BlobCache, CacheError};
use crate::digest::{Digest, Hasher};
use crate::layer_index::{
    IndexError, IndexStore, LayerIndex, LayerIndexer, PushError, SpanOut, SpanSink,
};
use crate::source::manifest::Compression;
use crate::source::{Layer, ResolvedImage, Source, SourceError, is_digest_error};

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
pub(super) struct Keep<'a> {
    /// The layer blob, in the cache.
    pub(super) blobs: bool,
    /// The decoded spans of zstd layers.
    pub(super) spans: Option<&'a Arc<dyn SpanSink>>,
    /// Save the index of a layer that streamed (else the caller does).
    pub(super) save_index: bool,
}

/// Fetch one layer into the cache unless it is there. Returns whether it was
/// downloaded, how many bytes were transferred, and the layer's index.
/// `taps`: who sees its bytes if it streams, and its position.
#[allow(clippy::too_many_arguments)]
pub(super) async fn fetch_layer(
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
