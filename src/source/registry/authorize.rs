//! Authorizing reads from a registry, as docker and the distribution token
//! spec do: a request goes out bare until the registry answers 401 with a
//! `WWW-Authenticate` challenge; from then on each request carries what the
//! challenge asks for: the user's credentials (`Basic`), or a token for the
//! request's scope from the challenge's realm (`Bearer`), cached until it
//! expires. A registry that asks for nothing is never asked twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::HeaderValue;

use super::connect::Conn;
use crate::source::auth::Credentials;

/// What a registry's 401 asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Challenge {
    /// The user's name and password on every request.
    Basic,
    /// A token from `realm` for the request's scope.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The `service` to name when asking.
        service: Option<String>,
    },
}

/// Why a request could not be authorized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The registry (or its token service) refused: no or wrong credentials.
    Denied,
    /// The token service failed in a way worth retrying.
    Transient(String),
    /// The challenge or the token service's answer is unusable.
    Broken(String),
}

/// Parse a `WWW-Authenticate` value: the first `Basic` or `Bearer`
/// challenge with its parameters. Unknown schemes give `None`.
pub(super) fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    let params = parse_params(rest);
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        let realm = params.get("realm")?.clone();
        if realm.is_empty() {
            return None;
        }
        Some(Challenge::Bearer {
            realm,
            service: params.get("service").cloned(),
        })
    } else {
        None
    }
}

/// `key="quoted value", key=token` pairs (keys lower-cased).
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ','))
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() && chars.peek().is_none() {
            return out;
        }
        if chars.next_if_eq(&'=').is_none() {
            continue;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ','))
                .collect::<String>()
                .trim()
                .to_string();
        }
        if !key.is_empty() {
            out.insert(key, value);
        }
    }
}

/// The fields of a token service's answer that matter.
#[derive(serde::Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Tokens live this long when the service does not say (the spec's default).
const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(60);
/// A token is renewed this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(5);

struct Token {
    header: HeaderValue,
    renew_at: Instant,
}

/// Per registry: the challenge learnt, the credentials and the tokens.
pub(super) struct Authorizer {
    credentials: Option<Credentials>,
    challenge: std::sync::Mutex<Option<Challenge>>,
    tokens: tokio::sync::Mutex<HashMap<String, Token>>,
}

