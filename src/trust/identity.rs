//! Docker references as policies compare them, and the `signedIdentity`
//! rules of containers-policy.json(5): does the identity a signature claims
//! match the image being used?
//!
//! References are normalised as docker does (`busybox` is
//! `docker.io/library/busybox`), but no default tag is added: a signature
//! claiming a bare repository is "name only" and matches only the
//! repository rules, as in containers/image.

use serde::Deserialize;

/// A docker reference: `name[:tag][@digest]`, fully expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerRef {
    /// `host[:port]/path`.
    pub name: String,
    /// The tag, if given.
    pub tag: Option<String>,
    /// `algorithm:hex`, if given.
    pub digest: Option<String>,
}

fn valid_component(c: &str) -> bool {
    !c.is_empty()
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && c.as_bytes()[0].is_ascii_alphanumeric()
        && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && t.as_bytes()[0] != b'.'
        && t.as_bytes()[0] != b'-'
}

fn valid_digest(d: &str) -> bool {
    let Some((alg, hex)) = d.split_once(':') else {
        return false;
    };
    let len = match alg {
        "sha256" => 64,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == len
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl DockerRef {
    /// Parse and normalise `s` as docker does (`ParseNormalizedNamed`).
    pub fn parse(s: &str) -> Option<DockerRef> {
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (s, None),
        };
        if digest.is_some_and(|d| !valid_digest(d)) {
            return None;
        }
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if tag.is_some_and(|t| !valid_tag(t)) {
            return None;
        }
        let (domain, path) = match name.split_once('/') {
            Some((d, p)) if d.contains('.') || d.contains(':') || d == "localhost" => (d, p),
            _ => ("docker.io", name),
        };
        if domain.is_empty() || domain.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let domain = if domain == "index.docker.io" {
            "docker.io"
        } else {
            domain
        };
        let path = if domain == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        if !path.split('/').all(valid_component) {
            return None;
        }
        Some(DockerRef {
            name: format!("{domain}/{path}"),
            tag: tag.map(str::to_string),
            digest: digest.map(str::to_string),
        })
    }

    /// The registry host (and port).
    pub fn domain(&self) -> &str {
        self.name.split_once('/').map_or(&self.name, |(d, _)| d)
    }

    /// The repository path without the host.
    pub fn path(&self) -> &str {
        self.name.split_once('/').map_or("", |(_, p)| p)
    }

    /// Neither tag nor digest.
    pub fn is_name_only(&self) -> bool {
        self.tag.is_none() && self.digest.is_none()
    }

    /// The reference as a string.
    pub fn string(&self) -> String {
        let mut s = self.name.clone();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// The policy identity: `name:tag`, or `name@digest` for a digest
    /// reference (the digest wins when both are given).
    pub fn policy_identity(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{}@{d}", self.name),
            (None, Some(t)) => format!("{}:{t}", self.name),
            (None, None) => self.name.clone(),
        }
    }

    /// The scopes a policy or registries.d may name for this image, most
    /// specific first after the identity itself: the repository, each
    /// parent namespace up to the host, then `*.domain` wildcards.
    pub fn namespaces(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut name = self.name.as_str();
        loop {
            out.push(name.to_string());
            match name.rfind('/') {
                Some(i) => name = &name[..i],
                None => break,
            }
        }
        let mut host = name.split(':').next().unwrap_or(name);
        while let Some(i) = host.find('.') {
            host = &host[i + 1..];
            out.push(format!("*.{host}"));
        }
        out
    }
}

/// `signedIdentity`: what identity a signature must claim.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum SignedIdentity {
    /// Exactly the image's reference.
    #[serde(rename = "matchExact")]
    MatchExact,
    /// The default: exact for tags, the repository for digests.
    #[serde(rename = "matchRepoDigestOrExact")]
    #[default]
    MatchRepoDigestOrExact,
    /// The image's repository, any tag.
    #[serde(rename = "matchRepository")]
    MatchRepository,
    /// Exactly this reference.
    #[serde(rename = "exactReference")]
    ExactReference {
        /// The reference.
        #[serde(rename = "dockerReference")]
        docker_reference: String,
    },
    /// This repository, any tag.
    #[serde(rename = "exactRepository")]
    ExactRepository {
        /// The repository.
        #[serde(rename = "dockerRepository")]
        docker_repository: String,
    },
    /// The image's reference with `prefix` replaced by `signed_prefix`,
    /// then as matchRepoDigestOrExact.
    #[serde(rename = "remapIdentity")]
    RemapIdentity {
        /// What the image's name starts with.
        prefix: String,
        /// What replaces it.
        #[serde(rename = "signedPrefix")]
        signed_prefix: String,
    },
}

