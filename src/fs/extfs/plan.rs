//! What every inode will hold, before any block is placed: inode numbers in
//! writer order (the root is 2, `lost+found` 11 when ocidisk makes it, the
//! rest from 12), directory blocks, symlink bodies, encoded xattrs, link
//! counts; and how many blocks the content needs.

use super::dir;
use super::inode::{LPF_INO, ROOT_INO, inode_seed};
use super::mapping;
use super::xattr::{self, Placement};
use super::{ExtError, Profile};
pub use crate::fs::extents::file_ranges;
use crate::fs::order::Order;
use crate::fs::time::{self, Clamper};
use crate::fs::xattr::classify;
use crate::tree::{NodeId, NodeKind, Tree};

/// Longest symlink target (`PATH_MAX` - 1).
const MAX_SYMLINK: usize = 4095;

/// What an inode holds, before blocks are placed.
pub enum Body {
    /// A directory's blocks, and whether it is an htree.
    Dir {
        /// The blocks in logical order.
        blocks: Vec<Vec<u8>>,
        /// htree (`INDEX_FL`).
        indexed: bool,
    },
    /// A regular file (the tree node says where its bytes are).
    File {
        /// The node.
        node: NodeId,
    },
    /// A symlink target stored in the inode.
    FastSymlink(Vec<u8>),
    /// A symlink target stored in a block.
    SlowSymlink(Vec<u8>),
    /// A device (major, minor).
    Device {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A fifo or socket: nothing beyond the inode.
    Fifo,
}

/// One inode, planned.
pub struct Planned {
    /// Inode number.
    pub ino: u32,
    /// `i_mode`.
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (seconds).
    pub mtime: i64,
    /// Nanoseconds.
    pub mtime_nsec: u32,
    /// Link count.
    pub links: u16,
    /// Content.
    pub body: Body,
    /// Encoded xattrs.
    pub xattrs: Placement,
}

/// Number the inodes and build directory contents. `fs_seed`: the
/// checksum seed (`metadata_csum`), `None` without.
pub fn plan_inodes(
    order: &Order<'_>,
    profile: Profile,
    fs_seed: Option<u32>,
    hash_seed: &[u32; 4],
) -> Result<Vec<Planned>, ExtError> {
    let tree = order.tree;
    let ino_at = |pos: usize| -> u32 {
        if pos == 0 {
            ROOT_INO
        } else {
            LPF_INO + pos as u32
        }
    };
    if order.nodes.len() as u64 + u64::from(LPF_INO) > u64::from(u32::MAX) {
        return Err(ExtError::TooManyInodes(order.nodes.len() as u64));
    }
    let ino_of = |id: NodeId| ino_at(order.position(id).expect("children are reachable") as usize);
    let dir_csum = |ino: u32| fs_seed.map(|s| inode_seed(s, ino));
    let NodeKind::Dir(root_children) = &tree.nodes[0].kind else {
        unreachable!("the root is a directory")
    };
    let make_lpf = !root_children.contains_key(b"lost+found".as_slice());
    let ftype = |id: NodeId| match tree.nodes[id].kind {
        NodeKind::Dir(_) => dir::ftype::DIR,
        NodeKind::File(_) => dir::ftype::REG,
        NodeKind::Symlink(_) => dir::ftype::SYMLINK,
        NodeKind::CharDevice(..) => dir::ftype::CHR,
        NodeKind::BlockDevice(..) => dir::ftype::BLK,
        NodeKind::Fifo => dir::ftype::FIFO,
    };
    let link_max = profile.link_max();
    let mut out = Vec::with_capacity(order.nodes.len() + 1);
    let mut times = Clamper::new(time::EXTFS);
    for (pos, placed) in order.nodes.iter().enumerate() {
        let node = &tree.nodes[placed.id];
        let ino = ino_at(pos);
        let path = || order.path(pos);
        let links_of = |refs: u32| -> Result<u16, ExtError> {
            if refs > link_max {
                return Err(ExtError::TooManyLinks {
                    fs: profile.name(),
                    path: path(),
                    links: refs,
                    limit: link_max,
                });
            }
            Ok(refs as u16)
        };
        let m = &node.meta;
        let (type_bits, body, links) = match &node.kind {
            NodeKind::Dir(children) => {
                let lpf_name = b"lost+found".to_vec();
                let mut entries: Vec<dir::Entry<'_>> = children
                    .iter()
                    .map(|(name, &c)| dir::Entry {
                        name,
                        inode: ino_of(c),
                        file_type: ftype(c),
                    })
                    .collect();
                let mut subdirs = u64::from(placed.subdirs);
                if pos == 0 && make_lpf {
                    entries.push(dir::Entry {
                        name: &lpf_name,
                        inode: LPF_INO,
                        file_type: dir::ftype::DIR,
                    });
                    subdirs += 1;
                }
                let parent = ino_at(placed.parent as usize);
                let d = dir::build(ino, parent, &entries, dir_csum(ino), hash_seed).map_err(
                    |source| ExtError::Dir {
                        path: path(),
                        source,
                    },
                )?;
                let links = match 2 + subdirs {
                    // dir_nlink: a count that does not fit is 1.
                    n if n >= u64::from(link_max) && profile.dir_nlink() => 1,
                    n if n > u64::from(link_max) => {
                        return Err(ExtError::TooManySubdirs {
                            fs: profile.name(),
                            path: path(),
                            subdirs,
                            limit: u64::from(link_max) - 2,
                        });
                    }
                    n => n,
                };
                (
                    0o040000,
                    Body::Dir {
                        blocks: d.blocks,
                        indexed: d.indexed,
                    },
                    links as u16,
                )
            }
            NodeKind::File(f) => {
                if f.size > profile.max_file_size() {
                    return Err(ExtError::FileTooLarge {
                        fs: profile.name(),
                        path: path(),
                        size: f.size,
                        limit: profile.max_file_size(),
                    });
                }
                (
                    0o100000,
                    Body::File { node: placed.id },
                    links_of(placed.refs)?,
                )
            }
            NodeKind::Symlink(t) => {
                if t.is_empty() || t.len() > MAX_SYMLINK {
                    return Err(ExtError::BadSymlink {
                        path: path(),
                        len: t.len(),
                    });
                }
                let body = if t.len() < 60 {
                    Body::FastSymlink(t.clone())
                } else {
                    Body::SlowSymlink(t.clone())
                };
                (0o120000, body, links_of(placed.refs)?)
            }
            NodeKind::CharDevice(a, b) => (
                0o020000,
                Body::Device {
                    major: *a,
                    minor: *b,
                },
                links_of(placed.refs)?,
            ),
            NodeKind::BlockDevice(a, b) => (
                0o060000,
                Body::Device {
                    major: *a,
                    minor: *b,
                },
                links_of(placed.refs)?,
            ),
            NodeKind::Fifo => (0o010000, Body::Fifo, links_of(placed.refs)?),
        };
        let perm = if matches!(node.kind, NodeKind::Symlink(_)) {
            0o777
        } else {
            m.mode & 0o7777
        };
        let xattr_err = |source| ExtError::Xattr {
            path: path(),
            source,
        };
        let (mtime, mtime_nsec) = times.clamp(m.mtime, m.mtime_nsec, &path);
        let attrs = classify(&m.xattrs, &path).map_err(|e| xattr_err(e.into()))?;
        let xattrs = xattr::encode(&attrs).map_err(xattr_err)?;
        out.push(Planned {
            ino,
            mode: (type_bits | perm) as u16,
            uid: m.uid,
            gid: m.gid,
            mtime,
            mtime_nsec,
            links,
            body,
            xattrs,
        });
    }
    times.finish();
    if make_lpf {
        let csum = dir_csum(LPF_INO);
        let mut blocks = dir::build(LPF_INO, ROOT_INO, &[], csum, hash_seed)
            .expect("empty directory")
            .blocks;
        for _ in 0..3 {
            blocks.push(dir::empty_block(csum));
        }
        out.push(Planned {
            ino: LPF_INO,
            mode: 0o040700,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            links: 2,
            body: Body::Dir {
                blocks,
                indexed: false,
            },
            xattrs: Placement::None,
        });
    }
    out.sort_by_key(|p| p.ino);
    Ok(out)
}

/// Blocks the content needs besides the data zone (directories, symlinks,
/// xattr blocks), with an allowance for the blocks that map files.
pub fn content_blocks(tree: &Tree, planned: &[Planned], profile: Profile) -> u64 {
    let mut n = 0;
    for p in planned {
        n += match &p.body {
            Body::Dir { blocks, .. } => blocks.len() as u64,
            Body::File { node } => {
                let r = file_ranges(tree, *node);
                // Runs may break where the zone skips a group header.
                r.len() as u64 + mapping::estimate(profile, &r)
            }
            Body::SlowSymlink(_) => 1,
            _ => 0,
        };
        if matches!(p.xattrs, Placement::Block(_)) {
            n += 1;
        }
    }
    n
}
