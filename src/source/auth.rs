//! Registry credentials from docker's `config.json`, as `docker login` and
//! `skopeo login --authfile` write it.
//!
//! Lookup order for a registry host: `--username`/`--password-stdin` (handled
//! by the caller), then `credHelpers[host]`, then `auths[host]` (also under the
//! `https://host` and Docker Hub's legacy keys), then `credsStore`. Helpers are
//! run as `docker-credential-NAME get`, as docker does.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::Deserialize;

/// Errors reading credentials.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The config file exists but could not be read.
    #[error("reading docker config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The config file is not valid JSON of the expected shape.
    #[error("parsing docker config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// An `auth` field is not base64 of `user:password`.
    #[error("docker config {path}: the auth entry for {registry} is not base64 of USER:PASSWORD")]
    BadAuthField {
        /// The file.
        path: PathBuf,
        /// Which entry.
        registry: String,
    },
    /// A credential helper failed.
    #[error("credential helper docker-credential-{helper} for {registry}: {detail}")]
    Helper {
        /// The helper's name.
        helper: String,
        /// The registry asked about.
        registry: String,
        /// What went wrong.
        detail: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// A username and password (or token) for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or access token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

/// The docker config file to read: `explicit` (`--authfile`), else
/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

/// Keys under which `auths` may list `registry`.
fn candidate_keys(registry: &str) -> Vec<String> {
    let mut keys = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v2/"),
        format!("https://{registry}/v1/"),
    ];
    if matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        keys.extend(
            [
                "https://index.docker.io/v1/",
                "index.docker.io",
                "docker.io",
                "registry-1.docker.io",
            ]
            .map(String::from),
        );
    }
    keys
}

/// Credentials for `registry` from the docker config at `path`, if any. A
/// missing file means no credentials; a broken one is an error.
pub fn lookup(path: &Path, registry: &str) -> Result<Option<Credentials>, AuthError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AuthError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let cfg: DockerConfigFile =
        serde_json::from_slice(&bytes).map_err(|source| AuthError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
    let keys = candidate_keys(registry);
    if let Some(helper) = keys.iter().find_map(|k| cfg.cred_helpers.get(k)) {
        return run_helper(helper, registry);
    }
    for key in &keys {
        let Some(entry) = cfg.auths.get(key) else {
            continue;
        };
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let bad = || AuthError::BadAuthField {
                path: path.to_path_buf(),
                registry: key.clone(),
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad())?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
            let (u, p) = decoded.split_once(':').ok_or_else(bad)?;
            return Ok(Some(Credentials {
                username: u.to_string(),
                password: p.to_string(),
            }));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            }));
        }
        if entry.identitytoken.is_some() {
            tracing::warn!(
                registry,
                "docker config has only an identity token for this registry; \
                 ocidisk cannot use OAuth refresh tokens, continuing anonymously"
            );
        }
    }
    match &cfg.creds_store {
        Some(store) if !store.is_empty() => run_helper(store, registry),
        _ => Ok(None),
    }
}

fn run_helper(helper: &str, registry: &str) -> Result<Option<Credentials>, AuthError> {
    let err = |detail: String| AuthError::Helper {
        helper: helper.to_string(),
        registry: registry.to_string(),
        detail,
    };
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run {program}: {e}")))?;
    let server = if matches!(registry, "docker.io" | "index.docker.io") {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .map_err(|e| err(format!("writing to {program}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("waiting for {program}: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Helpers answer "credentials not found in native keychain" for unknown servers.
        if stdout.contains("not found")
            || String::from_utf8_lossy(&out.stderr).contains("not found")
        {
            return Ok(None);
        }
        return Err(err(format!(
            "exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    #[derive(Deserialize)]
    struct HelperAnswer {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let a: HelperAnswer =
        serde_json::from_str(&stdout).map_err(|e| err(format!("unreadable answer: {e}")))?;
    Ok(Some(Credentials {
        username: a.username,
        password: a.secret,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, json: &str) -> PathBuf {
        let p = dir.join("config.json");
        std::fs::write(&p, json).unwrap();
        p
    }

    #[test]
    fn reads_auth_and_username_password_entries() {
        let d = tempfile::tempdir().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3:cret");
        let p = write(
            d.path(),
            &format!(
                r#"{{"auths":{{"https://127.0.0.1:5000":{{"auth":"{b64}"}},
                   "quay.io":{{"username":"bob","password":"pw"}},
                   "https://index.docker.io/v1/":{{"auth":"{b64}"}}}}}}"#
            ),
        );
        let c = lookup(&p, "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "s3:cret")
        );
        assert_eq!(lookup(&p, "quay.io").unwrap().unwrap().username, "bob");
        assert_eq!(
            lookup(&p, "index.docker.io").unwrap().unwrap().username,
            "alice"
        );
        assert!(lookup(&p, "ghcr.io").unwrap().is_none());
        assert!(!format!("{c:?}").contains("s3:cret"));
    }

    #[test]
    fn missing_file_is_no_credentials_but_broken_file_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(lookup(&d.path().join("nope.json"), "x").unwrap().is_none());
        let p = write(d.path(), "{not json");
        let e = lookup(&p, "x").unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
        let p = write(d.path(), r#"{"auths":{"x":{"auth":"!!!"}}}"#);
        assert!(matches!(
            lookup(&p, "x").unwrap_err(),
            AuthError::BadAuthField { .. }
        ));
    }

    #[test]
    fn missing_helper_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), r#"{"credsStore":"ocidisk-test-none"}"#);
        let e = lookup(&p, "x").unwrap_err().to_string();
        assert!(e.contains("docker-credential-ocidisk-test-none"), "{e}");
    }
}
