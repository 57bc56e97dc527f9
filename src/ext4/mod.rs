//! A native ext4 writer: turns a merged [`Tree`] into an [`FsImage`]
//! (metadata blocks plus data extents pointing into layer tars), with no
//! mkfs, no mount and no root.
//!
//! Features are those of a current `mke2fs -t ext4`: `extent`, `64bit`,
//! `flex_bg`, `sparse_super`, `large_file`, `huge_file`, `dir_nlink`,
//! `extra_isize`, `filetype`, `dir_index`, `ext_attr`, `metadata_csum`, and
//! `has_journal` for writable images. 4 KiB blocks, 256-byte inodes,
//! nanosecond timestamps.
//!
//! Layout: group 0 starts with the superblock and the group descriptors
//! (backups in groups 0, 1 and powers of 3, 5 and 7); then all block
//! bitmaps, inode bitmaps and inode tables (flex_bg lets them live
//! anywhere); then the journal; then directory, symlink and xattr blocks;
//! then file data in layer and tar order (so a streaming copy writes
//! forward); then extent tree blocks. The rest is free.
//!
//! Sizing without `--size`: the content (all blocks above) plus headroom,
//! rounded up to a whole MiB. Read-only images get 10% + 16 MiB and just
//! enough inodes; writable images get 50% + 256 MiB, one inode per 16 KiB
//! (as mke2fs), and a journal sized as mke2fs sizes it.
//!
//! Output is deterministic: the UUID and hash seed come from the caller
//! (derived from the image digest) and no wall-clock time is written.

pub mod csum;
pub mod dir;
pub mod extent;
pub mod xattr;

use std::collections::HashMap;

use crate::fs_image::{DataExtent, FsImage};
use crate::tree::{NodeId, NodeKind, Tree};
use csum::crc32c_raw;
use extent::Extent;

const BS: u64 = 4096;
const BPG: u64 = 32768;
const INODE_SIZE: u64 = 256;
const INODES_PER_BLOCK: u64 = BS / INODE_SIZE;
const EXTRA_ISIZE: u16 = 32;
const ROOT_INO: u32 = 2;
const JOURNAL_INO: u32 = 8;
const LPF_INO: u32 = 11;
const FIRST_INO: u32 = 11;
const DESC_SIZE: u64 = 64;
const MAX_SYMLINK: usize = 4095;
const EXT4_EXTENTS_FL: u32 = 0x0008_0000;
const EXT4_INDEX_FL: u32 = 0x0000_1000;

/// Errors writing ext4.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    /// The content does not fit the requested size.
    #[error(
        "the image needs at least {needed} bytes ({needed_mib} MiB), but --size gives {given} bytes"
    )]
    TooSmall {
        /// Bytes asked for.
        given: u64,
        /// Bytes needed.
        needed: u64,
        /// Bytes needed, in MiB rounded up.
        needed_mib: u64,
    },
    /// A size below what ext4 can hold.
    #[error("size {0} bytes is too small for an ext4 filesystem (minimum 8 MiB)")]
    SizeBelowMinimum(u64),
    /// A directory ocidisk cannot index.
    #[error("directory {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// Why.
        source: dir::DirError,
    },
    /// Xattrs that do not fit.
    #[error("{path}: {source}")]
    Xattr {
        /// The file.
        path: String,
        /// Why.
        source: xattr::XattrError,
    },
    /// A symlink ext4 cannot store.
    #[error("symlink {path}: target of {len} bytes (ext4 stores 1 to 4095)")]
    BadSymlink {
        /// The symlink.
        path: String,
        /// Target length.
        len: usize,
    },
    /// A file beyond ext4's size limit.
    #[error("file {path} is {size} bytes, beyond ext4's 16 TiB limit")]
    FileTooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
    },
    /// More inodes than ext4 can number.
    #[error("{0} files are more than an ext4 filesystem can hold")]
    TooManyInodes(u64),
}

/// How to build the filesystem.
#[derive(Debug, Clone)]
pub struct Ext4Options {
    /// Device size in bytes; `None` sizes to the content (see module docs).
    pub size: Option<u64>,
    /// Read-only image: no journal, minimal headroom.
    pub read_only: bool,
    /// Filesystem UUID.
    pub uuid: [u8; 16],
    /// htree hash seed.
    pub hash_seed: [u32; 4],
}

/// mke2fs's default journal size for a filesystem of `blocks` 4 KiB blocks.
pub fn default_journal_blocks(blocks: u64) -> u64 {
    match blocks {
        b if b < 2048 => 0,
        b if b < 32768 => 1024,
        b if b < 256 * 1024 => 4096,
        b if b < 512 * 1024 => 8192,
        b if b < 4096 * 1024 => 16384,
        b if b < 8192 * 1024 => 32768,
        b if b < 16384 * 1024 => 65536,
        b if b < 32768 * 1024 => 131072,
        _ => 262144,
    }
}

fn backup_group(g: u64) -> bool {
    if g <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&base| {
        let mut p = base;
        while p < g {
            p *= base;
        }
        p == g
    })
}

