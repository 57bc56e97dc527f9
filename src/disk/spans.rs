//! Where the lazy disk's file data comes from: verified spans, from the
//! memory LRU, the on-disk chunk store, or fetched (one fetch per span at a
//! time, compressed prefixes reused) and decoded; plus read-ahead for
//! readers that stream through a layer.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use lru::LruCache;

use super::{DiskError, Inner};
use crate::source::manifest::Descriptor;

pub(super) struct SpanCache {
    pub(super) lru: LruCache<(usize, usize), Arc<Vec<u8>>>,
    pub(super) bytes: u64,
    pub(super) cap: u64,
}

pub(super) type Pending = Arc<OnceLock<Result<Arc<Vec<u8>>, String>>>;
/// Consecutive spans a reader must stream before read-ahead starts.
const READAHEAD_AFTER: usize = 4;
/// Compressed prefixes by (layer, offset of the access point).
pub(super) type Prefixes = LruCache<(usize, u64), Arc<Vec<u8>>>;

impl Inner {
    /// Fill `out` from layer `layer`'s uncompressed tar at `at`.
    pub(super) fn read_layer(
        &self,
        layer: usize,
        at: u64,
        out: &mut [u8],
    ) -> Result<(), DiskError> {
        let mut done = 0;
        self.layer_pieces(layer, at, out.len(), &mut |piece| {
            out[done..done + piece.len()].copy_from_slice(piece);
            done += piece.len();
            Ok(())
        })
    }

    /// Hand `len` bytes of layer `layer`'s uncompressed tar at `at` to
    /// `emit`, piece by piece, straight from the verified spans.
    pub(super) fn layer_pieces(
        &self,
        layer: usize,
        mut at: u64,
        mut len: usize,
        emit: &mut dyn FnMut(&[u8]) -> Result<(), DiskError>,
    ) -> Result<(), DiskError> {
        let index = &self.layers[layer].0;
        let mut last = None;
        while len > 0 {
            let (span, start, end) = index.span_at(at).ok_or(DiskError::OutOfRange {
                offset: at,
                len,
                size: index.tar_size(),
            })?;
            if let Some((_, rec)) = &self.recorder {
                crate::sync::lock(rec).touch(layer, span);
            }
            let data = self.span(layer, span)?;
            let n = ((end - at) as usize).min(len);
            let from = (at - start) as usize;
            emit(&data[from..from + n])?;
            len -= n;
            at += n as u64;
            last = Some(span);
        }
        // Read-ahead: a reader streaming forward through a layer (several
        // spans in a row: more than one small file) gets the next span
        // fetched in the background. Short reads never trigger it, so they
        // cost no more than what they read.
        if let Some(k) = last {
            let mut runs = crate::sync::lock(&self.last_span);
            let (run, advanced) = match runs.get(&layer) {
                Some(&(p, n)) if p == k => (n, false),
                Some(&(p, n)) if p + 1 == k => (n + 1, true),
                _ => (1, true),
            };
            runs.insert(layer, (k, run));
            drop(runs);
            // Ask once per span reached: re-reading the last span must not
            // queue the same read-ahead again and again.
            if advanced
                && run >= READAHEAD_AFTER
                && k + 1 < index.spans().len()
                && let Some(tx) = crate::sync::lock(&self.readahead).as_ref()
            {
                let _ = tx.send((layer, k + 1));
            }
        }
        Ok(())
    }

