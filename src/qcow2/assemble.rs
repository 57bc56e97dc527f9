//! From writes at any offset to whole clusters, as soon as each is whole.
//!
//! The filesystem writers produce the device out of order: metadata first,
//! then each layer's files in tar order, wherever the plan put them. The
//! [`Assembler`] is told up front which byte ranges will be written; it
//! keeps the bytes in an unnamed sparse scratch file beside the output
//! (`O_TMPFILE`: nothing to clean up after a crash) and, the moment a
//! cluster has received every byte the plan gives it, reads it back from
//! the page cache, frees its scratch space and pushes it to the
//! [`Qcow2Writer`]. Scratch space in use is what is pending, not the
//! image.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{Qcow2Error, Qcow2File, Qcow2Writer};

/// Turns writes into whole clusters for a [`Qcow2Writer`].
pub struct Assembler {
    scratch: File,
    dir: PathBuf,
    cs: u64,
    /// Bytes still to arrive, by guest cluster.
    pending: HashMap<u64, u64>,
    out: Qcow2Writer,
}

fn scratch_in(dir: &Path) -> Result<File, Qcow2Error> {
    File::options()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|source| Qcow2Error::Io {
            what: "creating an unnamed scratch file (O_TMPFILE) in",
            path: dir.to_path_buf(),
            source,
        })
}

/// Free scratch bytes `[offset, offset + len)` (best effort: a filesystem
/// without hole punching keeps them until the scratch file is closed).
fn punch(file: &File, offset: u64, len: u64) {
    // SAFETY: fallocate on a descriptor we own, with plain integers; it
    // touches no memory of ours.
    unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        );
    }
}

impl Assembler {
    /// An assembler for `out` that will receive exactly the bytes of
    /// `ranges` (device offset, length; disjoint), with scratch space in
    /// `dir`.
    pub fn new(
        out: Qcow2Writer,
        dir: &Path,
        ranges: impl IntoIterator<Item = (u64, u64)>,
    ) -> Result<Assembler, Qcow2Error> {
        let cs = out.cluster_size();
        let mut pending: HashMap<u64, u64> = HashMap::new();
        for (off, len) in ranges {
            let mut at = off;
            while at < off + len {
                let c = at / cs;
                let n = ((c + 1) * cs).min(off + len) - at;
                *pending.entry(c).or_default() += n;
                at += n;
            }
        }
        Ok(Assembler {
            scratch: scratch_in(dir)?,
            dir: dir.to_path_buf(),
            cs,
            pending,
            out,
        })
    }

    fn scratch_err(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> Qcow2Error + '_ {
        move |source| Qcow2Error::Io {
            what,
            path: self.dir.join("<scratch>"),
            source,
        }
    }

    /// The device's bytes at `offset`: part of what [`Assembler::new`] was
    /// promised, each byte once.
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> Result<(), Qcow2Error> {
        let cs = self.cs;
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let c = at / cs;
            let n = (((c + 1) * cs - at) as usize).min(data.len() - done);
            let piece = &data[done..done + n];
            let left = self
                .pending
                .get(&c)
                .copied()
                .and_then(|p| p.checked_sub(n as u64))
                .ok_or_else(|| {
                    Qcow2Error::Internal(format!(
                        "{n} bytes written to cluster {c} that the plan did not promise"
                    ))
                })?;
            if left == 0 && n as u64 == cs {
                // The whole cluster in one write: no need for scratch.
                self.pending.remove(&c);
                self.out.push(c, piece.to_vec())?;
            } else {
                if piece.iter().any(|b| *b != 0) {
                    self.scratch
                        .write_all_at(piece, at)
                        .map_err(self.scratch_err("writing"))?;
                }
                if left == 0 {
                    self.pending.remove(&c);
                    self.emit(c)?;
                } else {
                    self.pending.insert(c, left);
                }
            }
            done += n;
        }
        Ok(())
    }

    fn emit(&mut self, c: u64) -> Result<(), Qcow2Error> {
        let cs = self.cs;
        let mut buf = vec![0u8; cs as usize];
        read_full(&self.scratch, &mut buf, c * cs).map_err(self.scratch_err("reading"))?;
        punch(&self.scratch, c * cs, cs);
        self.out.push(c, buf)
    }

    /// Every promised byte arrived: finish the qcow2.
    pub fn finish(self) -> Result<Qcow2File, Qcow2Error> {
        if let Some((c, left)) = self.pending.iter().min() {
            return Err(Qcow2Error::Internal(format!(
                "cluster {c} is still waiting for {left} bytes ({} clusters incomplete)",
                self.pending.len()
            )));
        }
        self.out.finish()
    }
}

/// Read `buf` at `offset`; bytes past the end of the file read as zeros.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Write the qcow2 of raw image `raw` (its holes read as zeros and are
/// skipped, not read) through `out`.
pub fn convert(raw: &File, raw_path: &Path, out: Qcow2Writer) -> Result<Qcow2File, Qcow2Error> {
    let cs = out.cluster_size();
    let size = out.size();
    let io = |source| Qcow2Error::Io {
        what: "reading",
        path: raw_path.to_path_buf(),
        source,
    };
    let mut out = out;
    let mut at = 0u64;
    while at < size {
        let Some(data) = seek(raw, at, libc::SEEK_DATA).map_err(io)? else {
            break;
        };
        let hole = seek(raw, data, libc::SEEK_HOLE)
            .map_err(io)?
            .unwrap_or(size);
        let mut c = data / cs;
        while c * cs < hole.min(size) {
            let mut buf = vec![0u8; cs as usize];
            read_full(raw, &mut buf, c * cs).map_err(io)?;
            if (c + 1) * cs > size {
                buf[(size - c * cs) as usize..].fill(0);
            }
            out.push(c, buf)?;
            c += 1;
        }
        at = c * cs;
    }
    out.finish()
}

/// `lseek(SEEK_DATA / SEEK_HOLE)`: `None` when there is no more data.
fn seek(file: &File, from: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    // SAFETY: lseek on a descriptor we own; no memory is passed.
    let r = unsafe { libc::lseek(file.as_raw_fd(), from as libc::off_t, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(Some(r as u64))
}
