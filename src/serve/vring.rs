//! One virtqueue of a connection: the ring and eventfds the frontend sets
//! up, its in-flight records, and the worker thread that serves it.
//!
//! The worker sleeps on the guest's kick eventfd and on a wake eventfd the
//! connection pokes when the ring's setup changes. It serves requests in
//! batches of at most [`BATCH`] with the ring's lock released between
//! them, so the frontend's control messages for the ring (stop, reset) get
//! through even while a guest keeps the queue full. A queue the guest
//! corrupts (an avail index beyond the ring, a ring outside its memory) is
//! marked broken and ignored until the driver resets it; the worker never
//! dies of guest input.
//!
//! With in-flight tracking ([`super::inflight`]), every head taken from the
//! available ring is recorded before its request runs and unrecorded once
//! its used element is published. When the ring starts, heads a previous
//! server left in flight are served first, oldest first, then the ring
//! carries on where the used index says.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::inflight::{InflightRegion, QueueInflight};
use super::request::{BlockDevice, Completion, RequestError, RequestHandler};

/// Requests handled per batch before the ring's lock is released.
pub const BATCH: usize = 256;

/// What every queue of a connection shares.
pub struct Shared {
    /// The disk.
    pub device: Arc<dyn BlockDevice>,
    /// GET_ID's answer.
    pub serial: String,
    /// Guest memory, as the frontend shared it.
    pub mem: GuestMemoryAtomic<GuestMemoryMmap>,
    /// Failed requests so far (for rate-limited logging).
    pub failures: AtomicU64,
}

/// The ring as the frontend set it up.
pub struct State {
    queue: Queue,
    kick: Option<Arc<EventFd>>,
    call: Option<EventFd>,
    enabled: bool,
    started: bool,
    broken: bool,
    inflight: Option<QueueInflight>,
    /// Heads a previous server left in flight, to serve first.
    resubmit: VecDeque<u16>,
    /// Used buffers were published while there was no call eventfd to
    /// signal: signal as soon as one arrives.
    owe_signal: bool,
}

/// One virtqueue and its worker's controls.
pub struct Vring {
    index: usize,
    state: Mutex<State>,
    wake: EventFd,
    exit: AtomicBool,
}

impl Vring {
    /// Queue `index`, at most `max_size` entries.
    pub fn new(index: usize, max_size: u16) -> std::io::Result<Arc<Vring>> {
        let queue = Queue::new(max_size).map_err(std::io::Error::other)?;
        Ok(Arc::new(Vring {
            index,
            state: Mutex::new(State {
                queue,
                kick: None,
                call: None,
                enabled: false,
                started: false,
                broken: false,
                inflight: None,
                resubmit: VecDeque::new(),
                owe_signal: false,
            }),
            wake: EventFd::new(EFD_NONBLOCK)?,
            exit: AtomicBool::new(false),
        }))
    }

    /// The ring's state, for the connection to change.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Tell the worker to look again (its kick fd or the ring changed).
    pub fn wake(&self) {
        let _ = self.wake.write(1);
    }

    /// Start the worker thread.
    pub fn spawn(
        self: &Arc<Self>,
        shared: Arc<Shared>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name(format!("ocidisk-queue{}", self.index))
            .spawn(move || me.run(&shared))
    }

    /// Make the worker leave after its current batch.
    pub fn exit(&self) {
        self.exit.store(true, Ordering::SeqCst);
        self.wake();
    }

    fn run(&self, shared: &Shared) {
        loop {
            if self.exit.load(Ordering::SeqCst) {
                return;
            }
            let kick = self.lock().kick.clone();
            let mut fds = [
                libc::pollfd {
                    fd: self.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    // poll ignores a negative descriptor.
                    fd: kick.as_ref().map_or(-1, |k| k.as_raw_fd()),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfd structs that lives
            // across the call; the wake fd is owned by `self` and the kick fd
            // by the `kick` Arc held until after poll returns.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!(queue = self.index, "waiting for the guest: {e}");
                    return;
                }
                continue;
            }
            if fds[0].revents != 0 {
                let _ = self.wake.read();
            }
            if let Some(k) = &kick
                && fds[1].revents != 0
            {
                let _ = k.read();
            }
            if self.exit.load(Ordering::SeqCst) {
                return;
            }
            self.process(shared);
        }
    }

