//! Trust policies against the real tools: images in a real docker-registry,
//! signed by GnuPG keys through `skopeo copy --sign-by` (and
//! `skopeo standalone-sign` for the signatures copy cannot make: another
//! identity, two keys), a matrix of containers-policy.json files, and in
//! every cell ocidisk's decision equals `skopeo copy --policy`'s on the same
//! files; a rejection fetches no layer blob. Sigstore signatures are made
//! with openssl in the format cosign writes (Debian's skopeo cannot sign
//! them) and pushed as `sha256-<hex>.sig` attachments.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cli::Ocidisk;
use common::imagegen::{self, Compression};
use common::registry::{Registry, run_ok, run_with_timeout};

const T: Duration = Duration::from_secs(120);

/// A GnuPG home with keys A and B (no passphrase).
struct Keys {
    home: tempfile::TempDir,
    a: String,
    b: String,
}

impl Keys {
    fn new() -> Keys {
        let home = tempfile::tempdir().unwrap();
        let fpr = |name: &str| {
            run_ok(
                gpg(home.path()).args([
                    "--passphrase",
                    "",
                    "--quick-gen-key",
                    &format!("ocidisk test {name} <{name}@ocidisk.test>"),
                    "default",
                    "default",
                    "never",
                ]),
                T,
            );
            let out = run_ok(
                gpg(home.path()).args([
                    "--list-keys",
                    "--with-colons",
                    &format!("{name}@ocidisk.test"),
                ]),
                T,
            );
            out.stdout
                .lines()
                .find_map(|l| l.strip_prefix("fpr:::::::::"))
                .and_then(|l| l.split(':').next())
                .expect("a fingerprint")
                .to_string()
        };
        let a = fpr("a");
        let b = fpr("b");
        Keys { home, a, b }
    }

    /// `gpg --export FPR` into `path` (binary, as skopeo's docs do it).
    fn export(&self, fpr: &str, path: &Path, armor: bool) {
        let mut c = gpg(self.home.path());
        if armor {
            c.arg("--armor");
        }
        c.arg("--output").arg(path).args(["--export", fpr]);
        run_ok(&mut c, T);
    }
}

fn gpg(home: &Path) -> Command {
    let mut c = Command::new("gpg");
    c.env("GNUPGHOME", home).args(["--batch", "--yes"]);
    c
}

