//! The ext family: ext4 and ext3 written natively from a merged [`Tree`]
//! into an [`FsImage`] (metadata blocks plus data extents pointing into
//! layer tars), with no mkfs, no mount and no root. One writer, two
//! [`Profile`]s:
//!
//! - **ext4**, the features of a current `mke2fs -t ext4`: `extent`,
//!   `64bit`, `flex_bg`, `sparse_super`, `large_file`, `huge_file`,
//!   `dir_nlink`, `extra_isize`, `filetype`, `dir_index`, `ext_attr`,
//!   `metadata_csum`, and `has_journal` for writable images.
//! - **ext3**, what `mke2fs -t ext3` makes: `has_journal` always (that is
//!   what makes it ext3), `ext_attr dir_index filetype sparse_super
//!   large_file`; files mapped by block maps (12 direct blocks, then
//!   indirect, double and triple indirect blocks); no checksums.
//!
//! Both: 4 KiB blocks, 256-byte inodes, nanosecond timestamps, htree
//! directories, xattrs in the inode or one block, POSIX ACLs.
//!
//! Layout: group 0 starts with the superblock and the group descriptors
//! (backups in groups 0, 1 and powers of 3, 5 and 7; ext3: each group's
//! bitmaps and inode table right after its copy); then the data zone of
//! [`crate::fs::zone`], file data in layer and tar order with a slot for
//! every file a layer stores, so data keeps its place when layers are added
//! or change above it; then the bitmaps and inode tables (ext4: all of
//! them, `flex_bg` lets them live anywhere), the journal, directory, symlink
//! and xattr blocks, and extent-tree or indirect blocks. The rest is free.
//!
//! Sizing follows [`crate::fs::sizing`]: read-only images get just enough
//! inodes, writable ones one inode per 16 KiB (as mke2fs) and a journal
//! sized as mke2fs sizes it.
//!
//! Output is deterministic: the UUID and hash seed come from the caller
//! (derived from the image digest) and no wall-clock time is written.

mod blockmap;
mod dir;
mod extent;
mod geometry;
mod inode;
mod layout;
mod mapping;
mod plan;
mod superblock;
mod xattr;

use crate::fs::FsImage;
use crate::fs::crc32c::crc32c_raw;
use crate::fs::order::{Order, OrderError};
use crate::fs::sizing::{self, Limits, SizeError};
use crate::fs::zone::{self, DataZone};
use crate::tree::Tree;
use geometry::{BPG, BS, Geometry, INODES_PER_BLOCK, default_journal_blocks};
use inode::LPF_INO;

pub use dir::DirError;
pub use xattr::XattrError;

pub use crate::fs::extents::Run;

/// Which member of the family to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// ext4 (see the module docs).
    Ext4,
    /// ext3 (see the module docs).
    Ext3,
}

