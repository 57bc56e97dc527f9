//! Trust: whether an image may be used at all, decided as skopeo, podman
//! and CRI-O decide it, from the same files: containers-policy.json(5)
//! (which requirements apply to which images) and containers-registries.d(5)
//! (where signatures live). The check runs once the top-level manifest's
//! digest is known and before anything else of the image is fetched; the
//! digest it accepted then pins every byte after it (manifest and config
//! digests, layer digests and diff_ids, span hashes for lazy reads).
//!
//! - [`policy`]: the policy file and its scopes;
//! - `identity`: docker references and the `signedIdentity` rules;
//! - `registries_d` and `lookaside`: finding simple-signing signatures;
//! - `simple_signing`: OpenPGP signatures (rpgp, pure Rust);
//! - `sigstore`: cosign signatures with a public key (RustCrypto p256).
//!
//! No policy file anywhere means every image is accepted, as before.

use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::digest::Digest;

pub mod identity;
mod lookaside;
pub mod policy;
mod registries_d;
mod sigstore;
mod simple_signing;

pub use identity::DockerRef;
pub use policy::{Policy, Requirement, Scope, Subject};
pub use registries_d::RegistriesD;
pub use sigstore::signature_tag;

/// Errors of the trust check.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The image is not accepted by the policy.
    #[error("{image} is rejected by {policy} ({scope}): {why}")]
    Rejected {
        /// The image.
        image: String,
        /// The policy file.
        policy: String,
        /// Which part of the policy applied.
        scope: Scope,
        /// Why.
        why: String,
    },
    /// The policy file is not valid.
    #[error("policy {path}: {why}")]
    BadPolicy {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A registries.d file is not valid.
    #[error("registries.d file {path}: {why}")]
    BadRegistriesD {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key named by the policy could not be used.
    #[error("policy {policy}: key {key}: {why}")]
    BadKey {
        /// The policy file.
        policy: PathBuf,
        /// The key file or "keyData".
        key: String,
        /// What is wrong.
        why: String,
    },
    /// Reading signatures failed (not: there were none).
    #[error("reading signatures from {url}: {why}")]
    Signatures {
        /// Where.
        url: String,
        /// What happened.
        why: String,
    },
    /// The policy needs something ocidisk cannot verify yet.
    #[error(
        "{image}: policy {policy} ({scope}) needs {what}, which ocidisk does not support yet; refusing rather than accepting"
    )]
    Unsupported {
        /// The image.
        image: String,
        /// The policy file.
        policy: String,
        /// Which part applied.
        scope: Scope,
        /// What is needed.
        what: String,
    },
}

/// Where to find the policy and the signature configuration.
#[derive(Debug, Clone, Default)]
pub struct TrustOptions {
    /// `--policy`: the policy file (default: `$HOME/.config/containers/policy.json`,
    /// then `/etc/containers/policy.json`).
    pub policy: Option<PathBuf>,
    /// `--registries.d`: the signature configuration directory (default:
    /// `$HOME/.config/containers/registries.d`, then
    /// `/etc/containers/registries.d`).
    pub registries_d: Option<PathBuf>,
}

/// What the image's source offers besides the image: sigstore attachments
/// in its repository.
pub trait Attachments: Sync {
    /// The manifest tagged `tag` in the image's repository; `None` if there
    /// is none.
    fn tagged_manifest(
        &self,
        tag: &str,
    ) -> impl std::future::Future<Output = Result<Option<Vec<u8>>, String>> + Send;
    /// A blob of the image's repository, checked against `digest`, at most
    /// `limit` bytes.
    fn small_blob(
        &self,
        digest: &Digest,
        size: u64,
        limit: u64,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, String>> + Send;
}

/// No attachments (OCI layouts, docker archives).
pub struct NoAttachments;

impl Attachments for NoAttachments {
    async fn tagged_manifest(&self, _tag: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
    async fn small_blob(&self, d: &Digest, _size: u64, _limit: u64) -> Result<Vec<u8>, String> {
        Err(format!("no blob {d} here"))
    }
}

/// A loaded policy with its signature configuration.
#[derive(Debug, Clone)]
pub struct Trust {
    policy: Policy,
    registries: RegistriesD,
}

fn default_policy() -> Option<PathBuf> {
    if let Ok(home) = std::env::var("HOME") {
        let user = Path::new(&home).join(".config/containers/policy.json");
        if user.exists() {
            return Some(user);
        }
    }
    let system = PathBuf::from("/etc/containers/policy.json");
    system.exists().then_some(system)
}

impl Trust {
    /// Load the policy (`None`: no policy file anywhere, accept all).
    pub fn load(opts: &TrustOptions) -> Result<Option<Trust>, TrustError> {
        let Some(path) = opts.policy.clone().or_else(default_policy) else {
            return Ok(None);
        };
        let policy = Policy::load(&path)?;
        let dir = opts
            .registries_d
            .clone()
            .unwrap_or_else(registries_d::default_dir);
        let registries = RegistriesD::load(&dir)?;
        Ok(Some(Trust { policy, registries }))
    }

