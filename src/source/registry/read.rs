//! Reading from a registry: manifests, blobs (whole, from an offset, or a
//! byte range) and referrers, as plain GETs of the distribution API over
//! one HTTP client. Each request is authorized as the registry's challenge
//! asks ([`super::authorize`]), retried on transient failures, and an error
//! answer is turned into a [`RegistryError`] naming what was asked for.
//!
//! One request per fetch: an open registry (a local mirror, a pull-through
//! cache) is never pinged first.

use futures_util::StreamExt;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, RANGE, WWW_AUTHENTICATE};

use super::authorize::Refusal;
use super::{
    BlobBody, Failure, OCI_INDEX, Referrer, RegistryError, RegistrySource, parse_referrers,
    referrers_tag, tag_or_digest,
};
use crate::digest::Digest;
use crate::source::manifest::{ACCEPTED_MANIFEST_TYPES, Descriptor};

/// How much of an error answer's body is read for its message.
const ERROR_BODY_LIMIT: usize = 64 << 10;

/// The codes and messages of a distribution-spec error body
/// (`{"errors": [{"code": .., "message": ..}]}`).
fn error_envelope(body: &[u8]) -> (Vec<String>, String) {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(e) => (
            e.errors
                .iter()
                .map(|e| e.code.to_ascii_uppercase())
                .collect(),
            e.errors
                .iter()
                .map(|e| e.message.as_str())
                .filter(|m| !m.is_empty())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            (Vec::new(), text.trim().to_string())
        }
    }
}

/// What an error answer means: its status and body's codes.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    NotFound,
    Denied,
    Transient(String),
    Other(String),
}

fn judge(status: u16, body: &[u8]) -> Verdict {
    let (codes, msg) = error_envelope(body);
    let has = |names: &[&str]| codes.iter().any(|c| names.contains(&c.as_str()));
    let detail = if msg.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {msg}")
    };
    if status == 404
        || has(&[
            "MANIFEST_UNKNOWN",
            "NAME_UNKNOWN",
            "BLOB_UNKNOWN",
            "NOT_FOUND",
        ])
    {
        Verdict::NotFound
    } else if matches!(status, 401 | 403) || has(&["UNAUTHORIZED", "DENIED"]) {
        Verdict::Denied
    } else if matches!(status, 408 | 429 | 500..=599) || has(&["TOOMANYREQUESTS"]) {
        Verdict::Transient(detail)
    } else {
        Verdict::Other(detail)
    }
}

/// Read a response body, failing once it passes `limit` bytes.
async fn body_within(resp: reqwest::Response, limit: u64) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| super::error_chain(&e))?;
        if (out.len() + chunk.len()) as u64 > limit {
            return Ok(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Some(out))
}

impl RegistrySource {
    fn scope(&self) -> String {
        format!("repository:{}:pull", self.reference.repository())
    }

    /// One GET of `/v2/<repository>/<tail>`, authorized; a 2xx answer or
    /// the failure it amounts to.
    async fn get_once(
        &self,
        tail: &str,
        headers: &HeaderMap,
        what: &str,
    ) -> Result<reqwest::Response, Failure> {
        let url = |plain: bool| {
            format!(
                "{}://{}/v2/{}/{tail}",
                if plain { "http" } else { "https" },
                self.registry(),
                self.reference.repository()
            )
        };
        // The first request to a loopback registry is its probe too.
        let first =
            |http: &reqwest::Client, plain: bool| http.get(url(plain)).headers(headers.clone());
        let (conn, mut answered) = self.conn_for(&first).await.map_err(Failure::Final)?;
        let url = url(conn.plain_http);
        let scope = self.scope();
        let mut challenged = false;
        let mut http = conn.registry_client();
        let mut on_tls = false;
        loop {
            let (resp, sent) = match answered.take() {
                // Sent bare, as any request before a challenge.
                Some(resp) => (resp, None),
                None => {
                    let mut req = http.get(&url).headers(headers.clone());
                    let sent = self
                        .authz
                        .header(conn, &scope)
                        .await
                        .map_err(|r| self.refusal(r, what))?;
                    if let Some(h) = &sent {
                        req = req.header(AUTHORIZATION, h.clone());
                    }
                    let resp = req
                        .send()
                        .await
                        .map_err(|e| self.request_failure(&e, what))?;
                    (resp, sent)
                }
            };
            if !on_tls && conn.redirected_to_tls(&resp) {
                // Sent on to HTTPS storage: ask again with the client that
                // follows there (it has the TLS roots).
                http = conn.tls().await.map_err(Failure::Final)?;
                on_tls = true;
                continue;
            }
            let status = resp.status();
            if status == reqwest::StatusCode::UNAUTHORIZED
                && !challenged
                && self
                    .authz
                    .refused(resp.headers().get(WWW_AUTHENTICATE), &scope, sent.as_ref())
                    .await
            {
                challenged = true;
                continue;
            }
            if status.is_success() {
                return Ok(resp);
            }
            return Err(self.answer_failure(resp, what).await);
        }
    }

