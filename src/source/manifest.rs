//! OCI and Docker schema-2 manifests, indexes and image configs, and which of
//! their media types ocidisk accepts.
//!
//! The types here are our own, lenient where registries differ (missing
//! `mediaType` in OCI manifests) and strict where safety depends on it
//! (digests, sizes, layer compression). Anything we cannot turn into a
//! filesystem — schema 1, foreign or encrypted layers, artifacts that are not
//! container images — is a clear error naming the media type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::platform::Platform;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema-2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema-1 manifest (rejected).
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Docker schema-1 signed manifest (rejected).
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The media types sent in `Accept` when fetching manifests. Registries such
/// as distribution 2.8 answer 404 without them.
pub const ACCEPTED_MANIFEST_TYPES: &[&str] = &[
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST,
];

/// Largest manifest or index we accept (registries cap at 4 MiB).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// Largest image config we accept.
pub const MAX_CONFIG_SIZE: u64 = 16 << 20;

/// Errors from parsing manifests and configs.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the expected shape.
    #[error("malformed {what}: {source}")]
    Malformed {
        /// What we were parsing.
        what: &'static str,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A schema-1 manifest.
    #[error(
        "unsupported manifest type {0}: Docker schema 1 is deprecated; re-push the image with a current client (it converts to schema 2)"
    )]
    Schema1(String),
    /// A manifest media type we do not handle.
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedManifest(String),
    /// A config media type that is not a container image config.
    #[error(
        "unsupported config media type {0:?}: this is not a container image (an OCI artifact?)"
    )]
    UnsupportedConfig(String),
    /// A layer media type we cannot unpack.
    #[error("unsupported layer media type {media_type:?} for layer {digest}: {why}")]
    UnsupportedLayer {
        /// The layer's media type.
        media_type: String,
        /// The layer's digest.
        digest: Digest,
        /// Why it is refused.
        why: &'static str,
    },
    /// Layer count and diff_id count differ.
    #[error("image config lists {diff_ids} diff_ids but the manifest has {layers} layers")]
    LayerCountMismatch {
        /// Layers in the manifest.
        layers: usize,
        /// diff_ids in the config.
        diff_ids: usize,
    },
    /// A descriptor claims a size beyond our limits.
    #[error("{what} {digest} claims {size} bytes, more than the {limit}-byte limit")]
    TooLarge {
        /// What the descriptor describes.
        what: &'static str,
        /// Its digest.
        digest: Digest,
        /// Its claimed size.
        size: u64,
        /// Our limit.
        limit: u64,
    },
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(default)]
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Platform, in index entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<DescriptorPlatform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Alternative download URLs (foreign layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

/// The platform field of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorPlatform {
    /// Architecture.
    pub architecture: String,
    /// OS.
    pub os: String,
    /// Variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl DescriptorPlatform {
    /// As a [`Platform`].
    pub fn to_platform(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, if the manifest states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// Layers, bottom first.
    pub layers: Vec<Descriptor>,
    /// Annotations (e.g. `com.amazon.soci.index-digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index / manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, if stated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The per-platform manifests.
    pub manifests: Vec<Descriptor>,
}

/// A parsed manifest: an image or an index of images.
#[derive(Debug, Clone)]
// One per pull, moved a few times: boxing the image would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Manifest {
    /// One image.
    Image(ImageManifest),
    /// Several images, one per platform.
    Index(ImageIndex),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

impl Manifest {
    /// Parse manifest bytes. `content_type` is the transport's media type
    /// (HTTP `Content-Type`, or the descriptor's), used when the body does not
    /// say what it is.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|source| ManifestError::Malformed {
                what: "manifest",
                source,
            })?;
        let media_type = probe
            .media_type
            .clone()
            .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or(c).trim().to_string()))
            .filter(|m| !m.is_empty() && m != "application/json" && m != "text/plain");
        if probe.schema_version == Some(1)
            || matches!(
                media_type.as_deref(),
                Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED)
            )
        {
            return Err(ManifestError::Schema1(
                media_type.unwrap_or_else(|| "schemaVersion 1".into()),
            ));
        }
        let is_index = match media_type.as_deref() {
            Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            Some(other) => return Err(ManifestError::UnsupportedManifest(other.to_string())),
            None if probe.manifests.is_some() => true,
            None if probe.config.is_some() => false,
            None => return Err(ManifestError::UnsupportedManifest("(none stated)".into())),
        };
        if is_index {
            serde_json::from_slice(bytes)
                .map(Manifest::Index)
                .map_err(|source| ManifestError::Malformed {
                    what: "image index",
                    source,
                })
        } else {
            serde_json::from_slice(bytes)
                .map(Manifest::Image)
                .map_err(|source| ManifestError::Malformed {
                    what: "image manifest",
                    source,
                })
        }
    }
}

impl ImageIndex {
    /// The platform-specific image entries, skipping attestations and other
    /// non-image entries (buildkit's `unknown/unknown`).
    pub fn image_entries(&self) -> impl Iterator<Item = &Descriptor> {
        self.manifests.iter().filter(|d| {
            let is_image = matches!(
                d.media_type.as_str(),
                OCI_MANIFEST | DOCKER_MANIFEST | OCI_INDEX | DOCKER_MANIFEST_LIST | ""
            );
            let attestation = d
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("vnd.docker.reference.type"));
            let unknown = d
                .platform
                .as_ref()
                .is_some_and(|p| p.os == "unknown" || p.architecture == "unknown");
            is_image && !attestation && !unknown
        })
    }

    /// The platforms this index offers, for error messages and `inspect`.
    pub fn platforms(&self) -> Vec<Platform> {
        self.image_entries()
            .filter_map(|d| d.platform.as_ref().map(DescriptorPlatform::to_platform))
            .collect()
    }

    /// The entry for `want`, if any.
    pub fn select(&self, want: &Platform) -> Option<&Descriptor> {
        self.image_entries().find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| want.matches(&p.to_platform()))
        })
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain tar.
    None,
    /// tar+gzip.
    Gzip,
    /// tar+zstd.
    Zstd,
}

