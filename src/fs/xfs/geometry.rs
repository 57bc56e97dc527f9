//! The shape of an XFS filesystem as mkfs.xfs 6.1 chooses it for one disk
//! with 4 KiB blocks and 512-byte inodes: four allocation groups below
//! 4 TiB (else groups of 2^28 - 1 blocks), a tail too small for a group
//! dropped, an internal log in the middle group after its headers, sized
//! 64 MiB up to 128 GiB and 1/2048 of the filesystem above, at most
//! 521,728 blocks.

use super::XfsError;

/// Bytes per block.
pub const BLOCK: u64 = 4096;
/// Bytes per sector (superblock, AG headers).
pub const SECTOR: u64 = 512;
/// Bytes per inode.
pub const INODE: u64 = 512;
/// Inodes per block.
pub const INODES_PER_BLOCK: u64 = BLOCK / INODE;
/// Inodes per chunk (one inobt record).
pub const CHUNK_INODES: u64 = 64;
/// Blocks per inode chunk.
pub const CHUNK_BLOCKS: u64 = CHUNK_INODES / INODES_PER_BLOCK;
/// Inode chunk alignment in blocks (`sb_inoalignmt`).
pub const INODE_ALIGN: u64 = 4;
/// Blocks at the start of every AG: headers, then the bno, cnt and inobt
/// roots (`XFS_PREALLOC_BLOCKS`).
pub const PREALLOC: u64 = 4;
/// Blocks each AG keeps on its free list, as mkfs fills it.
pub const AGFL_BLOCKS: u64 = 4;
/// Smallest filesystem mkfs.xfs 6.1 makes.
pub const MIN_BYTES: u64 = 300 << 20;
/// Smallest allocation group (`XFS_AG_MIN_BYTES`).
const AG_MIN_BLOCKS: u64 = (16 << 20) / BLOCK;
/// Largest allocation group (`XFS_AG_MAX_BLOCKS`).
const AG_MAX_BLOCKS: u64 = ((1 << 40) - 1) / BLOCK;
/// Largest log (`XFS_MAX_LOG_BLOCKS`).
const LOG_MAX_BLOCKS: u64 = 521_728;
/// Smallest log for a filesystem of at least 300 MiB (`XFS_MIN_LOG_BYTES`).
const LOG_MIN_BLOCKS: u64 = (64 << 20) / BLOCK;

/// Where everything goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Blocks in the filesystem.
    pub blocks: u64,
    /// Allocation groups.
    pub ag_count: u64,
    /// Blocks per AG (the last may be shorter).
    pub ag_blocks: u64,
    /// log2 of `ag_blocks`, rounded up: AG-relative numbers take this many
    /// bits of a filesystem block or inode number.
    pub ag_blk_log: u32,
    /// The AG holding the log.
    pub log_ag: u64,
    /// Log length in blocks.
    pub log_blocks: u64,
}

impl Geometry {
    /// The geometry for `bytes` (rounded down to whole blocks).
    pub fn new(bytes: u64) -> Result<Geometry, XfsError> {
        if bytes < MIN_BYTES {
            return Err(XfsError::TooSmall { bytes });
        }
        let mut blocks = bytes / BLOCK;
        let ag_blocks = if blocks >= (4 << 40) / BLOCK {
            AG_MAX_BLOCKS
        } else {
            blocks.div_ceil(4)
        };
        let mut ag_count = blocks.div_ceil(ag_blocks);
        let tail = blocks - (ag_count - 1) * ag_blocks;
        if tail < AG_MIN_BLOCKS && ag_count > 1 {
            ag_count -= 1;
            blocks = ag_count * ag_blocks;
        }
        let log_blocks = if blocks < (16 << 30) / BLOCK {
            LOG_MIN_BLOCKS
        } else {
            (blocks / 2048).clamp(LOG_MIN_BLOCKS, LOG_MAX_BLOCKS)
        };
        Ok(Geometry {
            blocks,
            ag_count,
            ag_blocks,
            ag_blk_log: 64 - (ag_blocks - 1).leading_zeros(),
            log_ag: ag_count / 2,
            log_blocks,
        })
    }

    /// Blocks in AG `ag`.
    pub fn ag_len(&self, ag: u64) -> u64 {
        if ag + 1 == self.ag_count {
            self.blocks - ag * self.ag_blocks
        } else {
            self.ag_blocks
        }
    }

    /// The device block of AG `ag`'s block `agbno`.
    pub fn device_block(&self, ag: u64, agbno: u64) -> u64 {
        ag * self.ag_blocks + agbno
    }

    /// The filesystem block number (`xfs_fsblock_t`: AG in the high bits).
    pub fn fsblock(&self, ag: u64, agbno: u64) -> u64 {
        (ag << self.ag_blk_log) | agbno
    }

    /// The inode number of AG `ag`'s inode at block `agbno`, slot `slot`.
    pub fn ino(&self, ag: u64, agbno: u64, slot: u64) -> u64 {
        (ag << (self.ag_blk_log + 3)) | (agbno << 3) | slot
    }

    /// The log's first AG block.
    pub fn log_agbno(&self) -> u64 {
        PREALLOC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What mkfs.xfs 6.1 printed for these sizes (`xfs_db -c 'sb 0' -c
    /// 'print dblocks agcount agblocks logblocks logstart'`).
    #[test]
    fn matches_mkfs() {
        let cases: [(u64, u64, u64, u64, u64, u64); 6] = [
            (300 << 20, 76_800, 4, 19_200, 16_384, 65_540),
            (1 << 30, 262_144, 4, 65_536, 16_384, 131_076),
            (2 << 30, 524_288, 4, 131_072, 16_384, 262_148),
            (20 << 30, 5_242_880, 4, 1_310_720, 16_384, 4_194_308),
            (600 << 30, 157_286_400, 4, 39_321_600, 76_800, 134_217_732),
            (5 << 40, 1_342_177_275, 5, 268_435_455, 521_728, 536_870_916),
        ];
        for (bytes, blocks, agc, agb, logb, logstart) in cases {
            let g = Geometry::new(bytes).unwrap();
            assert_eq!(
                (g.blocks, g.ag_count, g.ag_blocks, g.log_blocks),
                (blocks, agc, agb, logb),
                "{bytes}"
            );
            assert_eq!(g.fsblock(g.log_ag, g.log_agbno()), logstart, "{bytes}");
        }
        assert!(matches!(
            Geometry::new(299 << 20),
            Err(XfsError::TooSmall { .. })
        ));
    }
}
