//! Filesystem writers behind one seam: a merged [`Tree`] and [`FsOptions`]
//! in, an [`FsImage`] out (metadata blocks + data extents into layer tars).
//! Everything downstream (`materialize`, the lazy disk and its frontends)
//! sees only the `FsImage`, so a new writer needs no change there.
//!
//! What every writer shares lives here: the order in which nodes are met
//! with implicit paths ([`order`]), a block allocator over a range
//! ([`alloc`]), sizing ([`sizing`]), crc32c ([`crc32c`]), the xattr and
//! POSIX ACL model ([`xattr`]), timestamp ranges ([`time`]), the stable
//! data layout ([`zone`]), and comparing two plans ([`compare`]). The writers: [`extfs`] (ext4, ext3), [`xfs`].

pub mod alloc;
pub mod compare;
pub mod crc32c;
pub mod extents;
pub mod extfs;
mod image;
pub mod order;
pub mod sizing;
pub mod time;
pub mod xattr;
pub mod xfs;
pub mod zone;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::digest::Digest;
use crate::layer_index::LayerIndex;
use crate::tree::{Tree, TreeError};

pub use image::{BLOCK_SIZE, DataExtent, FsImage, ImageError, Region, Regions};

/// The version of the writers' output rules: bump it with any change that
/// moves a byte of a written image (the golden hashes in
/// `tests/materialize_ext.rs` fail then), so that `materialize --base`
/// refuses an image whose plan this ocidisk would not recompute exactly.
pub const LAYOUT_VERSION: u32 = 2;

/// The filesystems ocidisk writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    /// ext4, as a current `mke2fs -t ext4` makes it.
    #[default]
    Ext4,
    /// ext3, as `mke2fs -t ext3` makes it (journal, block maps).
    Ext3,
    /// XFS v5 as `mkfs.xfs` makes it (in progress: see [`xfs`]).
    Xfs,
}

impl Filesystem {
    /// Every filesystem, in the order `--help` lists them.
    pub const ALL: [Filesystem; 3] = [Filesystem::Ext4, Filesystem::Ext3, Filesystem::Xfs];

    /// Its name (`ext4`, `ext3`), as `--fs` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Ext3 => "ext3",
            Filesystem::Xfs => "xfs",
        }
    }
}

impl fmt::Display for Filesystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Filesystem {
    type Err = FsError;

    fn from_str(s: &str) -> Result<Filesystem, FsError> {
        Filesystem::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| FsError::Unknown(s.to_string()))
    }
}

/// How to build the filesystem: the same for `materialize` and the lazy
/// disk, so both give the same bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsOptions {
    /// Which filesystem.
    pub filesystem: Filesystem,
    /// Device size in bytes (`None`: fit the content plus headroom).
    pub size: Option<u64>,
    /// Read-only image: little headroom (and no journal where the
    /// filesystem allows).
    pub read_only: bool,
    /// Filesystem UUID (`None`: derived from the image digest).
    pub uuid: Option<[u8; 16]>,
    /// Seed for values a writer must make up, e.g. the htree hash seed
    /// (`None`: derived from the image digest).
    pub seed: Option<[u8; 16]>,
}

impl FsOptions {
    /// The options with UUID and seed derived from `image_id` where not
    /// given: the same image always gives the same bytes.
    pub fn for_image(&self, image_id: &Digest) -> FsOptions {
        FsOptions {
            uuid: Some(self.uuid.unwrap_or_else(|| derived_uuid(image_id))),
            seed: Some(self.seed.unwrap_or_else(|| derived_seed(image_id))),
            ..self.clone()
        }
    }
}

