//! A real, local OCI distribution registry (`docker-registry`, distribution 2.8)
//! for integration tests.
//!
//! Every [`Registry`] is its own `docker-registry serve` child process bound to
//! `127.0.0.1` on a free port, with its storage, configuration, TLS material
//! and log file in a private temporary directory that disappears with the
//! value. Two flavours exist:
//!
//! * [`Registry::start`]: plain HTTP, no authentication.
//! * [`Registry::start_token_auth`]: plain HTTP with token auth (the
//!   distribution token spec) against a [`TokenService`] of the test's own.
//! * [`Registry::start_tls_auth`]: HTTPS with a certificate issued by a
//!   throw-away CA (generated with the `openssl` CLI; the server certificate
//!   has `subjectAltName = IP:127.0.0.1, DNS:localhost`) and htpasswd (bcrypt)
//!   basic authentication. The CA certificate ([`Registry::ca_cert`]) is what
//!   clients must trust. A separate CA is used instead of a single
//!   self-signed leaf because webpki/rustls rejects a `CA:TRUE` certificate
//!   presented as the server's end-entity certificate.
//!
//! Images are pushed with `skopeo` ([`Registry::push`], which passes
//! `--preserve-digests` so the registry holds exactly the layout's bytes;
//! without it skopeo gzip-compresses uncompressed layers on the way to a
//! registry) or byte for byte with a small `curl`-based uploader
//! ([`Registry::push_layout_raw`]) that validates and converts nothing.
//! skopeo 1.9 itself pushes wrong diff_ids and unknown layer media types
//! unchanged, but it verifies blob digests while copying.
//!
//! [`Registry::requests`] parses the registry's access log (one
//! Apache-combined-format line per request, whatever its status; the
//! application's `msg="response completed"` lines only cover successful
//! responses, errors are logged as `"response completed with error"`), so
//! tests can assert which manifests and blobs a client fetched and how many
//! bytes were sent.
//!
//! Every external command runs with a timeout ([`run_with_timeout`]); a test
//! never hangs forever.
#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::token::TokenService;

/// User agent of the readiness probes; their requests are left out of
/// [`Registry::requests`].
pub const PROBE_USER_AGENT: &str = "ocidisk-test-readiness-probe";

/// How long to wait for a (re)started registry to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Default timeout for skopeo/curl invocations.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

/// Captured result of [`run_with_timeout`].
#[derive(Debug)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Runs `cmd` with stdin closed and stdout/stderr captured. Kills it and
/// panics if it is still running after `timeout`. Panics if it cannot be
/// spawned. A non-zero exit status is *not* an error here.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let description = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {description}: {e}"));
    let mut out_pipe = child.stdout.take().expect("stdout pipe");
    let mut err_pipe = child.stderr.take().expect("stderr pipe");
    let out_thread = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_thread = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                // Not joining the readers: a grandchild may still hold the pipes.
                panic!("timed out after {timeout:?}: {description}");
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for {description}: {e}"),
        }
    };
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    CmdOutput {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Like [`run_with_timeout`] but panics (with stderr) unless the command
/// exits successfully.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let description = format!("{cmd:?}");
    let out = run_with_timeout(cmd, timeout);
    assert!(
        out.success(),
        "command failed ({}): {description}\nstdout: {}\nstderr: {}",
        out.status,
        out.stdout,
        out.stderr
    );
    out
}

/// One request from the registry's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    /// `GET`, `HEAD`, `PUT`, `POST`, `PATCH`, `DELETE`.
    pub method: String,
    /// Request URI as sent (path plus query), e.g. `/v2/repo/blobs/sha256:…`.
    pub uri: String,
    /// HTTP status the registry answered with.
    pub status: u16,
    /// Response body bytes the handler wrote. Note: for `HEAD` requests the
    /// registry reports the length of the body it *would* have sent.
    pub bytes: u64,
    /// The client's `User-Agent`.
    pub user_agent: String,
}

