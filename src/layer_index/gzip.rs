//! Random access into gzip layers, zran style, in pure Rust (zlib-rs, through
//! its stable zlib API in `libz-rs-sys`).
//!
//! The indexing pass inflates the whole layer once, stopping at every
//! deflate block boundary (`Z_BLOCK`). When at least a span's
//! worth of output has been produced since the last checkpoint, it records
//! one: the compressed byte offset, how many bits of the previous byte
//! belong to the next block, the uncompressed offset, and the last 32 KiB of
//! output (the window that back-references may reach into). Any span can
//! later be inflated from its checkpoint alone: prime the leftover bits,
//! restore the window with `set_dictionary`, inflate raw deflate.
//!
//! Multi-member gzip files (concatenated streams) are handled in both
//! directions: members are re-entered by parsing the next gzip header.

use std::borrow::Cow;
use std::ffi::c_int;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::ptr;
use std::sync::Arc;

use libz_rs_sys::{
    Z_BUF_ERROR, Z_OK, Z_STREAM_END, inflate, inflateEnd, inflateInit2_, inflatePrime,
    inflateReset, inflateSetDictionary, z_stream, zlibVersion,
};

/// zlib's `Z_BLOCK` flush: stop at deflate block boundaries.
const Z_BLOCK: c_int = 5;
/// zlib's `Z_NO_FLUSH`.
const Z_NO_FLUSH: c_int = 0;

/// Size of the deflate window a checkpoint restores.
pub const WINDOW: usize = 32 * 1024;

/// Errors inflating.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GzipError {
    /// The data is not valid gzip/deflate.
    #[error("invalid gzip data: {0}")]
    Corrupt(String),
    /// The compressed input ended before the requested output.
    #[error("gzip data ended early")]
    Truncated,
    /// A window spilled to a file could not be read back.
    #[error("reading a checkpoint window back: {0}")]
    Window(String),
}

/// Where a checkpoint's stored window is.
#[derive(Debug, Clone)]
enum Stored {
    /// In memory.
    Mem(Vec<u8>),
    /// In a file the index's windows were spilled to: (file, offset, length).
    File(Arc<File>, u64, u32),
}

/// Where a checkpoint's window was written in a spill file.
#[derive(Debug, Clone, Copy)]
pub struct WindowPlace {
    /// Byte offset in the file.
    offset: u64,
    /// Length in bytes.
    len: u32,
}

/// A place where inflating can resume.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Offset of the first whole compressed byte after the block boundary.
    pub compressed: u64,
    /// Bits (0..=7) of the byte before `compressed` that belong to the next block.
    pub bits: u8,
    /// Offset in the uncompressed stream.
    pub uncompressed: u64,
    /// Up to 32 KiB of output preceding `uncompressed`, kept compressed
    /// (a tag byte, then a zstd frame or the raw bytes): a blob that
    /// inflates a thousandfold has windows that compress as well, so index
    /// memory follows the blob, not what it inflates to. An open disk
    /// spills them to a file ([`Checkpoint::spill`]).
    window_z: Stored,
}

impl PartialEq for Checkpoint {
    fn eq(&self, other: &Checkpoint) -> bool {
        (self.compressed, self.bits, self.uncompressed)
            == (other.compressed, other.bits, other.uncompressed)
            && matches!(
                (self.window_bytes(), other.window_bytes()),
                (Ok(a), Ok(b)) if a == b
            )
    }
}

impl Eq for Checkpoint {}

/// zstd level 1 with a compressor kept per thread (making one per window
/// costs as much as compressing it).
fn compress_window(window: &[u8]) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static Z: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    Z.with(|z| {
        let mut z = z.borrow_mut();
        if z.is_none() {
            *z = Some(zstd::bulk::Compressor::new(1)?);
        }
        match z.as_mut() {
            Some(c) => c.compress(window),
            None => Err(std::io::Error::other("no zstd compressor")),
        }
    })
}

/// `window_z` tags.
const RAW: u8 = 0;
const ZSTD: u8 = 1;

