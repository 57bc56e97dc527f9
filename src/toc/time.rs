//! RFC 3339 times as Go's `time.Time` writes them in tables of contents
//! (zTOC `mod_time`, eStargz and zstd:chunked `modtime`), both ways.

/// Days from 1970-01-01 to the civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count from 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Go's `time.RFC3339Nano` in UTC, as `time.Time.MarshalText` writes it.
pub fn rfc3339(secs: i64, nsec: u32) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if nsec > 0 {
        let frac = format!("{nsec:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Parse RFC 3339 (`Z` or `±hh:mm`, optional fraction) to (secs, nsec).
pub fn parse_rfc3339(b: &[u8]) -> Option<(i64, u32)> {
    parse_plain(b).or_else(|| parse_general(b))
}

/// The shape nearly every table of contents holds, `YYYY-MM-DDTHH:MM:SSZ`,
/// read at fixed places (a zTOC has one per entry; the general parser
/// took a sixth of its parse). `None` for anything else, valid or not.
fn parse_plain(b: &[u8]) -> Option<(i64, u32)> {
    let [
        y0,
        y1,
        y2,
        y3,
        b'-',
        m0,
        m1,
        b'-',
        d0,
        d1,
        b'T' | b't',
        h0,
        h1,
        b':',
        n0,
        n1,
        b':',
        s0,
        s1,
        b'Z' | b'z',
    ] = *b
    else {
        return None;
    };
    let num = |digits: &[u8]| {
        digits.iter().try_fold(0u32, |v, &c| {
            c.is_ascii_digit().then(|| v * 10 + u32::from(c - b'0'))
        })
    };
    let y = i64::from(num(&[y0, y1, y2, y3])?);
    let (m, d) = (num(&[m0, m1])?, num(&[d0, d1])?);
    let (hh, mm, ss) = (num(&[h0, h1])?, num(&[n0, n1])?, num(&[s0, s1])?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let clock = i64::from(hh * 3600 + mm * 60 + ss);
    Some((days_from_civil(y, m, d) * 86_400 + clock, 0))
}

/// Any RFC 3339 time.
fn parse_general(b: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(b).ok()?;
    let (date, rest) = s.split_once(['T', 't'])?;
    let mut dp = date.splitn(3, '-');
    let y: i64 = dp.next()?.parse().ok()?;
    let m: u32 = dp.next()?.parse().ok()?;
    let d: u32 = dp.next()?.parse().ok()?;
    let zone_at = rest.find(['Z', 'z', '+', '-'])?;
    let (clock, zone) = rest.split_at(zone_at);
    let (hms, frac) = match clock.split_once('.') {
        Some((h, f)) => (h, Some(f)),
        None => (clock, None),
    };
    let mut tp = hms.splitn(3, ':');
    let hh: i64 = tp.next()?.parse().ok()?;
    let mm: i64 = tp.next()?.parse().ok()?;
    let ss: i64 = tp.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let nsec = match frac {
        None => 0,
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|c| c.is_ascii_digit()) => {
            f.parse::<u32>().ok()? * 10u32.pow(9 - f.len() as u32)
        }
        Some(_) => return None,
    };
    let offset = match zone {
        "Z" | "z" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let (h, m) = z[1..].split_once(':')?;
            sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60)
        }
    };
    let secs = days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss - offset;
    Some((secs, nsec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_shape_reads_as_the_general_parser_reads_it() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let secs = (x % 253_402_300_800) as i64 - 62_135_596_800;
            let t = rfc3339(secs, 0);
            assert_eq!(parse_plain(t.as_bytes()), Some((secs, 0)), "{t}");
            assert_eq!(parse_plain(t.as_bytes()), parse_general(t.as_bytes()));
        }
        for odd in [
            &b"2023-13-01T00:00:00Z"[..],
            b"2023-02-00T00:00:00Z",
            b"2023-02-01T24:00:00Z",
            b"2023-02-01T23:60:00Z",
            b"2023-02-01T23:59:61Z",
            b"2023-02-01T23:59:60Z",
            b"2023-02-01t23:59:59z",
            b"2023-02-01T23:59:5xZ",
            b"+023-02-01T23:59:59Z",
            b"2023-02-01T23:59:59+",
        ] {
            // The plain reading is the general one where there is one; the
            // rest goes to the general parser.
            let (plain, general) = (parse_plain(odd), parse_general(odd));
            assert!(plain.is_none() || plain == general, "{odd:?}");
            assert_eq!(parse_rfc3339(odd), general);
        }
        assert_eq!(
            parse_plain(b"2023-02-01T23:59:60Z"),
            Some((1_675_295_999 + 1, 0))
        );
    }

    #[test]
    fn times_round_trip_as_go_writes_them() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(1_700_000_000, 500_000_000),
            "2023-11-14T22:13:20.5Z"
        );
        assert_eq!(rfc3339(-1, 1), "1969-12-31T23:59:59.000000001Z");
        for (s, n) in [
            (0, 0),
            (1_700_000_000, 5),
            (-86_401, 999_999_999),
            (253_402_300_799, 0),
        ] {
            assert_eq!(parse_rfc3339(rfc3339(s, n).as_bytes()), Some((s, n)));
        }
        assert_eq!(
            parse_rfc3339(b"2023-11-15T00:13:20+02:00"),
            Some((1_700_000_000, 0))
        );
        assert_eq!(
            parse_rfc3339(b"0001-01-01T00:00:00Z"),
            Some((-62_135_596_800, 0))
        );
        for bad in [
            &b"yesterday"[..],
            b"2023-13-01T00:00:00Z",
            b"2023-01-01T00:00:00",
            b"2023-01-01T00:00:00.Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
