//! Sparse files: GNU `S` headers with their extension blocks, PAX sparse
//! 0.0/0.1 maps in records and 1.0 maps at the start of the data, and the
//! checks every map passes before an entry is kept.

use super::header::{pad, parse_octal};
use super::pax::parse_dec;
use super::{
    BLOCK, MAX_EXTENSION, MAX_SPARSE_SEGMENTS, SparseSegment, State, TarEntry, TarError, TarIndexer,
};

/// Check a sparse map against the file's logical `size`: segments in
/// increasing order, none overlapping the one before, none ending past
/// `size`. Returns the bytes the segments hold. The message says which
/// segment is wrong, and how.
pub fn check_map(segments: &[SparseSegment], size: u64) -> Result<u64, String> {
    let (mut end, mut total) = (0u64, 0u64);
    for (i, s) in segments.iter().enumerate() {
        if s.offset < end {
            return Err(format!(
                "segment {i} starts at {} before the previous one ends at {end} \
                 (maps must be in increasing order, without overlaps)",
                s.offset
            ));
        }
        end = s
            .offset
            .checked_add(s.len)
            .filter(|e| *e <= size)
            .ok_or_else(|| {
                format!(
                    "segment {i} ({} bytes at {}) ends past the file's size of {size}",
                    s.len, s.offset
                )
            })?;
        // Cannot overflow: the segments are disjoint and within `size`.
        total += s.len;
    }
    Ok(total)
}

impl TarIndexer {
    /// The entry whose sparse map is being read.
    fn take_pending(&mut self, offset: u64) -> Result<TarEntry, TarError> {
        self.pending.take().ok_or(TarError::BadExtension {
            offset,
            detail: "sparse map without its entry".into(),
        })
    }

    pub(super) fn segments(
        &self,
        map: &[u64],
        offset: u64,
    ) -> Result<Vec<SparseSegment>, TarError> {
        if !map.len().is_multiple_of(2) || map.len() / 2 > MAX_SPARSE_SEGMENTS {
            return Err(TarError::BadExtension {
                offset,
                detail: "malformed sparse map".into(),
            });
        }
        Ok(map
            .chunks(2)
            .map(|c| SparseSegment {
                offset: c[0],
                len: c[1],
            })
            .collect())
    }

    pub(super) fn push_entry(&mut self, mut entry: TarEntry, stored: u64) -> Result<(), TarError> {
        let header_offset = entry.data_offset;
        if let Some(seg) = &entry.sparse {
            let bad = |detail: String| TarError::BadSparseMap {
                path: String::from_utf8_lossy(&entry.path).into_owned(),
                offset: header_offset,
                detail,
            };
            let total = check_map(seg, entry.size).map_err(bad)?;
            if total > entry.data_len {
                return Err(bad(format!(
                    "its segments hold {total} bytes but the entry stores {}",
                    entry.data_len
                )));
            }
            entry.data_len = total;
        }
        let skip = stored.checked_add(pad(stored)).ok_or(TarError::BadNumber {
            offset: header_offset,
            field: "size",
        })?;
        self.entries.push(entry);
        self.state = if skip == 0 {
            State::Header
        } else {
            State::Skip { remaining: skip }
        };
        Ok(())
    }

    pub(super) fn gnu_sparse_ext(&mut self, block: &[u8]) -> Result<(), TarError> {
        let offset = self.offset - BLOCK as u64;
        for i in 0..21 {
            let at = i * 24;
            let off = parse_octal(&block[at..at + 12]).ok_or(TarError::BadNumber {
                offset,
                field: "sparse offset",
            })?;
            let len = parse_octal(&block[at + 12..at + 24]).ok_or(TarError::BadNumber {
                offset,
                field: "sparse numbytes",
            })?;
            if block[at] == 0 {
                break;
            }
            self.pending_sparse.push(off);
            self.pending_sparse.push(len);
        }
        if self.pending_sparse.len() / 2 > MAX_SPARSE_SEGMENTS {
            return Err(TarError::BadExtension {
                offset,
                detail: "too many sparse segments".into(),
            });
        }
        if block[504] != 0 {
            self.state = State::GnuSparseExt;
            return Ok(());
        }
        let mut entry = self.take_pending(offset)?;
        let map = std::mem::take(&mut self.pending_sparse);
        entry.sparse = Some(self.segments(&map, offset)?);
        entry.data_offset = self.offset;
        let stored = entry.data_len;
        self.push_entry(entry, stored)
    }