impl Checkpoint {
    /// A checkpoint whose window is `window` (at most [`WINDOW`] bytes).
    pub fn new(compressed: u64, bits: u8, uncompressed: u64, window: &[u8]) -> Checkpoint {
        let window_z = match compress_window(window) {
            Ok(z) if z.len() < window.len() => [&[ZSTD][..], &z].concat(),
            _ => [&[RAW][..], window].concat(),
        };
        Checkpoint {
            compressed,
            bits,
            uncompressed,
            window_z: Stored::Mem(window_z),
        }
    }

    /// A checkpoint whose window is kept as given, uncompressed (for
    /// windows about to be spilled to a file, where compressing them
    /// would cost more than it saves); `None` if malformed.
    pub fn with_raw_window(
        compressed: u64,
        bits: u8,
        uncompressed: u64,
        window: &[u8],
    ) -> Option<Checkpoint> {
        Checkpoint::from_stored(
            compressed,
            bits,
            uncompressed,
            [&[RAW][..], window].concat(),
        )
    }

    /// A checkpoint with its window as [`Checkpoint::window_bytes`]
    /// returned it (from an index file); `None` if it is malformed.
    pub fn from_stored(
        compressed: u64,
        bits: u8,
        uncompressed: u64,
        window_z: Vec<u8>,
    ) -> Option<Checkpoint> {
        let ok = match window_z.split_first() {
            Some((&RAW, w)) => w.len() <= WINDOW,
            Some((&ZSTD, z)) => z.len() <= WINDOW + 64,
            _ => false,
        };
        (ok && bits <= 7).then_some(Checkpoint {
            compressed,
            bits,
            uncompressed,
            window_z: Stored::Mem(window_z),
        })
    }

    /// The window as stored (tagged, maybe compressed), for the index file.
    pub fn window_bytes(&self) -> Result<Cow<'_, [u8]>, GzipError> {
        match &self.window_z {
            Stored::Mem(v) => Ok(Cow::Borrowed(v)),
            Stored::File(f, offset, len) => {
                let mut buf = vec![0u8; *len as usize];
                f.read_exact_at(&mut buf, *offset)
                    .map_err(|e| GzipError::Window(e.to_string()))?;
                Ok(Cow::Owned(buf))
            }
        }
    }

    /// Move the stored window to `file` at `*at` (advanced past it), so
    /// that it costs no memory; it is read back when a read needs it.
    pub fn spill(&mut self, file: &Arc<File>, at: &mut u64) -> std::io::Result<()> {
        if let Some(place) = self.write_window(file, at)? {
            self.window_written(file, place);
        }
        Ok(())
    }

    /// The first half of [`Checkpoint::spill`], which needs no exclusive
    /// borrow: write a window held in memory to `file` at `*at` (advanced
    /// past it) and say where; `None` if it is in a file already.
    pub fn write_window(&self, file: &File, at: &mut u64) -> std::io::Result<Option<WindowPlace>> {
        let Stored::Mem(v) = &self.window_z else {
            return Ok(None);
        };
        file.write_all_at(v, *at)?;
        let place = WindowPlace {
            offset: *at,
            len: v.len() as u32,
        };
        *at += v.len() as u64;
        Ok(Some(place))
    }

    /// The second half: read the window from `file` at `place` (where
    /// [`Checkpoint::write_window`] put it) from now on.
    pub fn window_written(&mut self, file: &Arc<File>, place: WindowPlace) {
        self.window_z = Stored::File(file.clone(), place.offset, place.len);
    }

    /// The window, decompressed.
    pub fn window(&self) -> Result<Vec<u8>, GzipError> {
        let bad = |why: &str| GzipError::Corrupt(format!("checkpoint window: {why}"));
        let stored = self.window_bytes()?;
        match stored.split_first() {
            Some((&RAW, w)) => Ok(w.to_vec()),
            Some((&ZSTD, z)) => {
                let w = zstd::bulk::decompress(z, WINDOW).map_err(|e| bad(&e.to_string()))?;
                Ok(w)
            }
            _ => Err(bad("unknown encoding")),
        }
    }
}

/// An inflate stream with a stable address (zlib keeps a pointer back to
/// its `z_stream`, so it must not move).
struct Stream {
    strm: Box<z_stream>,
}

// SAFETY: the stream owns its state exclusively; nothing in it is tied to a
// thread, and all access goes through `&mut self`.
unsafe impl Send for Stream {}