impl Authorizer {
    /// An authorizer that has seen no challenge yet.
    pub(super) fn new(credentials: Option<Credentials>) -> Authorizer {
        Authorizer {
            credentials,
            challenge: std::sync::Mutex::new(None),
            tokens: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Whether the user gave credentials.
    pub(super) fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    fn basic(&self) -> Option<HeaderValue> {
        let c = self.credentials.as_ref()?;
        let raw = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", c.username, c.password));
        let mut v = HeaderValue::from_str(&format!("Basic {raw}")).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    fn challenge(&self) -> Option<Challenge> {
        crate::sync::lock(&self.challenge).clone()
    }

    /// A request in `scope` that carried `sent` (its `Authorization`) was
    /// answered 401 with `www_authenticate`: remember what the challenge
    /// asks for, forget a token it refused. Whether a retry can do better.
    pub(super) async fn refused(
        &self,
        www_authenticate: Option<&HeaderValue>,
        scope: &str,
        sent: Option<&HeaderValue>,
    ) -> bool {
        let Some(new) = www_authenticate
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge)
        else {
            return false;
        };
        *crate::sync::lock(&self.challenge) = Some(new.clone());
        let sent_basic = sent.is_some_and(|h| h.as_bytes().starts_with(b"Basic "));
        match new {
            // Credentials refused are wrong; none sent can still be sent.
            Challenge::Basic => !sent_basic && self.credentials.is_some(),
            Challenge::Bearer { .. } => {
                // A token refused (expired, revoked) is asked for anew,
                // unless a concurrent request already replaced it.
                let mut tokens = self.tokens.lock().await;
                if let Some(sent) = sent
                    && tokens.get(scope).is_some_and(|t| t.header == sent)
                {
                    tokens.remove(scope);
                }
                true
            }
        }
    }

    /// The `Authorization` header for a request in `scope`
    /// (`repository:NAME:pull`), fetching a token if the challenge needs one.
    pub(super) async fn header(
        &self,
        conn: &Conn,
        scope: &str,
    ) -> Result<Option<HeaderValue>, Refusal> {
        match self.challenge() {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.basic()),
            Some(Challenge::Bearer { realm, service }) => {
                let mut tokens = self.tokens.lock().await;
                if let Some(t) = tokens.get(scope)
                    && Instant::now() < t.renew_at
                {
                    return Ok(Some(t.header.clone()));
                }
                let http = conn
                    .client_for(&realm)
                    .await
                    .map_err(|e| Refusal::Broken(e.to_string()))?;
                let token = self
                    .fetch_token(http, &realm, service.as_deref(), scope)
                    .await?;
                let header = token.header.clone();
                tokens.insert(scope.to_string(), token);
                Ok(Some(header))
            }
        }
    }

    async fn fetch_token(
        &self,
        http: &reqwest::Client,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<Token, Refusal> {
        let mut query = vec![("scope", scope)];
        if let Some(s) = service {
            query.push(("service", s));
        }
        let mut req = http.get(realm).query(&query);
        if let Some(b) = self.basic() {
            req = req.header(reqwest::header::AUTHORIZATION, b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Refusal::Transient(format!("token service {realm}: {e}")))?;
        let status = resp.status().as_u16();
        match status {
            200 => {}
            401 | 403 => return Err(Refusal::Denied),
            429 | 500..=599 => {
                return Err(Refusal::Transient(format!(
                    "token service {realm}: HTTP {status}"
                )));
            }
            _ => {
                return Err(Refusal::Broken(format!(
                    "token service {realm} answered HTTP {status}"
                )));
            }
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| Refusal::Transient(format!("token service {realm}: {e}")))?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| Refusal::Broken(format!("token service {realm}: not a token: {e}")))?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Refusal::Broken(format!("token service {realm}: no token")))?;
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| Refusal::Broken(format!("token service {realm}: unusable token")))?;
        header.set_sensitive(true);
        let life = answer
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFE);
        Ok(Token {
            header,
            renew_at: Instant::now() + life.saturating_sub(TOKEN_MARGIN),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_as_registries_send_them() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("basic"), Some(Challenge::Basic));
        // Unquoted values, spaces after commas, escapes.
        assert_eq!(
            parse_challenge(r#"bearer service=reg , realm="http://a/t\"x""#),
            Some(Challenge::Bearer {
                realm: "http://a/t\"x".into(),
                service: Some("reg".into()),
            })
        );
        // A Bearer challenge needs a realm; unknown schemes are not ours.
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
        assert_eq!(parse_challenge(r#"Bearer realm="""#), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge(""), None);
        assert_eq!(parse_challenge("Bearer realm"), None);
    }

    #[tokio::test]
    async fn a_challenge_is_learnt_once_and_basic_needs_credentials() {
        let http = Conn::direct(reqwest::Client::new());
        let anon = Authorizer::new(None);
        assert_eq!(anon.header(&http, "s").await, Ok(None));
        let basic = HeaderValue::from_static("Basic realm=\"r\"");
        // No credentials: retrying cannot help.
        assert!(!anon.refused(Some(&basic), "s", None).await);
        assert_eq!(anon.header(&http, "s").await, Ok(None));

        let user = Authorizer::new(Some(Credentials {
            username: "u".into(),
            password: "p".into(),
        }));
        // Two requests went out bare at once: both may retry.
        assert!(user.refused(Some(&basic), "s", None).await);
        assert!(user.refused(Some(&basic), "s", None).await);
        let h = user.header(&http, "s").await.unwrap().unwrap();
        assert_eq!(h.to_str().unwrap(), "Basic dTpw");
        // Refused with the credentials: they are wrong.
        assert!(!user.refused(Some(&basic), "s", Some(&h)).await);
        // A 401 without a challenge says nothing new.
        assert!(!user.refused(None, "s", None).await);
    }
}
