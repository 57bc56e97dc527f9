//! "Simple signing" (containers-signature(5)): an OpenPGP signed message
//! whose payload is a JSON claim that an image (its manifest digest) has an
//! identity (a docker reference). Verified with rpgp, a pure-Rust OpenPGP
//! implementation; the payload is parsed only after its signature checked
//! out, and strictly (an unknown member in `critical` rejects it).

use std::io::Read;

use pgp::composed::{Deserializable, Message, SignedPublicKey};
use pgp::types::KeyDetails;

/// The claim inside a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// `critical.image.docker-manifest-digest`.
    pub digest: String,
    /// `critical.identity.docker-reference`.
    pub reference: String,
}

/// Why one signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not an OpenPGP signed message at all, or damaged.
    Malformed(String),
    /// Made by a key the requirement does not list.
    UnknownKey(String),
    /// By a listed key, but the cryptographic check failed (tampered).
    BadSignature(String),
    /// The signature has expired.
    Expired,
    /// The signed payload is not a valid claim.
    BadPayload(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Malformed(w) => write!(f, "not a valid signature ({w})"),
            Refusal::UnknownKey(k) => {
                write!(f, "signed by key {k}, which the policy does not accept")
            }
            Refusal::BadSignature(w) => write!(f, "the signature does not verify ({w})"),
            Refusal::Expired => write!(f, "the signature has expired"),
            Refusal::BadPayload(w) => write!(f, "the signed claim is invalid ({w})"),
        }
    }
}

/// Public keys a `signedBy` requirement accepts.
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
}

impl Keyring {
    /// Parse `bytes`: one or more public keys, binary (`gpg --export`) or
    /// ASCII-armored. Keys whose self-signatures do not verify are left out.
    pub fn parse(bytes: &[u8]) -> Result<Keyring, String> {
        let armored = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .is_some_and(|i| bytes[i..].starts_with(b"-----BEGIN PGP"));
        let parsed: Vec<_> = if armored {
            SignedPublicKey::from_armor_many(bytes)
                .map_err(|e| e.to_string())?
                .0
                .collect()
        } else {
            SignedPublicKey::from_bytes_many(bytes)
                .map_err(|e| e.to_string())?
                .collect()
        };
        let mut keys = Vec::new();
        for k in parsed {
            let k = k.map_err(|e| e.to_string())?;
            if k.verify_bindings().is_ok() {
                keys.push(k);
            }
        }
        if keys.is_empty() {
            return Err("no usable public key in it".into());
        }
        Ok(Keyring { keys })
    }

    /// Add the keys of `other`.
    pub fn extend(&mut self, other: Keyring) {
        self.keys.extend(other.keys);
    }
}

/// Limit on a signed payload (containers/image reads at most 4 MiB).
const MAX_PAYLOAD: u64 = 4 << 20;

/// Verify `sig` against `keyring`: the signed payload, if a listed key
/// made it and it has not expired.
pub fn verify(sig: &[u8], keyring: &Keyring) -> Result<Vec<u8>, Refusal> {
    let malformed = |e: &dyn std::fmt::Display| Refusal::Malformed(e.to_string());
    let mut msg = Message::from_bytes(sig).map_err(|e| malformed(&e))?;
    for _ in 0..4 {
        if !msg.is_compressed() {
            break;
        }
        msg = msg.decompress().map_err(|e| malformed(&e))?;
    }
    if !msg.is_signed() {
        return Err(Refusal::Malformed("not a signed message".into()));
    }
    let mut payload = Vec::new();
    (&mut msg)
        .take(MAX_PAYLOAD + 1)
        .read_to_end(&mut payload)
        .map_err(|e| malformed(&e))?;
    if payload.len() as u64 > MAX_PAYLOAD {
        return Err(Refusal::Malformed(format!(
            "payload larger than {MAX_PAYLOAD} bytes"
        )));
    }
    let mut tried_listed_key = None;
    for key in &keyring.keys {
        let primary = std::iter::once(&key.primary_key as &dyn pgp::types::VerifyingKey);
        let subs = key
            .public_subkeys
            .iter()
            .map(|s| s as &dyn pgp::types::VerifyingKey);
        for vk in primary.chain(subs) {
            match msg.verify(vk) {
                Ok(s) => {
                    if let (Some(created), Some(valid)) =
                        (s.created(), s.signature_expiration_time())
                    {
                        let valid = u64::from(valid.as_secs());
                        let until = u64::from(created.as_secs()) + valid;
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        if valid != 0 && until < now {
                            return Err(Refusal::Expired);
                        }
                    }
                    return Ok(payload);
                }
                Err(e) => {
                    if tried_listed_key.is_none() && issued_by(&msg, key) {
                        tried_listed_key = Some(e.to_string());
                    }
                }
            }
        }
    }
    match tried_listed_key {
        Some(why) => Err(Refusal::BadSignature(why)),
        None => Err(Refusal::UnknownKey(issuer(&msg))),
    }
}

