//! Image sources: where an image comes from and how it is resolved to one
//! platform's manifest, config and layers.
//!
//! Transports, as skopeo names them:
//! - a bare reference or `docker://REF`: a registry (`alpine` →
//!   `docker.io/library/alpine:latest`, `host:5000/img@sha256:…`);
//! - `oci:DIR[:TAG]`: an OCI image layout;
//! - `docker-archive:FILE[:NAME:TAG|:@N]`: a `docker save` archive;
//! - `containerd:[NS/]NAME`: an image in a running containerd.
//!
//! Every manifest and config is verified against its digest and stored in
//! the [`BlobCache`]; a reference pinned by digest whose blobs are cached is
//! resolved without touching the network.

pub mod archive;
pub mod auth;
pub mod containerd;
pub mod grpc;
pub mod layout;
pub mod manifest;
pub mod mirrors;
pub mod reference;
pub mod registries_conf;

pub mod registry;

mod location;
mod resolve;

pub use location::ImageLocation;
pub use resolve::{resolve, resolve_with};

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde::Serialize;

use crate::cache::{BlobCache, CacheError};
use crate::digest::Digest;
use crate::platform::Platform;
use archive::{ArchiveError, ArchiveSource};
use containerd::{ContainerdError, ContainerdSource};
use layout::{LayoutError, LayoutSource};
use manifest::{
    Compression, Descriptor, ImageConfig, ImageIndex, ImageManifest, MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE, ManifestError,
};
use mirrors::{MirroredRegistry, MirrorsError};
use registries_conf::RegistriesConf;
use registry::{RegistryError, RegistryOptions, RetryPolicy};

/// Errors finding and resolving an image.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The image reference does not parse.
    #[error("invalid image reference {input:?}: {reason}")]
    BadReference {
        /// What the user typed.
        input: String,
        /// Why it is wrong.
        reason: String,
    },
    /// A transport ocidisk does not read.
    #[error(
        "unsupported transport {0:?}: use a registry reference, oci:DIR[:TAG], docker-archive:FILE or containerd:[NS/]NAME"
    )]
    UnsupportedTransport(String),
    /// Registry errors.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// registries.conf refused the reference or a mirror could not be set up.
    #[error(transparent)]
    Mirrors(#[from] MirrorsError),
    /// OCI layout errors.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Docker archive errors.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// containerd errors.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    /// The trust policy refused the image (or could not be applied).
    #[error(transparent)]
    Trust(#[from] Box<crate::trust::TrustError>),
    /// Cache errors.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A manifest or config we cannot use.
    #[error("{image}: {source}")]
    Manifest {
        /// The image.
        image: String,
        /// What is wrong.
        source: ManifestError,
    },
    /// The index has no image for the platform.
    #[error(
        "{image} has no image for platform {want}; it has: {available} (choose with --platform)"
    )]
    PlatformNotFound {
        /// The image.
        image: String,
        /// The platform asked for.
        want: String,
        /// The platforms on offer.
        available: String,
    },
    /// A single-platform image for another platform than explicitly asked.
    #[error("{image} is built for {have}, not {want}")]
    PlatformMismatch {
        /// The image.
        image: String,
        /// The platform asked for.
        want: String,
        /// The image's platform.
        have: String,
    },
    /// A nested index inside an index.
    #[error("{image}: nested image indexes are not supported")]
    NestedIndex {
        /// The image.
        image: String,
    },
    /// A blob's content does not match its digest.
    #[error("{what} from {image} hashes to {actual}, not {expected}; nothing was kept")]
    DigestMismatch {
        /// The image.
        image: String,
        /// Which blob.
        what: String,
        /// Its descriptor's digest.
        expected: Digest,
        /// The content's digest.
        actual: Digest,
    },
    /// A blob is not the size its descriptor says.
    #[error("{what} from {image} is {actual} bytes, but its descriptor says {expected}")]
    SizeMismatch {
        /// The image.
        image: String,
        /// Which blob.
        what: String,
        /// Descriptor size.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// A blob runs past its descriptor's size (a registry's: how much
    /// longer is not known without reading all of it).
    #[error("{what} from {image} is longer than the {expected} bytes its descriptor says")]
    LongerThanDescriptor {
        /// The image.
        image: String,
        /// Which blob.
        what: String,
        /// Descriptor size.
        expected: u64,
    },
    /// Reading a local blob failed mid-stream.
    #[error("reading {what} from {image}: {source}")]
    Read {
        /// The image.
        image: String,
        /// Which blob.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Options for reaching image sources.
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    /// Registry connection options.
    pub registry: RegistryOptions,
    /// containerd's socket (`--containerd-address`); default
    /// [`containerd::DEFAULT_ADDRESS`].
    pub containerd_address: Option<PathBuf>,
    /// Mirrors, blocked and insecure registries (`--registries-conf`).
    pub registries_conf: Option<RegistriesConf>,
    /// Further references to try, in order, when a registry reference's
    /// places do not have the image (a short name's other candidates).
    pub search: Vec<oci_client::Reference>,
}

/// An opened image source.
pub enum Source {
    /// A registry repository, behind its mirrors.
    Registry(Box<MirroredRegistry>),
    /// An OCI layout.
    Layout(LayoutSource),
    /// A docker archive.
    Archive(Box<ArchiveSource>),
    /// An image in containerd.
    Containerd(Box<ContainerdSource>),
}

/// A layer of a resolved image.
#[derive(Debug, Clone, Serialize)]
pub struct Layer {
    /// The manifest's descriptor.
    pub descriptor: Descriptor,
    /// How the blob is compressed.
    pub compression: Compression,
    /// sha256 of the uncompressed tar, from the config.
    pub diff_id: Digest,
}

/// One platform's image, with everything but the layer bytes.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The location as given, normalised.
    pub location: String,
    /// The index the reference named, if any.
    pub index: Option<(Digest, ImageIndex)>,
    /// The image manifest's digest (`None` for docker archives).
    pub manifest_digest: Option<Digest>,
    /// The image manifest (synthesised for docker archives).
    pub manifest: ImageManifest,
    /// The config.
    pub config: ImageConfig,
    /// The config's raw bytes.
    pub config_bytes: Vec<u8>,
    /// The platform of the image, from its config.
    pub platform: Platform,
    /// The layers, bottom first.
    pub layers: Vec<Layer>,
}

