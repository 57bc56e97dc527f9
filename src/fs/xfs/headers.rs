//! The per-AG headers: the superblock (primary in AG 0, identical
//! secondaries in every other AG), the AGF (free space), the AGI (inodes)
//! and the AGFL (the free list), each in its own 512-byte sector of the
//! AG's first block.

use super::disk::{NULL32, be16, be32, be64, set_crc};
use super::geometry::{BLOCK, Geometry, INODE, INODE_ALIGN, INODES_PER_BLOCK, SECTOR};

/// `sb_versionnum`: v5 with NLINK, ALIGN, DIRV2, LOGV2, EXTFLG, MOREBITS.
const VERSIONNUM: u16 = 0xb4a5;
/// `sb_features2`: LAZYSBCOUNT, ATTR2, PROJID32, CRC.
const FEATURES2: u32 = 0x18a;
/// `sb_features_incompat`: FTYPE, BIGTIME.
const INCOMPAT: u32 = 0x1 | 0x8;

/// Filesystem-wide counters and identity the superblock records.
#[derive(Debug, Clone, Copy)]
pub struct SbInfo {
    /// Filesystem UUID.
    pub uuid: [u8; 16],
    /// The root directory's inode.
    pub root_ino: u64,
    /// Realtime bitmap and summary inodes (present though unused).
    pub rbm_ino: u64,
    /// See `rbm_ino`.
    pub rsum_ino: u64,
    /// Allocated inodes.
    pub icount: u64,
    /// Free inodes among them.
    pub ifree: u64,
    /// Free data blocks (AGFL blocks included, as mkfs counts them).
    pub fdblocks: u64,
}

/// The superblock sector.
pub fn superblock(g: &Geometry, s: &SbInfo) -> Vec<u8> {
    let mut b = vec![0u8; SECTOR as usize];
    be32(&mut b, 0, 0x5846_5342); // XFSB
    be32(&mut b, 4, BLOCK as u32);
    be64(&mut b, 8, g.blocks);
    b[32..48].copy_from_slice(&s.uuid);
    be64(&mut b, 48, g.fsblock(g.log_ag, g.log_agbno()));
    be64(&mut b, 56, s.root_ino);
    be64(&mut b, 64, s.rbm_ino);
    be64(&mut b, 72, s.rsum_ino);
    be32(&mut b, 80, 1); // rextsize
    be32(&mut b, 84, g.ag_blocks as u32);
    be32(&mut b, 88, g.ag_count as u32);
    be32(&mut b, 96, g.log_blocks as u32);
    be16(&mut b, 100, VERSIONNUM);
    be16(&mut b, 102, SECTOR as u16);
    be16(&mut b, 104, INODE as u16);
    be16(&mut b, 106, INODES_PER_BLOCK as u16);
    b[120] = BLOCK.trailing_zeros() as u8;
    b[121] = SECTOR.trailing_zeros() as u8;
    b[122] = INODE.trailing_zeros() as u8;
    b[123] = INODES_PER_BLOCK.trailing_zeros() as u8;
    b[124] = g.ag_blk_log as u8;
    b[127] = imax_pct(g);
    be64(&mut b, 128, s.icount);
    be64(&mut b, 136, s.ifree);
    be64(&mut b, 144, s.fdblocks);
    be32(&mut b, 180, INODE_ALIGN as u32);
    be32(&mut b, 196, 1); // logsunit
    be32(&mut b, 200, FEATURES2);
    be32(&mut b, 204, FEATURES2);
    be32(&mut b, 216, INCOMPAT);
    set_crc(&mut b, 224);
    b
}

/// `sb_imax_pct`: 25% up to 1 TiB, 5% to 50 TiB, 1% above.
fn imax_pct(g: &Geometry) -> u8 {
    let bytes = g.blocks * BLOCK;
    if bytes < 1 << 40 {
        25
    } else if bytes < 50 << 40 {
        5
    } else {
        1
    }
}

/// Free space of one AG, as its AGF records it.
#[derive(Debug, Clone, Copy)]
pub struct AgfInfo {
    /// Free blocks outside the free list.
    pub free: u64,
    /// The longest free extent.
    pub longest: u64,
    /// Blocks on the free list.
    pub fl_count: u32,
}

/// The AGF sector of AG `ag`.
pub fn agf(g: &Geometry, ag: u64, uuid: &[u8; 16], a: &AgfInfo) -> Vec<u8> {
    let mut b = vec![0u8; SECTOR as usize];
    be32(&mut b, 0, 0x5841_4746); // XAGF
    be32(&mut b, 4, 1);
    be32(&mut b, 8, ag as u32);
    be32(&mut b, 12, g.ag_len(ag) as u32);
    be32(&mut b, 16, 1); // bno root
    be32(&mut b, 20, 2); // cnt root
    be32(&mut b, 28, 1); // bno level
    be32(&mut b, 32, 1); // cnt level
    be32(&mut b, 40, 0); // flfirst
    be32(&mut b, 44, a.fl_count.saturating_sub(1)); // fllast
    be32(&mut b, 48, a.fl_count);
    be32(&mut b, 52, a.free as u32);
    be32(&mut b, 56, a.longest as u32);
    b[64..80].copy_from_slice(uuid);
    set_crc(&mut b, 216);
    b
}

/// Inodes of one AG, as its AGI records it.
#[derive(Debug, Clone, Copy)]
pub struct AgiInfo {
    /// Allocated inodes.
    pub count: u64,
    /// Free inodes among them.
    pub free: u64,
    /// The AG inode number of the most recently allocated chunk.
    pub newino: Option<u32>,
    /// Levels of the inode tree.
    pub level: u32,
}

/// The AGI sector of AG `ag`.
pub fn agi(g: &Geometry, ag: u64, uuid: &[u8; 16], a: &AgiInfo) -> Vec<u8> {
    let mut b = vec![0u8; SECTOR as usize];
    be32(&mut b, 0, 0x5841_4749); // XAGI
    be32(&mut b, 4, 1);
    be32(&mut b, 8, ag as u32);
    be32(&mut b, 12, g.ag_len(ag) as u32);
    be32(&mut b, 16, a.count as u32);
    be32(&mut b, 20, 3); // inobt root
    be32(&mut b, 24, a.level);
    be32(&mut b, 28, a.free as u32);
    be32(&mut b, 32, a.newino.unwrap_or(NULL32));
    be32(&mut b, 36, NULL32); // dirino
    for i in 0..64 {
        be32(&mut b, 40 + 4 * i, NULL32); // unlinked buckets
    }
    b[296..312].copy_from_slice(uuid);
    set_crc(&mut b, 312);
    b
}

/// The AGFL sector of AG `ag`, listing `blocks` from slot 0.
pub fn agfl(ag: u64, uuid: &[u8; 16], blocks: &[u32]) -> Vec<u8> {
    let mut b = vec![0u8; SECTOR as usize];
    be32(&mut b, 0, 0x5841_464c); // XAFL
    be32(&mut b, 4, ag as u32);
    b[8..24].copy_from_slice(uuid);
    let slots = (SECTOR as usize - 36) / 4;
    for i in 0..slots {
        be32(&mut b, 36 + 4 * i, blocks.get(i).copied().unwrap_or(NULL32));
    }
    set_crc(&mut b, 32);
    b
}
