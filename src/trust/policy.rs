//! containers-policy.json(5): the file, parsed as strictly as
//! containers/image parses it, and the lookup of the requirements that
//! apply to an image (the most specific scope of its transport, then the
//! transport's default `""`, then the global `default`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::TrustError;
use super::identity::{DockerRef, SignedIdentity};

/// One requirement of a policy; an image must satisfy all that apply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum Requirement {
    /// Accept anything.
    #[serde(rename = "insecureAcceptAnything")]
    InsecureAcceptAnything {},
    /// Reject everything.
    #[serde(rename = "reject")]
    Reject {},
    /// Simple signing (OpenPGP) by one of these keys.
    #[serde(rename = "signedBy")]
    SignedBy {
        /// Must be `GPGKeys`.
        #[serde(rename = "keyType")]
        key_type: String,
        /// A keyring file.
        #[serde(rename = "keyPath")]
        key_path: Option<PathBuf>,
        /// Keyring files.
        #[serde(rename = "keyPaths")]
        key_paths: Option<Vec<PathBuf>>,
        /// A keyring, base64.
        #[serde(rename = "keyData")]
        key_data: Option<String>,
        /// What identity the signature must claim.
        #[serde(rename = "signedIdentity", default)]
        signed_identity: SignedIdentity,
    },
    /// A sigstore (cosign) signature by this key.
    #[serde(rename = "sigstoreSigned")]
    SigstoreSigned {
        /// A PEM public key file.
        #[serde(rename = "keyPath")]
        key_path: Option<PathBuf>,
        /// PEM public key files.
        #[serde(rename = "keyPaths")]
        key_paths: Option<Vec<PathBuf>>,
        /// A PEM public key, base64.
        #[serde(rename = "keyData")]
        key_data: Option<String>,
        /// PEM public keys, base64.
        #[serde(rename = "keyDatas")]
        key_datas: Option<Vec<String>>,
        /// Keyless signing (Fulcio): recognised, not supported yet.
        fulcio: Option<serde_json::Value>,
        /// A PKI (X.509) root: recognised, not supported yet.
        pki: Option<serde_json::Value>,
        /// Rekor's key: recognised, not supported yet.
        #[serde(rename = "rekorPublicKeyPath")]
        rekor_public_key_path: Option<PathBuf>,
        /// Rekor's keys: recognised, not supported yet.
        #[serde(rename = "rekorPublicKeyPaths")]
        rekor_public_key_paths: Option<Vec<PathBuf>>,
        /// Rekor's key, base64: recognised, not supported yet.
        #[serde(rename = "rekorPublicKeyData")]
        rekor_public_key_data: Option<String>,
        /// Rekor's keys, base64: recognised, not supported yet.
        #[serde(rename = "rekorPublicKeyDatas")]
        rekor_public_key_datas: Option<Vec<String>>,
        /// What identity the signature must claim.
        #[serde(rename = "signedIdentity", default)]
        signed_identity: SignedIdentity,
    },
}

impl Requirement {
    /// What a `sigstoreSigned` requirement needs that ocidisk cannot
    /// verify yet (keyless, PKI, Rekor), if anything.
    pub fn unsupported(&self) -> Option<&'static str> {
        let Requirement::SigstoreSigned {
            fulcio,
            pki,
            rekor_public_key_path,
            rekor_public_key_paths,
            rekor_public_key_data,
            rekor_public_key_datas,
            ..
        } = self
        else {
            return None;
        };
        if fulcio.is_some() {
            Some("keyless sigstore signatures (fulcio)")
        } else if pki.is_some() {
            Some("sigstore signatures with a PKI (X.509) root")
        } else if rekor_public_key_path.is_some()
            || rekor_public_key_paths.is_some()
            || rekor_public_key_data.is_some()
            || rekor_public_key_datas.is_some()
        {
            Some("Rekor transparency-log checks")
        } else {
            None
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    default: Vec<Requirement>,
    #[serde(default)]
    transports: BTreeMap<String, BTreeMap<String, Vec<Requirement>>>,
}

/// A loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The file it came from.
    pub path: PathBuf,
    default: Vec<Requirement>,
    transports: BTreeMap<String, BTreeMap<String, Vec<Requirement>>>,
}

