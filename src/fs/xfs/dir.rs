//! Directories in the forms that fit what they hold: shortform (in the
//! inode), block form (one 4 KiB block: entries, then the hash-sorted
//! leaf array and its tail) and leaf form (data blocks, then one leaf
//! block of hashes at the 32 GiB offset) and node form (data blocks, a
//! one-level da B+tree of hash leaves at 32 GiB, a free index at 64 GiB).
//!
//! Entries are laid out in the order given (by name), and a shortform
//! entry's offset is the one it would have in block form, as the kernel
//! numbers readdir cookies.

use super::disk::{be16, be32, be64, set_crc};
use super::geometry::{BLOCK, SECTOR};
use super::inode::CORE;

/// Bytes of the v5 data block header (`xfs_dir3_data_hdr`).
const DATA_HDR: usize = 64;
/// Offset of the first entry after `.` and `..` (`XFS_DIR3_DATA_FIRST_OFFSET`).
pub const FIRST_OFFSET: usize = DATA_HDR + 16 + 16;
/// Room for data in an inode without an attribute fork.
pub const LITINO: usize = super::geometry::INODE as usize - CORE;

/// One directory entry.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// Name (1 to 255 bytes).
    pub name: &'a [u8],
    /// Inode.
    pub ino: u64,
    /// `XFS_DIR3_FT_*` (the same numbers as ext4's file types).
    pub ftype: u8,
}

/// `xfs_da_hashname`.
pub fn hash(name: &[u8]) -> u32 {
    let mut h: u32 = 0;
    let mut rest = name;
    while rest.len() >= 4 {
        h = (u32::from(rest[0]) << 21)
            ^ (u32::from(rest[1]) << 14)
            ^ (u32::from(rest[2]) << 7)
            ^ u32::from(rest[3])
            ^ h.rotate_left(7 * 4);
        rest = &rest[4..];
    }
    match rest.len() {
        3 => {
            (u32::from(rest[0]) << 14)
                ^ (u32::from(rest[1]) << 7)
                ^ u32::from(rest[2])
                ^ h.rotate_left(7 * 3)
        }
        2 => (u32::from(rest[0]) << 7) ^ u32::from(rest[1]) ^ h.rotate_left(7 * 2),
        1 => u32::from(rest[0]) ^ h.rotate_left(7),
        _ => h,
    }
}

/// Bytes of a data entry with a `len`-byte name (`xfs_dir2_data_entsize`
/// with a file type byte).
fn entsize(len: usize) -> usize {
    (8 + 1 + len + 1 + 2).next_multiple_of(8)
}

/// `.` and `..` of directory `owner` in `parent`.
fn dots(owner: u64, parent: u64) -> [Entry<'static>; 2] {
    [
        Entry {
            name: b".",
            ino: owner,
            ftype: 2,
        },
        Entry {
            name: b"..",
            ino: parent,
            ftype: 2,
        },
    ]
}

/// Write data entry `e` at `at` of a directory data block; its size.
fn put_entry(b: &mut [u8], at: usize, e: &Entry<'_>) -> usize {
    let size = entsize(e.name.len());
    be64(b, at, e.ino);
    b[at + 8] = e.name.len() as u8;
    b[at + 9..at + 9 + e.name.len()].copy_from_slice(e.name);
    b[at + 9 + e.name.len()] = e.ftype;
    be16(b, at + size - 2, at as u16);
    size
}

/// Mark `len` bytes at `at` of a data block as its one free region: an
/// unused entry, named by `bestfree[0]`.
fn put_free(b: &mut [u8], at: usize, len: usize) {
    if len > 0 {
        be16(b, at, 0xffff);
        be16(b, at + 2, len as u16);
        be16(b, at + len - 2, at as u16);
        be16(b, 48, at as u16);
        be16(b, 50, len as u16);
    }
}

