//! The live bitmap: which blocks the overlay holds right now, kept in the
//! page cache so that a restart of ocidisk on the same boot loses no
//! acknowledged write, flushed or not.
//!
//! A guest whose server dies and comes back (issue: restart survival) goes
//! on running with what its earlier writes left in its own page cache; if
//! the restarted server forgot a completed write because no FLUSH had come
//! yet, the guest would later read the old block back: a wrong byte. So
//! every bit the overlay sets is also written here (an 8-byte `pwrite` of
//! its word, no fsync) before the write completes. After a process death
//! the page cache still holds it. After a host crash it may not, and the
//! file carries the boot id (`/proc/sys/kernel/random/boot_id`) it was
//! written in: in another boot it is not trusted, and only the flushed
//! bitmap counts, as for any disk whose unflushed writes may be lost in a
//! power cut.
//!
//! Layout: a 4 KiB header (magic, boot id, the overlay's identity), then
//! the bitmap's words, little endian.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::partial::{PartialError, PartialFile};

const MAGIC: &[u8; 8] = b"OCIDLIV1";
const HEADER: u64 = 4096;

/// The boot this process runs in, if the kernel says.
pub fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (id.len() == 36 && id.is_ascii()).then(|| id.to_string())
}

fn header(boot: &str, identity: &str) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(boot.as_bytes());
    h.extend_from_slice(&(identity.len() as u32).to_le_bytes());
    h.extend_from_slice(identity.as_bytes());
    h.resize(HEADER as usize, 0);
    h
}

/// The live bitmap file of one overlay.
pub struct Live {
    file: File,
    path: PathBuf,
}

impl Live {
    /// Open the live bitmap at `path` for an overlay of `identity` whose
    /// flushed bitmap is `bits`, in `boot`. Bits a live file of the same
    /// boot and overlay holds are added to `bits` (those are writes that
    /// completed after the last flush, before ocidisk was restarted); any
    /// other file is replaced by one holding `bits`. Returns the live file
    /// and how many blocks it added.
    pub fn open(
        path: &Path,
        identity: &str,
        boot: &str,
        bits: &mut [u64],
    ) -> Result<(Live, u64), PartialError> {
        let io_err = |source| PartialError::Create {
            path: path.to_path_buf(),
            source,
        };
        let want = header(boot, identity);
        let len = HEADER + bits.len() as u64 * 8;
        if let Some(file) = open_existing(path).map_err(io_err)? {
            let mut head = vec![0u8; HEADER as usize];
            let same = file.metadata().map_err(io_err)?.len() == len
                && file.read_exact_at(&mut head, 0).is_ok()
                && head == want;
            if same {
                let mut words = vec![0u8; bits.len() * 8];
                file.read_exact_at(&mut words, HEADER).map_err(io_err)?;
                let live = Live {
                    file,
                    path: path.to_path_buf(),
                };
                let mut added = 0u64;
                for (i, (w, c)) in bits.iter_mut().zip(words.chunks_exact(8)).enumerate() {
                    let l = u64::from_le_bytes(c.try_into().unwrap_or_default());
                    added += u64::from((l & !*w).count_ones());
                    let merged = *w | l;
                    if merged != l {
                        // Only ever adds bits: safe to die half-way.
                        live.put(i, merged).map_err(io_err)?;
                    }
                    *w = merged;
                }
                return Ok((live, added));
            }
        }
        // No live file of this boot: start one from the flushed bitmap,
        // whole or not at all.
        let f = PartialFile::create(path)?;
        let mut body = want;
        for w in bits.iter() {
            body.extend_from_slice(&w.to_le_bytes());
        }
        f.file()
            .write_all_at(&body, 0)
            .map_err(|source| PartialError::Create {
                path: f.temp_path().to_path_buf(),
                source,
            })?;
        let file = f.commit()?;
        Ok((
            Live {
                file,
                path: path.to_path_buf(),
            },
            0,
        ))
    }

    /// Record word `index` of the bitmap.
    pub fn put(&self, index: usize, word: u64) -> io::Result<()> {
        self.file
            .write_all_at(&word.to_le_bytes(), HEADER + index as u64 * 8)
    }

    /// The file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Open `path` for reading and writing if it is a regular file (never
/// through a symlink); `None` if it does not exist.
fn open_existing(path: &Path) -> io::Result<Option<File>> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) if f.metadata()?.is_file() => Ok(Some(f)),
        Ok(_) => Err(io::Error::other("not a regular file")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: &str = "0f7c2a44-1e0b-4c7e-9a55-3b7d5c1e2f90";
    const OTHER: &str = "9a1c2a44-1e0b-4c7e-9a55-3b7d5c1e2f90";

    #[test]
    fn bits_of_the_same_boot_come_back_and_other_boots_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ov.live");
        let mut bits = vec![0b1u64, 0];
        let (live, added) = Live::open(&p, "img", BOOT, &mut bits).unwrap();
        assert_eq!(added, 0);
        live.put(1, 0b110).unwrap();
        drop(live);

        // Restarted in the same boot: the unflushed bits are back.
        let mut again = vec![0b1u64, 0];
        let (_l, added) = Live::open(&p, "img", BOOT, &mut again).unwrap();
        assert_eq!((again.clone(), added), (vec![0b1, 0b110], 2));

        // Another overlay, or another boot: not trusted, replaced.
        let mut other = vec![0u64, 0];
        let (_l, added) = Live::open(&p, "other", BOOT, &mut other).unwrap();
        assert_eq!((other, added), (vec![0, 0], 0));
        let mut later = vec![0b1000u64, 0];
        let (_l, added) = Live::open(&p, "other", OTHER, &mut later).unwrap();
        assert_eq!((later, added), (vec![0b1000, 0], 0));
    }

    #[test]
    fn a_damaged_or_misplaced_file_is_not_trusted() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ov.live");
        let mut bits = vec![0u64; 4];
        let (live, _) = Live::open(&p, "img", BOOT, &mut bits).unwrap();
        live.put(2, u64::MAX).unwrap();
        drop(live);
        // Cut short: the words no longer match the overlay's size.
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(HEADER + 8).unwrap();
        let mut bits = vec![0u64; 4];
        let (_l, added) = Live::open(&p, "img", BOOT, &mut bits).unwrap();
        assert_eq!((bits, added), (vec![0; 4], 0));
        // A symlink in its place is refused, not followed.
        let q = d.path().join("link.live");
        std::os::unix::fs::symlink(&p, &q).unwrap();
        assert!(Live::open(&q, "img", BOOT, &mut [0u64; 4]).is_err());
    }
}
