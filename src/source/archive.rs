//! Images from `docker save` archives (`docker-archive:FILE[:NAME:TAG|:@N]`),
//! as written by `docker save` and `skopeo copy … docker-archive:FILE`.
//!
//! The archive's `manifest.json` names each image's config and layer files.
//! There is no registry manifest, so one is synthesised (Docker schema 2) with
//! the layers' real digests: an uncompressed layer's digest is its diff_id; a
//! compressed one (newer `docker save` can write those) is hashed once on open.
//! The image is identified by its config digest, like `docker images` does.
//! Members are read in place by offset; nothing is extracted.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::manifest::{
    Compression, DOCKER_CONFIG, DOCKER_MANIFEST, Descriptor, ImageConfig, ImageManifest,
    MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE,
};
use crate::cache::read_limited;
use crate::digest::{Algorithm, Digest, Hasher};

/// Errors reading a docker archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An I/O error reading the file.
    #[error("reading docker archive {file}: {source}")]
    Io {
        /// The archive.
        file: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Something inside the archive is wrong.
    #[error("docker archive {file}: {detail}")]
    Invalid {
        /// The archive.
        file: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The selected image is not there.
    #[error("docker archive {file} has no image {wanted} (it has: {available})")]
    NoSuchImage {
        /// The archive.
        file: PathBuf,
        /// What was asked for.
        wanted: String,
        /// What it has.
        available: String,
    },
    /// Several images and no selector.
    #[error(
        "docker archive {file} holds {count} images; name one as docker-archive:{file}:NAME:TAG or :@INDEX (it has: {available})"
    )]
    Ambiguous {
        /// The archive.
        file: PathBuf,
        /// How many images.
        count: usize,
        /// What it has.
        available: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Which image of a multi-image archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveSelector {
    /// By `NAME:TAG` in `RepoTags`.
    Name(String),
    /// By position in `manifest.json`.
    Index(usize),
}

/// A docker archive opened for one image.
#[derive(Debug, Clone)]
pub struct ArchiveSource {
    file: PathBuf,
    manifest: ImageManifest,
    manifest_bytes: Vec<u8>,
    config_bytes: Vec<u8>,
    /// Blob digest → (offset, size) of the member in the tar.
    blobs: HashMap<Digest, (u64, u64)>,
    repo_tags: Vec<String>,
}

fn normalize_member(base: &Path, name: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in base.components().chain(name.components()) {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(parts.join("/"))
}

impl ArchiveSource {
    /// Open `file` and select one image. Blocking: hashes compressed layers.
    pub fn open(
        file: &Path,
        selector: Option<&ArchiveSelector>,
    ) -> Result<ArchiveSource, ArchiveError> {
        let io = |source| ArchiveError::Io {
            file: file.to_path_buf(),
            source,
        };
        let invalid = |detail: String| ArchiveError::Invalid {
            file: file.to_path_buf(),
            detail,
        };
        // Index the members: name → (offset, size), following links.
        let mut members: HashMap<String, (u64, u64)> = HashMap::new();
        let mut links: HashMap<String, String> = HashMap::new();
        {
            let f = File::open(file).map_err(io)?;
            let mut ar = tar::Archive::new(f);
            for entry in ar.entries().map_err(io)? {
                let entry = entry.map_err(io)?;
                let path = entry.path().map_err(io)?.into_owned();
                let Some(name) = normalize_member(Path::new(""), &path) else {
                    continue;
                };
                let kind = entry.header().entry_type();
                if kind.is_symlink() || kind.is_hard_link() {
                    if let Some(target) = entry.link_name().map_err(io)? {
                        let base = if kind.is_symlink() {
                            path.parent().map(Path::to_path_buf).unwrap_or_default()
                        } else {
                            PathBuf::new()
                        };
                        if let Some(t) = normalize_member(&base, &target) {
                            links.insert(name, t);
                        }
                    }
                } else if kind.is_file() {
                    members.insert(name, (entry.raw_file_position(), entry.size()));
                }
            }
        }
        let lookup = |name: &str| -> Result<(u64, u64), ArchiveError> {
            let mut cur = normalize_member(Path::new(""), Path::new(name))
                .ok_or_else(|| invalid(format!("member name {name:?} escapes the archive")))?;
            for _ in 0..16 {
                if let Some(m) = members.get(&cur) {
                    return Ok(*m);
                }
                match links.get(&cur) {
                    Some(next) => cur = next.clone(),
                    None => break,
                }
            }
            Err(invalid(format!("missing member {name}")))
        };
        let mut f = File::open(file).map_err(io)?;
        let mut read_member = |name: &str, limit: u64| -> Result<Vec<u8>, ArchiveError> {
            let (off, size) = lookup(name)?;
            f.seek(SeekFrom::Start(off)).map_err(io)?;
            read_limited((&mut f).take(size), limit, name).map_err(io)
        };

        let manifest_json =
            read_member("manifest.json", MAX_MANIFEST_SIZE).map_err(|e| match e {
                ArchiveError::Invalid { .. } => invalid(
                    "no manifest.json: not a `docker save` archive (for an OCI layout use oci:DIR)"
                        .into(),
                ),
                e => e,
            })?;
        let entries: Vec<ManifestEntry> = serde_json::from_slice(&manifest_json)
            .map_err(|e| invalid(format!("malformed manifest.json: {e}")))?;
        let describe = || {
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| match &e.repo_tags {
                    Some(t) if !t.is_empty() => t.join(" "),
                    _ => format!("@{i}"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let entry = match selector {
            None => match entries.len() {
                0 => return Err(invalid("manifest.json lists no images".into())),
                1 => &entries[0],
                count => {
                    return Err(ArchiveError::Ambiguous {
                        file: file.to_path_buf(),
                        count,
                        available: describe(),
                    });
                }
            },
            Some(ArchiveSelector::Index(i)) => {
                entries.get(*i).ok_or_else(|| ArchiveError::NoSuchImage {
                    file: file.to_path_buf(),
                    wanted: format!("@{i}"),
                    available: describe(),
                })?
            }
            Some(ArchiveSelector::Name(name)) => {
                let want = normalize_name(name);
                entries
                    .iter()
                    .find(|e| {
                        e.repo_tags
                            .iter()
                            .flatten()
                            .any(|t| normalize_name(t) == want)
                    })
                    .ok_or_else(|| ArchiveError::NoSuchImage {
                        file: file.to_path_buf(),
                        wanted: name.clone(),
                        available: describe(),
                    })?
            }
        };

        let config_bytes = read_member(&entry.config, MAX_CONFIG_SIZE)?;
        let config_digest = Digest::sha256_of(&config_bytes);
        let config = ImageConfig::parse(&config_bytes)
            .map_err(|e| invalid(format!("config {}: {e}", entry.config)))?;
        if config.rootfs.diff_ids.len() != entry.layers.len() {
            return Err(invalid(format!(
                "config lists {} diff_ids but manifest.json lists {} layers",
                config.rootfs.diff_ids.len(),
                entry.layers.len()
            )));
        }
        let mut blobs = HashMap::new();
        let (coff, csize) = lookup(&entry.config)?;
        blobs.insert(config_digest.clone(), (coff, csize));
        let mut layers = Vec::new();
        for (name, diff_id) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
            let (off, size) = lookup(name)?;
            let mut head = [0u8; 4];
            f.seek(SeekFrom::Start(off)).map_err(io)?;
            let n = (&mut f).take(size.min(4)).read(&mut head).map_err(io)?;
            let compression = Compression::sniff(&head[..n]);
            let (digest, media_type) = match compression {
                Compression::None => (
                    diff_id.clone(),
                    "application/vnd.docker.image.rootfs.diff.tar",
                ),
                c => {
                    f.seek(SeekFrom::Start(off)).map_err(io)?;
                    let mut h = Hasher::new(Algorithm::Sha256);
                    std::io::copy(&mut (&mut f).take(size), &mut h).map_err(io)?;
                    let mt = if c == Compression::Gzip {
                        "application/vnd.docker.image.rootfs.diff.tar.gzip"
                    } else {
                        "application/vnd.docker.image.rootfs.diff.tar.zstd"
                    };
                    (h.finish(), mt)
                }
            };
            blobs.insert(digest.clone(), (off, size));
            layers.push(Descriptor {
                media_type: media_type.into(),
                digest,
                size,
                platform: None,
                annotations: None,
                urls: None,
            });
        }
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(DOCKER_MANIFEST.into()),
            config: Descriptor {
                media_type: DOCKER_CONFIG.into(),
                digest: config_digest,
                size: csize,
                platform: None,
                annotations: None,
                urls: None,
            },
            layers,
            annotations: None,
        };
        let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
        Ok(ArchiveSource {
            file: file.to_path_buf(),
            manifest,
            manifest_bytes,
            config_bytes,
            blobs,
            repo_tags: entry.repo_tags.clone().unwrap_or_default(),
        })
    }

    /// The archive file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The synthesised manifest.
    pub fn manifest(&self) -> &ImageManifest {
        &self.manifest
    }

    /// The synthesised manifest's JSON.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// The config bytes as stored in the archive.
    pub fn config_bytes(&self) -> &[u8] {
        &self.config_bytes
    }

    /// The image's names in the archive.
    pub fn repo_tags(&self) -> &[String] {
        &self.repo_tags
    }

    /// Where a blob's bytes are in the archive file: (offset, size).
    pub fn blob_location(&self, digest: &Digest) -> Option<(u64, u64)> {
        self.blobs.get(digest).copied()
    }

    /// Open a blob for streaming from `offset`; the caller verifies it.
    pub async fn open_blob(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<tokio::io::Take<tokio::fs::File>, ArchiveError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let (start, size) = *self
            .blobs
            .get(digest)
            .ok_or_else(|| ArchiveError::Invalid {
                file: self.file.clone(),
                detail: format!("no member holds blob {digest}"),
            })?;
        let io = |source| ArchiveError::Io {
            file: self.file.clone(),
            source,
        };
        let mut f = tokio::fs::File::open(&self.file).await.map_err(io)?;
        let offset = offset.min(size);
        f.seek(SeekFrom::Start(start + offset)).await.map_err(io)?;
        Ok(f.take(size - offset))
    }
}

/// `alpine` and `docker.io/library/alpine:latest` name the same image.
fn normalize_name(name: &str) -> String {
    super::reference::parse(name)
        .map(|r| r.whole())
        .unwrap_or_else(|_| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_cannot_escape() {
        assert_eq!(
            normalize_member(Path::new("a"), Path::new("../b/layer.tar")).as_deref(),
            Some("b/layer.tar")
        );
        assert_eq!(normalize_member(Path::new(""), Path::new("../x")), None);
        assert_eq!(
            normalize_member(Path::new(""), Path::new("./manifest.json")).as_deref(),
            Some("manifest.json")
        );
    }

    #[test]
    fn names_compare_normalised() {
        assert_eq!(
            normalize_name("alpine"),
            normalize_name("docker.io/library/alpine:latest")
        );
        assert_ne!(normalize_name("alpine:3"), normalize_name("alpine"));
    }

    #[test]
    fn not_a_docker_archive() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.tar");
        let mut b = tar::Builder::new(File::create(&p).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "index.json", &b"{}"[..]).unwrap();
        b.finish().unwrap();
        drop(b);
        let e = ArchiveSource::open(&p, None).unwrap_err().to_string();
        assert!(e.contains("not a `docker save` archive"), "{e}");
        let e = ArchiveSource::open(&d.path().join("missing.tar"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.tar"), "{e}");
    }
}
