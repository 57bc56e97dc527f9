//! PAX extended headers (local and global records: path, linkpath, size,
//! ids, fractional times, device numbers, xattrs, the GNU sparse keys) and
//! GNU long names.

use super::header::cstr;
use super::{Ext, ExtKind, TarError, TarIndexer};

/// Parse a PAX time value like `1700000000.123456789` or `-5.5`.
fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = int.parse().ok()?;
    let mut nsec: u32 = 0;
    if !frac.is_empty() {
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        nsec = digits.parse().ok()?;
    }
    if secs < 0 && nsec > 0 {
        // -1.25 means 1.25 s before the epoch: -2 s + 0.75 s.
        return Some((secs - 1, 1_000_000_000 - nsec));
    }
    Some((secs, nsec))
}

pub(super) fn parse_dec(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && i + 2 < s.len()
            && let (Some(h), Some(l)) = (hexval(s[i + 1]), hexval(s[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

fn hexval(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl TarIndexer {
    pub(super) fn extension(
        &mut self,
        kind: ExtKind,
        payload: &[u8],
        offset: u64,
    ) -> Result<(), TarError> {
        match kind {
            ExtKind::LongName => self.local.path = Some(cstr(payload).to_vec()),
            ExtKind::LongLink => self.local.link = Some(cstr(payload).to_vec()),
            ExtKind::PaxLocal | ExtKind::PaxGlobal => {
                let mut ext = if kind == ExtKind::PaxGlobal {
                    std::mem::take(&mut self.global)
                } else {
                    std::mem::take(&mut self.local)
                };
                parse_pax(payload, &mut ext, offset)?;
                if kind == ExtKind::PaxGlobal {
                    self.global = ext;
                } else {
                    self.local = ext;
                }
            }
        }
        Ok(())
    }
}

fn parse_pax(mut p: &[u8], ext: &mut Ext, offset: u64) -> Result<(), TarError> {
    let bad = |detail: &str| TarError::BadExtension {
        offset,
        detail: detail.to_string(),
    };
    while !p.is_empty() {
        if p.iter().all(|b| *b == 0) {
            break;
        }
        let sp = p
            .iter()
            .position(|b| *b == b' ')
            .ok_or_else(|| bad("PAX record without length"))?;
        let len: usize = std::str::from_utf8(&p[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("PAX record length is not a number"))?;
        if len <= sp + 1 || len > p.len() || p[len - 1] != b'\n' {
            return Err(bad("PAX record length does not fit"));
        }
        let record = &p[sp + 1..len - 1];
        p = &p[len..];
        let eq = record
            .iter()
            .position(|b| *b == b'=')
            .ok_or_else(|| bad("PAX record without '='"))?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let num =
            |v: &[u8], what: &str| parse_dec(v).ok_or_else(|| bad(&format!("bad PAX {what}")));
        let num32 = |v: &[u8], what: &str| {
            num(v, what)
                .and_then(|n| u32::try_from(n).map_err(|_| bad(&format!("PAX {what} too large"))))
        };
        match key {
            b"path" => ext.path = Some(value.to_vec()),
            b"linkpath" => ext.link = Some(value.to_vec()),
            b"size" => ext.size = Some(num(value, "size")?),
            b"uid" => ext.uid = Some(num32(value, "uid")?),
            b"gid" => ext.gid = Some(num32(value, "gid")?),
            b"mtime" => {
                ext.mtime = Some(parse_pax_time(value).ok_or_else(|| bad("bad PAX mtime"))?)
            }
            b"SCHILY.devmajor" => ext.dev_major = Some(num32(value, "devmajor")?),
            b"SCHILY.devminor" => ext.dev_minor = Some(num32(value, "devminor")?),
            b"GNU.sparse.major" => ext.sparse_major = Some(num32(value, "sparse.major")?),
            b"GNU.sparse.minor" => ext.sparse_minor = Some(num32(value, "sparse.minor")?),
            b"GNU.sparse.name" => ext.sparse_name = Some(value.to_vec()),
            b"GNU.sparse.realsize" | b"GNU.sparse.size" => {
                ext.sparse_realsize = Some(num(value, "sparse size")?)
            }
            b"GNU.sparse.offset" => ext.sparse_pending_offset = Some(num(value, "sparse offset")?),
            b"GNU.sparse.numbytes" => {
                let off = ext
                    .sparse_pending_offset
                    .take()
                    .ok_or_else(|| bad("GNU.sparse.numbytes without offset"))?;
                ext.sparse_map.push(off);
                ext.sparse_map.push(num(value, "sparse numbytes")?);
            }
            b"GNU.sparse.map" => {
                for n in value.split(|b| *b == b',') {
                    ext.sparse_map.push(num(n, "sparse map")?);
                }
            }
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    ext.xattrs.retain(|(k, _)| k != name);
                    ext.xattrs.push((name.to_vec(), value.to_vec()));
                } else if let Some(name) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
                    use base64::Engine as _;
                    let name = percent_decode(name);
                    let value = base64::engine::general_purpose::STANDARD
                        .decode(value)
                        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(value))
                        .map_err(|_| bad("LIBARCHIVE.xattr value is not base64"))?;
                    ext.xattrs.retain(|(k, _)| *k != name);
                    ext.xattrs.push((name, value));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_before_the_epoch() {
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"12.000000001"), Some((12, 1)));
        assert_eq!(parse_pax_time(b"12.x"), None);
    }
}
