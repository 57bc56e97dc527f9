//! The copy-on-write overlay that holds a writable disk's guest writes.
//!
//! Block-granular (4 KiB): written blocks live at their device offset in a
//! sparse data file; a bitmap says which blocks are there. A partial-block
//! write first copies the lower block in. [`Overlay::flush`] makes every
//! write so far durable: it fsyncs the data file, then replaces the bitmap
//! file atomically (temp file, fsync, rename, fsync of the directory). After
//! a host crash, the overlay reopens with the last flushed bitmap: unflushed
//! writes may be lost, flushed ones never are, and no half-written bitmap is
//! ever trusted (it carries a checksum). When only ocidisk dies (killed,
//! crashed, upgraded) and starts again on the same boot, no completed write
//! is lost, flushed or not: the [`live`] bitmap in the page cache says which
//! blocks they were.
//!
//! The bitmap header names the image and the device size, so an overlay is
//! never applied to another disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::digest::Digest;
use crate::partial::{self, PartialError, PartialFile};

mod live;
use live::Live;

const BS: u64 = 4096;
const MAGIC: &[u8; 8] = b"OCIDOVL1";

/// Errors of the overlay.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// An I/O error on an overlay file.
    #[error("overlay {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The overlay was made for another image or size.
    #[error(
        "overlay {path} belongs to {found}, not to this disk ({expected}): its blocks mean nothing on another image's layout; use another --overlay path, or --discard-overlay to drop its writes"
    )]
    Mismatch {
        /// The bitmap file.
        path: PathBuf,
        /// What the file says.
        found: String,
        /// What this disk is.
        expected: String,
    },
    /// The overlay path is a symlink or not a regular file.
    #[error("overlay {0} is {1}; give the path of a regular file (it is created if missing)")]
    NotAFile(PathBuf, &'static str),
    /// Saving the bitmap failed.
    #[error("overlay bitmap: {0}")]
    Bitmap(PartialError),
    /// Opening or starting the live bitmap failed.
    #[error("overlay live bitmap: {0}")]
    Live(PartialError),
    /// The bitmap file is damaged.
    #[error("overlay bitmap {0} is damaged; refusing to guess which blocks were written")]
    Corrupt(PathBuf),
    /// A write since the last flush failed (and was reported then).
    #[error(
        "a write since the last flush failed ({0}); blocks it did not reach keep their earlier contents"
    )]
    WriteFailed(String),
}

struct State {
    bits: Vec<u64>,
    dirty: bool,
    /// A write or zeroing that failed since the last flush: the next flush
    /// reports it, as fsync reports a lost write.
    failed: Option<String>,
}

