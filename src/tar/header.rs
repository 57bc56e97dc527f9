//! ustar, GNU and v7 header blocks: checksums, octal and base-256
//! numbers, the ustar prefix, and what each type flag means.

use super::{
    BLOCK, EntryKind, ExtKind, MAX_EXTENSION, MAX_PATH, State, TarEntry, TarError, TarIndexer,
};

pub(super) fn parse_octal(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // GNU base-256: big-endian two's complement, first byte's top bit set.
        if field[0] & 0x40 != 0 {
            return None; // negative
        }
        let mut v: u64 = u64::from(field[0] & 0x3f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| *b != 0 && *b != b' ')
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    let mut v: u64 = 0;
    for b in s {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

pub(super) fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    &field[..end]
}

pub(super) fn pad(n: u64) -> u64 {
    (BLOCK as u64 - n % BLOCK as u64) % BLOCK as u64
}

impl TarIndexer {
    pub(super) fn header(&mut self, h: &[u8]) -> Result<(), TarError> {
        let header_offset = self.offset - BLOCK as u64;
        if h.iter().all(|b| *b == 0) {
            self.zero_blocks += 1;
            if self.zero_blocks == 2 {
                self.state = State::End;
            }
            return Ok(());
        }
        self.zero_blocks = 0;
        let stored = parse_octal(&h[148..156]).ok_or(TarError::BadChecksum {
            offset: header_offset,
        })?;
        let unsigned: u64 = h
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(*b)
                }
            })
            .sum();
        let signed: i64 = h
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    i64::from(*b as i8)
                }
            })
            .sum();
        if stored != unsigned && stored as i64 != signed {
            return Err(TarError::BadChecksum {
                offset: header_offset,
            });
        }
        let num = |range: std::ops::Range<usize>, field| {
            parse_octal(&h[range]).ok_or(TarError::BadNumber {
                offset: header_offset,
                field,
            })
        };
        let typeflag = h[156];
        let size = num(124..136, "size")?;
        let magic = &h[257..263];
        let is_ustar = magic == b"ustar\0";
        let is_gnu = magic == b"ustar ";

        // Extension headers: collect their payload, then continue.
        let ext_kind = match typeflag {
            b'x' | b'X' => Some(ExtKind::PaxLocal),
            b'g' => Some(ExtKind::PaxGlobal),
            b'L' => Some(ExtKind::LongName),
            b'K' => Some(ExtKind::LongLink),
            _ => None,
        };
        if let Some(kind) = ext_kind {
            if size > MAX_EXTENSION {
                return Err(TarError::BadExtension {
                    offset: header_offset,
                    detail: format!("{size} bytes is more than the {MAX_EXTENSION}-byte limit"),
                });
            }
            self.state = State::Extension {
                kind,
                remaining: size,
                padding: pad(size),
                header_offset,
            };
            if size == 0 {
                self.state = State::Header;
                self.extension(kind, &[], header_offset)?;
            }
            return Ok(());
        }

        let mut path: Vec<u8> = cstr(&h[0..100]).to_vec();
        if is_ustar {
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() {
                let mut p = prefix.to_vec();
                p.push(b'/');
                p.extend_from_slice(&path);
                path = p;
            }
        }
        let ext = std::mem::take(&mut self.local);
        let pick = |l: Option<u64>, g: Option<u64>, d: u64| l.or(g).unwrap_or(d);
        let path = ext
            .path
            .clone()
            .or_else(|| self.global.path.clone())
            .unwrap_or(path);
        let link = ext
            .link
            .clone()
            .or_else(|| self.global.link.clone())
            .unwrap_or_else(|| cstr(&h[157..257]).to_vec());
        let kind = match typeflag {
            b'0' | 0 | b'7' if path.ends_with(b"/") => EntryKind::Dir,
            b'0' | 0 | b'7' | b'S' => EntryKind::File,
            b'1' => EntryKind::Hardlink,
            b'2' => EntryKind::Symlink,
            b'3' => EntryKind::CharDevice,
            b'4' => EntryKind::BlockDevice,
            b'5' | b'D' => EntryKind::Dir,
            b'6' => EntryKind::Fifo,
            b'V' => {
                // A GNU volume label: not a file.
                self.state = State::Skip {
                    remaining: size + pad(size),
                };
                return Ok(());
            }
            other => {
                return Err(TarError::UnsupportedType {
                    path: String::from_utf8_lossy(&path).into_owned(),
                    offset: header_offset,
                    kind: other as char,
                });
            }
        };
        let data_len = match kind {
            EntryKind::File => pick(ext.size, self.global.size, size),
            // Directories (GNU dumpdir) and links may carry data; skip it.
            _ => pick(ext.size, self.global.size, size),
        };
        let (mtime, mtime_nsec) = match ext.mtime.or(self.global.mtime) {
            Some(t) => t,
            None => (num(136..148, "mtime")? as i64, 0),
        };
        let to_u32 = |v: u64, field| {
            u32::try_from(v).map_err(|_| TarError::BadNumber {
                offset: header_offset,
                field,
            })
        };
        let uid = match ext.uid.or(self.global.uid) {
            Some(u) => u,
            None => to_u32(num(108..116, "uid")?, "uid")?,
        };
        let gid = match ext.gid.or(self.global.gid) {
            Some(g) => g,
            None => to_u32(num(116..124, "gid")?, "gid")?,
        };
        let (dev_major, dev_minor) = if is_ustar || is_gnu {
            (
                match ext.dev_major {
                    Some(v) => v,
                    None => to_u32(num(329..337, "devmajor")?, "devmajor")?,
                },
                match ext.dev_minor {
                    Some(v) => v,
                    None => to_u32(num(337..345, "devminor")?, "devminor")?,
                },
            )
        } else {
            (0, 0)
        };
        let mut xattrs = self.global.xattrs.clone();
        for (k, v) in ext.xattrs.iter() {
            xattrs.retain(|(gk, _)| gk != k);
            xattrs.push((k.clone(), v.clone()));
        }
        let path = ext.sparse_name.clone().unwrap_or(path);
        for (what, len) in [("path", path.len()), ("link target", link.len())] {
            if len > MAX_PATH {
                return Err(TarError::PathTooLong {
                    offset: header_offset,
                    what,
                    len,
                });
            }
        }
        let mut entry = TarEntry {
            path,
            kind,
            mode: (num(100..108, "mode")? & 0o7777) as u32,
            uid,
            gid,
            mtime,
            mtime_nsec,
            size: if kind == EntryKind::File { data_len } else { 0 },
            link: if matches!(kind, EntryKind::Symlink | EntryKind::Hardlink) {
                link
            } else {
                Vec::new()
            },
            dev_major,
            dev_minor,
            xattrs,
            data_offset: self.offset,
            data_len,
            sparse: None,
        };

        // Sparse files.
        if typeflag == b'S' && is_gnu {
            let realsize = num(483..495, "realsize")?;
            let mut map = Vec::new();
            for i in 0..4 {
                let at = 386 + i * 24;
                let off = num(at..at + 12, "sparse offset")?;
                let len = num(at + 12..at + 24, "sparse numbytes")?;
                if off == 0 && len == 0 && h[at] == 0 {
                    break;
                }
                map.push(off);
                map.push(len);
            }
            entry.size = realsize;
            if h[482] != 0 {
                self.pending_sparse = map;
                self.pending = Some(entry);
                self.state = State::GnuSparseExt;
                return Ok(());
            }
            entry.sparse = Some(self.segments(&map, header_offset)?);
            return self.push_entry(entry, size);
        }
        if ext.sparse_major == Some(1) && ext.sparse_minor == Some(0) {
            entry.size = ext.sparse_realsize.unwrap_or(0);
            self.pending = Some(entry);
            // The map occupies the first blocks of the data area; its length
            // is unknown until parsed, so read one block at a time.
            self.state = State::Sparse10Map {
                remaining: BLOCK as u64,
                padding: 0,
            };
            self.sparse10 = (size, Vec::new());
            return Ok(());
        }
        if !ext.sparse_map.is_empty() || ext.sparse_realsize.is_some() {
            entry.size = ext.sparse_realsize.unwrap_or(data_len);
            entry.sparse = Some(self.segments(&ext.sparse_map, header_offset)?);
        }
        // A PAX `size` overrides the header's field (files over 8 GiB have
        // no room for their size there): skip what is really stored.
        self.push_entry(entry, data_len)
    }
}
