//! Images from OCI distribution registries: reads over our own HTTP client
//! (`read.rs`, authorized by `authorize.rs`), pushes through `oci-client`.
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
use futures_util::stream::BoxStream;
use oci_client::client::{Certificate, CertificateEncoding};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::auth::{self, AuthError, Credentials};
use crate::digest::{Digest, DigestError};

mod authorize;
mod connect;
mod push;
mod read;
use push::parse_referrers;
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
    /// How the registry is reached (probed on first use); every read.
    conn: tokio::sync::OnceCell<connect::Conn>,
    /// The `oci-client` client, built only to push.
    client: tokio::sync::OnceCell<Client>,
    reference: Reference,
    /// Credentials as `oci-client` takes them (pushes).
    auth: RegistryAuth,
    /// The challenge, credentials and tokens of reads.
    authz: authorize::Authorizer,
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
        let auth = match &credentials {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        Ok(RegistrySource {
            conn: tokio::sync::OnceCell::new(),
            client: tokio::sync::OnceCell::new(),
            reference,
            auth,
            authz: authorize::Authorizer::new(credentials),
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

    /// An `oci-client` call, retried on transient failures.
    async fn with_retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        self.retrying(what, || {
            let call = op();
            async move { call.await.map_err(|e| self.classify(e, what)) }
        })
        .await
    }

    /// `op` until it succeeds, fails for good, or the retry budget is spent.
    async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let detail = match op().await {
                Ok(v) => return Ok(v),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Transient(detail)) => detail,
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

    /// Access denied, with what to do about it.
    fn denied(&self) -> RegistryError {
        RegistryError::Denied {
            registry: self.registry(),
            repository: self.reference.repository().to_string(),
            hint: if self.authz.has_credentials() {
                "the registry rejected the credentials (check --username/--password-stdin or the docker config)"
            } else {
                "the repository does not exist or needs credentials (--username with --password-stdin, or docker login)"
            },
        }
    }

    /// A request that got no answer (or a broken one).
    fn request_failure(&self, re: &reqwest::Error, what: &str) -> Failure {
        let chain = error_chain(re);
        if re.is_connect() && looks_like_tls(&chain) {
            Failure::Final(RegistryError::Tls {
                registry: self.registry(),
                detail: chain,
            })
        } else if re.is_connect() || re.is_timeout() || re.is_request() || re.is_body() {
            Failure::Transient(chain)
        } else {
            Failure::Final(RegistryError::Other {
                registry: self.registry(),
                what: what.to_string(),
                detail: chain,
            })
        }
    }

    fn classify(&self, e: OciDistributionError, what: &str) -> Failure {
        let registry = self.registry();
        let repository = self.reference.repository().to_string();
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
            | OciDistributionError::AuthenticationFailure(_) => Failure::Final(self.denied()),
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
                    Failure::Final(self.denied())
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
                401 | 403 => Failure::Final(self.denied()),
                429 | 500..=599 => Failure::Transient(format!("HTTP {code}: {}", message.trim())),
                _ => Failure::Final(other(format!("HTTP {code}: {}", message.trim()))),
            },
            OciDistributionError::RequestError(re) => self.request_failure(&re, what),
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