/// A block overlay for a device of a given size.
pub struct Overlay {
    data: File,
    data_path: PathBuf,
    bitmap_path: PathBuf,
    identity: String,
    blocks: u64,
    /// Which blocks are held, as of the last completed write (same boot).
    live: Option<Live>,
    state: Mutex<State>,
    /// Serialises read-modify-write of partial blocks.
    write_lock: Mutex<()>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OverlayError + '_ {
    move |source| OverlayError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Overlay {
    /// Open (or create) the overlay at `path` (data) and `path.bitmap`, for
    /// the disk of `image_id` with `size` bytes.
    pub fn open(path: &Path, image_id: &Digest, size: u64) -> Result<Overlay, OverlayError> {
        Self::open_in_boot(path, image_id, size, live::boot_id().as_deref())
    }

    /// Remove the overlay at `path` (data, bitmap and live log), whatever
    /// image it belongs to: its writes are gone.
    pub fn discard(path: &Path) -> Result<(), OverlayError> {
        for p in [
            path.to_path_buf(),
            PathBuf::from(format!("{}.bitmap", path.display())),
            PathBuf::from(format!("{}.live", path.display())),
        ] {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&p)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// [`Overlay::open`] as if running in `boot` (None: no boot id known,
    /// so nothing unflushed is ever trusted).
    fn open_in_boot(
        path: &Path,
        image_id: &Digest,
        size: u64,
        boot: Option<&str>,
    ) -> Result<Overlay, OverlayError> {
        let data_path = path.to_path_buf();
        let bitmap_path = PathBuf::from(format!("{}.bitmap", path.display()));
        let identity = format!("{image_id} size {size}");
        let blocks = size.div_ceil(BS);
        partial::clean_stale(&bitmap_path);
        // Never through a symlink: set_len would resize whatever it points
        // at. Nor onto anything but a regular file.
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&data_path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => OverlayError::NotAFile(data_path.clone(), "a symlink"),
                _ => io_err(&data_path)(e),
            })?;
        if !data.metadata().map_err(io_err(&data_path))?.is_file() {
            return Err(OverlayError::NotAFile(data_path, "not a regular file"));
        }
        data.set_len(size).map_err(io_err(&data_path))?;
        let mut bits = vec![0u64; blocks.div_ceil(64) as usize];
        match std::fs::read(&bitmap_path) {
            Ok(bytes) => {
                let (found, loaded) =
                    decode(&bytes).ok_or_else(|| OverlayError::Corrupt(bitmap_path.clone()))?;
                if found != identity || loaded.len() != bits.len() {
                    return Err(OverlayError::Mismatch {
                        path: bitmap_path,
                        found,
                        expected: identity,
                    });
                }
                bits = loaded;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&bitmap_path)(e)),
        }
        let live = match boot {
            Some(boot) => {
                let live_path = PathBuf::from(format!("{}.live", path.display()));
                partial::clean_stale(&live_path);
                let (live, added) = Live::open(&live_path, &identity, boot, &mut bits)
                    .map_err(OverlayError::Live)?;
                if added > 0 {
                    tracing::info!(
                        "overlay {}: {added} block(s) written after the last flush kept \
                         (ocidisk restarted, the host did not)",
                        data_path.display()
                    );
                }
                Some(live)
            }
            None => None,
        };
        Ok(Overlay {
            data,
            data_path,
            bitmap_path,
            identity,
            blocks,
            live,
            state: Mutex::new(State {
                bits,
                dirty: false,
                failed: None,
            }),
            write_lock: Mutex::new(()),
        })
    }

    /// Whether the overlay holds block `block`.
    pub fn has(&self, block: u64) -> bool {
        let s = crate::sync::lock(&self.state);
        s.bits[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    /// Blocks of `[offset, offset+len)` that the overlay holds, as a bitmask
    /// per block (true = overlay).
    pub fn covered(&self, offset: u64, len: usize) -> Vec<bool> {
        if len == 0 {
            return Vec::new();
        }
        let first = offset / BS;
        let last = (offset + len as u64 - 1) / BS;
        let s = crate::sync::lock(&self.state);
        (first..=last)
            .map(|b| s.bits[(b / 64) as usize] & (1 << (b % 64)) != 0)
            .collect()
    }

    /// Replace the parts of `buf` (device bytes at `offset`, already filled
    /// from the lower disk) that the overlay holds.
    pub fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<(), OverlayError> {
        let first = offset / BS;
        for (i, yes) in self.covered(offset, buf.len()).into_iter().enumerate() {
            if !yes {
                continue;
            }
            let b = first + i as u64;
            let lo = (b * BS).max(offset);
            let hi = ((b + 1) * BS).min(offset + buf.len() as u64);
            let dst = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            self.data
                .read_exact_at(dst, lo)
                .map_err(io_err(&self.data_path))?;
        }
        Ok(())
    }

    /// Write `data` at `offset`. `lower` fills a whole block from the lower
    /// disk when a write covers only part of a block not yet in the overlay.
    pub fn write(
        &self,
        offset: u64,
        data: &[u8],
        lower: &dyn Fn(u64, &mut [u8]) -> io::Result<()>,
    ) -> Result<(), OverlayError> {
        let r = self.write_blocks(offset, data, lower);
        self.note_failure(&r);
        r
    }

    /// Put bitmap word `index` in the live bitmap (before the write that
    /// set it completes).
    fn record(&self, index: usize, word: u64) -> Result<(), OverlayError> {
        match &self.live {
            Some(l) => l.put(index, word).map_err(io_err(l.path())),
            None => Ok(()),
        }
    }

    /// Remember a failed write for the next flush.
    fn note_failure(&self, r: &Result<(), OverlayError>) {
        if let Err(e) = r {
            crate::sync::lock(&self.state)
                .failed
                .get_or_insert_with(|| e.to_string());
        }
    }

    fn write_blocks(
        &self,
        offset: u64,
        data: &[u8],
        lower: &dyn Fn(u64, &mut [u8]) -> io::Result<()>,
    ) -> Result<(), OverlayError> {
        let _guard = crate::sync::lock(&self.write_lock);
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            let b = at / BS;
            let bstart = b * BS;
            let bend = ((b + 1) * BS).min(end);
            let piece = &data[(at - offset) as usize..(bend - offset) as usize];
            let whole = at == bstart && bend - bstart == BS;
            if !whole && !self.has(b) {
                let mut block = vec![0u8; BS as usize];
                lower(bstart, &mut block).map_err(io_err(&self.data_path))?;
                block[(at - bstart) as usize..(bend - bstart) as usize].copy_from_slice(piece);
                self.data
                    .write_all_at(&block, bstart)
                    .map_err(io_err(&self.data_path))?;
            } else {
                self.data
                    .write_all_at(piece, at)
                    .map_err(io_err(&self.data_path))?;
            }
            let mut s = crate::sync::lock(&self.state);
            let w = (b / 64) as usize;
            if s.bits[w] & (1 << (b % 64)) == 0 {
                s.bits[w] |= 1 << (b % 64);
                s.dirty = true;
                self.record(w, s.bits[w])?;
            }
            at = bend;
        }
        Ok(())
    }

    /// Make `[offset, offset+len)` read as zeros. Whole blocks become holes
    /// in the data file (no space used); partial blocks at the ends are
    /// written as usual.
    pub fn zero(
        &self,
        offset: u64,
        len: u64,
        lower: &dyn Fn(u64, &mut [u8]) -> io::Result<()>,
    ) -> Result<(), OverlayError> {
        let r = self.zero_blocks(offset, len, lower);
        self.note_failure(&r);
        r
    }

    fn zero_blocks(
        &self,
        offset: u64,
        len: u64,
        lower: &dyn Fn(u64, &mut [u8]) -> io::Result<()>,
    ) -> Result<(), OverlayError> {
        let end = offset + len;
        let first_whole = offset.div_ceil(BS) * BS;
        let end_whole = end / BS * BS;
        if first_whole >= end_whole {
            return self.write(offset, &vec![0u8; len as usize], lower);
        }
        if offset < first_whole {
            self.write(offset, &vec![0u8; (first_whole - offset) as usize], lower)?;
        }
        {
            let _guard = crate::sync::lock(&self.write_lock);
            self.punch(first_whole, end_whole - first_whole)?;
            let mut s = crate::sync::lock(&self.state);
            let (first, last) = (first_whole / BS, end_whole / BS);
            for b in first..last {
                s.bits[(b / 64) as usize] |= 1 << (b % 64);
            }
            s.dirty = true;
            for w in (first / 64) as usize..=((last - 1) / 64) as usize {
                self.record(w, s.bits[w])?;
            }
        }
        if end_whole < end {
            self.write(end_whole, &vec![0u8; (end - end_whole) as usize], lower)?;
        }
        Ok(())
    }

    /// Deallocate a block-aligned range of the data file (it reads zeros);
    /// where the filesystem cannot punch holes, write zeros.
    fn punch(&self, offset: u64, len: u64) -> Result<(), OverlayError> {
        crate::sparse::punch(&self.data, offset, len).map_err(io_err(&self.data_path))
    }

    /// Make every write so far durable. Fails if that cannot be done, or
    /// if a write since the last flush failed (once per failure, as fsync
    /// reports a lost write); what did succeed is made durable either way.
    pub fn flush(&self) -> Result<(), OverlayError> {
        let r = self.flush_bitmap();
        let failed = crate::sync::lock(&self.state).failed.take();
        r?;
        match failed {
            Some(what) => Err(OverlayError::WriteFailed(what)),
            None => Ok(()),
        }
    }

    fn flush_bitmap(&self) -> Result<(), OverlayError> {
        let _guard = crate::sync::lock(&self.write_lock);
        self.data.sync_data().map_err(io_err(&self.data_path))?;
        let bytes = {
            let mut s = crate::sync::lock(&self.state);
            if !s.dirty {
                return Ok(());
            }
            s.dirty = false;
            encode(&self.identity, &s.bits)
        };
        let write = || -> Result<(), PartialError> {
            let f = PartialFile::create(&self.bitmap_path)?;
            f.file()
                .write_all(&bytes)
                .map_err(|source| PartialError::Create {
                    path: f.temp_path().to_path_buf(),
                    source,
                })?;
            f.commit()?;
            Ok(())
        };
        write().map_err(|e| {
            crate::sync::lock(&self.state).dirty = true;
            OverlayError::Bitmap(e)
        })
    }

    /// Blocks held in the overlay.
    pub fn blocks_written(&self) -> u64 {
        let s = crate::sync::lock(&self.state);
        s.bits
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum::<u64>()
            .min(self.blocks)
    }
}