    /// Serve what is waiting: heads left in flight first, then the
    /// available ring, a batch at a time.
    fn process(&self, shared: &Shared) {
        let mut handler = RequestHandler::new(&*shared.device, &shared.serial);
        loop {
            if self.exit.load(Ordering::SeqCst) {
                return;
            }
            let mem = shared.mem.memory();
            test_pause();
            let mut st = self.lock();
            if !(st.started && st.enabled) || st.broken {
                return;
            }
            let mut turn = Turn {
                mem: &mem,
                handler: &mut handler,
                shared,
                queue: self.index,
            };
            let more = if st.resubmit.is_empty() {
                st.batch(&mut turn)
            } else {
                st.resubmit_batch(&mut turn)
            };
            match more {
                Ok(true) => continue,
                Ok(false) | Err(virtio_queue::Error::QueueNotReady) => return,
                // The ring itself may lie in a region the driver added
                // after this turn's snapshot: not broken, just seen with
                // an old table. Take the new one and look again.
                Err(_) if !std::ptr::eq(&*mem, &*shared.mem.memory()) => continue,
                Err(e) => {
                    st.broken = true;
                    tracing::error!(
                        queue = self.index,
                        "the guest broke queue {} ({e}); ignoring it until the driver resets it",
                        self.index
                    );
                    return;
                }
            }
        }
    }
}

/// For tests: `OCIDISK_TEST_TURN_PAUSE_MS` makes each worker turn pause
/// right after it takes its memory snapshot, so that a driver's memory
/// table changes during the turn (tests/serve_blkio.rs).
fn test_pause() {
    static PAUSE: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    let pause = PAUSE.get_or_init(|| {
        std::env::var("OCIDISK_TEST_TURN_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis)
    });
    if let Some(p) = pause {
        std::thread::sleep(*p);
    }
}

/// What one turn of a worker serves with, besides the ring.
struct Turn<'a, 'd> {
    /// Guest memory, as of this turn.
    mem: &'a GuestMemoryMmap,
    handler: &'a mut RequestHandler<'d>,
    shared: &'a Shared,
    queue: usize,
}

impl Turn<'_, '_> {
    /// Run one request, turning a panic in the device path into a failed
    /// request rather than a dead worker (and a lock held forever).
    fn run(&mut self, chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> Completion {
        let (handler, mem) = (&mut *self.handler, self.mem);
        let done =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.handle(mem, chain)))
                .unwrap_or(Completion {
                    written: 0,
                    error: Some(RequestError::Panicked),
                });
        if let Some(e) = &done.error {
            // A guest can fail requests in a loop: log the first ones, then
            // ever more rarely.
            let n = self.shared.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n <= 20 || n.is_power_of_two() {
                tracing::warn!(queue = self.queue, failures = n, "request failed: {e}");
            }
        }
        done
    }
}

impl State {
    /// Set the ring size (`SET_VRING_NUM`).
    pub fn set_size(&mut self, size: u16) -> Result<(), virtio_queue::Error> {
        self.queue.try_set_size(size)
    }

    /// Set the ring's guest addresses (`SET_VRING_ADDR`); the next used
    /// index is what the ring says (after a guest reboot it is 0 again).
    pub fn set_addresses(
        &mut self,
        mem: &GuestMemoryMmap,
        desc: GuestAddress,
        avail: GuestAddress,
        used: GuestAddress,
    ) -> Result<(), virtio_queue::Error> {
        self.queue.try_set_desc_table_address(desc)?;
        self.queue.try_set_avail_ring_address(avail)?;
        self.queue.try_set_used_ring_address(used)?;
        let idx = self.queue.used_idx(mem, Ordering::Acquire)?;
        self.queue.set_next_used(idx.0);
        Ok(())
    }

    /// Where to take the next available entry (`SET_VRING_BASE`).
    pub fn set_next_avail(&mut self, base: u16) {
        self.queue.set_next_avail(base);
    }

    /// Use event-index notifications or not (from the features).
    pub fn set_event_idx(&mut self, on: bool) {
        self.queue.set_event_idx(on);
    }

    /// The guest's kick eventfd (`SET_VRING_KICK`).
    pub fn set_kick(&mut self, kick: Option<EventFd>) {
        self.kick = kick.map(Arc::new);
    }

