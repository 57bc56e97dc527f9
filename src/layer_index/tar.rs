//! A push parser for tar streams that records each entry's metadata and
//! where its data lies in the uncompressed stream, without keeping the data.
//!
//! It implements [`std::io::Write`], so it can sit behind a decompressor that
//! is already streaming a layer for verification. Formats: v7, ustar
//! (prefix), GNU (`L`/`K` long names, `S` sparse files, base-256 numbers)
//! and PAX (`path`, `linkpath`, `size`, `uid`, `gid`, fractional `mtime`,
//! `SCHILY.xattr.*`, `LIBARCHIVE.xattr.*`, `SCHILY.devmajor/devminor`, GNU
//! sparse 0.0, 0.1 and 1.0, global headers). Memory per entry is bounded:
//! extension headers larger than [`MAX_EXTENSION`] are refused.

use std::io;

/// Largest PAX / GNU long-name extension we buffer.
pub const MAX_EXTENSION: u64 = 1 << 20;
/// Most sparse segments one file may have.
pub const MAX_SPARSE_SEGMENTS: usize = 1 << 20;

const BLOCK: usize = 512;

/// Errors in a tar stream.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TarError {
    /// A header block failed its checksum.
    #[error("tar header at offset {offset} has a bad checksum (not a tar stream, or corrupt)")]
    BadChecksum {
        /// Stream offset of the header.
        offset: u64,
    },
    /// A numeric field does not parse.
    #[error("tar header at offset {offset}: bad {field} field")]
    BadNumber {
        /// Stream offset of the header.
        offset: u64,
        /// Which field.
        field: &'static str,
    },
    /// An extension header is malformed or too large.
    #[error("tar extension header at offset {offset}: {detail}")]
    BadExtension {
        /// Stream offset of the header.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// An entry type we cannot represent.
    #[error("tar entry {path:?} at offset {offset} has unsupported type {kind:?}")]
    UnsupportedType {
        /// The entry's path.
        path: String,
        /// Stream offset of the header.
        offset: u64,
        /// The type flag.
        kind: char,
    },
    /// The stream ended inside an entry.
    #[error("tar stream truncated at offset {offset} (inside {what})")]
    Truncated {
        /// Where it ended.
        offset: u64,
        /// What it was in the middle of.
        what: &'static str,
    },
}

impl From<TarError> for io::Error {
    fn from(e: TarError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// What a tar entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Hard link to an earlier path.
    Hardlink,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Named pipe.
    Fifo,
}

/// A piece of a sparse file: `len` bytes at logical `offset`, stored
/// consecutively in the entry's data area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseSegment {
    /// Offset in the file.
    pub offset: u64,
    /// Length.
    pub len: u64,
}

/// One tar entry as found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// Path bytes as stored (not normalised).
    pub path: Vec<u8>,
    /// Type.
    pub kind: EntryKind,
    /// Permission and setuid/setgid/sticky bits (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: u32,
    /// Logical file size (regular files; for sparse files the full size).
    pub size: u64,
    /// Symlink target or hardlink target path.
    pub link: Vec<u8>,
    /// Device major number.
    pub dev_major: u32,
    /// Device minor number.
    pub dev_minor: u32,
    /// Extended attributes, in archive order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Offset of the entry's data in the uncompressed stream.
    pub data_offset: u64,
    /// Bytes of data stored in the stream (sum of segments for sparse files).
    pub data_len: u64,
    /// The segments of a sparse file; `None` for ordinary files.
    pub sparse: Option<Vec<SparseSegment>>,
}