/// The image a policy is asked about.
#[derive(Debug, Clone)]
pub enum Subject {
    /// `docker:` (a registry).
    Docker(DockerRef),
    /// `oci:` (a layout directory, resolved to an absolute path).
    Oci(PathBuf),
    /// `docker-archive:`.
    DockerArchive,
}

impl Subject {
    /// The transport name policies use.
    pub fn transport(&self) -> &'static str {
        match self {
            Subject::Docker(_) => "docker",
            Subject::Oci(_) => "oci",
            Subject::DockerArchive => "docker-archive",
        }
    }

    /// The docker identity, if the transport has one.
    pub fn docker(&self) -> Option<&DockerRef> {
        match self {
            Subject::Docker(r) => Some(r),
            _ => None,
        }
    }

    /// Scopes to look up, most specific first (before the transport's
    /// `""` default).
    fn scopes(&self) -> Vec<String> {
        match self {
            Subject::Docker(r) => {
                let mut v = vec![r.policy_identity()];
                v.extend(r.namespaces());
                v
            }
            Subject::Oci(dir) => {
                let mut v = Vec::new();
                let mut p = dir.to_string_lossy().into_owned();
                while p != "/" && !p.is_empty() {
                    v.push(p.clone());
                    match p.rfind('/') {
                        Some(0) | None => break,
                        Some(i) => p.truncate(i),
                    }
                }
                v
            }
            Subject::DockerArchive => Vec::new(),
        }
    }
}

/// Which part of the policy applied, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// `transports.T.S`.
    Scope {
        /// The transport.
        transport: String,
        /// The scope.
        scope: String,
    },
    /// `transports.T.""`.
    TransportDefault(String),
    /// `default`.
    Default,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Scope { transport, scope } => write!(f, "{transport} scope \"{scope}\""),
            Scope::TransportDefault(t) => write!(f, "the {t} transport's default"),
            Scope::Default => write!(f, "the default"),
        }
    }
}

fn check_requirement(path: &Path, at: &str, r: &Requirement) -> Result<(), TrustError> {
    let bad = |why: String| TrustError::BadPolicy {
        path: path.to_path_buf(),
        why: format!("{at}: {why}"),
    };
    match r {
        Requirement::SignedBy {
            key_type,
            key_path,
            key_paths,
            key_data,
            ..
        } => {
            if key_type != "GPGKeys" {
                return Err(bad(format!(
                    "signedBy keyType \"{key_type}\" is not supported (only GPGKeys)"
                )));
            }
            let n = [key_path.is_some(), key_paths.is_some(), key_data.is_some()]
                .iter()
                .filter(|x| **x)
                .count();
            if n != 1 {
                return Err(bad(
                    "signedBy needs exactly one of keyPath, keyPaths and keyData".into(),
                ));
            }
        }
        Requirement::SigstoreSigned {
            key_path,
            key_paths,
            key_data,
            key_datas,
            fulcio,
            pki,
            ..
        } => {
            let sources = [
                key_path.is_some(),
                key_paths.is_some(),
                key_data.is_some(),
                key_datas.is_some(),
                fulcio.is_some(),
                pki.is_some(),
            ];
            if sources.iter().filter(|x| **x).count() != 1 {
                return Err(bad("sigstoreSigned needs exactly one of keyPath, keyPaths, keyData, keyDatas, fulcio and pki".into()));
            }
        }
        Requirement::InsecureAcceptAnything {} | Requirement::Reject {} => {}
    }
    Ok(())
}

