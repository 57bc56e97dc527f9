//! The XFS writer behind `--fs xfs` (work in progress): a V5
//! filesystem as mkfs.xfs 6.1 makes it with `crc=1 ftype=1 bigtime=1` and
//! finobt, rmapbt, reflink, sparse inodes and inobtcount off, 4 KiB blocks
//! and 512-byte inodes.
//!
//! What it writes so far: every AG's superblock, AGF, AGI and AGFL;
//! one-leaf free-space and inode trees; inode chunks in AG 0 (a tree with
//! more inodes gets a bigger filesystem), fully initialised: the root,
//! the realtime bitmap and summary inodes as mkfs makes them, then the
//! tree's nodes; shortform, block, leaf and node-form directories;
//! files with their extents in the inode or, past 21, in a one-level
//! block-map B+tree (up to 5,020 extents), holes kept; local and remote
//! symlinks; devices and fifos; hard links; bigtime timestamps; a clean
//! internal log; xattrs (and POSIX ACLs as XFS's own) in the inode's
//! attribute fork. What it cannot write yet (attributes that need a leaf
//! block,
//! files of more extents, more inodes than one inode-tree leaf indexes) is
//! an error naming it. [`build_empty`] is the empty filesystem mkfs makes.
//!
//! File data follows the stable layout of [`crate::fs::zone`] (the AG
//! headers and AG 0's inode chunks are the skipped headers), unless that
//! leaves an AG more free extents than a one-leaf free-space tree holds:
//! then the data is packed in tree order. Without `--size` the device is
//! rounded up to a sixteenth of its power of two, so that the AGs of a
//! new version stay where they were.
//!
//! Files: `geometry.rs` (sizes like mkfs), `layout.rs` (a tree onto a
//! geometry), `headers.rs` (superblock and AG headers), `btree.rs`
//! (short-form B+tree blocks), `bmbt.rs` (block-map B+trees), `inode.rs` (v3 inodes), `dir.rs`
//! (directories), `attr.rs` (extended attributes), `log.rs` (the unmount
//! record), `disk.rs` (big-endian
//! fields and the v5 checksum).

pub mod attr;
pub mod bmbt;
pub mod btree;
pub mod dir;
pub mod disk;
pub mod geometry;
pub mod headers;
pub mod inode;
pub mod layout;
pub mod log;

