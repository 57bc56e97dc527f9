//! The content-addressed blob cache, shared by every image.
//!
//! Layout under the cache root (`$XDG_CACHE_HOME/ocidisk` by default):
//!
//! ```text
//! blobs/sha256/<hex>   verified blobs: manifests, configs, layers
//! images/<id>.json     one record per pulled reference + platform
//! tmp/                 blobs being written; never trusted, swept by `prune`
//! ```
//!
//! A blob enters `blobs/` only by rename from `tmp/` after its digest (and,
//! for layers, its diff_id) checked out, so a crash leaves no half blob that is
//! later trusted. Blobs are re-hashed before they are trusted again; a corrupt
//! one is removed and fetched anew. Modification times record last use, for
//! least-recently-used pruning.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, Hasher};
use crate::platform::Platform;

/// Errors from the blob cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// No cache dir could be derived from the environment.
    #[error("no cache directory: set XDG_CACHE_HOME or HOME, or pass --cache-dir")]
    NoCacheDir,
    /// A filesystem operation failed.
    #[error("cache {op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Content put into the cache does not match its digest.
    #[error("content for {expected} hashes to {actual}; not cached")]
    DigestMismatch {
        /// The digest it should have.
        expected: Digest,
        /// The digest it has.
        actual: Digest,
    },
    /// An image record could not be parsed.
    #[error("cache image record {path}: {source}")]
    BadRecord {
        /// The record file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A blob cache rooted at a directory.
#[derive(Debug, Clone)]
pub struct BlobCache {
    root: PathBuf,
    /// Writes [`BlobCache::keep`] started on tokio's blocking pool, shared
    /// by the clones.
    pending: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

/// One cached blob, for `cache list`.
#[derive(Debug, Clone, Serialize)]
pub struct BlobEntry {
    /// Its digest.
    pub digest: Digest,
    /// Its size on disk.
    pub size: u64,
    /// Last use (seconds since the epoch).
    pub last_used: u64,
}

/// What `pull` recorded about an image, so `cache list` can name images and
/// `cache prune` knows which blobs are still wanted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// The reference as resolved (`registry/repo:tag@digest`, `oci:DIR:TAG`, …).
    pub reference: String,
    /// The platform chosen.
    pub platform: Platform,
    /// The image manifest digest (config digest for docker-archive images).
    pub image_id: Digest,
    /// Every blob the image needs: index, manifest, config, layers.
    pub blobs: Vec<Digest>,
    /// Total size of those blobs.
    pub size: u64,
    /// When it was pulled (seconds since the epoch).
    pub pulled_at: u64,
}

/// What `prune` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Blobs removed.
    pub removed_blobs: usize,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// Image records dropped because their blobs are gone.
    pub removed_images: usize,
    /// Bytes left in the cache.
    pub remaining_bytes: u64,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Temp files older than this are leftovers of a dead process.
const STALE_TMP: Duration = Duration::from_secs(3600);

impl BlobCache {
    /// The default cache root: `$XDG_CACHE_HOME/ocidisk`, else `~/.cache/ocidisk`.
    pub fn default_root() -> Result<PathBuf, CacheError> {
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
            return Ok(PathBuf::from(x).join("ocidisk"));
        }
        match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(h) => Ok(PathBuf::from(h).join(".cache").join("ocidisk")),
            None => Err(CacheError::NoCacheDir),
        }
    }

    /// Open (creating if needed) a cache at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<BlobCache, CacheError> {
        let cache = BlobCache {
            root: root.into(),
            pending: Default::default(),
        };
        for dir in [cache.tmp_dir(), cache.images_dir()] {
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        for alg in ["sha256", "sha384", "sha512"] {
            let dir = cache.root.join("blobs").join(alg);
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        Ok(cache)
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    /// Where a blob lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    /// Whether a blob is cached with the right size and content. A corrupt
    /// blob is removed (and `false` returned) so it gets fetched again.
    pub fn has_verified(&self, digest: &Digest, size: Option<u64>) -> Result<bool, CacheError> {
        let path = self.blob_path(digest);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let len = file.metadata().map_err(io_err("stat", &path))?.len();
        let ok = if size.is_some_and(|s| s != len) {
            false
        } else {
            let mut h = Hasher::new(digest.algorithm());
            io::copy(&mut file, &mut h).map_err(io_err("read", &path))?;
            h.finish() == *digest
        };
        if !ok {
            tracing::warn!(%digest, path = %path.display(), "cached blob is corrupt; removing it");
            self.remove_blob(digest)?;
            return Ok(false);
        }
        self.touch(digest);
        Ok(true)
    }

    /// Read a small cached blob (manifest, config), verified. `None` if it is
    /// not cached or was corrupt.
    pub fn read_verified(&self, digest: &Digest) -> Result<Option<Vec<u8>>, CacheError> {
        let path = self.blob_path(digest);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        if !digest.matches(&bytes) {
            tracing::warn!(%digest, "cached blob is corrupt; removing it");
            self.remove_blob(digest)?;
            return Ok(None);
        }
        self.touch(digest);
        Ok(Some(bytes))
    }

    /// Store bytes whose digest must be `digest`.
    pub fn put_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<(), CacheError> {
        let mut w = self.begin()?;
        w.write_all(bytes).map_err(io_err("write", &w.path))?;
        if !digest.matches(bytes) {
            let mut h = Hasher::new(digest.algorithm());
            h.update(bytes);
            return Err(CacheError::DigestMismatch {
                expected: digest.clone(),
                actual: h.finish(),
            });
        }
        w.commit(digest)
    }

    /// Store a verified small blob (a manifest, a config) whose bytes the
    /// caller already holds, without waiting for its fsyncs: inside a tokio
    /// runtime the write runs on the blocking pool (see
    /// [`BlobCache::writes_done`]), outside one it runs now. A cache that
    /// cannot take it (a full disk) costs a fetch next time, not this run:
    /// it is logged, not returned.
    pub fn keep(&self, digest: &Digest, bytes: &[u8]) {
        fn put(cache: &BlobCache, digest: &Digest, bytes: &[u8]) {
            if let Err(e) = cache.put_bytes(digest, bytes) {
                tracing::warn!(%digest, "{e}; not cached, used from memory");
            }
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let (cache, digest, bytes) = (self.clone(), digest.clone(), bytes.to_vec());
                let h = rt.spawn_blocking(move || put(&cache, &digest, &bytes));
                crate::sync::lock(&self.pending).push(h);
            }
            Err(_) => put(self, digest, bytes),
        }
    }

    /// Wait until the writes [`BlobCache::keep`] started are done.
    pub async fn writes_done(&self) {
        let pending = std::mem::take(&mut *crate::sync::lock(&self.pending));
        for h in pending {
            // A write that panicked is a write not done: the blob is
            // fetched again next time.
            let _ = h.await;
        }
    }

    /// A scratch file in the cache's tmp directory, already unlinked: it
    /// takes disk space only while open and leaves nothing behind. `what`
    /// names it while it is being made.
    pub fn scratch_file(&self, what: &str) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        static SCRATCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = self.root().join("tmp");
        fs::create_dir_all(&dir)?;
        let n = SCRATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{what}-{}-{n}", std::process::id()));
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)?;
        fs::remove_file(&path)?;
        Ok(f)
    }

    /// Start writing a blob into a temp file.
    pub fn begin(&self) -> Result<BlobWriter, CacheError> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp_dir().join(format!(
            "{}-{}-{n}.partial",
            std::process::id(),
            nanos_now()
        ));
        let file = File::create_new(&path).map_err(io_err("create", &path))?;
        Ok(BlobWriter {
            cache: self.clone(),
            path,
            file: Some(file),
            len: 0,
            writeback: crate::sparse::Writeback::default(),
        })
    }

    /// Mark a blob as just used.
    pub fn touch(&self, digest: &Digest) {
        let path = self.blob_path(digest);
        if let Ok(f) = File::options().append(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    fn remove_blob(&self, digest: &Digest) -> Result<(), CacheError> {
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    /// Every cached blob.
    pub fn list_blobs(&self) -> Result<Vec<BlobEntry>, CacheError> {
        let mut out = Vec::new();
        for alg in ["sha256", "sha384", "sha512"] {
            let dir = self.root.join("blobs").join(alg);
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("list", &dir)(e)),
            };
            for entry in rd {
                let entry = entry.map_err(io_err("list", &dir))?;
                let name = entry.file_name();
                let Ok(digest) = format!("{alg}:{}", name.to_string_lossy()).parse::<Digest>()
                else {
                    continue;
                };
                let md = entry.metadata().map_err(io_err("stat", &entry.path()))?;
                out.push(BlobEntry {
                    digest,
                    size: md.len(),
                    last_used: secs(md.modified().unwrap_or(SystemTime::UNIX_EPOCH)),
                });
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    fn record_path(&self, reference: &str, platform: &Platform) -> PathBuf {
        let key = Digest::sha256_of(format!("{reference}\n{platform}").as_bytes());
        self.images_dir().join(format!("{}.json", key.hex()))
    }

    /// Remember a pulled image.
    pub fn record_image(&self, record: &ImageRecord) -> Result<(), CacheError> {
        let path = self.record_path(&record.reference, &record.platform);
        let json = serde_json::to_vec_pretty(record).expect("records serialize");
        write_atomic(&self.tmp_dir(), &path, &json)
    }

    /// Every image record.
    pub fn list_images(&self) -> Result<Vec<ImageRecord>, CacheError> {
        let dir = self.images_dir();
        let mut out = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        for entry in rd {
            let entry = entry.map_err(io_err("list", &dir))?;
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = fs::read(&path).map_err(io_err("read", &path))?;
            match serde_json::from_slice::<ImageRecord>(&bytes) {
                Ok(r) => out.push(r),
                Err(source) => {
                    tracing::warn!("{}", CacheError::BadRecord { path, source });
                }
            }
        }
        out.sort_by(|a, b| {
            (&a.reference, a.platform.to_string()).cmp(&(&b.reference, b.platform.to_string()))
        });
        Ok(out)
    }

    /// Remove leftovers and shrink the cache.
    ///
    /// Always: stale temp files, and blobs no image record refers to. With
    /// `max_size`: then the least recently used blobs until the cache holds at
    /// most `max_size` bytes; image records that lost a blob are dropped.
    pub fn prune(&self, max_size: Option<u64>) -> Result<PruneReport, CacheError> {
        let mut report = PruneReport::default();
        self.sweep_tmp()?;
        let images = self.list_images()?;
        let wanted: BTreeSet<&Digest> = images.iter().flat_map(|r| r.blobs.iter()).collect();
        let mut blobs = self.list_blobs()?;
        blobs.retain(|b| {
            if wanted.contains(&b.digest) {
                return true;
            }
            if self.remove_blob(&b.digest).is_ok() {
                report.removed_blobs += 1;
                report.freed_bytes += b.size;
            }
            false
        });
        let mut total: u64 = blobs.iter().map(|b| b.size).sum();
        if let Some(max) = max_size {
            blobs.sort_by_key(|b| (b.last_used, b.digest.clone()));
            let mut gone = BTreeSet::new();
            for b in &blobs {
                if total <= max {
                    break;
                }
                self.remove_blob(&b.digest)?;
                total -= b.size;
                report.removed_blobs += 1;
                report.freed_bytes += b.size;
                gone.insert(b.digest.clone());
            }
            for r in &images {
                if r.blobs.iter().any(|d| gone.contains(d)) {
                    let path = self.record_path(&r.reference, &r.platform);
                    fs::remove_file(&path).map_err(io_err("remove", &path))?;
                    report.removed_images += 1;
                }
            }
        }
        report.remaining_bytes = total;
        Ok(report)
    }

    fn sweep_tmp(&self) -> Result<(), CacheError> {
        let dir = self.tmp_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        for entry in rd.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > STALE_TMP);
            if old {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

/// A blob being written to the cache's temp dir. Dropping it without
/// [`BlobWriter::commit`] deletes the temp file.
#[derive(Debug)]
pub struct BlobWriter {
    cache: BlobCache,
    path: PathBuf,
    file: Option<File>,
    len: u64,
    writeback: crate::sparse::Writeback,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The temp file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Throw away what was written (a source restarted from byte 0).
    pub fn reset(&mut self) -> Result<(), CacheError> {
        let f = self.file.as_mut().expect("writer is open");
        f.set_len(0).map_err(io_err("truncate", &self.path))?;
        io::Seek::seek(f, io::SeekFrom::Start(0)).map_err(io_err("seek", &self.path))?;
        self.len = 0;
        self.writeback = crate::sparse::Writeback::default();
        Ok(())
    }

    /// Make the blob durable under its digest. The caller has verified it.
    pub fn commit(mut self, digest: &Digest) -> Result<(), CacheError> {
        let file = self.file.take().expect("writer is open");
        file.sync_all().map_err(io_err("fsync", &self.path))?;
        drop(file);
        let dest = self.cache.blob_path(digest);
        fs::rename(&self.path, &dest).map_err(io_err("rename into", &dest))?;
        if let Some(parent) = dest.parent()
            && let Ok(d) = File::open(parent)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self.file.as_mut().expect("writer is open");
        let n = file.write(buf)?;
        self.writeback.wrote(file, self.len, n as u64);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("writer is open").flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Write `bytes` to `dest` through a temp file in `tmp_dir` and a rename.
pub fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = tmp_dir.join(format!(
        "{}-{}-{n}.partial",
        std::process::id(),
        nanos_now()
    ));
    let mut f = File::create_new(&tmp).map_err(io_err("create", &tmp))?;
    let res = f
        .write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io_err("write", &tmp))
        .and_then(|_| fs::rename(&tmp, dest).map_err(io_err("rename into", dest)));
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Read at most `limit` bytes from `r`; more is an error naming `what`.
pub fn read_limited(mut r: impl Read, limit: u64, what: &str) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.by_ref().take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} is larger than {limit} bytes"),
        ));
    }
    Ok(buf)
}

fn nanos_now() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    secs(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> (tempfile::TempDir, BlobCache) {
        let dir = tempfile::tempdir().unwrap();
        let c = BlobCache::open(dir.path().join("c")).unwrap();
        (dir, c)
    }

    #[test]
    fn put_then_verify_and_detect_corruption() {
        let (_d, c) = cache();
        let d = Digest::sha256_of(b"hello");
        assert!(!c.has_verified(&d, None).unwrap());
        c.put_bytes(&d, b"hello").unwrap();
        assert!(c.has_verified(&d, Some(5)).unwrap());
        assert_eq!(c.read_verified(&d).unwrap().unwrap(), b"hello");
        fs::write(c.blob_path(&d), b"hellO").unwrap();
        assert!(!c.has_verified(&d, Some(5)).unwrap());
        assert!(!c.blob_path(&d).exists(), "corrupt blob must be removed");
    }

    #[test]
    fn wrong_content_is_not_cached_and_leaves_no_temp() {
        let (_d, c) = cache();
        let d = Digest::sha256_of(b"hello");
        let err = c.put_bytes(&d, b"bye").unwrap_err();
        assert!(matches!(err, CacheError::DigestMismatch { .. }), "{err}");
        assert!(!c.blob_path(&d).exists());
        assert_eq!(fs::read_dir(c.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let (_d, c) = cache();
        let mut w = c.begin().unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(c.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn prune_keeps_recorded_blobs_and_evicts_lru() {
        let (_d, c) = cache();
        let a = Digest::sha256_of(b"aaaa");
        let b = Digest::sha256_of(b"bbbbbbbb");
        let orphan = Digest::sha256_of(b"orphan");
        for (d, bytes) in [(&a, &b"aaaa"[..]), (&b, b"bbbbbbbb"), (&orphan, b"orphan")] {
            c.put_bytes(d, bytes).unwrap();
        }
        let old = SystemTime::now() - Duration::from_secs(100);
        File::options()
            .append(true)
            .open(c.blob_path(&a))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let rec = |r: &str, blobs: Vec<Digest>| ImageRecord {
            reference: r.into(),
            platform: "linux/amd64".parse().unwrap(),
            image_id: blobs[0].clone(),
            blobs,
            size: 0,
            pulled_at: 0,
        };
        c.record_image(&rec("one", vec![a.clone()])).unwrap();
        c.record_image(&rec("two", vec![b.clone()])).unwrap();
        assert_eq!(c.list_images().unwrap().len(), 2);

        let r = c.prune(None).unwrap();
        assert_eq!((r.removed_blobs, r.remaining_bytes), (1, 12));
        assert!(!c.blob_path(&orphan).exists());

        let r = c.prune(Some(10)).unwrap();
        assert_eq!((r.removed_blobs, r.removed_images), (1, 1));
        assert!(!c.blob_path(&a).exists(), "least recently used goes first");
        assert!(c.blob_path(&b).exists());
        assert_eq!(c.list_images().unwrap()[0].reference, "two");
    }

    #[test]
    fn read_limited_refuses_oversize() {
        assert!(read_limited(&b"12345"[..], 4, "manifest").is_err());
        assert_eq!(read_limited(&b"1234"[..], 4, "manifest").unwrap(), b"1234");
    }
}
