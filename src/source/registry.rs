//! Images from OCI distribution registries, through `oci-client`.
//!
//! HTTPS with certificate verification is the default. `--ca-cert` adds
//! private roots. Plain HTTP is used only for loopback registries that do not
//! speak TLS, or for any registry with `--insecure` (which also skips
//! certificate checks), as docker treats "insecure registries".
//!
//! Connection errors, timeouts, 5xx and 429 answers are retried with
//! exponential backoff within a bounded number of attempts and total time,
//! then reported naming the registry and what was being fetched.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use oci_client::client::{Certificate, CertificateEncoding};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::auth::{self, AuthError, Credentials};
use super::manifest::{ACCEPTED_MANIFEST_TYPES, Descriptor};
use crate::digest::{Digest, DigestError};

mod connect;
mod push;
pub use push::{OCI_INDEX, Referrer, referrers_tag};

/// Errors talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The manifest, tag, repository or blob does not exist.
    #[error("{what} not found in {registry}/{repository}")]
    NotFound {
        /// Registry host.
        registry: String,
        /// Repository.
        repository: String,
        /// What was asked for.
        what: String,
    },
    /// 401/403.
    #[error("access to {registry}/{repository} denied: {hint}")]
    Denied {
        /// Registry host.
        registry: String,
        /// Repository.
        repository: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// Retries exhausted on transient errors.
    #[error(
        "registry {registry} unreachable while fetching {what}: {detail} (gave up after {attempts} attempts in {secs:.1}s)"
    )]
    Unreachable {
        /// Registry host.
        registry: String,
        /// What was being fetched.
        what: String,
        /// The last error.
        detail: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        secs: f64,
    },
    /// TLS failed (unknown CA, bad certificate, not a TLS server).
    #[error(
        "TLS connection to {registry} failed: {detail}; for a private CA pass --ca-cert FILE, for a plain-HTTP registry --insecure"
    )]
    Tls {
        /// Registry host.
        registry: String,
        /// The TLS error chain.
        detail: String,
    },
    /// A range request was answered with the whole blob.
    #[error("registry {registry} ignored a Range request for blob {digest} (answered 200)")]
    RangeIgnored {
        /// Registry host.
        registry: String,
        /// The blob.
        digest: Digest,
    },
    /// Any other error answer.
    #[error("registry {registry} failed fetching {what}: {detail}")]
    Other {
        /// Registry host.
        registry: String,
        /// What was being fetched.
        what: String,
        /// The error chain.
        detail: String,
    },
    /// A manifest whose content does not match the requested digest.
    #[error("manifest {what} from {registry} hashes to {actual}, not {expected}")]
    ManifestDigest {
        /// Registry host.
        registry: String,
        /// Which manifest.
        what: String,
        /// Requested digest.
        expected: Digest,
        /// Content digest.
        actual: Digest,
    },
    /// A manifest larger than we accept.
    #[error("manifest {what} from {registry} is larger than {limit} bytes")]
    ManifestTooLarge {
        /// Registry host.
        registry: String,
        /// Which manifest.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// The reference carries a digest we cannot use.
    #[error("reference {reference}: {source}")]
    BadDigest {
        /// The reference.
        reference: String,
        /// Why.
        source: DigestError,
    },
    /// `--ca-cert` could not be read.
    #[error("reading CA certificate {path}: {source}")]
    CaCert {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("setting up the HTTP client: {0}")]
    Client(String),
    /// Credentials could not be read.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// How hard to try before giving up on a registry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// First backoff; doubles each retry.
    pub initial_backoff: Duration,
    /// Largest single backoff.
    pub max_backoff: Duration,
    /// No retry starts after this much time in total.
    pub max_total: Duration,
    /// A response that sends nothing for this long is abandoned (and
    /// retried like a dropped connection).
    pub read_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(4),
            max_total: Duration::from_secs(60),
            read_timeout: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `retry` (1-based), or `None` when the
    /// budget is spent.
    pub fn backoff(&self, retry: u32, started: Instant) -> Option<Duration> {
        if retry >= self.attempts {
            return None;
        }
        let pause = self
            .initial_backoff
            .saturating_mul(1u32 << (retry - 1).min(16))
            .min(self.max_backoff);
        (started.elapsed() + pause <= self.max_total).then_some(pause)
    }
}

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Explicit credentials (`--username` + `--password-stdin`).
    pub credentials: Option<Credentials>,
    /// Docker config to read credentials from (`--authfile`); default
    /// `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
    pub auth_file: Option<PathBuf>,
    /// Extra trusted CA certificates (PEM).
    pub ca_certs: Vec<PathBuf>,
    /// Allow plain HTTP and unverified TLS for any registry.
    pub insecure: bool,
    /// Retry budget.
    pub retry: RetryPolicy,
}

