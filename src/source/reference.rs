//! Parsing image references (`[host[:port]/]path[:tag][@digest]`) into
//! `oci_client::Reference` by hand. oci-client's own parser compiles the
//! distribution reference regex on first use: 38 ms of CPU, paid by every
//! command before its first request. This follows the same grammar
//! (distribution's `reference/regexp.go`) and normalisation (`docker.io`,
//! `library/`, `latest`) and is checked against oci-client in the tests.

use oci_client::Reference;

/// Longest repository name.
const NAME_MAX: usize = 255;

/// Parse `s` as oci-client would; `Err` says what is wrong.
pub fn parse(s: &str) -> Result<Reference, &'static str> {
    if s.is_empty() {
        return Err("empty reference");
    }
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (s, None),
    };
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(t) = tag
        && !valid_tag(t)
    {
        return Err("invalid tag");
    }
    if let Some(d) = digest {
        valid_digest(d)?;
    }
    if !valid_name(name) {
        return Err("invalid repository name");
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_MAX {
        return Err("repository name too long");
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.into(), d.into())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.into()),
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest").into()),
    })
}

/// `[\w][\w.-]{0,127}`.
fn valid_tag(t: &str) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b[1..].iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

/// `alg:hex` with distribution's algorithm grammar and the lengths of the
/// algorithms oci-client knows.
fn valid_digest(d: &str) -> Result<(), &'static str> {
    let (alg, hex) = d.split_once(':').ok_or("invalid digest")?;
    let alg_ok = alg.split(['-', '_', '+', '.']).all(|part| {
        let b = part.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
    });
    if !alg_ok || hex.len() < 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err("invalid digest");
    }
    let want = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm"),
    };
    if hex.len() != want {
        return Err("digest of the wrong length");
    }
    Ok(())
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A host name (dot-separated labels of letters, digits and inner
/// hyphens) with an optional numeric port.
fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()))
    {
        return false;
    }
    host.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
    })
}

/// `[domain/]component(/component)*`.
fn valid_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    let (first, rest) = match parts.split_first() {
        Some(x) => x,
        None => return false,
    };
    let first_ok = valid_path_component(first) || (!rest.is_empty() && valid_domain(first));
    first_ok && rest.iter().all(|c| valid_path_component(c))
}

/// distribution's `splitDomain`: the first component is a registry if it
/// looks like a host; Docker Hub names gain `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut rest) = match name.split_once('/') {
        Some((l, r)) if l.contains('.') || l.contains(':') || l == "localhost" => {
            (l.to_string(), r.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".into();
    }
    if domain == "docker.io" && !rest.contains('/') {
        rest = format!("library/{rest}");
    }
    (domain, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_as_oci_client_does() {
        let h = "a".repeat(64);
        let cases = [
            "busybox".to_string(),
            "test.com:tag".into(),
            "test.com:5000".into(),
            "test.com/repo:tag".into(),
            "test:5000/repo".into(),
            "test:5000/repo:tag".into(),
            format!("test:5000/repo@sha256:{h}"),
            format!("test:5000/repo:tag@sha256:{h}"),
            "lowercase:Uppercase".into(),
            "sub-dom1.foo.com/bar/baz/quux".into(),
            "sub-dom1.foo.com/bar/baz/quux:some-long-tag".into(),
            "b.gcr.io/test.example.com/my-app:test.example.com".into(),
            "xn--n3h.com/myimage:xn--n3h.com".into(),
            format!(
                "xn--7o8h.com/myimage:xn--7o8h.com@sha512:{}",
                "b".repeat(128)
            ),
            "foo_bar.com:8080".into(),
            "foo/foo_bar.com:8080".into(),
            "localhost/foo".into(),
            "localhost:5000/a__b/c---d/e.f_g".into(),
            "127.0.0.1:5000/debian:bookworm".into(),
            "index.docker.io/alpine".into(),
            "docker.io/org/app:1".into(),
            "registry.example.com/app:v1".into(),
            // Refused by both.
            String::new(),
            ":justtag".into(),
            "@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff".into(),
            "repo@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff".into(),
            format!("repo@sha256:{}", "f".repeat(63)),
            format!("repo@sha1:{h}"),
            format!("repo@sha256:{}g", "f".repeat(63)),
            "Uppercase:tag".into(),
            "test:5000/Uppercase/lowercase:tag".into(),
            "aa/asdf$$^/aa".into(),
            "a..b/c".into(),
            "a/b___c".into(),
            "a/-b".into(),
            "a/b-".into(),
            "a//b".into(),
            "a/b:".into(),
            "a/b:-tag".into(),
            format!("a/b:{}", "t".repeat(129)),
            format!("a/{}", "b".repeat(256)),
            "[::1]:5000/a".into(),
            "-host.com/a".into(),
            "host-.com/a".into(),
            "host.com:/a".into(),
            "host.com:50a/a".into(),
        ];
        for c in &cases {
            let ours = parse(c);
            let theirs = c.parse::<Reference>();
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(
                        (a.registry(), a.repository(), a.tag(), a.digest()),
                        (b.registry(), b.repository(), b.tag(), b.digest()),
                        "{c}"
                    );
                }
                (Err(_), Err(_)) => {}
                _ => panic!("{c:?}: ours {ours:?}, oci-client {theirs:?}"),
            }
        }
    }
}
