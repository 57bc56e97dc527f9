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
//!
//! The state machine is here; `header.rs` parses ustar/GNU headers, `pax.rs`
//! PAX records and long names, `sparse.rs` the GNU sparse formats.

mod header;
mod pax;
mod sparse;

pub use sparse::check_map;

use std::io;

/// Largest PAX / GNU long-name extension we buffer.
pub const MAX_EXTENSION: u64 = 1 << 20;
/// Longest path or link target an entry may have: Linux's `PATH_MAX`
/// (4096) less the terminating NUL. Longer paths cannot be opened on
/// Linux, and refusing them keeps the index linear in the entries.
pub const MAX_PATH: usize = 4095;
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
    /// A sparse file's map is out of order, overlapping or too big.
    #[error("tar entry {path:?} at offset {offset}: bad sparse map: {detail}")]
    BadSparseMap {
        /// The entry's path.
        path: String,
        /// Stream offset of the header.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// A path or link target longer than Linux's `PATH_MAX`.
    #[error(
        "tar entry at offset {offset}: {what} of {len} bytes is longer than PATH_MAX allows ({MAX_PATH} bytes)"
    )]
    PathTooLong {
        /// Stream offset of the header.
        offset: u64,
        /// `path` or `link target`.
        what: &'static str,
        /// Its length.
        len: usize,
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

    pub(super) fn index(tar: &[u8], chunk: usize) -> Vec<TarEntry> {
        let mut ix = TarIndexer::new();
        for c in tar.chunks(chunk) {
            ix.write_all(c).unwrap();
        }
        ix.finish().unwrap()
    }

    pub(super) fn header(kind: tar::EntryType, size: u64) -> tar::Header {
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
}