fn repo_digest_or_exact(intended: &DockerRef, signed: &DockerRef) -> bool {
    if signed.is_name_only() {
        return false;
    }
    if intended.tag.is_some() && intended.digest.is_none() {
        signed.string() == intended.string()
    } else if intended.digest.is_some() {
        // The digest itself is checked against the manifest, separately.
        signed.name == intended.name
    } else {
        false
    }
}

impl SignedIdentity {
    /// Whether a signature claiming `signed` is acceptable for an image
    /// known as `intended` (`None`: the transport gives no docker identity,
    /// as for OCI layouts).
    pub fn matches(&self, intended: Option<&DockerRef>, signed: &str) -> bool {
        let Some(signed) = DockerRef::parse(signed) else {
            return false;
        };
        match self {
            SignedIdentity::MatchExact => intended.is_some_and(|i| {
                !i.is_name_only() && !signed.is_name_only() && signed.string() == i.string()
            }),
            SignedIdentity::MatchRepoDigestOrExact => {
                intended.is_some_and(|i| repo_digest_or_exact(i, &signed))
            }
            SignedIdentity::MatchRepository => intended.is_some_and(|i| signed.name == i.name),
            SignedIdentity::ExactReference { docker_reference } => {
                DockerRef::parse(docker_reference).is_some_and(|want| {
                    !want.is_name_only()
                        && !signed.is_name_only()
                        && want.string() == signed.string()
                })
            }
            SignedIdentity::ExactRepository { docker_repository } => {
                DockerRef::parse(docker_repository).is_some_and(|want| want.name == signed.name)
            }
            SignedIdentity::RemapIdentity {
                prefix,
                signed_prefix,
            } => {
                let Some(i) = intended else {
                    return false;
                };
                let remapped = remap(i, prefix, signed_prefix);
                remapped.is_some_and(|r| repo_digest_or_exact(&r, &signed))
            }
        }
    }
}

