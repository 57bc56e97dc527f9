//! A file's data as every writer maps it: the logical block ranges that
//! hold bytes (holes of sparse files stay out), the runs a writer maps
//! them to, and the device pieces each tar byte range lands in.

use crate::fs::{BLOCK_SIZE, DataExtent};
use crate::tree::{FileData, NodeId, NodeKind, Tree};

/// Logical blocks `[logical, logical + len)` of an inode at physical
/// blocks from `physical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First logical block.
    pub logical: u64,
    /// First physical block.
    pub physical: u64,
    /// Blocks.
    pub len: u64,
}

/// Logical block ranges of a file that hold data: (first block, count).
pub fn file_ranges(tree: &Tree, node: NodeId) -> Vec<(u64, u64)> {
    match &tree.nodes[node].kind {
        NodeKind::File(f) => data_ranges(f),
        _ => Vec::new(),
    }
}

/// [`file_ranges`] of a file's data, wherever it is kept.
pub fn data_ranges(f: &FileData) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (off, _, len) in f.runs() {
        let first = off / BLOCK_SIZE;
        let last = (off + len - 1) / BLOCK_SIZE;
        match ranges.last_mut() {
            Some(r) if r.0 + r.1 >= first => r.1 = r.1.max(last + 1 - r.0),
            _ => ranges.push((first, last + 1 - first)),
        }
    }
    ranges
}

/// Device pieces for `len` file bytes at `file_off` (tar bytes from
/// `tar_off`), through the file's runs; `None` if a block is unmapped.
pub fn place(
    runs: &[Run],
    (file_off, tar_off, len): (u64, u64, u64),
    layer: usize,
    out: &mut Vec<DataExtent>,
) -> Option<()> {
    let mut done = 0;
    while done < len {
        let at = file_off + done;
        let lblk = at / BLOCK_SIZE;
        let r = runs.get(runs.partition_point(|r| r.logical + r.len <= lblk))?;
        if r.logical > lblk {
            return None;
        }
        let run_end = (r.logical + r.len) * BLOCK_SIZE;
        let n = (len - done).min(run_end - at);
        out.push(DataExtent {
            device_offset: (r.physical + lblk - r.logical) * BLOCK_SIZE + at % BLOCK_SIZE,
            len: n,
            layer,
            tar_offset: tar_off + done,
        });
        done += n;
    }
    Some(())
}
