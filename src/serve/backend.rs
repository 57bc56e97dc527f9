//! The vhost-user-blk device model: features, config space and the queue
//! loop, on top of `vhost-user-backend`.
//!
//! One [`BlkBackend`] lives for one frontend connection; the device it
//! serves (and its cache and overlay) outlives connections. Each queue has
//! its own worker thread. A queue the guest corrupts (a bad avail index, a
//! ring outside its memory) is marked broken and ignored until the driver
//! resets it; the worker thread never dies of guest input.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, virtio_blk_config,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use super::request::{BlockDevice, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, RequestHandler, SECTOR};

/// The largest queue a driver may set up.
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// Requests handled per batch before the vring lock is released.
const BATCH: usize = 256;
/// Segments per request we advertise (QEMU's default for a 128-entry queue;
/// with indirect descriptors a request may use them all).
pub const SEG_MAX: u32 = 126;

/// A vhost-user-blk device for one connection.
pub struct BlkBackend {
    device: Arc<dyn BlockDevice>,
    serial: String,
    queues: usize,
    mem: RwLock<Option<GuestMemoryAtomic<GuestMemoryMmap>>>,
    broken: Vec<AtomicBool>,
    failures: AtomicU64,
    stopping: AtomicBool,
    /// Exit-event descriptors the library registers and never closes.
    exit_fds: std::sync::Mutex<Vec<std::os::fd::RawFd>>,
}

impl BlkBackend {
    /// A backend serving `device` on `queues` queues; GET_ID answers
    /// `serial`.
    pub fn new(device: Arc<dyn BlockDevice>, serial: &str, queues: usize) -> Self {
        BlkBackend {
            device,
            serial: serial.to_string(),
            queues,
            mem: RwLock::new(None),
            broken: (0..queues).map(|_| AtomicBool::new(false)).collect(),
            failures: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            exit_fds: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The virtio-blk config space (little endian, as the spec lays it out).
    pub fn config_space(&self) -> Vec<u8> {
        use std::mem::{offset_of, size_of};
        let mut c = vec![0u8; size_of::<virtio_blk_config>()];
        let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
        put(
            offset_of!(virtio_blk_config, capacity),
            &(self.device.size() / SECTOR).to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, seg_max),
            &SEG_MAX.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, blk_size),
            &(SECTOR as u32).to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, num_queues),
            &(self.queues as u16).to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, max_discard_sectors),
            &MAX_DISCARD_SECTORS.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, max_discard_seg),
            &MAX_DISCARD_SEG.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, discard_sector_alignment),
            &1u32.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, max_write_zeroes_sectors),
            &MAX_DISCARD_SECTORS.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, max_write_zeroes_seg),
            &MAX_DISCARD_SEG.to_le_bytes(),
        );
        c
    }

    /// Stop processing queues: the connection is over. A guest that keeps
    /// its queue full cannot hold the worker (and so shutdown) any longer
    /// than one batch.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Process what the driver made available on `vring`, in batches of at
    /// most [`BATCH`] requests. The vring lock is released between batches,
    /// so the frontend's control messages for this ring (stop, reset) get
    /// through even while a guest keeps the queue full.
    fn process(&self, queue_index: usize, vring: &VringRwLock) {
        let Some(atomic) = self
            .mem
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        else {
            return;
        };
        let mut handler = RequestHandler::new(&*self.device, &self.serial);
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let mem = atomic.memory();
            let mut state = vring.get_mut();
            // A ring the frontend has stopped is not the guest's fault.
            if !state.get_queue().ready() {
                return;
            }
            match self.batch(queue_index, &mut state, &mem, &mut handler) {
                Ok(true) => continue,
                Ok(false) | Err(virtio_queue::Error::QueueNotReady) => return,
                Err(e) => {
                    if !self.broken[queue_index].swap(true, Ordering::Relaxed) {
                        tracing::error!(
                            queue = queue_index,
                            "the guest broke queue {queue_index} ({e}); ignoring it until the driver resets it"
                        );
                    }
                    return;
                }
            }
        }
    }

    /// One batch; true if more requests may be waiting.
    fn batch(
        &self,
        queue_index: usize,
        state: &mut vhost_user_backend::VringState<GuestMemoryAtomic<GuestMemoryMmap>>,
        mem: &GuestMemoryMmap,
        handler: &mut RequestHandler,
    ) -> Result<bool, virtio_queue::Error> {
        let event_idx = state.get_queue().event_idx_enabled();
        if event_idx {
            state.get_queue_mut().disable_notification(mem)?;
        }
        let chains: Vec<_> = state.get_queue_mut().iter(mem)?.take(BATCH).collect();
        let full = chains.len() == BATCH;
        let used_any = !chains.is_empty();
        for chain in chains {
            let head = chain.head_index();
            // A bug in the device path must fail the request, not take the
            // worker (and the vring lock it holds) down with it.
            let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                handler.handle(mem, chain)
            }))
            .unwrap_or(super::request::Completion {
                written: 0,
                error: Some(super::request::RequestError::Panicked),
            });
            if let Some(e) = &done.error {
                // A guest can fail requests in a loop: log the first ones,
                // then ever more rarely.
                let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if n <= 20 || n.is_power_of_two() {
                    tracing::warn!(queue = queue_index, failures = n, "request failed: {e}");
                }
            }
            state.get_queue_mut().add_used(mem, head, done.written)?;
        }
        if used_any && state.get_queue_mut().needs_notification(mem)? {
            state.signal_used_queue().map_err(|e| {
                tracing::warn!(queue = queue_index, "signalling the guest: {e}");
                virtio_queue::Error::QueueNotReady
            })?;
        }
        if full {
            return Ok(true);
        }
        // With EVENT_IDX, re-enabling notifications tells us whether the
        // driver added more while we worked: go again, or a kick is lost.
        Ok(event_idx && state.get_queue_mut().enable_notification(mem)?)
    }
}

