//! In-flight request tracking for split rings
//! (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`), so a VM carries on when
//! `serve` dies and is started again.
//!
//! The backend allocates a shared buffer when the frontend asks
//! (`GET_INFLIGHT_FD`); the frontend keeps it and hands it to every later
//! backend (`SET_INFLIGHT_FD`), across our restarts. In it, per queue, the
//! backend marks each descriptor head it takes from the available ring
//! (with a counter that keeps their order) and unmarks it once its used
//! element is published. A backend that dies leaves the marks of the
//! requests it had taken but not completed; the next one reads them back
//! and resubmits those requests, oldest first. The layout and the rules are
//! the vhost-user specification's ("Inflight I/O tracking"):
//!
//! ```text
//! queue region: u64 features | u16 version | u16 desc_num | u16 last_batch_head | u16 used_idx
//!               desc_num × { u8 inflight, u8 pad[5], u16 next, u64 counter }
//! ```
//!
//! The buffer is shared with the frontend only, never with the guest; it
//! is still read defensively (heads beyond the queue, a version or size we
//! did not write) so a damaged one costs a reset, never a wrong request.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory};

/// Bytes of a queue region's header.
const HEADER: usize = 16;
/// Bytes of one descriptor's state.
const DESC: usize = 16;
/// Queue regions start at multiples of this.
const ALIGN: usize = 64;
/// The region version we write.
const VERSION: u16 = 1;

const OFF_VERSION: usize = 8;
const OFF_DESC_NUM: usize = 10;
const OFF_LAST_BATCH_HEAD: usize = 12;
const OFF_USED_IDX: usize = 14;
const DESC_INFLIGHT: usize = 0;
const DESC_NEXT: usize = 6;
const DESC_COUNTER: usize = 8;

/// Errors of the in-flight region.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    /// The frontend asked for a region no queue can use.
    #[error("inflight region for {queues} queue(s) of {size} entries: not a valid queue shape")]
    Shape {
        /// Number of queues asked for.
        queues: u16,
        /// Entries per queue.
        size: u16,
    },
    /// The region the frontend handed over is smaller than its queues need.
    #[error(
        "inflight region of {given} bytes: {queues} queue(s) of {size} entries need {need} bytes"
    )]
    TooSmall {
        /// Bytes given.
        given: u64,
        /// Bytes needed.
        need: u64,
        /// Number of queues.
        queues: u16,
        /// Entries per queue.
        size: u16,
    },
    /// Creating the shared memory file failed.
    #[error("creating the inflight region: {0}")]
    Create(std::io::Error),
    /// Mapping the shared memory failed.
    #[error("mapping the inflight region ({size} bytes at offset {offset}): {reason}")]
    Map {
        /// Bytes to map.
        size: u64,
        /// Offset in the file.
        offset: u64,
        /// What vm-memory said.
        reason: String,
    },
}

/// Bytes one queue's part of the region takes for a queue of `size`
/// entries.
pub fn queue_region_size(size: u16) -> usize {
    (HEADER + DESC * size as usize).next_multiple_of(ALIGN)
}

/// Check a queue shape: 1 to 32,768 queues of 1 to 32,768 entries.
fn check_shape(queues: u16, size: u16) -> Result<(), InflightError> {
    if queues == 0 || size == 0 || size > 32768 || queues > 32768 {
        return Err(InflightError::Shape { queues, size });
    }
    Ok(())
}