/// Overrides from PAX headers (local or global) and GNU long names.
#[derive(Debug, Default, Clone)]
struct Ext {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<(i64, u32)>,
    dev_major: Option<u32>,
    dev_minor: Option<u32>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse_major: Option<u32>,
    sparse_minor: Option<u32>,
    sparse_name: Option<Vec<u8>>,
    sparse_realsize: Option<u64>,
    sparse_map: Vec<u64>,
    sparse_pending_offset: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExtKind {
    PaxLocal,
    PaxGlobal,
    LongName,
    LongLink,
}

#[derive(Debug)]
enum State {
    /// Collecting a 512-byte header.
    Header,
    /// Collecting an extension's payload, then its padding.
    Extension {
        kind: ExtKind,
        remaining: u64,
        padding: u64,
        header_offset: u64,
    },
    /// Collecting a GNU sparse extension block (type `S` with isextended).
    GnuSparseExt,
    /// Reading a PAX 1.0 sparse map at the start of the data area.
    Sparse10Map { remaining: u64, padding: u64 },
    /// Skipping data and padding.
    Skip { remaining: u64 },
    /// After the end-of-archive marker.
    End,
}

/// Indexes a tar stream written to it.
#[derive(Debug)]
pub struct TarIndexer {
    state: State,
    offset: u64,
    buf: Vec<u8>,
    local: Ext,
    global: Ext,
    pending: Option<TarEntry>,
    pending_sparse: Vec<u64>,
    /// PAX sparse 1.0: the entry's stored size and the map text read so far.
    sparse10: (u64, Vec<u8>),
    zero_blocks: u32,
    entries: Vec<TarEntry>,
    error: Option<TarError>,
}

impl Default for TarIndexer {
    fn default() -> Self {
        TarIndexer::new()
    }
}

fn parse_octal(field: &[u8]) -> Option<u64> {
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

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    &field[..end]
}

fn pad(n: u64) -> u64 {
    (BLOCK as u64 - n % BLOCK as u64) % BLOCK as u64
}

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

fn parse_dec(v: &[u8]) -> Option<u64> {
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
    /// A fresh indexer.
    pub fn new() -> TarIndexer {
        TarIndexer {
            state: State::Header,
            offset: 0,
            buf: Vec::with_capacity(BLOCK),
            local: Ext::default(),
            global: Ext::default(),
            pending: None,
            pending_sparse: Vec::new(),
            sparse10: (0, Vec::new()),
            zero_blocks: 0,
            entries: Vec::new(),
            error: None,
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Entries found so far.
    pub fn entries(&self) -> &[TarEntry] {
        &self.entries
    }

    /// End of stream: the entries, or why the stream is not a complete tar.
    /// A stream that ends at an entry boundary without the end-of-archive
    /// marker is accepted, as GNU tar and Docker accept it.
    pub fn finish(self) -> Result<Vec<TarEntry>, TarError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let what = match self.state {
            State::End => None,
            State::Header if self.buf.is_empty() && self.pending.is_none() => None,
            State::Header => Some("a header"),
            State::Extension { .. } => Some("an extension header"),
            State::GnuSparseExt => Some("a sparse map"),
            State::Sparse10Map { .. } => Some("a sparse map"),
            State::Skip { .. } => Some("file data"),
        };
        match what {
            None => Ok(self.entries),
            Some(what) => Err(TarError::Truncated {
                offset: self.offset,
                what,
            }),
        }
    }

    fn fail(&mut self, e: TarError) -> io::Error {
        self.error = Some(e.clone());
        e.into()
    }

    /// Consume `data`.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), TarError> {
        while !data.is_empty() {
            match &mut self.state {
                State::End => {
                    self.offset += data.len() as u64;
                    return Ok(());
                }
                State::Skip { remaining } => {
                    let n = (*remaining).min(data.len() as u64);
                    *remaining -= n;
                    self.offset += n;
                    data = &data[n as usize..];
                    if *remaining == 0 {
                        self.state = State::Header;
                    }
                }
                State::Header | State::GnuSparseExt => {
                    let need = BLOCK - self.buf.len();
                    let n = need.min(data.len());
                    self.buf.extend_from_slice(&data[..n]);
                    self.offset += n as u64;
                    data = &data[n..];
                    if self.buf.len() == BLOCK {
                        let block = std::mem::replace(&mut self.buf, Vec::with_capacity(BLOCK));
                        if matches!(self.state, State::GnuSparseExt) {
                            self.gnu_sparse_ext(&block)?;
                        } else {
                            self.header(&block)?;
                        }
                    }
                }
                State::Extension {
                    remaining, padding, ..
                }
                | State::Sparse10Map { remaining, padding } => {
                    if *remaining > 0 {
                        let n = (*remaining).min(data.len() as u64) as usize;
                        self.buf.extend_from_slice(&data[..n]);
                        *remaining -= n as u64;
                        self.offset += n as u64;
                        data = &data[n..];
                    }
                    if *remaining == 0 {
                        let n = (*padding).min(data.len() as u64);
                        *padding -= n;
                        self.offset += n;
                        data = &data[n as usize..];
                        if *padding == 0 {
                            let payload = std::mem::take(&mut self.buf);
                            match std::mem::replace(&mut self.state, State::Header) {
                                State::Extension {
                                    kind,
                                    header_offset,
                                    ..
                                } => self.extension(kind, &payload, header_offset)?,
                                State::Sparse10Map { .. } => self.sparse10_map(&payload)?,
                                _ => unreachable!(),
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn header(&mut self, h: &[u8]) -> Result<(), TarError> {
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
        let mut entry = TarEntry {
            path: ext.sparse_name.clone().unwrap_or(path),
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

    fn segments(&self, map: &[u64], offset: u64) -> Result<Vec<SparseSegment>, TarError> {
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

    fn push_entry(&mut self, mut entry: TarEntry, stored: u64) -> Result<(), TarError> {
        let header_offset = entry.data_offset;
        if let Some(seg) = &entry.sparse {
            let total: u64 = seg.iter().map(|s| s.len).sum();
            let end = seg
                .iter()
                .map(|s| s.offset.saturating_add(s.len))
                .max()
                .unwrap_or(0);
            if end > entry.size || total > entry.data_len {
                return Err(TarError::BadExtension {
                    offset: header_offset,
                    detail: "sparse map does not fit the file".into(),
                });
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

    fn gnu_sparse_ext(&mut self, block: &[u8]) -> Result<(), TarError> {
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
        let mut entry = self.pending.take().expect("pending sparse entry");
        let map = std::mem::take(&mut self.pending_sparse);
        entry.sparse = Some(self.segments(&map, offset)?);
        entry.data_offset = self.offset;
        let stored = entry.data_len;
        self.push_entry(entry, stored)
    }

    /// PAX sparse 1.0: decimal numbers, one per line, at the start of the
    /// data: count, then offset/length pairs, padded to a block.
    fn sparse10_map(&mut self, block: &[u8]) -> Result<(), TarError> {
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
                let mut entry = self.pending.take().expect("pending sparse entry");
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

    fn extension(&mut self, kind: ExtKind, payload: &[u8], offset: u64) -> Result<(), TarError> {
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

impl io::Write for TarIndexer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(e) = &self.error {
            return Err(e.clone().into());
        }
        match self.feed(buf) {
            Ok(()) => Ok(buf.len()),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn index(tar: &[u8], chunk: usize) -> Vec<TarEntry> {
        let mut ix = TarIndexer::new();
        for c in tar.chunks(chunk) {
            ix.write_all(c).unwrap();
        }
        ix.finish().unwrap()
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o4755);
        h.set_uid(1000);
        h.set_gid(100);
        h.set_mtime(1_700_000_000);
        h
    }

    #[test]
    fn records_metadata_and_data_offsets_in_any_chunking() {
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("usr/{}", "x".repeat(180));
        b.append_data(
            &mut header(tar::EntryType::Regular, 5),
            &long,
            &b"hello"[..],
        )
        .unwrap();
        b.append_data(&mut header(tar::EntryType::Directory, 0), "etc/", &b""[..])
            .unwrap();
        let mut h = header(tar::EntryType::Symlink, 0);
        b.append_link(&mut h, "bin/sh", "/usr/bin/dash".repeat(10))
            .unwrap();
        b.append_pax_extensions([
            ("SCHILY.xattr.user.foo", &b"bar"[..]),
            ("mtime", &b"1700000000.5"[..]),
            ("uid", &b"3000000000"[..]),
        ])
        .unwrap();
        b.append_data(&mut header(tar::EntryType::Regular, 3), "x", &b"abc"[..])
            .unwrap();
        let mut h = header(tar::EntryType::Char, 0);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        b.append_data(&mut h, "dev/null", &b""[..]).unwrap();
        let tar = b.into_inner().unwrap();
        for chunk in [1, 7, 512, 100_000] {
            let e = index(&tar, chunk);
            assert_eq!(e.len(), 5);
            assert_eq!(e[0].path, long.as_bytes());
            assert_eq!(e[0].mode, 0o4755);
            assert_eq!(&tar[e[0].data_offset as usize..][..5], b"hello");
            assert_eq!(e[1].kind, EntryKind::Dir);
            assert_eq!(e[2].kind, EntryKind::Symlink);
            assert_eq!(e[2].link, "/usr/bin/dash".repeat(10).as_bytes());
            assert_eq!(e[3].xattrs, vec![(b"user.foo".to_vec(), b"bar".to_vec())]);
            assert_eq!((e[3].mtime, e[3].mtime_nsec), (1_700_000_000, 500_000_000));
            assert_eq!(e[3].uid, 3_000_000_000);
            assert_eq!(&tar[e[3].data_offset as usize..][..3], b"abc");
            assert_eq!(
                (e[4].kind, e[4].dev_major, e[4].dev_minor),
                (EntryKind::CharDevice, 1, 3)
            );
        }
    }

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

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut ix = TarIndexer::new();
        let err = ix.write_all(&[b'x'; 512]).unwrap_err();
        assert!(err.to_string().contains("bad checksum"), "{err}");
        // Truncated inside data.
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(
            &mut header(tar::EntryType::Regular, 1000),
            "f",
            &[1u8; 1000][..],
        )
        .unwrap();
        let tar = b.into_inner().unwrap();
        let mut ix = TarIndexer::new();
        ix.write_all(&tar[..700]).unwrap();
        assert!(matches!(ix.finish(), Err(TarError::Truncated { .. })));
        // A huge PAX header is refused before it is buffered.
        let mut h = header(tar::EntryType::XHeader, MAX_EXTENSION + 1);
        h.set_cksum();
        let mut ix = TarIndexer::new();
        let err = ix.write_all(h.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
        // Garbage PAX records.
        for rec in [&b"zz path=x\n"[..], b"5 path=x\n", b"100 a=b\n"] {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = header(tar::EntryType::XHeader, rec.len() as u64);
            b.append_data(&mut h, "pax", rec).unwrap();
            let tar = b.into_inner().unwrap();
            let mut ix = TarIndexer::new();
            assert!(
                ix.write_all(&tar).is_err(),
                "{:?}",
                String::from_utf8_lossy(rec)
            );
        }
    }

    #[test]
    fn pax_size_overrides_the_header_field() {
        // Writers put sizes over 8 GiB only in PAX `size`; the header's own
        // field then says something else (here 0). The stored bytes follow
        // the PAX size, and the next entry must still be found.
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("size", &b"5"[..])]).unwrap();
        let mut h = header(tar::EntryType::Regular, 0);
        h.set_cksum();
        b.append(&h, &b"12345"[..]).unwrap();
        b.append_data(&mut header(tar::EntryType::Regular, 3), "next", &b"abc"[..])
            .unwrap();
        let tar = b.into_inner().unwrap();
        let e = index(&tar, 100);
        assert_eq!((e[0].size, e.len()), (5, 2));
        assert_eq!(&tar[e[0].data_offset as usize..][..5], b"12345");
        assert_eq!(e[1].path, b"next");
    }

    #[test]
    fn absurd_sizes_are_errors_not_overflows() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("size", u64::MAX.to_string().as_bytes())])
            .unwrap();
        b.append_data(&mut header(tar::EntryType::Regular, 0), "huge", &b""[..])
            .unwrap();
        let tar = b.into_inner().unwrap();
        let mut ix = TarIndexer::new();
        let err = ix.write_all(&tar).unwrap_err();
        assert!(err.to_string().contains("size"), "{err}");
    }

    #[test]
    fn pax_times_before_the_epoch() {
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"12.000000001"), Some((12, 1)));
        assert_eq!(parse_pax_time(b"12.x"), None);
    }
}
