//! A token service for a `docker-registry` in token-auth mode (the
//! distribution token spec, as Docker Hub, ghcr.io and Harbor run it):
//! `GET /token?scope=..&service=..` with the user's Basic credentials gets a
//! JWT the registry trusts; anything else gets 401.
//!
//! The JWT is RS256, signed once at start with the `openssl` CLI by a key
//! whose self-signed certificate travels in the token's `x5c` header and is
//! the registry's `rootcertbundle`. It grants `pull,push` on one repository
//! for an hour. Each request is counted, so tests can see tokens being
//! cached.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use super::registry::openssl;

/// Issuer and service names the registry is configured with.
pub const ISSUER: &str = "ocidisk-test-issuer";
/// The `service` of the registry's challenge.
pub const SERVICE: &str = "ocidisk-test-registry";

/// A running token service; stops when dropped.
pub struct TokenService {
    port: u16,
    cert: PathBuf,
    requests: Arc<AtomicUsize>,
    granted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Make the signing key and certificate in `dir`; the signed JWT granting
/// `pull,push` on `repository`.
fn signed_token(dir: &Path, repository: &str) -> (PathBuf, String) {
    let key = dir.join("token.key");
    let cert = dir.join("token.crt");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=ocidisk test token signer",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
    );
    let der_path = dir.join("token.der");
    openssl(
        dir,
        &[
            "x509",
            "-in",
            cert.to_str().unwrap(),
            "-outform",
            "DER",
            "-out",
            der_path.to_str().unwrap(),
        ],
    );
    let der = std::fs::read(&der_path).unwrap();
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "RS256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&der)],
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": "ocidisk-test-user",
        "aud": SERVICE,
        "exp": now + 3600,
        "nbf": now - 60,
        "iat": now - 60,
        "jti": "ocidisk-test-token",
        "access": [{"type": "repository", "name": repository, "actions": ["pull", "push"]}],
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let input_path = dir.join("token.input");
    let sig_path = dir.join("token.sig");
    std::fs::write(&input_path, &signing_input).unwrap();
    openssl(
        dir,
        &[
            "dgst",
            "-sha256",
            "-sign",
            key.to_str().unwrap(),
            "-out",
            sig_path.to_str().unwrap(),
            input_path.to_str().unwrap(),
        ],
    );
    let sig = std::fs::read(&sig_path).unwrap();
    (cert, format!("{signing_input}.{}", b64url(&sig)))
}

impl TokenService {
    /// Start a token service granting `repository` to `user`/`password`;
    /// its key and certificate live in `dir`.
    pub fn start(dir: &Path, repository: &str, user: &str, password: &str) -> TokenService {
        let (cert, token) = signed_token(dir, repository);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let requests = Arc::new(AtomicUsize::new(0));
        let granted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, g, s) = (requests.clone(), granted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                r.fetch_add(1, Ordering::SeqCst);
                if answer(conn, &expected, &token) {
                    g.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        TokenService {
            port,
            cert,
            requests,
            granted,
            stop,
            thread: Some(thread),
        }
    }

    /// The realm registries send clients to.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The certificate the registry trusts tokens by.
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Tokens handed out so far.
    pub fn granted(&self) -> usize {
        self.granted.load(Ordering::SeqCst)
    }
}

/// Answer one request: the token for the right Basic credentials, 401
/// otherwise. Whether a token was given.
fn answer(mut conn: TcpStream, expected: &str, token: &str) -> bool {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut authorized = false;
    let mut first = true;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return false;
        }
        let l = line.trim_end();
        if first {
            first = false;
            if !l.starts_with("GET /token?") {
                break;
            }
            continue;
        }
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
            && value.trim() == expected
        {
            authorized = true;
        }
    }
    let response = if authorized {
        let body = serde_json::json!({"token": token, "expires_in": 3600}).to_string();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    };
    let _ = conn.write_all(response.as_bytes());
    authorized
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