impl Stream {
    /// `window_bits`: -15 raw deflate, 47 gzip or zlib (auto-detected).
    fn new(window_bits: c_int) -> Stream {
        let mut strm = Box::new(z_stream::default());
        // SAFETY: `strm` is a zeroed z_stream (no allocator set: the default
        // one is used); the version string and struct size are the
        // library's own.
        let rc = unsafe {
            inflateInit2_(
                &mut *strm,
                window_bits,
                zlibVersion(),
                std::mem::size_of::<z_stream>() as c_int,
            )
        };
        assert_eq!(rc, Z_OK, "inflateInit2 with valid parameters");
        Stream { strm }
    }

    /// Inflate from `input` into `output`; returns (consumed, produced, code).
    fn run(&mut self, input: &[u8], output: &mut [u8], flush: c_int) -> (usize, usize, c_int) {
        self.strm.next_in = input.as_ptr();
        self.strm.avail_in = input.len().min(u32::MAX as usize) as u32;
        self.strm.next_out = output.as_mut_ptr();
        self.strm.avail_out = output.len().min(u32::MAX as usize) as u32;
        let (avail_in, avail_out) = (self.strm.avail_in, self.strm.avail_out);
        // SAFETY: the stream was initialised in `new`; next_in/avail_in
        // describe `input` and next_out/avail_out describe `output`, both
        // valid and unaliased for this call. The pointers are cleared below,
        // before the borrows end.
        let rc = unsafe { inflate(&mut *self.strm, flush) };
        let consumed = (avail_in - self.strm.avail_in) as usize;
        let produced = (avail_out - self.strm.avail_out) as usize;
        self.strm.next_in = ptr::null();
        self.strm.avail_in = 0;
        self.strm.next_out = ptr::null_mut();
        self.strm.avail_out = 0;
        (consumed, produced, rc)
    }

    fn data_type(&self) -> c_int {
        self.strm.data_type
    }

    fn reset(&mut self) {
        // SAFETY: the stream was initialised in `new` and is not in use.
        unsafe { inflateReset(&mut *self.strm) };
    }

    fn prime(&mut self, bits: u8, value: u8) {
        // SAFETY: the stream was initialised in `new`; 1..=7 bits is in range.
        unsafe { inflatePrime(&mut *self.strm, c_int::from(bits), c_int::from(value)) };
    }

    fn set_dictionary(&mut self, dict: &[u8]) {
        if !dict.is_empty() {
            // SAFETY: the stream was initialised in `new` (raw mode, so a
            // dictionary may be set before inflating); `dict` is valid for
            // its length, which fits a u32 (at most 32 KiB).
            unsafe { inflateSetDictionary(&mut *self.strm, dict.as_ptr(), dict.len() as u32) };
        }
    }

    fn error(&self) -> String {
        if self.strm.msg.is_null() {
            "corrupt deflate stream".into()
        } else {
            // SAFETY: zlib sets `msg` to a static NUL-terminated string.
            unsafe { std::ffi::CStr::from_ptr(self.strm.msg) }
                .to_string_lossy()
                .into_owned()
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised in `new` and is ended once.
        unsafe { inflateEnd(&mut *self.strm) };
    }
}

/// The indexing pass: push compressed bytes in, get uncompressed bytes out
/// (through a callback) and checkpoints every `span` bytes or so.
pub struct Indexer {
    stream: Stream,
    span: u64,
    sub: u64,
    total_in: u64,
    total_out: u64,
    last: Option<u64>,
    ring: Vec<u8>,
    ring_pos: usize,
    ring_full: bool,
    out: Vec<u8>,
    checkpoints: Vec<Checkpoint>,
    done: bool,
    member_end: bool,
    /// Where windows go as they are made, and the next free offset there.
    spill: Option<(Arc<File>, u64)>,
}

impl Indexer {
    /// An indexer that checkpoints about every `span` uncompressed bytes and
    /// hands output to its sink in pieces that never cross a multiple of
    /// `sub` (so the sink can note where each `sub` piece ends compressed).
    pub fn new(span: u64, sub: u64) -> Indexer {
        Indexer {
            stream: Stream::new(47),
            span,
            sub,
            total_in: 0,
            total_out: 0,
            last: None,
            ring: vec![0u8; WINDOW],
            ring_pos: 0,
            ring_full: false,
            out: vec![0u8; 256 << 10],
            checkpoints: Vec::new(),
            done: false,
            member_end: false,
            spill: None,
        }
    }