impl LoggedRequest {
    /// True for `GET|HEAD /v2/<repo>/blobs/<digest>` (not uploads).
    pub fn is_blob_fetch(&self) -> bool {
        (self.method == "GET" || self.method == "HEAD")
            && self.uri.starts_with("/v2/")
            && self.uri.contains("/blobs/")
            && !self.uri.contains("/blobs/uploads")
    }

    /// True for requests on `/v2/<repo>/manifests/<reference>`.
    pub fn is_manifest(&self) -> bool {
        self.uri.starts_with("/v2/") && self.uri.contains("/manifests/")
    }

    /// The digest or tag at the end of a blob or manifest URI.
    pub fn reference(&self) -> Option<&str> {
        let path = self.uri.split('?').next().unwrap_or("");
        ["/blobs/", "/manifests/"]
            .iter()
            .find_map(|marker| path.rfind(marker).map(|i| &path[i + marker.len()..]))
    }
}

/// Parses one access-log line, e.g.
/// `127.0.0.1 - - [26/Nov/2026:17:10:57 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"`.
pub fn parse_access_log_line(line: &str) -> Option<LoggedRequest> {
    if line.starts_with("time=") {
        return None;
    }
    let start = line.find("] \"")? + 3;
    let rest = &line[start..];
    let end = rest.find('"')?;
    let mut request = rest[..end].split(' ');
    let method = request.next()?.to_string();
    let uri = request.next()?.to_string();
    let rest = rest[end + 1..].trim_start();
    let mut fields = rest.splitn(3, ' ');
    let status = fields.next()?.parse().ok()?;
    let bytes = match fields.next()? {
        "-" => 0,
        n => n.parse().ok()?,
    };
    // What remains is `"referer" "user agent"`; the agent is the last quoted field.
    let tail = fields.next().unwrap_or("").trim_end();
    let user_agent = tail
        .strip_suffix('"')
        .and_then(|t| t.rfind(" \"").map(|i| t[i + 2..].replace("\\\"", "\"")))
        .unwrap_or_default();
    Some(LoggedRequest {
        method,
        uri,
        status,
        bytes,
        user_agent,
    })
}

struct Tls {
    ca_cert: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    /// Directory holding `ca.crt`, for skopeo's `--*cert-dir`.
    cert_dir: PathBuf,
}

/// A running `docker-registry` child process; see the module docs.
pub struct Registry {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    tls: Option<Tls>,
    credentials: Option<(String, String)>,
    /// Pull-through cache of this upstream URL (`proxy: remoteurl`).
    upstream: Option<String>,
    /// Token auth against this service (instead of htpasswd).
    token: Option<TokenService>,
    /// The token service's key and certificate.
    token_dir: Option<TempDir>,
}

impl Registry {
    /// Plain HTTP registry on `127.0.0.1` with a free port and a temporary
    /// storage directory.
    pub fn start() -> Registry {
        Self::launch(false, None)
    }

    /// HTTPS registry (certificate from a throw-away CA, SAN `IP:127.0.0.1`
    /// and `DNS:localhost`) open to all.
    pub fn start_tls() -> Registry {
        Self::launch(true, None)
    }

    /// HTTPS registry (certificate from a throw-away CA, SAN `IP:127.0.0.1`
    /// and `DNS:localhost`) with htpasswd basic auth for `user`/`password`.
    pub fn start_tls_auth(user: &str, password: &str) -> Registry {
        Self::launch(true, Some((user.to_string(), password.to_string())))
    }