/// The shortform fork, if the entries fit in the inode.
pub fn shortform(parent: u64, entries: &[Entry<'_>]) -> Option<Vec<u8>> {
    let wide = parent > u64::from(u32::MAX) || entries.iter().any(|e| e.ino > u64::from(u32::MAX));
    let ino_len = if wide { 8 } else { 4 };
    let put_ino = |b: &mut Vec<u8>, ino: u64| {
        if wide {
            b.extend_from_slice(&ino.to_be_bytes());
        } else {
            b.extend_from_slice(&(ino as u32).to_be_bytes());
        }
    };
    let size = 2
        + ino_len
        + entries
            .iter()
            .map(|e| 1 + 2 + e.name.len() + 1 + ino_len)
            .sum::<usize>();
    if size > LITINO || entries.len() > 255 {
        return None;
    }
    let mut b = Vec::with_capacity(size);
    b.push(entries.len() as u8);
    b.push(if wide { entries.len() as u8 } else { 0 });
    put_ino(&mut b, parent);
    let mut offset = FIRST_OFFSET;
    for e in entries {
        b.push(e.name.len() as u8);
        b.extend_from_slice(&(offset as u16).to_be_bytes());
        b.extend_from_slice(e.name);
        b.push(e.ftype);
        put_ino(&mut b, e.ino);
        offset += entsize(e.name.len());
    }
    Some(b)
}

/// Whether `entries` fit one block-form block.
pub fn block_form_fits(entries: &[Entry<'_>]) -> bool {
    let used: usize = FIRST_OFFSET + entries.iter().map(|e| entsize(e.name.len())).sum::<usize>();
    let leaf_at = (BLOCK as usize - 8).checked_sub(8 * (entries.len() + 2));
    leaf_at.is_some_and(|l| used <= l)
}

/// The one block of a block-form directory, if the entries fit:
/// `device_block` and `owner` go into its header.
pub fn block_form(
    owner: u64,
    parent: u64,
    entries: &[Entry<'_>],
    device_block: u64,
    uuid: &[u8; 16],
) -> Option<Vec<u8>> {
    if !block_form_fits(entries) {
        return None;
    }
    let leaves = entries.len() + 2;
    let tail = BLOCK as usize - 8;
    let leaf_at = tail - 8 * leaves;
    let mut b = vec![0u8; BLOCK as usize];
    be32(&mut b, 0, 0x5844_4233); // XDB3
    be64(&mut b, 8, device_block * (BLOCK / SECTOR));
    b[24..40].copy_from_slice(uuid);
    be64(&mut b, 40, owner);
    let mut hashes: Vec<(u32, u32)> = Vec::with_capacity(leaves);
    let mut at = DATA_HDR;
    for e in dots(owner, parent).iter().chain(entries) {
        hashes.push((hash(e.name), (at / 8) as u32));
        at += put_entry(&mut b, at, e);
    }
    // The free space between the entries and the leaf array, as one
    // unused entry; bestfree[0] names it.
    put_free(&mut b, at, leaf_at - at);
    hashes.sort();
    for (i, (h, addr)) in hashes.iter().enumerate() {
        be32(&mut b, leaf_at + 8 * i, *h);
        be32(&mut b, leaf_at + 8 * i + 4, *addr);
    }
    be32(&mut b, tail, leaves as u32);
    be32(&mut b, tail + 4, 0); // stale
    set_crc(&mut b, 4);
    Some(b)
}

/// Logical directory block of the leaf in leaf form (32 GiB).
pub const LEAF_BLOCK: u64 = (32 << 30) / BLOCK;

/// The entries, `.` and `..` first, as (data block, offset) places in a
/// multi-block directory: each block starts with its header, an entry
/// never crosses a block.
fn data_places(entries: &[Entry<'_>]) -> Vec<(usize, usize)> {
    let mut places = Vec::with_capacity(entries.len() + 2);
    let (mut db, mut at) = (0usize, DATA_HDR);
    for len in [1, 2]
        .into_iter()
        .chain(entries.iter().map(|e| e.name.len()))
    {
        let size = entsize(len);
        if at + size > BLOCK as usize {
            db += 1;
            at = DATA_HDR;
        }
        places.push((db, at));
        at += size;
    }
    places
}

/// Data blocks a leaf-form directory of `entries` takes.
pub fn leaf_form_data_blocks(entries: &[Entry<'_>]) -> usize {
    data_places(entries).last().map_or(1, |p| p.0 + 1)
}

/// Bytes of the v5 leaf header (`xfs_dir3_leaf_hdr`), of the da node
/// header (`xfs_da3_node_hdr`) and of the free index header.
const LEAF_HDR: usize = 64;
/// Logical directory block of the first free index block (64 GiB).
pub const FREE_BLOCK: u64 = (64 << 30) / BLOCK;
/// Hash entries in one node-form leaf.
const LEAFN_ENTRIES: usize = (BLOCK as usize - LEAF_HDR) / 8;

/// The data blocks of a multi-block directory.
struct DataBlocks {
    /// The blocks.
    blocks: Vec<Vec<u8>>,
    /// (hash, address) of every entry, sorted.
    hashes: Vec<(u32, u32)>,
    /// Each block's free bytes.
    bests: Vec<u16>,
}

/// The data blocks of a multi-block directory at `data_devs`.
fn data_blocks(
    owner: u64,
    parent: u64,
    entries: &[Entry<'_>],
    data_devs: &[u64],
    uuid: &[u8; 16],
) -> DataBlocks {
    let places = data_places(entries);
    let mut blocks: Vec<Vec<u8>> = data_devs
        .iter()
        .map(|&dev| {
            let mut b = vec![0u8; BLOCK as usize];
            be32(&mut b, 0, 0x5844_4433); // XDD3
            be64(&mut b, 8, dev * (BLOCK / SECTOR));
            b[24..40].copy_from_slice(uuid);
            be64(&mut b, 40, owner);
            b
        })
        .collect();
    let mut hashes = Vec::with_capacity(places.len());
    let mut ends = vec![DATA_HDR; data_devs.len()];
    for (e, &(db, at)) in dots(owner, parent).iter().chain(entries).zip(&places) {
        hashes.push((hash(e.name), ((db as u64 * BLOCK + at as u64) / 8) as u32));
        ends[db] = at + put_entry(&mut blocks[db], at, e);
    }
    let mut bests = Vec::with_capacity(data_devs.len());
    for (b, &end) in blocks.iter_mut().zip(&ends) {
        let free = BLOCK as usize - end;
        put_free(b, end, free);
        bests.push(free as u16);
        set_crc(b, 4);
    }
    hashes.sort();
    DataBlocks {
        blocks,
        hashes,
        bests,
    }
}

/// A leaf block header (`xfs_dir3_leaf_hdr`, also the da node's `info`):
/// siblings `forw` / `back` as logical directory blocks (0: none).
fn leaf_header(magic: u16, dev: u64, owner: u64, uuid: &[u8; 16], forw: u64, back: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    be32(&mut b, 0, forw as u32);
    be32(&mut b, 4, back as u32);
    be16(&mut b, 8, magic);
    be64(&mut b, 16, dev * (BLOCK / SECTOR));
    b[32..48].copy_from_slice(uuid);
    be64(&mut b, 48, owner);
    b
}

/// A leaf-form directory: its data blocks at `data_devs` (as many as
/// [`leaf_form_data_blocks`] says), then the leaf block at `leaf_dev`.
/// `None` if the hashes do not fit one leaf block.
pub fn leaf_form(
    owner: u64,
    parent: u64,
    entries: &[Entry<'_>],
    data_devs: &[u64],
    leaf_dev: u64,
    uuid: &[u8; 16],
) -> Option<Vec<Vec<u8>>> {
    let n_data = data_devs.len();
    let tail_at = BLOCK as usize - 4;
    let bests_at = tail_at - 2 * n_data;
    if LEAF_HDR + 8 * (entries.len() + 2) > bests_at {
        return None;
    }
    let DataBlocks {
        mut blocks,
        hashes,
        bests,
    } = data_blocks(owner, parent, entries, data_devs, uuid);
    let mut leaf = leaf_header(0x3df1, leaf_dev, owner, uuid, 0, 0); // LEAF1
    be16(&mut leaf, 56, hashes.len() as u16);
    for (i, (h, addr)) in hashes.iter().enumerate() {
        be32(&mut leaf, LEAF_HDR + 8 * i, *h);
        be32(&mut leaf, LEAF_HDR + 8 * i + 4, *addr);
    }
    for (i, best) in bests.iter().enumerate() {
        be16(&mut leaf, bests_at + 2 * i, *best);
    }
    be32(&mut leaf, tail_at, n_data as u32);
    set_crc(&mut leaf, 12);
    blocks.push(leaf);
    Some(blocks)
}

/// Whether a leaf-form directory of `entries` in `n_data` data blocks has
/// its hashes and bests fit one leaf block.
pub fn leaf_form_fits(entries: &[Entry<'_>], n_data: usize) -> bool {
    LEAF_HDR + 8 * (entries.len() + 2) + 2 * n_data + 4 <= BLOCK as usize
}

/// Where the sorted hashes split into node-form leaves: never inside a
/// run of equal hashes. `None` if one run fills a whole leaf.
fn leaf_splits(hashes: &[(u32, u32)]) -> Option<Vec<std::ops::Range<usize>>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < hashes.len() {
        let mut end = (start + LEAFN_ENTRIES).min(hashes.len());
        while end < hashes.len() && end > start && hashes[end].0 == hashes[end - 1].0 {
            end -= 1;
        }
        if end == start {
            return None;
        }
        out.push(start..end);
        start = end;
    }
    Some(out)
}

/// How many node-form leaves `entries` need (with `.` and `..`).
pub fn node_form_leaves(entries: &[Entry<'_>]) -> Option<usize> {
    let mut hashes: Vec<(u32, u32)> = [&b"."[..], b".."]
        .into_iter()
        .chain(entries.iter().map(|e| e.name))
        .map(|n| (hash(n), 0))
        .collect();
    hashes.sort();
    leaf_splits(&hashes).map(|s| s.len())
}

/// A node-form directory: data blocks at `data_devs`, the da node at
/// `node_dev` (logical [`LEAF_BLOCK`]), the leaves at `leaf_devs` (logical
/// blocks after it, as many as [`node_form_leaves`] says) and the free
/// index at `free_dev` (logical [`FREE_BLOCK`]), in that order.
#[allow(clippy::too_many_arguments)]
pub fn node_form(
    owner: u64,
    parent: u64,
    entries: &[Entry<'_>],
    data_devs: &[u64],
    node_dev: u64,
    leaf_devs: &[u64],
    free_dev: u64,
    uuid: &[u8; 16],
) -> Option<Vec<Vec<u8>>> {
    let DataBlocks {
        mut blocks,
        hashes,
        bests,
    } = data_blocks(owner, parent, entries, data_devs, uuid);
    let splits = leaf_splits(&hashes)?;
    if splits.len() != leaf_devs.len() || splits.len() > LEAFN_ENTRIES {
        return None;
    }
    if bests.len() > (BLOCK as usize - LEAF_HDR) / 2 {
        return None;
    }
    let mut node = leaf_header(0x3ebe, node_dev, owner, uuid, 0, 0); // DA3_NODE
    be16(&mut node, 56, splits.len() as u16);
    be16(&mut node, 58, 1); // level
    let mut leaves = Vec::with_capacity(splits.len());
    for (i, (range, &dev)) in splits.iter().zip(leaf_devs).enumerate() {
        let logical = LEAF_BLOCK + 1 + i as u64;
        let forw = if i + 1 < splits.len() { logical + 1 } else { 0 };
        let back = if i > 0 { logical - 1 } else { 0 };
        let mut leaf = leaf_header(0x3dff, dev, owner, uuid, forw, back); // LEAFN
        be16(&mut leaf, 56, range.len() as u16);
        for (k, (h, addr)) in hashes[range.clone()].iter().enumerate() {
            be32(&mut leaf, LEAF_HDR + 8 * k, *h);
            be32(&mut leaf, LEAF_HDR + 8 * k + 4, *addr);
        }
        set_crc(&mut leaf, 12);
        leaves.push(leaf);
        be32(&mut node, LEAF_HDR + 8 * i, hashes[range.end - 1].0);
        be32(&mut node, LEAF_HDR + 8 * i + 4, logical as u32);
    }
    set_crc(&mut node, 12);
    let mut free = vec![0u8; BLOCK as usize];
    be32(&mut free, 0, 0x5844_4633); // XDF3
    be64(&mut free, 8, free_dev * (BLOCK / SECTOR));
    free[24..40].copy_from_slice(uuid);
    be64(&mut free, 40, owner);
    be32(&mut free, 48, 0); // firstdb
    be32(&mut free, 52, bests.len() as u32); // nvalid
    be32(&mut free, 56, bests.len() as u32); // nused
    for (i, best) in bests.iter().enumerate() {
        be16(&mut free, LEAF_HDR + 2 * i, *best);
    }
    set_crc(&mut free, 4);
    blocks.push(node);
    blocks.extend(leaves);
    blocks.push(free);
    Some(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_xfs_da_hashname() {
        // Values from the kernel's algorithm worked by hand.
        assert_eq!(hash(b""), 0);
        assert_eq!(hash(b"."), 0x2e);
        assert_eq!(hash(b".."), (0x2e << 7) ^ 0x2e);
        let abcd = (u32::from(b'a') << 21)
            ^ (u32::from(b'b') << 14)
            ^ (u32::from(b'c') << 7)
            ^ u32::from(b'd');
        assert_eq!(hash(b"abcd"), abcd);
        assert_eq!(hash(b"abcde"), u32::from(b'e') ^ abcd.rotate_left(7));
    }

    #[test]
    fn shortform_offsets_follow_the_block_layout() {
        let e = [
            Entry {
                name: b"a",
                ino: 70,
                ftype: 1,
            },
            Entry {
                name: b"bcdefghij",
                ino: 71,
                ftype: 2,
            },
        ];
        let sf = shortform(64, &e).unwrap();
        assert_eq!(&sf[..6], &[2, 0, 0, 0, 0, 64]);
        assert_eq!(&sf[6..9], &[1, 0, 96]);
        // The second entry starts after the first: 1+2+1+1+4 bytes.
        assert_eq!(&sf[15..18], &[9, 0, 96 + 16]);
        let many: Vec<Vec<u8>> = (0..40)
            .map(|i| format!("name-{i:04}").into_bytes())
            .collect();
        let big: Vec<Entry<'_>> = many
            .iter()
            .map(|n| Entry {
                name: n,
                ino: 99,
                ftype: 1,
            })
            .collect();
        assert!(shortform(64, &big).is_none());
        assert!(block_form(80, 64, &big, 1000, &[0; 16]).is_some());
    }
}