/// Everything the matrix needs: a registry with the images, their
/// signatures in a lookaside directory, keyrings and policies.
struct World {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    reg: Registry,
    keys: Keys,
    registries_d: PathBuf,
    sigs: PathBuf,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let keys = Keys::new();
        keys.export(&keys.a.clone(), &d.join("a.gpg"), false);
        keys.export(&keys.b.clone(), &d.join("b.gpg"), false);
        keys.export(&keys.a.clone(), &d.join("a.asc"), true);
        let sigs = d.join("sigs");
        std::fs::create_dir_all(&sigs).unwrap();
        let registries_d = d.join("registries.d");
        std::fs::create_dir_all(&registries_d).unwrap();
        // Where skopeo writes (lookaside-staging) and where both read.
        std::fs::write(
            registries_d.join("default.yaml"),
            format!(
                "default-docker:\n  lookaside: file://{0}\n  lookaside-staging: file://{0}\n",
                sigs.display()
            ),
        )
        .unwrap();
        let reg = Registry::start();
        imagegen::write_standard(&d.join("layout"), "v1", Compression::Gzip);
        World {
            _dir: dir,
            dir: d,
            reg,
            keys,
            registries_d,
            sigs,
        }
    }

    fn image(&self, repo: &str) -> String {
        format!("{}/{repo}:v1", self.reg.host())
    }

    /// Push the standard image to `repo:v1`, signed by `fpr` if given
    /// (`skopeo copy --sign-by`).
    fn push(&self, repo: &str, sign_by: Option<&str>) {
        let layout = format!("oci:{}:v1", self.dir.join("layout").display());
        let rd = self.registries_d.display().to_string();
        let mut extra = vec!["--preserve-digests", "--registries.d", &rd];
        if let Some(f) = sign_by {
            extra.extend(["--sign-by", f]);
        }
        let mut cmd = Command::new("skopeo");
        cmd.env("GNUPGHOME", self.keys.home.path())
            .args(["--insecure-policy", "copy"])
            .args(self.reg.skopeo_flags("dest-"))
            .args(&extra)
            .arg(&layout)
            .arg(format!("docker://{}", self.image(repo)));
        let out = run_with_timeout(&mut cmd, T);
        assert!(out.success(), "skopeo copy: {}", out.stderr);
    }

    /// The image's manifest as the registry serves it, and its digest.
    fn manifest(&self, repo: &str) -> (Vec<u8>, String) {
        let m = self
            .reg
            .skopeo_inspect(&format!("{repo}:v1"), true)
            .unwrap();
        let digest = format!("sha256:{}", sha256_hex(m.as_bytes()));
        (m.into_bytes(), digest)
    }

    /// Signature `n` of `repo`'s image, signed by `fpr` for `identity`
    /// (`skopeo standalone-sign`), put where the lookaside says.
    fn add_signature(&self, repo: &str, n: usize, fpr: &str, identity: &str) -> PathBuf {
        let (manifest, digest) = self.manifest(repo);
        let mfile = self
            .dir
            .join(format!("{}.manifest.json", repo.replace('/', "_")));
        std::fs::write(&mfile, manifest).unwrap();
        let dir = self.sigs.join(format!(
            "{repo}@sha256={}",
            digest.trim_start_matches("sha256:")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join(format!("signature-{n}"));
        let mut cmd = Command::new("skopeo");
        cmd.env("GNUPGHOME", self.keys.home.path())
            .arg("standalone-sign")
            .arg(&mfile)
            .arg(identity)
            .arg(fpr)
            .arg("-o")
            .arg(&out);
        run_ok(&mut cmd, T);
        out
    }

    fn policy(&self, name: &str, json: &str) -> PathBuf {
        let p = self.dir.join(format!("{name}.json"));
        std::fs::write(&p, json).unwrap();
        p
    }

    /// skopeo's decision: `skopeo copy --policy P` of `image` succeeds.
    fn skopeo_accepts(&self, policy: &Path, image: &str) -> (bool, String) {
        let dest = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("skopeo");
        cmd.arg("--policy")
            .arg(policy)
            .arg("--registries.d")
            .arg(&self.registries_d)
            .args(["copy", "--remove-signatures"])
            .args(self.reg.skopeo_flags("src-"))
            .arg(format!("docker://{image}"))
            .arg(format!("oci:{}:x", dest.path().display()));
        let out = run_with_timeout(&mut cmd, T);
        (out.success(), out.stderr)
    }

    fn layer_fetches(&self) -> usize {
        self.reg
            .requests()
            .iter()
            .filter(|r| r.is_blob_fetch() && r.method == "GET")
            .count()
    }
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

/// ocidisk's decision with a fresh cache: `ocidisk pull --policy P`.
fn ocidisk_accepts(w: &World, policy: &Path, image: &str) -> (bool, String) {
    let o = Ocidisk::new();
    let out = o.run(&[
        "pull",
        "--policy",
        policy.to_str().unwrap(),
        "--registries.d",
        w.registries_d.to_str().unwrap(),
        image,
    ]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn decisions_equal_skopeo_for_every_image_and_policy() {
    let w = World::new();
    let host = w.reg.host();
    let (a, b) = (w.keys.a.clone(), w.keys.b.clone());
    w.push("signed-a", Some(&a));
    w.push("signed-b", Some(&b));
    w.push("unsigned", None);
    // Signed by A for another identity: the same repository, another tag.
    w.push("other-identity", None);
    w.add_signature(
        "other-identity",
        1,
        &a,
        &format!("{host}/other-identity:v2"),
    );
    // Signed by both keys.
    w.push("signed-ab", None);
    w.add_signature("signed-ab", 1, &a, &w.image("signed-ab"));
    w.add_signature("signed-ab", 2, &b, &w.image("signed-ab"));
    // A's signature with one byte flipped.
    w.push("tampered", None);
    let sig = w.add_signature("tampered", 1, &a, &w.image("tampered"));
    let mut bytes = std::fs::read(&sig).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&sig, bytes).unwrap();
    // A mirror of a vendor's image, signed as the vendor's.
    w.push("mirror/app", None);
    w.add_signature("mirror/app", 1, &a, "vendor.example/prod/app:v1");

    let ka = w.dir.join("a.gpg");
    let kb = w.dir.join("b.gpg");
    let signed_by = |key: &Path, identity: &str| {
        format!(
            r#"{{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "{}"{identity}}}"#,
            key.display()
        )
    };
    let policies: Vec<(&str, String)> = vec![
        ("reject", r#"{"default": [{"type": "reject"}]}"#.into()),
        (
            "accept",
            r#"{"default": [{"type": "insecureAcceptAnything"}]}"#.into(),
        ),
        (
            "signed-by-a-host-scope",
            format!(
                r#"{{"default": [{{"type": "reject"}}], "transports": {{"docker": {{"{host}": [{}]}}}}}}"#,
                signed_by(&ka, "")
            ),
        ),
        (
            "signed-by-a-repo-scope",
            format!(
                r#"{{"default": [{{"type": "insecureAcceptAnything"}}], "transports": {{"docker": {{
                    "{host}/signed-b": [{0}], "{host}/unsigned": [{0}], "{host}/signed-a": [{0}]}}}}}}"#,
                signed_by(&ka, "")
            ),
        ),
        (
            "signed-by-a-and-b",
            format!(
                r#"{{"default": [{}, {}]}}"#,
                signed_by(&ka, ""),
                signed_by(&kb, "")
            ),
        ),
        (
            "signed-by-a-keydata-armored",
            format!(
                r#"{{"default": [{{"type": "signedBy", "keyType": "GPGKeys", "keyData": "{}"}}]}}"#,
                base64_std(&std::fs::read(w.dir.join("a.asc")).unwrap())
            ),
        ),
        (
            "signed-by-a-or-b-keypaths",
            format!(
                r#"{{"default": [{{"type": "signedBy", "keyType": "GPGKeys", "keyPaths": ["{}", "{}"]}}]}}"#,
                ka.display(),
                kb.display()
            ),
        ),
        (
            "match-repository",
            format!(
                r#"{{"default": [{}]}}"#,
                signed_by(&ka, r#", "signedIdentity": {"type": "matchRepository"}"#)
            ),
        ),
        (
            "match-exact",
            format!(
                r#"{{"default": [{}]}}"#,
                signed_by(&ka, r#", "signedIdentity": {"type": "matchExact"}"#)
            ),
        ),
        (
            "exact-reference",
            format!(
                r#"{{"default": [{}]}}"#,
                signed_by(
                    &ka,
                    r#", "signedIdentity": {"type": "exactReference", "dockerReference": "vendor.example/prod/app:v1"}"#
                )
            ),
        ),
        (
            "exact-repository",
            format!(
                r#"{{"default": [{}]}}"#,
                signed_by(
                    &ka,
                    &format!(
                        r#", "signedIdentity": {{"type": "exactRepository", "dockerRepository": "{host}/other-identity"}}"#
                    )
                )
            ),
        ),
        (
            "remap-identity",
            format!(
                r#"{{"default": [{{"type": "reject"}}], "transports": {{"docker": {{"{host}/mirror": [{}]}}}}}}"#,
                signed_by(
                    &ka,
                    &format!(
                        r#", "signedIdentity": {{"type": "remapIdentity", "prefix": "{host}/mirror", "signedPrefix": "vendor.example/prod"}}"#
                    )
                )
            ),
        ),
    ];
    let images = [
        "signed-a",
        "signed-b",
        "unsigned",
        "other-identity",
        "signed-ab",
        "tampered",
        "mirror/app",
    ];
    let mut table = Vec::new();
    let mut accepted = 0;
    for (name, json) in &policies {
        let p = w.policy(name, json);
        for repo in images {
            let image = w.image(repo);
            let (skopeo, skopeo_err) = w.skopeo_accepts(&p, &image);
            let before = w.layer_fetches();
            let (ours, our_err) = ocidisk_accepts(&w, &p, &image);
            let fetched = w.layer_fetches() - before;
            assert_eq!(
                ours,
                skopeo,
                "policy {name}, image {repo}: ocidisk {} but skopeo {}\nocidisk: {our_err}\nskopeo: {skopeo_err}",
                if ours { "accepts" } else { "rejects" },
                if skopeo { "accepts" } else { "rejects" },
            );
            if !ours {
                assert_eq!(
                    fetched, 0,
                    "policy {name}, image {repo}: a rejection fetched blobs"
                );
                assert!(
                    our_err.contains("rejected by") && our_err.contains(&image),
                    "policy {name}, image {repo}: {our_err}"
                );
                assert_eq!(our_err.trim().lines().count(), 1, "one line: {our_err}");
            } else {
                accepted += 1;
            }
            table.push(format!(
                "{name:28} {repo:16} {}",
                if ours { "accept" } else { "reject" }
            ));
        }
    }
    eprintln!("{}", table.join("\n"));
    // The matrix is not degenerate: both decisions occur, with reasons.
    let rejected = table.len() - accepted;
    assert!(
        accepted >= 10 && rejected >= 20,
        "{accepted} accepted, {rejected} rejected"
    );
    let reason = |policy: &str, repo: &str| {
        ocidisk_accepts(&w, &w.dir.join(format!("{policy}.json")), &w.image(repo)).1
    };
    assert!(reason("signed-by-a-host-scope", "unsigned").contains("none exists"));
    assert!(
        reason("signed-by-a-host-scope", "signed-b").contains("which the policy does not accept")
    );
    assert!(reason("signed-by-a-host-scope", "tampered").contains("signature"));
    assert!(reason("signed-by-a-host-scope", "other-identity").contains("signedIdentity"));
    assert!(reason("reject", "signed-a").contains("the default"));
    assert!(
        reason("signed-by-a-host-scope", "signed-b").contains(&format!("docker scope \"{host}\""))
    );
}