/// A registry repository. The HTTP client is set up (and loopback or
/// `--insecure` registries probed) on first use, so a reference whose blobs
/// are all cached never touches the network.
pub struct RegistrySource {
    client: tokio::sync::OnceCell<Client>,
    reference: Reference,
    auth: RegistryAuth,
    has_credentials: bool,
    certs: Vec<Certificate>,
    insecure: bool,
    retry: RetryPolicy,
}

/// A blob body as it streams in.
pub struct BlobBody {
    /// The bytes, from `start` on.
    pub stream: BoxStream<'static, std::io::Result<Bytes>>,
    /// Offset of the first byte of `stream` in the blob (0 when a range
    /// request was answered with the whole blob).
    pub start: u64,
}

enum Failure {
    Transient(String),
    Final(RegistryError),
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn looks_like_tls(chain: &str) -> bool {
    let c = chain.to_ascii_lowercase();
    c.contains("certificate") || c.contains("tls") || c.contains("handshake")
}

impl RegistrySource {
    /// Prepare to talk to the registry of `reference`: read CA certificates
    /// and credentials. Nothing goes over the network until a fetch needs it.
    pub async fn connect(
        reference: Reference,
        opts: &RegistryOptions,
    ) -> Result<RegistrySource, RegistryError> {
        let registry = reference.resolve_registry().to_string();
        let mut certs = Vec::new();
        for path in &opts.ca_certs {
            let data = std::fs::read(path).map_err(|source| RegistryError::CaCert {
                path: path.clone(),
                source,
            })?;
            certs.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let credentials = match &opts.credentials {
            Some(c) => Some(c.clone()),
            None => match auth::docker_config_path(opts.auth_file.as_deref()) {
                Some(path) => auth::lookup(&path, &registry)?,
                None => None,
            },
        };
        let has_credentials = credentials.is_some();
        let auth = match credentials {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        Ok(RegistrySource {
            client: tokio::sync::OnceCell::new(),
            reference,
            auth,
            has_credentials,
            certs,
            insecure: opts.insecure,
            retry: opts.retry.clone(),
        })
    }

    /// The reference this source serves.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// The retry budget.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    fn registry(&self) -> String {
        self.reference.resolve_registry().to_string()
    }

    /// Fetch a manifest: the reference's own (`digest = None`) or one by
    /// digest in the same repository. Returns the bytes and their digest,
    /// checked against the requested digest.
    pub async fn manifest(
        &self,
        digest: Option<&Digest>,
        limit: u64,
    ) -> Result<(Vec<u8>, Digest), RegistryError> {
        let reference = match digest {
            Some(d) => self.reference.clone_with_digest(d.to_string()),
            None => self.reference.clone(),
        };
        let what = match digest {
            Some(d) => format!("manifest {d}"),
            None => match reference.digest() {
                Some(d) => format!("manifest {d}"),
                None => format!("manifest for tag {}", tag_or_digest(&reference)),
            },
        };
        let expected: Option<Digest> = match reference.digest() {
            Some(d) => Some(d.parse().map_err(|source| RegistryError::BadDigest {
                reference: reference.whole(),
                source,
            })?),
            None => None,
        };
        let client = self.client().await?;
        let (bytes, _) = self
            .with_retry(&what, || async {
                client
                    .pull_manifest_raw(&reference, &self.auth, ACCEPTED_MANIFEST_TYPES)
                    .await
            })
            .await?;
        if bytes.len() as u64 > limit {
            return Err(RegistryError::ManifestTooLarge {
                registry: self.registry(),
                what,
                limit,
            });
        }
        let actual = match &expected {
            Some(e) => {
                let mut h = crate::digest::Hasher::new(e.algorithm());
                h.update(&bytes);
                h.finish()
            }
            None => Digest::sha256_of(&bytes),
        };
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(RegistryError::ManifestDigest {
                registry: self.registry(),
                what,
                expected,
                actual,
            });
        }
        Ok((bytes.to_vec(), actual))
    }

