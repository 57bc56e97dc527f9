//! One pass, cold: while `pull` streams a layer, each file's data is
//! written to its final place in the image, so the layer is not inflated a
//! second time to write it.
//!
//! That works because the data zone ([`crate::fs::zone`]) places a file by
//! its layer and tar order alone: a layer's region starts where the layers
//! below end, and the zone's skips are known before the tree is for ext4
//! ([`crate::fs::predicted_zone_map`]). The pull fetches layers one at a
//! time, bottom first, so a layer's region start is known when it starts.
//!
//! The guess is checked, not trusted. After planning, every data extent of
//! the plan counts as written only if the pass wrote exactly those tar bytes
//! at exactly that device offset ([`Early::reconcile`]). Whatever else the
//! pass wrote (slots of files a later layer replaced or deleted, or a whole
//! layer after a wrong guess) is punched out, and every extent not written
//! goes through the ordinary write pass. The file that results is the same,
//! byte for byte, as the one written from a warm cache.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::{Arc, Mutex};

use crate::fs::zone::{self, ZoneMap};
use crate::fs::{BLOCK_SIZE, DataExtent, FsImage};
use crate::layer_index::{LayerIndex, TarTap};
use crate::pull::LayerTaps;
use crate::sparse::Writeback;
use crate::tar::TarEntry;

/// What the pass wrote, shared by the taps of every layer.
#[derive(Debug, Default)]
struct Written {
    /// Device ranges a tap may have written into (everything it queued).
    touched: Vec<DataExtent>,
    /// Files' data written whole, as extents in the plan's form.
    complete: Vec<DataExtent>,
}

/// The taps of one materialize: where regions start, and what was written.
pub(super) struct Early {
    file: File,
    map: ZoneMap,
    /// Zone block of each layer's region start, known for the layers
    /// whose lower layers are all indexed.
    starts: Mutex<Vec<u64>>,
    written: Arc<Mutex<Written>>,
}

/// What the ordinary write pass still has to do after the one pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Leftover {
    /// Device byte ranges (start, len) that were written but hold nothing
    /// in the plan, or something else: punched before anything is written.
    pub punch: Vec<(u64, u64)>,
    /// The plan's data extents not written yet, by layer, sorted by tar
    /// offset.
    pub extents: Vec<Vec<DataExtent>>,
    /// File bytes the pass wrote where the plan wants them.
    pub streamed: u64,
}

impl Early {
    /// Taps writing into `file` (the image being built) through `map`.
    pub(super) fn new(file: File, map: ZoneMap) -> Early {
        Early {
            file,
            map,
            starts: Mutex::new(vec![0]),
            written: Arc::default(),
        }
    }

