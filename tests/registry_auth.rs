//! Pulling from a real registry behind TLS (self-signed CA) and htpasswd
//! (bcrypt) basic auth: CA handling, credentials from stdin and from docker's
//! config.json, and clear errors for each thing a user gets wrong.

mod common;

use base64::Engine as _;
use common::cli::Ocidisk;
use common::imagegen::{self, Compression};
use common::registry::Registry;

const USER: &str = "tester";
const PASSWORD: &str = "s3cret-pass";

fn registry_with_image() -> (Registry, String, imagegen::BuiltImage) {
    with_image(Registry::start_tls_auth(USER, PASSWORD))
}

/// `reg` holding the standard image as `private:v1`; its reference.
fn with_image(reg: Registry) -> (Registry, String, imagegen::BuiltImage) {
    let dir = tempfile::tempdir().unwrap();
    let img = imagegen::write_standard(dir.path(), "v1", Compression::Gzip);
    reg.push(
        &format!("oci:{}:v1", dir.path().display()),
        "private:v1",
        false,
    );
    let r = format!("{}/private:v1", reg.host());
    (reg, r, img)
}

#[test]
fn tls_and_basic_auth() {
    let (reg, r, img) = registry_with_image();
    let ca = reg.ca_cert().unwrap();
    let ca = ca.to_str().unwrap();
    let o = Ocidisk::new();

    // The self-signed certificate is not trusted without --ca-cert.
    let err = o.fail(&["inspect", &r]);
    assert!(err.contains("TLS") && err.contains("--ca-cert"), "{err}");

    // Trusted, but anonymous: the registry wants credentials.
    let err = o.fail(&["inspect", "--ca-cert", ca, &r]);
    assert!(
        err.contains("denied") && err.contains("needs credentials"),
        "{err}"
    );

    // Wrong password.
    let err = o.fail_with_stdin(
        &[
            "pull",
            "--ca-cert",
            ca,
            "--username",
            USER,
            "--password-stdin",
            &r,
        ],
        "wrong\n",
    );
    assert!(err.contains("rejected the credentials"), "{err}");
    assert!(o.cached_blobs().is_empty());

    // Right password from stdin.
    let out = o.ok_with_stdin(
        &[
            "pull",
            "--ca-cert",
            ca,
            "--username",
            USER,
            "--password-stdin",
            &r,
        ],
        &format!("{PASSWORD}\n"),
    );
    assert_eq!(out.trim(), img.manifest_digest);
    o.assert_cache_consistent();
}

#[test]
fn credentials_from_docker_config_json() {
    let (reg, r, img) = registry_with_image();
    let ca = reg.ca_cert().unwrap();
    let o = Ocidisk::new();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        o.docker_config_dir().join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host()),
    )
    .unwrap();
    let out = o.ok(&["pull", "--ca-cert", ca.to_str().unwrap(), &r]);
    assert_eq!(out.trim(), img.manifest_digest);

    // --authfile points elsewhere: a file with wrong credentials is used instead.
    let other = tempfile::tempdir().unwrap();
    let bad = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:nope"));
    let path = other.path().join("auth.json");
    std::fs::write(
        &path,
        format!(
            r#"{{"auths":{{"https://{}":{{"auth":"{bad}"}}}}}}"#,
            reg.host()
        ),
    )
    .unwrap();
    let err = Ocidisk::new().fail(&[
        "inspect",
        "--ca-cert",
        ca.to_str().unwrap(),
        "--authfile",
        path.to_str().unwrap(),
        &r,
    ]);
    assert!(err.contains("rejected the credentials"), "{err}");
}

#[test]
fn insecure_skips_certificate_verification() {
    let (_reg, r, img) = registry_with_image();
    let out = Ocidisk::new().ok_with_stdin(
        &[
            "pull",
            "--insecure",
            "--username",
            USER,
            "--password-stdin",
            &r,
        ],
        PASSWORD,
    );
    assert_eq!(out.trim(), img.manifest_digest);
}

/// Token auth as Docker Hub, ghcr.io and Harbor run it: the registry's 401
/// names a token service; the token for the pull scope is fetched once with
/// the user's credentials and then reused for every manifest and blob.
#[test]
fn bearer_tokens_from_the_registrys_token_service() {
    let (reg, r, img) = with_image(Registry::start_token_auth("private", USER, PASSWORD));
    let tokens = reg.token_service().unwrap();
    let (asked, granted) = (tokens.requests(), tokens.granted());
    let o = Ocidisk::new();

    // Anonymous: the token service refuses.
    let err = o.fail(&["inspect", &r]);
    assert!(
        err.contains("denied") && err.contains("needs credentials"),
        "{err}"
    );
    // Wrong password.
    let err = o.fail_with_stdin(
        &["pull", "--username", USER, "--password-stdin", &r],
        "wrong\n",
    );
    assert!(err.contains("rejected the credentials"), "{err}");
    assert!(o.cached_blobs().is_empty());
    assert!(
        tokens.requests() >= asked + 2,
        "both asked the token service"
    );
    assert_eq!(tokens.granted(), granted, "no token for a wrong password");

    let out = o.ok_with_stdin(
        &["pull", "--username", USER, "--password-stdin", &r],
        &format!("{PASSWORD}\n"),
    );
    assert_eq!(out.trim(), img.manifest_digest);
    o.assert_cache_consistent();
    assert_eq!(
        tokens.granted(),
        granted + 1,
        "one token for the manifest, config and {} layers",
        img.layers.len()
    );
}
