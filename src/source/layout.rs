//! Images from an OCI image layout directory (`oci:DIR[:TAG]`), as written by
//! `skopeo copy … oci:DIR:TAG`, `umoci`, buildah or `docker buildx --output type=oci`.
//!
//! The tag selects the `index.json` entry whose
//! `org.opencontainers.image.ref.name` annotation equals it; without a tag
//! the layout must hold exactly one entry. Blobs are read in place and
//! verified like registry blobs: a layout is input, not trusted storage.

use std::path::{Path, PathBuf};

use super::manifest::{Descriptor, ImageIndex, MAX_MANIFEST_SIZE};
use crate::cache::read_limited;
use crate::digest::Digest;

/// The annotation naming an entry of `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Errors reading an OCI layout.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// No `oci-layout` file.
    #[error("{dir} is not an OCI image layout (no oci-layout file)")]
    NotALayout {
        /// The directory.
        dir: PathBuf,
    },
    /// An I/O error on a file of the layout.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `index.json` is malformed.
    #[error("parsing {path}: {source}")]
    Index {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// No entry has the tag.
    #[error("no image tagged {tag:?} in OCI layout {dir} (tags: {available})")]
    TagNotFound {
        /// The directory.
        dir: PathBuf,
        /// The tag asked for.
        tag: String,
        /// The tags the layout has.
        available: String,
    },
    /// Several entries and no tag.
    #[error("OCI layout {dir} holds {count} images; name one as oci:{dir}:TAG (tags: {available})")]
    Ambiguous {
        /// The directory.
        dir: PathBuf,
        /// How many entries.
        count: usize,
        /// The tags the layout has.
        available: String,
    },
    /// `index.json` lists nothing.
    #[error("OCI layout {dir} holds no images")]
    Empty {
        /// The directory.
        dir: PathBuf,
    },
    /// A blob the manifest names is absent.
    #[error("OCI layout {dir} lacks blob {digest}")]
    MissingBlob {
        /// The directory.
        dir: PathBuf,
        /// The blob.
        digest: Digest,
    },
    /// A blob's content does not match its name.
    #[error("blob {digest} in OCI layout {dir} hashes to {actual}")]
    DigestMismatch {
        /// The directory.
        dir: PathBuf,
        /// The blob's name.
        digest: Digest,
        /// Its content's digest.
        actual: Digest,
    },
}

/// An OCI layout opened for one tag.
#[derive(Debug, Clone)]
pub struct LayoutSource {
    dir: PathBuf,
    tag: Option<String>,
    index: ImageIndex,
}