    /// PAX sparse 1.0: decimal numbers, one per line, at the start of the
    /// data: count, then offset/length pairs, padded to a block.
    pub(super) fn sparse10_map(&mut self, block: &[u8]) -> Result<(), TarError> {
        let offset = self.offset - block.len() as u64;
        // Accumulate blocks until the map is complete.
        let (stored, mut text) = std::mem::take(&mut self.sparse10);
        text.extend_from_slice(block);
        let numbers: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
        let complete_lines = numbers.len() - 1;
        let parse = |s: &[u8]| {
            parse_dec(s).ok_or(TarError::BadExtension {
                offset,
                detail: "malformed sparse 1.0 map".into(),
            })
        };
        if complete_lines >= 1 {
            let count = parse(numbers[0])? as usize;
            if count > MAX_SPARSE_SEGMENTS {
                return Err(TarError::BadExtension {
                    offset,
                    detail: "too many sparse segments".into(),
                });
            }
            if complete_lines > count * 2 {
                let mut map = Vec::with_capacity(count * 2);
                for n in &numbers[1..=count * 2] {
                    map.push(parse(n)?);
                }
                let map_bytes = text.len() as u64; // whole blocks consumed
                let mut entry = self.take_pending(offset)?;
                entry.sparse = Some(self.segments(&map, offset)?);
                entry.data_offset = self.offset;
                let rest = stored.saturating_sub(map_bytes);
                entry.data_len = rest;
                return self.push_entry(entry, rest);
            }
        }
        if text.len() as u64 >= stored || text.len() as u64 > MAX_EXTENSION {
            return Err(TarError::BadExtension {
                offset,
                detail: "sparse 1.0 map runs past the entry".into(),
            });
        }
        self.sparse10 = (stored, text);
        self.state = State::Sparse10Map {
            remaining: BLOCK as u64,
            padding: 0,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{header, index};
    use super::*;

    #[test]
    fn gnu_sparse_with_extension_blocks() {
        // A GNU 'S' header with 4 inline segments and 2 more in an extension block.
        let mut h = [0u8; 512];
        h[..4].copy_from_slice(b"hole");
        let oct = |v: u64, w: usize| format!("{:0w$o}\0", v, w = w - 1).into_bytes();
        h[100..108].copy_from_slice(&oct(0o644, 8));
        h[108..116].copy_from_slice(&oct(0, 8));
        h[116..124].copy_from_slice(&oct(0, 8));
        h[124..136].copy_from_slice(&oct(6 * 10, 12));
        h[136..148].copy_from_slice(&oct(0, 12));
        h[156] = b'S';
        h[257..265].copy_from_slice(b"ustar  \0");
        let segs: Vec<(u64, u64)> = (0..6).map(|i| (i * 1_000_000, 10)).collect();
        for (i, (o, l)) in segs.iter().take(4).enumerate() {
            let at = 386 + i * 24;
            h[at..at + 12].copy_from_slice(&oct(*o, 12));
            h[at + 12..at + 24].copy_from_slice(&oct(*l, 12));
        }
        h[482] = 1;
        h[483..495].copy_from_slice(&oct(6_000_000, 12));
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
        h[148..156].copy_from_slice(&format!("{sum:06o}\0 ").into_bytes());
        let mut ext = [0u8; 512];
        for (i, (o, l)) in segs.iter().skip(4).enumerate() {
            ext[i * 24..i * 24 + 12].copy_from_slice(&oct(*o, 12));
            ext[i * 24 + 12..i * 24 + 24].copy_from_slice(&oct(*l, 12));
        }
        let mut tar = h.to_vec();
        tar.extend_from_slice(&ext);
        tar.extend((0..60).map(|i| i as u8));
        tar.resize(tar.len() + pad(60) as usize + 1024, 0);
        let e = index(&tar, 13);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].size, 6_000_000);
        assert_eq!(e[0].data_len, 60);
        assert_eq!(e[0].data_offset, 1024);
        let s = e[0].sparse.as_ref().unwrap();
        assert_eq!(s.len(), 6);
        assert_eq!(
            s[5],
            SparseSegment {
                offset: 5_000_000,
                len: 10
            }
        );
    }

