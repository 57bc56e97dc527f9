//! The shape of an ext filesystem: block groups, inodes per group, where
//! the superblock backups go (`sparse_super`) and how big mke2fs makes the
//! journal.

use super::Profile;

/// Block size.
pub const BS: u64 = 4096;
/// Blocks per group (one bitmap block's bits).
pub const BPG: u64 = 32768;
/// Inode size.
pub const INODE_SIZE: u64 = 256;
/// Inodes in a block.
pub const INODES_PER_BLOCK: u64 = BS / INODE_SIZE;

/// mke2fs's default journal size for a filesystem of `blocks` 4 KiB blocks.
pub fn default_journal_blocks(blocks: u64) -> u64 {
    match blocks {
        b if b < 2048 => 0,
        b if b < 32768 => 1024,
        b if b < 256 * 1024 => 4096,
        b if b < 512 * 1024 => 8192,
        b if b < 4096 * 1024 => 16384,
        b if b < 8192 * 1024 => 32768,
        b if b < 16384 * 1024 => 65536,
        b if b < 32768 * 1024 => 131072,
        _ => 262144,
    }
}

/// Whether group `g` holds a superblock backup (`sparse_super`: groups 0,
/// 1 and powers of 3, 5 and 7).
pub fn backup_group(g: u64) -> bool {
    if g <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&base| {
        let mut p = base;
        while p < g {
            p *= base;
        }
        p == g
    })
}

/// Filesystem geometry for a block count.
#[derive(Debug, Clone)]
pub struct Geometry {
    /// Blocks in the filesystem.
    pub blocks: u64,
    /// Block groups.
    pub groups: u64,
    /// Inodes per group.
    pub ipg: u64,
    /// Blocks of group descriptors.
    pub gdt_blocks: u64,
}

impl Geometry {
    /// The geometry of `blocks` blocks with at least `want_inodes` inodes;
    /// `None` if no such ext filesystem exists.
    pub fn new(blocks: u64, want_inodes: u64, profile: Profile) -> Option<Geometry> {
        let mut groups = blocks.div_ceil(BPG);
        let mut blocks = blocks;
        // A last group too small for its own metadata is dropped, as mke2fs does.
        if groups > 1 && blocks - (groups - 1) * BPG < 256 {
            groups -= 1;
            blocks = groups * BPG;
        }
        let ipg_for = |groups: u64| {
            want_inodes
                .div_ceil(groups)
                .div_ceil(INODES_PER_BLOCK)
                .max(1)
                * INODES_PER_BLOCK
        };
        let mut ipg = ipg_for(groups);
        if !profile.flex_bg() && groups > 1 {
            // Without flex_bg each group holds its own bitmaps and inode
            // table: a last group that cannot, plus 50 blocks, is dropped
            // (mke2fs's rule).
            let last = groups - 1;
            let sb = if backup_group(last) {
                1 + (groups * profile.desc_size()).div_ceil(BS)
            } else {
                0
            };
            if blocks - last * BPG < sb + 2 + ipg / INODES_PER_BLOCK + 50 {
                groups -= 1;
                blocks = groups * BPG;
                ipg = ipg_for(groups);
            }
        }
        if ipg > BPG || ipg * groups > u64::from(u32::MAX) {
            return None;
        }
        Some(Geometry {
            blocks,
            groups,
            ipg,
            gdt_blocks: (groups * profile.desc_size()).div_ceil(BS),
        })
    }

    /// Blocks in group `g` (the last one may be short).
    pub fn group_len(&self, g: u64) -> u64 {
        if g + 1 == self.groups {
            self.blocks - g * BPG
        } else {
            BPG
        }
    }

    /// Blocks of one group's inode table.
    pub fn itable_blocks(&self) -> u64 {
        self.ipg / INODES_PER_BLOCK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_groups_follow_sparse_super() {
        let g: Vec<u64> = (0..100).filter(|g| backup_group(*g)).collect();
        assert_eq!(g, vec![0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
    }

    #[test]
    fn a_last_group_without_room_for_its_table_is_dropped_without_flex_bg() {
        // 1,000 blocks past two full groups, 16,384 inodes a group: an
        // inode table of 1,024 blocks (+ bitmaps + 50) does not fit there.
        let blocks = 2 * BPG + 1000;
        let g3 = Geometry::new(blocks, 3 * 16384, Profile::Ext3).unwrap();
        assert_eq!((g3.groups, g3.blocks, g3.ipg), (2, 2 * BPG, 24576));
        let g4 = Geometry::new(blocks, 3 * 16384, Profile::Ext4).unwrap();
        assert_eq!(
            (g4.groups, g4.ipg),
            (3, 16384),
            "flex_bg keeps the short group"
        );
        assert!(
            Geometry::new(BPG, 40000, Profile::Ext4).is_none(),
            "more inodes than bitmap bits"
        );
    }
}
