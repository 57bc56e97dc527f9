//! The XFS writer (work in progress, not yet behind `--fs xfs`): a V5
//! filesystem as mkfs.xfs 6.1 makes it with `crc=1 ftype=1 bigtime=1` and
//! finobt, rmapbt, reflink, sparse inodes and inobtcount off, 4 KiB blocks
//! and 512-byte inodes.
//!
//! What it writes so far is the empty filesystem mkfs makes: every AG's
//! superblock, AGF, AGI and AGFL; one-leaf free-space and inode trees; the
//! first inode chunk (root directory, realtime bitmap and summary inodes,
//! 61 free inodes) fully initialised; a clean internal log. Files,
//! directories of every form, xattrs and the tree come next.
//!
//! Files: `geometry.rs` (sizes like mkfs), `headers.rs` (superblock and AG
//! headers), `btree.rs` (short-form B+tree blocks), `inode.rs` (v3
//! inodes), `log.rs` (the unmount record), `disk.rs` (big-endian fields
//! and the v5 checksum).

pub mod btree;
pub mod disk;
pub mod geometry;
pub mod headers;
pub mod inode;
pub mod log;

use crate::fs::FsImage;
use btree::{InodeRec, Tree};
use geometry::{
    AGFL_BLOCKS, BLOCK, CHUNK_BLOCKS, CHUNK_INODES, Geometry, INODE, INODE_ALIGN, PREALLOC, SECTOR,
};
use headers::{AgfInfo, AgiInfo, SbInfo};
use inode::Inode;

/// Errors writing XFS.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XfsError {
    /// Below the smallest XFS mkfs.xfs 6.1 makes.
    #[error(
        "size {bytes} bytes is too small for an xfs filesystem (mkfs.xfs makes them from 300 MiB)"
    )]
    TooSmall {
        /// Bytes asked for.
        bytes: u64,
    },
}

/// What one AG's first blocks hold, and its free space.
struct AgLayout {
    agfl: Vec<u32>,
    free: Vec<(u32, u32)>,
}

fn ag_layout(g: &Geometry, ag: u64) -> AgLayout {
    let len = g.ag_len(ag);
    let mut next = PREALLOC;
    if ag == g.log_ag {
        next += g.log_blocks;
    }
    let agfl: Vec<u32> = (next..next + AGFL_BLOCKS).map(|b| b as u32).collect();
    next += AGFL_BLOCKS;
    if ag == 0 {
        next = next.next_multiple_of(INODE_ALIGN) + CHUNK_BLOCKS;
    }
    AgLayout {
        agfl,
        free: vec![(next as u32, (len - next) as u32)],
    }
}

/// The empty filesystem of `bytes` bytes (root directory only) with
/// `uuid`, its root and metadata inodes timed `mtime`.
pub fn build_empty(bytes: u64, uuid: [u8; 16], mtime: (i64, u32)) -> Result<FsImage, XfsError> {
    let g = Geometry::new(bytes)?;
    let mut img = FsImage {
        size: g.blocks * BLOCK,
        ..FsImage::default()
    };
    let chunk_agbno = (PREALLOC + AGFL_BLOCKS).next_multiple_of(INODE_ALIGN);
    if g.log_ag == 0 {
        unreachable!("four or more AGs: the log is never in AG 0");
    }
    let root = g.ino(0, chunk_agbno, 0);
    let (rbm, rsum) = (root + 1, root + 2);
    let mut fdblocks = 0;
    let layouts: Vec<AgLayout> = (0..g.ag_count).map(|ag| ag_layout(&g, ag)).collect();
    for l in &layouts {
        fdblocks += l.free.iter().map(|e| u64::from(e.1)).sum::<u64>() + l.agfl.len() as u64;
    }
    let sb = SbInfo {
        uuid,
        root_ino: root,
        rbm_ino: rbm,
        rsum_ino: rsum,
        icount: CHUNK_INODES,
        ifree: CHUNK_INODES - 3,
        fdblocks,
    };
    let sb_bytes = headers::superblock(&g, &sb);
    for (ag, l) in layouts.iter().enumerate() {
        let ag = ag as u64;
        let first = g.device_block(ag, 0) * BLOCK;
        let free: u64 = l.free.iter().map(|e| u64::from(e.1)).sum();
        let longest = l.free.iter().map(|e| u64::from(e.1)).max().unwrap_or(0);
        let agf = AgfInfo {
            free,
            longest,
            fl_count: l.agfl.len() as u32,
        };
        let (chunks, agi) = if ag == 0 {
            let start = (chunk_agbno * (BLOCK / INODE)) as u32;
            (
                vec![InodeRec {
                    start,
                    free: !0b111,
                }],
                AgiInfo {
                    count: CHUNK_INODES,
                    free: CHUNK_INODES - 3,
                    newino: Some(start),
                },
            )
        } else {
            (
                Vec::new(),
                AgiInfo {
                    count: 0,
                    free: 0,
                    newino: None,
                },
            )
        };
        img.put_bytes(first, &sb_bytes);
        img.put_bytes(first + SECTOR, &headers::agf(&g, ag, &uuid, &agf));
        img.put_bytes(first + 2 * SECTOR, &headers::agi(&g, ag, &uuid, &agi));
        img.put_bytes(first + 3 * SECTOR, &headers::agfl(ag, &uuid, &l.agfl));
        for (agbno, tree) in [(1, Tree::ByBlock), (2, Tree::ByCount)] {
            let dev = g.device_block(ag, agbno);
            img.put_block(dev, btree::free_space_leaf(tree, ag, dev, &uuid, &l.free));
        }
        let dev = g.device_block(ag, 3);
        img.put_block(dev, btree::inode_leaf(ag, dev, &uuid, &chunks));
    }
    // The first inode chunk: root, realtime bitmap and summary, then free.
    let parent = (root as u32).to_be_bytes();
    let root_fork = [0, 0, parent[0], parent[1], parent[2], parent[3]];
    for slot in 0..CHUNK_INODES {
        let ino = root + slot;
        let i = match slot {
            0 => Inode {
                ino,
                mode: 0o040755,
                uid: 0,
                gid: 0,
                nlink: 2,
                mtime,
                size: root_fork.len() as u64,
                nblocks: 0,
                format: inode::format::LOCAL,
                nextents: 0,
                fork: &root_fork,
            },
            1 | 2 => Inode {
                ino,
                mode: 0o100000,
                uid: 0,
                gid: 0,
                nlink: 1,
                mtime,
                size: 0,
                nblocks: 0,
                format: inode::format::EXTENTS,
                nextents: 0,
                fork: &[],
            },
            _ => Inode {
                ino,
                mode: 0,
                uid: 0,
                gid: 0,
                nlink: 0,
                mtime: (0, 0),
                size: 0,
                nblocks: 0,
                format: inode::format::DEV,
                nextents: 0,
                fork: &[],
            },
        };
        let at = g.device_block(0, chunk_agbno) * BLOCK + slot * INODE;
        img.put_bytes(at, &inode::encode(&i, &uuid));
    }
    let log_at = g.device_block(g.log_ag, g.log_agbno()) * BLOCK;
    img.put_bytes(log_at, &log::unmount_record(&uuid));
    Ok(img)
}
