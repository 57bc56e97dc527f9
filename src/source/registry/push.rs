//! Writing to a registry, through `oci-client`: what publishing an index
//! beside an image needs (`ocidisk index push`). A registry without the
//! referrers API (distribution 2.8 answers 404) lists referrers only in the
//! image index tagged `<alg>-<hex>` (the "referrers tag schema"), which
//! [`RegistrySource::add_to_referrers_tag`] keeps; `read.rs` reads both.

use oci_client::RegistryOperation;

use super::{RegistryError, RegistrySource};
use crate::digest::Digest;

/// One manifest that refers to another (an entry of a referrers list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
    /// Its artifactType (or, per the spec, its config's media type).
    pub artifact_type: Option<String>,
}

/// Media type of an OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The referrers-tag-schema tag of `digest`: `<alg>-<hex>`.
pub fn referrers_tag(digest: &Digest) -> String {
    digest.to_string().replace(':', "-")
}

/// The entries of a referrers list (an image index), unfiltered.
pub(super) fn parse_referrers(bytes: &[u8]) -> Result<Vec<Referrer>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let list = v
        .get("manifests")
        .and_then(|m| m.as_array())
        .ok_or("no manifests list")?;
    list.iter()
        .map(|m| {
            let digest = m
                .get("digest")
                .and_then(|d| d.as_str())
                .ok_or("an entry without a digest")?
                .parse::<Digest>()
                .map_err(|e| e.to_string())?;
            Ok(Referrer {
                digest,
                size: m.get("size").and_then(|s| s.as_u64()).unwrap_or(0),
                media_type: m
                    .get("mediaType")
                    .and_then(|s| s.as_str())
                    .unwrap_or_default()
                    .to_string(),
                artifact_type: m
                    .get("artifactType")
                    .and_then(|s| s.as_str())
                    .map(str::to_string),
            })
        })
        .collect()
}

impl RegistrySource {
    /// Upload a blob unless the repository has it already.
    pub async fn push_blob(&self, digest: &Digest, data: Vec<u8>) -> Result<(), RegistryError> {
        let client = self.client().await?;
        let what = format!("uploading blob {digest}");
        client
            .auth(&self.reference, &self.auth, RegistryOperation::Push)
            .await
            .map_err(|e| self.final_error(e, &what))?;
        let exists = self
            .with_retry(&what, || async {
                client
                    .blob_exists(&self.reference, &digest.to_string())
                    .await
            })
            .await?;
        if exists {
            return Ok(());
        }
        let data = bytes::Bytes::from(data);
        self.with_retry(&what, || async {
            client
                .push_blob(&self.reference, data.clone(), &digest.to_string())
                .await
        })
        .await?;
        Ok(())
    }

    /// Put a manifest (or index) under `tag`, or under its digest when
    /// `tag` is `None`; returns its digest.
    pub async fn push_manifest(
        &self,
        tag: Option<&str>,
        media_type: &str,
        body: Vec<u8>,
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::sha256_of(&body);
        let reference = match tag {
            Some(t) => oci_client::Reference::with_tag(
                self.reference.registry().to_string(),
                self.reference.repository().to_string(),
                t.to_string(),
            ),
            None => self.reference.clone_with_digest(digest.to_string()),
        };
        let client = self.client().await?;
        let what = format!("putting manifest {digest}");
        client
            .auth(&reference, &self.auth, RegistryOperation::Push)
            .await
            .map_err(|e| self.final_error(e, &what))?;
        let content_type = reqwest::header::HeaderValue::from_str(media_type).map_err(|e| {
            RegistryError::Other {
                registry: self.registry(),
                what: what.clone(),
                detail: e.to_string(),
            }
        })?;
        let body = bytes::Bytes::from(body);
        self.with_retry(&what, || async {
            client
                .push_manifest_raw(&reference, body.clone(), content_type.clone())
                .await
        })
        .await?;
        Ok(digest)
    }

    /// Add `entry` (a descriptor, as JSON) to the referrers tag of
    /// `subject`, keeping what is there; a registry without the referrers
    /// API lists referrers only through that tag.
    pub async fn add_to_referrers_tag(
        &self,
        subject: &Digest,
        entry: serde_json::Value,
    ) -> Result<(), RegistryError> {
        let tag = referrers_tag(subject);
        let existing = self.tagged_manifest(&tag, 4 << 20).await?;
        // What the tag lists now (a tag holding something else is replaced).
        let existing: Option<serde_json::Value> = existing
            .as_deref()
            .and_then(|b| serde_json::from_slice(b).ok());
        let mut manifests = match existing.as_ref().and_then(|v| v.get("manifests")) {
            Some(serde_json::Value::Array(m)) => m.clone(),
            _ => Vec::new(),
        };
        if manifests
            .iter()
            .any(|m| m.get("digest") == entry.get("digest"))
        {
            return Ok(());
        }
        manifests.push(entry);
        let mut index = match existing {
            Some(v @ serde_json::Value::Object(_)) => v,
            _ => serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX}),
        };
        index["manifests"] = serde_json::Value::Array(manifests);
        let body = serde_json::to_vec(&index).map_err(|e| RegistryError::Other {
            registry: self.registry(),
            what: format!("referrers tag {tag}"),
            detail: e.to_string(),
        })?;
        self.push_manifest(Some(&tag), OCI_INDEX, body).await?;
        Ok(())
    }

    fn final_error(
        &self,
        e: oci_client::errors::OciDistributionError,
        what: &str,
    ) -> RegistryError {
        match self.classify(e, what) {
            super::Failure::Final(e) => e,
            super::Failure::Transient(detail) => RegistryError::Other {
                registry: self.registry(),
                what: what.to_string(),
                detail,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referrers_lists_parse_and_tags_follow_the_schema() {
        let d = Digest::sha256_of(b"x");
        assert_eq!(referrers_tag(&d), format!("sha256-{}", d.hex()));
        let list = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d.to_string(),
             "size": 7, "artifactType": "application/vnd.amazon.soci.index.v1+json"},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d.to_string(), "size": 9}
        ]});
        let r = parse_referrers(&serde_json::to_vec(&list).unwrap()).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0].artifact_type.as_deref(),
            Some("application/vnd.amazon.soci.index.v1+json")
        );
        assert_eq!((r[1].size, r[1].artifact_type.clone()), (9, None));
        assert!(parse_referrers(b"{\"manifests\": [{\"size\": 1}]}").is_err());
        assert!(parse_referrers(b"[]").is_err());
    }
}