fn base64_std(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn every_command_refuses_a_rejected_image_before_any_layer_and_leaves_nothing() {
    let w = World::new();
    w.push("unsigned", None);
    let p = w.policy(
        "needs-a",
        &format!(
            r#"{{"default": [{{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "{}"}}]}}"#,
            w.dir.join("a.gpg").display()
        ),
    );
    let image = w.image("unsigned");
    let o = Ocidisk::new();
    let policy = [
        "--policy",
        p.to_str().unwrap(),
        "--registries.d",
        w.registries_d.to_str().unwrap(),
    ];
    let before = w.layer_fetches();
    let out = w.dir.join("out.img");
    let sock = w.dir.join("disk.sock");
    let mnt = w.dir.join("disk.img");
    std::fs::write(&mnt, b"").unwrap();
    for args in [
        vec!["materialize", &image, out.to_str().unwrap()],
        vec!["serve", &image, "--socket", sock.to_str().unwrap()],
        vec!["mount", &image, mnt.to_str().unwrap()],
        vec!["pull", &image],
    ] {
        let mut all = args.clone();
        all.extend(policy);
        let err = o.fail(&all);
        assert!(
            err.contains("is rejected by")
                && err.contains("a signature is required, but none exists"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        w.layer_fetches(),
        before,
        "a rejected image's layers were fetched"
    );
    assert!(!out.exists(), "materialize left {}", out.display());
    assert!(!sock.exists(), "serve left its socket");
    assert_eq!(std::fs::read(&mnt).unwrap(), b"", "mount touched its file");
    let leftovers: Vec<_> = std::fs::read_dir(&w.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("ocidisk-partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A cached image is checked again under the policy in force: pulled
    // with an accepting policy, then used with a rejecting one.
    let accept = w.policy(
        "accept",
        r#"{"default": [{"type": "insecureAcceptAnything"}]}"#,
    );
    o.ok(&["pull", "--policy", accept.to_str().unwrap(), &image]);
    let err = o.fail(&[
        "materialize",
        "--policy",
        p.to_str().unwrap(),
        "--registries.d",
        w.registries_d.to_str().unwrap(),
        &image,
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("is rejected by"), "{err}");
    assert!(!out.exists());

    // A policy file that is not valid is an error, never an accept.
    let bad = w.policy("bad", r#"{"default": [{"type": "acceptEverything"}]}"#);
    let err = o.fail(&["pull", "--policy", bad.to_str().unwrap(), &image]);
    assert!(
        err.contains("bad.json") && err.contains("unknown variant"),
        "{err}"
    );
}

/// An ECDSA P-256 key pair made by openssl: (private PEM, public PEM).
fn p256_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    run_ok(
        Command::new("openssl")
            .args([
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
            ])
            .arg(&key),
        T,
    );
    run_ok(
        Command::new("openssl")
            .args(["ec", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public),
        T,
    );
    (key, public)
}

/// Sign `payload` as cosign does: ECDSA over SHA-256, DER, base64.
fn cosign_sign(dir: &Path, key: &Path, payload: &[u8]) -> String {
    let p = dir.join("payload.tmp");
    std::fs::write(&p, payload).unwrap();
    let sig = dir.join("sig.tmp");
    run_ok(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(key)
            .arg("-out")
            .arg(&sig)
            .arg(&p),
        T,
    );
    base64_std(&std::fs::read(sig).unwrap())
}

fn cosign_payload(reference: &str, digest: &str) -> Vec<u8> {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{reference}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
    .into_bytes()
}

/// Push a `sha256-<hex>.sig` attachment with one signature layer.
fn attach(w: &World, repo: &str, for_digest: &str, payload: &[u8], signature: &str) {
    let pfile = w.dir.join(format!("{repo}.payload"));
    std::fs::write(&pfile, payload).unwrap();
    let pdigest = format!("sha256:{}", sha256_hex(payload));
    w.reg.upload_blob(repo, &pdigest, &pfile);
    let config = br#"{"architecture":"","config":{},"created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let cfile = w.dir.join(format!("{repo}.config"));
    std::fs::write(&cfile, config).unwrap();
    let cdigest = format!("sha256:{}", sha256_hex(config));
    w.reg.upload_blob(repo, &cdigest, &cfile);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":{},"digest":"{cdigest}"}},
            "layers":[{{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","size":{},"digest":"{pdigest}",
              "annotations":{{"dev.cosignproject.cosign/signature":"{signature}"}}}}]}}"#,
        config.len(),
        payload.len()
    );
    let tag = format!("sha256-{}.sig", for_digest.trim_start_matches("sha256:"));
    w.reg.put_manifest(
        repo,
        &tag,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.as_bytes(),
    );
}

#[test]
fn sigstore_signatures_with_a_key_are_verified_from_attachments() {
    let w = World::new();
    let host = w.reg.host();
    let (key, public) = p256_key(&w.dir, "cosign");
    let (other_key, other_public) = p256_key(&w.dir, "other");
    std::fs::write(
        w.registries_d.join("sigstore.yaml"),
        format!("docker:\n  {host}:\n    use-sigstore-attachments: true\n"),
    )
    .unwrap();
    // (name, sign with the right key, digest claimed, tamper with the payload)
    let zero = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let cases = [
        ("good", true, None, false),
        ("other-key", false, None, false),
        ("tampered", true, None, true),
        ("other-digest", true, Some(zero), false),
    ];
    let policy = w.policy(
        "sigstore",
        &format!(
            r#"{{"default": [{{"type": "sigstoreSigned", "keyPath": "{}", "signedIdentity": {{"type": "matchRepository"}}}}]}}"#,
            public.display()
        ),
    );
    let _ = other_public;
    for (name, right_key, claimed, tamper) in cases {
        let repo = format!("cosigned-{name}");
        w.push(&repo, None);
        let (_, digest) = w.manifest(&repo);
        let mut payload = cosign_payload(&format!("{host}/{repo}"), claimed.unwrap_or(&digest));
        let sig = cosign_sign(&w.dir, if right_key { &key } else { &other_key }, &payload);
        if tamper {
            let at = payload.iter().position(|b| *b == b'c').unwrap_or(0);
            payload[at] = b'C';
        }
        attach(&w, &repo, &digest, &payload, &sig);
        let layers = image_layers(&w, &repo);
        let seen = w.reg.requests().len();
        let (ok, err) = ocidisk_accepts(&w, &policy, &w.image(&repo));
        assert_eq!(ok, name == "good", "{name}: {err}");
        if !ok {
            assert!(err.contains("sigstore signature"), "{name}: {err}");
            // The attachment's payload blob is read, never a layer.
            let fetched: Vec<String> = w.reg.requests()[seen..]
                .iter()
                .filter(|r| r.is_blob_fetch())
                .filter_map(|r| r.reference().map(str::to_string))
                .filter(|d| layers.contains(d))
                .collect();
            assert!(fetched.is_empty(), "{name}: fetched layers {fetched:?}");
        }
    }
    // An image with no attachment at all.
    w.push("no-attachment", None);
    let (ok, err) = ocidisk_accepts(&w, &policy, &w.image("no-attachment"));
    assert!(!ok && err.contains("none exists"), "{err}");
    // Keyless (Fulcio) is not supported yet: a clear error, never an accept.
    let keyless = w.policy(
        "keyless",
        r#"{"default": [{"type": "sigstoreSigned", "fulcio": {"caPath": "/x", "oidcIssuer": "https://a", "subjectEmail": "a@b"}, "rekorPublicKeyPath": "/r"}]}"#,
    );
    let (ok, err) = ocidisk_accepts(&w, &keyless, &w.image("cosigned-good"));
    assert!(!ok && err.contains("does not support yet"), "{err}");
}

/// The layer digests of `repo:v1`.
fn image_layers(w: &World, repo: &str) -> Vec<String> {
    let (m, _) = w.manifest(repo);
    let m: serde_json::Value = serde_json::from_slice(&m).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn signatures_are_read_from_an_http_lookaside_too() {
    let w = World::new();
    w.push("signed-a", Some(&w.keys.a.clone()));
    w.push("unsigned", None);
    // Serve the signature directory over HTTP and point a second
    // registries.d at it, per registry.
    let port = common::registry::free_port();
    let mut server = Command::new("/usr/bin/python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(&w.sigs)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "http.server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rd = w.dir.join("registries.d-http");
    std::fs::create_dir_all(&rd).unwrap();
    std::fs::write(
        rd.join("http.yaml"),
        format!(
            "docker:\n  {}:\n    lookaside: http://127.0.0.1:{port}\n",
            w.reg.host()
        ),
    )
    .unwrap();
    let p = w.policy(
        "needs-a",
        &format!(
            r#"{{"default": [{{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "{}"}}]}}"#,
            w.dir.join("a.gpg").display()
        ),
    );
    let o = Ocidisk::new();
    let pull = |repo: &str| {
        o.run(&[
            "pull",
            "--policy",
            p.to_str().unwrap(),
            "--registries.d",
            rd.to_str().unwrap(),
            &w.image(repo),
        ])
    };
    let ok = pull("signed-a");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let no = pull("unsigned");
    assert!(!no.status.success());
    assert!(String::from_utf8_lossy(&no.stderr).contains("none exists"));
    // A lookaside that cannot be reached is an error reading signatures,
    // never taken as "unsigned".
    let _ = server.kill();
    let _ = server.wait();
    let gone = pull("signed-a");
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("reading signatures from http://127.0.0.1"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
}
