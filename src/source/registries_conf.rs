//! containers-registries.conf(5), version 2: where an image reference is
//! really pulled from (mirrors tried in order, then the registry's own
//! location), which registries are blocked or insecure, and how short
//! names resolve (aliases, `unqualified-search-registries`), as podman
//! and skopeo read the same files.
//!
//! The file is `--registries-conf FILE` or `/etc/containers/registries.conf`,
//! plus the drop-ins of `FILE.d/*.conf` in name order: a later `[[registry]]`
//! with the same prefix replaces an earlier one, later top-level keys win,
//! aliases merge.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The system-wide file.
pub const DEFAULT_PATH: &str = "/etc/containers/registries.conf";

/// Errors reading or applying registries.conf.
#[derive(Debug, thiserror::Error)]
pub enum RegistriesConfError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid registries.conf.
    #[error("{path}: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The reference's registry is blocked.
    #[error("{reference}: registry {prefix} is blocked in {path}")]
    Blocked {
        /// The reference.
        reference: String,
        /// The blocking entry's prefix.
        prefix: String,
        /// The file that says so.
        path: PathBuf,
    },
    /// A short name with several candidates and no alias.
    #[error(
        "short name {name:?} is ambiguous under short-name-mode \"enforcing\" ({path}): it could be {candidates}; use a fully qualified name or add an alias"
    )]
    Ambiguous {
        /// What the user typed.
        name: String,
        /// The possible references.
        candidates: String,
        /// The file.
        path: PathBuf,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct File {
    #[serde(default)]
    unqualified_search_registries: Option<Vec<String>>,
    #[serde(default)]
    short_name_mode: Option<String>,
    #[serde(default)]
    registry: Vec<RawRegistry>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawRegistry {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<RawMirror>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawMirror {
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    pull_from_mirror: Option<String>,
}

/// Which references a mirror serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFrom {
    /// Every reference.
    All,
    /// References by digest only.
    DigestOnly,
    /// References by tag only.
    TagOnly,
}

/// One place to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The reference rewritten for this place (`host/repo[:tag][@digest]`).
    pub reference: String,
    /// Plain HTTP and unverified TLS allowed.
    pub insecure: bool,
    /// A mirror (not the registry's own location).
    pub mirror: bool,
}

/// A registry entry.
#[derive(Debug, Clone)]
struct Registry {
    prefix: String,
    location: String,
    insecure: bool,
    blocked: bool,
    mirrors: Vec<(String, bool, PullFrom)>,
}

/// A loaded registries.conf.
#[derive(Debug, Clone)]
pub struct RegistriesConf {
    path: PathBuf,
    registries: Vec<Registry>,
    search: Vec<String>,
    enforcing: bool,
    aliases: BTreeMap<String, String>,
}

impl RegistriesConf {
    /// Load `path` (default [`DEFAULT_PATH`]) and its `.d` drop-ins.
    /// `Ok(None)`: no file at the default place (an explicit path must
    /// exist).
    pub fn load(path: Option<&Path>) -> Result<Option<RegistriesConf>, RegistriesConfError> {
        let explicit = path.is_some();
        let path = path.map_or_else(|| PathBuf::from(DEFAULT_PATH), Path::to_path_buf);
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| RegistriesConfError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let mut texts = Vec::new();
        match std::fs::metadata(&path) {
            Ok(_) => texts.push((path.clone(), read(&path)?)),
            Err(_) if !explicit => {}
            Err(source) => return Err(RegistriesConfError::Read { path, source }),
        }
        let mut dropins = PathBuf::from(&path).into_os_string();
        dropins.push(".d");
        if let Ok(dir) = std::fs::read_dir(&dropins) {
            let mut files: Vec<PathBuf> = dir
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .collect();
            files.sort();
            for f in files {
                let t = read(&f)?;
                texts.push((f, t));
            }
        }
        if texts.is_empty() {
            return Ok(None);
        }
        let mut conf = RegistriesConf {
            path: path.clone(),
            registries: Vec::new(),
            search: Vec::new(),
            enforcing: true,
            aliases: BTreeMap::new(),
        };
        for (p, t) in &texts {
            conf.merge(p, t)?;
        }
        Ok(Some(conf))
    }

    /// One file's text on top of what is loaded.
    fn merge(&mut self, path: &Path, text: &str) -> Result<(), RegistriesConfError> {
        let invalid = |detail: String| RegistriesConfError::Invalid {
            path: path.to_path_buf(),
            detail,
        };
        let file: File = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if let Some(s) = file.unqualified_search_registries {
            self.search = s;
        }
        if let Some(m) = file.short_name_mode {
            self.enforcing = match m.as_str() {
                "enforcing" => true,
                "permissive" | "disabled" => false,
                other => return Err(invalid(format!("unknown short-name-mode {other:?}"))),
            };
        }
        for r in file.registry {
            let prefix = if r.prefix.is_empty() {
                r.location.clone()
            } else {
                r.prefix.clone()
            };
            if prefix.is_empty() {
                return Err(invalid(
                    "a [[registry]] needs a location or a prefix".into(),
                ));
            }
            if prefix.starts_with("*.") && !r.location.is_empty() {
                return Err(invalid(format!(
                    "wildcard prefix {prefix:?} cannot have a location"
                )));
            }
            let mut mirrors = Vec::new();
            for m in r.mirror {
                let from = match m.pull_from_mirror.as_deref() {
                    _ if r.mirror_by_digest_only => PullFrom::DigestOnly,
                    None | Some("" | "all") => PullFrom::All,
                    Some("digest-only") => PullFrom::DigestOnly,
                    Some("tag-only") => PullFrom::TagOnly,
                    Some(other) => {
                        return Err(invalid(format!("unknown pull-from-mirror {other:?}")));
                    }
                };
                if m.location.is_empty() {
                    return Err(invalid(format!("a mirror of {prefix:?} has no location")));
                }
                mirrors.push((m.location, m.insecure, from));
            }
            self.registries.retain(|e| e.prefix != prefix);
            self.registries.push(Registry {
                location: if r.location.is_empty() {
                    prefix.clone()
                } else {
                    r.location
                },
                prefix,
                insecure: r.insecure,
                blocked: r.blocked,
                mirrors,
            });
        }
        self.aliases.extend(file.aliases);
        Ok(())
    }

    /// The entry whose prefix matches `reference` most specifically.
    fn matching(&self, reference: &str) -> Option<&Registry> {
        self.registries
            .iter()
            .filter(|r| prefix_matches(&r.prefix, reference))
            .max_by_key(|r| r.prefix.len())
    }

    /// Where to pull `reference` (fully qualified, `host/repo[:tag][@digest]`)
    /// from, in order: the mirrors that serve this kind of reference,
    /// then the registry's own location.
    pub fn pull_sources(&self, reference: &str) -> Result<Vec<Endpoint>, RegistriesConfError> {
        let Some(r) = self.matching(reference) else {
            return Ok(vec![Endpoint {
                reference: reference.to_string(),
                insecure: false,
                mirror: false,
            }]);
        };
        if r.blocked {
            return Err(RegistriesConfError::Blocked {
                reference: reference.to_string(),
                prefix: r.prefix.clone(),
                path: self.path.clone(),
            });
        }
        let by_digest = reference.contains('@');
        let rest = if r.prefix.starts_with("*.") {
            None
        } else {
            Some(&reference[r.prefix.len()..])
        };
        let rewrite = |location: &str| match rest {
            Some(rest) => format!("{location}{rest}"),
            None => reference.to_string(),
        };
        let mut out = Vec::new();
        for (location, insecure, from) in &r.mirrors {
            let serves = match from {
                PullFrom::All => true,
                PullFrom::DigestOnly => by_digest,
                PullFrom::TagOnly => !by_digest,
            };
            if serves {
                out.push(Endpoint {
                    reference: rewrite(location),
                    insecure: *insecure,
                    mirror: true,
                });
            }
        }
        out.push(Endpoint {
            reference: rewrite(&r.location),
            insecure: r.insecure,
            mirror: false,
        });
        Ok(out)
    }

    /// The fully qualified references a short name (no registry host)
    /// may mean, in the order to try them: its alias if one is set, else
    /// one per `unqualified-search-registries` entry. `Ok(None)`: the file
    /// says nothing about short names (docker.io applies, as before).
    pub fn short_name(&self, name: &str) -> Result<Option<Vec<String>>, RegistriesConfError> {
        let (repo, suffix) = split_repo(name);
        if let Some(a) = self.aliases.get(repo) {
            return Ok(Some(vec![format!("{a}{suffix}")]));
        }
        if self.search.is_empty() {
            return Ok(None);
        }
        let candidates: Vec<String> = self
            .search
            .iter()
            .map(|r| {
                if r == "docker.io" && !repo.contains('/') {
                    format!("docker.io/library/{repo}{suffix}")
                } else {
                    format!("{r}/{repo}{suffix}")
                }
            })
            .collect();
        if self.enforcing && candidates.len() > 1 {
            return Err(RegistriesConfError::Ambiguous {
                name: name.to_string(),
                candidates: candidates.join(", "),
                path: self.path.clone(),
            });
        }
        Ok(Some(candidates))
    }
}

/// `repo` and the `:tag`/`@digest` after it.
fn split_repo(name: &str) -> (&str, &str) {
    let at = name.find('@').unwrap_or(name.len());
    let colon = name[..at]
        .rfind(':')
        .filter(|c| !name[c + 1..at].contains('/'))
        .unwrap_or(at);
    name.split_at(colon.min(at))
}

/// Whether a name typed by a user has no registry host: its first
/// component has no `.` or `:` and is not `localhost`, as docker decides.
pub fn is_short_name(name: &str) -> bool {
    match name.split_once('/') {
        None => true,
        Some((first, _)) => !(first.contains('.') || first.contains(':') || first == "localhost"),
    }
}

/// containers-registries.conf(5) prefix matching: the reference starts
/// with the prefix and goes on with `/`, `:`, `@` or ends; `*.example.com`
/// matches any host under example.com.
fn prefix_matches(prefix: &str, reference: &str) -> bool {
    if let Some(domain) = prefix.strip_prefix("*.") {
        let host = reference.split('/').next().unwrap_or("");
        return host.ends_with(&format!(".{domain}"));
    }
    reference
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', ':', '@']))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> RegistriesConf {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("registries.conf");
        std::fs::write(&p, text).unwrap();
        RegistriesConf::load(Some(&p)).unwrap().unwrap()
    }

    const EXAMPLE: &str = r#"
unqualified-search-registries = ["registry.example.com"]

[[registry]]
prefix = "example.com/team"
location = "internal.example.com:5000/mirror/team"
insecure = true

[[registry.mirror]]
location = "fast.example.com/team"
pull-from-mirror = "digest-only"

[[registry.mirror]]
location = "cache.example.com/team"

[[registry]]
location = "example.com"

[[registry]]
prefix = "*.evil.example"
blocked = true

[aliases]
"app" = "example.com/team/app"
"#;

    #[test]
    fn mirrors_in_order_by_kind_of_reference_then_the_location() {
        let c = conf(EXAMPLE);
        let tag = c.pull_sources("example.com/team/app:v1").unwrap();
        let refs: Vec<&str> = tag.iter().map(|e| e.reference.as_str()).collect();
        assert_eq!(
            refs,
            [
                "cache.example.com/team/app:v1",
                "internal.example.com:5000/mirror/team/app:v1"
            ]
        );
        assert!(tag[0].mirror && !tag[1].mirror && tag[1].insecure);
        let dig = c.pull_sources("example.com/team/app@sha256:ab").unwrap();
        assert_eq!(dig.len(), 3);
        assert_eq!(dig[0].reference, "fast.example.com/team/app@sha256:ab");
        // The less specific entry for the host; a prefix is not a string prefix.
        assert_eq!(
            c.pull_sources("example.com/teams/x:1").unwrap()[0].reference,
            "example.com/teams/x:1"
        );
        assert_eq!(
            c.pull_sources("other.io/x:1").unwrap()[0].reference,
            "other.io/x:1"
        );
        let e = c.pull_sources("a.evil.example/x:1").unwrap_err();
        assert!(
            e.to_string().contains("registry *.evil.example is blocked"),
            "{e}"
        );
    }

    #[test]
    fn short_names_through_aliases_and_search_registries() {
        let c = conf(EXAMPLE);
        assert_eq!(
            c.short_name("app:v2").unwrap().unwrap(),
            ["example.com/team/app:v2"]
        );
        assert_eq!(
            c.short_name("tool@sha256:ab").unwrap().unwrap(),
            ["registry.example.com/tool@sha256:ab"]
        );
        let two = conf("unqualified-search-registries = [\"a.io\", \"docker.io\"]\n");
        let e = two.short_name("busybox").unwrap_err();
        assert!(
            e.to_string()
                .contains("a.io/busybox, docker.io/library/busybox"),
            "{e}"
        );
        let permissive = conf(
            "unqualified-search-registries = [\"a.io\", \"docker.io\"]\nshort-name-mode = \"permissive\"\n",
        );
        assert_eq!(permissive.short_name("busybox").unwrap().unwrap().len(), 2);
        assert!(conf("").short_name("x").unwrap().is_none());
        assert!(is_short_name("busybox") && is_short_name("library/busybox"));
        assert!(!is_short_name("localhost/x") && !is_short_name("127.0.0.1:5000/x"));
    }

    #[test]
    fn dropins_override_by_prefix_and_bad_files_name_themselves() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("registries.conf");
        std::fs::write(&p, "[[registry]]\nlocation = \"a.io\"\nblocked = true\n").unwrap();
        std::fs::create_dir(d.path().join("registries.conf.d")).unwrap();
        std::fs::write(
            d.path().join("registries.conf.d/10-unblock.conf"),
            "[[registry]]\nlocation = \"a.io\"\n",
        )
        .unwrap();
        let c = RegistriesConf::load(Some(&p)).unwrap().unwrap();
        assert!(c.pull_sources("a.io/x:1").is_ok());
        std::fs::write(
            d.path().join("registries.conf.d/20-bad.conf"),
            "[[registry]]\nprefix = 5\n",
        )
        .unwrap();
        let e = RegistriesConf::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("20-bad.conf"), "{e}");
        let e = RegistriesConf::load(Some(&d.path().join("none.conf")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.conf"), "{e}");
    }
}