/// `intended` with `prefix` (a host, namespace or repository, matched on
/// `/` boundaries) replaced by `signed_prefix`; unchanged when it does not
/// match; `None` when the result is no valid reference.
fn remap(intended: &DockerRef, prefix: &str, signed_prefix: &str) -> Option<DockerRef> {
    let name = &intended.name;
    let matches = name == prefix
        || (name.len() > prefix.len()
            && name.starts_with(prefix)
            && name.as_bytes()[prefix.len()] == b'/');
    if !matches {
        return Some(intended.clone());
    }
    let s = intended.string().replacen(prefix, signed_prefix, 1);
    DockerRef::parse(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> DockerRef {
        DockerRef::parse(s).unwrap_or_else(|| panic!("{s} does not parse"))
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn references_normalise_like_docker_without_a_default_tag() {
        assert_eq!(r("busybox").string(), "docker.io/library/busybox");
        assert!(r("busybox").is_name_only());
        assert_eq!(r("busybox:1").string(), "docker.io/library/busybox:1");
        assert_eq!(r("index.docker.io/x/y").name, "docker.io/x/y");
        assert_eq!(r("localhost/a").name, "localhost/a");
        assert_eq!(r("h:5000/a/b:t").domain(), "h:5000");
        assert_eq!(r("h:5000/a/b:t").path(), "a/b");
        assert_eq!(
            r(&format!("h.io/a@{D}")).policy_identity(),
            format!("h.io/a@{D}")
        );
        for bad in ["", "UP/case", "a@sha256:12", "h.io/a:", "h.io//a", "-a"] {
            assert!(DockerRef::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn namespaces_go_from_the_repository_to_wildcard_domains() {
        assert_eq!(
            r("a.b.example.com:5000/ns/repo:t").namespaces(),
            [
                "a.b.example.com:5000/ns/repo",
                "a.b.example.com:5000/ns",
                "a.b.example.com:5000",
                "*.b.example.com",
                "*.example.com",
                "*.com"
            ]
        );
        assert_eq!(
            r("127.0.0.1:5000/x").namespaces(),
            [
                "127.0.0.1:5000/x",
                "127.0.0.1:5000",
                "*.0.0.1",
                "*.0.1",
                "*.1"
            ]
        );
    }

    #[test]
    fn signed_identity_rules_follow_containers_policy_json() {
        use SignedIdentity as S;
        let tagged = r("h.io/ns/app:v1");
        let digested = r(&format!("h.io/ns/app@{D}"));
        let cases: &[(S, &DockerRef, &str, bool)] = &[
            (S::MatchExact, &tagged, "h.io/ns/app:v1", true),
            (S::MatchExact, &tagged, "h.io/ns/app:v2", false),
            (S::MatchExact, &digested, "h.io/ns/app:v1", false),
            (S::MatchRepoDigestOrExact, &tagged, "h.io/ns/app:v1", true),
            (S::MatchRepoDigestOrExact, &tagged, "h.io/ns/app:v2", false),
            (S::MatchRepoDigestOrExact, &digested, "h.io/ns/app:v7", true),
            (
                S::MatchRepoDigestOrExact,
                &digested,
                "h.io/ns/other:v7",
                false,
            ),
            (S::MatchRepoDigestOrExact, &tagged, "h.io/ns/app", false),
            (S::MatchRepository, &tagged, "h.io/ns/app:v9", true),
            (S::MatchRepository, &tagged, "h.io/ns/app", true),
            (S::MatchRepository, &tagged, "h.io/ns/other:v1", false),
            (
                S::ExactReference {
                    docker_reference: "pub.io/app:1".into(),
                },
                &tagged,
                "pub.io/app:1",
                true,
            ),
            (
                S::ExactReference {
                    docker_reference: "pub.io/app:1".into(),
                },
                &tagged,
                "pub.io/app:2",
                false,
            ),
            (
                S::ExactRepository {
                    docker_repository: "pub.io/app".into(),
                },
                &tagged,
                "pub.io/app:2",
                true,
            ),
            (
                S::RemapIdentity {
                    prefix: "h.io/ns".into(),
                    signed_prefix: "vendor.io/prod".into(),
                },
                &tagged,
                "vendor.io/prod/app:v1",
                true,
            ),
            (
                S::RemapIdentity {
                    prefix: "h.io/ns".into(),
                    signed_prefix: "vendor.io/prod".into(),
                },
                &tagged,
                "h.io/ns/app:v1",
                false,
            ),
            (
                // "h.io/n" is not a prefix on a "/" boundary: no remapping.
                S::RemapIdentity {
                    prefix: "h.io/n".into(),
                    signed_prefix: "vendor.io".into(),
                },
                &tagged,
                "h.io/ns/app:v1",
                true,
            ),
        ];
        for (rule, intended, signed, want) in cases {
            assert_eq!(
                rule.matches(Some(intended), signed),
                *want,
                "{rule:?} {intended:?} {signed}"
            );
        }
        // No docker identity (an OCI layout): only the exact* rules can pass.
        assert!(!S::MatchRepository.matches(None, "h.io/ns/app:v1"));
        assert!(
            S::ExactRepository {
                docker_repository: "h.io/ns/app".into()
            }
            .matches(None, "h.io/ns/app:v1")
        );
    }
}