    /// Compare what was written with the plan: see [`Leftover`].
    pub(super) fn reconcile(&self, fs: &FsImage, layers: usize) -> Leftover {
        let w = lock(&self.written);
        reconcile(&w.touched, &w.complete, fs, layers)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A tap that panicked left whole records or none: still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LayerTaps for Early {
    fn tap(&self, i: usize) -> Option<Box<dyn TarTap>> {
        let start = *lock(&self.starts).get(i)?;
        let file = self.file.try_clone().ok()?;
        Some(Box::new(Tap {
            layer: i,
            file,
            map: self.map.clone(),
            cursor: start,
            next: 0,
            queue: VecDeque::new(),
            touched: Vec::new(),
            complete: Vec::new(),
            broken: false,
            shared: self.written.clone(),
            writeback: Writeback::default(),
        }))
    }

    fn indexed(&self, i: usize, index: &LayerIndex) {
        let mut starts = lock(&self.starts);
        if starts.len() == i + 1 {
            let next = zone::next_region(starts[i], zone::region_blocks(i, index.entries()));
            starts.push(next);
        }
    }
}

/// A file whose data the tap is waiting for.
struct Pending {
    /// Its data in the tar.
    tar: u64,
    len: u64,
    /// Its slot's device blocks (first, count), in file order.
    runs: Vec<(u64, u64)>,
}

impl Pending {
    /// The plan-shaped extents of its data.
    fn extents(&self, layer: usize) -> impl Iterator<Item = DataExtent> + '_ {
        let mut logical = 0u64;
        self.runs.iter().filter_map(move |&(first, count)| {
            let from = logical * BLOCK_SIZE;
            logical += count;
            let to = (logical * BLOCK_SIZE).min(self.len);
            (from < to).then_some(DataExtent {
                device_offset: first * BLOCK_SIZE,
                len: to - from,
                layer,
                tar_offset: self.tar + from,
            })
        })
    }
}

/// Writes one layer's file data as it streams.
struct Tap {
    layer: usize,
    file: File,
    map: ZoneMap,
    /// The zone block of the next file's slot.
    cursor: u64,
    /// Entries seen so far.
    next: usize,
    queue: VecDeque<Pending>,
    touched: Vec<DataExtent>,
    complete: Vec<DataExtent>,
    /// A write failed: write nothing more (the write pass does it, and
    /// reports the error).
    broken: bool,
    shared: Arc<Mutex<Written>>,
    /// The final fsync then waits for little.
    writeback: Writeback,
}

impl Tap {
    /// Give every new regular file its slot, as the zone does.
    fn slots(&mut self, entries: &[TarEntry]) {
        for e in entries.get(self.next..).unwrap_or_default() {
            let Some(f) = zone::entry_file(self.layer, e) else {
                continue;
            };
            let blocks = zone::slot_blocks(&f);
            if blocks == 0 {
                continue;
            }
            // Sparse files keep their holes through runs the plan makes;
            // the write pass places them.
            if f.sparse.is_none() {
                let p = Pending {
                    tar: f.offset,
                    len: f.len,
                    runs: self.map.runs(self.cursor, blocks),
                };
                self.touched.extend(p.extents(self.layer));
                self.queue.push_back(p);
            }
            self.cursor += blocks;
        }
        self.next = entries.len();
    }