    /// Move each checkpoint's window to `file` as it is made, so that
    /// indexing a layer of any size holds none of them in memory. A window
    /// that cannot be written stays in memory.
    pub fn spill_to(&mut self, file: Arc<File>) {
        self.spill = Some((file, 0));
    }

    fn window(&self) -> Vec<u8> {
        if self.ring_full {
            let mut w = self.ring[self.ring_pos..].to_vec();
            w.extend_from_slice(&self.ring[..self.ring_pos]);
            w
        } else {
            self.ring[..self.ring_pos].to_vec()
        }
    }

    fn remember(&mut self, data: &[u8]) {
        let data = if data.len() > WINDOW {
            &data[data.len() - WINDOW..]
        } else {
            data
        };
        let first = (WINDOW - self.ring_pos).min(data.len());
        self.ring[self.ring_pos..self.ring_pos + first].copy_from_slice(&data[..first]);
        let rest = data.len() - first;
        self.ring[..rest].copy_from_slice(&data[first..]);
        if self.ring_pos + data.len() >= WINDOW {
            self.ring_full = true;
        }
        self.ring_pos = (self.ring_pos + data.len()) % WINDOW;
    }

    /// Feed compressed bytes; `sink` receives the uncompressed output with
    /// the compressed bytes consumed so far, and `checkpoint` is called with
    /// that count whenever a checkpoint is recorded (after the output before
    /// it went to `sink`).
    pub fn push(
        &mut self,
        mut input: &[u8],
        sink: &mut dyn FnMut(&[u8], u64) -> std::io::Result<()>,
        checkpoint: &mut dyn FnMut(u64),
    ) -> std::io::Result<()> {
        let corrupt =
            |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, GzipError::Corrupt(m));
        while !input.is_empty() {
            if self.member_end {
                // Another member after a complete one: start over on its header.
                self.stream.reset();
                self.member_end = false;
                self.done = false;
            }
            if self.done {
                return Err(corrupt("trailing garbage after the gzip stream".into()));
            }
            let mut out = std::mem::take(&mut self.out);
            let room = (self.sub - self.total_out % self.sub).min(out.len() as u64) as usize;
            let (used, made, rc) = self.stream.run(input, &mut out[..room], Z_BLOCK);
            input = &input[used..];
            self.total_in += used as u64;
            if made > 0 {
                let chunk = &out[..made];
                let r = sink(chunk, self.total_in);
                self.remember(chunk);
                self.total_out += made as u64;
                if let Err(e) = r {
                    self.out = out;
                    return Err(e);
                }
            }
            self.out = out;
            match rc {
                Z_OK | Z_BUF_ERROR => {}
                Z_STREAM_END => {
                    self.done = true;
                    self.member_end = true;
                    continue;
                }
                _ => return Err(corrupt(self.stream.error())),
            }
            let dt = self.stream.data_type();
            let at_boundary = dt & 128 != 0 && dt & 64 == 0;
            let due = match self.last {
                None => true,
                Some(l) => self.total_out - l >= self.span,
            };
            if at_boundary && due {
                let window = self.window();
                let mut c = Checkpoint::new(self.total_in, (dt & 7) as u8, self.total_out, &window);
                if let Some((file, at)) = &mut self.spill {
                    // Best effort: on a write error the window stays here.
                    let _ = c.spill(file, at);
                }
                self.checkpoints.push(c);
                self.last = Some(self.total_out);
                checkpoint(self.total_in);
            }
            if used == 0 && made == 0 {
                break;
            }
        }
        Ok(())
    }

    /// End of input: the checkpoints, or an error if the stream is incomplete.
    pub fn finish(self) -> Result<Vec<Checkpoint>, GzipError> {
        if !self.done {
            return Err(GzipError::Truncated);
        }
        Ok(self.checkpoints)
    }
}

/// Length of a gzip member header at the start of `b`, if complete.
fn gzip_header_len(b: &[u8]) -> Option<usize> {
    if b.len() < 10 || b[0] != 0x1f || b[1] != 0x8b || b[2] != 8 {
        return None;
    }
    let flags = b[3];
    let mut at = 10;
    if flags & 4 != 0 {
        let xlen = u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]) as usize;
        at += 2 + xlen;
    }
    for bit in [8u8, 16] {
        if flags & bit != 0 {
            at += b.get(at..)?.iter().position(|c| *c == 0)? + 1;
        }
    }
    if flags & 2 != 0 {
        at += 2;
    }
    (at <= b.len()).then_some(at)
}

