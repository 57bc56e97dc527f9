//! Sizes as users type them: `512M`, `2G`, `1.5GiB`, `4096B`. Units are
//! binary (K = 1024), as in qemu-img and mke2fs; a bare number means MiB, as
//! in the original Go tool's `-size=512`.

/// Errors parsing a size.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    /// Not a number with an optional unit.
    #[error(
        "invalid size {0:?}: expected a number with an optional unit B, K, M, G, T (e.g. 512M, 2G; a bare number means MiB)"
    )]
    Malformed(String),
    /// Too large for 64 bits.
    #[error("size {0:?} is too large")]
    Overflow(String),
}

/// Parse a size into bytes.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let bad = || SizeError::Malformed(input.to_string());
    if num.is_empty() || num.matches('.').count() > 1 || num.starts_with('.') || num.ends_with('.')
    {
        return Err(bad());
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 20,
        "b" => 0,
        "k" | "kb" | "kib" => 10,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let int: u64 = int
        .parse()
        .map_err(|_| SizeError::Overflow(input.to_string()))?;
    let whole = int
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(input.to_string()))?;
    if frac.is_empty() {
        return Ok(whole);
    }
    if frac.len() > 9 {
        return Err(bad());
    }
    let frac_num: u64 = frac.parse().map_err(|_| bad())?;
    let denom = 10u64.pow(frac.len() as u32);
    let extra = (u128::from(frac_num) << shift) / u128::from(denom);
    whole
        .checked_add(u64::try_from(extra).map_err(|_| SizeError::Overflow(input.to_string()))?)
        .ok_or_else(|| SizeError::Overflow(input.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_size("512"), Ok(512 << 20));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("64k"), Ok(65536));
        for bad in ["", "M", "1.2.3G", "12X", "-1G", ".5G", "1."] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            parse_size("99999999999T"),
            Err(SizeError::Overflow(_))
        ));
    }
}
