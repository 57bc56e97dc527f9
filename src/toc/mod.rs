//! Tables of contents that let a lazy disk start without streaming whole
//! layers. Tried in this order for each layer not yet indexed here:
//! - a SOCI index (`soci.rs`): v2, named by the image manifest, or with
//!   `--soci-v1` a v1 referrer, made and published by `ocidisk index push`
//!   (`publish.rs`) in the zTOC wire format (`ztoc.rs`, over the small
//!   FlatBuffers codec in `flatbuf.rs`);
//! - the layer's own table: eStargz (`estargz.rs`) or zstd:chunked
//!   (`zstd_chunked.rs`), both JSON of one shape (`chunked.rs`);
//! - otherwise the full pass.
//!
//! Trust: SOCI v2, eStargz and zstd:chunked tables are vouched for by the
//! manifest (an annotation names their digest). A SOCI v1 index is a
//! referrer anyone with write access to the repository can push, so it is
//! used only when asked for (`--soci-v1`) and re-derived in the
//! background (`disk::toc_check`). Every span read is checked against a
//! digest the table holds.

pub mod chunked;
pub mod estargz;
pub mod flatbuf;
pub mod publish;
pub mod soci;
pub mod time;
pub mod zstd_chunked;
pub mod ztoc;

use std::collections::HashMap;

use crate::cache::BlobCache;
use crate::digest::Digest;
use crate::layer_index::LayerIndex;
use crate::source::{Layer, Source, SourceError};

/// Errors reading a layer's own table of contents.
#[derive(Debug, thiserror::Error)]
pub enum TocError {
    /// Fetching part of the layer failed.
    #[error("reading the table of contents of layer {layer}: {source}")]
    Fetch {
        /// The layer.
        layer: Digest,
        /// What failed.
        source: Box<SourceError>,
    },
    /// The table is not one this reader can trust or use.
    #[error("{format} table of contents of layer {layer}: {what}")]
    Invalid {
        /// The layer.
        layer: Digest,
        /// eStargz or zstd:chunked.
        format: &'static str,
        /// What is wrong.
        what: String,
    },
}

/// A layer whose own table of contents is being read.
pub struct LayerReader<'a> {
    /// Where its blob is.
    pub source: &'a Source,
    /// The layer.
    pub layer: &'a Layer,
    /// The cache (a registry that ignores Range gets the blob cached whole).
    pub cache: &'a BlobCache,
}

impl LayerReader<'_> {
    /// Bytes `[start, end)` of the layer blob.
    pub async fn range(&self, start: u64, end: u64) -> Result<Vec<u8>, TocError> {
        let desc = &self.layer.descriptor;
        self.source
            .read_range(desc, start, end, self.cache)
            .await
            .map_err(|e| TocError::Fetch {
                layer: desc.digest.clone(),
                source: Box::new(e),
            })
    }

    /// The layer's table (in `format`) is refused for `what`.
    pub fn invalid(&self, format: &'static str, what: String) -> TocError {
        TocError::Invalid {
            layer: self.layer.descriptor.digest.clone(),
            format,
            what,
        }
    }
}

/// The tables of contents a lazy pass may start an image's layers from.
#[derive(Default)]
pub struct Tables {
    /// Layer indexes from the image's SOCI index, read once for all its
    /// layers, each with how many layers of the image still want it (a
    /// layer may occur twice): the last one takes it without a copy.
    soci: std::sync::Mutex<HashMap<Digest, (LayerIndex, usize)>>,
    /// The layers the SOCI index covers.
    covered: std::collections::HashSet<Digest>,
    /// The SOCI index is a referrer nothing the manifest vouches for.
    rederive: bool,
}

impl Tables {
    /// For a lazy pass over `image`: the SOCI index [`soci::fetch`] found
    /// (while the config was fetched), if this reader accepts it. Layers'
    /// own tables are read per layer, by [`Tables::index`].
    pub fn from_fetched(
        fetched: Option<soci::Fetched>,
        image: &crate::source::ResolvedImage,
    ) -> Tables {
        let loaded = fetched.and_then(|f| f.finish(image)).unwrap_or_default();
        let uses = |d: &Digest| {
            image
                .layers
                .iter()
                .filter(|l| &l.descriptor.digest == d)
                .count()
        };
        Tables {
            covered: loaded.indexes.keys().cloned().collect(),
            soci: std::sync::Mutex::new(
                loaded
                    .indexes
                    .into_iter()
                    .map(|(d, ix)| {
                        let n = uses(&d);
                        (d, (ix, n))
                    })
                    .collect(),
            ),
            rederive: loaded.rederive,
        }
    }

    /// The index of a layer not indexed here, from a table: the SOCI
    /// index's zTOC, else the layer's own table; `None`: it streams.
    pub async fn index(
        &self,
        source: &Source,
        layer: &Layer,
        cache: &BlobCache,
    ) -> Option<LayerIndex> {
        let digest = &layer.descriptor.digest;
        let from_soci = {
            let mut soci = crate::sync::lock(&self.soci);
            match soci.get_mut(digest) {
                Some((ix, n)) if *n > 1 => {
                    *n -= 1;
                    Some(ix.clone())
                }
                Some(_) => soci.remove(digest).map(|(ix, _)| ix),
                None => None,
            }
        };
        match from_soci {
            Some(ix) => Some(ix),
            None => layer_toc(source, layer, cache).await,
        }
    }

    /// Whether `layer`'s index `ix` came from a table nothing the manifest
    /// vouches for (a SOCI v1 referrer): the disk re-derives it.
    pub fn rederive(&self, layer: &Layer, ix: &LayerIndex) -> bool {
        self.rederive
            && matches!(ix.access(), crate::layer_index::Access::GzipRanges(_))
            && self.covered.contains(&layer.descriptor.digest)
    }
}

/// The index of `layer` from its own table of contents (eStargz or
/// zstd:chunked), if it has one this reader accepts; why not is logged,
/// and the layer then streams.
pub async fn layer_toc(source: &Source, layer: &Layer, cache: &BlobCache) -> Option<LayerIndex> {
    let r = LayerReader {
        source,
        layer,
        cache,
    };
    let found = match estargz::load(&r).await {
        Ok(None) => zstd_chunked::load(&r).await,
        other => other,
    };
    match found {
        Ok(Some(ix)) => {
            tracing::info!(layer = %layer.descriptor.digest, spans = ix.spans().len(), "starting from the layer's table of contents");
            Some(ix)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("{e}; streaming the layer instead");
            None
        }
    }
}