impl BlkBackend {
    /// Close the exit-event descriptors the library leaked. Call only once
    /// the daemon (its epoll handlers and worker threads) is gone.
    pub fn close_leaked_fds(&self) {
        for fd in crate::sync::lock(&self.exit_fds).drain(..) {
            // SAFETY: `fd` came from an EventConsumer we created in
            // `exit_event`; the library took it with `into_raw_fd` for its
            // epoll set and never closes it. The daemon that used it has
            // been dropped (threads joined, epoll closed), so nothing refers
            // to the descriptor any more and closing it once is sound.
            unsafe { libc::close(fd) };
        }
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.queues
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE as usize
    }

    fn features(&self) -> u64 {
        let mut f = 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_MQ
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.device.read_only() {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn acked_features(&self, features: u64) {
        // Firmware and kernel each negotiate during one boot: one line each.
        tracing::info!("driver accepted features {features:#x}");
    }

    fn reset_device(&self) {
        for b in &self.broken {
            b.store(false, Ordering::Relaxed);
        }
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The queue itself knows (the handler sets it); process() asks it.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = self.config_space();
        let start = offset as usize;
        match start.checked_add(size as usize) {
            Some(end) if end <= config.len() => config[start..end].to_vec(),
            _ => Vec::new(),
        }
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> std::io::Result<()> {
        *self
            .mem
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.queues).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()?;
        // vhost-user-backend 0.24 turns the consumer into a raw fd for its
        // epoll and never closes it; remember it so the connection's end
        // can (see `close_leaked_fds`).
        use std::os::fd::AsRawFd;
        crate::sync::lock(&self.exit_fds).push(consumer.as_raw_fd());
        Some((consumer, notifier))
    }

    fn stop_vring(&self, queue_index: u32) -> std::io::Result<()> {
        if let Some(b) = self.broken.get(queue_index as usize) {
            b.store(false, Ordering::Relaxed);
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> std::io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        // One queue per thread: the thread's only vring is queue `thread_id`.
        let Some(vring) = vrings.get(device_event as usize) else {
            return Ok(());
        };
        if self
            .broken
            .get(thread_id)
            .is_none_or(|b| b.load(Ordering::Relaxed))
        {
            return Ok(());
        }
        self.process(thread_id, vring);
        Ok(())
    }
}
