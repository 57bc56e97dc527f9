//! SOCI v1 indexes (awslabs/soci-snapshotter `soci/soci_index.go`): an OCI
//! image manifest whose config media type says "SOCI index v1", whose
//! `layers` are zTOCs (each naming its image layer in an annotation) and
//! whose `subject` is the image manifest. Found through the registry's
//! referrers of the image manifest; turned into the layer indexes a lazy
//! disk reads through ([`load`]).

use std::collections::HashMap;

use serde_json::{Value, json};

use super::ztoc;
use crate::cache::BlobCache;
use crate::digest::Digest;
use crate::layer_index::LayerIndex;
use crate::source::manifest::{Compression, Descriptor, ImageManifest, layer_compression};
use crate::source::{ResolvedImage, Source};

/// artifactType (and config media type) of a SOCI v1 index.
pub const ARTIFACT_TYPE_V1: &str = "application/vnd.amazon.soci.index.v1+json";
/// Config media type of a SOCI v2 index.
pub const ARTIFACT_TYPE_V2: &str = "application/vnd.amazon.soci.index.v2+json";
/// The image manifest annotation naming its SOCI v2 index.
pub const INDEX_DIGEST: &str = "com.amazon.soci.index-digest";
/// Media type of a zTOC blob.
pub const ZTOC_MEDIA_TYPE: &str = "application/octet-stream";
/// The zTOC annotation naming its image layer.
pub const LAYER_DIGEST: &str = "com.amazon.soci.image-layer-digest";
/// The zTOC annotation with its image layer's media type.
pub const LAYER_MEDIA_TYPE: &str = "com.amazon.soci.image-layer-mediaType";
/// The zTOC annotation with its span size.
pub const SPAN_SIZE: &str = "com.amazon.soci.span-size";
/// The index annotation naming the tool that built it.
pub const BUILD_TOOL: &str = "com.amazon.soci.build-tool-identifier";
/// The 2-byte config blob `{}` every SOCI index points at.
pub const EMPTY_CONFIG: &[u8] = b"{}";
/// Media type of an OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The largest SOCI index manifest read.
const MANIFEST_LIMIT: u64 = 4 << 20;
/// The largest zTOC read (4 MiB spans of a 30 GB layer).
const ZTOC_LIMIT: u64 = 512 << 20;

/// Errors finding or reading a SOCI index.
#[derive(Debug, thiserror::Error)]
pub enum SociError {
    /// The registry failed.
    #[error("SOCI index of {image}: {source}")]
    Source {
        /// The image.
        image: String,
        /// What failed.
        source: Box<crate::source::SourceError>,
    },
    /// The registry failed.
    #[error("SOCI index of {image}: {source}")]
    Registry {
        /// The image.
        image: String,
        /// What failed.
        source: crate::source::registry::RegistryError,
    },
    /// The index manifest is not a SOCI v1 index of this image.
    #[error("SOCI index {digest} of {image}: {what}")]
    Invalid {
        /// The image.
        image: String,
        /// The index manifest.
        digest: Digest,
        /// What is wrong.
        what: String,
    },
    /// A zTOC is unusable.
    #[error(transparent)]
    Ztoc(#[from] ztoc::ZtocError),
}

/// One zTOC an index lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZtocRef {
    /// The zTOC blob.
    pub ztoc: Descriptor,
    /// The image layer it describes.
    pub layer: Digest,
}

/// A zTOC to list in an index manifest.
#[derive(Debug, Clone)]
pub struct ZtocEntry {
    /// The zTOC blob's digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// The image layer.
    pub layer: Descriptor,
    /// Its span size.
    pub span_size: u64,
}

