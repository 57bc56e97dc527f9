//! Two planned images compared without reading either: which device bytes
//! of the new one are provably the same as the old one's at the same
//! offset. Layers are named by digest, so the same file bytes of a layer
//! both images use (at any position in either image) compare equal, and a
//! metadata block compares by content. Anything not provably equal counts
//! as changed (layer data against zeros or metadata, other layers, other
//! tar offsets): what `materialize --base` rewrites and `ocidisk diff`
//! reports.

use crate::digest::Digest;
use crate::fs::{BLOCK_SIZE, FsImage, Region};

/// One side of a comparison: a plan and its layers' digests, bottom first.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    /// The plan.
    pub image: &'a FsImage,
    /// Digest of each layer the plan's extents name.
    pub layers: &'a [Digest],
}

/// The device byte ranges of `new` (start, length), whole blocks, merged
/// and sorted, whose bytes may differ from `old`'s at the same offset.
/// Past the end of `old`, `new` is compared with zeros.
pub fn changed_ranges(old: Side<'_>, new: Side<'_>) -> Vec<(u64, u64)> {
    let end = new.image.size;
    let shared = end.min(old.image.size);
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut mark = |start: u64, len: u64| {
        let s = start / BLOCK_SIZE * BLOCK_SIZE;
        let e = (start + len).next_multiple_of(BLOCK_SIZE).min(end);
        match out.last_mut() {
            Some(last) if last.0 + last.1 >= s => last.1 = last.1.max(e - last.0),
            _ => out.push((s, e - s)),
        }
    };
    let mut a = old.image.regions(0, shared).peekable();
    let mut b = new.image.regions(0, shared).peekable();
    let mut at = 0u64;
    while at < shared {
        let (Some(&(ao, ar)), Some(&(bo, br))) = (a.peek(), b.peek()) else {
            break;
        };
        let (a_end, b_end) = (ao + ar.len(), bo + br.len());
        let to = a_end.min(b_end);
        if !same(&ar, at - ao, &br, at - bo, to - at, old, new) {
            mark(at, to - at);
        }
        at = to;
        if a_end == to {
            a.next();
        }
        if b_end == to {
            b.next();
        }
    }
    for (off, r) in new.image.regions(shared, end - shared) {
        if !matches!(r, Region::Zeros(_)) {
            mark(off, r.len());
        }
    }
    out
}

/// Whether `len` bytes from `da` into region `a` equal those from `db`
/// into `b`.
fn same(
    a: &Region<'_>,
    da: u64,
    b: &Region<'_>,
    db: u64,
    len: u64,
    old: Side<'_>,
    new: Side<'_>,
) -> bool {
    let r = |d: u64| d as usize..(d + len) as usize;
    match (a, b) {
        (Region::Zeros(_), Region::Zeros(_)) => true,
        (Region::Metadata(x), Region::Metadata(y)) => x[r(da)] == y[r(db)],
        (Region::Zeros(_), Region::Metadata(y)) => y[r(db)].iter().all(|b| *b == 0),
        (Region::Metadata(x), Region::Zeros(_)) => x[r(da)].iter().all(|b| *b == 0),
        (
            Region::Data {
                layer: la,
                tar_offset: ta,
                ..
            },
            Region::Data {
                layer: lb,
                tar_offset: tb,
                ..
            },
        ) => {
            let (Some(x), Some(y)) = (old.layers.get(*la), new.layers.get(*lb)) else {
                return false;
            };
            x == y && ta + da == tb + db
        }
        _ => false,
    }
}

/// 512 KiB chunks of the new image compared with the old one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChunkCount {
    /// Chunks of the new image that hold anything but zeros.
    pub chunks: u64,
    /// Of those, chunks whose every byte equals the old image's.
    pub shared: u64,
    /// Chunks with a changed byte (holding content or not: a chunk whose
    /// old content is gone counts too).
    pub changed: u64,
}

/// Chunk size of [`chunk_count`]: 512 KiB.
pub const CHUNK: u64 = 512 * 1024;

/// Count `image`'s non-zero chunks and how many of them `changed` (from
/// [`changed_ranges`]) leaves alone.
pub fn chunk_count(image: &FsImage, changed: &[(u64, u64)]) -> ChunkCount {
    let mut content: Vec<bool> = vec![false; image.size.div_ceil(CHUNK) as usize];
    for (off, r) in image.regions(0, image.size) {
        if !matches!(r, Region::Zeros(_)) {
            let last = (off + r.len() - 1) / CHUNK;
            for c in &mut content[(off / CHUNK) as usize..=last as usize] {
                *c = true;
            }
        }
    }
    let mut touched = vec![false; content.len()];
    for &(s, l) in changed {
        for t in &mut touched[(s / CHUNK) as usize..=((s + l - 1) / CHUNK) as usize] {
            *t = true;
        }
    }
    let chunks = content.iter().filter(|c| **c).count() as u64;
    let shared = content
        .iter()
        .zip(&touched)
        .filter(|(c, t)| **c && !**t)
        .count() as u64;
    let changed = touched.iter().filter(|t| **t).count() as u64;
    ChunkCount {
        chunks,
        shared,
        changed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::DataExtent;

    fn img(size: u64, meta: &[(u64, u8)], data: &[(u64, u64, usize, u64)]) -> FsImage {
        let mut i = FsImage {
            size,
            ..FsImage::default()
        };
        for &(b, v) in meta {
            i.put_block(b, vec![v; BLOCK_SIZE as usize]);
        }
        for &(device_offset, len, layer, tar_offset) in data {
            i.data.push(DataExtent {
                device_offset,
                len,
                layer,
                tar_offset,
            });
        }
        i
    }

    #[test]
    fn same_layer_bytes_at_the_same_place_are_shared() {
        let (l1, l2, l3) = (
            Digest::sha256_of(b"1"),
            Digest::sha256_of(b"2"),
            Digest::sha256_of(b"3"),
        );
        let b = BLOCK_SIZE;
        // old: meta block 0, layer l1 data at block 2, l2 data at block 4.
        let old = img(8 * b, &[(0, 1)], &[(2 * b, 100, 0, 512), (4 * b, 10, 1, 0)]);
        // new: meta block 0 changed, l1 data the same (as its layer 1),
        // l2 replaced by l3 at block 4, new data past the old end.
        let new = img(
            12 * b,
            &[(0, 2), (6, 0)],
            &[(2 * b, 100, 1, 512), (4 * b, 10, 2, 0), (10 * b, 5, 2, 99)],
        );
        let (old_l, new_l) = ([l1.clone(), l2], [Digest::sha256_of(b"0"), l1, l3]);
        let changed = changed_ranges(
            Side {
                image: &old,
                layers: &old_l,
            },
            Side {
                image: &new,
                layers: &new_l,
            },
        );
        assert_eq!(changed, vec![(0, b), (4 * b, b), (10 * b, b)]);
        let c = chunk_count(&new, &changed);
        assert_eq!(
            c,
            ChunkCount {
                chunks: 1,
                shared: 0,
                changed: 1
            }
        );
        // The same plan against itself: nothing changes.
        let same_side = Side {
            image: &new,
            layers: &new_l,
        };
        assert!(changed_ranges(same_side, same_side).is_empty());
    }
}
