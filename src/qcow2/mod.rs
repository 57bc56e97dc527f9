//! qcow2 output: the disk image as a QEMU qcow2 v3 file, written by
//! ocidisk itself in one streaming pass, clusters compressed on every core.
//!
//! - [`Qcow2Writer`] (`writer.rs`) takes whole guest clusters in any order,
//!   appends each (compressed where that shrinks it, `compress.rs`) and at
//!   the end writes the L2 tables, the L1 table, refcount blocks with exact
//!   refcounts and the header (`layout.rs`). Clusters that are all zeros are
//!   never given to it and stay unallocated.
//! - [`Assembler`] (`assemble.rs`) turns the filesystem writer's writes at
//!   arbitrary offsets into whole clusters: it knows from the plan how many
//!   bytes each cluster will receive and hands a cluster on the moment the
//!   last of them arrives, so the clusters stream out in the order the
//!   writer completes them.
//! - [`convert`] (`assemble.rs`) writes a qcow2 from a raw image file.
//! - [`Qcow2File`] (`update.rs`) keeps a qcow2 this module wrote current
//!   under later writes (`--flush-to` of a running disk).
//!
//! The format is QEMU's `docs/interop/qcow2.txt`: 16-bit refcounts, no
//! backing file, no snapshots; zstd sets the compression-type
//! incompatible feature (QEMU ≥ 5.1 reads it), zlib is what every reader
//! understands. The same input always gives the same bytes.

mod assemble;
mod compress;
mod layout;
mod update;
mod writer;

use std::path::PathBuf;

pub use assemble::{Assembler, convert};
pub use update::Qcow2File;
pub use writer::Qcow2Writer;

/// Cluster size qemu-img uses unless told otherwise (64 KiB).
pub const DEFAULT_CLUSTER_BITS: u32 = 16;
/// The smallest cluster QEMU accepts (512 bytes).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// The largest cluster QEMU accepts (2 MiB).
pub const MAX_CLUSTER_BITS: u32 = 21;

/// How clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// Raw deflate with a 4 KiB window: every qcow2 reader has it.
    #[default]
    Zlib,
    /// zstd frames: needs the compression-type header field (QEMU ≥ 5.1).
    Zstd,
}

impl Codec {
    /// Its name, as `qemu-img info` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Zlib => "zlib",
            Codec::Zstd => "zstd",
        }
    }
}

impl std::str::FromStr for Codec {
    type Err = Qcow2Error;
    fn from_str(s: &str) -> Result<Codec, Qcow2Error> {
        match s {
            "zlib" => Ok(Codec::Zlib),
            "zstd" => Ok(Codec::Zstd),
            other => Err(Qcow2Error::UnknownCodec(other.to_string())),
        }
    }
}

/// How the qcow2 file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qcow2Options {
    /// log2 of the cluster size, [`MIN_CLUSTER_BITS`]..=[`MAX_CLUSTER_BITS`].
    pub cluster_bits: u32,
    /// Compress clusters (`None`: every cluster stored as it is).
    pub compression: Option<Codec>,
}

impl Default for Qcow2Options {
    fn default() -> Qcow2Options {
        Qcow2Options {
            cluster_bits: DEFAULT_CLUSTER_BITS,
            compression: None,
        }
    }
}

impl Qcow2Options {
    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Options for a cluster size in bytes: a power of two from 512 B to
    /// 2 MiB, as qemu-img's `cluster_size`.
    pub fn cluster_bits_for(bytes: u64) -> Result<u32, Qcow2Error> {
        if !bytes.is_power_of_two() {
            return Err(Qcow2Error::ClusterSize(bytes));
        }
        let bits = bytes.trailing_zeros();
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&bits) {
            return Err(Qcow2Error::ClusterSize(bytes));
        }
        Ok(bits)
    }
}

/// Whether a qcow2 with `opts` can hold a `size`-byte disk.
pub fn check_size(size: u64, opts: &Qcow2Options) -> Result<(), Qcow2Error> {
    layout::Geometry::new(size, opts.cluster_bits).map(|_| ())
}

