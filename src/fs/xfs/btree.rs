//! Short-form (AG-relative) B+tree blocks with v5 headers: the free-space
//! trees by block (`AB3B`) and by count (`AB3C`) and the inode tree
//! (`IAB3`). One leaf each while the records fit a block; deeper trees
//! come with larger content.

use super::disk::{NULL32, be16, be32, be64, set_crc};
use super::geometry::{BLOCK, SECTOR};

/// Bytes of the v5 short-form block header (`XFS_BTREE_SBLOCK_CRC_LEN`).
const HEADER: usize = 56;

/// Which tree a block belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tree {
    /// Free space by start block.
    ByBlock,
    /// Free space by length.
    ByCount,
    /// Inode chunks.
    Inodes,
}

impl Tree {
    fn magic(self) -> u32 {
        match self {
            Tree::ByBlock => 0x4142_3342,
            Tree::ByCount => 0x4142_3343,
            Tree::Inodes => 0x4941_4233,
        }
    }
}

/// An inode-tree record of a full 64-inode chunk.
#[derive(Debug, Clone, Copy)]
pub struct InodeRec {
    /// AG inode number of the chunk's first inode.
    pub start: u32,
    /// Bit i set: inode `start + i` is free.
    pub free: u64,
}

/// Records a leaf block holds.
pub fn leaf_capacity(record_bytes: usize) -> usize {
    (BLOCK as usize - HEADER) / record_bytes
}

fn leaf(
    tree: Tree,
    ag: u64,
    device_block: u64,
    uuid: &[u8; 16],
    records: &[u8],
    n: usize,
) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    be32(&mut b, 0, tree.magic());
    be16(&mut b, 4, 0); // level
    be16(&mut b, 6, n as u16);
    be32(&mut b, 8, NULL32);
    be32(&mut b, 12, NULL32);
    be64(&mut b, 16, device_block * (BLOCK / SECTOR));
    b[32..48].copy_from_slice(uuid);
    be32(&mut b, 48, ag as u32);
    b[HEADER..HEADER + records.len()].copy_from_slice(records);
    set_crc(&mut b, 52);
    b
}

/// A free-space leaf: `extents` (AG block, length) in the tree's order.
pub fn free_space_leaf(
    tree: Tree,
    ag: u64,
    device_block: u64,
    uuid: &[u8; 16],
    extents: &[(u32, u32)],
) -> Vec<u8> {
    let mut sorted = extents.to_vec();
    match tree {
        Tree::ByCount => sorted.sort_by_key(|&(start, len)| (len, start)),
        _ => sorted.sort(),
    }
    let mut recs = vec![0u8; 8 * sorted.len()];
    for (i, (start, len)) in sorted.iter().enumerate() {
        be32(&mut recs, 8 * i, *start);
        be32(&mut recs, 8 * i + 4, *len);
    }
    leaf(tree, ag, device_block, uuid, &recs, sorted.len())
}

/// An inode-tree leaf.
pub fn inode_leaf(ag: u64, device_block: u64, uuid: &[u8; 16], chunks: &[InodeRec]) -> Vec<u8> {
    let mut recs = vec![0u8; 16 * chunks.len()];
    for (i, c) in chunks.iter().enumerate() {
        be32(&mut recs, 16 * i, c.start);
        be32(&mut recs, 16 * i + 4, c.free.count_ones());
        be64(&mut recs, 16 * i + 8, c.free);
    }
    leaf(Tree::Inodes, ag, device_block, uuid, &recs, chunks.len())
}
