//! The lazy disk when the disk under it fills up (small tmpfs mounts; the
//! tests run as root). A full cache directory: reads go on from memory and
//! the network, with one clear log line. A full overlay: the writes that
//! cannot be kept fail, the next flush fails, and nothing acknowledged is
//! lost.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use common::cli::Ocidisk;
use common::imagegen::{self, Compression};
use common::lazy::disk_options;
use common::registry::Registry;
use ocidisk::BlobCache;
use ocidisk::disk::{Disk, DiskOptions};

/// Every log line of this test binary (all threads), for the checks on
/// what ocidisk says.
fn log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write_all(b)?;
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A tmpfs of `size` at `dir`, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    /// Fill what is left with a file, so the next allocation fails.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let block = vec![0x55u8; 4096];
        while f.write_all(&block).is_ok() {}
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn options(location: &str, read_only: bool) -> DiskOptions {
    DiskOptions {
        cache_mem: 8 << 20,
        ..disk_options(location, read_only)
    }
}

/// The standard image in a registry, and `materialize`'s bytes of it.
fn image(reg: &Registry, dir: &Path, repo: &str, read_only: bool) -> (String, Vec<u8>) {
    imagegen::write_standard(dir, "v1", Compression::Gzip);
    let layout = format!("oci:{}:v1", dir.display());
    reg.push(&layout, &format!("{repo}:v1"), false);
    let reference = dir.join("reference.img");
    let mut args = vec!["materialize"];
    if read_only {
        args.push("--read-only");
    }
    args.extend([layout.as_str(), reference.to_str().unwrap()]);
    Ocidisk::new().ok(&args);
    let want = std::fs::read(&reference).unwrap();
    (format!("{}/{repo}:v1", reg.host()), want)
}

#[test]
fn a_full_cache_directory_serves_from_memory_with_one_clear_line() {
    let log = log();
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let (r, want) = image(&reg, dir.path(), "fullcache", true);
    let fs = Tmpfs::mount(&dir.path().join("cache"), "1m");
    let cache = BlobCache::open(&fs.0).unwrap();
    fs.fill();
    // Cold: no index can be saved, no chunk stored.
    let disk = Disk::open(&options(&r, true), &cache).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for (i, chunk) in want.chunks(1 << 20).enumerate() {
        disk.read_at((i as u64) << 20, &mut buf[..chunk.len()])
            .unwrap_or_else(|e| panic!("read {i} with the cache dir full: {e}"));
        assert!(
            &buf[..chunk.len()] == chunk,
            "read {i} returned wrong bytes"
        );
    }
    drop(disk);
    let text = String::from_utf8_lossy(&log.lock().unwrap()).to_string();
    let chunk_lines = text
        .lines()
        .filter(|l| l.contains("writing to the chunk store") && l.contains("No space left"))
        .count();
    assert_eq!(chunk_lines, 1, "one line for the full chunk store:\n{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("the index stays in memory") && l.contains("No space left")),
        "the unsaved index is said:\n{text}"
    );
}

#[test]
fn a_full_overlay_fails_the_writes_it_cannot_keep_and_loses_nothing_acknowledged() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let (r, want) = image(&reg, dir.path(), "fulloverlay", false);
    let home = Ocidisk::new();
    let cache = BlobCache::open(home.cache_dir()).unwrap();
    let fs = Tmpfs::mount(&dir.path().join("overlay"), "2m");
    let mut opts = options(&r, false);
    opts.overlay = Some(fs.0.join("disk.overlay"));
    let size = want.len() as u64;
    let disk = Disk::open(&opts, &cache).unwrap();

    // Acknowledged and flushed: a block near the end.
    let kept_at = size - (1 << 20);
    let kept = vec![0xa1u8; 4096];
    disk.write_at(kept_at, &kept).unwrap();
    disk.flush().unwrap();

    // Then write 256 KiB pieces until the overlay's filesystem is full.
    let piece = vec![0x5cu8; 256 << 10];
    let mut ok = Vec::new();
    let mut failure = None;
    for k in 0..64u64 {
        let at = k * piece.len() as u64;
        match disk.write_at(at, &piece) {
            Ok(()) => ok.push(at),
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    let failure = failure.expect("a 2 MiB overlay filled up");
    assert!(failure.contains("No space left"), "{failure}");
    assert!(!ok.is_empty(), "some writes fit");
    // What was acknowledged reads back, and the rest is untouched.
    let mut buf = vec![0u8; piece.len()];
    for &at in &ok {
        disk.read_at(at, &mut buf).unwrap();
        assert!(buf == piece, "acknowledged write at {at} reads back");
    }
    let mut block = vec![0u8; 4096];
    disk.read_at(kept_at, &mut block).unwrap();
    assert_eq!(block, kept);
    let beyond = (ok.len() as u64 + 1) * piece.len() as u64;
    disk.read_at(beyond, &mut buf).unwrap();
    assert!(
        buf[..] == want[beyond as usize..beyond as usize + buf.len()],
        "a block no write reached keeps the image's bytes"
    );
    // The flush reports the lost write.
    let err = disk.flush().unwrap_err().to_string();
    assert!(
        err.contains("write since the last flush failed") || err.contains("No space left"),
        "{err}"
    );
    drop(disk);

    // Reopened: the flushed block is there.
    let disk = Disk::open(&opts, &cache).unwrap();
    disk.read_at(kept_at, &mut block).unwrap();
    assert_eq!(block, kept, "a flushed write survives a full overlay");
}
