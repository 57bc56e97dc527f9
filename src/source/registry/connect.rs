//! Reaching a registry: whether it speaks plain HTTP or TLS (probed for
//! loopback and `--insecure` registries, as docker treats "insecure
//! registries"), the HTTP client every read goes through, and the
//! `oci-client` client built for pushes.

use std::time::Duration;

use oci_client::Client;
use oci_client::client::{Certificate, ClientConfig, ClientProtocol};

use super::{Failure, RegistryError, RegistrySource, error_chain, looks_like_tls};

/// How a registry is reached, settled on first use.
pub(super) struct Conn {
    /// The client of the registry's own URLs.
    http: reqwest::Client,
    /// Plain HTTP rather than TLS.
    pub(super) plain_http: bool,
    /// The client with the system's TLS roots, for HTTPS URLs (blob
    /// redirects to storage, a token service). For a TLS registry it is
    /// `http`; for a plain-HTTP loopback registry it is built on first
    /// need, as loading the roots costs milliseconds of every start.
    tls: tokio::sync::OnceCell<reqwest::Client>,
    settings: ClientSettings,
}

impl Conn {
    /// A registry reached with `http` for everything.
    fn with(http: reqwest::Client, plain_http: bool, settings: ClientSettings) -> Conn {
        Conn {
            tls: tokio::sync::OnceCell::new_with(Some(http.clone())),
            http,
            plain_http,
            settings,
        }
    }

    /// A TLS registry reached with `http` (unit tests).
    #[cfg(test)]
    pub(super) fn direct(http: reqwest::Client) -> Conn {
        let settings = ClientSettings {
            registry: "registry.test".into(),
            certs: Vec::new(),
            insecure: false,
            read_timeout: Duration::from_secs(30),
        };
        Conn::with(http, false, settings)
    }

    /// The client of the registry's own URLs (`/v2/...`).
    pub(super) fn registry_client(&self) -> &reqwest::Client {
        &self.http
    }

    /// The client for `url`: the registry's own for plain-HTTP URLs of a
    /// plain-HTTP registry, else the one with the system's TLS roots.
    pub(super) async fn client_for(&self, url: &str) -> Result<&reqwest::Client, RegistryError> {
        if self.plain_http
            && url
                .get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
        {
            return Ok(&self.http);
        }
        self.tls().await
    }

    /// The client with the system's TLS roots.
    pub(super) async fn tls(&self) -> Result<&reqwest::Client, RegistryError> {
        self.tls
            .get_or_try_init(|| async {
                let settings = self.settings.clone();
                tokio::task::spawn_blocking(move || settings.http())
                    .await
                    .map_err(|e| RegistryError::Client(e.to_string()))?
            })
            .await
    }

    /// Whether an answer of the registry's own client is a redirect it
    /// left to [`Conn::tls`] (a plain-HTTP registry sending a blob to HTTPS
    /// storage).
    pub(super) fn redirected_to_tls(&self, resp: &reqwest::Response) -> bool {
        self.plain_http
            && resp.status().is_redirection()
            && resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .is_some_and(|l| {
                    l.get(..8)
                        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
                })
    }
}

/// What the HTTP client of a registry is built from.
#[derive(Clone)]
struct ClientSettings {
    registry: String,
    certs: Vec<Certificate>,
    insecure: bool,
    read_timeout: Duration,
}

impl ClientSettings {
    /// What every client of reads has: timeouts and the user agent.
    fn builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(self.read_timeout)
            .user_agent(USER_AGENT)
    }

    /// The HTTP client of reads: the system's roots and `--ca-cert`'s
    /// (loaded even for a plain-HTTP registry, whose blobs may redirect to
    /// HTTPS storage), certificate checks off with `--insecure`.
    fn http(&self) -> Result<reqwest::Client, RegistryError> {
        let mut roots = Vec::new();
        for c in &self.certs {
            roots.push(
                reqwest::Certificate::from_pem(&c.data)
                    .map_err(|e| RegistryError::Client(format!("bad CA certificate: {e}")))?,
            );
        }
        self.builder()
            .danger_accept_invalid_certs(self.insecure)
            .tls_certs_merge(roots)
            .build()
            .map_err(|e| RegistryError::Client(e.to_string()))
    }

    /// The client of a plain-HTTP loopback registry: no TLS roots, and a
    /// redirect to HTTPS is not followed but answered (see
    /// [`Conn::redirected_to_tls`]).
    fn plain(&self) -> Result<reqwest::Client, RegistryError> {
        let policy = reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else if attempt.url().scheme() == "https" {
                attempt.stop()
            } else {
                attempt.follow()
            }
        });
        self.builder()
            .tls_certs_only(Vec::new())
            .redirect(policy)
            .build()
            .map_err(|e| RegistryError::Client(e.to_string()))
    }

    /// The `oci-client` client of pushes, over plain HTTP or TLS.
    fn oci(&self, plain_http: bool) -> Result<Client, RegistryError> {
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
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        Client::try_from(config).map_err(|e| RegistryError::Client(e.to_string()))
    }
}