    /// An error answer as a failure.
    async fn answer_failure(&self, resp: reqwest::Response, what: &str) -> Failure {
        let status = resp.status().as_u16();
        let body = body_within(resp, ERROR_BODY_LIMIT as u64)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        match judge(status, &body) {
            Verdict::NotFound => Failure::Final(RegistryError::NotFound {
                registry: self.registry(),
                repository: self.reference.repository().to_string(),
                what: what.to_string(),
            }),
            Verdict::Denied => Failure::Final(self.denied()),
            Verdict::Transient(detail) => Failure::Transient(detail),
            Verdict::Other(detail) => self.other(what, detail),
        }
    }

    /// A final failure the registry's answer explains only by `detail`.
    fn other(&self, what: &str, detail: String) -> Failure {
        Failure::Final(RegistryError::Other {
            registry: self.registry(),
            what: what.to_string(),
            detail,
        })
    }

    fn refusal(&self, r: Refusal, what: &str) -> Failure {
        match r {
            Refusal::Denied => Failure::Final(self.denied()),
            Refusal::Transient(detail) => Failure::Transient(detail),
            Refusal::Broken(detail) => self.other(what, detail),
        }
    }

    /// The body of `/v2/<repository>/<tail>` (at most `limit` bytes), or
    /// `None` when the registry does not have it.
    async fn get_small(
        &self,
        tail: &str,
        accept: &str,
        limit: u64,
        what: &str,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_str(accept).map_err(|e| RegistryError::Client(e.to_string()))?,
        );
        let fetched = self
            .retrying(what, || async {
                let resp = self.get_once(tail, &headers, what).await?;
                match body_within(resp, limit).await {
                    Ok(Some(b)) => Ok(b),
                    Ok(None) => Err(Failure::Final(RegistryError::ManifestTooLarge {
                        registry: self.registry(),
                        what: what.to_string(),
                        limit,
                    })),
                    Err(detail) => Err(Failure::Transient(detail)),
                }
            })
            .await;
        match fetched {
            Ok(b) => Ok(Some(b)),
            Err(RegistryError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Fetch a manifest: the reference's own (`digest = None`) or one by
    /// digest in the same repository. Returns the bytes and their digest,
    /// checked against the requested digest.
    pub async fn manifest(
        &self,
        digest: Option<&Digest>,
        limit: u64,
    ) -> Result<(Vec<u8>, Digest), RegistryError> {
        let expected: Option<Digest> = match (digest, self.reference.digest()) {
            (Some(d), _) => Some(d.clone()),
            (None, Some(d)) => Some(d.parse().map_err(|source| RegistryError::BadDigest {
                reference: self.reference.whole(),
                source,
            })?),
            (None, None) => None,
        };
        let (what, tail) = match &expected {
            Some(d) => (format!("manifest {d}"), format!("manifests/{d}")),
            None => {
                let tag = tag_or_digest(&self.reference);
                (
                    format!("manifest for tag {tag}"),
                    format!("manifests/{tag}"),
                )
            }
        };
        let accept = ACCEPTED_MANIFEST_TYPES.join(", ");
        let bytes = self
            .get_small(&tail, &accept, limit, &what)
            .await?
            .ok_or_else(|| RegistryError::NotFound {
                registry: self.registry(),
                repository: self.reference.repository().to_string(),
                what: what.clone(),
            })?;
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
        Ok((bytes, actual))
    }

    /// The manifest tagged `tag` in this repository (signature
    /// attachments live there), or `None` if the registry has none.
    pub async fn tagged_manifest(
        &self,
        tag: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let accept = ACCEPTED_MANIFEST_TYPES.join(", ");
        self.get_small(
            &format!("manifests/{tag}"),
            &accept,
            limit,
            &format!("manifest for tag {tag}"),
        )
        .await
    }

    /// The manifests that name `subject` as their subject and have
    /// artifactType `artifact_type`: from the referrers API, or from the
    /// referrers tag when the API answers 404. Both are asked at once, so
    /// a registry without the API costs no extra round trip.
    pub async fn referrers(
        &self,
        subject: &Digest,
        artifact_type: &str,
    ) -> Result<Vec<Referrer>, RegistryError> {
        let what = format!("referrers of {subject}");
        let tail = format!(
            "referrers/{subject}?artifactType={}",
            artifact_type.replace('+', "%2B")
        );
        let tag = referrers_tag(subject);
        let (api, tagged) = tokio::join!(
            self.get_small(&tail, OCI_INDEX, 4 << 20, &what),
            self.tagged_manifest(&tag, 4 << 20)
        );
        let all = match api? {
            Some(bytes) => parse_referrers(&bytes).map_err(|detail| RegistryError::Other {
                registry: self.registry(),
                what,
                detail,
            })?,
            // The tag schema: what the tag holds, if it is a list at all.
            None => match tagged? {
                Some(bytes) => parse_referrers(&bytes).unwrap_or_else(|detail| {
                    tracing::debug!(%subject, "referrers tag is not a list: {detail}");
                    Vec::new()
                }),
                None => Vec::new(),
            },
        };
        Ok(all
            .into_iter()
            .filter(|r| r.artifact_type.as_deref() == Some(artifact_type))
            .collect())
    }

    /// Start streaming a blob from byte `offset`. The registry may answer a
    /// range request with the whole blob; `BlobBody::start` says which.
    pub async fn blob(&self, desc: &Descriptor, offset: u64) -> Result<BlobBody, RegistryError> {
        let what = format!("blob {}", desc.digest);
        let mut headers = HeaderMap::new();
        if offset > 0 {
            headers.insert(
                RANGE,
                HeaderValue::from_str(&format!("bytes={offset}-"))
                    .map_err(|e| RegistryError::Client(e.to_string()))?,
            );
        }
        let tail = format!("blobs/{}", desc.digest);
        let resp = self
            .retrying(&what, || self.get_once(&tail, &headers, &what))
            .await?;
        let start = if resp.status() == reqwest::StatusCode::PARTIAL_CONTENT {
            offset
        } else {
            0
        };
        Ok(BlobBody {
            stream: resp
                .bytes_stream()
                .map(|r| r.map_err(std::io::Error::other))
                .boxed(),
            start,
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
        if end <= start {
            return Ok(Vec::new());
        }
        let what = format!("bytes {start}-{end} of blob {}", desc.digest);
        let mut headers = HeaderMap::new();
        headers.insert(
            RANGE,
            HeaderValue::from_str(&format!("bytes={start}-{}", end - 1))
                .map_err(|e| RegistryError::Client(e.to_string()))?,
        );
        let tail = format!("blobs/{}", desc.digest);
        self.retrying(&what, || async {
            let resp = self.get_once(&tail, &headers, &what).await?;
            let at = if resp.status() == reqwest::StatusCode::PARTIAL_CONTENT {
                start
            } else if start > 0 || end < desc.size {
                return Err(Failure::Final(RegistryError::RangeIgnored {
                    registry: self.registry(),
                    digest: desc.digest.clone(),
                }));
            } else {
                0
            };
            let mut stream = resp.bytes_stream();
            let mut pos = at;
            let mut out = Vec::with_capacity((end - start) as usize);
            while pos < end
                && let Some(chunk) = stream.next().await
            {
                let c = chunk.map_err(|e| Failure::Transient(super::error_chain(&e)))?;
                let c_end = pos + c.len() as u64;
                let (lo, hi) = (start.max(pos), end.min(c_end));
                if lo < hi {
                    out.extend_from_slice(&c[(lo - pos) as usize..(hi - pos) as usize]);
                }
                pos = c_end;
            }
            if out.len() as u64 == end - start {
                Ok(out)
            } else {
                Err(Failure::Transient(format!(
                    "got {} of {} bytes",
                    out.len(),
                    end - start
                )))
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_are_judged_by_status_and_code() {
        let env = |code: &str, msg: &str| {
            format!(r#"{{"errors":[{{"code":"{code}","message":"{msg}","detail":{{}}}}]}}"#)
        };
        assert_eq!(
            judge(404, env("MANIFEST_UNKNOWN", "manifest unknown").as_bytes()),
            Verdict::NotFound
        );
        // A registry that says "unknown" with another status still means it.
        assert_eq!(
            judge(400, env("name_unknown", "").as_bytes()),
            Verdict::NotFound
        );
        assert_eq!(judge(401, b""), Verdict::Denied);
        assert_eq!(judge(400, env("DENIED", "no").as_bytes()), Verdict::Denied);
        assert_eq!(
            judge(500, env("UNKNOWN", "storage driver error").as_bytes()),
            Verdict::Transient("HTTP 500: storage driver error".into())
        );
        assert_eq!(
            judge(502, b"<html>Bad Gateway</html>\n"),
            Verdict::Transient("HTTP 502: <html>Bad Gateway</html>".into())
        );
        assert_eq!(
            judge(400, env("TOOMANYREQUESTS", "slow down").as_bytes()),
            Verdict::Transient("HTTP 400: slow down".into())
        );
        assert_eq!(judge(418, b""), Verdict::Other("HTTP 418".into()));
    }
}
