//! Short-form (AG-relative) B+tree blocks with v5 headers: the free-space
//! trees by block (`AB3B`) and by count (`AB3C`) and the inode tree
//! (`IAB3`). One leaf each while the records fit a block; the inode tree
//! gets a node over its leaves when they do not.

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

/// How many records each leaf takes when `n` records spread over leaves
/// of `capacity`: as evenly as they can, because a B+tree block other than
/// the root must be at least half full.
pub fn even_parts(n: usize, capacity: usize) -> Vec<usize> {
    let leaves = n.div_ceil(capacity);
    (0..leaves)
        .map(|i| n / leaves + usize::from(i < n % leaves))
        .collect()
}

/// `items` cut into the parts [`even_parts`] gives.
pub fn split<T>(items: &[T], capacity: usize) -> Vec<&[T]> {
    let mut rest = items;
    even_parts(items.len(), capacity)
        .into_iter()
        .map(|k| {
            let (part, more) = rest.split_at(k);
            rest = more;
            part
        })
        .collect()
}

/// Records a leaf block holds.
pub fn leaf_capacity(record_bytes: usize) -> usize {
    (BLOCK as usize - HEADER) / record_bytes
}

/// Siblings of a block at its level (AG blocks), if any.
#[derive(Debug, Clone, Copy, Default)]
pub struct Siblings {
    /// The block before.
    pub left: Option<u32>,
    /// The block after.
    pub right: Option<u32>,
}

#[allow(clippy::too_many_arguments)]
fn block(
    tree: Tree,
    level: u16,
    ag: u64,
    device_block: u64,
    uuid: &[u8; 16],
    body: &[u8],
    n: usize,
    sib: Siblings,
) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    be32(&mut b, 0, tree.magic());
    be16(&mut b, 4, level);
    be16(&mut b, 6, n as u16);
    be32(&mut b, 8, sib.left.unwrap_or(NULL32));
    be32(&mut b, 12, sib.right.unwrap_or(NULL32));
    be64(&mut b, 16, device_block * (BLOCK / SECTOR));
    b[32..48].copy_from_slice(uuid);
    be32(&mut b, 48, ag as u32);
    b[HEADER..HEADER + body.len()].copy_from_slice(body);
    set_crc(&mut b, 52);
    b
}

fn leaf(
    tree: Tree,
    ag: u64,
    device_block: u64,
    uuid: &[u8; 16],
    records: &[u8],
    n: usize,
) -> Vec<u8> {
    block(
        tree,
        0,
        ag,
        device_block,
        uuid,
        records,
        n,
        Siblings::default(),
    )
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
pub fn inode_leaf(
    ag: u64,
    device_block: u64,
    uuid: &[u8; 16],
    chunks: &[InodeRec],
    sib: Siblings,
) -> Vec<u8> {
    let mut recs = vec![0u8; 16 * chunks.len()];
    for (i, c) in chunks.iter().enumerate() {
        be32(&mut recs, 16 * i, c.start);
        be32(&mut recs, 16 * i + 4, c.free.count_ones());
        be64(&mut recs, 16 * i + 8, c.free);
    }
    block(
        Tree::Inodes,
        0,
        ag,
        device_block,
        uuid,
        &recs,
        chunks.len(),
        sib,
    )
}

/// Key/pointer pairs an inode-tree node holds.
pub const INODE_NODE_CAPACITY: usize = (BLOCK as usize - HEADER) / 8;

/// An inode-tree node one level above its leaves: for each leaf its first
/// chunk's start and its AG block, keys first (space for as many as the
/// block holds), pointers after them.
pub fn inode_node(ag: u64, device_block: u64, uuid: &[u8; 16], children: &[(u32, u32)]) -> Vec<u8> {
    let mut body = vec![0u8; 8 * INODE_NODE_CAPACITY];
    for (i, (key, ptr)) in children.iter().enumerate() {
        be32(&mut body, 4 * i, *key);
        be32(&mut body, 4 * INODE_NODE_CAPACITY + 4 * i, *ptr);
    }
    block(
        Tree::Inodes,
        1,
        ag,
        device_block,
        uuid,
        &body,
        children.len(),
        Siblings::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_even_and_at_least_half_full() {
        assert!(even_parts(0, 252).is_empty());
        assert_eq!(even_parts(252, 252), [252]);
        assert_eq!(even_parts(253, 252), [127, 126]);
        for n in 1..200_000usize {
            let parts = even_parts(n, 252);
            assert_eq!(parts.iter().sum::<usize>(), n);
            assert_eq!(parts.len(), n.div_ceil(252));
            for p in &parts {
                assert!(*p <= 252 && (parts.len() == 1 || *p >= 126), "{n}: {p}");
            }
        }
        let items: Vec<u32> = (0..600).collect();
        let parts = split(&items, 252);
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [200, 200, 200]
        );
        assert_eq!(parts[2][0], 400);
    }
}
