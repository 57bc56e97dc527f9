//! Files with more extents than the inode holds: a one-level block-map
//! B+tree. The inode's data fork holds its root (`xfs_bmdr_block`: level,
//! count, then as many keys as the fork could hold and the pointers after
//! them); each leaf is a long-form v5 block (`BMA3`, 72-byte header) of up
//! to 251 extent records, the records spread evenly, chained to its
//! siblings.

use super::disk::{be16, be32, be64, set_crc};
use super::geometry::{BLOCK, SECTOR};

/// Bytes of the v5 long-form block header (`XFS_BTREE_LBLOCK_CRC_LEN`).
const HEADER: usize = 72;
/// Extent records a leaf holds.
pub const LEAF_RECORDS: usize = (BLOCK as usize - HEADER) / 16;
/// `NULLFSBLOCK`.
const NULL64: u64 = u64::MAX;

/// Key/pointer pairs a root in a data fork of `fork_bytes` holds
/// (`xfs_bmdr_maxrecs` for a node).
pub fn root_capacity(fork_bytes: usize) -> usize {
    (fork_bytes - 4) / 16
}

/// The leaves for `records` (16-byte extent records, in order), at
/// `devs` with filesystem block numbers `fsblocks`, owned by inode `owner`.
pub fn leaves(
    records: &[[u8; 16]],
    devs: &[u64],
    fsblocks: &[u64],
    owner: u64,
    uuid: &[u8; 16],
) -> Vec<Vec<u8>> {
    let chunks = super::btree::split(records, LEAF_RECORDS);
    let mut out = Vec::with_capacity(chunks.len());
    for (i, recs) in chunks.iter().enumerate() {
        let mut b = vec![0u8; BLOCK as usize];
        be32(&mut b, 0, 0x424d_4133); // BMA3
        be16(&mut b, 4, 0); // level
        be16(&mut b, 6, recs.len() as u16);
        be64(&mut b, 8, if i > 0 { fsblocks[i - 1] } else { NULL64 });
        be64(&mut b, 16, fsblocks.get(i + 1).copied().unwrap_or(NULL64));
        be64(&mut b, 24, devs[i] * (BLOCK / SECTOR));
        b[40..56].copy_from_slice(uuid);
        be64(&mut b, 56, owner);
        for (k, r) in recs.iter().enumerate() {
            b[HEADER + 16 * k..HEADER + 16 * (k + 1)].copy_from_slice(r);
        }
        set_crc(&mut b, 64);
        out.push(b);
    }
    out
}

/// The root in a data fork that holds `capacity` key/pointer pairs:
/// level 1, a key (first logical block) and a pointer per leaf.
pub fn root(first_logical: &[u64], fsblocks: &[u64], capacity: usize) -> Vec<u8> {
    let mut b = vec![0u8; 4 + 16 * capacity];
    be16(&mut b, 0, 1);
    be16(&mut b, 2, fsblocks.len() as u16);
    for (i, (k, p)) in first_logical.iter().zip(fsblocks).enumerate() {
        be64(&mut b, 4 + 8 * i, *k);
        be64(&mut b, 4 + 8 * capacity + 8 * i, *p);
    }
    b
}