/// The SOCI v1 index manifest for `subject` (the image manifest) listing
/// `ztocs` in image layer order: deterministic JSON (keys sorted, no
/// whitespace), so every host that indexes the image pushes the same
/// digest.
pub fn index_manifest(subject: &Descriptor, ztocs: &[ZtocEntry], build_tool: &str) -> Vec<u8> {
    let layers: Vec<Value> = ztocs
        .iter()
        .map(|z| {
            json!({
                "mediaType": ZTOC_MEDIA_TYPE,
                "digest": z.digest.to_string(),
                "size": z.size,
                "annotations": {
                    LAYER_DIGEST: z.layer.digest.to_string(),
                    LAYER_MEDIA_TYPE: z.layer.media_type,
                    SPAN_SIZE: z.span_size.to_string(),
                },
            })
        })
        .collect();
    let v = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": ARTIFACT_TYPE_V1,
            "digest": Digest::sha256_of(EMPTY_CONFIG).to_string(),
            "size": EMPTY_CONFIG.len(),
        },
        "layers": layers,
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest.to_string(),
            "size": subject.size,
        },
        "annotations": { BUILD_TOOL: build_tool },
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Which kind of SOCI index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// v1: a referrer of the image manifest (its `subject`).
    V1,
    /// v2: named by the image manifest's annotation; no subject.
    V2,
}

/// The zTOCs of a SOCI index manifest, checked to be of `version` (and,
/// for v1, made for the image manifest `subject`).
pub fn parse_index_manifest(
    bytes: &[u8],
    subject: &Digest,
    version: Version,
) -> Result<Vec<ZtocRef>, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let want = match version {
        Version::V1 => ARTIFACT_TYPE_V1,
        Version::V2 => ARTIFACT_TYPE_V2,
    };
    if v.pointer("/config/mediaType").and_then(Value::as_str) != Some(want) {
        return Err(format!("config media type is not {want}"));
    }
    let named = v.pointer("/subject/digest").and_then(Value::as_str);
    if version == Version::V1 && named != Some(subject.to_string().as_str()) {
        return Err(format!(
            "made for {}, not for the image manifest {subject}",
            named.unwrap_or("no subject")
        ));
    }
    let layers = v
        .get("layers")
        .and_then(Value::as_array)
        .ok_or("no layers list")?;
    let mut out = Vec::new();
    for l in layers {
        if s(l, "mediaType").as_deref() != Some(ZTOC_MEDIA_TYPE) {
            // A prefetch artifact or something newer: not a zTOC.
            continue;
        }
        let digest: Digest = s(l, "digest")
            .ok_or("a zTOC without a digest")?
            .parse()
            .map_err(|e| format!("zTOC digest: {e}"))?;
        let size = l
            .get("size")
            .and_then(Value::as_u64)
            .ok_or("a zTOC without a size")?;
        let layer: Digest = l
            .pointer(&format!("/annotations/{}", LAYER_DIGEST.replace('/', "~1")))
            .and_then(Value::as_str)
            .ok_or_else(|| format!("zTOC {digest} names no image layer"))?
            .parse()
            .map_err(|e| format!("zTOC {digest}'s layer digest: {e}"))?;
        out.push(ZtocRef {
            ztoc: Descriptor {
                media_type: ZTOC_MEDIA_TYPE.into(),
                digest,
                size,
                platform: None,
                annotations: None,
                urls: None,
            },
            layer,
        });
    }
    Ok(out)
}

/// Layer indexes read from a SOCI index.
#[derive(Default)]
pub struct Loaded {
    /// By image layer digest, for the layers the index has a usable zTOC for.
    pub indexes: HashMap<Digest, LayerIndex>,
    /// The index is a referrer the manifest does not vouch for (v1): the
    /// disk re-derives it in the background.
    pub rederive: bool,
}

/// What a lookup needs of an image before its config is known, so that
/// the lookup runs while the config is fetched.
pub struct Head<'a> {
    /// The image, for messages.
    pub location: &'a str,
    /// The image manifest's digest (`None`: not from a registry).
    pub subject: Option<&'a Digest>,
    /// The image manifest.
    pub manifest: &'a ImageManifest,
}

/// A SOCI index found and its zTOCs fetched, checked and parsed; turned
/// into layer indexes by [`Fetched::finish`] once the config's diff_ids
/// are known.
pub struct Fetched {
    index: Digest,
    version: Version,
    /// (image layer digest, its zTOC).
    ztocs: Vec<(Digest, ztoc::Parsed)>,
}

