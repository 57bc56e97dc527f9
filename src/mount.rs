//! `ocidisk mount`: the lazy disk as one regular file, through FUSE, for
//! consumers that do not speak vhost-user (file-backed VMM drives, loop
//! devices, e2fsck, qemu-img, backup tools).
//!
//! PATH may be a regular file (the disk appears at that path, as
//! qemu-storage-daemon's FUSE export does) or a directory (the disk appears
//! as `PATH/disk.img`). The file's size is the device size; reads past the
//! end are short; it cannot be resized. Read-only disks are served with the
//! page cache kept (`keep_cache`); writable ones with direct I/O so the
//! kernel never serves stale data, writes going to the disk's overlay and
//! `fsync` flushing it. Requests are served by several threads, so reads
//! that miss the cache do not hold up reads that hit it.

use crate::metrics::{ErrorKind, GuestRequest};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
};

use crate::disk::Disk;

const IMAGE_INO: u64 = 2;
const IMAGE_NAME: &str = "disk.img";
const TTL: Duration = Duration::from_secs(1);
const IO_MAX: u32 = 1 << 20;

/// Errors mounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// PATH does not exist.
    #[error("mount point {0} does not exist (create an empty file or a directory there)")]
    Missing(PathBuf),
    /// PATH is neither a regular file nor a directory.
    #[error("mount point {0} must be a regular file or a directory")]
    WrongType(PathBuf),
    /// PATH is already a mount point.
    #[error("{0} is already a mount point; unmount it first (ocidisk umount {0})")]
    AlreadyMounted(PathBuf),
    /// A mount whose process died.
    #[error(
        "{0} is a stale mount (its ocidisk process is gone); clear it with `ocidisk umount {0}` or `umount {0}`"
    )]
    Stale(PathBuf),
    /// Mounting is not permitted.
    #[error(
        "mounting FUSE at {path} is not permitted: {detail}. As root the mount is direct; other users need fusermount3 (apt-get install fuse3)"
    )]
    Permission {
        /// The mount point.
        path: PathBuf,
        /// The OS error.
        detail: String,
    },
    /// Mounting failed otherwise.
    #[error("mounting FUSE at {path}: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Unmounting failed.
    #[error("unmounting {path}: {source}")]
    Umount {
        /// The mount point.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// How the disk appears under the mount point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The mount point is a file: the root inode is the disk.
    File,
    /// The mount point is a directory holding `disk.img`.
    Dir,
}

struct DiskFs {
    disk: Arc<Disk>,
    shape: Shape,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
}