/// Inflate `len` uncompressed bytes starting `skip` bytes after checkpoint
/// `cp`, from `compressed`, the blob's bytes from `cp.compressed - 1` (or
/// `cp.compressed` when `cp.bits == 0`) onwards (enough of them).
pub fn read_span(
    cp: &Checkpoint,
    compressed: &[u8],
    skip: u64,
    len: usize,
) -> Result<Vec<u8>, GzipError> {
    let mut s = Stream::new(-15);
    let mut input = compressed;
    if cp.bits > 0 {
        let (&first, rest) = input.split_first().ok_or(GzipError::Truncated)?;
        s.prime(cp.bits, first >> (8 - cp.bits));
        input = rest;
    }
    s.set_dictionary(&cp.window()?);
    let mut out = vec![0u8; len];
    let mut scratch = vec![0u8; 64 << 10];
    let mut to_skip = skip;
    let mut filled = 0usize;
    while filled < len {
        let (used, made, rc) = if to_skip > 0 {
            let n = to_skip.min(scratch.len() as u64) as usize;
            let r = s.run(input, &mut scratch[..n], Z_NO_FLUSH);
            to_skip -= r.1 as u64;
            r
        } else {
            let r = s.run(input, &mut out[filled..], Z_NO_FLUSH);
            filled += r.1;
            r
        };
        input = &input[used..];
        match rc {
            Z_OK | Z_BUF_ERROR => {
                if used == 0 && made == 0 {
                    return Err(GzipError::Truncated);
                }
            }
            Z_STREAM_END => {
                if filled == len {
                    break;
                }
                // End of a member: skip its 8-byte trailer and the next header.
                let rest = input.get(8..).ok_or(GzipError::Truncated)?;
                let h = gzip_header_len(rest).ok_or(GzipError::Truncated)?;
                input = &rest[h..];
                s = Stream::new(-15);
            }
            _ => return Err(GzipError::Corrupt(s.error())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn sample(n: usize) -> Vec<u8> {
        // Compressible about as well as real layer content (~3:1): words
        // with pseudo-random hex in between, so deflate blocks stay small.
        let mut v = Vec::with_capacity(n);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        while v.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(
                format!("entry {:08x} usr/lib/file-{}\n", x as u32, x % 97).as_bytes(),
            );
        }
        v.truncate(n);
        v
    }

    fn index(gz: &[u8], span: u64, chunk: usize) -> (Vec<u8>, Vec<Checkpoint>) {
        let mut ix = Indexer::new(span, 1 << 40);
        let mut out = Vec::new();
        for c in gz.chunks(chunk) {
            ix.push(
                c,
                &mut |d, _| {
                    out.extend_from_slice(d);
                    Ok(())
                },
                &mut |_| {},
            )
            .unwrap();
        }
        (out, ix.finish().unwrap())
    }

    fn check_all_spans(gz: &[u8], data: &[u8], cps: &[Checkpoint]) {
        for (i, cp) in cps.iter().enumerate() {
            let end = cps.get(i + 1).map_or(data.len() as u64, |n| n.uncompressed);
            let start = cp.compressed - u64::from(cp.bits > 0);
            let len = (end - cp.uncompressed) as usize;
            let got = read_span(cp, &gz[start as usize..], 0, len).unwrap();
            assert_eq!(
                got,
                &data[cp.uncompressed as usize..end as usize],
                "span {i}"
            );
            // And a piece in the middle of the span.
            if len > 100 {
                let got = read_span(cp, &gz[start as usize..], 50, 40).unwrap();
                assert_eq!(got, &data[cp.uncompressed as usize + 50..][..40]);
            }
        }
    }

    #[test]
    fn every_span_inflates_from_its_checkpoint_alone() {
        let data = sample(3 << 20);
        for level in [1, 6, 9] {
            let gz = gzip(&data, level);
            let (out, cps) = index(&gz, 256 << 10, 8191);
            assert_eq!(out, data);
            // zlib-rs level 1 (zlib-ng's "quick" strategy) ends blocks only
            // when its buffer fills, so its checkpoints are sparser.
            let want = if level == 1 { 1 } else { 8 };
            assert!(
                cps.len() >= want,
                "level {level}: {} checkpoints",
                cps.len()
            );
            assert_eq!(cps[0].uncompressed, 0);
            check_all_spans(&gz, &data, &cps);
        }
    }

    /// `len` bytes of sample data, gzipped, indexed with 256 KiB
    /// checkpoints, and a new file in a temp dir to spill windows to.
    fn spill_setup(
        len: usize,
    ) -> (
        Vec<u8>,
        Vec<u8>,
        Vec<Checkpoint>,
        tempfile::TempDir,
        Arc<File>,
    ) {
        let data = sample(len);
        let gz = gzip(&data, 6);
        let (_, cps) = index(&gz, 256 << 10, 8191);
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(
            File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(dir.path().join("w"))
                .unwrap(),
        );
        (data, gz, cps, dir, file)
    }

    #[test]
    fn spilled_windows_read_back_and_compare_equal() {
        let (data, gz, cps, _dir, file) = spill_setup(2 << 20);
        let mut spilled = cps.clone();
        let mut at = 0;
        for c in &mut spilled {
            c.spill(&file, &mut at).unwrap();
        }
        assert!(matches!(spilled[1].window_z, Stored::File(..)));
        assert_eq!(spilled, cps, "the same windows, from the file");
        check_all_spans(&gz, &data, &spilled);
        // A file that lost its windows gives an error, not a wrong byte.
        file.set_len(0).unwrap();
        assert!(matches!(spilled[1].window(), Err(GzipError::Window(_))));
        assert_ne!(spilled[1], cps[1]);
    }

    #[test]
    fn a_written_window_is_read_from_memory_until_switched_to_its_file() {
        let (data, gz, cps, _dir, file) = spill_setup(1 << 20);
        let mut at = 0;
        let places: Vec<_> = cps
            .iter()
            .map(|c| c.write_window(&file, &mut at).unwrap())
            .collect();
        assert_eq!(file.metadata().unwrap().len(), at);
        // Written, not switched: the file does not matter yet.
        let mut cps2 = cps.clone();
        assert!(cps2.iter().all(|c| matches!(c.window_z, Stored::Mem(_))));
        for (c, p) in cps2.iter_mut().zip(&places) {
            c.window_written(&file, p.expect("a window held in memory"));
        }
        assert!(matches!(cps2[1].window_z, Stored::File(..)));
        assert_eq!(cps2, cps, "the same windows, from the file");
        check_all_spans(&gz, &data, &cps2);
        // In a file already: nothing to write again.
        assert!(cps2[1].write_window(&file, &mut at).unwrap().is_none());
    }

    #[test]
    fn multi_member_gzip() {
        let a = sample(700 << 10);
        let b: Vec<u8> = sample(900 << 10).into_iter().rev().collect();
        let mut gz = gzip(&a, 6);
        gz.extend_from_slice(&gzip(&b, 1));
        let (out, cps) = index(&gz, 128 << 10, 100_000);
        let mut data = a.clone();
        data.extend_from_slice(&b);
        assert_eq!(out, data);
        check_all_spans(&gz, &data, &cps);
    }

    #[test]
    fn corrupt_and_truncated_input_are_errors() {
        let data = sample(200 << 10);
        let gz = gzip(&data, 6);
        let mut ix = Indexer::new(1 << 20, 1 << 40);
        ix.push(&gz[..gz.len() / 2], &mut |_, _| Ok(()), &mut |_| {})
            .unwrap();
        assert_eq!(ix.finish().unwrap_err(), GzipError::Truncated);
        let mut bad = gz.clone();
        bad[gz.len() / 2] ^= 0xff;
        bad[gz.len() / 2 + 1] ^= 0x55;
        let mut ix = Indexer::new(1 << 20, 1 << 40);
        let r = ix.push(&bad, &mut |_, _| Ok(()), &mut |_| {});
        assert!(r.is_err() || ix.finish().is_err());
        let mut ix = Indexer::new(1 << 20, 1 << 40);
        assert!(
            ix.push(b"not gzip at all", &mut |_, _| Ok(()), &mut |_| {})
                .is_err()
        );
    }
}