impl LayoutSource {
    /// Open `dir` and read its `index.json`.
    pub fn open(dir: &Path, tag: Option<&str>) -> Result<LayoutSource, LayoutError> {
        let marker = dir.join("oci-layout");
        if !marker.is_file() {
            return Err(LayoutError::NotALayout {
                dir: dir.to_path_buf(),
            });
        }
        let index_path = dir.join("index.json");
        let file = std::fs::File::open(&index_path).map_err(|source| LayoutError::Io {
            path: index_path.clone(),
            source,
        })?;
        let bytes = read_limited(file, MAX_MANIFEST_SIZE, "index.json").map_err(|source| {
            LayoutError::Io {
                path: index_path.clone(),
                source,
            }
        })?;
        let index: ImageIndex =
            serde_json::from_slice(&bytes).map_err(|source| LayoutError::Index {
                path: index_path,
                source,
            })?;
        Ok(LayoutSource {
            dir: dir.to_path_buf(),
            tag: tag.map(str::to_string),
            index,
        })
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tag asked for, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    fn tags(&self) -> String {
        let tags: Vec<&str> = self
            .index
            .manifests
            .iter()
            .filter_map(|d| d.annotations.as_ref()?.get(REF_NAME).map(String::as_str))
            .collect();
        if tags.is_empty() {
            "none".into()
        } else {
            tags.join(", ")
        }
    }

    /// The `index.json` entry the tag selects.
    pub fn entry(&self) -> Result<&Descriptor, LayoutError> {
        let m = &self.index.manifests;
        match &self.tag {
            Some(tag) => m
                .iter()
                .find(|d| {
                    d.annotations
                        .as_ref()
                        .and_then(|a| a.get(REF_NAME))
                        .is_some_and(|n| n == tag)
                })
                .ok_or_else(|| LayoutError::TagNotFound {
                    dir: self.dir.clone(),
                    tag: tag.clone(),
                    available: self.tags(),
                }),
            None => match m.len() {
                0 => Err(LayoutError::Empty {
                    dir: self.dir.clone(),
                }),
                1 => Ok(&m[0]),
                count => Err(LayoutError::Ambiguous {
                    dir: self.dir.clone(),
                    count,
                    available: self.tags(),
                }),
            },
        }
    }

    /// Where a blob lives in the layout.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    /// Read a small blob (manifest, config) fully, verified against its digest.
    pub fn read_small(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, LayoutError> {
        let path = self.blob_path(digest);
        let file = std::fs::File::open(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                LayoutError::MissingBlob {
                    dir: self.dir.clone(),
                    digest: digest.clone(),
                }
            } else {
                LayoutError::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let bytes = read_limited(file, limit, &digest.to_string())
            .map_err(|source| LayoutError::Io { path, source })?;
        if !digest.matches(&bytes) {
            let mut h = crate::digest::Hasher::new(digest.algorithm());
            h.update(&bytes);
            return Err(LayoutError::DigestMismatch {
                dir: self.dir.clone(),
                digest: digest.clone(),
                actual: h.finish(),
            });
        }
        Ok(bytes)
    }

    /// Open a blob for streaming from `offset`; the caller verifies it.
    pub async fn open_blob(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<tokio::fs::File, LayoutError> {
        use tokio::io::AsyncSeekExt;
        let path = self.blob_path(digest);
        let mut f = tokio::fs::File::open(&path).await.map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                LayoutError::MissingBlob {
                    dir: self.dir.clone(),
                    digest: digest.clone(),
                }
            } else {
                LayoutError::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        f.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|source| LayoutError::Io { path, source })?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(index: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("index.json"), index).unwrap();
        d
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn selects_by_tag_and_lists_tags_when_missing() {
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D}","size":0,"annotations":{{"{REF_NAME}":"a"}}}},
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D}","size":0,"annotations":{{"{REF_NAME}":"b"}}}}]}}"#
        );
        let d = layout(&idx);
        assert!(
            LayoutSource::open(d.path(), Some("b"))
                .unwrap()
                .entry()
                .is_ok()
        );
        let e = LayoutSource::open(d.path(), Some("c"))
            .unwrap()
            .entry()
            .unwrap_err();
        assert!(e.to_string().contains("tags: a, b"), "{e}");
        let e = LayoutSource::open(d.path(), None)
            .unwrap()
            .entry()
            .unwrap_err();
        assert!(matches!(e, LayoutError::Ambiguous { count: 2, .. }), "{e}");
    }

    #[test]
    fn not_a_layout_and_missing_blob() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            LayoutSource::open(d.path(), None).unwrap_err(),
            LayoutError::NotALayout { .. }
        ));
        let d = layout(r#"{"schemaVersion":2,"manifests":[]}"#);
        let l = LayoutSource::open(d.path(), None).unwrap();
        assert!(matches!(l.entry().unwrap_err(), LayoutError::Empty { .. }));
        let digest: Digest = D.parse().unwrap();
        assert!(matches!(
            l.read_small(&digest, 10).unwrap_err(),
            LayoutError::MissingBlob { .. }
        ));
        std::fs::create_dir_all(d.path().join("blobs/sha256")).unwrap();
        std::fs::write(l.blob_path(&digest), b"not empty").unwrap();
        assert!(matches!(
            l.read_small(&digest, 100).unwrap_err(),
            LayoutError::DigestMismatch { .. }
        ));
    }
}
