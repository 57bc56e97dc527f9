//! What the user typed, parsed into where the image is: the transports
//! skopeo names (`docker://` or bare, `oci:`, `docker-archive:`) and
//! `containerd:`, and the identity a trust policy matches them by.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::SourceError;
use super::archive::ArchiveSelector;
use super::mirrors::MirrorsError;
use super::registries_conf::{RegistriesConf, is_short_name};
use crate::trust::{DockerRef, Subject};

/// Where an image is, as the user named it.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageLocation {
    /// A registry reference, normalised as docker does.
    Registry(oci_client::Reference),
    /// An OCI image layout directory.
    Layout {
        /// The directory.
        dir: PathBuf,
        /// The tag in `index.json`.
        tag: Option<String>,
    },
    /// A `docker save` archive.
    Archive {
        /// The tar file.
        file: PathBuf,
        /// Which image in it.
        selector: Option<ArchiveSelector>,
    },
    /// An image in containerd: `[NAMESPACE/]NAME`.
    Containerd(String),
}

impl FromStr for ImageLocation {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| SourceError::BadReference {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = match rest.split_once(':') {
                Some((d, t)) => (d, Some(t).filter(|t| !t.is_empty())),
                None => (rest, None),
            };
            if dir.is_empty() {
                return Err(bad("oci: needs a directory, as oci:DIR[:TAG]"));
            }
            return Ok(ImageLocation::Layout {
                dir: PathBuf::from(dir),
                tag: tag.map(str::to_string),
            });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (file, sel) = match rest.split_once(':') {
                Some((f, sel)) => (f, Some(sel).filter(|s| !s.is_empty())),
                None => (rest, None),
            };
            if file.is_empty() {
                return Err(bad(
                    "docker-archive: needs a file, as docker-archive:FILE[:NAME:TAG]",
                ));
            }
            let selector = match sel {
                None => None,
                Some(n) => match n.strip_prefix('@') {
                    Some(i) => Some(ArchiveSelector::Index(
                        i.parse().map_err(|_| bad("@INDEX must be a number"))?,
                    )),
                    None => Some(ArchiveSelector::Name(n.to_string())),
                },
            };
            return Ok(ImageLocation::Archive {
                file: PathBuf::from(file),
                selector,
            });
        }
        if let Some(rest) = s.strip_prefix("containerd:") {
            if rest.is_empty() || rest.ends_with('/') {
                return Err(bad(
                    "containerd: needs an image name, as containerd:[NS/]NAME",
                ));
            }
            return Ok(ImageLocation::Containerd(rest.to_string()));
        }
        for t in [
            "dir:",
            "oci-archive:",
            "docker-daemon:",
            "containers-storage:",
            "ostree:",
            "sif:",
        ] {
            if s.starts_with(t) {
                return Err(SourceError::UnsupportedTransport(
                    t.trim_end_matches(':').into(),
                ));
            }
        }
        let r = s.strip_prefix("docker://").unwrap_or(s);
        if r.is_empty() {
            return Err(bad("empty reference"));
        }
        super::reference::parse(r)
            .map(ImageLocation::Registry)
            .map_err(bad)
    }
}

impl ImageLocation {
    /// Parse what the user typed; a registry short name (no host) goes
    /// through registries.conf's aliases and search registries as podman
    /// resolves it. Returns the location and the further references to
    /// try in order when its places do not have the image.
    pub fn resolve_short_name(
        typed: &str,
        conf: Option<&RegistriesConf>,
    ) -> Result<(ImageLocation, Vec<oci_client::Reference>), SourceError> {
        let location: ImageLocation = typed.parse()?;
        let name = typed.strip_prefix("docker://").unwrap_or(typed);
        let (ImageLocation::Registry(_), Some(conf)) = (&location, conf) else {
            return Ok((location, Vec::new()));
        };
        if !is_short_name(name) {
            return Ok((location, Vec::new()));
        }
        let Some(candidates) = conf
            .short_name(name)
            .map_err(|e| SourceError::Mirrors(MirrorsError::Conf(e)))?
        else {
            return Ok((location, Vec::new()));
        };
        let mut refs = Vec::new();
        for c in candidates {
            if let ImageLocation::Registry(r) = c.parse::<ImageLocation>()? {
                refs.push(r);
            }
        }
        if refs.is_empty() {
            return Ok((location, refs));
        }
        let first = refs.remove(0);
        tracing::info!(short = name, resolved = %first.whole(), "short name");
        Ok((ImageLocation::Registry(first), refs))
    }