use crate::fs::extents::file_ranges;
use crate::fs::order::{Order, OrderError};
use crate::fs::sizing::{self, Limits, SizeError};
use crate::fs::zone::{self, DataZone};
use crate::fs::{FsImage, FsOptions};
use crate::tree::{NodeKind, Tree};
use geometry::{AGFL_BLOCKS, BLOCK, Geometry, INODE_ALIGN, PREALLOC};

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
    /// Content this writer cannot lay out yet.
    #[error("{path}: the xfs writer does not write {what} yet")]
    NotYet {
        /// What is missing.
        what: &'static str,
        /// The node that needs it.
        path: String,
    },
    /// An extended attribute no filesystem takes (or a bad ACL).
    #[error("{path}: {source}")]
    Xattr {
        /// The node.
        path: String,
        /// What is wrong.
        source: crate::fs::xattr::XattrError,
    },
    /// A symlink target over `XFS_SYMLINK_MAXLEN`.
    #[error("symlink {path} has a target of {len} bytes; xfs stores at most 1023")]
    SymlinkTooLong {
        /// The symlink.
        path: String,
        /// Its target's length.
        len: usize,
    },
    /// A device number beyond XFS's 14-bit major and 18-bit minor.
    #[error(
        "device {path} is {major}:{minor}; xfs stores majors below 16384 and minors below 262144"
    )]
    DeviceNumber {
        /// The device.
        path: String,
        /// Major.
        major: u32,
        /// Minor.
        minor: u32,
    },
    /// The stable layout left AG `ag` more free extents than one
    /// free-space leaf holds (the writer then packs the data instead).
    #[error("AG {ag} has more free extents than one free-space tree leaf holds")]
    Fragmented {
        /// The AG.
        ag: u64,
    },
    /// No size holds the content, or the size asked for does not.
    #[error(transparent)]
    Size(#[from] SizeError),
    /// The tree has more nodes than a writer numbers.
    #[error(transparent)]
    Order(#[from] OrderError),
}

/// Plan the XFS filesystem of `tree` (`opts.uuid` set by the caller;
/// `None` means all zeros).
pub fn build(tree: &Tree, opts: &FsOptions) -> Result<FsImage, XfsError> {
    let order = Order::new(tree)?;
    match fit(tree, &order, opts, true) {
        Err(XfsError::Fragmented { ag }) => {
            tracing::info!(
                "xfs: the stable layout leaves AG {ag} too fragmented for one-leaf free-space trees; packing the data instead"
            );
            fit(tree, &order, opts, false)
        }
        r => r,
    }
}

/// Without `--size`, the block count rounded up to a sixteenth of its
/// power of two: the allocation groups (a quarter of the device each)
/// then stay put when a new version adds a little.
fn coarse(blocks: u64) -> u64 {
    let step = 1u64 << (63 - blocks.max(16).leading_zeros()).saturating_sub(4);
    blocks.next_multiple_of(step)
}

/// Size and lay out the tree, its data stable or packed.
fn fit(
    tree: &Tree,
    order: &Order<'_>,
    opts: &FsOptions,
    stable: bool,
) -> Result<FsImage, XfsError> {
    let uuid = opts.uuid.unwrap_or_default();
    let mut content =
        layout::slots(order).div_ceil(geometry::CHUNK_INODES) * geometry::CHUNK_BLOCKS;
    if stable {
        content += DataZone::new(tree).blocks() + zone::META_ALIGN;
    }
    for p in &order.nodes {
        content += match &tree.nodes[p.id].kind {
            NodeKind::File(_) if stable => 0,
            NodeKind::File(_) => file_ranges(tree, p.id).iter().map(|r| r.1).sum(),
            NodeKind::Dir(_) => 1,
            NodeKind::Symlink(t) => (t.len() as u64).div_ceil(BLOCK - 56),
            _ => 0,
        };
    }
    let log = |blocks: u64| {
        Geometry::new(blocks.max(geometry::MIN_BYTES / BLOCK) * BLOCK).map_or(0, |g| g.log_blocks)
    };
    let overhead = |blocks: u64| log(blocks) + 4 * (PREALLOC + AGFL_BLOCKS) + INODE_ALIGN;
    let mut error = None;
    let mut attempt = |blocks: u64| {
        let blocks = if opts.size.is_none() && stable {
            coarse(blocks)
        } else {
            blocks
        };
        match layout::write(order, blocks, uuid, stable) {
            Ok(img) => img,
            Err(e) => {
                error.get_or_insert(e);
                // Stop the search: no size helps.
                Some(FsImage::default())
            }
        }
    };
    let limits = Limits {
        fs: "xfs",
        min_blocks: geometry::MIN_BYTES / BLOCK,
        max_blocks: (4u64 << 40) / BLOCK,
        above_max_hint: "; for a bigger disk, grow a smaller image afterwards with xfs_growfs",
    };
    let img = sizing::fit(
        &limits,
        opts.size,
        opts.read_only,
        content,
        &overhead,
        &mut attempt,
    );
    if let Some(e) = error {
        return Err(e);
    }
    Ok(img?)
}

/// The empty filesystem of `bytes` bytes (a root directory timed `mtime`,
/// nothing else), as mkfs.xfs makes it.
pub fn build_empty(bytes: u64, uuid: [u8; 16], mtime: (i64, u32)) -> Result<FsImage, XfsError> {
    let mut tree = Tree::new();
    (tree.nodes[0].meta.mtime, tree.nodes[0].meta.mtime_nsec) = mtime;
    let order = Order::new(&tree)?;
    layout::write(&order, bytes / BLOCK, uuid, false)?.ok_or(XfsError::TooSmall { bytes })
}