    /// Plain HTTP registry whose clients need a token from a
    /// [`TokenService`] granting `repository` to `user`/`password`.
    pub fn start_token_auth(repository: &str, user: &str, password: &str) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("ocidisk-token-")
            .tempdir()
            .expect("create token service dir");
        let token = TokenService::start(dir.path(), repository, user, password);
        let mut r = Self::launch_full(
            false,
            Some((user.to_string(), password.to_string())),
            None,
            Some(token),
        );
        r.token_dir = Some(dir);
        r
    }

    /// The token service of a [`Registry::start_token_auth`] registry.
    pub fn token_service(&self) -> Option<&TokenService> {
        self.token.as_ref()
    }

    /// Plain HTTP pull-through cache (distribution's `proxy: remoteurl`)
    /// of `upstream` (e.g. another test registry's [`Registry::url`]).
    pub fn start_mirror_of(upstream: &str) -> Registry {
        Self::launch_with(false, None, Some(upstream.to_string()))
    }

    fn launch(tls: bool, credentials: Option<(String, String)>) -> Registry {
        Self::launch_with(tls, credentials, None)
    }

    fn launch_with(
        tls: bool,
        credentials: Option<(String, String)>,
        upstream: Option<String>,
    ) -> Registry {
        Self::launch_full(tls, credentials, upstream, None)
    }

    fn launch_full(
        tls: bool,
        credentials: Option<(String, String)>,
        upstream: Option<String>,
        token: Option<TokenService>,
    ) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("ocidisk-registry-")
            .tempdir()
            .expect("create registry temp dir");
        fs::create_dir_all(dir.path().join("storage")).expect("create storage dir");
        let tls = tls.then(|| generate_tls(dir.path()));
        if let Some((user, password)) = credentials.as_ref().filter(|_| token.is_none()) {
            let out = run_ok(
                Command::new("htpasswd").args(["-Bbn", user, password]),
                Duration::from_secs(60),
            );
            fs::write(
                dir.path().join("htpasswd"),
                out.stdout.trim_end().to_string() + "\n",
            )
            .expect("write htpasswd file");
        }
        let mut registry = Registry {
            child: None,
            dir,
            port: 0,
            tls,
            credentials,
            upstream,
            token,
            token_dir: None,
        };
        // The port is picked by binding :0 and releasing it, so another process
        // could grab it before the registry binds; retry on that race.
        let mut last_error = String::new();
        for _ in 0..5 {
            registry.port = free_port();
            registry.write_config();
            // A failed attempt's log must not decide about the next one.
            let _ = fs::remove_file(registry.log_path());
            registry.spawn();
            match registry.wait_ready() {
                Ok(()) => return registry,
                Err(e) => {
                    registry.kill_child();
                    if !e.contains("address already in use") {
                        panic!("registry did not start: {e}");
                    }
                    last_error = e;
                }
            }
        }
        panic!("registry did not start after 5 attempts: {last_error}");
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// PEM of the CA that issued the server certificate (TLS registries only).
    pub fn ca_cert(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|t| t.ca_cert.clone())
    }

    /// Directory containing `ca.crt`, in the layout skopeo's `--cert-dir`
    /// expects (TLS registries only).
    pub fn cert_dir(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|t| t.cert_dir.clone())
    }

    pub fn credentials(&self) -> Option<(String, String)> {
        self.credentials.clone()
    }

    /// The registry's `rootdirectory`.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry's combined stdout/stderr log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// Full text of the registry log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// skopeo connection flags for this registry. `prefix` is `""` for
    /// `skopeo inspect`, `"src-"` or `"dest-"` for `skopeo copy`. Plain
    /// registries get `--tls-verify=false`; TLS ones `--cert-dir` (the
    /// certificate *is* verified) and, with auth, `--creds USER:PASS`.
    pub fn skopeo_flags(&self, prefix: &str) -> Vec<String> {
        let mut flags = Vec::new();
        match &self.tls {
            None => flags.push(format!("--{prefix}tls-verify=false")),
            Some(tls) => {
                flags.push(format!("--{prefix}tls-verify=true"));
                flags.push(format!("--{prefix}cert-dir={}", tls.cert_dir.display()));
            }
        }
        match &self.credentials {
            Some((user, password)) => flags.push(format!("--{prefix}creds={user}:{password}")),
            None => flags.push(format!("--{prefix}no-creds")),
        }
        flags
    }

    /// `skopeo copy --preserve-digests [--all] SRC docker://HOST/DEST` with
    /// the right TLS and credential flags. Panics with skopeo's stderr on
    /// failure. `--preserve-digests` makes the registry hold exactly the
    /// source's manifests and blobs: without it skopeo gzip-compresses
    /// uncompressed layers on the way to a registry (new digests).
    pub fn push(&self, src: &str, dest: &str, all: bool) {
        let mut extra = vec!["--preserve-digests"];
        if all {
            extra.push("--all");
        }
        self.push_with(src, dest, &extra);
    }

    /// `skopeo copy` to this registry with only the connection flags plus
    /// `extra_args` (e.g. `["--format", "v2s2"]` to convert to Docker media
    /// types, or `["--preserve-digests", "--all"]`).
    pub fn push_with(&self, src: &str, dest: &str, extra_args: &[&str]) {
        let out = self.try_push_with(src, dest, extra_args);
        assert!(
            out.success(),
            "skopeo copy {src} -> {}/{dest} failed ({}):\n{}",
            self.host(),
            out.status,
            out.stderr
        );
    }

    /// Like [`Registry::push_with`] but returns skopeo's output instead of
    /// panicking on failure.
    pub fn try_push_with(&self, src: &str, dest: &str, extra_args: &[&str]) -> CmdOutput {
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "--command-timeout", "300s", "copy"])
            .args(self.skopeo_flags("dest-"))
            .args(extra_args)
            .arg(src)
            .arg(format!("docker://{}/{dest}", self.host()));
        run_with_timeout(&mut cmd, TOOL_TIMEOUT)
    }

    /// `skopeo inspect [--raw] docker://HOST/REFERENCE` with this registry's
    /// flags; `Ok(stdout)` or `Err(stderr)`.
    pub fn skopeo_inspect(&self, reference: &str, raw: bool) -> Result<String, String> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["--command-timeout", "120s", "inspect"])
            .args(self.skopeo_flags(""));
        if raw {
            cmd.arg("--raw");
        }
        cmd.arg(format!("docker://{}/{reference}", self.host()));
        let out = run_with_timeout(&mut cmd, TOOL_TIMEOUT);
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(out.stderr)
        }
    }

    /// Uploads an image (or index) from the OCI layout at `layout` to
    /// `REPO:TAG` *byte for byte*: every blob referenced by the manifest (or
    /// by every manifest of the index) via monolithic `POST`+`PUT` uploads,
    /// then the child manifests by digest, then the top-level manifest under
    /// `tag`. Nothing is validated or converted, so this is how tests put
    /// deliberately broken images (wrong diff_ids, odd media types,
    /// uncompressed layers) into the registry. Panics on any HTTP failure.
    pub fn push_layout_raw(&self, layout: &Path, digest: &str, repo: &str, tag: &str) {
        let bytes = read_blob(layout, digest);
        let doc: serde_json::Value =
            serde_json::from_slice(&bytes).expect("manifest/index is JSON");
        let media_type = doc["mediaType"].as_str().unwrap_or_default().to_string();
        if let Some(manifests) = doc["manifests"].as_array() {
            for child in manifests {
                let child_digest = child["digest"].as_str().expect("child digest");
                let child_bytes = read_blob(layout, child_digest);
                let child_doc: serde_json::Value =
                    serde_json::from_slice(&child_bytes).expect("child manifest is JSON");
                self.upload_manifest_blobs(layout, &child_doc, repo);
                let child_type = child["mediaType"].as_str().expect("child mediaType");
                self.put_manifest(repo, child_digest, child_type, &child_bytes);
            }
        } else {
            self.upload_manifest_blobs(layout, &doc, repo);
        }
        self.put_manifest(repo, tag, &media_type, &bytes);
    }

    fn upload_manifest_blobs(&self, layout: &Path, manifest: &serde_json::Value, repo: &str) {
        let mut digests = vec![
            manifest["config"]["digest"]
                .as_str()
                .expect("config digest"),
        ];
        for layer in manifest["layers"].as_array().expect("layers array") {
            digests.push(layer["digest"].as_str().expect("layer digest"));
        }
        for digest in digests {
            self.upload_blob(repo, digest, &layout.join(blob_rel_path(digest)));
        }
    }

    /// Monolithic blob upload of the file at `path` under `digest` (which is
    /// not checked against the content here; the registry checks it).
    pub fn upload_blob(&self, repo: &str, digest: &str, path: &Path) {
        let start = self.curl(&[
            "-X",
            "POST",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("{}/v2/{repo}/blobs/uploads/", self.url()),
        ]);
        assert!(
            start.stdout.contains(" 202"),
            "upload start failed: {}",
            start.stdout
        );
        let location = start
            .stdout
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("location")
                    .then(|| value.trim().to_string())
            })
            .expect("Location header in upload response");
        let location = if location.starts_with('/') {
            format!("{}{location}", self.url())
        } else {
            location
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = self.curl(&[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", path.display()),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{location}{separator}digest={digest}"),
        ]);
        assert_eq!(put.stdout.trim(), "201", "blob upload {digest} failed");
    }

    /// `PUT /v2/REPO/manifests/REFERENCE` with the given media type.
    pub fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        let file = tempfile::NamedTempFile::new().expect("temp manifest file");
        fs::write(file.path(), bytes).expect("write temp manifest");
        let out = self.curl(&[
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {media_type}"),
            "--data-binary",
            &format!("@{}", file.path().display()),
            "-w",
            "\n%{http_code}",
            &format!("{}/v2/{repo}/manifests/{reference}", self.url()),
        ]);
        assert!(
            out.stdout.trim_end().ends_with("201"),
            "manifest PUT {repo}:{reference} failed: {}",
            out.stdout
        );
    }

    /// Runs `curl -sS` with this registry's CA and credentials plus `args`.
    /// Panics if curl fails (transport errors); HTTP statuses are left to
    /// the caller (e.g. `-w %{http_code}`).
    pub fn curl(&self, args: &[&str]) -> CmdOutput {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "120"]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert").arg(&tls.ca_cert);
        }
        if let Some((user, password)) = &self.credentials {
            cmd.arg("-u").arg(format!("{user}:{password}"));
        }
        cmd.args(args);
        run_ok(&mut cmd, TOOL_TIMEOUT)
    }

    /// Requests the registry has logged so far (readiness probes excluded),
    /// in order, across restarts.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.log()
            .lines()
            .filter_map(parse_access_log_line)
            .filter(|r| r.user_agent != PROBE_USER_AGENT)
            .collect()
    }

    /// Path of a blob's `data` file in the storage directory, for tampering
    /// tests. `digest` is `sha256:HEX`.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Kills the registry process and waits for it.
    pub fn stop(&mut self) {
        self.kill_child();
    }

    /// Restarts on the same port with the same storage; the log is appended.
    pub fn restart(&mut self) {
        self.kill_child();
        self.spawn();
        if let Err(e) = self.wait_ready() {
            self.kill_child();
            panic!("registry did not come back after restart: {e}");
        }
    }

    fn kill_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    fn write_config(&self) {
        // JSON strings are valid YAML double-quoted scalars.
        let q = |p: &Path| serde_json::to_string(&p.display().to_string()).unwrap();
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{}\n  secret: ocidisk-test-http-secret\n",
            q(&self.storage_dir()),
            self.port
        );
        if let Some(tls) = &self.tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                q(&tls.server_cert),
                q(&tls.server_key)
            ));
        }
        if let Some(t) = &self.token {
            config.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                t.realm(),
                super::token::SERVICE,
                super::token::ISSUER,
                q(t.cert())
            ));
        } else if self.credentials.is_some() {
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: ocidisk-test\n    path: {}\n",
                q(&self.dir.path().join("htpasswd"))
            ));
        }
        if let Some(up) = &self.upstream {
            config.push_str(&format!("proxy:\n  remoteurl: {up}\n"));
        }
        fs::write(self.config_path(), config).expect("write registry config");
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open registry log");
        let log_err = log.try_clone().expect("clone log handle");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("spawn docker-registry");
        self.child = Some(child);
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!(
                    "docker-registry exited ({status}):\n{}",
                    self.log()
                ));
            }
            if self.probe() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no answer on {} after {READY_TIMEOUT:?}:\n{}",
                    self.url(),
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// One readiness probe: `GET /v2/` answered with 200 (or 401 with auth).
    fn probe(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
            return false;
        };
        let Some(tls) = &self.tls else {
            let request = format!(
                "GET /v2/ HTTP/1.1\r\nHost: {}\r\nUser-Agent: {PROBE_USER_AGENT}\r\nConnection: close\r\n\r\n",
                self.host()
            );
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
            if stream.write_all(request.as_bytes()).is_err() {
                return false;
            }
            let mut response = Vec::new();
            let _ = stream.read_to_end(&mut response);
            let response = String::from_utf8_lossy(&response);
            return response.starts_with("HTTP/1.1 200")
                || (self.credentials.is_some() && response.starts_with("HTTP/1.1 401"));
        };
        drop(stream);
        // The port accepts; check the whole TLS setup (CA, SAN) with curl.
        let out = run_with_timeout(
            Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "5",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                ])
                .args(["-A", PROBE_USER_AGENT, "--cacert"])
                .arg(&tls.ca_cert)
                .arg(format!("{}/v2/", self.url())),
            Duration::from_secs(30),
        );
        matches!(out.stdout.trim(), "200" | "401")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill_child();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// `blobs/sha256/HEX` for `sha256:HEX`.