    #[test]
    fn maps_must_increase_without_overlap_and_fit_the_file() {
        let seg = |offset, len| SparseSegment { offset, len };
        assert_eq!(check_map(&[seg(0, 4), seg(4, 4), seg(100, 0)], 100), Ok(8));
        assert_eq!(check_map(&[], 0), Ok(0));
        let e = check_map(&[seg(1 << 20, 4096), seg(0, 4096)], 1 << 30).unwrap_err();
        assert!(e.contains("segment 1 starts at 0 before"), "{e}");
        let e = check_map(&[seg(0, 8192), seg(4096, 8192)], 1 << 20).unwrap_err();
        assert!(e.contains("segment 1 starts at 4096"), "{e}");
        let e = check_map(&[seg(1 << 20, 1)], 1 << 20).unwrap_err();
        assert!(e.contains("ends past the file's size"), "{e}");
        let e = check_map(&[seg(0, 1), seg(u64::MAX - 1, 5)], u64::MAX).unwrap_err();
        assert!(e.contains("segment 1"), "{e}");
    }

    #[test]
    fn a_backwards_gnu_map_is_an_error_naming_the_entry() {
        let mut h = tar::Header::new_gnu();
        h.set_path("back").unwrap();
        h.set_size(8);
        h.set_entry_type(tar::EntryType::GNUSparse);
        let raw = h.as_mut_bytes();
        let oct = |v: u64| format!("{v:011o}\0").into_bytes();
        raw[386..398].copy_from_slice(&oct(4096));
        raw[398..410].copy_from_slice(&oct(4));
        raw[410..422].copy_from_slice(&oct(0));
        raw[422..434].copy_from_slice(&oct(4));
        raw[483..495].copy_from_slice(&oct(8192));
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        tar.resize(1024, b'x');
        tar.resize(2048, 0);
        let mut ix = TarIndexer::new();
        use std::io::Write as _;
        let e = ix.write_all(&tar).err().map(|e| e.to_string());
        let e = e
            .or_else(|| ix.finish().err().map(|e| e.to_string()))
            .unwrap();
        assert!(
            e.contains("\"back\"") && e.contains("bad sparse map"),
            "{e}"
        );
    }

    #[test]
    fn pax_sparse_1_0_map_in_data() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([
            ("GNU.sparse.major", &b"1"[..]),
            ("GNU.sparse.minor", &b"0"[..]),
            ("GNU.sparse.name", &b"big.img"[..]),
            ("GNU.sparse.realsize", &b"5000000000"[..]),
        ])
        .unwrap();
        let mut data = b"2\n0\n4\n4999999996\n4\n".to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"headtail");
        let mut h = header(tar::EntryType::Regular, data.len() as u64);
        b.append_data(&mut h, "GNUSparseFile.0/big.img", &data[..])
            .unwrap();
        let tar = b.into_inner().unwrap();
        let e = index(&tar, 64);
        assert_eq!(e[0].path, b"big.img");
        assert_eq!(e[0].size, 5_000_000_000);
        assert_eq!(e[0].data_len, 8);
        assert_eq!(&tar[e[0].data_offset as usize..][..8], b"headtail");
        assert_eq!(e[0].sparse.as_ref().unwrap()[1].offset, 4_999_999_996);
    }
}