impl Profile {
    /// The name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Ext4 => "ext4",
            Profile::Ext3 => "ext3",
        }
    }

    /// `metadata_csum`.
    fn csum(self) -> bool {
        self == Profile::Ext4
    }

    /// Extent trees (else block maps).
    fn extents(self) -> bool {
        self == Profile::Ext4
    }

    /// `flex_bg`.
    fn flex_bg(self) -> bool {
        self == Profile::Ext4
    }

    /// `64bit`.
    fn bit64(self) -> bool {
        self == Profile::Ext4
    }

    /// `huge_file`.
    fn huge_file(self) -> bool {
        self == Profile::Ext4
    }

    /// `dir_nlink`.
    fn dir_nlink(self) -> bool {
        self == Profile::Ext4
    }

    /// A journal even on read-only images.
    fn journal_always(self) -> bool {
        self == Profile::Ext3
    }

    /// Bytes of a group descriptor.
    fn desc_size(self) -> u64 {
        if self.bit64() { 64 } else { 32 }
    }

    /// `s_feature_incompat`: filetype (+ extents, 64bit, flex_bg).
    fn incompat(self) -> u32 {
        match self {
            Profile::Ext4 => 0x2 | 0x40 | 0x80 | 0x200,
            Profile::Ext3 => 0x2,
        }
    }

    /// `s_feature_ro_compat`: sparse_super, large_file (+ huge_file,
    /// dir_nlink, extra_isize, metadata_csum).
    fn ro_compat(self) -> u32 {
        match self {
            Profile::Ext4 => 0x1 | 0x2 | 0x8 | 0x20 | 0x40 | 0x400,
            Profile::Ext3 => 0x1 | 0x2,
        }
    }

    /// Most links an inode may have (`EXT4_LINK_MAX`, `EXT3_LINK_MAX`).
    fn link_max(self) -> u32 {
        match self {
            Profile::Ext4 => 65000,
            Profile::Ext3 => 32000,
        }
    }

    /// Largest file the kernel serves in full: 2^32 blocks with extents;
    /// for block maps without `huge_file` the kernel's
    /// `ext4_max_bitmap_size`, bounded by a 32-bit count of 512-byte
    /// sectors for data and indirect blocks together (just under 2 TiB).
    fn max_file_size(self) -> u64 {
        match self {
            Profile::Ext4 => (1u64 << 32) * BS,
            Profile::Ext3 => {
                let ppb = blockmap::PER_BLOCK;
                let mut upper = ((1u64 << 32) - 1) >> 3;
                let res = upper;
                upper -= blockmap::DIRECT;
                let mut meta = 1;
                upper -= ppb;
                meta += 1 + ppb;
                upper -= ppb * ppb;
                meta += 1 + upper.div_ceil(ppb) + upper.div_ceil(ppb * ppb);
                (res - meta) * BS
            }
        }
    }

    /// Most blocks ocidisk writes: 4 TiB. Planning holds two bitmap blocks
    /// a block group and a bit a block in memory, about 48 MiB a TiB, and
    /// walks every block once; 4 TiB keeps that under 200 MiB.
    /// (ext4 itself addresses 1 EiB, ext3 16 TiB.)
    fn max_blocks(self) -> u64 {
        (4u64 << 40) / BS
    }

    /// How to get a bigger filesystem than [`Profile::max_blocks`].
    fn above_max_hint(self) -> &'static str {
        match self {
            Profile::Ext4 => {
                "; for a bigger disk, grow a smaller image afterwards: truncate -s SIZE IMG && resize2fs IMG"
            }
            Profile::Ext3 => "",
        }
    }
}