impl ResolvedImage {
    /// The image's identity: manifest digest, or config digest for archives.
    pub fn id(&self) -> &Digest {
        self.manifest_digest
            .as_ref()
            .unwrap_or(&self.manifest.config.digest)
    }

    /// The config descriptor.
    pub fn config_descriptor(&self) -> &Descriptor {
        &self.manifest.config
    }

    /// Every blob the image consists of (index, manifest, config, layers).
    pub fn blobs(&self) -> Vec<Digest> {
        let mut v = Vec::new();
        if let Some((d, _)) = &self.index {
            v.push(d.clone());
        }
        if let Some(d) = &self.manifest_digest {
            v.push(d.clone());
        }
        v.push(self.manifest.config.digest.clone());
        v.extend(self.layers.iter().map(|l| l.descriptor.digest.clone()));
        v
    }

    /// Compressed size of all layers.
    pub fn layers_size(&self) -> u64 {
        self.layers.iter().map(|l| l.descriptor.size).sum()
    }
}

/// A blob as it streams in, from byte `start` on.
pub struct BlobStream {
    /// The bytes.
    pub stream: BoxStream<'static, std::io::Result<Bytes>>,
    /// Offset of the first byte in the blob.
    pub start: u64,
}

impl Source {
    /// Open the source of `location`.
    pub async fn open(
        location: &ImageLocation,
        opts: &SourceOptions,
    ) -> Result<Source, SourceError> {
        Ok(match location {
            ImageLocation::Registry(r) => Source::Registry(Box::new(
                MirroredRegistry::connect(
                    r.clone(),
                    &opts.search,
                    &opts.registry,
                    opts.registries_conf.as_ref(),
                )
                .await?,
            )),
            ImageLocation::Layout { dir, tag } => {
                Source::Layout(LayoutSource::open(dir, tag.as_deref())?)
            }
            ImageLocation::Archive { file, selector } => {
                let (file, selector) = (file.clone(), selector.clone());
                let a = tokio::task::spawn_blocking(move || {
                    ArchiveSource::open(&file, selector.as_ref())
                })
                .await
                .expect("archive indexing does not panic")?;
                Source::Archive(Box::new(a))
            }
            ImageLocation::Containerd(r) => {
                let socket = opts
                    .containerd_address
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(containerd::DEFAULT_ADDRESS));
                Source::Containerd(Box::new(ContainerdSource::open(&socket, r).await?))
            }
        })
    }

    /// The retry budget for mid-stream failures (registries only).
    pub fn retry_policy(&self) -> Option<&RetryPolicy> {
        match self {
            Source::Registry(r) => Some(r.retry_policy()),
            _ => None,
        }
    }

    /// Fetch a manifest (`None`: the one the location names), verified, via
    /// the cache when its digest is known.
    async fn manifest(
        &self,
        digest: Option<&Digest>,
        cache: &BlobCache,
    ) -> Result<(Vec<u8>, Option<Digest>, Option<String>), SourceError> {
        match self {
            Source::Registry(r) => {
                let known = digest.cloned().or_else(|| {
                    r.reference()
                        .digest()
                        .and_then(|d| d.parse::<Digest>().ok())
                });
                if let Some(d) = &known
                    && let Some(bytes) = cache.read_verified(d)?
                {
                    tracing::debug!(digest = %d, "manifest from cache");
                    return Ok((bytes, Some(d.clone()), None));
                }
                let (bytes, d) = r.manifest(digest, MAX_MANIFEST_SIZE).await?;
                self.count(bytes.len());
                cache.keep(&d, &bytes);
                Ok((bytes, Some(d), None))
            }
            Source::Layout(l) => {
                let (d, media_type) = match digest {
                    Some(d) => (d.clone(), None),
                    None => {
                        let e = l.entry()?;
                        (e.digest.clone(), Some(e.media_type.clone()))
                    }
                };
                let bytes = match cache.read_verified(&d)? {
                    Some(b) => b,
                    None => {
                        let b = l.read_small(&d, MAX_MANIFEST_SIZE)?;
                        self.count(b.len());
                        cache.keep(&d, &b);
                        b
                    }
                };
                Ok((bytes, Some(d), media_type))
            }
            Source::Archive(a) => Ok((a.manifest_bytes().to_vec(), None, None)),
            Source::Containerd(c) => {
                let (d, media_type) = match digest {
                    Some(d) => (d.clone(), None),
                    None => {
                        let (d, m, _) = c.target();
                        (d.clone(), Some(m.to_string()))
                    }
                };
                let bytes = match cache.read_verified(&d)? {
                    Some(b) => b,
                    None => {
                        let b = c.store().read_small(&d, MAX_MANIFEST_SIZE).await?;
                        self.count(b.len());
                        cache.keep(&d, &b);
                        b
                    }
                };
                Ok((bytes, Some(d), media_type))
            }
        }
    }

    /// Fetch a config blob, verified, via the cache.
    async fn config(
        &self,
        desc: &Descriptor,
        cache: &BlobCache,
        image: &str,
    ) -> Result<Vec<u8>, SourceError> {
        if let Some(bytes) = cache.read_verified(&desc.digest)? {
            return Ok(bytes);
        }
        let bytes = match self {
            Source::Layout(l) => {
                let b = l.read_small(&desc.digest, MAX_CONFIG_SIZE)?;
                self.count(b.len());
                b
            }
            // Read with the archive's index when it was opened.
            Source::Archive(a) => a.config_bytes().to_vec(),
            Source::Containerd(c) => {
                let b = c.store().read_small(&desc.digest, MAX_CONFIG_SIZE).await?;
                self.count(b.len());
                b
            }
            // Counted as its stream passes.
            Source::Registry(_) => {
                let mut body = self.blob(desc, 0).await?;
                let mut buf = Vec::with_capacity(desc.size as usize);
                while let Some(chunk) = body.stream.next().await {
                    let chunk = chunk.map_err(|source| SourceError::Read {
                        image: image.to_string(),
                        what: format!("config {}", desc.digest),
                        source,
                    });
                    match chunk {
                        Ok(c) => buf.extend_from_slice(&c),
                        // oci-client's own digest check fails at the end; ours names it.
                        Err(e) if is_digest_error(&e) => break,
                        Err(e) => return Err(e),
                    }
                    if buf.len() as u64 > desc.size {
                        break;
                    }
                }
                buf
            }
        };
        if bytes.len() as u64 > desc.size && matches!(self, Source::Registry(_)) {
            return Err(SourceError::LongerThanDescriptor {
                image: image.to_string(),
                what: format!("config {}", desc.digest),
                expected: desc.size,
            });
        }
        if bytes.len() as u64 != desc.size {
            return Err(SourceError::SizeMismatch {
                image: image.to_string(),
                what: format!("config {}", desc.digest),
                expected: desc.size,
                actual: bytes.len() as u64,
            });
        }
        if !desc.digest.matches(&bytes) {
            return Err(SourceError::DigestMismatch {
                image: image.to_string(),
                what: format!("config {}", desc.digest),
                expected: desc.digest.clone(),
                actual: Digest::sha256_of(&bytes),
            });
        }
        cache.keep(&desc.digest, &bytes);
        Ok(bytes)
    }

    /// Start streaming a blob from byte `offset`. The caller verifies it.
    pub async fn blob(&self, desc: &Descriptor, offset: u64) -> Result<BlobStream, SourceError> {
        let b = self.blob_uncounted(desc, offset).await?;
        let label = self.label();
        crate::metrics::global().fetched(&label, 0);
        Ok(BlobStream {
            stream: b
                .stream
                .inspect(move |r| {
                    if let Ok(c) = r {
                        crate::metrics::global().fetched_more(&label, c.len() as u64);
                    }
                })
                .boxed(),
            start: b.start,
        })
    }

    async fn blob_uncounted(
        &self,
        desc: &Descriptor,
        offset: u64,
    ) -> Result<BlobStream, SourceError> {
        use tokio_util::io::ReaderStream;
        const CHUNK: usize = 256 << 10;
        Ok(match self {
            Source::Registry(r) => {
                let b = r.blob(desc, offset).await?;
                BlobStream {
                    stream: b.stream,
                    start: b.start,
                }
            }
            Source::Layout(l) => BlobStream {
                stream: ReaderStream::with_capacity(
                    l.open_blob(&desc.digest, offset).await?,
                    CHUNK,
                )
                .boxed(),
                start: offset,
            },
            Source::Archive(a) => BlobStream {
                stream: ReaderStream::with_capacity(
                    a.open_blob(&desc.digest, offset).await?,
                    CHUNK,
                )
                .boxed(),
                start: offset,
            },
            Source::Containerd(c) => BlobStream {
                stream: c.store().blob_stream(&desc.digest, offset, desc.size),
                start: offset,
            },
        })
    }
}