/// Filesystem geometry for a block count.
#[derive(Debug, Clone)]
struct Geometry {
    blocks: u64,
    groups: u64,
    ipg: u64,
    gdt_blocks: u64,
}

impl Geometry {
    fn new(blocks: u64, want_inodes: u64) -> Option<Geometry> {
        let mut groups = blocks.div_ceil(BPG);
        let mut blocks = blocks;
        // A last group too small for its own metadata is dropped, as mke2fs does.
        if groups > 1 && blocks - (groups - 1) * BPG < 256 {
            groups -= 1;
            blocks = groups * BPG;
        }
        let ipg = want_inodes
            .div_ceil(groups)
            .div_ceil(INODES_PER_BLOCK)
            .max(1)
            * INODES_PER_BLOCK;
        if ipg > BPG || ipg * groups > u64::from(u32::MAX) {
            return None;
        }
        Some(Geometry {
            blocks,
            groups,
            ipg,
            gdt_blocks: (groups * DESC_SIZE).div_ceil(BS),
        })
    }

    fn group_len(&self, g: u64) -> u64 {
        if g + 1 == self.groups {
            self.blocks - g * BPG
        } else {
            BPG
        }
    }

    fn itable_blocks(&self) -> u64 {
        self.ipg / INODES_PER_BLOCK
    }
}

/// Block allocator: a used-bitmap and a forward cursor.
struct Alloc {
    used: Vec<u64>,
    blocks: u64,
    cursor: u64,
}

impl Alloc {
    fn new(blocks: u64) -> Alloc {
        Alloc {
            used: vec![0; blocks.div_ceil(64) as usize],
            blocks,
            cursor: 0,
        }
    }