/// Errors writing ext4 or ext3.
#[derive(Debug, thiserror::Error)]
pub enum ExtError {
    /// No size holds the content, or the size asked for does not.
    #[error(transparent)]
    Size(#[from] SizeError),
    /// The tree has more nodes than can be numbered.
    #[error(transparent)]
    Order(#[from] OrderError),
    /// A directory ocidisk cannot index.
    #[error("directory {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// Why.
        source: DirError,
    },
    /// Xattrs that cannot be stored.
    #[error("{path}: {source}")]
    Xattr {
        /// The file.
        path: String,
        /// Why.
        source: XattrError,
    },
    /// A symlink ext cannot store.
    #[error("symlink {path}: target of {len} bytes (ext stores 1 to 4095)")]
    BadSymlink {
        /// The symlink.
        path: String,
        /// Target length.
        len: usize,
    },
    /// A file beyond the filesystem's size limit.
    #[error("file {path} is {size} bytes, beyond {fs}'s limit of {limit} bytes")]
    FileTooLarge {
        /// The filesystem.
        fs: &'static str,
        /// The file.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// More hard links to one inode than the filesystem counts.
    #[error("{path} has {links} hard links; {fs} counts at most {limit}")]
    TooManyLinks {
        /// The filesystem.
        fs: &'static str,
        /// The first path of the inode.
        path: String,
        /// Its links.
        links: u32,
        /// The limit.
        limit: u32,
    },
    /// A directory with more subdirectories than the link count allows.
    #[error("directory {path} has {subdirs} subdirectories; {fs} allows at most {limit}")]
    TooManySubdirs {
        /// The filesystem.
        fs: &'static str,
        /// The directory.
        path: String,
        /// Its subdirectories.
        subdirs: u64,
        /// The limit.
        limit: u64,
    },
    /// More inodes than ext can number.
    #[error("{0} files are more than an ext filesystem can number")]
    TooManyInodes(u64),
    /// A writer bug: file data outside the blocks planned for it.
    #[error("internal error: inode {ino} has data outside its planned blocks")]
    Unmapped {
        /// The inode.
        ino: u32,
    },
}

/// How to build the filesystem.
#[derive(Debug, Clone)]
pub struct ExtOptions {
    /// Device size in bytes; `None` sizes to the content.
    pub size: Option<u64>,
    /// Read-only image: minimal headroom (and no journal for ext4).
    pub read_only: bool,
    /// Filesystem UUID.
    pub uuid: [u8; 16],
    /// htree hash seed.
    pub hash_seed: [u32; 4],
}

/// The data zone's map of every ext4 image up to 1 TiB, before its size
/// is known: with `flex_bg` the zone skips only the superblock copies and
/// descriptor tables of the backup groups, each rounded up to
/// [`zone::ALIGN`], and the tables of up to 8,128 groups fit in that.
pub fn predicted_zone_map() -> zone::ZoneMap {
    let groups = (1u64 << 40) / (BPG * BS);
    zone::ZoneMap::new(
        (0..groups)
            .filter(|g| geometry::backup_group(*g))
            .map(|g| (g * BPG, 1)),
    )
}

/// Build an ext4 or ext3 image of `tree`.
pub fn build(tree: &Tree, opts: &ExtOptions, profile: Profile) -> Result<FsImage, ExtError> {
    let order = Order::new(tree)?;
    let fs_seed = profile.csum().then(|| crc32c_raw(!0, &opts.uuid));
    let mut planned = plan::plan_inodes(&order, profile, fs_seed, &opts.hash_seed)?;
    drop(order);
    let zone = DataZone::new(tree);
    let content = zone.blocks() + zone::META_ALIGN + plan::content_blocks(tree, &planned, profile);
    let used_inodes = u64::from(planned.iter().map(|p| p.ino).max().unwrap_or(LPF_INO));
    let want_inodes = |blocks: u64| {
        if opts.read_only {
            used_inodes + 16
        } else {
            (blocks * BS / 16384).max(used_inodes + used_inodes / 2)
        }
    };
    let journal_for = |blocks: u64| {
        if opts.read_only && !profile.journal_always() {
            0
        } else {
            default_journal_blocks(blocks)
        }
    };
    let input = layout::Input {
        tree,
        profile,
        opts,
        fs_seed,
        zone: &zone,
    };
    let mut attempt = |blocks: u64| -> Option<Result<FsImage, ExtError>> {
        let geo = Geometry::new(blocks, want_inodes(blocks), profile)?;
        if geo.ipg * geo.groups < used_inodes {
            return None;
        }
        layout::write(&input, &mut planned, &geo, journal_for(geo.blocks))
    };
    // Estimate of everything but the file data and directory blocks.
    let overhead = |blocks: u64| {
        let groups = blocks.div_ceil(BPG);
        let inodes = want_inodes(blocks);
        groups * 2
            + inodes.div_ceil(INODES_PER_BLOCK)
            + groups * (1 + (groups * profile.desc_size()).div_ceil(BS))
            + journal_for(blocks)
    };
    let limits = Limits {
        fs: profile.name(),
        min_blocks: 2048,
        max_blocks: profile.max_blocks(),
        above_max_hint: profile.above_max_hint(),
    };
    sizing::fit(
        &limits,
        opts.size,
        opts.read_only,
        content,
        &overhead,
        &mut attempt,
    )?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext3_file_limit_is_the_kernels() {
        // ext4_max_bitmap_size(12, no huge_file) for 4 KiB blocks.
        let limit = Profile::Ext3.max_file_size();
        assert!(limit < 2 << 40 && limit > (2 << 40) - (4 << 30), "{limit}");
        assert_eq!(Profile::Ext4.max_file_size(), 16 << 40);
    }
}