/// The image's SOCI index, for the layers it has a usable zTOC for (the
/// others stream as usual): the v2 index the image manifest names (the
/// manifest vouches for it through its digest), else, if `v1`, the first
/// SOCI v1 index among the manifest's referrers. `None`: no index, or one
/// this reader refuses (the reason is logged). Every zTOC is fetched by
/// digest and checked; each span read later is checked against the
/// digests it holds.
pub async fn fetch(
    source: &Source,
    head: &Head<'_>,
    cache: &BlobCache,
    v1: bool,
) -> Option<Fetched> {
    let (Source::Registry(reg), Some(subject)) = (source, head.subject) else {
        return None;
    };
    let named = head
        .manifest
        .annotations
        .as_ref()
        .and_then(|a| a.get(INDEX_DIGEST));
    if let Some(named) = named {
        let read = match named.parse::<Digest>() {
            Ok(d) => read_index(source, head, cache, subject, &d, Version::V2).await,
            Err(e) => Err(SociError::Invalid {
                image: head.location.to_string(),
                digest: subject.clone(),
                what: format!("annotation {INDEX_DIGEST}: {e}"),
            }),
        };
        match read {
            Ok(f) => return Some(f),
            Err(e) => tracing::warn!("{e}; not using it"),
        }
    }
    if !v1 {
        return None;
    }
    let found = match reg.referrers(subject, ARTIFACT_TYPE_V1).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(
                "looking for a SOCI index of {}: {e}; streaming the layers",
                head.location
            );
            return None;
        }
    };
    // soci-snapshotter's SelectFirstPolicy: the first one listed.
    let chosen = found.first()?;
    match read_index(source, head, cache, subject, &chosen.digest, Version::V1).await {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!("{e}; streaming the layers instead");
            None
        }
    }
}

impl Fetched {
    /// The layer indexes, with the config's diff_ids; `None` (logged) if a
    /// zTOC does not fit its layer.
    pub fn finish(self, image: &ResolvedImage) -> Option<Loaded> {
        let mut indexes = HashMap::new();
        for (digest, parsed) in self.ztocs {
            let Some(layer) = image.layers.iter().find(|l| l.descriptor.digest == digest) else {
                continue;
            };
            match parsed.into_index(&digest, &layer.diff_id, layer.descriptor.size) {
                Ok(ix) => {
                    indexes.insert(digest, ix);
                }
                Err(e) => {
                    tracing::warn!(
                        "SOCI index {} of {}: {e}; streaming the layers instead",
                        self.index,
                        image.location
                    );
                    return None;
                }
            }
        }
        match self.version {
            Version::V2 => {
                tracing::info!(index = %self.index, layers = indexes.len(), "using the image's SOCI v2 index");
            }
            Version::V1 => {
                tracing::info!(index = %self.index, layers = indexes.len(), "using the SOCI v1 index");
            }
        }
        Some(Loaded {
            indexes,
            rederive: self.version == Version::V1,
        })
    }
}

async fn read_index(
    source: &Source,
    head: &Head<'_>,
    cache: &BlobCache,
    subject: &Digest,
    digest: &Digest,
    version: Version,
) -> Result<Fetched, SociError> {
    let mut fetched = Fetched {
        index: digest.clone(),
        version,
        ztocs: Vec::new(),
    };
    let Source::Registry(reg) = source else {
        return Ok(fetched);
    };
    let (bytes, _) = reg
        .manifest(Some(digest), MANIFEST_LIMIT)
        .await
        .map_err(|source| SociError::Registry {
            image: head.location.to_string(),
            source,
        })?;
    let refs =
        parse_index_manifest(&bytes, subject, version).map_err(|what| SociError::Invalid {
            image: head.location.to_string(),
            digest: digest.clone(),
            what,
        })?;
    let mut wanted = Vec::new();
    for layer in &head.manifest.layers {
        if layer_compression(layer).ok() != Some(Compression::Gzip) {
            continue;
        }
        let Some(r) = refs.iter().find(|r| r.layer == layer.digest) else {
            continue;
        };
        if r.ztoc.size > ZTOC_LIMIT {
            tracing::warn!(ztoc = %r.ztoc.digest, size = r.ztoc.size, "zTOC too large; streaming its layer");
            continue;
        }
        wanted.push((layer, &r.ztoc));
    }
    // All at once: each is a round trip to the registry.
    let bodies = futures_util::future::try_join_all(wanted.iter().map(|(_, ztoc)| async {
        source
            .read_range(ztoc, 0, ztoc.size, cache)
            .await
            .map_err(|e| SociError::Source {
                image: head.location.to_string(),
                source: Box::new(e),
            })
    }))
    .await?;
    tracing::debug!(ztocs = bodies.len(), "zTOCs fetched");
    let checked = hash_and_parse(&wanted, &bodies);
    for ((layer, ztoc), (actual, parsed)) in wanted.iter().zip(checked) {
        // Parsed before its digest was known (the parser takes any bytes):
        // used only if the digest is the one the index names.
        if actual != ztoc.digest {
            return Err(SociError::Invalid {
                image: head.location.to_string(),
                digest: digest.clone(),
                what: format!("zTOC {} hashes to {actual}", ztoc.digest),
            });
        }
        fetched.ztocs.push((layer.digest.clone(), parsed?));
    }
    tracing::debug!(ztocs = fetched.ztocs.len(), "zTOCs checked and parsed");
    Ok(fetched)
}