    /// The eventfd to signal used buffers on (`SET_VRING_CALL`).
    pub fn set_call(&mut self, call: Option<EventFd>) {
        self.call = call;
        if let Some(c) = &self.call
            && std::mem::take(&mut self.owe_signal)
        {
            let _ = c.write(1);
        }
    }

    /// Enable or disable the ring (`SET_VRING_ENABLE`).
    pub fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
    }

    /// Start the ring (its kick fd arrived). With an in-flight region, take
    /// back what a previous server left in flight: those heads are served
    /// first, and the available ring resumes after them.
    pub fn start(&mut self, index: usize, mem: &GuestMemoryMmap, region: Option<&InflightRegion>) {
        if self.started {
            return;
        }
        self.started = true;
        self.broken = false;
        self.queue.set_ready(true);
        self.resubmit.clear();
        self.inflight = region.and_then(|r| r.queue(index, self.queue.size()));
        if region.is_some() && self.inflight.is_none() {
            tracing::warn!(
                queue = index,
                "the inflight region does not fit queue {index} ({} entries): not tracking it",
                self.queue.size()
            );
        }
        let Some(inflight) = self.inflight.as_mut() else {
            return;
        };
        let used = match self.queue.used_idx(mem, Ordering::Acquire) {
            Ok(u) => u.0,
            Err(e) => {
                tracing::error!(queue = index, "reading the used ring at start: {e}");
                self.broken = true;
                return;
            }
        };
        let heads = inflight.recover(used);
        self.queue.set_next_used(used);
        // Every head the guest made available is either used or in flight.
        self.queue
            .set_next_avail(used.wrapping_add(heads.len() as u16));
        if !heads.is_empty() {
            tracing::info!(
                queue = index,
                "resubmitting {} request(s) left in flight by the previous server",
                heads.len()
            );
        }
        self.resubmit = heads.into();
    }

    /// Stop the ring (`GET_VRING_BASE`): returns where the available ring
    /// stands. Heads not yet resubmitted stay recorded for the next start.
    pub fn stop(&mut self) -> u16 {
        self.started = false;
        self.broken = false;
        self.queue.set_ready(false);
        self.kick = None;
        self.call = None;
        self.owe_signal = false;
        self.inflight = None;
        self.resubmit.clear();
        self.queue.next_avail()
    }

    /// The driver reset the device: the ring is usable again.
    pub fn clear_broken(&mut self) {
        self.broken = false;
    }

    /// Publish `head`'s used element, keeping the in-flight records right
    /// around it.
    fn complete(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        written: u32,
    ) -> Result<(), virtio_queue::Error> {
        if let Some(i) = &self.inflight {
            i.completing(head);
        }
        self.queue.add_used(mem, head, written)?;
        if let Some(i) = &self.inflight {
            i.completed(head, self.queue.next_used());
        }
        Ok(())
    }

    fn signal(&mut self, mem: &GuestMemoryMmap, queue: usize) -> Result<(), virtio_queue::Error> {
        if !self.queue.needs_notification(mem)? {
            return Ok(());
        }
        match &self.call {
            None => self.owe_signal = true,
            Some(call) => {
                if let Err(e) = call.write(1) {
                    tracing::warn!(queue, "signalling the guest: {e}");
                    return Err(virtio_queue::Error::QueueNotReady);
                }
            }
        }
        Ok(())
    }

    /// Serve `chains` in order, publish each used element, and signal the
    /// guest once if it wants to know.
    fn serve_chains(
        &mut self,
        chains: Vec<virtio_queue::DescriptorChain<&GuestMemoryMmap>>,
        turn: &mut Turn,
    ) -> Result<(), virtio_queue::Error> {
        if chains.is_empty() {
            return Ok(());
        }
        for chain in chains {
            let head = chain.head_index();
            let done = turn.run(chain);
            self.complete(turn.mem, head, done.written)?;
        }
        self.signal(turn.mem, turn.queue)
    }

    /// One batch from the available ring; true if more may be waiting.
    fn batch(&mut self, turn: &mut Turn) -> Result<bool, virtio_queue::Error> {
        let mem = turn.mem;
        let event_idx = self.queue.event_idx_enabled();
        if event_idx {
            self.queue.disable_notification(mem)?;
        }
        let chains: Vec<_> = self.queue.iter(mem)?.take(BATCH).collect();
        // A driver adds a memory region (ADD_MEM_REG, acknowledged) before
        // it publishes requests into it: a request seen here may need a
        // region newer than this turn's snapshot. If the table changed, put
        // the requests back and take them again with the new one.
        if !chains.is_empty() && !std::ptr::eq(mem, &*turn.shared.mem.memory()) {
            let n = chains.len() as u16;
            drop(chains);
            let next = self.queue.next_avail().wrapping_sub(n);
            self.queue.set_next_avail(next);
            return Ok(true);
        }
        let full = chains.len() == BATCH;
        if let Some(i) = self.inflight.as_mut() {
            for c in &chains {
                i.taken(c.head_index());
            }
        }
        self.serve_chains(chains, turn)?;
        if full {
            return Ok(true);
        }
        // With EVENT_IDX, re-enabling notifications tells us whether the
        // driver added more while we worked: go again, or a kick is lost.
        Ok(event_idx && self.queue.enable_notification(mem)?)
    }

    /// Serve up to [`BATCH`] heads a previous server left in flight.
    ///
    /// virtio-queue builds descriptor chains only from an available ring,
    /// and the guest's ring may since hold other entries in those slots; so
    /// the heads go into a private ring in memory of our own, placed past
    /// the guest's, and a second queue over the guest's descriptor table
    /// reads them from there. Descriptors are still walked in the guest's
    /// table, and every data buffer is resolved in guest memory only.
    fn resubmit_batch(&mut self, turn: &mut Turn) -> Result<bool, virtio_queue::Error> {
        let (mem, queue) = (turn.mem, turn.queue);
        let n = self.resubmit.len().min(BATCH);
        let heads: Vec<u16> = self.resubmit.drain(..n).collect();
        let (view, mut replay) = match replay_queue(&self.queue, mem, &heads) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(queue, "cannot resubmit {n} request(s) left in flight: {e}");
                return Err(virtio_queue::Error::QueueNotReady);
            }
        };
        let chains: Vec<_> = replay.iter(&view)?.collect();
        self.serve_chains(chains, turn)?;
        Ok(true)
    }
}

