//! Resolving a location to one platform's image: index → manifest →
//! config, with the trust policy deciding on the top-level manifest before
//! anything else is fetched.

use super::manifest::{
    self, Descriptor, ImageConfig, ImageManifest, MAX_MANIFEST_SIZE, Manifest, ManifestError,
};
use super::{ImageLocation, Layer, ResolvedImage, Source, SourceError};
use crate::cache::BlobCache;
use crate::digest::Digest;
use crate::platform::Platform;
use crate::trust::{Subject, Trust};

/// Resolve `location` to one platform's image: index → manifest → config.
///
/// `platform`: `Some` when the user asked for one explicitly; the host's
/// platform otherwise. A single-platform image is accepted for the default
/// but must match an explicit request.
///
/// With `trust`, the policy decides on the top-level manifest before
/// anything else of the image (child manifest, config, layers) is fetched.
pub async fn resolve(
    source: &Source,
    location: &ImageLocation,
    cache: &BlobCache,
    platform: Option<&Platform>,
    trust: Option<&Trust>,
) -> Result<ResolvedImage, SourceError> {
    let nothing = async |_: &str, _: Option<&Digest>, _: &ImageManifest| {};
    Ok(
        resolve_with(source, location, cache, platform, trust, nothing)
            .await?
            .0,
    )
}

/// [`resolve`], running `beside_config` (given the image's name, its
/// manifest digest and manifest) while the config is fetched: work that
/// needs the manifest but not the config need not wait for it. It runs
/// after the trust policy accepted the image.
pub async fn resolve_with<T>(
    source: &Source,
    location: &ImageLocation,
    cache: &BlobCache,
    platform: Option<&Platform>,
    trust: Option<&Trust>,
    beside_config: impl AsyncFnOnce(&str, Option<&Digest>, &ImageManifest) -> T,
) -> Result<(ResolvedImage, T), SourceError> {
    let image = location.to_string();
    let manifest_err = |source| SourceError::Manifest {
        image: image.clone(),
        source,
    };
    let want = platform.cloned().unwrap_or_else(Platform::host);
    let (bytes, digest, media_type) = source.manifest(None, cache).await?;
    if let Some(trust) = trust {
        let d = digest.clone().unwrap_or_else(|| Digest::sha256_of(&bytes));
        let attachments = SourceAttachments {
            source,
            cache,
            image: &image,
        };
        trust
            .check(
                &image,
                &subject(source, location)?,
                &bytes,
                &d,
                &attachments,
            )
            .await
            .map_err(Box::new)?;
    }
    let (index, manifest_digest, manifest) =
        match Manifest::parse(&bytes, media_type.as_deref()).map_err(manifest_err)? {
            Manifest::Image(m) => (None, digest, m),
            Manifest::Index(idx) => {
                let entry = idx
                    .select(&want)
                    .ok_or_else(|| SourceError::PlatformNotFound {
                        image: image.clone(),
                        want: want.to_string(),
                        available: {
                            let p: Vec<String> =
                                idx.platforms().iter().map(|p| p.to_string()).collect();
                            if p.is_empty() {
                                "no platform-specific images".into()
                            } else {
                                p.join(", ")
                            }
                        },
                    })?
                    .clone();
                let (child, child_digest, _) = source.manifest(Some(&entry.digest), cache).await?;
                match Manifest::parse(&child, Some(&entry.media_type)).map_err(manifest_err)? {
                    Manifest::Image(m) => (digest.map(|d| (d, idx)), child_digest, m),
                    Manifest::Index(_) => {
                        return Err(SourceError::NestedIndex { image });
                    }
                }
            }
        };
    manifest::check_image_manifest(&manifest).map_err(manifest_err)?;
    let (config_bytes, beside) = futures_util::join!(
        source.config(&manifest.config, cache, &image),
        beside_config(&image, manifest_digest.as_ref(), &manifest)
    );
    let config_bytes = config_bytes?;
    let config = ImageConfig::parse(&config_bytes).map_err(manifest_err)?;
    let have = config.platform();
    if index.is_none()
        && let Some(want) = platform
        && !want.matches(&have)
        && !have.architecture.is_empty()
    {
        return Err(SourceError::PlatformMismatch {
            image,
            want: want.to_string(),
            have: have.to_string(),
        });
    }
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(manifest_err(ManifestError::LayerCountMismatch {
            layers: manifest.layers.len(),
            diff_ids: config.rootfs.diff_ids.len(),
        }));
    }
    let layers = manifest
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .map(|(d, diff_id)| {
            Ok(Layer {
                descriptor: d.clone(),
                compression: manifest::layer_compression(d).map_err(manifest_err)?,
                diff_id: diff_id.clone(),
            })
        })
        .collect::<Result<Vec<_>, SourceError>>()?;
    // The manifests and config were cached while the fetches went on.
    cache.writes_done().await;
    Ok((
        ResolvedImage {
            location: image,
            index,
            manifest_digest,
            manifest,
            config,
            config_bytes,
            platform: have,
            layers,
        },
        beside,
    ))
}

/// The image as a trust policy sees it. An image in containerd is the
/// registry image of its name there (the namespace is not part of it).
fn subject(source: &Source, location: &ImageLocation) -> Result<Subject, SourceError> {
    match source {
        Source::Containerd(c) => ImageLocation::Containerd(c.name().to_string()).subject(),
        _ => location.subject(),
    }
}

/// What a trust check may read from the image's repository besides the
/// image: sigstore attachments (registries only).
struct SourceAttachments<'a> {
    source: &'a Source,
    cache: &'a BlobCache,
    image: &'a str,
}

impl crate::trust::Attachments for SourceAttachments<'_> {
    async fn tagged_manifest(&self, tag: &str) -> Result<Option<Vec<u8>>, String> {
        match self.source {
            Source::Registry(r) => r
                .tagged_manifest(tag, MAX_MANIFEST_SIZE)
                .await
                .map_err(|e| e.to_string()),
            Source::Layout(_) | Source::Archive(_) | Source::Containerd(_) => Ok(None),
        }
    }

    async fn small_blob(&self, digest: &Digest, size: u64, limit: u64) -> Result<Vec<u8>, String> {
        if size > limit {
            return Err(format!(
                "blob {digest} is {size} bytes, over the {limit}-byte limit"
            ));
        }
        let desc = Descriptor {
            media_type: String::new(),
            digest: digest.clone(),
            size,
            platform: None,
            annotations: None,
            urls: None,
        };
        self.source
            .config(&desc, self.cache, self.image)
            .await
            .map_err(|e| e.to_string())
    }
}