    /// A policy already parsed, with `registries`.
    pub fn new(policy: Policy, registries: RegistriesD) -> Trust {
        Trust { policy, registries }
    }

    /// The policy file in force.
    pub fn policy_path(&self) -> &Path {
        &self.policy.path
    }

    /// Decide whether the image `name` (as the user named it), reached as
    /// `subject`, whose top-level manifest is `manifest` with digest
    /// `digest`, may be used.
    pub async fn check<A: Attachments>(
        &self,
        name: &str,
        subject: &Subject,
        manifest: &[u8],
        digest: &Digest,
        attachments: &A,
    ) -> Result<(), TrustError> {
        let (requirements, scope) = self.policy.requirements(subject);
        let reject = |why: String| TrustError::Rejected {
            image: name.to_string(),
            policy: self.policy.path.display().to_string(),
            scope: scope.clone(),
            why,
        };
        let mut lookaside: Option<Vec<Vec<u8>>> = None;
        for r in requirements {
            match r {
                Requirement::InsecureAcceptAnything {} => {}
                Requirement::Reject {} => {
                    return Err(reject("the policy rejects every image here".into()));
                }
                Requirement::SignedBy {
                    key_path,
                    key_paths,
                    key_data,
                    signed_identity,
                    ..
                } => {
                    let keyring = self.keyring(key_path, key_paths, key_data)?;
                    if lookaside.is_none() {
                        lookaside = Some(match subject.docker() {
                            Some(r) => {
                                let base = self.registries.lookaside_base(r);
                                lookaside::signatures(&base, digest).await?
                            }
                            None => Vec::new(),
                        });
                    }
                    let claims = lookaside.iter().flatten().map(|s| {
                        simple_signing::verify(s, &keyring).and_then(|p| {
                            simple_signing::parse_claim(&p, "atomic container signature")
                        })
                    });
                    accept_any(claims, manifest, subject.docker(), signed_identity)
                        .map_err(|r| reject(explain("signature", &r)))?;
                }
                r @ Requirement::SigstoreSigned {
                    key_path,
                    key_paths,
                    key_data,
                    key_datas,
                    signed_identity,
                    ..
                } => {
                    if let Some(what) = r.unsupported() {
                        return Err(TrustError::Unsupported {
                            image: name.to_string(),
                            policy: self.policy.path.display().to_string(),
                            scope: scope.clone(),
                            what: what.to_string(),
                        });
                    }
                    let keys = self.sigstore_keys(key_path, key_paths, key_data, key_datas)?;
                    let sigs = match subject.docker() {
                        Some(r) if self.registries.use_sigstore_attachments(r) => {
                            sigstore_signatures(digest, attachments).await?
                        }
                        _ => Vec::new(),
                    };
                    let claims = sigs.iter().map(|(payload, sig)| {
                        sigstore::verify(payload, sig, &keys)
                            .and_then(|p| simple_signing::parse_claim(p, sigstore::CLAIM_TYPE))
                    });
                    accept_any(claims, manifest, subject.docker(), signed_identity)
                        .map_err(|r| reject(explain("sigstore signature", &r)))?;
                }
            }
        }
        Ok(())
    }

    fn key_err(&self, key: &str, why: String) -> TrustError {
        TrustError::BadKey {
            policy: self.policy.path.clone(),
            key: key.to_string(),
            why,
        }
    }

    /// The keys of a requirement: files (`keyPath`, `keyPaths`) or base64
    /// (`keyData`, `keyDatas`), each parsed by `parse`.
    fn load_keys<K>(
        &self,
        paths: &[&PathBuf],
        datas: &[&String],
        parse: impl Fn(&[u8]) -> Result<K, String>,
    ) -> Result<Vec<K>, TrustError> {
        let mut keys = Vec::new();
        for p in paths {
            let bytes = std::fs::read(p)
                .map_err(|e| self.key_err(&p.display().to_string(), e.to_string()))?;
            keys.push(parse(&bytes).map_err(|e| self.key_err(&p.display().to_string(), e))?);
        }
        for d in datas {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(d.trim())
                .map_err(|e| self.key_err("keyData", format!("not base64: {e}")))?;
            keys.push(parse(&bytes).map_err(|e| self.key_err("keyData", e))?);
        }
        Ok(keys)
    }