const USER_AGENT: &str = concat!("ocidisk/", env!("CARGO_PKG_VERSION"));

/// Redirects followed per request, as reqwest's default policy.
const MAX_REDIRECTS: usize = 10;

impl RegistrySource {
    fn settings(&self) -> ClientSettings {
        ClientSettings {
            registry: self.registry(),
            certs: self.certs.clone(),
            insecure: self.insecure,
            read_timeout: self.retry.read_timeout,
        }
    }

    /// How the registry is reached, settled on first use: HTTP or HTTPS
    /// (probing `/v2/` for loopback and `--insecure` registries) and the
    /// clients of reads.
    pub(super) async fn conn(&self) -> Result<&Conn, RegistryError> {
        let registry = self.registry();
        let probe = |http: &reqwest::Client, plain: bool| {
            let scheme = if plain { "http" } else { "https" };
            http.get(format!("{scheme}://{registry}/v2/"))
        };
        Ok(self.conn_for(&probe).await?.0)
    }

    /// [`RegistrySource::conn`], for a caller about to send `first` (given
    /// the client and whether the registry speaks plain HTTP). If this
    /// call settles how a loopback registry is reached, `first` goes out
    /// as the probe and its answer comes back too: one round trip, not two.
    pub(super) async fn conn_for(
        &self,
        first: &(dyn Fn(&reqwest::Client, bool) -> reqwest::RequestBuilder + Sync),
    ) -> Result<(&Conn, Option<reqwest::Response>), RegistryError> {
        let mut answered = None;
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let registry = self.registry();
                let loopback = is_loopback(&registry);
                let settings = self.settings();
                if !(self.insecure || loopback) {
                    return Ok(Conn::with(settings.http()?, false, settings));
                }
                if loopback {
                    // Asked over plain HTTP first: a port that answers
                    // there as a registry does not speak TLS, and the TLS
                    // attempt (a handshake the plain server never
                    // finishes) costs tens of milliseconds. Nothing leaves
                    // the host, and the first request of a source goes out
                    // bare (no challenge is known yet). The probing client
                    // reads from it then: no TLS roots to load
                    // (milliseconds of every start) until an HTTPS URL
                    // needs them.
                    let plain = settings.plain()?;
                    let quick =
                        tokio::time::timeout(Duration::from_secs(2), first(&plain, true).send())
                            .await;
                    if let Ok(Ok(resp)) = quick
                        && answers_as_registry(&resp)
                    {
                        answered = Some(resp);
                        return Ok(Conn {
                            http: plain,
                            plain_http: true,
                            tls: tokio::sync::OnceCell::new(),
                            settings,
                        });
                    }
                }
                // One client (milliseconds of TLS roots, loaded off the
                // runtime's threads) probes, then reads.
                let http = {
                    let settings = settings.clone();
                    tokio::task::spawn_blocking(move || settings.http())
                        .await
                        .map_err(|e| RegistryError::Client(e.to_string()))??
                };
                let plain_http = self.probe_plain_http(&http).await?;
                Ok::<_, RegistryError>(Conn::with(http, plain_http, settings))
            })
            .await?;
        Ok((conn, answered))
    }

    /// The `oci-client` client of pushes, built on first use.
    pub(super) async fn client(&self) -> Result<&Client, RegistryError> {
        self.client
            .get_or_try_init(|| async {
                let plain_http = self.conn().await?.plain_http;
                self.settings().oci(plain_http)
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

/// Whether an answer over plain HTTP comes from a registry: distribution
/// names its API version on every answer under `/v2/`; `/v2/` itself says
/// 200 or 401.
fn answers_as_registry(resp: &reqwest::Response) -> bool {
    resp.headers()
        .contains_key("docker-distribution-api-version")
        || matches!(resp.status().as_u16(), 200 | 401)
}

impl RegistrySource {
    /// For `--insecure` registries (and loopback ones that did not answer
    /// plain HTTP as a registry): does the registry speak plain HTTP
    /// rather than TLS? Tried over TLS first, as docker does; connection
    /// failures are retried like any fetch.
    async fn probe_plain_http(&self, client: &reqwest::Client) -> Result<bool, RegistryError> {
        let registry = self.registry();
        let probe = |scheme: &str| {
            client
                .get(format!("{scheme}://{registry}/v2/"))
                .timeout(Duration::from_secs(30))
                .send()
        };
        let tls_refused = |detail: String| {
            Failure::Final(RegistryError::Tls {
                registry: registry.clone(),
                detail,
            })
        };
        self.retrying("/v2/", || async {
            let tls_err = match probe("https").await {
                Ok(_) => return Ok(false),
                Err(e) => e,
            };
            let tls_chain = error_chain(&tls_err);
            match probe("http").await {
                Ok(resp) if answers_as_registry(&resp) => Ok(true),
                Ok(_) => Err(tls_refused(tls_chain)),
                Err(e) if tls_err.is_connect() && looks_like_tls(&tls_chain) && !e.is_connect() => {
                    Err(tls_refused(tls_chain))
                }
                Err(e) => Err(Failure::Transient(error_chain(&e))),
            }
        })
        .await
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