    /// The manifest tagged `tag` in this repository (signature
    /// attachments live there), or `None` if the registry has none.
    pub async fn tagged_manifest(
        &self,
        tag: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let reference = Reference::with_tag(
            self.reference.registry().to_string(),
            self.reference.repository().to_string(),
            tag.to_string(),
        );
        let what = format!("manifest for tag {tag}");
        let client = self.client().await?;
        let fetched = self
            .with_retry(&what, || async {
                client
                    .pull_manifest_raw(&reference, &self.auth, ACCEPTED_MANIFEST_TYPES)
                    .await
            })
            .await;
        match fetched {
            Ok((bytes, _)) if bytes.len() as u64 > limit => Err(RegistryError::ManifestTooLarge {
                registry: self.registry(),
                what,
                limit,
            }),
            Ok((bytes, _)) => Ok(Some(bytes.to_vec())),
            Err(RegistryError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Start streaming a blob from byte `offset`. The registry may answer a
    /// range request with the whole blob; `BlobBody::start` says which.
    pub async fn blob(&self, desc: &Descriptor, offset: u64) -> Result<BlobBody, RegistryError> {
        let oci = OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.to_string(),
            size: i64::try_from(desc.size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        let what = format!("blob {}", desc.digest);
        let client = self.client().await?;
        if offset == 0 {
            let s = self
                .with_retry(&what, || async {
                    client.pull_blob_stream(&self.reference, &oci).await
                })
                .await?;
            return Ok(BlobBody {
                stream: s.stream.boxed(),
                start: 0,
            });
        }
        let r = self
            .with_retry(&what, || async {
                client
                    .pull_blob_stream_partial(&self.reference, &oci, offset, None)
                    .await
            })
            .await?;
        Ok(match r {
            oci_client::client::BlobResponse::Full(s) => BlobBody {
                stream: s.stream.boxed(),
                start: 0,
            },
            oci_client::client::BlobResponse::Partial(s) => BlobBody {
                stream: s.stream.boxed(),
                start: offset,
            },
        })
    }

    /// Fetch bytes `[start, end)` of a blob with an HTTP Range request,
    /// retried like any fetch. A registry that ignores Range (answers 200)
    /// is handled by reading through to the range.
    pub async fn blob_range(
        &self,
        desc: &Descriptor,
        start: u64,
        end: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        use futures_util::StreamExt as _;
        let oci = OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.to_string(),
            size: i64::try_from(desc.size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        let what = format!("bytes {start}-{end} of blob {}", desc.digest);
        let client = self.client().await?;
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let r = self
                .with_retry(&what, || async {
                    client
                        .pull_blob_stream_partial(&self.reference, &oci, start, Some(end - start))
                        .await
                })
                .await?;
            let (mut stream, at) = match r {
                oci_client::client::BlobResponse::Full(_) if start > 0 || end < desc.size => {
                    return Err(RegistryError::RangeIgnored {
                        registry: self.registry(),
                        digest: desc.digest.clone(),
                    });
                }
                oci_client::client::BlobResponse::Full(s) => (s.stream, 0u64),
                oci_client::client::BlobResponse::Partial(s) => (s.stream, start),
            };
            let mut pos = at;
            let mut out = Vec::with_capacity((end - start) as usize);
            let mut failed = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(c) => {
                        let c_end = pos + c.len() as u64;
                        let lo = start.max(pos);
                        let hi = end.min(c_end);
                        if lo < hi {
                            out.extend_from_slice(&c[(lo - pos) as usize..(hi - pos) as usize]);
                        }
                        pos = c_end;
                        if pos >= end {
                            break;
                        }
                    }
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
            if out.len() as u64 == end - start {
                return Ok(out);
            }
            let detail =
                failed.unwrap_or_else(|| format!("got {} of {} bytes", out.len(), end - start));
            match self.retry.backoff(attempt, started) {
                Some(pause) => {
                    tracing::info!(what, attempt, "retrying in {pause:?}: {detail}");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                None => {
                    return Err(RegistryError::Unreachable {
                        registry: self.registry(),
                        what,
                        detail,
                        attempts: attempt,
                        secs: started.elapsed().as_secs_f64(),
                    });
                }
            }
        }
    }

    async fn with_retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let detail = match op().await {
                Ok(v) => return Ok(v),
                Err(e) => match self.classify(e, what) {
                    Failure::Final(e) => return Err(e),
                    Failure::Transient(detail) => detail,
                },
            };
            match self.retry.backoff(attempt, started) {
                Some(pause) => {
                    tracing::info!(
                        registry = %self.registry(), what, attempt, "retrying in {pause:?}: {detail}"
                    );
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                None => {
                    return Err(RegistryError::Unreachable {
                        registry: self.registry(),
                        what: what.to_string(),
                        detail,
                        attempts: attempt,
                        secs: started.elapsed().as_secs_f64(),
                    });
                }
            }
        }
    }

    fn classify(&self, e: OciDistributionError, what: &str) -> Failure {
        let registry = self.registry();
        let repository = self.reference.repository().to_string();
        let denied = |has_credentials: bool| RegistryError::Denied {
            registry: registry.clone(),
            repository: repository.clone(),
            hint: if has_credentials {
                "the registry rejected the credentials (check --username/--password-stdin or the docker config)"
            } else {
                "the repository does not exist or needs credentials (--username with --password-stdin, or docker login)"
            },
        };
        let not_found = || RegistryError::NotFound {
            registry: registry.clone(),
            repository: repository.clone(),
            what: what.to_string(),
        };
        let other = |detail: String| RegistryError::Other {
            registry: registry.clone(),
            what: what.to_string(),
            detail,
        };
        match e {
            OciDistributionError::ImageManifestNotFoundError(_) => Failure::Final(not_found()),
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => {
                Failure::Final(denied(self.has_credentials))
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let msg = envelope
                    .errors
                    .iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    Failure::Final(not_found())
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    Failure::Final(denied(self.has_credentials))
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
                {
                    Failure::Transient(format!("429 too many requests: {msg}"))
                } else {
                    Failure::Final(other(msg))
                }
            }
            OciDistributionError::ServerError { code, message, .. } => match code {
                404 => Failure::Final(not_found()),
                401 | 403 => Failure::Final(denied(self.has_credentials)),
                429 | 500..=599 => Failure::Transient(format!("HTTP {code}: {}", message.trim())),
                _ => Failure::Final(other(format!("HTTP {code}: {}", message.trim()))),
            },
            OciDistributionError::RequestError(re) => {
                let chain = error_chain(&re);
                if re.is_connect() && looks_like_tls(&chain) {
                    Failure::Final(RegistryError::Tls {
                        registry,
                        detail: chain,
                    })
                } else if re.is_connect() || re.is_timeout() || re.is_request() || re.is_body() {
                    Failure::Transient(chain)
                } else {
                    Failure::Final(other(chain))
                }
            }
            OciDistributionError::IoError(io) => Failure::Transient(io.to_string()),
            e => Failure::Final(other(error_chain(&e))),
        }
    }
}

fn tag_or_digest(r: &Reference) -> String {
    match (r.tag(), r.digest()) {
        (_, Some(d)) => d.to_string(),
        (Some(t), None) => t.to_string(),
        (None, None) => "latest".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_by_attempts_and_time() {
        let p = RetryPolicy {
            attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(250),
            max_total: Duration::from_secs(10),
            ..RetryPolicy::default()
        };
        let t = Instant::now();
        assert_eq!(p.backoff(1, t), Some(Duration::from_millis(100)));
        assert_eq!(p.backoff(2, t), Some(Duration::from_millis(200)));
        assert_eq!(p.backoff(3, t), Some(Duration::from_millis(250)));
        assert_eq!(p.backoff(4, t), None);
        let tight = RetryPolicy {
            max_total: Duration::from_millis(50),
            ..p
        };
        assert_eq!(tight.backoff(1, t), None);
    }
}