impl DiskFs {
    fn image_ino(&self) -> u64 {
        match self.shape {
            Shape::File => INodeNo::ROOT.0,
            Shape::Dir => IMAGE_INO,
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let base = |ino, kind, perm, nlink, size| FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            crtime: self.mtime,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        let perm = if self.disk.read_only() { 0o444 } else { 0o644 };
        if ino == self.image_ino() {
            Some(base(ino, FileType::RegularFile, perm, 1, self.disk.size()))
        } else if self.shape == Shape::Dir && ino == INodeNo::ROOT.0 {
            Some(base(ino, FileType::Directory, 0o755, 2, 0))
        } else {
            None
        }
    }
}

impl Filesystem for DiskFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large requests: the kernel clamps to what it allows.
        let _ = config.set_max_write(IO_MAX);
        let _ = config.set_max_readahead(IO_MAX);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match (self.shape, parent.0, name.to_str()) {
            (Shape::Dir, 1, Some(IMAGE_NAME)) => {
                let attr = self.attr(IMAGE_INO).expect("image inode");
                reply.entry(&TTL, &attr, Generation(0));
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(attr) = self.attr(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        match size {
            // A disk does not change size.
            Some(s) if s != attr.size => reply.error(Errno::EPERM),
            _ => reply.attr(&TTL, &attr),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 != self.image_ino() {
            return reply.error(Errno::EISDIR);
        }
        let wants_write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        if wants_write && self.disk.read_only() {
            return reply.error(Errno::EROFS);
        }
        let how = if self.disk.read_only() {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::FOPEN_DIRECT_IO
        };
        reply.opened(FileHandle(0), how);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino.0 != self.image_ino() {
            return reply.error(Errno::EISDIR);
        }
        let end = offset.saturating_add(u64::from(size)).min(self.disk.size());
        if offset >= end {
            return reply.data(&[]);
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let m = crate::metrics::global();
        m.guest(GuestRequest::Read, buf.len() as u64);
        match self.disk.read_at(offset, &mut buf) {
            Ok(()) => reply.data(&buf),
            Err(e) => {
                tracing::error!("read of {} bytes at {offset}: {e}", buf.len());
                m.error(ErrorKind::GuestIo);
                reply.error(Errno::EIO)
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino.0 != self.image_ino() {
            return reply.error(Errno::EISDIR);
        }
        if self.disk.read_only() {
            return reply.error(Errno::EROFS);
        }
        let size = self.disk.size();
        if offset >= size {
            return reply.error(Errno::ENOSPC);
        }
        let n = (size - offset).min(data.len() as u64) as usize;
        let m = crate::metrics::global();
        m.guest(GuestRequest::Write, n as u64);
        match self.disk.write_at(offset, &data[..n]) {
            Ok(()) => reply.written(n as u32),
            Err(e) => {
                tracing::error!("write of {n} bytes at {offset}: {e}");
                m.error(ErrorKind::GuestIo);
                reply.error(Errno::EIO)
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let m = crate::metrics::global();
        m.guest(GuestRequest::Flush, 0);
        match self.disk.flush() {
            Ok(()) => reply.ok(),
            Err(e) => {
                tracing::error!("flush: {e}");
                m.error(ErrorKind::GuestIo);
                reply.error(Errno::EIO)
            }
        }
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permissions are the mode bits; the kernel checks them itself.
        reply.ok();
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // A regular file: block-device ioctls (which e2fsck tries) do not apply.
        reply.error(Errno::ENOTTY);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if self.shape != Shape::Dir || ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (INodeNo(IMAGE_INO), FileType::RegularFile, IMAGE_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// The mount point column of `/proc/self/mountinfo`, unescaped.
fn mount_points() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| {
            let mut out = Vec::new();
            let b = m.as_bytes();
            let mut i = 0;
            while i < b.len() {
                let octal = (b[i] == b'\\' && i + 3 < b.len())
                    .then(|| std::str::from_utf8(&b[i + 1..i + 4]).ok())
                    .flatten()
                    .and_then(|o| u8::from_str_radix(o, 8).ok());
                if let Some(v) = octal {
                    out.push(v);
                    i += 4;
                    continue;
                }
                out.push(b[i]);
                i += 1;
            }
            PathBuf::from(String::from_utf8_lossy(&out).into_owned())
        })
        .collect()
}

/// `path` made absolute without touching the (maybe stale) last component.
fn absolute(path: &Path) -> PathBuf {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match (std::fs::canonicalize(parent), path.file_name()) {
        (Ok(p), Some(name)) => p.join(name),
        _ => path.to_path_buf(),
    }
}

/// Check a mount point before mounting.
fn check_mount_point(path: &Path) -> Result<Shape, MountError> {
    let abs = absolute(path);
    if mount_points().contains(&abs) {
        // Opening reaches the FUSE connection itself (stat may be answered
        // from cached attributes): a dead daemon gives ENOTCONN.
        return Err(match std::fs::File::open(path) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                MountError::Stale(path.to_path_buf())
            }
            _ => MountError::AlreadyMounted(path.to_path_buf()),
        });
    }
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(MountError::Missing(path.to_path_buf()))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            Err(MountError::Stale(path.to_path_buf()))
        }
        Err(source) => Err(MountError::Mount {
            path: path.to_path_buf(),
            source,
        }),
        Ok(m) if m.is_file() => Ok(Shape::File),
        Ok(m) if m.is_dir() => Ok(Shape::Dir),
        Ok(_) => Err(MountError::WrongType(path.to_path_buf())),
    }
}

/// A mounted disk; unmounts when dropped.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    path: PathBuf,
    disk: Arc<Disk>,
}

impl Mounted {
    /// Where the disk file is: PATH, or PATH/disk.img.
    pub fn image_path(&self) -> PathBuf {
        if self.path.is_dir() {
            self.path.join(IMAGE_NAME)
        } else {
            self.path.clone()
        }
    }

    /// Whether the session is still serving (it ends when PATH is unmounted
    /// from outside).
    pub fn is_running(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| !s.guard.is_finished())
    }

    /// Unmount, wait for the session, and flush the disk.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), MountError> {
        if let Some(s) = self.session.take() {
            s.umount_and_join().map_err(|source| MountError::Umount {
                path: self.path.clone(),
                source,
            })?;
        }
        if let Err(e) = self.disk.flush() {
            tracing::error!("flushing the disk after unmount: {e}");
        }
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Mount `disk` at `path` and serve it in background threads.
pub fn mount(disk: Arc<Disk>, path: &Path, name: &str) -> Result<Mounted, MountError> {
    let shape = check_mount_point(path)?;
    // SAFETY: getuid/getgid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let fs = DiskFs {
        disk: disk.clone(),
        shape,
        uid,
        gid,
        mtime: SystemTime::now(),
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("ocidisk:{name}")),
        MountOption::Subtype("ocidisk".into()),
        MountOption::NoAtime,
        MountOption::CUSTOM(format!("max_read={IO_MAX}")),
    ];
    if disk.read_only() {
        config.mount_options.push(MountOption::RO);
    }
    config.n_threads = Some(4);
    let session = fuser::Session::new(fs, path, &config).map_err(|e| {
        if matches!(e.raw_os_error(), Some(1) | Some(13))
            || e.kind() == std::io::ErrorKind::NotFound
        {
            MountError::Permission {
                path: path.to_path_buf(),
                detail: e.to_string(),
            }
        } else {
            MountError::Mount {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    let session = session.spawn().map_err(|source| MountError::Mount {
        path: path.to_path_buf(),
        source,
    })?;
    set_readahead(path, IO_MAX / 1024);
    Ok(Mounted {
        session: Some(session),
        path: path.to_path_buf(),
        disk,
    })
}

/// Raise the read-ahead of the mount's backing device so sequential reads
/// reach the daemon in ~1 MiB requests (the kernel's default is 128 KiB).
/// Needs root; otherwise the default stays and a debug line says so.
fn set_readahead(path: &Path, kib: u32) {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(path) else {
        return;
    };
    let dev = md.dev();
    let bdi = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    if let Err(e) = std::fs::write(&bdi, kib.to_string()) {
        tracing::debug!("setting {bdi}: {e}; read-ahead stays at the kernel default");
    }
}

/// Unmount PATH, also when its ocidisk process died (a stale mount).
pub fn umount(path: &Path) -> Result<(), MountError> {
    use std::os::unix::ffi::OsStrExt;
    let c =
        std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| MountError::Umount {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"),
        })?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
    if rc != 0 {
        return Err(MountError::Umount {
            path: path.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_point_checks() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            check_mount_point(&d.path().join("nope")),
            Err(MountError::Missing(_))
        ));
        assert_eq!(check_mount_point(d.path()).unwrap(), Shape::Dir);
        let f = d.path().join("f");
        std::fs::write(&f, b"").unwrap();
        assert_eq!(check_mount_point(&f).unwrap(), Shape::File);
        assert!(matches!(
            check_mount_point(Path::new("/proc")),
            Err(MountError::AlreadyMounted(_))
        ));
        assert!(matches!(
            check_mount_point(Path::new("/dev/null")),
            Err(MountError::WrongType(_))
        ));
    }
}
