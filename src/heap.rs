//! Warm the heap while the network is slow.
//!
//! A cold lazy disk waits ~15 ms on registry round trips, then parses the
//! tables of contents and plans the filesystem on the opening thread, which
//! writes ~10 MB of memory the process has never touched. Every fresh page
//! costs a fault, a zeroed page and its accounting: ~2 µs each on these
//! machines, ~5 ms in all, a sixth of the time to ready. [`Warming`] takes
//! those pages from the kernel while the opening thread only waits, on a
//! helper thread that runs only on an otherwise idle core (`SCHED_IDLE`),
//! and leaves them in glibc's main heap, where the opening thread's later
//! allocations come from. [`settled`] has glibc keep less once the disk is
//! open.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Largest allocation served from the heap rather than from a mapping of
/// its own, while warm: glibc's ceiling for its adaptive threshold, so
/// that big buffers too reuse the warmed pages.
const WARM_MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Free memory at the heap's top that glibc keeps rather than returns,
/// while warm: the warmed pages must outlive their own free.
/// ([`settled`] lowers it.)
const WARM_TRIM_THRESHOLD: libc::c_int = 256 << 20;

/// Free memory at the heap's top kept once settled. glibc's default
/// (128 KiB) adapts upward as big buffers are freed, which setting any
/// threshold stops for good: this is enough for a few span buffers to be
/// reused without faults, while more goes back to the system.
const SETTLED_TRIM_THRESHOLD: libc::c_int = 16 << 20;

/// Bytes per page touched.
const PAGE: usize = 4096;

/// A block of the main heap being faulted in by a helper thread, which
/// frees it when done: from then on the opening thread's allocations (the
/// table of contents it fetches and parses, then the plan) reuse it.
pub struct Warming {
    /// Tells the helper to stop early.
    stop: Arc<AtomicBool>,
    /// The helper.
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The address and length of the block (a raw pointer is not `Send`).
#[derive(Clone, Copy)]
struct Block {
    /// Start address.
    addr: usize,
    /// Length in bytes.
    len: usize,
}

impl Warming {
    /// Start faulting in `bytes` of the heap of the calling thread, which
    /// should be the main thread (glibc's main heap is the one that grows
    /// in place; other threads' arenas are mappings of their own). Best
    /// effort: `None` if the block or the helper cannot be had.
    pub fn start(bytes: usize) -> Option<Warming> {
        // SAFETY: mallopt only changes glibc's allocation thresholds; no
        // allocation is touched.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, WARM_MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, WARM_TRIM_THRESHOLD);
        }
        // SAFETY: a plain allocation, checked for null below.
        let p = unsafe { libc::malloc(bytes) };
        if p.is_null() {
            return None;
        }
        let block = Block {
            addr: p as usize,
            len: bytes,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("ocidisk-warm".into())
                .spawn(move || touch(block, &stop))
        };
        match thread {
            Ok(t) => Some(Warming {
                stop,
                thread: Some(t),
            }),
            Err(e) => {
                tracing::debug!("no heap warming: {e}");
                // SAFETY: `p` came from malloc above; nothing else has it.
                unsafe { libc::free(p) };
                None
            }
        }
    }

    /// Stop the helper where it is; the block is back in the heap, its
    /// pages faulted in, for the calling thread's next allocations.
    pub fn finish(mut self) {
        self.stop_helper();
    }

    fn stop_helper(&mut self) {
        let Some(t) = self.thread.take() else { return };
        self.stop.store(true, Ordering::Relaxed);
        let _ = t.join();
    }
}

impl Drop for Warming {
    fn drop(&mut self) {
        self.stop_helper();
    }
}

/// The helper: idle priority, one write per page of the block (until told
/// to stop), then the block back to the heap.
fn touch(block: Block, stop: &AtomicBool) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets the calling thread's own policy from a valid param; a
    // failure leaves it as it was.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    let mut at = 0;
    while at < block.len && !stop.load(Ordering::Relaxed) {
        // SAFETY: `at < len`: inside the block, which only this thread
        // has. Volatile so that the store is not elided.
        unsafe { ((block.addr + at) as *mut u8).write_volatile(0) };
        at += PAGE;
    }
    // SAFETY: the block came from malloc in `Warming::start`, was handed
    // to this thread alone, and is freed once, here.
    unsafe { libc::free(block.addr as *mut libc::c_void) };
}

/// For when the opening is done: keep less free memory (the mapping
/// threshold stays where glibc's adaptive one would end up with a disk's
/// big buffers), and hand the heap's free memory back to the system.
pub fn settled() {
    // SAFETY: mallopt changes a threshold only; malloc_trim releases only
    // free memory and touches no live allocation.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, SETTLED_TRIM_THRESHOLD);
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minor page faults of the calling thread so far.
    fn minor_faults() -> i64 {
        // SAFETY: getrusage fills the struct it is given; all-zero is a
        // valid `rusage`.
        unsafe {
            let mut u: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_THREAD, &mut u);
            u.ru_minflt
        }
    }

    impl Warming {
        /// Let the helper touch the whole block and hand it back.
        fn complete(mut self) {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    // One test: the thresholds are process-wide.
    #[test]
    fn the_warmed_pages_serve_the_next_allocations_without_faults() {
        let len = 8 << 20;
        Warming::start(len).expect("an 8 MiB block").complete();
        let before = minor_faults();
        let v = vec![1u8; 6 << 20];
        let faults = minor_faults() - before;
        assert!(v.iter().all(|&b| b == 1));
        let pages = (v.len() / PAGE) as i64;
        assert!(
            faults < pages / 4,
            "{faults} faults for {pages} pages the warming had touched"
        );
        drop(v);
        settled();
        // Stopped before it is done (dropped at once): freed once, and the
        // heap goes on working.
        drop(Warming::start(64 << 20));
        let w: Vec<u64> = (0..1 << 20).collect();
        assert_eq!(w.iter().sum::<u64>(), (1 << 19) * ((1 << 20) - 1));
    }
}
