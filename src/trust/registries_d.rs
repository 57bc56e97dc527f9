//! containers-registries.d(5): where an image's signatures live. The
//! directory's `*.yaml` files are merged (a scope may be configured once);
//! for an image the most specific `docker` scope that sets a value wins,
//! then `default-docker`, then the built-in default directory, as
//! containers/image resolves them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::TrustError;
use super::identity::DockerRef;

#[derive(Debug, Clone, Default, Deserialize)]
struct Namespace {
    lookaside: Option<String>,
    #[serde(rename = "lookaside-staging")]
    _lookaside_staging: Option<String>,
    /// The old name of `lookaside`.
    sigstore: Option<String>,
    #[serde(rename = "sigstore-staging")]
    _sigstore_staging: Option<String>,
    #[serde(rename = "use-sigstore-attachments")]
    use_sigstore_attachments: Option<bool>,
}

impl Namespace {
    fn lookaside(&self) -> Option<&str> {
        self.lookaside
            .as_deref()
            .or(self.sigstore.as_deref())
            .filter(|s| !s.is_empty())
    }
}

#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(rename = "default-docker")]
    default_docker: Option<Namespace>,
    docker: Option<BTreeMap<String, Namespace>>,
}

/// The merged configuration of a registries.d directory.
#[derive(Debug, Clone, Default)]
pub struct RegistriesD {
    /// The directory (for messages).
    pub dir: Option<PathBuf>,
    default_docker: Option<Namespace>,
    docker: BTreeMap<String, Namespace>,
}

impl RegistriesD {
    /// Load every `*.yaml` file of `dir` (a missing directory is an empty
    /// configuration).
    pub fn load(dir: &Path) -> Result<RegistriesD, TrustError> {
        let mut out = RegistriesD {
            dir: Some(dir.to_path_buf()),
            ..Default::default()
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(source) => {
                return Err(TrustError::Read {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for path in files {
            let bytes = std::fs::read(&path).map_err(|source| TrustError::Read {
                path: path.clone(),
                source,
            })?;
            let bad = |why: String| TrustError::BadRegistriesD {
                path: path.clone(),
                why,
            };
            let file: File = if bytes.iter().all(u8::is_ascii_whitespace) {
                File::default()
            } else {
                serde_norway::from_slice(&bytes).map_err(|e| bad(e.to_string()))?
            };
            if let Some(d) = file.default_docker {
                if out.default_docker.is_some() {
                    return Err(bad("a second default-docker section".into()));
                }
                out.default_docker = Some(d);
            }
            for (scope, ns) in file.docker.unwrap_or_default() {
                if out.docker.insert(scope.clone(), ns).is_some() {
                    return Err(bad(format!("scope {scope} is configured twice")));
                }
            }
        }
        Ok(out)
    }

    fn sections<'a>(&'a self, r: &DockerRef) -> impl Iterator<Item = &'a Namespace> {
        let mut scopes = vec![r.policy_identity()];
        scopes.extend(r.namespaces());
        scopes
            .into_iter()
            .filter_map(|s| self.docker.get(&s))
            .chain(self.default_docker.as_ref())
    }

    /// The signature storage for `r`: the configured lookaside URL with
    /// the repository path appended, or the built-in default directory.
    pub fn lookaside_base(&self, r: &DockerRef) -> String {
        let top = self
            .sections(r)
            .find_map(Namespace::lookaside)
            .map(str::to_string)
            .unwrap_or_else(default_lookaside);
        format!("{}/{}", top.trim_end_matches('/'), r.path())
    }

    /// Whether sigstore attachments are read for `r`.
    pub fn use_sigstore_attachments(&self, r: &DockerRef) -> bool {
        self.sections(r)
            .find_map(|n| n.use_sigstore_attachments)
            .unwrap_or(false)
    }
}

/// containers/image's built-in signature directory: for root
/// `/var/lib/containers/sigstore`, for others under `$HOME`.
fn default_lookaside() -> String {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return "file:///var/lib/containers/sigstore".into();
    }
    let home = std::env::var("HOME").unwrap_or_default();
    format!("file://{home}/.local/share/containers/sigstore")
}

/// The default directory: `$HOME/.config/containers/registries.d` if it
/// exists, otherwise `/etc/containers/registries.d`.
pub fn default_dir() -> PathBuf {
    if let Ok(home) = std::env::var("HOME") {
        let user = Path::new(&home).join(".config/containers/registries.d");
        if user.is_dir() {
            return user;
        }
    }
    PathBuf::from("/etc/containers/registries.d")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_scope_that_sets_a_value_wins() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("a.yaml"),
            "docker:\n  h.io:5000:\n    lookaside: file:///sigs/host\n  h.io:5000/ns/app:\n    use-sigstore-attachments: true\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("b.yaml"),
            "default-docker:\n  sigstore: https://sigs.example/top/\n  use-sigstore-attachments: false\n",
        )
        .unwrap();
        std::fs::write(d.path().join("ignored.txt"), "not: [yaml").unwrap();
        let c = RegistriesD::load(d.path()).unwrap();
        let r = |s: &str| DockerRef::parse(s).unwrap();
        // The repository scope sets no lookaside: the host's applies.
        assert_eq!(
            c.lookaside_base(&r("h.io:5000/ns/app:v1")),
            "file:///sigs/host/ns/app"
        );
        assert!(c.use_sigstore_attachments(&r("h.io:5000/ns/app:v1")));
        assert!(!c.use_sigstore_attachments(&r("h.io:5000/ns/other:v1")));
        assert_eq!(
            c.lookaside_base(&r("docker.io/library/busybox")),
            "https://sigs.example/top/library/busybox"
        );
    }

    #[test]
    fn conflicts_and_bad_yaml_are_errors_and_no_directory_is_empty() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("a.yaml"),
            "docker:\n  h.io:\n    lookaside: file:///a\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("b.yaml"),
            "docker:\n  h.io:\n    lookaside: file:///b\n",
        )
        .unwrap();
        let e = RegistriesD::load(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("h.io is configured twice") && e.contains("b.yaml"),
            "{e}"
        );
        std::fs::write(d.path().join("b.yaml"), "docker: [1, 2").unwrap();
        assert!(RegistriesD::load(d.path()).is_err());
        let none = RegistriesD::load(&d.path().join("missing")).unwrap();
        assert_eq!(
            none.lookaside_base(&DockerRef::parse("h.io/x").unwrap()),
            format!("{}/x", default_lookaside())
        );
    }
}