    /// Write `data` (file bytes from `at` in the file) through `runs`.
    fn write(&mut self, runs: &[(u64, u64)], at: u64, data: &[u8]) -> std::io::Result<()> {
        let mut logical = 0u64;
        for &(first, count) in runs {
            let (from, to) = (logical * BLOCK_SIZE, (logical + count) * BLOCK_SIZE);
            logical += count;
            let (lo, hi) = (at.max(from), (at + data.len() as u64).min(to));
            if lo < hi {
                let piece = &data[(lo - at) as usize..(hi - at) as usize];
                let offset = first * BLOCK_SIZE + lo - from;
                super::write::write_nonzero(&self.file, piece, offset)?;
                self.writeback.wrote(&self.file, offset, piece.len() as u64);
            }
        }
        Ok(())
    }
}

impl TarTap for Tap {
    fn data(&mut self, pos: u64, data: &[u8], entries: &[TarEntry]) {
        if self.broken {
            return;
        }
        if self.next < entries.len() {
            self.slots(entries);
        }
        let end = pos + data.len() as u64;
        while let Some(p) = self.queue.pop_front() {
            if p.tar >= end {
                self.queue.push_front(p);
                break;
            }
            let (lo, hi) = (p.tar.max(pos), (p.tar + p.len).min(end));
            if lo < hi {
                let piece = &data[(lo - pos) as usize..(hi - pos) as usize];
                if self.write(&p.runs, lo - p.tar, piece).is_err() {
                    self.broken = true;
                    return;
                }
            }
            if p.tar + p.len > end {
                self.queue.push_front(p);
                break;
            }
            self.complete.extend(p.extents(self.layer));
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let mut w = lock(&self.shared);
        w.touched.append(&mut self.touched);
        w.complete.append(&mut self.complete);
    }
}

/// [`Early::reconcile`] on the records.
fn reconcile(
    touched: &[DataExtent],
    complete: &[DataExtent],
    fs: &FsImage,
    layers: usize,
) -> Leftover {
    let mut left = Leftover {
        extents: vec![Vec::new(); layers],
        ..Leftover::default()
    };
    // A stream that restarted wrote the same extents twice.
    let mut complete = complete.to_vec();
    complete.sort_by_key(|e| (e.layer, e.tar_offset, e.device_offset, e.len));
    complete.dedup();
    let mut matched: Vec<(u64, u64)> = Vec::new();
    for (i, out) in left.extents.iter_mut().enumerate() {
        let lo = complete.partition_point(|e| e.layer < i);
        let hi = complete.partition_point(|e| e.layer <= i);
        let done = &complete[lo..hi];
        for f in fs.extents_of_layer(i) {
            let k = done.partition_point(|e| e.tar_offset <= f.tar_offset);
            let hit = k.checked_sub(1).map(|k| done[k]).is_some_and(|e| {
                f.tar_offset + f.len <= e.tar_offset + e.len
                    && e.device_offset + (f.tar_offset - e.tar_offset) == f.device_offset
            });
            if hit {
                matched.push((f.device_offset, f.len));
                left.streamed += f.len;
            } else {
                out.push(f);
            }
        }
    }
    matched.sort_unstable();
    let mut touched: Vec<(u64, u64)> = touched
        .iter()
        .map(|e| (e.device_offset, e.device_offset + e.len))
        .collect();
    touched.sort_unstable();
    touched.dedup();
    // Everything touched that no matched extent covers: matched extents lie
    // inside touched ones, and touched ranges of different files never
    // overlap.
    let mut m = 0;
    for (start, end) in touched {
        let end = end.min(fs.size);
        let mut at = start;
        while m < matched.len() && matched[m].0 + matched[m].1 <= at {
            m += 1;
        }
        let mut j = m;
        while at < end {
            match matched.get(j) {
                Some(&(ms, ml)) if ms < end => {
                    if ms > at {
                        left.punch.push((at, ms - at));
                    }
                    at = at.max(ms + ml);
                    j += 1;
                }
                _ => {
                    left.punch.push((at, end - at));
                    at = end;
                }
            }
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(device_offset: u64, len: u64, layer: usize, tar_offset: u64) -> DataExtent {
        DataExtent {
            device_offset,
            len,
            layer,
            tar_offset,
        }
    }

    #[test]
    fn written_where_planned_counts_and_the_rest_is_punched() {
        let fs = FsImage {
            size: 1 << 20,
            data: vec![
                ext(0, 5000, 0, 512),      // written there: done
                ext(8192, 100, 0, 6144),   // written elsewhere: rewritten
                ext(16384, 10, 1, 512),    // not written: written later
                ext(20480, 4096, 1, 9000), // half written: rewritten
            ],
            ..FsImage::default()
        };
        let touched = [
            ext(0, 5000, 0, 512),
            ext(12288, 100, 0, 6144),
            ext(20480, 4096, 1, 9000),
            ext(2 << 20, 7, 0, 99999), // beyond the device: truncated away
        ];
        let complete = [
            ext(0, 5000, 0, 512),
            ext(12288, 100, 0, 6144),
            ext(0, 5000, 0, 512),
        ];
        let left = reconcile(&touched, &complete, &fs, 2);
        assert_eq!(left.streamed, 5000);
        assert_eq!(left.punch, vec![(12288, 100), (20480, 4096)]);
        assert_eq!(left.extents[0], vec![ext(8192, 100, 0, 6144)]);
        assert_eq!(
            left.extents[1],
            vec![ext(16384, 10, 1, 512), ext(20480, 4096, 1, 9000)]
        );
    }

    #[test]
    fn a_file_split_by_a_skip_matches_piece_by_piece() {
        // One file's slot crosses a skip: two extents, both written.
        let fs = FsImage {
            size: 1 << 20,
            data: vec![ext(4096, 4096, 0, 0), ext(65536, 100, 0, 4096)],
            ..FsImage::default()
        };
        let pieces = [ext(4096, 4096, 0, 0), ext(65536, 100, 0, 4096)];
        let left = reconcile(&pieces, &pieces, &fs, 1);
        assert_eq!(left.streamed, 4196);
        assert!(left.punch.is_empty());
        assert!(left.extents[0].is_empty());
    }

    #[test]
    fn a_dead_slot_is_punched_around_live_ones() {
        let fs = FsImage {
            size: 1 << 20,
            data: vec![ext(8192, 4096, 0, 4096)],
            ..FsImage::default()
        };
        let touched = [ext(0, 8192, 0, 100_000), ext(8192, 4096, 0, 4096)];
        let left = reconcile(&touched, &touched, &fs, 1);
        assert_eq!(left.punch, vec![(0, 8192)]);
        assert_eq!(left.streamed, 4096);
    }
}
