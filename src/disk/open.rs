//! How a lazy disk opens: resolve the image and index its layers (the
//! heap the planning needs warming meanwhile), merge and plan the
//! filesystem (with the windows spilled and the tables of contents to
//! re-derive read on the other core), then settle in the background.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::chunks::ChunkStore;
use super::overlay::{Overlay, OverlayError};
use super::spans::SpanCache;
use super::{DiskError, DiskOptions, DiskStats, Inner, flush_to, metadata, profile, toc_check};
use crate::cache::BlobCache;
use crate::fs;
use crate::layer_index::{LayerIndex, WindowsWritten};
use crate::pull::index_image;
use crate::source::manifest::Descriptor;
use crate::tar::TarEntry;
use crate::tree::Tree;

/// What the planning leaves over: the merged tree and the tar entries,
/// for the settle thread to drop.
pub(super) type Leftovers = (Tree, Vec<Vec<TarEntry>>);

/// Heap warmed for the parse and the planning (see [`crate::heap`]): about
/// what they write for a 50 MB, 6,600-entry image.
const WARM_HEAP: usize = 12 << 20;

impl Inner {
    /// Open the image: resolve, index (without keeping layer blobs), plan.
    pub(super) fn open(
        opts: &DiskOptions,
        cache: &BlobCache,
    ) -> Result<(Arc<Inner>, Leftovers), DiskError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ocidisk-io")
            .enable_all()
            .build()
            .map_err(DiskError::Runtime)?;
        let chunks = Arc::new(ChunkStore::open(
            &cache.root().join("chunks"),
            &cache.root().join("tmp"),
            opts.cache_disk,
        ));
        // While the image resolves, the heap this thread plans in warms.
        let warming = crate::heap::Warming::start(WARM_HEAP);
        let indexed = rt.block_on(index_image(&opts.pull, cache, chunks.clone()));
        if let Some(w) = warming {
            w.finish();
        }
        let (source, mut image, mut indexes, rederive) = indexed.map_err(Box::new)?;
        tracing::debug!(
            layers = indexes.len(),
            "image resolved and its layers indexed"
        );
        if opts.init {
            crate::init_layer::append(&mut image, &mut indexes, cache)?;
        }
        // Beside the planning, on the other core: what the tables of
        // contents to re-derive say of each entry, and the checkpoint
        // windows written to a scratch file (gone with the disk).
        let windows = cache.scratch_file("windows").map(Arc::new);
        let (toc_layers, written, planned) = std::thread::scope(|s| {
            let toc_layers = rederive
                .contains(&true)
                .then(|| s.spawn(|| toc_check::toc_layers(&indexes, &rederive)));
            let written = windows
                .as_ref()
                .ok()
                .map(|file| s.spawn(|| write_windows(&indexes, file)));
            let planned = fs::merge_layers(&indexes)
                .and_then(|tree| fs::plan_merged(&tree, image.id(), &opts.fs).map(|fs| (fs, tree)));
            (
                toc_layers.map(joined).unwrap_or_default(),
                written.map(joined),
                planned,
            )
        });
        let (fs, tree) = planned.map_err(Box::new)?;
        let toc_check = (!toc_layers.is_empty()).then(|| toc_check::TocCheck {
            image: image.clone(),
            layers: toc_layers,
        });
        // Planned: what is left of the merge (the tree, the tar entries) is
        // dropped on the settle thread; only the spans are kept, and the
        // checkpoint windows are read from their file when a read needs one
        // (best effort: on an error they stay in memory).
        let entries = indexes.iter_mut().map(LayerIndex::take_entries).collect();
        match (windows, written) {
            (Ok(file), Some(Ok(written))) => {
                for (ix, w) in indexes.iter_mut().zip(written) {
                    ix.windows_written(&file, w);
                }
            }
            (Err(e), _) | (_, Some(Err(e))) => tracing::warn!(
                "{}: {e}; checkpoint windows stay in memory",
                cache.root().join("tmp").display()
            ),
            (Ok(_), None) => {}
        }
        let layers: Vec<(Arc<LayerIndex>, Descriptor)> = indexes
            .into_iter()
            .map(Arc::new)
            .zip(image.layers.iter().map(|l| l.descriptor.clone()))
            .collect();
        let (overlay, temp_overlay) = if opts.fs.read_only {
            (None, None)
        } else {
            let (path, temp) = match &opts.overlay {
                Some(p) => (p.clone(), None),
                None => {
                    let p = cache.root().join("tmp").join(format!(
                        "overlay-{}-{}",
                        std::process::id(),
                        image.id().hex()
                    ));
                    (p.clone(), Some(p))
                }
            };
            crate::metrics::global().set_overlay(Some(path.clone()));
            let overlay = match Overlay::open(&path, image.id(), fs.size) {
                Err(OverlayError::Mismatch { found, .. }) if opts.discard_overlay => {
                    tracing::warn!(
                        "overlay {}: made for {found}; its writes are discarded (--discard-overlay)",
                        path.display()
                    );
                    Overlay::discard(&path)?;
                    Overlay::open(&path, image.id(), fs.size)?
                }
                r => r?,
            };
            (Some(overlay), temp)
        };
        let flush_to = match &opts.flush_to {
            Some(p) => Some(flush_to::FlushTo::create(
                p,
                &fs,
                &layers,
                opts.flush_format,
            )?),
            None => None,
        };
        let mut fs = fs;
        let metadata = metadata::Metadata::new(std::mem::take(&mut fs.metadata));
        let inner = Arc::new(Inner {
            blob_cache: cache.clone(),
            flush_to,
            last_span: Mutex::new(HashMap::new()),
            readahead: Mutex::new(None),
            overlay,
            temp_overlay,
            image: fs,
            metadata,
            image_id: image.id().hex().to_string(),
            layers,
            source,
            rt,
            cache: Mutex::new(SpanCache {
                lru: LruCache::unbounded(),
                bytes: 0,
                cap: opts.cache_mem,
            }),
            inflight: Mutex::new(HashMap::new()),
            prefixes: Mutex::new(LruCache::new(
                std::num::NonZeroUsize::new(64).expect("non-zero"),
            )),
            chunks,
            toc_check,
            withdrawn: std::sync::OnceLock::new(),
            toc_held: std::sync::atomic::AtomicBool::new(false),
            stats: DiskStats::default(),
            recorder: opts
                .profile
                .record
                .clone()
                .map(|p| (p, Mutex::new(profile::Recorder::default()))),
        });
        Ok((inner, (tree, entries)))
    }
}