impl Source {
    /// Bytes `[start, end)` of a blob, unverified (callers check them
    /// against span hashes). A registry that ignores Range requests gets
    /// the whole blob fetched once, verified, into `cache`, and the range
    /// is read from there.
    pub async fn read_range(
        &self,
        desc: &Descriptor,
        start: u64,
        end: u64,
        cache: &BlobCache,
    ) -> Result<Vec<u8>, SourceError> {
        let read_at = |path: PathBuf, base: u64| {
            let what = format!("bytes {start}-{end} of blob {}", desc.digest);
            tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let f = std::fs::File::open(&path)?;
                let mut buf = vec![0u8; (end - start) as usize];
                f.read_exact_at(&mut buf, base + start)?;
                Ok::<_, std::io::Error>(buf)
            })
            .map(move |r| (r, what))
        };
        use futures_util::FutureExt as _;
        let mut from_cache = false;
        let (r, what) = match self {
            Source::Registry(r) => match r.blob_range(desc, start, end).await {
                Ok(b) => {
                    self.count(b.len());
                    return Ok(b);
                }
                Err(RegistryError::RangeIgnored { .. }) => {
                    // Counted as the whole blob arrived; this read is local.
                    self.cache_whole_blob(r, desc, cache).await?;
                    from_cache = true;
                    read_at(cache.blob_path(&desc.digest), 0).await
                }
                Err(e) => return Err(e.into()),
            },
            Source::Layout(l) => read_at(l.blob_path(&desc.digest), 0).await,
            Source::Containerd(c) => {
                let b = c.store().read_range(&desc.digest, start, end).await?;
                self.count(b.len());
                return Ok(b);
            }
            Source::Archive(a) => {
                let (base, size) =
                    a.blob_location(&desc.digest)
                        .ok_or_else(|| ArchiveError::Invalid {
                            file: a.file().to_path_buf(),
                            detail: format!("no member holds blob {}", desc.digest),
                        })?;
                if end > size {
                    return Err(SourceError::SizeMismatch {
                        image: a.file().display().to_string(),
                        what: format!("blob {}", desc.digest),
                        expected: size,
                        actual: end,
                    });
                }
                read_at(a.file().to_path_buf(), base).await
            }
        };
        let b = r
            .expect("file read does not panic")
            .map_err(|source| SourceError::Read {
                image: self.describe(),
                what,
                source,
            })?;
        if !from_cache {
            self.count(b.len());
        }
        Ok(b)
    }

    /// The size of a blob as stored, where that is known without reading
    /// it (layouts and archives; not registries).
    pub fn stored_size(&self, digest: &Digest) -> Option<u64> {
        match self {
            Source::Registry(_) | Source::Containerd(_) => None,
            Source::Layout(l) => std::fs::metadata(l.blob_path(digest)).ok().map(|m| m.len()),
            Source::Archive(a) => a.blob_location(digest).map(|(_, size)| size),
        }
    }

    /// Fetch a whole blob from a registry into the cache, verified against
    /// its digest and size (once: concurrent callers wait, then find it).
    async fn cache_whole_blob(
        &self,
        r: &MirroredRegistry,
        desc: &Descriptor,
        cache: &BlobCache,
    ) -> Result<(), SourceError> {
        let _one = r.whole_blob.lock().await;
        let (c, digest, size) = (cache.clone(), desc.digest.clone(), desc.size);
        let cached = tokio::task::spawn_blocking(move || c.has_verified(&digest, Some(size)))
            .await
            .expect("cache check does not panic")?;
        if cached {
            return Ok(());
        }
        tracing::warn!(layer = %desc.digest, "the registry ignores Range requests; fetching the whole blob into the cache once");
        let what = format!("blob {}", desc.digest);
        let read_err = |source| SourceError::Read {
            image: self.describe(),
            what: what.clone(),
            source,
        };
        let mut body = r.blob(desc, 0).await?.stream;
        let label = self.label();
        crate::metrics::global().fetched(&label, 0);
        let mut writer = cache.begin()?;
        let mut hasher = crate::digest::Hasher::new(desc.digest.algorithm());
        let mut received = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(read_err)?;
            crate::metrics::global().fetched_more(&label, chunk.len() as u64);
            received += chunk.len() as u64;
            if received > desc.size {
                break; // too long: no need to read the rest
            }
            hasher.update(&chunk);
            std::io::Write::write_all(&mut writer, &chunk).map_err(read_err)?;
        }
        if received > desc.size {
            return Err(SourceError::LongerThanDescriptor {
                image: self.describe(),
                what,
                expected: desc.size,
            });
        }
        if received != desc.size {
            return Err(SourceError::SizeMismatch {
                image: self.describe(),
                what,
                expected: desc.size,
                actual: received,
            });
        }
        let actual = hasher.finish();
        if actual != desc.digest {
            return Err(SourceError::DigestMismatch {
                image: self.describe(),
                what,
                expected: desc.digest.clone(),
                actual,
            });
        }
        writer.commit(&desc.digest)?;
        Ok(())
    }

    /// The source as metrics name it: the registry host, or the transport.
    pub fn label(&self) -> String {
        match self {
            Source::Registry(r) => r.reference().resolve_registry().to_string(),
            Source::Layout(_) => "oci".into(),
            Source::Archive(_) => "docker-archive".into(),
            Source::Containerd(_) => "containerd".into(),
        }
    }

    /// One request of `bytes` to this source, for metrics.
    fn count(&self, bytes: usize) {
        crate::metrics::global().fetched(&self.label(), bytes as u64);
    }

    fn describe(&self) -> String {
        match self {
            Source::Registry(r) => r.reference().whole(),
            Source::Layout(l) => format!("oci:{}", l.dir().display()),
            Source::Archive(a) => format!("docker-archive:{}", a.file().display()),
            Source::Containerd(c) => c.describe().to_string(),
        }
    }
}

/// Whether an I/O error is oci-client's end-of-stream digest verdict.
pub(crate) fn is_digest_error(e: &SourceError) -> bool {
    match e {
        SourceError::Read { source, .. } => source
            .get_ref()
            .is_some_and(|inner| inner.is::<oci_client::errors::DigestError>()),
        _ => false,
    }
}
