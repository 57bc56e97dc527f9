//! Lay a merged tree out on a given geometry: inode numbers (all chunks in
//! AG 0 for now), blocks allocated forward AG by AG, every inode, directory
//! and symlink block encoded, free space and inode trees and headers to
//! match. `None` when the content does not fit the size.

use super::btree::{self, InodeRec, Tree as BtTree};
use super::dir::{self, Entry, LITINO};
use super::disk::{be32, be64, set_crc};
use super::geometry::{
    AGFL_BLOCKS, BLOCK, CHUNK_BLOCKS, CHUNK_INODES, Geometry, INODE, INODE_ALIGN, INODES_PER_BLOCK,
    PREALLOC, SECTOR,
};
use super::headers::{self, AgfInfo, AgiInfo, SbInfo};
use super::inode::{self, Inode, format};
use super::{XfsError, attr, bmbt, log};
use crate::fs::FsImage;
use crate::fs::alloc::Alloc;
use crate::fs::extents::{Run, file_ranges, place};
use crate::fs::order::Order;
use crate::fs::time::{Clamper, TimeRange};
use crate::fs::xattr::classify;
use crate::fs::zone::{DataZone, ZoneMap, metadata_start};
use crate::tree::NodeKind;

/// Longest extent a bmbt record holds (21 bits of length).
const MAX_EXTENT: u64 = (1 << 21) - 1;
/// Extent records that fit the data fork of an inode without attributes.
const INODE_EXTENTS: usize = LITINO / 16;
/// Longest symlink target XFS stores (`XFS_SYMLINK_MAXLEN` less the NUL).
pub const SYMLINK_MAX: usize = 1023;
/// Bytes of a remote symlink block's header.
const SYMLINK_HDR: usize = 56;

/// bigtime: 1901-12-13 to 2486-07-02 (`XFS_BIGTIME_TIME_MIN`/`_MAX`).
pub const TIMES: TimeRange = TimeRange {
    fs: "xfs",
    min: i32::MIN as i64,
    max: (u64::MAX / 1_000_000_000) as i64 + i32::MIN as i64,
    shown: "1901-12-13 to 2486-07-02",
};

/// The first AG block of AG 0's inode chunks.
pub fn chunk_base() -> u64 {
    (PREALLOC + AGFL_BLOCKS).next_multiple_of(INODE_ALIGN)
}

/// Inode slots a tree needs: its nodes plus the realtime bitmap and
/// summary inodes.
pub fn slots(order: &Order<'_>) -> u64 {
    order.nodes.len() as u64 + 2
}

/// Slot of the node at `pos` (the root is 0, then the two realtime inodes).
fn slot_of(pos: usize) -> u64 {
    if pos == 0 { 0 } else { pos as u64 + 2 }
}

/// Forward allocation over every AG's free blocks.
struct Blocks {
    allocs: Vec<Alloc>,
    ag_blocks: u64,
    cur: usize,
}

/// Split runs so that none is longer than an extent record holds.
fn split_long(runs: Vec<(u64, u64)>, out: &mut Vec<(u64, u64)>) {
    for (start, len) in runs {
        let mut s = start;
        let mut left = len;
        while left > 0 {
            let l = left.min(MAX_EXTENT);
            out.push((s, l));
            s += l;
            left -= l;
        }
    }
}

impl Blocks {
    /// `n` blocks as (device block, length) runs, none crossing an AG or
    /// longer than an extent holds.
    fn take(&mut self, mut n: u64) -> Option<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        while n > 0 {
            let got = self.allocs.get_mut(self.cur)?.runs_upto(n);
            n -= got.iter().map(|r| r.1).sum::<u64>();
            split_long(got, &mut out);
            if n > 0 {
                self.cur += 1;
            }
        }
        Some(out)
    }

    /// Go on allocating from device block `dev`.
    fn seek(&mut self, dev: u64) {
        self.cur = ((dev / self.ag_blocks) as usize).min(self.allocs.len() - 1);
        self.allocs[self.cur].seek(dev);
    }

    /// Take device blocks `[dev, dev + len)`, inside one AG's free range.
    fn mark(&mut self, dev: u64, len: u64) {
        self.allocs[(dev / self.ag_blocks) as usize].mark(dev, len);
    }
}

/// One extent record (`xfs_bmbt_rec`): logical block, filesystem block,
/// length.
fn extent_bytes(logical: u64, fsblock: u64, len: u64) -> [u8; 16] {
    let l0 = (logical << 9) | (fsblock >> 43);
    let l1 = (fsblock << 21) | len;
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&l0.to_be_bytes());
    b[8..].copy_from_slice(&l1.to_be_bytes());
    b
}