/// Errors writing or updating a qcow2 file.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// A cluster size qcow2 does not have.
    #[error(
        "qcow2 cluster size {0} is not a power of two from 512 bytes to 2 MiB (as qemu-img's cluster_size)"
    )]
    ClusterSize(u64),
    /// A compression name qcow2 does not have.
    #[error("unknown qcow2 compression {0:?}: use zlib or zstd")]
    UnknownCodec(String),
    /// The device is too large for the L1 table at this cluster size.
    #[error(
        "a {size}-byte disk needs an L1 table of {l1_bytes} bytes with {cluster_size}-byte clusters; qcow2 readers allow at most {max} (use a larger --cluster-size)"
    )]
    TooLarge {
        /// The device size.
        size: u64,
        /// The L1 table it would need.
        l1_bytes: u64,
        /// The cluster size.
        cluster_size: u64,
        /// QEMU's limit.
        max: u64,
    },
    /// Reading or writing a file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file that is not a qcow2 this module wrote.
    #[error("{path} is not a qcow2 file ocidisk can update: {why}")]
    NotOurs {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A cluster that the plan promised bytes for never got them all, a
    /// byte written twice, or a compression worker that died: a bug.
    #[error("internal qcow2 error: {0}")]
    Internal(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3 MiB disk with a compressible, an incompressible, a zero and a
    /// partial last cluster.
    fn sample(size: u64) -> Vec<u8> {
        let mut d = vec![0u8; size as usize];
        for (i, b) in d[..65536].iter_mut().enumerate() {
            *b = (i / 7) as u8;
        }
        let mut x = 0x2545F4914F6CDD1Du64;
        for b in &mut d[65536 * 5..65536 * 6] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let n = d.len();
        d[n - 10..].fill(9);
        d
    }

    fn write(dir: &std::path::Path, data: &[u8], opts: Qcow2Options) -> std::path::PathBuf {
        let path = dir.join(format!("{:?}.qcow2", opts.compression));
        let f = std::fs::File::create_new(&path).unwrap();
        let mut w = Qcow2Writer::new(f, &path, data.len() as u64, opts).unwrap();
        let cs = w.cluster_size() as usize;
        // Out of guest order, as the assembler pushes.
        let n = data.len().div_ceil(cs);
        for c in (0..n).rev() {
            let mut buf = vec![0u8; cs];
            let end = ((c + 1) * cs).min(data.len());
            buf[..end - c * cs].copy_from_slice(&data[c * cs..end]);
            w.push(c as u64, buf).unwrap();
        }
        w.finish().unwrap();
        path
    }

    #[test]
    fn written_files_read_back_and_take_updates() {
        let d = tempfile::tempdir().unwrap();
        let size = 3 * 1024 * 1024 + 4096;
        let data = sample(size);
        for compression in [None, Some(Codec::Zlib), Some(Codec::Zstd)] {
            let opts = Qcow2Options {
                cluster_bits: 16,
                compression,
            };
            let path = write(d.path(), &data, opts);
            let mut q = Qcow2File::open(&path).unwrap();
            let mut back = vec![0u8; data.len()];
            q.read_at(&mut back, 0).unwrap();
            assert!(back == data, "{compression:?}");
            // Writes into a compressed, a plain, an unallocated cluster
            // and across a cluster boundary.
            let mut want = data.clone();
            for (off, len, v) in [
                (100u64, 10usize, 1u8),
                (65536 * 5 + 3, 5, 2),
                (65536 * 20, 70000, 3),
            ] {
                let piece = vec![v; len];
                q.write_at(&piece, off).unwrap();
                want[off as usize..off as usize + len].copy_from_slice(&piece);
            }
            q.flush().unwrap();
            drop(q);
            let q = Qcow2File::open(&path).unwrap();
            q.read_at(&mut back, 0).unwrap();
            assert!(back == want, "{compression:?} after updates");
        }
    }

    #[test]
    fn same_input_same_bytes_and_zero_clusters_unallocated() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let data = sample(8 << 20);
        let opts = Qcow2Options {
            cluster_bits: 16,
            compression: Some(Codec::Zlib),
        };
        let (a, b) = (write(d1.path(), &data, opts), write(d2.path(), &data, opts));
        let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
        assert_eq!(a, b);
        // Header, 3 data clusters' worth at most, L2, L1, refcounts.
        assert!(a.len() <= 8 * 65536, "{} bytes", a.len());
    }

    #[test]
    fn tables_that_share_a_cluster_with_data_are_refused() {
        use std::os::unix::fs::FileExt;
        let d = tempfile::tempdir().unwrap();
        let data = sample(1 << 20);
        let opts = Qcow2Options {
            cluster_bits: 16,
            compression: Some(Codec::Zlib),
        };
        let path = write(d.path(), &data, opts);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let be = |at: u64| {
            let mut b = [0u8; 8];
            f.read_exact_at(&mut b, at).unwrap();
            u64::from_be_bytes(b)
        };
        let l1_offset = be(40);
        let l2 = be(l1_offset) & layout::OFFSET_MASK;
        // Guest cluster 0 (compressed) now claims the L2 table's own
        // cluster as its data: a write to it would rewrite the table.
        f.write_all_at(&(l2 | layout::COPIED).to_be_bytes(), l2)
            .unwrap();
        let e = Qcow2File::open(&path).err().expect("refused");
        assert!(
            e.to_string().contains("holds both L2Table and Data(0)"),
            "{e}"
        );
    }

    #[test]
    fn flags_on_an_unallocated_entry_are_refused() {
        use std::os::unix::fs::FileExt;
        let d = tempfile::tempdir().unwrap();
        let path = write(d.path(), &sample(1 << 20), Qcow2Options::default());
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, 40).unwrap();
        let l1_offset = u64::from_be_bytes(b);
        f.read_exact_at(&mut b, l1_offset).unwrap();
        let l2 = u64::from_be_bytes(b) & layout::OFFSET_MASK;
        // "Copied" with no cluster: an in-place write would land at host
        // offset 0, the header (a fuzz find).
        f.write_all_at(&layout::COPIED.to_be_bytes(), l2).unwrap();
        let e = Qcow2File::open(&path).err().expect("refused");
        assert!(e.to_string().contains("flags on no cluster"), "{e}");
    }
}
