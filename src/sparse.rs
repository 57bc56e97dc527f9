//! Sparse-file helpers: punching a range back to zeros (a hole where the
//! filesystem can, written zeros where not) and copying a file's data
//! (a reflink where the filesystem shares blocks, else `copy_file_range`
//! over the data segments, so holes stay holes).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Bytes written between two [`Writeback::wrote`] calls that start the
/// kernel writing them out.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Starts writeback of a file as it is written, so that the `fsync` that
/// makes it durable at the end waits for the last few MiB instead of the
/// whole file. Advisory: errors are ignored (the `fsync` reports them).
#[derive(Debug, Default)]
pub struct Writeback {
    /// The range written since writeback last started.
    dirty: Option<(u64, u64)>,
    bytes: u64,
}

impl Writeback {
    /// `len` bytes at `offset` of `file` were written.
    pub fn wrote(&mut self, file: &File, offset: u64, len: u64) {
        let end = offset + len;
        let (lo, hi) = self
            .dirty
            .map_or((offset, end), |(l, h)| (l.min(offset), h.max(end)));
        self.dirty = Some((lo, hi));
        self.bytes += len;
        if self.bytes >= WRITEBACK_EVERY {
            start_writeback(file, lo, hi - lo);
            self.dirty = None;
            self.bytes = 0;
        }
    }
}

/// Ask the kernel to start writing `[offset, offset + len)` of `file` out,
/// without waiting for it.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: sync_file_range on a file descriptor the caller owns, with
    // plain integers; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Make `[offset, offset + len)` of `file` read as zeros: a hole where the
/// filesystem can punch one, else written zeros.
pub fn punch(file: &File, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate on a file descriptor the caller owns, with plain
    // integers; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
    ) {
        return Err(e);
    }
    let zeros = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Copy `from` into the empty file `to`: a reflink if the filesystem
/// shares blocks, else `copy_file_range` over `from`'s data (holes stay
/// holes).
pub fn copy_file(from: &Path, to: &File) -> io::Result<()> {
    let src = File::open(from)?;
    // SAFETY: FICLONE takes the source descriptor as its argument; both
    // descriptors are ours and open, and no memory is passed.
    let r = unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if r == 0 {
        return Ok(());
    }
    let len = src.metadata()?.len();
    to.set_len(len)?;
    let mut pos = 0i64;
    while (pos as u64) < len {
        // SAFETY: lseek on our own descriptor with integer arguments.
        let data = unsafe { libc::lseek(src.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let (mut off_in, mut off_out) = (data, data);
        while off_in < hole {
            // SAFETY: copy_file_range between two descriptors we own, with
            // pointers to two local offsets that live across the call.
            let n = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &mut off_in,
                    to.as_raw_fd(),
                    &mut off_out,
                    (hole - off_in) as usize,
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file ended while it was copied",
                ));
            }
        }
        pos = hole;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_keeps_bytes_and_holes_and_a_punch_reads_zeros() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let f = File::create(&a).unwrap();
        f.set_len(1 << 22).unwrap();
        f.write_all_at(b"hello", 3 << 20).unwrap();
        f.write_all_at(&[7u8; 8192], 4096).unwrap();
        let b = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(d.path().join("b"))
            .unwrap();
        copy_file(&a, &b).unwrap();
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(d.path().join("b")).unwrap()
        );
        punch(&b, 4096, 4096).unwrap();
        let mut buf = vec![1u8; 8192];
        b.read_exact_at(&mut buf, 4096).unwrap();
        assert!(buf[..4096].iter().all(|x| *x == 0));
        assert!(buf[4096..].iter().all(|x| *x == 7));
    }
}