fn blob_rel_path(digest: &str) -> PathBuf {
    let (algorithm, hex) = digest
        .split_once(':')
        .unwrap_or_else(|| panic!("bad digest {digest}"));
    Path::new("blobs").join(algorithm).join(hex)
}

fn read_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let path = layout.join(blob_rel_path(digest));
    fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Run the `openssl` CLI with `args` in `dir`; it must succeed.
pub fn openssl(dir: &Path, args: &[&str]) {
    run_ok(
        Command::new("openssl").args(args).current_dir(dir),
        Duration::from_secs(60),
    );
}

/// CA + server certificate (EC P-256) in `dir/tls`.
fn generate_tls(dir: &Path) -> Tls {
    let tls_dir = dir.join("tls");
    let cert_dir = tls_dir.join("certs.d");
    fs::create_dir_all(&cert_dir).expect("create tls dir");
    fs::write(
        tls_dir.join("ca.cnf"),
        "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3_ca\n\
         [dn]\nCN = ocidisk test CA\n\
         [v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\n",
    )
    .expect("write ca.cnf");
    fs::write(
        tls_dir.join("server.cnf"),
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = localhost\n",
    )
    .expect("write server.cnf");
    fs::write(
        tls_dir.join("server-ext.cnf"),
        "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
         extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1,DNS:localhost\n\
         subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n",
    )
    .expect("write server-ext.cnf");
    let openssl = |args: &[&str]| openssl(&tls_dir, args);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509", "-config", "ca.cnf", "-days", "7"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-new", "-config", "server.cnf"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat(),
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "2",
        "-days",
        "7",
        "-extfile",
        "server-ext.cnf",
        "-out",
        "server.pem",
    ]);
    fs::copy(tls_dir.join("ca.pem"), cert_dir.join("ca.crt")).expect("copy ca.crt");
    Tls {
        ca_cert: tls_dir.join("ca.pem"),
        server_cert: tls_dir.join("server.pem"),
        server_key: tls_dir.join("server.key"),
        cert_dir,
    }
}
