//! Sigstore (cosign) signatures with a public key: an OCI manifest tagged
//! `sha256-<hex>.sig` beside the image, whose layers are simple-signing
//! payloads (`application/vnd.dev.cosign.simplesigning.v1+json`) with the
//! ECDSA signature of the payload in the `dev.cosignproject.cosign/signature`
//! annotation (base64 of ASN.1 DER). The payload is verified with the key
//! (P-256, as `cosign generate-key-pair` makes) before it is parsed.

use std::collections::BTreeMap;

use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::DecodePublicKey as _;
use serde::Deserialize;

use super::simple_signing::Refusal;

/// Media type of a cosign signature payload layer.
pub const PAYLOAD_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding a layer's signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The claim type cosign payloads carry.
pub const CLAIM_TYPE: &str = "cosign container image signature";
/// At most this many signature layers are read.
pub const MAX_LAYERS: usize = 64;

/// The attachment tag for a manifest digest: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &crate::digest::Digest) -> String {
    format!("{}-{}.sig", digest.algorithm().name(), digest.hex())
}

/// A public key a `sigstoreSigned` requirement accepts.
#[derive(Clone)]
pub struct PublicKey(p256::ecdsa::VerifyingKey);

impl PublicKey {
    /// Parse a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) of an ECDSA P-256
    /// key.
    pub fn parse(pem: &[u8]) -> Result<PublicKey, String> {
        let text = std::str::from_utf8(pem).map_err(|_| "not PEM text".to_string())?;
        p256::ecdsa::VerifyingKey::from_public_key_pem(text.trim())
            .map(PublicKey)
            .map_err(|e| {
                format!("not an ECDSA P-256 public key in PEM form ({e}); other key types are not supported yet")
            })
    }
}

/// One signature layer of an attachment manifest: the payload blob to
/// fetch and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLayer {
    /// The payload blob's digest.
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// The base64 signature.
    pub signature: String,
}

#[derive(Deserialize)]
struct AttachmentManifest {
    #[serde(default)]
    layers: Vec<AttachmentLayer>,
}