impl Compression {
    /// Guess from the first bytes of a blob (for docker-archive files, whose
    /// layers carry no media type).
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// The compression of a layer with this media type, or why we refuse it.
pub fn layer_compression(layer: &Descriptor) -> Result<Compression, ManifestError> {
    let refuse = |why| ManifestError::UnsupportedLayer {
        media_type: layer.media_type.clone(),
        digest: layer.digest.clone(),
        why,
    };
    let mt = layer.media_type.as_str();
    if mt.contains("+encrypted") {
        return Err(refuse(
            "encrypted layers need a decryption key ocidisk does not have",
        ));
    }
    if mt.contains("foreign") || mt.contains("nondistributable") {
        return Err(refuse(
            "foreign/non-distributable layers are not served by the registry (Windows base layers)",
        ));
    }
    match mt {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
        _ => Err(refuse("not a tar, tar+gzip or tar+zstd layer")),
    }
}

/// The parts of an image config ocidisk uses or shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Architecture the image is built for.
    #[serde(default)]
    pub architecture: String,
    /// OS the image is built for.
    #[serde(default)]
    pub os: String,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Creation time as written by the builder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The runtime config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RuntimeConfig>,
    /// The layer diff_ids.
    pub rootfs: RootFs,
}

/// The `config` object of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeConfig {
    /// User to run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Exposed ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    /// Stop signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

/// The `rootfs` object of an image config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// sha256 of each uncompressed layer tar, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

impl ImageConfig {
    /// Parse config bytes.
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig, ManifestError> {
        serde_json::from_slice(bytes).map_err(|source| ManifestError::Malformed {
            what: "image config",
            source,
        })
    }

    /// The platform the config declares.
    pub fn platform(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }
}

/// Check what a manifest's config and layers are before anything is fetched.
pub fn check_image_manifest(m: &ImageManifest) -> Result<(), ManifestError> {
    match m.config.media_type.as_str() {
        OCI_CONFIG | DOCKER_CONFIG | "" => {}
        other => return Err(ManifestError::UnsupportedConfig(other.to_string())),
    }
    if m.config.size > MAX_CONFIG_SIZE {
        return Err(ManifestError::TooLarge {
            what: "config",
            digest: m.config.digest.clone(),
            size: m.config.size,
            limit: MAX_CONFIG_SIZE,
        });
    }
    for layer in &m.layers {
        layer_compression(layer)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn manifest_json(layer_type: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{D}","size":2}},
               "layers":[{{"mediaType":"{layer_type}","digest":"{D}","size":0}}]}}"#
        )
    }

    #[test]
    fn manifest_without_media_type_is_recognised_by_shape() {
        let m = Manifest::parse(
            manifest_json("application/vnd.oci.image.layer.v1.tar").as_bytes(),
            None,
        )
        .unwrap();
        let Manifest::Image(m) = m else {
            panic!("not an image")
        };
        assert_eq!(layer_compression(&m.layers[0]).unwrap(), Compression::None);
        check_image_manifest(&m).unwrap();
    }

    #[test]
    fn layer_media_types() {
        for (mt, want) in [
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::Zstd,
            ),
        ] {
            let Manifest::Image(m) = Manifest::parse(manifest_json(mt).as_bytes(), None).unwrap()
            else {
                panic!()
            };
            assert_eq!(layer_compression(&m.layers[0]).unwrap(), want);
        }
        for bad in [
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
        ] {
            let Manifest::Image(m) = Manifest::parse(manifest_json(bad).as_bytes(), None).unwrap()
            else {
                panic!()
            };
            let err = check_image_manifest(&m).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn schema1_is_refused_by_name() {
        let err =
            Manifest::parse(br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#, None).unwrap_err();
        assert!(err.to_string().contains("schema 1"), "{err}");
        let err = Manifest::parse(b"{}", Some(DOCKER_SCHEMA1_SIGNED)).unwrap_err();
        assert!(matches!(err, ManifestError::Schema1(_)));
    }

    #[test]
    fn index_selection_skips_attestations() {
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":1,"platform":{{"os":"unknown","architecture":"unknown"}},
                "annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}}]}}"#
        );
        let Manifest::Index(i) = Manifest::parse(idx.as_bytes(), None).unwrap() else {
            panic!()
        };
        assert_eq!(i.platforms().len(), 1);
        assert!(i.select(&"linux/arm64".parse().unwrap()).is_some());
        assert!(i.select(&"linux/amd64".parse().unwrap()).is_none());
    }

    #[test]
    fn config_with_unknown_fields_parses() {
        let c = ImageConfig::parse(
            format!(
                r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["A=1"],"Cmd":["sh"]}},
                  "rootfs":{{"type":"layers","diff_ids":["{D}"]}},"history":[{{"created_by":"x"}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(c.rootfs.diff_ids.len(), 1);
        assert_eq!(c.platform().to_string(), "linux/amd64");
        assert_eq!(c.config.unwrap().cmd.unwrap(), vec!["sh"]);
    }
}