/// Errors planning a filesystem.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A `--fs` name ocidisk does not write.
    #[error("unknown filesystem {0:?} (ocidisk writes ext4, ext3 and xfs)")]
    Unknown(String),
    /// The layers do not form a valid tree.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// The ext4/ext3 writer refused the content.
    #[error(transparent)]
    Ext(#[from] extfs::ExtError),
    /// The XFS writer refused the content.
    #[error(transparent)]
    Xfs(#[from] xfs::XfsError),
    /// A writer produced an inconsistent image (a bug).
    #[error("internal error: the planned filesystem is inconsistent: {0}")]
    Image(#[from] ImageError),
}

/// A UUID derived from the image digest: stable across runs.
pub fn derived_uuid(image_id: &Digest) -> [u8; 16] {
    let mut u = sha256_16(&format!("ocidisk-uuid:{image_id}"));
    u[6] = (u[6] & 0x0f) | 0x40; // version 4 layout
    u[8] = (u[8] & 0x3f) | 0x80; // RFC 4122 variant
    u
}

fn derived_seed(image_id: &Digest) -> [u8; 16] {
    sha256_16(&format!("ocidisk-hash-seed:{image_id}"))
}

fn sha256_16(s: &str) -> [u8; 16] {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(s.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h[..16]);
    out
}

/// Plan the filesystem of `tree`. UUID and seed default to all zeros when
/// not given; callers with an image use [`FsOptions::for_image`] first (as
/// [`plan_layers`] does).
pub fn plan(tree: &Tree, opts: &FsOptions) -> Result<FsImage, FsError> {
    let seed = opts.seed.unwrap_or_default();
    let image = match opts.filesystem {
        Filesystem::Ext4 | Filesystem::Ext3 => {
            let profile = match opts.filesystem {
                Filesystem::Ext3 => extfs::Profile::Ext3,
                _ => extfs::Profile::Ext4,
            };
            let ext = extfs::ExtOptions {
                size: opts.size,
                read_only: opts.read_only,
                uuid: opts.uuid.unwrap_or_default(),
                hash_seed: [0, 4, 8, 12]
                    .map(|i| u32::from_le_bytes([seed[i], seed[i + 1], seed[i + 2], seed[i + 3]])),
            };
            extfs::build(tree, &ext, profile)?
        }
        Filesystem::Xfs => xfs::build(tree, opts)?,
    };
    image.validate()?;
    Ok(image)
}

/// Where the data zone's blocks will lie on the device (see [`zone`]), as
/// far as it is known before the tree is: for ext4, whose zone skips only
/// the superblock copies, at places that do not depend on the device size
/// (up to 1 TiB). `None` for the filesystems whose skips do (ext3's
/// per-group inode tables, XFS's allocation groups). `materialize` writes
/// file data there while the layers stream, and checks every byte of it
/// against the plan afterwards: a wrong guess costs time, never a byte.
pub fn predicted_zone_map(opts: &FsOptions) -> Option<zone::ZoneMap> {
    match opts.filesystem {
        Filesystem::Ext4 => Some(extfs::predicted_zone_map()),
        Filesystem::Ext3 | Filesystem::Xfs => None,
    }
}

/// Flatten an image's layers and plan its filesystem: what `materialize`
/// writes and the lazy disk serves, byte for byte.
pub fn plan_layers(
    image_id: &Digest,
    layers: &[LayerIndex],
    opts: &FsOptions,
) -> Result<FsImage, FsError> {
    plan_merged(&merge_layers(layers)?, image_id, opts)
}

/// The first half of [`plan_layers`]: the layers merged into one tree.
pub fn merge_layers(layers: &[LayerIndex]) -> Result<Tree, FsError> {
    let tree = Tree::flatten(layers)?;
    tracing::debug!(entries = tree.nodes.len(), "layers merged into one tree");
    Ok(tree)
}

/// The second half of [`plan_layers`]: the filesystem of the image
/// `image_id`, whose layers merged into `tree`.
pub fn plan_merged(tree: &Tree, image_id: &Digest, opts: &FsOptions) -> Result<FsImage, FsError> {
    let img = plan(tree, &opts.for_image(image_id))?;
    tracing::debug!(
        metadata_blocks = img.metadata.len(),
        extents = img.data.len(),
        "filesystem planned"
    );
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_stable_and_well_formed() {
        let d = Digest::sha256_of(b"image");
        let u = derived_uuid(&d);
        assert_eq!(u, derived_uuid(&d));
        assert_ne!(u, derived_uuid(&Digest::sha256_of(b"other")));
        assert_eq!(u[6] >> 4, 4);
        assert_eq!(u[8] >> 6, 2);
        let o = FsOptions::default().for_image(&d);
        assert_eq!(o.uuid, Some(u));
        let given = FsOptions {
            uuid: Some([7; 16]),
            ..FsOptions::default()
        };
        assert_eq!(given.for_image(&d).uuid, Some([7; 16]));
    }

    #[test]
    fn names_parse_both_ways() {
        for f in Filesystem::ALL {
            assert_eq!(f.name().parse::<Filesystem>().unwrap(), f);
        }
        assert!(matches!(
            "btrfs".parse::<Filesystem>(),
            Err(FsError::Unknown(_))
        ));
    }
}