/// The digest and parse of each zTOC body, worked out on all cores at
/// once: hashing one and parsing it are separate jobs.
fn hash_and_parse(
    wanted: &[(&Descriptor, &Descriptor)],
    bodies: &[Vec<u8>],
) -> Vec<(Digest, Result<ztoc::Parsed, ztoc::ZtocError>)> {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let n = bodies.len();
    let hashes: Vec<OnceLock<Digest>> = (0..n).map(|_| OnceLock::new()).collect();
    let parses: Vec<OnceLock<Result<ztoc::Parsed, ztoc::ZtocError>>> =
        (0..n).map(|_| OnceLock::new()).collect();
    let next = AtomicUsize::new(0);
    let work = || {
        loop {
            let job = next.fetch_add(1, Ordering::Relaxed);
            if job >= 2 * n {
                break;
            }
            // The parses first: the calling thread, which takes the first
            // job, parses into the heap it plans in (see `crate::heap`).
            if job < n {
                let _ = parses[job].set(ztoc::parse(&wanted[job].0.digest, &bodies[job]));
            } else {
                let i = job - n;
                let _ = hashes[i].set(Digest::sha256_of(&bodies[i]));
            }
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    std::thread::scope(|s| {
        for _ in 1..cores.min(2 * n) {
            s.spawn(work);
        }
        work();
    });
    hashes
        .into_iter()
        .zip(parses)
        .map(|(h, p)| {
            let (Some(h), Some(p)) = (h.into_inner(), p.into_inner()) else {
                unreachable!("every job ran before the scope ended")
            };
            (h, p)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_manifests_round_trip_and_name_their_subject() {
        let subject = Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: Digest::sha256_of(b"image"),
            size: 500,
            platform: None,
            annotations: None,
            urls: None,
        };
        let layer = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: Digest::sha256_of(b"layer"),
            size: 1 << 20,
            platform: None,
            annotations: None,
            urls: None,
        };
        let z = ZtocEntry {
            digest: Digest::sha256_of(b"ztoc"),
            size: 99,
            layer: layer.clone(),
            span_size: 4 << 20,
        };
        let m = index_manifest(&subject, std::slice::from_ref(&z), "ocidisk");
        assert_eq!(
            m,
            index_manifest(&subject, &[z], "ocidisk"),
            "deterministic"
        );
        let refs = parse_index_manifest(&m, &subject.digest, Version::V1).unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(
            (refs[0].layer.clone(), refs[0].ztoc.size),
            (layer.digest, 99)
        );
        let other = Digest::sha256_of(b"another image");
        let err = parse_index_manifest(&m, &other, Version::V1).unwrap_err();
        assert!(err.contains("not for the image"), "{err}");
        let v2 = String::from_utf8(m)
            .unwrap()
            .replace("index.v1", "index.v2");
        assert!(parse_index_manifest(v2.as_bytes(), &subject.digest, Version::V1).is_err());
        // A v2 index has no subject to check; its config says v2.
        let refs = parse_index_manifest(v2.as_bytes(), &other, Version::V2).unwrap();
        assert_eq!(refs.len(), 1);
    }
}