    /// The image as a trust policy sees it: its transport and identity
    /// (an OCI layout by its absolute, symlink-free directory).
    pub fn subject(&self) -> Result<Subject, SourceError> {
        Ok(match self {
            ImageLocation::Registry(r) => {
                Subject::Docker(DockerRef::parse(&r.whole()).ok_or_else(|| {
                    SourceError::BadReference {
                        input: r.whole(),
                        reason: "not a docker reference a policy can match".into(),
                    }
                })?)
            }
            ImageLocation::Layout { dir, .. } => Subject::Oci(std::fs::canonicalize(dir).map_err(
                |e| SourceError::BadReference {
                    input: self.to_string(),
                    reason: format!("resolving {}: {e}", dir.display()),
                },
            )?),
            ImageLocation::Archive { .. } => Subject::DockerArchive,
            // What a policy sees is the name inside containerd, known once
            // the source is open: see `resolve`.
            ImageLocation::Containerd(name) => {
                Subject::Docker(DockerRef::parse(name).ok_or_else(|| {
                    SourceError::BadReference {
                        input: self.to_string(),
                        reason: "not a docker reference a policy can match".into(),
                    }
                })?)
            }
        })
    }
}

impl fmt::Display for ImageLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageLocation::Registry(r) => write!(f, "{}", r.whole()),
            ImageLocation::Layout { dir, tag } => {
                write!(f, "oci:{}", dir.display())?;
                match tag {
                    Some(t) => write!(f, ":{t}"),
                    None => Ok(()),
                }
            }
            ImageLocation::Archive { file, selector } => {
                write!(f, "docker-archive:{}", file.display())?;
                match selector {
                    Some(ArchiveSelector::Name(n)) => write!(f, ":{n}"),
                    Some(ArchiveSelector::Index(i)) => write!(f, ":@{i}"),
                    None => Ok(()),
                }
            }
            ImageLocation::Containerd(r) => write!(f, "containerd:{r}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> String {
        match s.parse::<ImageLocation>().unwrap() {
            ImageLocation::Registry(r) => r.whole(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn registry_references_normalise_like_docker() {
        assert_eq!(reg("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(reg("docker://alpine:3.20"), "docker.io/library/alpine:3.20");
        assert_eq!(reg("quay.io/org/img:tag"), "quay.io/org/img:tag");
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            reg(&format!("localhost:5000/img@{d}")),
            format!("localhost:5000/img@{d}")
        );
        assert_eq!(
            reg(&format!("img:1.0@{d}")),
            format!("docker.io/library/img:1.0@{d}")
        );
        for bad in ["", "upper/CASE", "img@sha256:abc", "a b"] {
            assert!(bad.parse::<ImageLocation>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn local_transports() {
        assert_eq!(
            "oci:/tmp/lay:v1".parse::<ImageLocation>().unwrap(),
            ImageLocation::Layout {
                dir: "/tmp/lay".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            "oci:lay".parse::<ImageLocation>().unwrap(),
            ImageLocation::Layout {
                dir: "lay".into(),
                tag: None
            }
        );
        assert_eq!(
            "docker-archive:/x.tar:alpine:3"
                .parse::<ImageLocation>()
                .unwrap(),
            ImageLocation::Archive {
                file: "/x.tar".into(),
                selector: Some(ArchiveSelector::Name("alpine:3".into()))
            }
        );
        assert_eq!(
            "docker-archive:x.tar:@1".parse::<ImageLocation>().unwrap(),
            ImageLocation::Archive {
                file: "x.tar".into(),
                selector: Some(ArchiveSelector::Index(1))
            }
        );
        assert!(matches!(
            "containers-storage:foo".parse::<ImageLocation>(),
            Err(SourceError::UnsupportedTransport(_))
        ));
        assert!("oci:".parse::<ImageLocation>().is_err());
        assert_eq!(
            "oci:/tmp/lay:v1"
                .parse::<ImageLocation>()
                .unwrap()
                .to_string(),
            "oci:/tmp/lay:v1"
        );
    }
}