#[derive(Deserialize)]
struct AttachmentLayer {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// The signature layers of an attachment manifest (others are skipped).
pub fn signature_layers(manifest: &[u8]) -> Result<Vec<SignatureLayer>, String> {
    let m: AttachmentManifest =
        serde_json::from_slice(manifest).map_err(|e| format!("attachment manifest: {e}"))?;
    Ok(m.layers
        .into_iter()
        .filter(|l| l.media_type == PAYLOAD_TYPE)
        .filter_map(|l| {
            let sig = l.annotations.get(SIGNATURE_ANNOTATION)?.clone();
            Some(SignatureLayer {
                digest: l.digest,
                size: l.size,
                signature: sig,
            })
        })
        .take(MAX_LAYERS)
        .collect())
}

/// Verify `payload` against the base64 `signature` with one of `keys`;
/// the payload, if one verifies.
pub fn verify<'p>(
    payload: &'p [u8],
    signature: &str,
    keys: &[PublicKey],
) -> Result<&'p [u8], Refusal> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|e| Refusal::Malformed(format!("signature is not base64: {e}")))?;
    let sig = p256::ecdsa::Signature::from_der(&der)
        .map_err(|e| Refusal::Malformed(format!("not an ECDSA signature: {e}")))?;
    if keys.iter().any(|k| k.0.verify(payload, &sig).is_ok()) {
        Ok(payload)
    } else {
        Err(Refusal::UnknownKey(
            "(no accepted sigstore key verifies it)".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::simple_signing::parse_claim;

    // A real cosign signature and key from containers/image's test data
    // (signature/fixtures/dir-img-cosign-valid and cosign.pub, Apache-2.0):
    // made by /usr/bin/cosign for 192.168.64.2:5000/cosign-signed-single-sample.
    const COSIGN_PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEFNLqFhf4fiN6o/glAuYnq2jYUeL0
vRuLu/z39pmbVwS9ff5AYnlwaP9sxREajdLY9ynM6G1sy6AAmb7Z63TsLg==
-----END PUBLIC KEY-----
";
    const PAYLOAD_B64: &str = "eyJjcml0aWNhbCI6eyJpZGVudGl0eSI6eyJkb2NrZXItcmVmZXJlbmNlIjoiMTkyLjE2OC42NC4yOjUwMDAvY29zaWduLXNpZ25lZC1zaW5nbGUtc2FtcGxlIn0sImltYWdlIjp7ImRvY2tlci1tYW5pZmVzdC1kaWdlc3QiOiJzaGEyNTY6NjM0YThmMzViNWYxNmRjZjRhYWEwODIyYWRjMGIxOTY0YmI3ODZmY2ExMmY2ODMxZGU4ZGRjNDVlNTk4NmEwMCJ9LCJ0eXBlIjoiY29zaWduIGNvbnRhaW5lciBpbWFnZSBzaWduYXR1cmUifSwib3B0aW9uYWwiOm51bGx9";
    const SIGNATURE: &str = "MEYCIQDmtamqYPjMg81nqeBhptrPls44aA/r7PwLmspINJY4MwIhANKRpqe2E9UCBtGFdPoz/8jAbaQm4uP4h+IpwKTE6ClR";
    // containers/image's cosign2.pub: another P-256 key.
    const OTHER_PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEwOkOF9xpfG8ghueIhnZ66ooujwt1
+ReV3HupgKnGFYnEh3Hh1YTg5L6kN1Yakkt5WltRoav8/R3hpCtUO3Rldw==
-----END PUBLIC KEY-----
";

    #[test]
    fn a_real_cosign_signature_verifies_and_tampering_does_not() {
        let payload = base64::engine::general_purpose::STANDARD
            .decode(PAYLOAD_B64)
            .unwrap();
        let key = PublicKey::parse(COSIGN_PUB.as_bytes()).unwrap();
        let ok = verify(&payload, SIGNATURE, std::slice::from_ref(&key)).unwrap();
        let claim = parse_claim(ok, CLAIM_TYPE).unwrap();
        assert_eq!(
            claim.reference,
            "192.168.64.2:5000/cosign-signed-single-sample"
        );
        assert_eq!(
            claim.digest,
            "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00"
        );
        // Another key, a flipped payload byte, garbage signatures.
        let other = PublicKey::parse(OTHER_PUB.as_bytes()).unwrap();
        assert!(matches!(
            verify(&payload, SIGNATURE, &[other]),
            Err(Refusal::UnknownKey(_))
        ));
        let mut tampered = payload.clone();
        tampered[20] ^= 1;
        assert!(verify(&tampered, SIGNATURE, std::slice::from_ref(&key)).is_err());
        assert!(matches!(
            verify(&payload, "%%%", std::slice::from_ref(&key)),
            Err(Refusal::Malformed(_))
        ));
        assert!(matches!(
            verify(&payload, "AAAA", std::slice::from_ref(&key)),
            Err(Refusal::Malformed(_))
        ));
        assert!(
            PublicKey::parse(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .is_err()
        );
    }

    #[test]
    fn attachment_manifests_yield_their_signature_layers() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
               "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:00","size":2}},
               "layers":[
                 {{"mediaType":"{PAYLOAD_TYPE}","digest":"sha256:aa","size":10,
                   "annotations":{{"{SIGNATURE_ANNOTATION}":"c2ln"}}}},
                 {{"mediaType":"{PAYLOAD_TYPE}","digest":"sha256:bb","size":10}},
                 {{"mediaType":"application/other","digest":"sha256:cc","size":1,
                   "annotations":{{"{SIGNATURE_ANNOTATION}":"eA=="}}}}]}}"#
        );
        assert_eq!(
            signature_layers(m.as_bytes()).unwrap(),
            vec![SignatureLayer {
                digest: "sha256:aa".into(),
                size: 10,
                signature: "c2ln".into()
            }]
        );
        assert!(signature_layers(b"{]").is_err());
    }
}