impl Policy {
    /// Parse `bytes` (the contents of `path`).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Policy, TrustError> {
        let file: PolicyFile =
            serde_json::from_slice(bytes).map_err(|e| TrustError::BadPolicy {
                path: path.to_path_buf(),
                why: e.to_string(),
            })?;
        let bad = |why: String| TrustError::BadPolicy {
            path: path.to_path_buf(),
            why,
        };
        if file.default.is_empty() {
            return Err(bad("\"default\" must not be empty".into()));
        }
        for r in &file.default {
            check_requirement(path, "default", r)?;
        }
        for (t, scopes) in &file.transports {
            for (s, reqs) in scopes {
                if reqs.is_empty() {
                    return Err(bad(format!(
                        "transports.{t}.\"{s}\": the requirements must not be empty"
                    )));
                }
                for r in reqs {
                    check_requirement(path, &format!("transports.{t}.\"{s}\""), r)?;
                }
            }
        }
        Ok(Policy {
            path: path.to_path_buf(),
            default: file.default,
            transports: file.transports,
        })
    }

    /// Read and parse the policy at `path`.
    pub fn load(path: &Path) -> Result<Policy, TrustError> {
        let bytes = std::fs::read(path).map_err(|source| TrustError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::parse(path, &bytes)
    }

    /// The requirements for `subject` and where in the policy they are.
    pub fn requirements(&self, subject: &Subject) -> (&[Requirement], Scope) {
        let t = subject.transport();
        if let Some(scopes) = self.transports.get(t) {
            for s in subject.scopes() {
                if let Some(r) = scopes.get(&s) {
                    return (
                        r,
                        Scope::Scope {
                            transport: t.into(),
                            scope: s,
                        },
                    );
                }
            }
            if let Some(r) = scopes.get("") {
                return (r, Scope::TransportDefault(t.into()));
            }
        }
        (&self.default, Scope::Default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Result<Policy, TrustError> {
        Policy::parse(Path::new("/p.json"), json.as_bytes())
    }

    #[test]
    fn the_most_specific_scope_wins() {
        let p = policy(
            r#"{
              "default": [{"type": "reject"}],
              "transports": {
                "docker": {
                  "h.io:5000/ns/app:v1": [{"type": "insecureAcceptAnything"}],
                  "h.io:5000/ns": [{"type": "reject"}],
                  "*.io": [{"type": "insecureAcceptAnything"}],
                  "": [{"type": "reject"}]
                },
                "oci": {"/srv/images": [{"type": "insecureAcceptAnything"}]}
              }
            }"#,
        )
        .unwrap();
        let d = |s: &str| Subject::Docker(DockerRef::parse(s).unwrap());
        let scope = |s: &Subject| p.requirements(s).1.to_string();
        assert_eq!(
            scope(&d("h.io:5000/ns/app:v1")),
            "docker scope \"h.io:5000/ns/app:v1\""
        );
        assert_eq!(
            scope(&d("h.io:5000/ns/app:v2")),
            "docker scope \"h.io:5000/ns\""
        );
        assert_eq!(scope(&d("x.io/a")), "docker scope \"*.io\"");
        assert_eq!(scope(&d("x.com/a")), "the docker transport's default");
        assert_eq!(
            scope(&Subject::Oci("/srv/images/app".into())),
            "oci scope \"/srv/images\""
        );
        assert_eq!(scope(&Subject::Oci("/home/a".into())), "the default");
        assert_eq!(scope(&Subject::DockerArchive), "the default");
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        for (json, want) in [
            (r#"{"default": []}"#, "must not be empty"),
            (
                r#"{"default": [{"type": "reject"}], "extra": 1}"#,
                "unknown field",
            ),
            (r#"{"default": [{"type": "maybe"}]}"#, "unknown variant"),
            (
                r#"{"default": [{"type": "signedBy", "keyType": "GPGKeys"}]}"#,
                "exactly one of keyPath",
            ),
            (
                r#"{"default": [{"type": "signedBy", "keyType": "X509", "keyPath": "/k"}]}"#,
                "only GPGKeys",
            ),
            (
                r#"{"default": [{"type": "reject", "keyPath": "/k"}]}"#,
                "unknown field",
            ),
            (
                r#"{"default": [{"type": "insecureAcceptAnything"}], "transports": {"docker": {"h.io": []}}}"#,
                "must not be empty",
            ),
        ] {
            let e = policy(json).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
            assert!(e.contains("/p.json"), "{e}");
        }
        let p = policy(
            r#"{"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k",
                 "signedIdentity": {"type": "remapIdentity", "prefix": "a.io", "signedPrefix": "b.io"}}]}"#,
        )
        .unwrap();
        assert!(matches!(
            &p.default[0],
            Requirement::SignedBy {
                signed_identity: SignedIdentity::RemapIdentity { .. },
                ..
            }
        ));
    }
}
