//! The superblock, the group descriptors and the jbd2 journal superblock,
//! as mke2fs writes them for each profile.

use super::Profile;
use super::dir;
use super::geometry::{BPG, BS, Geometry, INODE_SIZE};
use super::inode::{EXTRA_ISIZE, FIRST_INO, JOURNAL_INO};
use crate::fs::crc32c::crc32c_raw;

/// What the superblock says beyond the geometry.
pub struct Superblock<'a> {
    /// The geometry.
    pub geo: &'a Geometry,
    /// The profile.
    pub profile: Profile,
    /// Free blocks.
    pub free_blocks: u64,
    /// Free inodes.
    pub free_inodes: u64,
    /// Whether there is a journal.
    pub journal: bool,
    /// The journal inode's `i_block` and size (`s_jnl_blocks`).
    pub jnl_backup: [u32; 17],
    /// Filesystem UUID.
    pub uuid: [u8; 16],
    /// htree hash seed.
    pub hash_seed: [u32; 4],
}

fn put32(s: &mut [u8], at: usize, v: u32) {
    s[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put16(s: &mut [u8], at: usize, v: u16) {
    s[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

impl Superblock<'_> {
    /// The 1,024 superblock bytes as group `group` stores them.
    pub fn encode(&self, group: u16) -> Vec<u8> {
        let g = self.geo;
        let p = self.profile;
        let mut s = vec![0u8; 1024];
        put32(&mut s, 0x00, (g.ipg * g.groups) as u32);
        put32(&mut s, 0x04, g.blocks as u32);
        put32(&mut s, 0x0C, self.free_blocks as u32);
        put32(&mut s, 0x10, self.free_inodes as u32);
        put32(&mut s, 0x14, 0); // first data block
        put32(&mut s, 0x18, 2); // log block size: 4096
        put32(&mut s, 0x1C, 2); // log cluster size
        put32(&mut s, 0x20, BPG as u32);
        put32(&mut s, 0x24, BPG as u32);
        put32(&mut s, 0x28, g.ipg as u32);
        put16(&mut s, 0x36, 0xFFFF); // max mount count: -1
        put16(&mut s, 0x38, 0xEF53);
        put16(&mut s, 0x3A, 1); // clean
        put16(&mut s, 0x3C, 1); // errors: continue
        put32(&mut s, 0x4C, 1); // dynamic revision
        put32(&mut s, 0x54, FIRST_INO);
        put16(&mut s, 0x58, INODE_SIZE as u16);
        put16(&mut s, 0x5A, group);
        let compat = 0x8 | 0x20 | if self.journal { 0x4 } else { 0 }; // ext_attr, dir_index, has_journal
        put32(&mut s, 0x5C, compat);
        put32(&mut s, 0x60, p.incompat());
        put32(&mut s, 0x64, p.ro_compat());
        s[0x68..0x78].copy_from_slice(&self.uuid);
        if self.journal {
            put32(&mut s, 0xE0, JOURNAL_INO);
        }
        for (i, w) in self.hash_seed.iter().enumerate() {
            put32(&mut s, 0xEC + i * 4, *w);
        }
        s[0xFC] = dir::HASH_HALF_MD4;
        if self.journal {
            s[0xFD] = 1; // s_jnl_backup_type: EXT3_JNL_BACKUP_BLOCKS
            for (i, w) in self.jnl_backup.iter().enumerate() {
                put32(&mut s, 0x10C + i * 4, *w);
            }
        }
        if p.bit64() {
            put16(&mut s, 0xFE, p.desc_size() as u16);
        }
        put32(&mut s, 0x100, 0x0C); // default mount options: user_xattr, acl
        put32(&mut s, 0x150, (g.blocks >> 32) as u32);
        put32(&mut s, 0x158, (self.free_blocks >> 32) as u32);
        put16(&mut s, 0x15C, EXTRA_ISIZE);
        put16(&mut s, 0x15E, EXTRA_ISIZE);
        put32(&mut s, 0x160, 0x2); // EXT2_FLAGS_UNSIGNED_HASH
        if p.flex_bg() {
            s[0x174] = 4; // log groups per flex
        }
        if p.csum() {
            s[0x175] = 1; // checksum type: crc32c
            let c = crc32c_raw(!0, &s[..0x3FC]);
            put32(&mut s, 0x3FC, c);
        }
        s
    }
}

/// One group's counters and where its bitmaps and inode table are.
pub struct GroupDesc {
    /// Block bitmap.
    pub block_bitmap: u64,
    /// Inode bitmap.
    pub inode_bitmap: u64,
    /// Inode table.
    pub inode_table: u64,
    /// Free blocks.
    pub free_blocks: u64,
    /// Free inodes.
    pub free_inodes: u64,
    /// Directories.
    pub dirs: u64,
    /// Inodes at the end of the table never used.
    pub itable_unused: u64,
    /// crc32c of the block bitmap (`metadata_csum`).
    pub block_csum: u32,
    /// crc32c of the inode bitmap (`metadata_csum`).
    pub inode_csum: u32,
}

impl GroupDesc {
    /// Encode as descriptor `g` into `d` (`profile.desc_size()` bytes).
    pub fn encode(&self, d: &mut [u8], g: u64, profile: Profile, fs_seed: u32) {
        let put32 = |d: &mut [u8], at: usize, v: u64| put32(d, at, v as u32);
        let put16 = |d: &mut [u8], at: usize, v: u64| put16(d, at, v as u16);
        put32(d, 0x00, self.block_bitmap);
        put32(d, 0x04, self.inode_bitmap);
        put32(d, 0x08, self.inode_table);
        put16(d, 0x0C, self.free_blocks);
        put16(d, 0x0E, self.free_inodes);
        put16(d, 0x10, self.dirs);
        if !profile.csum() {
            // ext3: no flags, no unused-inode count, no checksums.
            return;
        }
        put16(d, 0x12, 0x4); // EXT4_BG_INODE_ZEROED
        put16(d, 0x18, u64::from(self.block_csum));
        put16(d, 0x1A, u64::from(self.inode_csum));
        put16(d, 0x1C, self.itable_unused);
        if profile.bit64() {
            put32(d, 0x20, self.block_bitmap >> 32);
            put32(d, 0x24, self.inode_bitmap >> 32);
            put32(d, 0x28, self.inode_table >> 32);
            put16(d, 0x2C, self.free_blocks >> 16);
            put16(d, 0x2E, self.free_inodes >> 16);
            put16(d, 0x30, self.dirs >> 16);
            put16(d, 0x32, self.itable_unused >> 16);
            put16(d, 0x38, u64::from(self.block_csum >> 16));
            put16(d, 0x3A, u64::from(self.inode_csum >> 16));
        }
        let size = profile.desc_size() as usize;
        let mut c = crc32c_raw(fs_seed, &(g as u32).to_le_bytes());
        c = crc32c_raw(c, &d[..0x1E]);
        c = crc32c_raw(c, &[0, 0]);
        c = crc32c_raw(c, &d[0x20..size]);
        put16(d, 0x1E, u64::from(c & 0xFFFF));
    }
}

/// A clean jbd2 v2 superblock (big-endian) for an internal journal of
/// `blocks` blocks; 64-bit block numbers with the `64bit` feature.
pub fn journal_superblock(blocks: u64, uuid: &[u8; 16], profile: Profile) -> Vec<u8> {
    let mut b = vec![0u8; BS as usize];
    let put = |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    put(&mut b, 0x00, 0xC03B_3998);
    put(&mut b, 0x04, 4); // superblock v2
    put(&mut b, 0x0C, BS as u32);
    put(&mut b, 0x10, blocks as u32);
    put(&mut b, 0x14, 1); // first log block
    put(&mut b, 0x18, 1); // first expected sequence
    if profile.bit64() {
        put(&mut b, 0x28, 0x2); // incompat: 64bit block numbers
    }
    b[0x30..0x40].copy_from_slice(uuid);
    put(&mut b, 0x40, 1); // one user
    b
}
