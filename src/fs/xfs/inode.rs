//! Version 3 inodes (`xfs_dinode`, 512 bytes): the 176-byte core with
//! bigtime timestamps, then the data fork (local data or extent records).

use super::disk::{NULL32, be16, be32, be64, set_crc};
use super::geometry::INODE;

/// Bytes of the v3 inode core; the data fork starts here.
pub const CORE: usize = 176;
/// `di_format` values.
pub mod format {
    /// Device numbers in the fork.
    pub const DEV: u8 = 0;
    /// Data in the inode.
    pub const LOCAL: u8 = 1;
    /// Extent records in the inode.
    pub const EXTENTS: u8 = 2;
    /// The root of a block-map B+tree in the inode.
    pub const BTREE: u8 = 3;
}
/// `XFS_DIFLAG2_BIGTIME`.
const FLAG2_BIGTIME: u64 = 0x8;

/// A bigtime timestamp: nanoseconds since 1901-12-13T20:45:52Z.
pub fn bigtime(secs: i64, nsec: u32) -> u64 {
    let since = (secs + (1i64 << 31)) as u64;
    since * 1_000_000_000 + u64::from(nsec)
}

/// What one inode holds.
#[derive(Debug, Clone)]
pub struct Inode<'a> {
    /// Its number.
    pub ino: u64,
    /// Type and permission bits (`S_IFDIR | 0o755`, …); 0 for a free inode.
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Links.
    pub nlink: u32,
    /// Modification time (also change and creation time).
    pub mtime: (i64, u32),
    /// `di_size`.
    pub size: u64,
    /// Blocks the inode owns.
    pub nblocks: u64,
    /// `di_format` of the data fork.
    pub format: u8,
    /// Extent records in the data fork.
    pub nextents: u32,
    /// The data fork's bytes.
    pub fork: &'a [u8],
    /// The attribute fork's bytes (shortform, or extent records), empty
    /// for none.
    pub attr: &'a [u8],
    /// `di_aformat` when there is an attribute fork.
    pub aformat: u8,
    /// Extent records in the attribute fork.
    pub anextents: u16,
    /// Where the attribute fork starts, in 8-byte units after the core.
    pub forkoff: u8,
}

/// The 512 bytes of `inode`, checksummed.
pub fn encode(i: &Inode<'_>, uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; INODE as usize];
    be16(&mut b, 0, 0x494e); // IN
    be16(&mut b, 2, i.mode);
    b[4] = 3;
    b[5] = i.format;
    be32(&mut b, 8, i.uid);
    be32(&mut b, 12, i.gid);
    be32(&mut b, 16, i.nlink);
    let t = if i.mode == 0 {
        0
    } else {
        bigtime(i.mtime.0, i.mtime.1)
    };
    let zero = bigtime(0, 0);
    be64(&mut b, 32, if i.mode == 0 { 0 } else { zero }); // atime: the epoch
    be64(&mut b, 40, t);
    be64(&mut b, 48, t);
    be64(&mut b, 56, i.size);
    be64(&mut b, 64, i.nblocks);
    be32(&mut b, 76, i.nextents);
    be32(&mut b, 96, NULL32); // next unlinked
    if i.mode != 0 {
        be64(&mut b, 120, FLAG2_BIGTIME);
        if i.attr.is_empty() {
            b[83] = format::EXTENTS; // as mkfs leaves it with no attribute fork
        } else {
            be16(&mut b, 80, i.anextents);
            b[82] = i.forkoff;
            b[83] = i.aformat;
            let at = CORE + 8 * usize::from(i.forkoff);
            b[at..at + i.attr.len()].copy_from_slice(i.attr);
        }
    }
    be64(&mut b, 144, t); // crtime
    be64(&mut b, 152, i.ino);
    b[160..176].copy_from_slice(uuid);
    b[CORE..CORE + i.fork.len()].copy_from_slice(i.fork);
    set_crc(&mut b, 100);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bigtime_counts_from_1901() {
        assert_eq!(bigtime(-(1i64 << 31), 0), 0);
        assert_eq!(bigtime(0, 5), (1u64 << 31) * 1_000_000_000 + 5);
    }
}