/// Settle an open disk in the background, so that it is ready at once:
/// drop what is left of the merge, move the metadata blocks out of the
/// heap into an unlinked scratch file (best effort: on an error they stay
/// in memory), then hand the heap the planner freed back to the system, so
/// that a long-running open disk costs what it keeps. Reads meanwhile find
/// the blocks where they are.
pub(super) fn settle(
    inner: &Arc<Inner>,
    leftovers: Leftovers,
) -> Result<std::thread::JoinHandle<()>, DiskError> {
    let inner = inner.clone();
    std::thread::Builder::new()
        .name("ocidisk-settle".into())
        .spawn(move || {
            drop(leftovers);
            let moved = inner
                .blob_cache
                .scratch_file("metadata")
                .and_then(|f| inner.metadata.move_to(f));
            match moved {
                Ok(n) => tracing::debug!(blocks = n, "metadata blocks moved to a scratch file"),
                Err(e) => tracing::warn!(
                    "{}: {e}; the metadata blocks stay in memory",
                    inner.blob_cache.root().join("tmp").display()
                ),
            }
            drop(inner);
            crate::heap::settled();
        })
        .map_err(DiskError::Runtime)
}

/// Write every index's checkpoint windows to `file`, one after another.
fn write_windows(indexes: &[LayerIndex], file: &File) -> std::io::Result<Vec<WindowsWritten>> {
    let mut at = 0;
    indexes
        .iter()
        .map(|ix| ix.write_windows(file, &mut at))
        .collect()
}

/// The result of a scoped helper thread, its panic passed on.
fn joined<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}