    fn is_used(&self, b: u64) -> bool {
        self.used[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    fn mark(&mut self, start: u64, len: u64) {
        for b in start..start + len {
            self.used[(b / 64) as usize] |= 1 << (b % 64);
        }
    }

    /// `n` contiguous blocks.
    fn contiguous(&mut self, n: u64) -> Option<u64> {
        let mut start = self.cursor;
        while start + n <= self.blocks {
            match (start..start + n).find(|&b| self.is_used(b)) {
                Some(b) => start = b + 1,
                None => {
                    self.mark(start, n);
                    self.cursor = start + n;
                    return Some(start);
                }
            }
        }
        None
    }

    /// `n` blocks in as few runs as the reserved areas allow.
    fn runs(&mut self, mut n: u64) -> Option<Vec<(u64, u64)>> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        while n > 0 {
            while self.cursor < self.blocks && self.is_used(self.cursor) {
                self.cursor += 1;
            }
            if self.cursor >= self.blocks {
                return None;
            }
            let start = self.cursor;
            let mut len = 0;
            while len < n && start + len < self.blocks && !self.is_used(start + len) {
                len += 1;
            }
            self.mark(start, len);
            self.cursor = start + len;
            match out.last_mut() {
                Some(last) if last.0 + last.1 == start => last.1 += len,
                _ => out.push((start, len)),
            }
            n -= len;
        }
        Some(out)
    }
}

/// Split physical runs into extents for logical blocks from `logical`.
fn to_extents(logical: u64, runs: &[(u64, u64)], out: &mut Vec<Extent>) {
    let mut l = logical;
    for &(mut p, mut len) in runs {
        while len > 0 {
            let n = len.min(u64::from(extent::MAX_LEN));
            out.push(Extent {
                logical: l as u32,
                len: n as u32,
                physical: p,
            });
            l += n;
            p += n;
            len -= n;
        }
    }
}

/// What an inode holds, before blocks are placed.
enum Body {
    Dir { blocks: Vec<Vec<u8>>, indexed: bool },
    File { node: NodeId },
    FastSymlink(Vec<u8>),
    SlowSymlink(Vec<u8>),
    Device { major: u32, minor: u32 },
    Fifo,
}

struct Planned {
    ino: u32,
    mode: u16,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u32,
    links: u16,
    body: Body,
    xattrs: xattr::Placement,
    path: String,
}

/// Build an ext4 image of `tree`.
pub fn build(tree: &Tree, opts: &Ext4Options) -> Result<FsImage, Ext4Error> {
    let fs_seed = crc32c_raw(!0, &opts.uuid);
    let planned = plan_inodes(tree, fs_seed, &opts.hash_seed)?;
    let content = content_blocks(tree, &planned);
    let used_inodes = u64::from(planned.iter().map(|p| p.ino).max().unwrap_or(LPF_INO));
    let want_inodes = |blocks: u64| {
        if opts.read_only {
            used_inodes + 16
        } else {
            (blocks * BS / 16384).max(used_inodes + used_inodes / 2)
        }
    };
    let journal_for = |blocks: u64| {
        if opts.read_only {
            0
        } else {
            default_journal_blocks(blocks)
        }
    };
    let attempt = |blocks: u64| -> Option<FsImage> {
        let geo = Geometry::new(blocks, want_inodes(blocks))?;
        if geo.ipg * geo.groups < used_inodes {
            return None;
        }
        write(tree, &planned, &geo, journal_for(geo.blocks), opts, fs_seed)
    };
    // Estimate of everything but the file data and directory blocks.
    let overhead = |blocks: u64| {
        let groups = blocks.div_ceil(BPG);
        let inodes = want_inodes(blocks);
        groups * 2
            + inodes.div_ceil(INODES_PER_BLOCK)
            + groups * (1 + (groups * DESC_SIZE).div_ceil(BS))
            + journal_for(blocks)
    };
    const MIB: u64 = 1 << 20;
    let min_blocks = 2048u64;
    match opts.size {
        Some(size) => {
            let blocks = size / BS;
            if blocks < min_blocks {
                return Err(Ext4Error::SizeBelowMinimum(size));
            }
            if let Some(img) = attempt(blocks) {
                return Ok(img);
            }
            // Find the smallest size that works, for the error message.
            let mut b = (content + overhead(content)).max(min_blocks);
            loop {
                let rounded = (b * BS).div_ceil(MIB) * MIB / BS;
                if attempt(rounded).is_some() {
                    let needed = rounded * BS;
                    return Err(Ext4Error::TooSmall {
                        given: size,
                        needed,
                        needed_mib: needed.div_ceil(MIB),
                    });
                }
                b = b + b / 50 + 256;
            }
        }
        None => {
            let headroom = if opts.read_only {
                content / 10 + 16 * MIB / BS
            } else {
                content / 2 + 256 * MIB / BS
            };
            let mut b = (content + headroom).max(min_blocks);
            b += overhead(b);
            for _ in 0..200 {
                let rounded = (b * BS).div_ceil(MIB) * MIB / BS;
                if let Some(img) = attempt(rounded) {
                    return Ok(img);
                }
                b = b + b / 20 + 256;
            }
            Err(Ext4Error::TooManyInodes(used_inodes))
        }
    }
}

fn inode_seed(fs_seed: u32, ino: u32) -> u32 {
    crc32c_raw(crc32c_raw(fs_seed, &ino.to_le_bytes()), &0u32.to_le_bytes())
}

fn show(path: &[Vec<u8>]) -> String {
    let mut s = String::new();
    for c in path {
        s.push('/');
        s.push_str(&String::from_utf8_lossy(c));
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// Number the inodes and build directory contents.
fn plan_inodes(tree: &Tree, fs_seed: u32, hash_seed: &[u32; 4]) -> Result<Vec<Planned>, Ext4Error> {
    let reach = tree.reachable();
    let mut ino_of: HashMap<NodeId, u32> = HashMap::with_capacity(reach.len());
    let mut refs: HashMap<NodeId, u32> = HashMap::with_capacity(reach.len());
    ino_of.insert(0, ROOT_INO);
    let mut next: u64 = u64::from(LPF_INO) + 1;
    for &(id, r) in &reach {
        refs.insert(id, r);
        if id != 0 {
            if next > u64::from(u32::MAX) {
                return Err(Ext4Error::TooManyInodes(next));
            }
            ino_of.insert(id, next as u32);
            next += 1;
        }
    }
    let NodeKind::Dir(root_children) = &tree.nodes[0].kind else {
        unreachable!("the root is a directory")
    };
    let make_lpf = !root_children.contains_key(b"lost+found".as_slice());
    // Paths and parents, breadth first (directories have one parent).
    let mut parent_of: HashMap<NodeId, (NodeId, Vec<Vec<u8>>)> = HashMap::new();
    parent_of.insert(0, (0, Vec::new()));
    for &(id, _) in &reach {
        if let NodeKind::Dir(children) = &tree.nodes[id].kind {
            let base = parent_of[&id].1.clone();
            for (name, &c) in children {
                parent_of.entry(c).or_insert_with(|| {
                    let mut p = base.clone();
                    p.push(name.clone());
                    (id, p)
                });
            }
        }
    }
    let ftype = |id: NodeId| match tree.nodes[id].kind {
        NodeKind::Dir(_) => dir::ftype::DIR,
        NodeKind::File(_) => dir::ftype::REG,
        NodeKind::Symlink(_) => dir::ftype::SYMLINK,
        NodeKind::CharDevice(..) => dir::ftype::CHR,
        NodeKind::BlockDevice(..) => dir::ftype::BLK,
        NodeKind::Fifo => dir::ftype::FIFO,
    };
    let mut out = Vec::with_capacity(reach.len() + 1);
    for &(id, _) in &reach {
        let node = &tree.nodes[id];
        let ino = ino_of[&id];
        let path = show(&parent_of[&id].1);
        let m = &node.meta;
        let (type_bits, body, links) = match &node.kind {
            NodeKind::Dir(children) => {
                let lpf_name = b"lost+found".to_vec();
                let mut entries: Vec<dir::Entry<'_>> = children
                    .iter()
                    .map(|(name, &c)| dir::Entry {
                        name,
                        inode: ino_of[&c],
                        file_type: ftype(c),
                    })
                    .collect();
                let mut subdirs = children
                    .values()
                    .filter(|&&c| matches!(tree.nodes[c].kind, NodeKind::Dir(_)))
                    .count() as u64;
                if id == 0 && make_lpf {
                    entries.push(dir::Entry {
                        name: &lpf_name,
                        inode: LPF_INO,
                        file_type: dir::ftype::DIR,
                    });
                    subdirs += 1;
                }
                let parent = ino_of[&parent_of[&id].0];
                let d = dir::build(ino, parent, &entries, inode_seed(fs_seed, ino), hash_seed)
                    .map_err(|source| Ext4Error::Dir {
                        path: path.clone(),
                        source,
                    })?;
                let links = if 2 + subdirs >= 65000 { 1 } else { 2 + subdirs };
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
                if f.size > (1u64 << 32) * BS {
                    return Err(Ext4Error::FileTooLarge { path, size: f.size });
                }
                (
                    0o100000,
                    Body::File { node: id },
                    refs[&id].min(65000) as u16,
                )
            }
            NodeKind::Symlink(t) => {
                if t.is_empty() || t.len() > MAX_SYMLINK {
                    return Err(Ext4Error::BadSymlink { path, len: t.len() });
                }
                let body = if t.len() < 60 {
                    Body::FastSymlink(t.clone())
                } else {
                    Body::SlowSymlink(t.clone())
                };
                (0o120000, body, refs[&id].min(65000) as u16)
            }
            NodeKind::CharDevice(a, b) => (
                0o020000,
                Body::Device {
                    major: *a,
                    minor: *b,
                },
                refs[&id].min(65000) as u16,
            ),
            NodeKind::BlockDevice(a, b) => (
                0o060000,
                Body::Device {
                    major: *a,
                    minor: *b,
                },
                refs[&id].min(65000) as u16,
            ),
            NodeKind::Fifo => (0o010000, Body::Fifo, refs[&id].min(65000) as u16),
        };
        let perm = if matches!(node.kind, NodeKind::Symlink(_)) {
            0o777
        } else {
            m.mode & 0o7777
        };
        let xattrs = xattr::encode(&m.xattrs).map_err(|source| Ext4Error::Xattr {
            path: path.clone(),
            source,
        })?;
        out.push(Planned {
            ino,
            mode: (type_bits | perm) as u16,
            uid: m.uid,
            gid: m.gid,
            mtime: m.mtime,
            mtime_nsec: m.mtime_nsec,
            links,
            body,
            xattrs,
            path,
        });
    }
    if make_lpf {
        let mut blocks = dir::build(
            LPF_INO,
            ROOT_INO,
            &[],
            inode_seed(fs_seed, LPF_INO),
            hash_seed,
        )
        .expect("empty directory")
        .blocks;
        for _ in 0..3 {
            blocks.push(dir::empty_block(inode_seed(fs_seed, LPF_INO)));
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
            xattrs: xattr::Placement::None,
            path: "/lost+found".into(),
        });
    }
    out.sort_by_key(|p| p.ino);
    Ok(out)
}

/// Logical block ranges of a file that hold data: (first block, count).
fn file_ranges(tree: &Tree, node: NodeId) -> Vec<(u64, u64)> {
    let NodeKind::File(f) = &tree.nodes[node].kind else {
        return Vec::new();
    };
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (off, _, len) in f.runs() {
        let first = off / BS;
        let last = (off + len - 1) / BS;
        match ranges.last_mut() {
            Some(r) if r.0 + r.1 >= first => r.1 = r.1.max(last + 1 - r.0),
            _ => ranges.push((first, last + 1 - first)),
        }
    }
    ranges
}

/// Blocks the content needs (data, directories, symlinks, xattr blocks),
/// with an allowance for extent trees.
fn content_blocks(tree: &Tree, planned: &[Planned]) -> u64 {
    let mut n = 0;
    for p in planned {
        n += match &p.body {
            Body::Dir { blocks, .. } => blocks.len() as u64,
            Body::File { node } => {
                let r = file_ranges(tree, *node);
                let data: u64 = r.iter().map(|(_, c)| c).sum();
                data + extent::blocks_needed(r.len() + (data / u64::from(extent::MAX_LEN)) as usize)
                    as u64
            }
            Body::SlowSymlink(_) => 1,
            _ => 0,
        };
        if matches!(p.xattrs, xattr::Placement::Block(_)) {
            n += 1;
        }
    }
    n
}

/// Timestamp seconds and the `_extra` field (nanoseconds and epoch bits).
fn time_fields(secs: i64, nsec: u32) -> (u32, u32) {
    let low = secs as i32;
    let epoch = ((secs - i64::from(low)) >> 32) as u32 & 3;
    (low as u32, (nsec << 2) | epoch)
}

struct InodeRecord {
    bytes: [u8; 256],
}

impl InodeRecord {
    fn new() -> InodeRecord {
        let mut bytes = [0u8; 256];
        bytes[0x80..0x82].copy_from_slice(&EXTRA_ISIZE.to_le_bytes());
        InodeRecord { bytes }
    }

    fn u16(&mut self, at: usize, v: u16) {
        self.bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn u32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn seal(&mut self, fs_seed: u32, ino: u32) {
        self.bytes[0x7C..0x7E].fill(0);
        self.bytes[0x82..0x84].fill(0);
        let c = crc32c_raw(inode_seed(fs_seed, ino), &self.bytes);
        self.u16(0x7C, c as u16);
        self.u16(0x82, (c >> 16) as u16);
    }
}

/// Lay the filesystem out on `geo.blocks` blocks; `None` if it does not fit.
fn write(
    tree: &Tree,
    planned: &[Planned],
    geo: &Geometry,
    journal_blocks: u64,
    opts: &Ext4Options,
    fs_seed: u32,
) -> Option<FsImage> {
    let mut alloc = Alloc::new(geo.blocks);
    // Superblock and descriptor copies.
    for g in 0..geo.groups {
        if backup_group(g) {
            let start = g * BPG;
            let len = (1 + geo.gdt_blocks).min(geo.group_len(g));
            alloc.mark(start, len);
        }
    }
    let bb: Vec<u64> = (0..geo.groups)
        .map(|_| alloc.contiguous(1))
        .collect::<Option<_>>()?;
    let ib: Vec<u64> = (0..geo.groups)
        .map(|_| alloc.contiguous(1))
        .collect::<Option<_>>()?;
    let it: Vec<u64> = (0..geo.groups)
        .map(|_| alloc.contiguous(geo.itable_blocks()))
        .collect::<Option<_>>()?;
    let journal_runs = if journal_blocks > 0 {
        alloc.runs(journal_blocks)?
    } else {
        Vec::new()
    };

    // Blocks of directories, slow symlinks and xattr blocks, by inode.
    let mut body_runs: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
    let mut xattr_block: HashMap<u32, u64> = HashMap::new();
    for p in planned {
        match &p.body {
            Body::Dir { blocks, .. } => {
                body_runs.insert(p.ino, alloc.runs(blocks.len() as u64)?);
            }
            Body::SlowSymlink(_) => {
                body_runs.insert(p.ino, alloc.runs(1)?);
            }
            _ => {}
        }
        if matches!(p.xattrs, xattr::Placement::Block(_)) {
            xattr_block.insert(p.ino, alloc.contiguous(1)?);
        }
    }
    // File data in (layer, tar offset) order.
    let mut files: Vec<(usize, u64, usize)> = planned
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match &p.body {
            Body::File { node } => match &tree.nodes[*node].kind {
                NodeKind::File(f) => Some((f.layer, f.offset, i)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    files.sort();
    let mut file_extents: HashMap<u32, Vec<Extent>> = HashMap::new();
    for &(_, _, i) in &files {
        let p = &planned[i];
        let Body::File { node } = p.body else {
            unreachable!()
        };
        let mut ext = Vec::new();
        for (first, count) in file_ranges(tree, node) {
            let runs = alloc.runs(count)?;
            to_extents(first, &runs, &mut ext);
        }
        file_extents.insert(p.ino, ext);
    }

    let mut img = FsImage {
        size: geo.blocks * BS,
        ..FsImage::default()
    };
    let mut data_blocks_of: HashMap<u32, u64> = HashMap::new();

    // Extents (and their tree blocks) for everything with blocks.
    let mut extents_of: HashMap<u32, Vec<Extent>> = HashMap::new();
    for p in planned {
        let ext = match &p.body {
            Body::File { .. } => file_extents.remove(&p.ino).unwrap_or_default(),
            Body::Dir { .. } | Body::SlowSymlink(_) => {
                let mut e = Vec::new();
                to_extents(0, &body_runs[&p.ino], &mut e);
                e
            }
            _ => continue,
        };
        extents_of.insert(p.ino, ext);
    }
    let journal_ext = {
        let mut e = Vec::new();
        to_extents(0, &journal_runs, &mut e);
        e
    };
    let mut tree_blocks: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut extent_owners: Vec<(u32, usize)> =
        extents_of.iter().map(|(ino, e)| (*ino, e.len())).collect();
    extent_owners.push((JOURNAL_INO, journal_ext.len()));
    extent_owners.sort();
    for (ino, n) in extent_owners {
        let need = extent::blocks_needed(n) as u64;
        if need > 0 {
            let runs = alloc.runs(need)?;
            tree_blocks.insert(ino, runs.iter().flat_map(|&(s, l)| s..s + l).collect());
        }
    }

    // Inodes.
    let mut inode_used = vec![false; (geo.ipg * geo.groups + 1) as usize];
    let mut dirs_in_group = vec![0u64; geo.groups as usize];
    let put_inode = |img: &mut FsImage, ino: u32, rec: &InodeRecord| {
        let idx = u64::from(ino - 1);
        let g = idx / geo.ipg;
        let within = idx % geo.ipg;
        let block = it[g as usize] + within / INODES_PER_BLOCK;
        let off = ((within % INODES_PER_BLOCK) * INODE_SIZE) as usize;
        let b = img
            .metadata
            .entry(block)
            .or_insert_with(|| vec![0u8; BS as usize].into_boxed_slice());
        b[off..off + 256].copy_from_slice(&rec.bytes);
    };
    // Reserved inodes: zeroed with extra_isize and a checksum, as mke2fs writes them.
    for ino in 1..FIRST_INO {
        inode_used[ino as usize] = true;
        if ino == ROOT_INO || (ino == JOURNAL_INO && journal_blocks > 0) {
            continue;
        }
        let mut rec = InodeRecord::new();
        rec.seal(fs_seed, ino);
        put_inode(&mut img, ino, &rec);
    }
    let mut set_extents =
        |img: &mut FsImage, rec: &mut InodeRecord, ino: u32, ext: &[Extent]| -> u64 {
            let tb = tree_blocks.remove(&ino).unwrap_or_default();
            let (root, blocks) = extent::build(ext, &tb, inode_seed(fs_seed, ino));
            rec.bytes[0x28..0x28 + 60].copy_from_slice(&root);
            for (b, bytes) in blocks {
                img.put_block(b, bytes);
            }
            rec.u32(
                0x20,
                u32::from_le_bytes(rec.bytes[0x20..0x24].try_into().expect("4")) | EXT4_EXTENTS_FL,
            );
            tb.len() as u64
        };
    for p in planned {
        let mut rec = InodeRecord::new();
        rec.u16(0x00, p.mode);
        rec.u16(0x02, p.uid as u16);
        rec.u16(0x78, (p.uid >> 16) as u16);
        rec.u16(0x18, p.gid as u16);
        rec.u16(0x7A, (p.gid >> 16) as u16);
        rec.u16(0x1A, p.links);
        let (t, extra) = time_fields(p.mtime, p.mtime_nsec);
        for (at, at_extra) in [(0x08, 0x8C), (0x0C, 0x84), (0x10, 0x88), (0x90, 0x94)] {
            rec.u32(at, t);
            rec.u32(at_extra, extra);
        }
        let mut blocks_used: u64 = 0;
        let mut size: u64 = 0;
        match &p.body {
            Body::Dir { blocks, indexed } => {
                let ext = &extents_of[&p.ino];
                blocks_used += blocks.len() as u64 + set_extents(&mut img, &mut rec, p.ino, ext);
                let runs = &body_runs[&p.ino];
                for ((b, _), bytes) in runs
                    .iter()
                    .flat_map(|&(s, l)| (s..s + l).map(|b| (b, ())))
                    .zip(blocks)
                {
                    img.put_block(b, bytes.clone());
                }
                if *indexed {
                    rec.u32(
                        0x20,
                        u32::from_le_bytes(rec.bytes[0x20..0x24].try_into().expect("4"))
                            | EXT4_INDEX_FL,
                    );
                }
                size = blocks.len() as u64 * BS;
                let g = (u64::from(p.ino) - 1) / geo.ipg;
                dirs_in_group[g as usize] += 1;
            }
            Body::File { node } => {
                let NodeKind::File(f) = &tree.nodes[*node].kind else {
                    unreachable!()
                };
                let ext = extents_of[&p.ino].clone();
                let data: u64 = ext.iter().map(|e| u64::from(e.len)).sum();
                blocks_used += data + set_extents(&mut img, &mut rec, p.ino, &ext);
                data_blocks_of.insert(p.ino, data);
                size = f.size;
                // Data extents: each run of the file onto its physical blocks.
                for (file_off, tar_off, len) in f.runs() {
                    let mut done = 0;
                    while done < len {
                        let at = file_off + done;
                        let lblk = at / BS;
                        let e = ext
                            .iter()
                            .find(|e| {
                                lblk >= u64::from(e.logical)
                                    && lblk < u64::from(e.logical) + u64::from(e.len)
                            })
                            .expect("every data block is mapped");
                        let ext_end = (u64::from(e.logical) + u64::from(e.len)) * BS;
                        let n = (len - done).min(ext_end - at);
                        img.data.push(DataExtent {
                            device_offset: (e.physical + lblk - u64::from(e.logical)) * BS
                                + at % BS,
                            len: n,
                            layer: f.layer,
                            tar_offset: tar_off + done,
                        });
                        done += n;
                    }
                }
            }
            Body::FastSymlink(t) => {
                rec.bytes[0x28..0x28 + t.len()].copy_from_slice(t);
                size = t.len() as u64;
            }
            Body::SlowSymlink(t) => {
                let ext = &extents_of[&p.ino];
                blocks_used += 1 + set_extents(&mut img, &mut rec, p.ino, ext);
                let mut b = vec![0u8; BS as usize];
                b[..t.len()].copy_from_slice(t);
                img.put_block(body_runs[&p.ino][0].0, b);
                size = t.len() as u64;
            }
            Body::Device { major, minor } => {
                if *major < 256 && *minor < 256 {
                    rec.u32(0x28, (major << 8) | minor);
                } else {
                    rec.u32(
                        0x2C,
                        (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12),
                    );
                }
            }
            Body::Fifo => {}
        }
        match &p.xattrs {
            xattr::Placement::None => {}
            xattr::Placement::Inode(bytes) => {
                rec.bytes[0xA0..0xA0 + bytes.len()].copy_from_slice(bytes)
            }
            xattr::Placement::Block(bytes) => {
                let blk = xattr_block[&p.ino];
                let mut b = bytes.clone();
                xattr::seal_block(&mut b, blk, fs_seed);
                img.put_block(blk, b);
                rec.u32(0x68, blk as u32);
                rec.u16(0x76, (blk >> 32) as u16);
                blocks_used += 1;
            }
        }
        rec.u32(0x04, size as u32);
        rec.u32(0x6C, (size >> 32) as u32);
        let sectors = blocks_used * (BS / 512);
        rec.u32(0x1C, sectors as u32);
        rec.u16(0x74, (sectors >> 32) as u16);
        rec.seal(fs_seed, p.ino);
        put_inode(&mut img, p.ino, &rec);
        inode_used[p.ino as usize] = true;
        let _ = &p.path;
    }
    // Journal.
    let mut jnl_backup = [0u32; 17];
    if journal_blocks > 0 {
        let mut rec = InodeRecord::new();
        rec.u16(0x00, 0o100600);
        rec.u16(0x1A, 1);
        let tb = set_extents(&mut img, &mut rec, JOURNAL_INO, &journal_ext);
        let size = journal_blocks * BS;
        rec.u32(0x04, size as u32);
        rec.u32(0x6C, (size >> 32) as u32);
        let sectors = (journal_blocks + tb) * (BS / 512);
        rec.u32(0x1C, sectors as u32);
        for (i, w) in rec.bytes[0x28..0x28 + 60].chunks(4).enumerate() {
            jnl_backup[i] = u32::from_le_bytes(w.try_into().expect("4"));
        }
        jnl_backup[15] = (size >> 32) as u32;
        jnl_backup[16] = size as u32;
        rec.seal(fs_seed, JOURNAL_INO);
        put_inode(&mut img, JOURNAL_INO, &rec);
        img.put_block(
            journal_runs[0].0,
            journal_superblock(journal_blocks, &opts.uuid),
        );
    }

    // Bitmaps and group descriptors.
    let mut gdt = vec![0u8; (geo.gdt_blocks * BS) as usize];
    let mut free_blocks_total = 0u64;
    let mut free_inodes_total = 0u64;
    for g in 0..geo.groups {
        let start = g * BPG;
        let len = geo.group_len(g);
        let mut bitmap = vec![0u8; BS as usize];
        let mut free = 0u64;
        for i in 0..BPG {
            if i >= len || alloc.is_used(start + i) {
                bitmap[(i / 8) as usize] |= 1 << (i % 8);
            } else {
                free += 1;
            }
        }
        free_blocks_total += free;
        let mut ibitmap = vec![0u8; BS as usize];
        let mut ifree = 0u64;
        let mut last_used = 0u64;
        for i in 0..(BS * 8) {
            let ino = g * geo.ipg + i + 1;
            if i >= geo.ipg {
                ibitmap[(i / 8) as usize] |= 1 << (i % 8);
            } else if inode_used[ino as usize] {
                ibitmap[(i / 8) as usize] |= 1 << (i % 8);
                last_used = i + 1;
            } else {
                ifree += 1;
            }
        }
        free_inodes_total += ifree;
        let bcsum = crc32c_raw(fs_seed, &bitmap);
        let icsum = crc32c_raw(fs_seed, &ibitmap[..(geo.ipg / 8) as usize]);
        img.put_block(bb[g as usize], bitmap);
        img.put_block(ib[g as usize], ibitmap);
        let d = &mut gdt[(g * DESC_SIZE) as usize..((g + 1) * DESC_SIZE) as usize];
        let put32 = |d: &mut [u8], at: usize, v: u64| {
            d[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes())
        };
        let put16 = |d: &mut [u8], at: usize, v: u64| {
            d[at..at + 2].copy_from_slice(&(v as u16).to_le_bytes())
        };
        put32(d, 0x00, bb[g as usize]);
        put32(d, 0x04, ib[g as usize]);
        put32(d, 0x08, it[g as usize]);
        put16(d, 0x0C, free);
        put16(d, 0x0E, ifree);
        put16(d, 0x10, dirs_in_group[g as usize]);
        put16(d, 0x12, 0x4); // EXT4_BG_INODE_ZEROED
        put16(d, 0x18, u64::from(bcsum));
        put16(d, 0x1A, u64::from(icsum));
        put16(d, 0x1C, geo.ipg - last_used);
        put32(d, 0x20, bb[g as usize] >> 32);
        put32(d, 0x24, ib[g as usize] >> 32);
        put32(d, 0x28, it[g as usize] >> 32);
        put16(d, 0x2C, free >> 16);
        put16(d, 0x2E, ifree >> 16);
        put16(d, 0x30, dirs_in_group[g as usize] >> 16);
        put16(d, 0x32, (geo.ipg - last_used) >> 16);
        put16(d, 0x38, u64::from(bcsum >> 16));
        put16(d, 0x3A, u64::from(icsum >> 16));
        let mut c = crc32c_raw(fs_seed, &(g as u32).to_le_bytes());
        c = crc32c_raw(c, &d[..0x1E]);
        c = crc32c_raw(c, &[0, 0]);
        c = crc32c_raw(c, &d[0x20..DESC_SIZE as usize]);
        put16(d, 0x1E, u64::from(c & 0xFFFF));
    }

    // Superblocks and descriptor copies.
    let sb = Superblock {
        geo,
        free_blocks: free_blocks_total,
        free_inodes: free_inodes_total,
        journal: journal_blocks > 0,
        jnl_backup,
        uuid: opts.uuid,
        hash_seed: opts.hash_seed,
    };
    for g in 0..geo.groups {
        if !backup_group(g) {
            continue;
        }
        let start = g * BPG;
        let bytes = sb.encode(g as u16);
        let mut first = if g == 0 {
            img.metadata
                .get(&0)
                .map(|b| b.to_vec())
                .unwrap_or_else(|| vec![0u8; BS as usize])
        } else {
            vec![0u8; BS as usize]
        };
        let at = if g == 0 { 1024 } else { 0 };
        first[at..at + 1024].copy_from_slice(&bytes);
        img.put_block(start, first);
        for i in 0..geo.gdt_blocks {
            let chunk = gdt[(i * BS) as usize..((i + 1) * BS) as usize].to_vec();
            img.put_block(start + 1 + i, chunk);
        }
    }
    img.data.sort_by_key(|e| e.device_offset);
    let _ = data_blocks_of;
    Some(img)
}

struct Superblock<'a> {
    geo: &'a Geometry,
    free_blocks: u64,
    free_inodes: u64,
    journal: bool,
    jnl_backup: [u32; 17],
    uuid: [u8; 16],
    hash_seed: [u32; 4],
}

impl Superblock<'_> {
    fn encode(&self, group: u16) -> Vec<u8> {
        let g = self.geo;
        let mut s = vec![0u8; 1024];
        let put32 =
            |s: &mut [u8], at: usize, v: u32| s[at..at + 4].copy_from_slice(&v.to_le_bytes());
        let put16 =
            |s: &mut [u8], at: usize, v: u16| s[at..at + 2].copy_from_slice(&v.to_le_bytes());
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
        let incompat = 0x2 | 0x40 | 0x80 | 0x200; // filetype, extents, 64bit, flex_bg
        let ro_compat = 0x1 | 0x2 | 0x8 | 0x20 | 0x40 | 0x400; // sparse_super, large_file, huge_file, dir_nlink, extra_isize, metadata_csum
        put32(&mut s, 0x5C, compat);
        put32(&mut s, 0x60, incompat);
        put32(&mut s, 0x64, ro_compat);
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
        put16(&mut s, 0xFE, DESC_SIZE as u16);
        put32(&mut s, 0x100, 0x0C); // default mount options: user_xattr, acl
        put32(&mut s, 0x150, (g.blocks >> 32) as u32);
        put32(&mut s, 0x158, (self.free_blocks >> 32) as u32);
        put16(&mut s, 0x15C, EXTRA_ISIZE);
        put16(&mut s, 0x15E, EXTRA_ISIZE);
        put32(&mut s, 0x160, 0x2); // EXT2_FLAGS_UNSIGNED_HASH
        s[0x174] = 4; // log groups per flex
        s[0x175] = 1; // checksum type: crc32c
        let c = crc32c_raw(!0, &s[..0x3FC]);
        put32(&mut s, 0x3FC, c);
        s
    }
}

/// A clean jbd2 v2 superblock (big-endian) for an internal journal.
fn journal_superblock(blocks: u64, uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; BS as usize];
    let put = |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    put(&mut b, 0x00, 0xC03B_3998);
    put(&mut b, 0x04, 4); // superblock v2
    put(&mut b, 0x0C, BS as u32);
    put(&mut b, 0x10, blocks as u32);
    put(&mut b, 0x14, 1); // first log block
    put(&mut b, 0x18, 1); // first expected sequence
    put(&mut b, 0x28, 0x2); // incompat: 64bit block numbers
    b[0x30..0x40].copy_from_slice(uuid);
    put(&mut b, 0x40, 1); // one user
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_groups_follow_sparse_super() {
        let g: Vec<u64> = (0..100).filter(|g| backup_group(*g)).collect();
        assert_eq!(g, vec![0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
    }

    #[test]
    fn times_carry_nanoseconds_and_epoch() {
        assert_eq!(time_fields(5, 7), (5, 7 << 2));
        let (low, extra) = time_fields(1 << 32, 0); // 2106
        assert_eq!((low, extra), (0, 1));
        let (low, extra) = time_fields(-1, 0);
        assert_eq!((low, extra & 3), (u32::MAX, 0));
    }

    #[test]
    fn allocator_skips_reserved_blocks() {
        let mut a = Alloc::new(100);
        a.mark(10, 5);
        assert_eq!(a.runs(12), Some(vec![(0, 10), (15, 2)]));
        assert_eq!(a.contiguous(80), Some(17));
        assert_eq!(a.contiguous(4), None);
    }
}