    fn keyring(
        &self,
        key_path: &Option<PathBuf>,
        key_paths: &Option<Vec<PathBuf>>,
        key_data: &Option<String>,
    ) -> Result<simple_signing::Keyring, TrustError> {
        let paths: Vec<&PathBuf> = key_path.iter().chain(key_paths.iter().flatten()).collect();
        let datas: Vec<&String> = key_data.iter().collect();
        let mut rings = self
            .load_keys(&paths, &datas, simple_signing::Keyring::parse)?
            .into_iter();
        let mut ring = rings
            .next()
            .ok_or_else(|| self.key_err("signedBy", "no keys".into()))?;
        for r in rings {
            ring.extend(r);
        }
        Ok(ring)
    }

    fn sigstore_keys(
        &self,
        key_path: &Option<PathBuf>,
        key_paths: &Option<Vec<PathBuf>>,
        key_data: &Option<String>,
        key_datas: &Option<Vec<String>>,
    ) -> Result<Vec<sigstore::PublicKey>, TrustError> {
        let paths: Vec<&PathBuf> = key_path.iter().chain(key_paths.iter().flatten()).collect();
        let datas: Vec<&String> = key_data.iter().chain(key_datas.iter().flatten()).collect();
        self.load_keys(&paths, &datas, sigstore::PublicKey::parse)
    }
}

/// The sigstore signatures attached to `digest`: (payload, signature).
async fn sigstore_signatures<A: Attachments>(
    digest: &Digest,
    attachments: &A,
) -> Result<Vec<(Vec<u8>, String)>, TrustError> {
    let tag = signature_tag(digest);
    let err = |why: String| TrustError::Signatures {
        url: format!("the {tag} attachment"),
        why,
    };
    let Some(manifest) = attachments.tagged_manifest(&tag).await.map_err(err)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for layer in sigstore::signature_layers(&manifest).map_err(err)? {
        let Ok(d) = layer.digest.parse::<Digest>() else {
            continue;
        };
        if layer.size > lookaside::MAX_SIGNATURE_BYTES {
            continue;
        }
        let payload = attachments
            .small_blob(&d, layer.size, lookaside::MAX_SIGNATURE_BYTES)
            .await
            .map_err(err)?;
        out.push((payload, layer.signature));
    }
    Ok(out)
}

/// Accept if one of `claims` (verified signatures' claims, or why one was
/// not) is for this manifest with an acceptable identity; otherwise every
/// reason.
fn accept_any(
    claims: impl Iterator<Item = Result<simple_signing::Claim, simple_signing::Refusal>>,
    manifest: &[u8],
    image: Option<&DockerRef>,
    rule: &identity::SignedIdentity,
) -> Result<(), Vec<simple_signing::Refusal>> {
    let mut refusals = Vec::new();
    for claim in claims {
        match claim.and_then(|c| claim_matches(&c, manifest, image, rule)) {
            Ok(()) => return Ok(()),
            Err(why) => refusals.push(why),
        }
    }
    Err(refusals)
}

/// A verified claim must be for this manifest and name an acceptable
/// identity.
fn claim_matches(
    claim: &simple_signing::Claim,
    manifest: &[u8],
    image: Option<&DockerRef>,
    rule: &identity::SignedIdentity,
) -> Result<(), simple_signing::Refusal> {
    use simple_signing::Refusal;
    let for_this = claim
        .digest
        .parse::<Digest>()
        .is_ok_and(|d| d.matches(manifest));
    if !for_this {
        return Err(Refusal::BadPayload(format!(
            "it signs another image (manifest digest {})",
            claim.digest
        )));
    }
    if !rule.matches(image, &claim.reference) {
        return Err(Refusal::BadPayload(format!(
            "it is for {}, which the policy's signedIdentity does not accept for this image",
            claim.reference
        )));
    }
    Ok(())
}

/// Why no signature was accepted, in one phrase.
fn explain(what: &str, refusals: &[simple_signing::Refusal]) -> String {
    match refusals {
        [] => format!("a {what} is required, but none exists"),
        [one] => format!("its {what}: {one}"),
        many => {
            let all: Vec<String> = many.iter().map(|r| r.to_string()).collect();
            format!(
                "none of its {} {what}s is accepted: {}",
                many.len(),
                all.join("; ")
            )
        }
    }
}