    /// A verified span, from memory or fetched (one fetch per span at a time).
    pub(super) fn span(&self, layer: usize, span: usize) -> Result<Arc<Vec<u8>>, DiskError> {
        let key = (layer, span);
        if let Some(d) = crate::sync::lock(&self.cache).lru.get(&key) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            crate::metrics::global().span_hit_memory();
            return Ok(d.clone());
        }
        let pending = crate::sync::lock(&self.inflight)
            .entry(key)
            .or_default()
            .clone();
        let result =
            pending.get_or_init(|| self.fetch_span(layer, span).map_err(|e| e.to_string()));
        let result = result.clone();
        {
            let mut inflight = crate::sync::lock(&self.inflight);
            if inflight.get(&key).is_some_and(|p| Arc::ptr_eq(p, &pending)) {
                inflight.remove(&key);
            }
        }
        let data = result.map_err(DiskError::Shared)?;
        self.remember(key, data.clone());
        Ok(data)
    }

    fn fetch_span(&self, layer: usize, span: usize) -> Result<Arc<Vec<u8>>, DiskError> {
        let (index, desc) = &self.layers[layer];
        if let Some(d) = index.chunk_key(span).and_then(|k| self.chunks.get(&k)) {
            self.stats.chunk_hits.fetch_add(1, Ordering::Relaxed);
            crate::metrics::global().span_hit_disk();
            self.arrived(layer, span, &d)?;
            return Ok(Arc::new(d));
        }
        crate::metrics::global().span_miss();
        let f = index.span_fetch(span, desc.size);
        let key = (layer, f.start);
        let have = crate::sync::lock(&self.prefixes).get(&key).cloned();
        let bytes = match have {
            Some(p) if p.len() as u64 >= f.end - f.start => p,
            have => {
                let have_len = have.as_ref().map_or(0, |p| p.len() as u64);
                let more = self.read_blob(desc, f.start + have_len, f.end)?;
                self.stats.spans_fetched.fetch_add(1, Ordering::Relaxed);
                {
                    let mut log = crate::sync::lock(&self.stats.fetch_log);
                    if log.len() < super::FETCH_LOG_LEN {
                        log.push((layer, span));
                    }
                }
                self.stats
                    .bytes_fetched
                    .fetch_add(more.len() as u64, Ordering::Relaxed);
                let mut all = have.map(|p| p.to_vec()).unwrap_or_default();
                all.extend_from_slice(&more);
                let all = Arc::new(all);
                crate::sync::lock(&self.prefixes).put(key, all.clone());
                all
            }
        };
        let bytes = &bytes[..(f.end - f.start) as usize];
        let decoded = index.decode_spans(span, bytes).inspect_err(|e| {
            tracing::error!("{e}");
            crate::metrics::global().error(crate::metrics::ErrorKind::Verify);
            // The prefix is unverified: bytes damaged on the way must not be
            // reused once the network is healthy again.
            crate::sync::lock(&self.prefixes).pop(&key);
        })?;
        // Spans decoded on the way (from the access point) are verified too:
        // keep them, a neighbouring read is likely.
        let mut wanted = None;
        for (k, data) in decoded {
            if let Some(key) = index.chunk_key(k) {
                self.chunks.put(&key, &data);
            }
            self.arrived(layer, k, &data)?;
            let data = Arc::new(data);
            if k == span {
                wanted = Some(data);
            } else {
                self.remember((layer, k), data);
            }
        }
        Ok(wanted.expect("decode_spans returns the span asked for"))
    }

    /// Compressed bytes `[start, end)` of a layer blob: from the cached
    /// blob if there is one, else from the source.
    fn read_blob(&self, desc: &Descriptor, start: u64, end: u64) -> Result<Vec<u8>, DiskError> {
        use std::os::unix::fs::FileExt;
        if let Ok(f) = std::fs::File::open(self.blob_cache.blob_path(&desc.digest)) {
            let mut buf = vec![0u8; (end - start) as usize];
            if f.read_exact_at(&mut buf, start).is_ok() {
                return Ok(buf);
            }
        }
        let m = crate::metrics::global();
        let _inflight = m.fetch_started();
        let began = std::time::Instant::now();
        let r = self
            .rt
            .block_on(self.source.read_range(desc, start, end, &self.blob_cache));
        m.fetch_latency(began.elapsed());
        r.inspect_err(|_| m.error(crate::metrics::ErrorKind::Fetch))
            .map_err(|e| DiskError::Fetch {
                layer: desc.digest.to_string(),
                source: Box::new(e),
            })
    }

    fn remember(&self, key: (usize, usize), data: Arc<Vec<u8>>) {
        let mut c = crate::sync::lock(&self.cache);
        if c.lru.put(key, data.clone()).is_none() {
            c.bytes += data.len() as u64;
        }
        while c.bytes > c.cap {
            match c.lru.pop_lru() {
                Some((_, old)) => c.bytes -= old.len() as u64,
                None => break,
            }
        }
    }
}
