//! Files built under a temporary name and renamed into place, so that a
//! reader never sees half a file and a planted name cannot redirect the
//! write.
//!
//! - The temporary file sits next to its destination as
//!   `.NAME.<16 random hex>.ocidisk-partial`. It is created with
//!   `O_CREAT|O_EXCL|O_NOFOLLOW`: whatever already has that name (a file, a
//!   symlink to anything) makes the create fail instead of being followed.
//! - The file is `flock`ed while it is written. A later run removes the
//!   partial files of a destination whose lock nobody holds
//!   ([`clean_stale`]): those are what a killed run left.
//! - [`PartialFile::commit`] fsyncs, renames over the destination (a
//!   symlink there is replaced, never followed) and fsyncs the directory.
//!   Dropping an uncommitted one removes it, and [`remove_on_signals`]
//!   makes SIGINT, SIGTERM and SIGHUP remove every live one before the
//!   process exits.

use std::collections::hash_map::RandomState;
use std::ffi::OsString;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What ends every partial file's name.
const SUFFIX: &str = ".ocidisk-partial";

/// Partial files of this process not yet committed or removed.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Errors creating or committing a partial file.
#[derive(Debug, thiserror::Error)]
pub enum PartialError {
    /// The destination has no file name (`/`, `..`, empty).
    #[error("{0} has no file name to write to")]
    NoFileName(PathBuf),
    /// Creating the temporary file failed.
    #[error("creating {path}: {source}")]
    Create {
        /// The temporary file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Making the file durable or renaming it failed.
    #[error("putting {path} in place: {source}")]
    Commit {
        /// The destination.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// A file being written under a temporary name beside `dest`.
#[derive(Debug)]
pub struct PartialFile {
    file: File,
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

/// The directory `dest` is in (`.` for a bare name).
fn dir_of(dest: &Path) -> &Path {
    dest.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `.NAME.` for `dest`: the prefix of its partial files.
fn prefix_of(dest: &Path) -> Result<OsString, PartialError> {
    let name = dest
        .file_name()
        .ok_or_else(|| PartialError::NoFileName(dest.to_path_buf()))?;
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    Ok(prefix)
}

/// 64 bits nobody can guess: `RandomState` is keyed from the OS's random
/// source, once per process and anew for each call after that.
fn random_hex() -> String {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", h.finish())
}

/// Take `file`'s exclusive lock without waiting; `false` if someone holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor this function borrows; no memory is
    // passed.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Create `path`, which must not exist in any form: `O_EXCL` fails on
/// an existing name, a symlink included, and `O_NOFOLLOW` says so twice.
fn open_new(path: &Path) -> io::Result<File> {
    File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

impl PartialFile {
    /// Create a new, empty, locked partial file for `dest` (mode 0644 less
    /// the umask), readable and writable.
    pub fn create(dest: &Path) -> Result<PartialFile, PartialError> {
        let mut name = prefix_of(dest)?;
        name.push(random_hex());
        name.push(SUFFIX);
        let tmp = dir_of(dest).join(name);
        let err = |source| PartialError::Create {
            path: tmp.clone(),
            source,
        };
        // Created and listed under one lock: a signal that comes in between
        // would otherwise find the file on disk but not on the list, and
        // leave it behind.
        let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        let file = open_new(&tmp).map_err(err)?;
        live.push(tmp.clone());
        drop(live);
        let partial = PartialFile {
            file,
            tmp: tmp.clone(),
            dest: dest.to_path_buf(),
            committed: false,
        };
        // A fresh file nobody else has opened: the lock is ours unless the
        // filesystem has no locks, which only costs the stale cleanup.
        if let Err(e) = try_lock(&partial.file) {
            tracing::debug!(path = %tmp.display(), error = %e, "partial file not locked");
        }
        Ok(partial)
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where it is being written.
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Fsync, rename onto the destination, fsync the directory. The file
    /// stays open for whoever goes on writing it under its final name.
    pub fn commit(mut self) -> Result<File, PartialError> {
        let err = |source| PartialError::Commit {
            path: self.dest.clone(),
            source,
        };
        self.file.sync_all().map_err(err)?;
        std::fs::rename(&self.tmp, &self.dest).map_err(err)?;
        self.committed = true;
        forget(&self.tmp);
        if let Ok(d) = File::open(dir_of(&self.dest)) {
            let _ = d.sync_all();
        }
        self.file.try_clone().map_err(err)
    }
}

/// Take `path` off the live list.
fn forget(path: &Path) {
    let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    live.retain(|p| p != path);
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
            forget(&self.tmp);
        }
    }
}

/// Remove the partial files of `dest` that a killed run left: those whose
/// lock nobody holds. A name that is not a regular file (a symlink, a
/// FIFO) is left alone. Returns how many were removed.
pub fn clean_stale(dest: &Path) -> usize {
    let Ok(prefix) = prefix_of(dest) else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(dir_of(dest)) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let bytes = name.as_bytes();
        if !bytes.starts_with(prefix.as_bytes()) || !bytes.ends_with(SUFFIX.as_bytes()) {
            continue;
        }
        let path = entry.path();
        let Ok(file) = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
        else {
            continue;
        };
        let (Ok(held), Ok(link)) = (file.metadata(), std::fs::symlink_metadata(&path)) else {
            continue;
        };
        // Still the file we opened, a regular one, and nobody writing it.
        if !held.is_file() || (held.dev(), held.ino()) != (link.dev(), link.ino()) {
            continue;
        }
        if matches!(try_lock(&file), Ok(true)) && std::fs::remove_file(&path).is_ok() {
            tracing::info!(path = %path.display(), "removed a partial file an earlier run left");
            removed += 1;
        }
    }
    removed
}

/// Make SIGINT, SIGTERM and SIGHUP remove every uncommitted partial file,
/// then exit with 128 + the signal's number, as a shell reports it. For
/// commands that have no orderly stop of their own.
pub fn remove_on_signals() -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("partial-cleanup".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
                for p in live.iter() {
                    let _ = std::fs::remove_file(p);
                }
                std::process::exit(128 + sig);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn commit_puts_the_file_in_place_and_drop_removes_it() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out.img");
        let p = PartialFile::create(&dest).unwrap();
        let tmp = p.temp_path().to_path_buf();
        let name = tmp.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(".out.img.") && name.ends_with(SUFFIX),
            "{name}"
        );
        p.file().write_all(b"hello").unwrap();
        p.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        assert!(!tmp.exists());

        let p = PartialFile::create(&dest).unwrap();
        let tmp = p.temp_path().to_path_buf();
        assert!(tmp.exists());
        drop(p);
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        assert!(
            LIVE.lock()
                .unwrap()
                .iter()
                .all(|l| !l.starts_with(d.path()))
        );
    }

    #[test]
    fn names_differ_and_a_symlink_at_dest_is_replaced_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let dest = d.path().join("out.img");
        std::os::unix::fs::symlink(&victim, &dest).unwrap();
        let a = PartialFile::create(&dest).unwrap();
        let b = PartialFile::create(&dest).unwrap();
        assert_ne!(a.temp_path(), b.temp_path());
        drop(b);
        a.file().write_all(b"image").unwrap();
        a.commit().unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&dest).unwrap().is_file());
    }

    #[test]
    fn a_symlink_planted_at_the_temporary_name_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let planted = d.path().join(".out.img.0123456789abcdef.ocidisk-partial");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let e = open_new(&planted).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        let dangling = d.path().join("dangling");
        std::os::unix::fs::symlink(d.path().join("nothing"), &dangling).unwrap();
        assert!(open_new(&dangling).is_err());
        assert!(!d.path().join("nothing").exists());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn stale_partials_go_and_live_or_foreign_ones_stay() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out.img");
        let stale = d.path().join(format!(".out.img.0123456789abcdef{SUFFIX}"));
        std::fs::write(&stale, b"left by a killed run").unwrap();
        let target = d.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = d.path().join(format!(".out.img.fedcba9876543210{SUFFIX}"));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let other = d
            .path()
            .join(format!(".other.img.0123456789abcdef{SUFFIX}"));
        std::fs::write(&other, b"another destination's").unwrap();
        let live = PartialFile::create(&dest).unwrap();

        assert_eq!(clean_stale(&dest), 1);
        assert!(!stale.exists());
        assert!(live.temp_path().exists(), "a locked partial stays");
        assert!(std::fs::symlink_metadata(&link).is_ok(), "a symlink stays");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(other.exists(), "another destination's partial stays");
    }

    #[test]
    fn a_destination_without_a_name_is_an_error() {
        let e = PartialFile::create(Path::new("/")).unwrap_err();
        assert!(e.to_string().contains("has no file name"), "{e}");
    }
}