/// Key ids the message's first signature names as its issuer.
fn issuers(msg: &Message) -> Vec<String> {
    let Message::Signed { reader, .. } = msg else {
        return Vec::new();
    };
    let Some(sig) = reader.signature(0) else {
        return Vec::new();
    };
    let mut out: Vec<String> = sig
        .issuer_fingerprint()
        .iter()
        .map(|f| hex::encode_upper(f.as_bytes()))
        .collect();
    out.extend(
        sig.issuer_key_id()
            .iter()
            .map(|k| hex::encode_upper(k.as_ref())),
    );
    out
}

fn issuer(msg: &Message) -> String {
    issuers(msg)
        .into_iter()
        .next()
        .unwrap_or_else(|| "(no issuer given)".into())
}

/// Whether `msg` says `key` (or one of its subkeys) made it.
fn issued_by(msg: &Message, key: &SignedPublicKey) -> bool {
    let mut ids = vec![
        hex::encode_upper(key.fingerprint().as_bytes()),
        hex::encode_upper(key.legacy_key_id().as_ref()),
    ];
    for s in &key.public_subkeys {
        ids.push(hex::encode_upper(s.fingerprint().as_bytes()));
        ids.push(hex::encode_upper(s.legacy_key_id().as_ref()));
    }
    issuers(msg).iter().any(|i| ids.contains(i))
}

/// Parse a verified payload of `kind` (`atomic container signature`, or
/// `cosign container image signature` for sigstore): exactly
/// `{critical: {type, image: {docker-manifest-digest}, identity:
/// {docker-reference}}, optional}`.
pub fn parse_claim(payload: &[u8], kind: &str) -> Result<Claim, Refusal> {
    use serde_json::Value;
    let bad = |w: &str| Refusal::BadPayload(w.to_string());
    let v: Value = serde_json::from_slice(payload).map_err(|e| bad(&e.to_string()))?;
    let top = v.as_object().ok_or_else(|| bad("not a JSON object"))?;
    if top.len() != 2 || !top.contains_key("critical") || !top.contains_key("optional") {
        return Err(bad("the top level must be exactly critical and optional"));
    }
    if !(top["optional"].is_object() || top["optional"].is_null()) {
        return Err(bad("optional is not an object"));
    }
    let critical = top["critical"]
        .as_object()
        .ok_or_else(|| bad("critical is not an object"))?;
    let exactly = |o: &serde_json::Map<String, Value>, keys: &[&str], what: &str| {
        if o.len() != keys.len() || keys.iter().any(|k| !o.contains_key(*k)) {
            return Err(bad(&format!(
                "{what} must hold exactly {}",
                keys.join(", ")
            )));
        }
        Ok(())
    };
    exactly(critical, &["type", "image", "identity"], "critical")?;
    if critical["type"].as_str() != Some(kind) {
        return Err(bad(&format!("critical.type is not \"{kind}\"")));
    }
    let image = critical["image"]
        .as_object()
        .ok_or_else(|| bad("critical.image is not an object"))?;
    exactly(image, &["docker-manifest-digest"], "critical.image")?;
    let identity = critical["identity"]
        .as_object()
        .ok_or_else(|| bad("critical.identity is not an object"))?;
    exactly(identity, &["docker-reference"], "critical.identity")?;
    let digest = image["docker-manifest-digest"]
        .as_str()
        .ok_or_else(|| bad("docker-manifest-digest is not a string"))?;
    let reference = identity["docker-reference"]
        .as_str()
        .ok_or_else(|| bad("docker-reference is not a string"))?;
    Ok(Claim {
        digest: digest.to_string(),
        reference: reference.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_parsed_strictly() {
        let ok = br#"{"critical":{"type":"atomic container signature","image":{"docker-manifest-digest":"sha256:ab"},"identity":{"docker-reference":"h.io/a:1"}},"optional":{"creator":"x"}}"#;
        assert_eq!(
            parse_claim(ok, "atomic container signature").unwrap(),
            Claim {
                digest: "sha256:ab".into(),
                reference: "h.io/a:1".into()
            }
        );
        assert!(parse_claim(ok, "cosign container image signature").is_err());
        for bad in [
            &br#"{"critical":{"type":"atomic container signature","image":{"docker-manifest-digest":"sha256:ab"},"identity":{"docker-reference":"h.io/a:1"},"extra":1},"optional":{}}"#[..],
            br#"{"critical":{"type":"atomic container signature","image":{"docker-manifest-digest":"sha256:ab","x":1},"identity":{"docker-reference":"h.io/a:1"}},"optional":{}}"#,
            br#"{"critical":{"type":"atomic container signature","image":{"docker-manifest-digest":1},"identity":{"docker-reference":"h.io/a:1"}},"optional":{}}"#,
            br#"{"critical":{"type":"atomic container signature","image":{"docker-manifest-digest":"sha256:ab"},"identity":{"docker-reference":"h.io/a:1"}}}"#,
            br#"[]"#,
            b"not json",
        ] {
            assert!(
                matches!(parse_claim(bad, "atomic container signature"), Err(Refusal::BadPayload(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
