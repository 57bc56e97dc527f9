//! ext4 extent trees of any depth: up to four extents in the inode, beyond
//! that leaf and index blocks (340 entries each, with a checksum tail).

use crate::fs::crc32c::crc32c_raw;

/// Most blocks one initialised extent maps.
pub const MAX_LEN: u32 = 32768;
const PER_BLOCK: usize = (4096 - 12) / 12;
const IN_INODE: usize = 4;
const MAGIC: u16 = 0xF30A;

/// One extent: `len` blocks from logical block `logical` at `physical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First logical block.
    pub logical: u32,
    /// Length in blocks (1..=32768).
    pub len: u32,
    /// First physical block.
    pub physical: u64,
}

/// How many tree blocks (outside the inode) `n` extents need.
pub fn blocks_needed(n: usize) -> usize {
    if n <= IN_INODE {
        return 0;
    }
    let mut level = n.div_ceil(PER_BLOCK);
    let mut total = level;
    while level > IN_INODE {
        level = level.div_ceil(PER_BLOCK);
        total += level;
    }
    total
}

fn header(b: &mut [u8], entries: usize, max: usize, depth: u16) {
    b[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    b[2..4].copy_from_slice(&(entries as u16).to_le_bytes());
    b[4..6].copy_from_slice(&(max as u16).to_le_bytes());
    b[6..8].copy_from_slice(&depth.to_le_bytes());
}

fn put_leaf(b: &mut [u8], at: usize, e: &Extent) {
    b[at..at + 4].copy_from_slice(&e.logical.to_le_bytes());
    b[at + 4..at + 6].copy_from_slice(&(e.len as u16).to_le_bytes());
    b[at + 6..at + 8].copy_from_slice(&((e.physical >> 32) as u16).to_le_bytes());
    b[at + 8..at + 12].copy_from_slice(&(e.physical as u32).to_le_bytes());
}

fn put_index(b: &mut [u8], at: usize, logical: u32, block: u64) {
    b[at..at + 4].copy_from_slice(&logical.to_le_bytes());
    b[at + 4..at + 8].copy_from_slice(&(block as u32).to_le_bytes());
    b[at + 8..at + 10].copy_from_slice(&((block >> 32) as u16).to_le_bytes());
}

/// Build the tree. `tree_blocks` are the physical blocks for the tree
/// blocks (exactly [`blocks_needed`] of them); `csum_seed` is the inode's
/// checksum seed. Returns the 60-byte `i_block` and the tree blocks.
pub fn build(
    extents: &[Extent],
    tree_blocks: &[u64],
    csum_seed: u32,
) -> ([u8; 60], Vec<(u64, Vec<u8>)>) {
    assert_eq!(
        tree_blocks.len(),
        blocks_needed(extents.len()),
        "planner reserved the tree blocks"
    );
    let mut root = [0u8; 60];
    if extents.len() <= IN_INODE {
        header(&mut root, extents.len(), IN_INODE, 0);
        for (i, e) in extents.iter().enumerate() {
            put_leaf(&mut root, 12 + i * 12, e);
        }
        return (root, Vec::new());
    }
    let mut out = Vec::new();
    let mut next = tree_blocks.iter().copied();
    // Leaves.
    let mut level: Vec<(u32, u64)> = Vec::new();
    for chunk in extents.chunks(PER_BLOCK) {
        let blk = next.next().expect("enough tree blocks");
        let mut b = vec![0u8; 4096];
        header(&mut b, chunk.len(), PER_BLOCK, 0);
        for (i, e) in chunk.iter().enumerate() {
            put_leaf(&mut b, 12 + i * 12, e);
        }
        seal(&mut b, csum_seed);
        out.push((blk, b));
        level.push((chunk[0].logical, blk));
    }
    // Index levels until the root can hold them.
    let mut depth: u16 = 1;
    while level.len() > IN_INODE {
        let mut up = Vec::new();
        for chunk in level.chunks(PER_BLOCK) {
            let blk = next.next().expect("enough tree blocks");
            let mut b = vec![0u8; 4096];
            header(&mut b, chunk.len(), PER_BLOCK, depth);
            for (i, (logical, child)) in chunk.iter().enumerate() {
                put_index(&mut b, 12 + i * 12, *logical, *child);
            }
            seal(&mut b, csum_seed);
            out.push((blk, b));
            up.push((chunk[0].0, blk));
        }
        level = up;
        depth += 1;
    }
    header(&mut root, level.len(), IN_INODE, depth);
    for (i, (logical, child)) in level.iter().enumerate() {
        put_index(&mut root, 12 + i * 12, *logical, *child);
    }
    (root, out)
}

fn seal(b: &mut [u8], csum_seed: u32) {
    let tail = 12 + PER_BLOCK * 12;
    let c = crc32c_raw(csum_seed, &b[..tail]);
    b[tail..tail + 4].copy_from_slice(&c.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extents(n: usize) -> Vec<Extent> {
        (0..n)
            .map(|i| Extent {
                logical: (i * 2) as u32,
                len: 1,
                physical: 1000 + (i * 2) as u64,
            })
            .collect()
    }

    #[test]
    fn depth_grows_with_extent_count() {
        assert_eq!(blocks_needed(4), 0);
        assert_eq!(blocks_needed(5), 1);
        assert_eq!(blocks_needed(340 * 4), 4);
        assert_eq!(blocks_needed(340 * 4 + 1), 5 + 1);
        let (root, blocks) = build(&extents(3), &[], 1);
        assert_eq!(u16::from_le_bytes([root[6], root[7]]), 0);
        assert!(blocks.is_empty());
        let n = 340 * 5;
        let tb: Vec<u64> = (0..blocks_needed(n) as u64).map(|i| 50 + i).collect();
        let (root, blocks) = build(&extents(n), &tb, 1);
        assert_eq!(
            u16::from_le_bytes([root[6], root[7]]),
            2,
            "leaves, one index level, root"
        );
        assert_eq!(blocks.len(), tb.len());
        // Leaf 1 starts at extent 340.
        assert_eq!(
            u32::from_le_bytes(blocks[1].1[12..16].try_into().unwrap()),
            680
        );
    }
}
