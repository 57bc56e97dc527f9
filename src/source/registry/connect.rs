//! Reaching a registry: whether it speaks plain HTTP or TLS (probed for
//! loopback and `--insecure` registries, as docker treats "insecure
//! registries") and the `oci-client` client built for it.

use std::time::{Duration, Instant};

use oci_client::Client;
use oci_client::client::{Certificate, ClientConfig, ClientProtocol};

use super::{RegistryError, RegistrySource, RetryPolicy, error_chain, looks_like_tls};

/// What the HTTP client of a registry is built from.
#[derive(Clone)]
struct ClientSettings {
    registry: String,
    certs: Vec<Certificate>,
    insecure: bool,
    read_timeout: Duration,
}

impl ClientSettings {
    /// The client, over plain HTTP or TLS.
    fn build(&self, plain_http: bool) -> Result<Client, RegistryError> {
        let config = ClientConfig {
            protocol: if plain_http {
                ClientProtocol::HttpsExcept(vec![self.registry.clone()])
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: self.insecure,
            extra_root_certificates: self.certs.clone(),
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(self.read_timeout),
            user_agent: concat!("ocidisk/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        Client::try_from(config).map_err(|e| RegistryError::Client(e.to_string()))
    }
}

impl RegistrySource {
    /// The HTTP client, built on first use: choose HTTP or HTTPS (probing
    /// `/v2/` for loopback and `--insecure` registries).
    pub(super) async fn client(&self) -> Result<&Client, RegistryError> {
        self.client
            .get_or_try_init(|| async {
                let registry = self.registry();
                let loopback = is_loopback(&registry);
                let settings = ClientSettings {
                    registry: registry.clone(),
                    certs: self.certs.clone(),
                    insecure: self.insecure,
                    read_timeout: self.retry.read_timeout,
                };
                if !(self.insecure || loopback) {
                    return settings.build(false);
                }
                // A loopback registry almost always speaks plain HTTP: build
                // that client (milliseconds of TLS roots) while the probe runs.
                let early = loopback.then(|| {
                    let s = settings.clone();
                    tokio::task::spawn_blocking(move || s.build(true))
                });
                let plain_http =
                    probe_plain_http(&registry, &self.certs, self.insecure, loopback, &self.retry)
                        .await?;
                match early {
                    Some(h) if plain_http => {
                        h.await.map_err(|e| RegistryError::Client(e.to_string()))?
                    }
                    _ => settings.build(plain_http),
                }
            })
            .await
    }
}

/// Whether `host` (a registry's host, with or without a port) is this
/// machine.
pub(super) fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether a `/v2/` answer over plain HTTP comes from a registry.
fn answers_as_registry(resp: &reqwest::Response) -> bool {
    resp.headers()
        .contains_key("docker-distribution-api-version")
        || matches!(resp.status().as_u16(), 200 | 401)
}

/// For loopback and `--insecure` registries: does the registry speak plain
/// HTTP rather than TLS? Connection failures are retried like any fetch.
///
/// A loopback registry is asked over plain HTTP first: a port that answers
/// `/v2/` there as a registry does not speak TLS, and the TLS attempt (a
/// handshake the plain server never finishes, and the TLS library's entropy
/// setup) costs tens of milliseconds. Nothing leaves the host, and the probe
/// carries no credentials. Other `--insecure` registries are tried over TLS
/// first, as docker does.
async fn probe_plain_http(
    registry: &str,
    certs: &[Certificate],
    insecure: bool,
    loopback: bool,
    retry: &RetryPolicy,
) -> Result<bool, RegistryError> {
    if loopback {
        // Plain HTTP only: no TLS roots to load (milliseconds a client).
        let quick = reqwest::Client::builder()
            .tls_certs_only(Vec::new())
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| RegistryError::Client(e.to_string()))?
            .get(format!("http://{registry}/v2/"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if quick.as_ref().is_ok_and(answers_as_registry) {
            return Ok(true);
        }
    }
    let mut builder = reqwest::Client::builder()
        .danger_accept_invalid_certs(insecure)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30));
    let mut roots = Vec::new();
    for c in certs {
        roots.push(
            reqwest::Certificate::from_pem(&c.data)
                .map_err(|e| RegistryError::Client(format!("bad CA certificate: {e}")))?,
        );
    }
    builder = builder.tls_certs_merge(roots);
    let client = builder
        .build()
        .map_err(|e| RegistryError::Client(e.to_string()))?;
    let started = Instant::now();
    let mut attempt = 1;
    loop {
        let tls_err = match client.get(format!("https://{registry}/v2/")).send().await {
            Ok(_) => return Ok(false),
            Err(e) => e,
        };
        let tls_chain = error_chain(&tls_err);
        let detail = match client.get(format!("http://{registry}/v2/")).send().await {
            Ok(resp) => {
                if answers_as_registry(&resp) {
                    return Ok(true);
                }
                return Err(RegistryError::Tls {
                    registry: registry.to_string(),
                    detail: tls_chain,
                });
            }
            Err(e) if tls_err.is_connect() && looks_like_tls(&tls_chain) && !e.is_connect() => {
                return Err(RegistryError::Tls {
                    registry: registry.to_string(),
                    detail: tls_chain,
                });
            }
            Err(e) => error_chain(&e),
        };
        match retry.backoff(attempt, started) {
            Some(pause) => {
                tracing::info!(registry, attempt, "retrying in {pause:?}: {detail}");
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            None => {
                return Err(RegistryError::Unreachable {
                    registry: registry.to_string(),
                    what: "/v2/".into(),
                    detail,
                    attempts: attempt,
                    secs: started.elapsed().as_secs_f64(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1:5000",
            "localhost",
            "localhost:80",
            "[::1]:5000",
            "127.3.2.1",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "docker.io",
            "10.0.0.1:5000",
            "quay.io:443",
            "index.docker.io",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