/// Append an extent record to a data fork.
fn extent_rec(out: &mut Vec<u8>, logical: u64, fsblock: u64, len: u64) {
    out.extend_from_slice(&extent_bytes(logical, fsblock, len));
}

fn ftype(kind: &NodeKind) -> u8 {
    match kind {
        NodeKind::File(_) => 1,
        NodeKind::Dir(_) => 2,
        NodeKind::CharDevice(..) => 3,
        NodeKind::BlockDevice(..) => 4,
        NodeKind::Fifo => 5,
        NodeKind::Symlink(_) => 7,
    }
}

/// Lay `order` out on `blocks` blocks. `stable`: file data in the stable
/// data zone of [`crate::fs::zone`] (else packed with everything else in
/// tree order); an error if that leaves an AG more free extents than its
/// one-leaf free-space trees hold.
pub fn write(
    order: &Order<'_>,
    blocks: u64,
    uuid: [u8; 16],
    stable: bool,
) -> Result<Option<FsImage>, XfsError> {
    let g = Geometry::new(blocks * BLOCK)?;
    let tree = order.tree;
    let n_slots = slots(order);
    let chunks = n_slots.div_ceil(CHUNK_INODES);
    let base = chunk_base();
    // The inode tree's leaves, when more than the root block holds, sit
    // right after the chunks.
    let inobt_leaves = match (chunks as usize).div_ceil(btree::leaf_capacity(16)) {
        n if n <= 1 => 0,
        n => n as u64,
    };
    if inobt_leaves > btree::INODE_NODE_CAPACITY as u64 {
        return Err(XfsError::NotYet {
            what: "more inodes than a two-level inode tree indexes",
            path: "/".into(),
        });
    }
    let chunk_end = base + chunks * CHUNK_BLOCKS + inobt_leaves;
    if chunk_end > g.ag_len(0) {
        return Ok(None);
    }
    let ino_of_slot = |slot: u64| g.ino(0, base + slot / INODES_PER_BLOCK, slot % INODES_PER_BLOCK);
    let ino_at = |pos: usize| ino_of_slot(slot_of(pos));
    let root = ino_at(0);

    // Free blocks of each AG, in device block numbers.
    let mut allocs = Vec::new();
    let mut headers = Vec::new();
    let mut agfl_of = Vec::new();
    for ag in 0..g.ag_count {
        let mut next = PREALLOC;
        if ag == g.log_ag {
            next += g.log_blocks;
        }
        agfl_of.push(
            (next..next + AGFL_BLOCKS)
                .map(|b| b as u32)
                .collect::<Vec<u32>>(),
        );
        next += AGFL_BLOCKS;
        if ag == 0 {
            next = chunk_end;
        }
        let len = g.ag_len(ag).saturating_sub(next);
        allocs.push(Alloc::new(g.device_block(ag, next), len));
        headers.push((g.device_block(ag, 0), next.min(g.ag_len(ag))));
    }
    let mut space = Blocks {
        allocs,
        ag_blocks: g.ag_blocks,
        cur: 0,
    };
    let fsblock = |dev: u64| g.fsblock(dev / g.ag_blocks, dev % g.ag_blocks);

    // Stable: every file's data in its slot of the data zone first, the
    // rest after the zone.
    let mut file_runs: Vec<Option<Vec<Run>>> = vec![None; order.nodes.len()];
    if stable {
        let zone = DataZone::new(tree);
        let map = ZoneMap::new(headers.iter().copied());
        let data_end = map.end(zone.blocks());
        if data_end > g.blocks {
            return Ok(None);
        }
        for (pos, placed) in order.nodes.iter().enumerate() {
            if !matches!(tree.nodes[placed.id].kind, NodeKind::File(_)) {
                continue;
            }
            let Some(whole) = map.file_runs(&zone, tree, placed.id) else {
                unreachable!("the zone is made from this tree");
            };
            let mut runs = Vec::new();
            for r in whole {
                let mut pieces = Vec::new();
                split_long(vec![(r.physical, r.len)], &mut pieces);
                let mut logical = r.logical;
                for (physical, len) in pieces {
                    space.mark(physical, len);
                    runs.push(Run {
                        logical,
                        physical,
                        len,
                    });
                    logical += len;
                }
            }
            file_runs[pos] = Some(runs);
        }
        space.seek(metadata_start(data_end).min(g.blocks - 1));
    }

    let mut img = FsImage {
        size: g.blocks * BLOCK,
        ..FsImage::default()
    };
    let mut times = Clamper::new(TIMES);
    let mut inodes: Vec<(u64, Vec<u8>)> = Vec::with_capacity(order.nodes.len());
    for (pos, placed) in order.nodes.iter().enumerate() {
        let node = &tree.nodes[placed.id];
        let ino = ino_at(pos);
        let path = || order.path(pos);
        let xattr_err = |source| XfsError::Xattr {
            path: path(),
            source,
        };
        let attrs = classify(&node.meta.xattrs, &path).map_err(xattr_err)?;
        let attrs = attr::stored(&attrs, &path).map_err(xattr_err)?;
        let mut fork = Vec::new();
        let (type_bits, fmt, size, nblocks, nextents, nlink) = match &node.kind {
            NodeKind::Dir(children) => {
                let entries: Vec<Entry<'_>> = children
                    .iter()
                    .map(|(name, &c)| {
                        let p = order.position(c).unwrap_or(0) as usize;
                        Entry {
                            name,
                            ino: ino_at(p),
                            ftype: ftype(&tree.nodes[c].kind),
                        }
                    })
                    .collect();
                let parent = ino_at(placed.parent as usize);
                let nlink = 2 + placed.subdirs;
                if let Some(sf) = dir::shortform(parent, &entries) {
                    let len = sf.len() as u64;
                    fork = sf;
                    (0o040000, format::LOCAL, len, 0, 0, nlink)
                } else {
                    // Block form in one block; else data blocks from
                    // logical 0 and one leaf at 32 GiB; else data blocks, a
                    // da node at 32 GiB, its leaves after it, and a free
                    // index at 64 GiB.
                    let block = dir::block_form_fits(&entries);
                    let n_data = if block {
                        0
                    } else {
                        dir::leaf_form_data_blocks(&entries)
                    };
                    let leaves = if block || dir::leaf_form_fits(&entries, n_data) {
                        None
                    } else {
                        match dir::node_form_leaves(&entries) {
                            Some(n) => Some(n),
                            None => {
                                return Err(XfsError::NotYet {
                                    what: "directories whose names share one hash that often",
                                    path: path(),
                                });
                            }
                        }
                    };
                    let total = match leaves {
                        None => n_data as u64 + 1,
                        Some(l) => (n_data + 1 + l + 1) as u64,
                    };
                    let Some(runs) = space.take(total) else {
                        return Ok(None);
                    };
                    let devs: Vec<u64> = runs.iter().flat_map(|&(s, l)| s..s + l).collect();
                    let blocks = match leaves {
                        _ if block => {
                            dir::block_form(ino, parent, &entries, devs[0], &uuid).map(|b| vec![b])
                        }
                        None => {
                            let (data, leaf) = devs.split_at(n_data);
                            dir::leaf_form(ino, parent, &entries, data, leaf[0], &uuid)
                        }
                        Some(l) => {
                            let (data, rest) = devs.split_at(n_data);
                            let (node, rest) = rest.split_at(1);
                            let (leaf_devs, free) = rest.split_at(l);
                            dir::node_form(
                                ino, parent, &entries, data, node[0], leaf_devs, free[0], &uuid,
                            )
                        }
                    };
                    let Some(blocks) = blocks else {
                        return Err(XfsError::NotYet {
                            what: "directories larger than one da node indexes",
                            path: path(),
                        });
                    };
                    for (dev, b) in devs.iter().zip(blocks) {
                        img.put_block(*dev, b);
                    }
                    let logical = |k: usize| {
                        if k < n_data || block {
                            k as u64
                        } else if k == devs.len() - 1 && leaves.is_some() {
                            dir::FREE_BLOCK
                        } else {
                            dir::LEAF_BLOCK + (k - n_data) as u64
                        }
                    };
                    let mut n_ext = 0;
                    let mut k = 0;
                    while k < devs.len() {
                        let mut len = 1;
                        while k + len < devs.len()
                            && devs[k + len] == devs[k] + len as u64
                            && logical(k + len) == logical(k) + len as u64
                        {
                            len += 1;
                        }
                        extent_rec(&mut fork, logical(k), fsblock(devs[k]), len as u64);
                        n_ext += 1;
                        k += len;
                    }
                    if n_ext as usize > INODE_EXTENTS {
                        return Err(XfsError::NotYet {
                            what: "directories of more extents than an inode holds",
                            path: path(),
                        });
                    }
                    let size = BLOCK * n_data.max(1) as u64;
                    let nblocks = devs.len() as u64;
                    (0o040000, format::EXTENTS, size, nblocks, n_ext, nlink)
                }
            }
            NodeKind::File(f) => {
                let runs = match file_runs[pos].take() {
                    Some(runs) => runs,
                    None => {
                        let mut runs = Vec::new();
                        for (first, count) in file_ranges(tree, placed.id) {
                            let Some(got) = space.take(count) else {
                                return Ok(None);
                            };
                            let mut l = first;
                            for (physical, len) in got {
                                runs.push(Run {
                                    logical: l,
                                    physical,
                                    len,
                                });
                                l += len;
                            }
                        }
                        runs
                    }
                };
                for (off, tar, len) in f.runs() {
                    if place(&runs, (off, tar, len), f.layer, &mut img.data).is_none() {
                        unreachable!("every data block of {} is mapped", path());
                    }
                }
                let blocks: u64 = runs.iter().map(|r| r.len).sum();
                let n = runs.len() as u32;
                if runs.len() <= INODE_EXTENTS {
                    for r in &runs {
                        extent_rec(&mut fork, r.logical, fsblock(r.physical), r.len);
                    }
                    (0o100000, format::EXTENTS, f.size, blocks, n, placed.refs)
                } else {
                    // A one-level block-map tree; the root's capacity is what
                    // the data fork will hold: all of it, or (beside
                    // attributes) just enough.
                    let n_leaves = runs.len().div_ceil(bmbt::LEAF_RECORDS);
                    if n_leaves > bmbt::root_capacity(LITINO) {
                        return Err(XfsError::NotYet {
                            what: "files of more than 5,020 extents",
                            path: path(),
                        });
                    }
                    let Some(leaf_runs) = space.take(n_leaves as u64) else {
                        return Ok(None);
                    };
                    let devs: Vec<u64> = leaf_runs.iter().flat_map(|&(s, l)| s..s + l).collect();
                    let fsblocks: Vec<u64> = devs.iter().map(|&d| fsblock(d)).collect();
                    let records: Vec<[u8; 16]> = runs
                        .iter()
                        .map(|r| extent_bytes(r.logical, fsblock(r.physical), r.len))
                        .collect();
                    for (dev, b) in devs
                        .iter()
                        .zip(bmbt::leaves(&records, &devs, &fsblocks, ino, &uuid))
                    {
                        img.put_block(*dev, b);
                    }
                    let firsts: Vec<u64> = btree::split(&runs, bmbt::LEAF_RECORDS)
                        .iter()
                        .map(|c| c[0].logical)
                        .collect();
                    let capacity = if attrs.is_empty() {
                        bmbt::root_capacity(LITINO)
                    } else {
                        n_leaves
                    };
                    fork = bmbt::root(&firsts, &fsblocks, capacity);
                    let total = blocks + n_leaves as u64;
                    (0o100000, format::BTREE, f.size, total, n, placed.refs)
                }
            }
            NodeKind::Symlink(target) => {
                if target.len() > SYMLINK_MAX {
                    return Err(XfsError::SymlinkTooLong {
                        path: path(),
                        len: target.len(),
                    });
                }
                if target.len() <= LITINO {
                    fork = target.clone();
                    let len = target.len() as u64;
                    (0o120000, format::LOCAL, len, 0, 0, placed.refs)
                } else {
                    let per = BLOCK as usize - SYMLINK_HDR;
                    let n = target.len().div_ceil(per) as u64;
                    let Some(runs) = space.take(n) else {
                        return Ok(None);
                    };
                    // One extent a block, as the kernel maps symlinks and
                    // xfs_repair expects them.
                    let mut done = 0usize;
                    let mut logical = 0;
                    for (start, len) in &runs {
                        for dev in *start..start + len {
                            extent_rec(&mut fork, logical, fsblock(dev), 1);
                            let piece = &target[done..(done + per).min(target.len())];
                            img.put_block(dev, symlink_block(ino, dev, done, piece, &uuid));
                            done += piece.len();
                            logical += 1;
                        }
                    }
                    let len = target.len() as u64;
                    (0o120000, format::EXTENTS, len, n, n as u32, placed.refs)
                }
            }
            NodeKind::CharDevice(major, minor) | NodeKind::BlockDevice(major, minor) => {
                if *major >= 1 << 14 || *minor >= 1 << 18 {
                    return Err(XfsError::DeviceNumber {
                        path: path(),
                        major: *major,
                        minor: *minor,
                    });
                }
                fork = ((major << 18) | minor).to_be_bytes().to_vec();
                let bits = if matches!(node.kind, NodeKind::CharDevice(..)) {
                    0o020000
                } else {
                    0o060000
                };
                (bits, format::DEV, 0, 0, 0, placed.refs)
            }
            NodeKind::Fifo => {
                fork = vec![0; 4];
                (0o010000, format::DEV, 0, 0, 0, placed.refs)
            }
        };
        let perm = if matches!(node.kind, NodeKind::Symlink(_)) {
            0o777
        } else {
            node.meta.mode & 0o7777
        };
        // The data fork keeps what it holds, 8 bytes at least (a device
        // exactly that); the attributes take the rest: shortform if they
        // fit, else a leaf block (and remote value blocks) mapped by
        // extents.
        let data = fork.len().next_multiple_of(8).max(8);
        let mut attr_blocks = 0;
        let (forkoff, aformat, anextents, attr_fork) = if attrs.is_empty() {
            (0, 0, 0, Vec::new())
        } else if let Some(sf) = attr::shortform(&attrs).filter(|sf| data + sf.len() <= LITINO) {
            ((data / 8) as u8, format::LOCAL, 0, sf)
        } else {
            let Some(n) = attr::leaf_form_blocks(&attrs) else {
                return Err(XfsError::NotYet {
                    what: "more extended attributes than one attribute leaf block holds",
                    path: path(),
                });
            };
            let Some(runs) = space.take(n as u64) else {
                return Ok(None);
            };
            let devs: Vec<u64> = runs.iter().flat_map(|&(s, l)| s..s + l).collect();
            for (dev, b) in devs.iter().zip(attr::leaf_form(&attrs, ino, &devs, &uuid)) {
                img.put_block(*dev, b);
            }
            let mut recs = Vec::new();
            let mut logical = 0;
            for (start, len) in &runs {
                extent_rec(&mut recs, logical, fsblock(*start), *len);
                logical += len;
            }
            if data + recs.len() > LITINO {
                return Err(XfsError::NotYet {
                    what: "more extended attribute extents than the inode holds",
                    path: path(),
                });
            }
            attr_blocks = n as u64;
            ((data / 8) as u8, format::EXTENTS, runs.len() as u16, recs)
        };
        let nblocks = nblocks + attr_blocks;
        let mtime = times.clamp(node.meta.mtime, node.meta.mtime_nsec, &path);
        let i = Inode {
            ino,
            mode: (type_bits | perm) as u16,
            uid: node.meta.uid,
            gid: node.meta.gid,
            nlink,
            mtime,
            size,
            nblocks,
            format: fmt,
            nextents,
            fork: &fork,
            attr: &attr_fork,
            aformat,
            anextents,
            forkoff,
        };
        inodes.push((slot_of(pos), inode::encode(&i, &uuid)));
    }
    times.finish();

    // The realtime inodes and the free slots of the chunks.
    let root_time = tree.nodes[order.nodes[0].id].meta.mtime;
    for slot in 1..chunks * CHUNK_INODES {
        if (3..n_slots).contains(&slot) {
            continue;
        }
        let rt = slot < 3;
        let i = Inode {
            ino: ino_of_slot(slot),
            mode: if rt { 0o100000 } else { 0 },
            uid: 0,
            gid: 0,
            nlink: u32::from(rt),
            mtime: if rt {
                (root_time.clamp(TIMES.min, TIMES.max), 0)
            } else {
                (0, 0)
            },
            size: 0,
            nblocks: 0,
            format: if rt { format::EXTENTS } else { format::DEV },
            nextents: 0,
            fork: &[],
            attr: &[],
            aformat: 0,
            anextents: 0,
            forkoff: 0,
        };
        inodes.push((slot, inode::encode(&i, &uuid)));
    }
    let chunk_dev = g.device_block(0, base);
    for (slot, bytes) in inodes {
        img.put_bytes(chunk_dev * BLOCK + slot * INODE, &bytes);
    }

    // Trees and headers.
    let mut fdblocks = 0;
    let mut free_of = Vec::new();
    for (ag, alloc) in space.allocs.iter().enumerate() {
        let ag = ag as u64;
        let first = g.device_block(ag, 0);
        let free: Vec<(u32, u32)> = alloc
            .free_runs()
            .into_iter()
            .map(|(s, l)| ((s - first) as u32, l as u32))
            .collect();
        if free.len() > btree::leaf_capacity(8) {
            return Err(XfsError::Fragmented { ag });
        }
        fdblocks += free.iter().map(|e| u64::from(e.1)).sum::<u64>() + AGFL_BLOCKS;
        free_of.push(free);
    }
    let icount = chunks * CHUNK_INODES;
    let sb = SbInfo {
        uuid,
        root_ino: root,
        rbm_ino: ino_of_slot(1),
        rsum_ino: ino_of_slot(2),
        icount,
        ifree: icount - n_slots,
        fdblocks,
    };
    let sb_bytes = headers::superblock(&g, &sb);
    for ag in 0..g.ag_count {
        let first = g.device_block(ag, 0) * BLOCK;
        let free = &free_of[ag as usize];
        let total: u64 = free.iter().map(|e| u64::from(e.1)).sum();
        let longest = free.iter().map(|e| u64::from(e.1)).max().unwrap_or(0);
        let agf = AgfInfo {
            free: total,
            longest,
            fl_count: AGFL_BLOCKS as u32,
        };
        let mut recs = Vec::new();
        if ag == 0 {
            for c in 0..chunks {
                let first_slot = c * CHUNK_INODES;
                let mut free = 0u64;
                for i in 0..CHUNK_INODES {
                    if first_slot + i >= n_slots {
                        free |= 1 << i;
                    }
                }
                recs.push(InodeRec {
                    start: ((base + c * CHUNK_BLOCKS) * INODES_PER_BLOCK) as u32,
                    free,
                });
            }
        }
        let agi = AgiInfo {
            count: recs.len() as u64 * CHUNK_INODES,
            free: recs.iter().map(|r| u64::from(r.free.count_ones())).sum(),
            newino: recs.last().map(|r| r.start),
            level: if ag == 0 && inobt_leaves > 0 { 2 } else { 1 },
        };
        img.put_bytes(first, &sb_bytes);
        img.put_bytes(first + SECTOR, &headers::agf(&g, ag, &uuid, &agf));
        img.put_bytes(first + 2 * SECTOR, &headers::agi(&g, ag, &uuid, &agi));
        img.put_bytes(
            first + 3 * SECTOR,
            &headers::agfl(ag, &uuid, &agfl_of[ag as usize]),
        );
        for (agbno, t) in [(1, BtTree::ByBlock), (2, BtTree::ByCount)] {
            let dev = g.device_block(ag, agbno);
            img.put_block(dev, btree::free_space_leaf(t, ag, dev, &uuid, free));
        }
        let dev = g.device_block(ag, 3);
        if ag == 0 && inobt_leaves > 0 {
            let first_leaf = base + chunks * CHUNK_BLOCKS;
            let mut children = Vec::new();
            let parts = btree::split(&recs, btree::leaf_capacity(16));
            for (i, part) in parts.iter().enumerate() {
                let agbno = first_leaf + i as u64;
                let sib = btree::Siblings {
                    left: (i > 0).then(|| (agbno - 1) as u32),
                    right: (i + 1 < parts.len()).then(|| (agbno + 1) as u32),
                };
                let leaf_dev = g.device_block(0, agbno);
                img.put_block(leaf_dev, btree::inode_leaf(0, leaf_dev, &uuid, part, sib));
                children.push((part[0].start, agbno as u32));
            }
            img.put_block(dev, btree::inode_node(0, dev, &uuid, &children));
        } else {
            let sib = btree::Siblings::default();
            img.put_block(dev, btree::inode_leaf(ag, dev, &uuid, &recs, sib));
        }
    }
    let log_at = g.device_block(g.log_ag, g.log_agbno()) * BLOCK;
    img.put_bytes(log_at, &log::unmount_record(&uuid));
    img.data.sort_by_key(|e| e.device_offset);
    Ok(Some(img))
}

/// A remote symlink block: header, then `piece` (bytes from `offset` of
/// the target).
fn symlink_block(owner: u64, dev: u64, offset: usize, piece: &[u8], uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    be32(&mut b, 0, 0x5853_4c4d); // XSLM
    be32(&mut b, 4, offset as u32);
    be32(&mut b, 8, piece.len() as u32);
    b[16..32].copy_from_slice(uuid);
    be64(&mut b, 32, owner);
    be64(&mut b, 40, dev * (BLOCK / SECTOR));
    b[SYMLINK_HDR..SYMLINK_HDR + piece.len()].copy_from_slice(piece);
    set_crc(&mut b, 12);
    b
}