/// A zeroed shared buffer for `queues` queues of `size` entries, as
/// `GET_INFLIGHT_FD` answers: the file and its length.
pub fn allocate(queues: u16, size: u16) -> Result<(File, u64), InflightError> {
    check_shape(queues, size)?;
    let len = (queues as usize * queue_region_size(size)) as u64;
    // SAFETY: memfd_create takes a NUL-terminated name (a C string literal)
    // and flags; it returns a new descriptor or -1, checked below.
    let fd = unsafe {
        libc::memfd_create(
            c"ocidisk-inflight".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(InflightError::Create(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns; the File
    // takes sole ownership and closes it.
    let file = unsafe { File::from_raw_fd(fd) };
    // A new memfd reads as zeros: every queue starts uninitialised
    // (version 0).
    file.set_len(len).map_err(InflightError::Create)?;
    Ok((file, len))
}

/// The frontend's in-flight buffer, mapped.
pub struct InflightRegion {
    map: Arc<MmapRegion>,
    queues: u16,
    size: u16,
}

impl InflightRegion {
    /// Map the buffer `SET_INFLIGHT_FD` hands over: `len` bytes at `offset`
    /// of `file`, for `queues` queues of `size` entries.
    pub fn map(
        file: File,
        offset: u64,
        len: u64,
        queues: u16,
        size: u16,
    ) -> Result<InflightRegion, InflightError> {
        check_shape(queues, size)?;
        let need = (queues as usize * queue_region_size(size)) as u64;
        if len < need {
            return Err(InflightError::TooSmall {
                given: len,
                need,
                queues,
                size,
            });
        }
        let map_err = |reason: String| InflightError::Map {
            size: need,
            offset,
            reason,
        };
        // Map only what the queues use, and never past the file's end (a
        // mapping beyond it would fault on access).
        let file_len = file.metadata().map_err(|e| map_err(e.to_string()))?.len();
        if offset.checked_add(need).is_none_or(|end| end > file_len) {
            return Err(map_err(format!("the file holds only {file_len} bytes")));
        }
        let map = MmapRegion::from_file(FileOffset::new(file, offset), need as usize)
            .map_err(|e| map_err(e.to_string()))?;
        Ok(InflightRegion {
            map: Arc::new(map),
            queues,
            size,
        })
    }

    /// The part of the region for queue `index` of a ring with `size`
    /// entries; `None` when the region was made for other queues.
    pub fn queue(&self, index: usize, size: u16) -> Option<QueueInflight> {
        if index >= self.queues as usize || size != self.size {
            return None;
        }
        Some(QueueInflight {
            map: self.map.clone(),
            base: index * queue_region_size(self.size),
            size: self.size,
            counter: 0,
        })
    }
}

/// One queue's in-flight records.
pub struct QueueInflight {
    map: Arc<MmapRegion>,
    base: usize,
    size: u16,
    /// The order stamp for the next head taken.
    counter: u64,
}

impl QueueInflight {
    fn put<T: vm_memory::AtomicAccess>(&self, at: usize, v: T) {
        // Offsets are constants inside the region `map` was checked to
        // hold, and aligned for T: this cannot fail.
        let _ = self
            .map
            .as_volatile_slice()
            .store(v, self.base + at, Ordering::SeqCst);
    }

    fn get<T: vm_memory::AtomicAccess + Default>(&self, at: usize) -> T {
        self.map
            .as_volatile_slice()
            .load(self.base + at, Ordering::SeqCst)
            .unwrap_or_default()
    }

    fn desc(head: u16) -> usize {
        HEADER + DESC * head as usize
    }

    /// Make the region this queue's, fresh: zero it and write the header.
    fn reset(&mut self) {
        let len = queue_region_size(self.size);
        let _ = self
            .map
            .as_volatile_slice()
            .write_slice(&vec![0u8; len], self.base);
        self.put(OFF_DESC_NUM, self.size);
        self.put(OFF_VERSION, VERSION);
        self.counter = 0;
    }

    /// Read the records a previous backend left, when the ring starts with
    /// `ring_used` in its used index: finish the bookkeeping of a batch
    /// whose used elements were published but not yet unmarked, and return
    /// the heads still in flight, oldest first. An uninitialised or
    /// foreign region is reset and yields nothing.
    pub fn recover(&mut self, ring_used: u16) -> Vec<u16> {
        let version: u16 = self.get(OFF_VERSION);
        let desc_num: u16 = self.get(OFF_DESC_NUM);
        if version != VERSION || desc_num != self.size {
            if version != 0 {
                tracing::warn!(
                    "inflight region has version {version} for {desc_num} descriptors, not ours \
                     ({VERSION}, {}): starting it afresh",
                    self.size
                );
            }
            self.reset();
            return Vec::new();
        }
        let stored: u16 = self.get(OFF_USED_IDX);
        if stored != ring_used {
            // The last batch reached the used ring but its heads are still
            // marked: unmark them, following the batch list.
            let batch = ring_used.wrapping_sub(stored).min(self.size);
            let mut head: u16 = self.get(OFF_LAST_BATCH_HEAD);
            for _ in 0..batch {
                if head >= self.size {
                    break;
                }
                self.put(Self::desc(head) + DESC_INFLIGHT, 0u8);
                head = self.get(Self::desc(head) + DESC_NEXT);
            }
            self.put(OFF_USED_IDX, ring_used);
        }
        let mut heads: Vec<(u64, u16)> = (0..self.size)
            .filter(|&h| self.get::<u8>(Self::desc(h) + DESC_INFLIGHT) != 0)
            .map(|h| (self.get::<u64>(Self::desc(h) + DESC_COUNTER), h))
            .collect();
        heads.sort_unstable();
        self.counter = heads.last().map_or(0, |&(c, _)| c.wrapping_add(1));
        heads.into_iter().map(|(_, h)| h).collect()
    }

    /// Record that `head` was taken from the available ring.
    pub fn taken(&mut self, head: u16) {
        if head >= self.size {
            return;
        }
        self.put(Self::desc(head) + DESC_COUNTER, self.counter);
        self.counter = self.counter.wrapping_add(1);
        self.put(Self::desc(head) + DESC_INFLIGHT, 1u8);
    }

    /// Before `head`'s used element is published: make it the last batch
    /// (a batch of one).
    pub fn completing(&self, head: u16) {
        if head >= self.size {
            return;
        }
        let last: u16 = self.get(OFF_LAST_BATCH_HEAD);
        self.put(Self::desc(head) + DESC_NEXT, last);
        self.put(OFF_LAST_BATCH_HEAD, head);
    }

    /// After `head`'s used element is published and the ring's used index
    /// became `used_idx`: `head` is no longer in flight.
    pub fn completed(&self, head: u16, used_idx: u16) {
        if head < self.size {
            self.put(Self::desc(head) + DESC_INFLIGHT, 0u8);
        }
        self.put(OFF_USED_IDX, used_idx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(queues: u16, size: u16) -> (File, InflightRegion) {
        let (file, len) = allocate(queues, size).unwrap();
        let again = file.try_clone().unwrap();
        (
            file,
            InflightRegion::map(again, 0, len, queues, size).unwrap(),
        )
    }

    #[test]
    fn sizes_follow_the_spec_layout() {
        assert_eq!(queue_region_size(1), 64);
        assert_eq!(queue_region_size(128), 16 + 128 * 16 + 48);
        let (_f, len) = allocate(2, 256).unwrap();
        assert_eq!(len, 2 * queue_region_size(256) as u64);
        assert!(allocate(0, 128).is_err());
        assert!(allocate(1, 0).is_err());
    }

    #[test]
    fn a_fresh_region_has_nothing_in_flight() {
        let (_f, r) = region(1, 8);
        let mut q = r.queue(0, 8).unwrap();
        assert!(q.recover(0).is_empty());
        assert!(r.queue(0, 16).is_none(), "a ring of another size");
        assert!(r.queue(1, 8).is_none(), "a queue beyond the region");
    }

    #[test]
    fn heads_taken_and_not_completed_come_back_oldest_first() {
        let (file, r) = region(2, 8);
        let mut q = r.queue(1, 8).unwrap();
        q.recover(0);
        for head in [5, 2, 7, 0] {
            q.taken(head);
        }
        // 2 completes (used index 1), the others are still in flight.
        q.completing(2);
        q.completed(2, 1);
        drop(q);
        drop(r);

        // A new backend maps the same buffer.
        let len = file.metadata().unwrap().len();
        let r = InflightRegion::map(file, 0, len, 2, 8).unwrap();
        let mut q = r.queue(1, 8).unwrap();
        assert_eq!(q.recover(1), vec![5, 7, 0]);
        // The other queue was never touched.
        assert!(r.queue(0, 8).unwrap().recover(0).is_empty());
        // New heads are stamped after the resubmitted ones.
        q.taken(3);
        q.completing(5);
        q.completed(5, 2);
        let mut again = r.queue(1, 8).unwrap();
        assert_eq!(again.recover(2), vec![7, 0, 3]);
    }

    #[test]
    fn a_batch_published_but_not_unmarked_is_finished_on_recovery() {
        let (_f, r) = region(1, 8);
        let mut q = r.queue(0, 8).unwrap();
        q.recover(0);
        q.taken(4);
        q.taken(6);
        // The backend published 4's used element (the ring's used index is
        // now 1) and died before unmarking it.
        q.completing(4);
        let mut next = r.queue(0, 8).unwrap();
        assert_eq!(next.recover(1), vec![6]);
        // Recovery is idempotent.
        assert_eq!(r.queue(0, 8).unwrap().recover(1), vec![6]);
    }

    #[test]
    fn a_foreign_region_is_reset_not_trusted() {
        let (file, r) = region(1, 8);
        let mut q = r.queue(0, 8).unwrap();
        q.recover(0);
        q.taken(1);
        drop(q);
        // Someone rewrote the header: another version, other sizes.
        use std::os::unix::fs::FileExt;
        file.write_all_at(&9u16.to_le_bytes(), OFF_VERSION as u64)
            .unwrap();
        assert!(r.queue(0, 8).unwrap().recover(0).is_empty());
        assert!(r.queue(0, 8).unwrap().recover(0).is_empty());
        file.write_all_at(&100u16.to_le_bytes(), OFF_LAST_BATCH_HEAD as u64)
            .unwrap();
        // A used index far from the stored one with a head beyond the
        // queue: bounded, no panic.
        assert!(r.queue(0, 8).unwrap().recover(40000).is_empty());
    }

    #[test]
    fn a_short_or_misplaced_buffer_is_refused() {
        let (file, len) = allocate(1, 64).unwrap();
        let f2 = file.try_clone().unwrap();
        assert!(matches!(
            InflightRegion::map(file, 0, len - 1, 1, 64),
            Err(InflightError::TooSmall { .. })
        ));
        assert!(matches!(
            InflightRegion::map(f2, 4096, len, 1, 64),
            Err(InflightError::Map { .. })
        ));
    }
}
