//! `ocidisk index push`: make the SOCI v1 index of an image (a zTOC per
//! gzip layer, from the verified layer indexes of a pull) and publish it
//! beside the image as a referrer of its manifest, plus the referrers
//! tag for registries without the referrers API. Deterministic: the same
//! image, span size and tool give the same digests on every host, so
//! hosts that publish concurrently push identical bytes.

use std::sync::Arc;

use serde::Serialize;
use serde_json::json;

use super::soci::{
    ARTIFACT_TYPE_V1, BUILD_TOOL, EMPTY_CONFIG, OCI_MANIFEST, ZtocEntry, index_manifest,
};
use super::ztoc::{self, ZtocError};
use crate::cache::BlobCache;
use crate::digest::Digest;
use crate::pull::{PullError, PullOptions, PullProgress, pull_image};
use crate::source::manifest::{Compression, Descriptor};
use crate::source::registry::RegistryError;
use crate::source::{Source, SourceError};

/// The build tool identifier ocidisk writes: fixed, so that every version
/// and host that makes the same zTOC makes the same bytes.
pub const TOOL: &str = "ocidisk zTOC builder 1";
/// Default uncompressed bytes per span (soci's default).
pub const DEFAULT_SPAN: u64 = 4 << 20;

/// Errors publishing an index.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Pulling the image failed.
    #[error(transparent)]
    Pull(#[from] Box<PullError>),
    /// Opening the source failed.
    #[error(transparent)]
    Source(#[from] Box<SourceError>),
    /// The image is not in a registry (an index lives beside a manifest in one).
    #[error("{image}: an index is published to a registry; this image is not in one")]
    NotRegistry {
        /// The image.
        image: String,
    },
    /// Making a zTOC failed.
    #[error(transparent)]
    Ztoc(#[from] ZtocError),
    /// The registry refused or failed.
    #[error("publishing the index of {image}: {source}")]
    Registry {
        /// The image.
        image: String,
        /// What failed.
        source: RegistryError,
    },
}

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The image.
    pub pull: PullOptions,
    /// Uncompressed bytes per span.
    pub span_size: u64,
    /// Layers smaller than this get no zTOC.
    pub min_layer_size: u64,
}

/// One layer's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct LayerOutcome {
    /// The image layer.
    pub layer: Digest,
    /// Its compressed size.
    pub layer_size: u64,
    /// The zTOC made for it, if any.
    pub ztoc: Option<Digest>,
    /// The zTOC's size.
    pub ztoc_size: u64,
    /// Why it has none.
    pub skipped: Option<String>,
}

/// What was published.
#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    /// The image as resolved.
    pub reference: String,
    /// The image manifest (the index's subject).
    pub subject: Digest,
    /// The SOCI index manifest.
    pub index: Digest,
    /// The index manifest's size.
    pub index_size: u64,
    /// The referrers tag updated.
    pub referrers_tag: String,
    /// Per layer, bottom first.
    pub layers: Vec<LayerOutcome>,
}

/// Pull the image (verified, cached), make its zTOCs and push them with
/// the index manifest and the referrers tag.
pub async fn publish(
    opts: &PublishOptions,
    cache: &BlobCache,
    progress: Arc<dyn PullProgress>,
) -> Result<PublishReport, PublishError> {
    let pull = PullOptions {
        keep_blobs: true,
        ..opts.pull.clone()
    };
    let (_, image, indexes) = pull_image(&pull, cache, progress).await.map_err(Box::new)?;
    let not_registry = || PublishError::NotRegistry {
        image: image.location.clone(),
    };
    let subject_digest = image.manifest_digest.clone().ok_or_else(not_registry)?;
    let source = Source::open(&pull.location, &pull.source)
        .await
        .map_err(Box::new)?;
    let Source::Registry(reg) = &source else {
        return Err(not_registry());
    };
    let reg = reg.primary().ok_or_else(not_registry)?;
    let registry_err = |source| PublishError::Registry {
        image: image.location.clone(),
        source,
    };
    let subject = Descriptor {
        media_type: image
            .manifest
            .media_type
            .clone()
            .unwrap_or_else(|| OCI_MANIFEST.into()),
        size: std::fs::metadata(cache.blob_path(&subject_digest)).map_or(0, |m| m.len()),
        digest: subject_digest.clone(),
        platform: None,
        annotations: None,
        urls: None,
    };
    let mut entries = Vec::new();
    let mut outcomes = Vec::new();
    for (layer, ix) in image.layers.iter().zip(indexes) {
        let desc = layer.descriptor.clone();
        let mut outcome = LayerOutcome {
            layer: desc.digest.clone(),
            layer_size: desc.size,
            ztoc: None,
            ztoc_size: 0,
            skipped: None,
        };
        if layer.compression != Compression::Gzip {
            outcome.skipped = Some(format!("{:?}, not gzip", layer.compression));
            outcomes.push(outcome);
            continue;
        }
        if desc.size < opts.min_layer_size {
            outcome.skipped = Some("smaller than --min-layer-size".into());
            outcomes.push(outcome);
            continue;
        }
        let (path, span) = (cache.blob_path(&desc.digest), opts.span_size);
        let size = desc.size;
        let made = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&path).map_err(|source| ZtocError::Io {
                layer: ix.layer().clone(),
                source,
            })?;
            ztoc::build(&ix, &f, size, span, TOOL)
        })
        .await
        .expect("building a zTOC does not panic");
        let bytes = match made {
            Ok(b) => b,
            Err(e @ ZtocError::Unsupported { .. }) => {
                outcome.skipped = Some(e.to_string());
                outcomes.push(outcome);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if bytes.len() as u64 >= desc.size {
            // Streaming the layer costs less than its table of contents.
            outcome.skipped = Some(format!(
                "its zTOC ({} bytes) is not smaller than the layer",
                bytes.len()
            ));
            outcomes.push(outcome);
            continue;
        }
        let digest = Digest::sha256_of(&bytes);
        let ztoc_size = bytes.len() as u64;
        reg.push_blob(&digest, bytes).await.map_err(registry_err)?;
        outcome.ztoc = Some(digest.clone());
        outcome.ztoc_size = ztoc_size;
        outcomes.push(outcome);
        entries.push(ZtocEntry {
            digest,
            size: ztoc_size,
            layer: desc,
            span_size: opts.span_size,
        });
    }
    reg.push_blob(&Digest::sha256_of(EMPTY_CONFIG), EMPTY_CONFIG.to_vec())
        .await
        .map_err(registry_err)?;
    let manifest = index_manifest(&subject, &entries, TOOL);
    let index_size = manifest.len() as u64;
    let index = reg
        .push_manifest(None, OCI_MANIFEST, manifest)
        .await
        .map_err(registry_err)?;
    reg.add_to_referrers_tag(
        &subject_digest,
        json!({
            "mediaType": OCI_MANIFEST,
            "digest": index.to_string(),
            "size": index_size,
            "artifactType": ARTIFACT_TYPE_V1,
            "annotations": { BUILD_TOOL: TOOL },
        }),
    )
    .await
    .map_err(registry_err)?;
    Ok(PublishReport {
        reference: image.location.clone(),
        referrers_tag: crate::source::registry::referrers_tag(&subject_digest),
        subject: subject_digest,
        index,
        index_size,
        layers: outcomes,
    })
}
