//! Re-deriving what a table of contents claimed. A disk that started from
//! a SOCI index (a referrer anyone with push access could have written)
//! streams those layers in the background through the ordinary verified
//! pass (blob digest, diff_id), then checks the index against them: the
//! same tar entries at the same offsets, and every zTOC span decoding to
//! the layer's true bytes. On any difference the disk refuses all further
//! I/O and forgets what it decoded through the index.

use std::io::Read as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use sha2::Digest as _;

use super::Inner;
use crate::layer_index::{Access, LayerIndex};
use crate::source::ResolvedImage;
use crate::tar::TarEntry;

/// What to check once the disk is open.
pub(super) struct TocCheck {
    /// The image (for the verified pass).
    pub(super) image: ResolvedImage,
    /// Layers that came from a table of contents: (position, digest of
    /// their entries as the table claimed them).
    pub(super) layers: Vec<(usize, [u8; 32])>,
}

/// The layers of `indexes` that came from a table of contents to
/// re-derive (`rederive`, per layer), with the digest of their entries.
pub(super) fn toc_layers(indexes: &[LayerIndex], rederive: &[bool]) -> Vec<(usize, [u8; 32])> {
    indexes
        .iter()
        .zip(rederive.iter().chain(std::iter::repeat(&false)))
        .enumerate()
        .filter(|(_, (ix, r))| **r && matches!(ix.access(), Access::GzipRanges(_)))
        .map(|(i, (ix, _))| (i, entries_digest(ix.entries())))
        .collect()
}

/// A digest of what a table of contents says of each entry (xattrs in
/// key order: a zTOC sorts them).
fn entries_digest(entries: &[TarEntry]) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    let mut put = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    for e in entries {
        put(&e.path);
        put(&[e.kind as u8]);
        put(&(e.mode & 0o7777).to_le_bytes());
        put(&e.uid.to_le_bytes());
        put(&e.gid.to_le_bytes());
        put(&e.mtime.to_le_bytes());
        put(&e.mtime_nsec.to_le_bytes());
        put(&e.size.to_le_bytes());
        put(&e.link);
        put(&e.dev_major.to_le_bytes());
        put(&e.dev_minor.to_le_bytes());
        put(&e.data_offset.to_le_bytes());
        put(&e.data_len.to_le_bytes());
        put(&[u8::from(e.sparse.is_some())]);
        let mut x: Vec<&(Vec<u8>, Vec<u8>)> = e.xattrs.iter().collect();
        x.sort();
        for (k, v) in x {
            put(k);
            put(v);
        }
    }
    h.finalize().into()
}

/// Start the check on a thread of its own, after `delay` (so a booting
/// guest's first reads have the network to themselves).
pub(super) fn spawn(
    inner: Weak<Inner>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    delay: Duration,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ocidisk-toc-check".into())
        .spawn(move || {
            let until = Instant::now() + delay;
            while Instant::now() < until {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let Some(inner) = inner.upgrade() else { return };
            match check(&inner, &stop) {
                Ok(true) => {
                    inner.toc_held.store(true, Ordering::Relaxed);
                    tracing::info!("table of contents re-derived from the layers: it holds");
                }
                Ok(false) => {}
                Err(why) => inner.poison(why),
            }
        })
}

/// Ok(true): all checked and right; Ok(false): stopped early; Err: why
/// the table of contents cannot be trusted (or checked).
fn check(inner: &Inner, stop: &std::sync::atomic::AtomicBool) -> Result<bool, String> {
    let Some(toc) = &inner.toc_check else {
        return Ok(true);
    };
    for &(i, claimed) in &toc.layers {
        if stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let layer = &toc.image.layers[i];
        let name = &layer.descriptor.digest;
        let real = inner
            .rt
            .block_on(crate::pull::fetch_verified(
                &inner.source,
                &inner.blob_cache,
                &toc.image,
                layer,
            ))
            .map_err(|e| format!("re-deriving layer {name}: {e}"))?;
        if entries_digest(real.entries()) != claimed {
            return Err(format!(
                "layer {name}: the table of contents' entries differ from the layer's"
            ));
        }
        let ix = &inner.layers[i].0;
        if ix.tar_size() > real.tar_size() {
            return Err(format!(
                "layer {name}: the table of contents claims {} bytes of tar, the layer has {}",
                ix.tar_size(),
                real.tar_size()
            ));
        }
        spans_decode_truly(
            ix,
            &inner.blob_cache.blob_path(name),
            layer.descriptor.size,
            stop,
        )
        .map_err(|e| format!("layer {name}: {e}"))?;
    }
    Ok(true)
}

/// Every span of `ix`, decoded from the blob as a read would, equals the
/// layer's bytes inflated from the start.
fn spans_decode_truly(
    ix: &LayerIndex,
    blob: &std::path::Path,
    size: u64,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), String> {
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::File::open(blob).map_err(|e| format!("{}: {e}", blob.display()))?;
    let mut whole = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
        std::fs::File::open(blob).map_err(|e| format!("{}: {e}", blob.display()))?,
    ));
    let mut truth = Vec::new();
    for k in 0..ix.spans().len() {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let f = ix.span_fetch(k, size);
        let mut compressed = vec![0u8; (f.end - f.start) as usize];
        file.read_exact_at(&mut compressed, f.start)
            .map_err(|e| format!("{}: {e}", blob.display()))?;
        let got = ix.decode_span(k, &compressed).map_err(|e| e.to_string())?;
        let (s, e) = ix.span_range(k);
        truth.resize((e - s) as usize, 0);
        whole
            .read_exact(&mut truth)
            .map_err(|e| format!("inflating the layer: {e}"))?;
        if got != truth {
            return Err(format!(
                "span {k} decodes to other bytes than the layer holds at {s}..{e}"
            ));
        }
    }
    Ok(())
}
