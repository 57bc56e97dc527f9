//! Reading simple-signing signatures from lookaside storage: for an image
//! in repository `PATH` with manifest digest `ALG:HEX`, signature `n` is at
//! `BASE/PATH@ALG=HEX/signature-n`, n = 1, 2, … up to the first that does
//! not exist (containers/image's layout, which `skopeo copy --sign-by`
//! writes). `file://` and `http(s)://` bases are read.

use std::time::Duration;

use super::TrustError;
use crate::digest::Digest;

/// At most this many signatures are read for one image.
pub const MAX_SIGNATURES: usize = 64;
/// A signature larger than this is refused (containers/image's limit).
pub const MAX_SIGNATURE_BYTES: u64 = 4 << 20;

fn url_of(base: &str, digest: &Digest, n: usize) -> String {
    let s = digest.to_string();
    let (alg, hex) = s.split_once(':').unwrap_or(("sha256", &s));
    format!("{base}@{alg}={hex}/signature-{n}")
}

/// The signatures stored for `digest` under `base` (`lookaside` URL with
/// the repository path appended).
pub async fn signatures(base: &str, digest: &Digest) -> Result<Vec<Vec<u8>>, TrustError> {
    let err = |url: &str, why: String| TrustError::Signatures {
        url: url.to_string(),
        why,
    };
    let mut out = Vec::new();
    if let Some(path) = base.strip_prefix("file://") {
        for n in 1..=MAX_SIGNATURES {
            let url = url_of(path, digest, n);
            let file = match std::fs::File::open(&url) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(err(&url, e.to_string())),
            };
            let mut bytes = Vec::new();
            use std::io::Read;
            file.take(MAX_SIGNATURE_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| err(&url, e.to_string()))?;
            if bytes.len() as u64 > MAX_SIGNATURE_BYTES {
                return Err(err(
                    &url,
                    format!("larger than {MAX_SIGNATURE_BYTES} bytes"),
                ));
            }
            out.push(bytes);
        }
        return Ok(out);
    }
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(err(
            base,
            "unsupported lookaside URL scheme (use file://, http:// or https://)".into(),
        ));
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| err(base, e.to_string()))?;
    for n in 1..=MAX_SIGNATURES {
        let url = url_of(base, digest, n);
        let resp = client
            .get(&url)
            .send()
            .await
            .map_err(|e| err(&url, e.to_string()))?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Ok(out),
            s => return Err(err(&url, format!("HTTP status {s}"))),
        }
        if resp
            .content_length()
            .is_some_and(|l| l > MAX_SIGNATURE_BYTES)
        {
            return Err(err(
                &url,
                format!("larger than {MAX_SIGNATURE_BYTES} bytes"),
            ));
        }
        let bytes = resp.bytes().await.map_err(|e| err(&url, e.to_string()))?;
        if bytes.len() as u64 > MAX_SIGNATURE_BYTES {
            return Err(err(
                &url,
                format!("larger than {MAX_SIGNATURE_BYTES} bytes"),
            ));
        }
        out.push(bytes.to_vec());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_signatures_are_read_in_order_until_one_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let digest: Digest =
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                .parse()
                .unwrap();
        let base = format!("file://{}/ns/app", d.path().display());
        assert!(signatures(&base, &digest).await.unwrap().is_empty());
        let dir = d.path().join(format!("ns/app@sha256={}", digest.hex()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("signature-1"), b"one").unwrap();
        std::fs::write(dir.join("signature-2"), b"two").unwrap();
        std::fs::write(dir.join("signature-4"), b"after a gap: not read").unwrap();
        assert_eq!(
            signatures(&base, &digest).await.unwrap(),
            vec![b"one".to_vec(), b"two".to_vec()]
        );
        let e = signatures("ftp://x/y", &digest).await.unwrap_err();
        assert!(
            e.to_string().contains("unsupported lookaside URL scheme"),
            "{e}"
        );
    }
}
