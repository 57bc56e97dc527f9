//! How an inode maps its logical blocks, behind one interface: extent
//! trees (ext4) or block maps (ext3). Both take the same runs and produce
//! the inode's 60-byte `i_block` plus the blocks outside it, which are
//! metadata in the `FsImage`.

use super::inode::EXTENTS_FL;
use super::{Profile, Run, blockmap, extent};

/// Split runs into extents (at most [`extent::MAX_LEN`] blocks each).
fn extents(runs: &[Run]) -> Vec<extent::Extent> {
    let mut out = Vec::new();
    for r in runs {
        let (mut l, mut p, mut len) = (r.logical, r.physical, r.len);
        while len > 0 {
            let n = len.min(u64::from(extent::MAX_LEN));
            out.push(extent::Extent {
                logical: l as u32,
                len: n as u32,
                physical: p,
            });
            l += n;
            p += n;
            len -= n;
        }
    }
    out
}

/// Blocks outside the inode that mapping `runs` takes.
pub fn tree_blocks(profile: Profile, runs: &[Run]) -> u64 {
    if profile.extents() {
        extent::blocks_needed(extents(runs).len()) as u64
    } else {
        blockmap::blocks_needed(runs) as u64
    }
}

/// An upper estimate of [`tree_blocks`] for a file whose data lies in
/// these logical ranges (first block, count), before placement.
pub fn estimate(profile: Profile, ranges: &[(u64, u64)]) -> u64 {
    if profile.extents() {
        let data: u64 = ranges.iter().map(|(_, c)| c).sum();
        extent::blocks_needed(ranges.len() + (data / u64::from(extent::MAX_LEN)) as usize) as u64
    } else {
        let runs: Vec<Run> = ranges
            .iter()
            .map(|&(logical, len)| Run {
                logical,
                physical: 0,
                len,
            })
            .collect();
        blockmap::blocks_needed(&runs) as u64
    }
}

/// The `i_block` for `runs` and the blocks outside the inode, placed at
/// `tree_blocks` (as many as [`tree_blocks`] said). `csum_seed`: the
/// inode's checksum seed (extent blocks carry a checksum).
pub fn encode(
    profile: Profile,
    runs: &[Run],
    tree_blocks: &[u64],
    csum_seed: u32,
) -> ([u8; 60], Vec<(u64, Vec<u8>)>) {
    if profile.extents() {
        extent::build(&extents(runs), tree_blocks, csum_seed)
    } else {
        blockmap::build(runs, tree_blocks)
    }
}

/// The `i_flags` bits the mapping needs.
pub fn inode_flags(profile: Profile) -> u32 {
    if profile.extents() { EXTENTS_FL } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_mappings_take_the_same_runs() {
        let runs = [
            Run {
                logical: 0,
                physical: 100,
                len: 40000,
            },
            Run {
                logical: 50000,
                physical: 90000,
                len: 1,
            },
        ];
        // Extents: 40,000 blocks split in two, plus one: fits the inode.
        assert_eq!(tree_blocks(Profile::Ext4, &runs), 0);
        let (root, blocks) = encode(Profile::Ext4, &runs, &[], 0);
        assert!(blocks.is_empty());
        assert_eq!(u16::from_le_bytes([root[2], root[3]]), 3, "three extents");
        // Block map: IND, DIND + 39 INDs for 0..40,000 and 1 more for 50,000.
        let n = tree_blocks(Profile::Ext3, &runs);
        assert_eq!(n, 1 + 1 + 39 + 1);
        assert!(estimate(Profile::Ext3, &[(0, 40000), (50000, 1)]) >= n);
        let tb: Vec<u64> = (1..=n).collect();
        let (_, blocks) = encode(Profile::Ext3, &runs, &tb, 0);
        assert_eq!(blocks.len() as u64, n);
        assert_eq!(inode_flags(Profile::Ext3), 0);
    }
}
