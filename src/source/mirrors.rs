//! A registry image reached through the places registries.conf lists for
//! it: mirrors in order, then the registry's own location (and, for a
//! short name in permissive mode, the same for each search registry).
//! Every fetch (manifest, blob, range) goes to the first place that
//! answers it; bytes are verified by digest whatever their origin, so a
//! mirror can make a pull fail but never change it.
//!
//! A place that is unreachable is skipped for [`DOWN_FOR`] afterwards, so
//! the lazy disk's many range reads do not each wait out the retries of a
//! dead mirror.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oci_client::Reference;

use super::manifest::Descriptor;
use super::registries_conf::{RegistriesConf, RegistriesConfError};
use super::registry::{BlobBody, RegistryError, RegistryOptions, RegistrySource, RetryPolicy};

/// How long an unreachable place is skipped.
pub const DOWN_FOR: Duration = Duration::from_secs(30);

/// One registry repository behind its mirrors.
pub struct MirroredRegistry {
    reference: Reference,
    places: Vec<Place>,
    retry: RetryPolicy,
    /// Held while a whole blob is fetched because the registry ignored a
    /// Range request: concurrent readers wait for that one fetch.
    pub(crate) whole_blob: tokio::sync::Mutex<()>,
}

struct Place {
    source: RegistrySource,
    mirror: bool,
    down_until: Mutex<Option<Instant>>,
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum MirrorsError {
    /// registries.conf refuses the reference.
    #[error(transparent)]
    Conf(#[from] RegistriesConfError),
    /// A place could not be prepared.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A rewritten reference does not parse.
    #[error(
        "registries.conf rewrites {reference} to {rewritten:?}, which is not a valid reference: {detail}"
    )]
    BadRewrite {
        /// The reference.
        reference: String,
        /// What it became.
        rewritten: String,
        /// Why it is invalid.
        detail: String,
    },
}

impl MirroredRegistry {
    /// Prepare the places of `reference`, then of each of `more` (a short
    /// name's other candidates), in order.
    pub async fn connect(
        reference: Reference,
        more: &[Reference],
        opts: &RegistryOptions,
        conf: Option<&RegistriesConf>,
    ) -> Result<MirroredRegistry, MirrorsError> {
        let mut places = Vec::new();
        for r in std::iter::once(&reference).chain(more) {
            let endpoints = match conf {
                Some(c) => c.pull_sources(&r.whole())?,
                None => Vec::new(),
            };
            if endpoints.is_empty() {
                places.push(Place::new(
                    RegistrySource::connect(r.clone(), opts).await?,
                    false,
                ));
                continue;
            }
            for e in endpoints {
                let rewritten: Reference =
                    super::reference::parse(&e.reference).map_err(|err| {
                        MirrorsError::BadRewrite {
                            reference: r.whole(),
                            rewritten: e.reference.clone(),
                            detail: err.to_string(),
                        }
                    })?;
                let mut o = opts.clone();
                o.insecure |= e.insecure;
                places.push(Place::new(
                    RegistrySource::connect(rewritten, &o).await?,
                    e.mirror,
                ));
            }
        }
        Ok(MirroredRegistry {
            reference,
            places,
            retry: opts.retry.clone(),
            whole_blob: tokio::sync::Mutex::new(()),
        })
    }

    /// The reference as the user named it.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// The retry budget.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// `f` at each place in order until one succeeds; the last error
    /// otherwise. A range ignored is an answer, not a failure.
    async fn first<'a, T, Fut>(
        &'a self,
        what: &str,
        f: impl Fn(&'a RegistrySource) -> Fut,
    ) -> Result<T, RegistryError>
    where
        Fut: Future<Output = Result<T, RegistryError>> + 'a,
    {
        let now = Instant::now();
        let live: Vec<&Place> = self.places.iter().filter(|p| !p.is_down(now)).collect();
        // All down: try them all rather than fail without asking.
        let order: Vec<&Place> = if live.is_empty() {
            self.places.iter().collect()
        } else {
            live
        };
        let mut last = None;
        for (i, p) in order.iter().enumerate() {
            match f(&p.source).await {
                Ok(v) => return Ok(v),
                Err(e @ RegistryError::RangeIgnored { .. }) => return Err(e),
                Err(e) => {
                    if i + 1 < order.len() {
                        tracing::warn!(
                            place = %p.source.reference().whole(),
                            mirror = p.mirror,
                            "{what}: {e}; trying the next place"
                        );
                        if matches!(
                            e,
                            RegistryError::Unreachable { .. } | RegistryError::Tls { .. }
                        ) {
                            p.mark_down();
                        }
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::Client("no place to pull from".into())))
    }

    /// The registry itself (not a mirror): where pushes go.
    pub fn primary(&self) -> Option<&RegistrySource> {
        self.places.iter().find(|p| !p.mirror).map(|p| &p.source)
    }

    /// See [`RegistrySource::referrers`]: the first place that answers.
    pub async fn referrers(
        &self,
        subject: &super::Digest,
        artifact_type: &str,
    ) -> Result<Vec<super::registry::Referrer>, RegistryError> {
        self.first("referrers", |s| s.referrers(subject, artifact_type))
            .await
    }

    /// See [`RegistrySource::manifest`].
    pub async fn manifest(
        &self,
        digest: Option<&super::Digest>,
        limit: u64,
    ) -> Result<(Vec<u8>, super::Digest), RegistryError> {
        self.first("manifest", |s| s.manifest(digest, limit)).await
    }

    /// See [`RegistrySource::tagged_manifest`]: the first place that has
    /// the tag.
    pub async fn tagged_manifest(
        &self,
        tag: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let mut last = Ok(None);
        for p in &self.places {
            match p.source.tagged_manifest(tag, limit).await {
                Ok(Some(m)) => return Ok(Some(m)),
                other => last = other,
            }
        }
        last
    }

    /// See [`RegistrySource::blob`].
    pub async fn blob(&self, desc: &Descriptor, offset: u64) -> Result<BlobBody, RegistryError> {
        self.first("blob", |s| s.blob(desc, offset)).await
    }

    /// See [`RegistrySource::blob_range`].
    pub async fn blob_range(
        &self,
        desc: &Descriptor,
        start: u64,
        end: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        self.first("blob range", |s| s.blob_range(desc, start, end))
            .await
    }
}

impl Place {
    fn new(source: RegistrySource, mirror: bool) -> Place {
        Place {
            source,
            mirror,
            down_until: Mutex::new(None),
        }
    }

    fn is_down(&self, now: Instant) -> bool {
        self.down_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t > now)
    }

    fn mark_down(&self) {
        *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + DOWN_FOR);
    }
}