fn encode(identity: &str, bits: &[u64]) -> Vec<u8> {
    let mut body = Vec::with_capacity(bits.len() * 8 + identity.len() + 16);
    body.extend_from_slice(&(identity.len() as u32).to_le_bytes());
    body.extend_from_slice(identity.as_bytes());
    body.extend_from_slice(&(bits.len() as u64).to_le_bytes());
    for w in bits {
        body.extend_from_slice(&w.to_le_bytes());
    }
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn decode(bytes: &[u8]) -> Option<(String, Vec<u64>)> {
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().ok()?);
    let body = &bytes[12..];
    if crc32c::crc32c(body) != crc {
        return None;
    }
    let n = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
    let identity = String::from_utf8(body.get(4..4 + n)?.to_vec()).ok()?;
    let rest = body.get(4 + n..)?;
    let words = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?) as usize;
    let data = rest.get(8..)?;
    if data.len() != words * 8 {
        return None;
    }
    Some((
        identity,
        data.chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lower(off: u64, buf: &mut [u8]) -> io::Result<()> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = ((off + i as u64) % 251) as u8;
        }
        Ok(())
    }

    fn read(o: &Overlay, off: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        lower(off, &mut buf).unwrap();
        o.read_into(off, &mut buf).unwrap();
        buf
    }

    #[test]
    fn partial_writes_merge_with_the_lower_disk_and_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ov");
        let id = Digest::sha256_of(b"img");
        let o = Overlay::open(&path, &id, 1 << 20).unwrap();
        o.write(5000, b"hello", &lower).unwrap();
        o.write(8192, &[7u8; 8192], &lower).unwrap();
        let got = read(&o, 4096, 3 * 4096);
        let mut want = vec![0u8; 3 * 4096];
        lower(4096, &mut want).unwrap();
        want[904..909].copy_from_slice(b"hello");
        want[4096..].fill(7);
        assert_eq!(got, want);
        o.flush().unwrap();
        drop(o);
        let o = Overlay::open(&path, &id, 1 << 20).unwrap();
        assert_eq!(read(&o, 4096, 3 * 4096), want);
        assert_eq!(o.blocks_written(), 3);
    }

    #[test]
    fn a_panic_while_a_lock_is_held_does_not_fail_later_requests() {
        let d = tempfile::tempdir().unwrap();
        let id = Digest::sha256_of(b"img");
        let o = Overlay::open(&d.path().join("ov"), &id, 1 << 20).unwrap();
        o.write(0, &[3u8; 4096], &lower).unwrap();
        // A request handler that panics while it holds both locks.
        std::thread::scope(|s| {
            let r = s
                .spawn(|| {
                    let _w = o.write_lock.lock().unwrap();
                    let _s = o.state.lock().unwrap();
                    panic!("a bug in a request handler");
                })
                .join();
            assert!(r.is_err());
        });
        assert!(o.state.is_poisoned() && o.write_lock.is_poisoned());
        o.write(4096, &[4u8; 4096], &lower).unwrap();
        assert_eq!(read(&o, 0, 8192)[..4096], [3u8; 4096]);
        assert_eq!(read(&o, 0, 8192)[4096..], [4u8; 4096]);
        o.flush().unwrap();
        assert_eq!(o.blocks_written(), 2);
    }

    #[test]
    fn unflushed_writes_survive_a_restart_but_not_a_reboot() {
        const BOOT: Option<&str> = Some("0f7c2a44-1e0b-4c7e-9a55-3b7d5c1e2f90");
        const NEXT: Option<&str> = Some("7d1e0c55-2f1c-4d8f-8b66-4c8e6d2f3a01");
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ov");
        let id = Digest::sha256_of(b"img");
        let o = Overlay::open_in_boot(&path, &id, 1 << 20, BOOT).unwrap();
        o.write(0, &[1u8; 4096], &lower).unwrap();
        o.zero(64 * 4096, 70 * 4096, &lower).unwrap();
        drop(o); // no flush: ocidisk killed
        // Started again in the same boot: the page cache kept the writes.
        let o = Overlay::open_in_boot(&path, &id, 1 << 20, BOOT).unwrap();
        assert_eq!(o.blocks_written(), 71);
        assert_eq!(read(&o, 0, 4096), vec![1u8; 4096]);
        assert_eq!(read(&o, 64 * 4096, 70 * 4096), vec![0u8; 70 * 4096]);
        drop(o);
        // After a reboot only flushed writes count (none here).
        let o = Overlay::open_in_boot(&path, &id, 1 << 20, NEXT).unwrap();
        assert_eq!(o.blocks_written(), 0);
        drop(o);
        // Without a boot id nothing unflushed is trusted either.
        let o = Overlay::open_in_boot(&path, &id, 1 << 20, None).unwrap();
        assert_eq!(o.blocks_written(), 0);
        drop(o);
    }

    #[test]
    fn mismatched_and_damaged_bitmaps_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ov");
        let id = Digest::sha256_of(b"img");
        let o = Overlay::open(&path, &id, 1 << 20).unwrap();
        o.write(0, &[1u8; 4096], &lower).unwrap();
        o.flush().unwrap();
        drop(o);
        let e = Overlay::open(&path, &Digest::sha256_of(b"other"), 1 << 20)
            .err()
            .unwrap();
        assert!(matches!(e, OverlayError::Mismatch { .. }), "{e}");
        let bm = PathBuf::from(format!("{}.bitmap", path.display()));
        let mut b = std::fs::read(&bm).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        std::fs::write(&bm, b).unwrap();
        assert!(matches!(
            Overlay::open(&path, &id, 1 << 20).err().unwrap(),
            OverlayError::Corrupt(_)
        ));
    }
}