/// Guest memory plus a private page past it holding an available ring
/// with `heads`, and a queue that reads the guest's descriptor table
/// through that ring.
fn replay_queue(
    real: &Queue,
    mem: &GuestMemoryMmap,
    heads: &[u16],
) -> Result<(GuestMemoryMmap, Queue), String> {
    let size = real.size();
    // flags, idx, ring[size], used_event; then the used ring.
    let avail_len = 4 + 2 * size as u64 + 2;
    let used_len = 4 + 8 * size as u64 + 2;
    let len = (avail_len.next_multiple_of(4) + used_len).next_multiple_of(4096);
    let end = mem
        .iter()
        .map(|r| r.start_addr().0 + r.len())
        .max()
        .unwrap_or(0);
    let base = end
        .checked_next_multiple_of(1 << 20)
        .filter(|b| b.checked_add(len).is_some())
        .ok_or("guest memory reaches the end of the address space")?;
    let page = MmapRegion::new(len as usize).map_err(|e| e.to_string())?;
    let page = GuestRegionMmap::new(page, GuestAddress(base)).ok_or("placing the private ring")?;
    let view = mem
        .insert_region(Arc::new(page))
        .map_err(|e| e.to_string())?;
    let avail = GuestAddress(base);
    let used = GuestAddress(base + avail_len.next_multiple_of(4));
    view.write_obj(heads.len() as u16, GuestAddress(base + 2))
        .map_err(|e| e.to_string())?;
    for (i, h) in heads.iter().enumerate() {
        view.write_obj(*h, GuestAddress(base + 4 + 2 * i as u64))
            .map_err(|e| e.to_string())?;
    }
    let mut q = Queue::new(size).map_err(|e| e.to_string())?;
    q.try_set_size(size).map_err(|e| e.to_string())?;
    q.try_set_desc_table_address(GuestAddress(real.desc_table()))
        .map_err(|e| e.to_string())?;
    q.try_set_avail_ring_address(avail)
        .map_err(|e| e.to_string())?;
    q.try_set_used_ring_address(used)
        .map_err(|e| e.to_string())?;
    q.set_ready(true);
    Ok((view, q))
}
