//! The on-disk chunk store: decoded spans, zstd-compressed, named by the
//! sha256 of their content, so they are shared by every image and layer
//! that has the same bytes and verified again whenever they are loaded.
//!
//! Bounded by a byte budget: when a store would exceed it, the least
//! recently used chunks go (use is recorded in memory and as the file's
//! mtime, so the order survives restarts). Writes are atomic (temp file and
//! rename). If the directory is full or unwritable, the store logs once and
//! the disk keeps serving from memory and the network.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use sha2::Digest as _;

struct Entry {
    size: u64,
    last_used: SystemTime,
}

/// A directory of zstd-compressed, content-addressed chunks.
pub struct ChunkStore {
    dir: PathBuf,
    tmp: PathBuf,
    cap: u64,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    bytes: AtomicU64,
    warned: AtomicBool,
}

fn name(hash: &[u8; 32]) -> String {
    format!("{}.zst", hex::encode(hash))
}

impl std::fmt::Debug for ChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ChunkStore({}, {} bytes)",
            self.dir.display(),
            self.bytes()
        )
    }
}

impl ChunkStore {
    /// Open the store in `dir` (created if needed) with a budget of `cap`
    /// bytes; `tmp` is where chunks are written before their rename.
    pub fn open(dir: &Path, tmp: &Path, cap: u64) -> ChunkStore {
        let store = ChunkStore {
            dir: dir.to_path_buf(),
            tmp: tmp.to_path_buf(),
            cap,
            entries: Mutex::new(HashMap::new()),
            bytes: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        };
        if let Err(e) = std::fs::create_dir_all(dir) {
            store.warn_once(&format!("cannot create chunk store {}: {e}", dir.display()));
            return store;
        }
        if let Ok(rd) = std::fs::read_dir(dir) {
            let mut entries = crate::sync::lock(&store.entries);
            for e in rd.flatten() {
                let n = e.file_name();
                let Some(hex) = n.to_str().and_then(|n| n.strip_suffix(".zst")) else {
                    continue;
                };
                let Ok(Ok(hash)) = hex::decode(hex).map(<[u8; 32]>::try_from) else {
                    continue;
                };
                if let Ok(md) = e.metadata() {
                    store.bytes.fetch_add(md.len(), Ordering::Relaxed);
                    entries.insert(
                        hash,
                        Entry {
                            size: md.len(),
                            last_used: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        },
                    );
                }
            }
        }
        store
    }

    fn warn_once(&self, msg: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!("{msg}; serving from memory and the network");
        }
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The chunk with this content hash, if stored and intact.
    pub fn get(&self, hash: &[u8; 32]) -> Option<Vec<u8>> {
        if !crate::sync::lock(&self.entries).contains_key(hash) {
            return None;
        }
        let path = self.dir.join(name(hash));
        let data = std::fs::read(&path)
            .ok()
            .and_then(|z| zstd::stream::decode_all(&z[..]).ok());
        match data {
            Some(d) if <[u8; 32]>::from(sha2::Sha256::digest(&d)) == *hash => {
                let now = SystemTime::now();
                if let Some(e) = crate::sync::lock(&self.entries).get_mut(hash) {
                    e.last_used = now;
                }
                if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                    let _ = f.set_modified(now);
                }
                Some(d)
            }
            _ => {
                tracing::warn!(chunk = %path.display(), "stored chunk is corrupt; dropping it");
                self.remove(hash);
                None
            }
        }
    }

    fn remove(&self, hash: &[u8; 32]) {
        if let Some(e) = crate::sync::lock(&self.entries).remove(hash) {
            self.bytes.fetch_sub(e.size, Ordering::Relaxed);
        }
        let _ = std::fs::remove_file(self.dir.join(name(hash)));
    }

    /// Store a chunk whose content hash is `hash` (the caller verified it).
    pub fn put(&self, hash: &[u8; 32], data: &[u8]) {
        if self.cap == 0 || crate::sync::lock(&self.entries).contains_key(hash) {
            return;
        }
        let z = match zstd::bulk::compress(data, 1) {
            Ok(z) => z,
            Err(e) => return self.warn_once(&format!("compressing a chunk: {e}")),
        };
        if z.len() as u64 > self.cap {
            return;
        }
        self.make_room(z.len() as u64);
        let tmp = self.tmp.join(format!(
            "chunk-{}-{}.partial",
            std::process::id(),
            hex::encode(&hash[..8])
        ));
        let dest = self.dir.join(name(hash));
        let write = || -> std::io::Result<()> {
            std::fs::write(&tmp, &z)?;
            std::fs::rename(&tmp, &dest)
        };
        match write() {
            Ok(()) => {
                crate::sync::lock(&self.entries).insert(
                    *hash,
                    Entry {
                        size: z.len() as u64,
                        last_used: SystemTime::now(),
                    },
                );
                self.bytes.fetch_add(z.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                self.warn_once(&format!(
                    "writing to the chunk store {}: {e}",
                    self.dir.display()
                ));
            }
        }
    }

    /// Evict least recently used chunks until `incoming` more bytes fit.
    fn make_room(&self, incoming: u64) {
        while self.bytes() + incoming > self.cap {
            let oldest = {
                let entries = crate::sync::lock(&self.entries);
                entries
                    .iter()
                    .min_by_key(|(h, e)| (e.last_used, **h))
                    .map(|(h, _)| *h)
            };
            match oldest {
                Some(h) => self.remove(&h),
                None => break,
            }
        }
    }
}

impl crate::layer_index::SpanSink for ChunkStore {
    fn put(&self, sha256: &[u8; 32], data: &[u8]) {
        ChunkStore::put(self, sha256, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(d: &[u8]) -> [u8; 32] {
        sha2::Sha256::digest(d).into()
    }

    #[test]
    fn store_verify_evict_and_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        let (dir, tmp) = (d.path().join("chunks"), d.path().join("tmp"));
        std::fs::create_dir_all(&tmp).unwrap();
        // Incompressible chunks of equal size, so the budget holds exactly two.
        let chunks: Vec<Vec<u8>> = (1..5u64)
            .map(|seed| {
                let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                (0..100_000)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect()
            })
            .collect();
        let one = zstd::bulk::compress(&chunks[0], 1).unwrap().len() as u64;
        let s = ChunkStore::open(&dir, &tmp, one * 5 / 2);
        for c in &chunks[..2] {
            s.put(&hash(c), c);
        }
        assert_eq!(s.get(&hash(&chunks[0])).unwrap(), chunks[0]);
        std::thread::sleep(std::time::Duration::from_millis(10));
        s.get(&hash(&chunks[1])).unwrap();
        s.put(&hash(&chunks[2]), &chunks[2]); // evicts chunk 0, the least recently used
        assert!(s.get(&hash(&chunks[0])).is_none());
        assert!(s.bytes() <= one * 5 / 2 + 1000);
        drop(s);
        let s = ChunkStore::open(&dir, &tmp, one * 5 / 2);
        assert_eq!(s.get(&hash(&chunks[2])).unwrap(), chunks[2]);
        // A damaged chunk is detected and dropped, never returned.
        let path = dir.join(name(&hash(&chunks[2])));
        std::fs::write(&path, zstd::bulk::compress(b"other bytes", 1).unwrap()).unwrap();
        assert!(s.get(&hash(&chunks[2])).is_none());
        assert!(!path.exists());
    }

    #[test]
    fn unwritable_dir_is_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let s = ChunkStore::open(&file.join("chunks"), d.path(), 1 << 20);
        s.put(&hash(b"data"), b"data");
        assert!(s.get(&hash(b"data")).is_none());
    }
}
