//! One frontend connection: the vhost-user messages, as the `vhost` crate
//! parses them, applied to the device's queues and memory.
//!
//! A [`Session`] owns one [`Vring`] and one worker thread per queue, the
//! guest memory table and the in-flight region. It lives as long as the
//! connection; the disk behind it outlives every session. Whatever the
//! frontend sends, a bad value fails that message (and ends the
//! connection, as the vhost crate does on any error), never the server.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use vhost::VhostUserMemoryRegionBase;
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Error as VuError, GpuBackend, VhostUserBackendReqHandlerMut};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::EventFd;

use super::device::{BlkDevice, MAX_QUEUE_SIZE};
use super::inflight::{self, InflightRegion};
use super::memory::{MAX_SLOTS, MemoryTable};
use super::request::BlockDevice;
use super::vring::{Shared, Vring};

type Result<T> = std::result::Result<T, VuError>;

fn handler_err(e: impl std::fmt::Display) -> VuError {
    VuError::ReqHandlerError(std::io::Error::other(e.to_string()))
}

/// The state of one frontend connection.
pub struct Session {
    model: BlkDevice,
    shared: Arc<Shared>,
    vrings: Vec<Arc<Vring>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    memory: MemoryTable,
    inflight: Option<InflightRegion>,
    owned: bool,
    acked_features: u64,
    acked_protocol: u64,
}

impl Session {
    /// A session serving `device` on `queues` queues; GET_ID answers
    /// `serial`. Starts one worker thread per queue.
    pub fn new(
        device: Arc<dyn BlockDevice>,
        serial: &str,
        queues: usize,
    ) -> std::io::Result<Session> {
        let memory = MemoryTable::default();
        let shared = Arc::new(Shared {
            device: device.clone(),
            serial: serial.to_string(),
            mem: memory.atomic(),
            failures: AtomicU64::new(0),
        });
        let vrings = (0..queues)
            .map(|i| Vring::new(i, MAX_QUEUE_SIZE))
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut session = Session {
            model: BlkDevice::new(device, queues),
            shared,
            vrings,
            workers: Vec::new(),
            memory,
            inflight: None,
            owned: false,
            acked_features: 0,
            acked_protocol: 0,
        };
        for v in &session.vrings {
            let w = v.spawn(session.shared.clone())?;
            session.workers.push(w);
        }
        Ok(session)
    }

    fn vring(&self, index: u32) -> Result<&Arc<Vring>> {
        self.vrings.get(index as usize).ok_or(VuError::InvalidParam)
    }

    fn event_fd(file: Option<File>) -> Option<EventFd> {
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: the File owned its descriptor alone; into_raw_fd gives up
        // that ownership and EventFd takes it over, so it is closed once.
        file.map(|f| unsafe { EventFd::from_raw_fd(f.into_raw_fd()) })
    }

    fn protocol_features_acked(&self) -> bool {
        self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0
    }

    /// Stop every worker after its current batch and wait for them.
    pub fn shut_down(&mut self) {
        for v in &self.vrings {
            v.exit();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shut_down();
    }
}

impl VhostUserBackendReqHandlerMut for Session {
    fn set_owner(&mut self) -> Result<()> {
        if self.owned {
            return Err(VuError::InvalidOperation("already claimed"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> Result<()> {
        self.owned = false;
        self.acked_features = 0;
        self.acked_protocol = 0;
        Ok(())
    }

    fn reset_device(&mut self) -> Result<()> {
        for v in &self.vrings {
            let mut st = v.lock();
            st.stop();
            st.set_enabled(false);
            st.clear_broken();
        }
        self.acked_features = 0;
        Ok(())
    }

    fn get_features(&mut self) -> Result<u64> {
        Ok(self.model.features())
    }

    fn set_features(&mut self, features: u64) -> Result<()> {
        if features & !self.model.features() != 0 {
            return Err(VuError::InvalidParam);
        }
        self.acked_features = features;
        // Firmware and kernel each negotiate during one boot: one line each.
        tracing::info!("driver accepted features {features:#x}");
        let event_idx =
            features & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX) != 0;
        // Without PROTOCOL_FEATURES, rings are enabled as soon as they start
        // (vhost-user spec, "Ring states").
        let enable_all = !self.protocol_features_acked();
        for v in &self.vrings {
            let mut st = v.lock();
            st.set_event_idx(event_idx);
            if enable_all {
                st.set_enabled(true);
            }
            drop(st);
            v.wake();
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        postcopy_listening: Option<bool>,
    ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        if postcopy_listening.is_some() {
            return Err(VuError::InvalidOperation("postcopy is not supported"));
        }
        self.memory.set(ctx, files).map_err(handler_err)?;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        let v = self.vring(index)?;
        let size = u16::try_from(num).map_err(|_| VuError::InvalidParam)?;
        v.lock().set_size(size).map_err(|_| VuError::InvalidParam)
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> Result<()> {
        let v = self.vring(index)?;
        let gpa = |va| self.memory.va_to_gpa(va).ok_or(VuError::InvalidParam);
        let (desc, avail, used) = (gpa(descriptor)?, gpa(available)?, gpa(used)?);
        let mem = self.shared.mem.memory();
        v.lock()
            .set_addresses(&mem, desc, avail, used)
            .map_err(|_| VuError::InvalidParam)
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        let v = self.vring(index)?;
        v.lock()
            .set_next_avail(u16::try_from(base).map_err(|_| VuError::InvalidParam)?);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
        // The spec: the ring stops on GET_VRING_BASE. Taking the lock waits
        // for the batch in progress.
        let v = self.vring(index)?;
        let next_avail = v.lock().stop();
        v.wake();
        Ok(VhostUserVringState::new(index, u32::from(next_avail)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let v = self.vring(u32::from(index))?.clone();
        let mem = self.shared.mem.memory();
        {
            let mut st = v.lock();
            st.set_kick(Self::event_fd(fd));
            // The spec starts a ring on its first kick; like QEMU's own
            // backends, start it now and serve whatever is already waiting.
            st.start(usize::from(index), &mem, self.inflight.as_ref());
        }
        v.wake();
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let v = self.vring(u32::from(index))?;
        v.lock().set_call(Self::event_fd(fd));
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> Result<()> {
        // We never signal errors through it; dropping the file closes it.
        self.vring(u32::from(index))?;
        Ok(())
    }

    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        Ok(self.model.protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        if features & !self.model.protocol_features().bits() != 0 {
            return Err(VuError::InvalidParam);
        }
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> Result<u64> {
        Ok(self.model.queues() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        if !self.protocol_features_acked() {
            return Err(VuError::InactiveFeature(
                VhostUserVirtioFeatures::PROTOCOL_FEATURES,
            ));
        }
        let v = self.vring(index)?;
        v.lock().set_enabled(enable);
        v.wake();
        Ok(())
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> Result<Vec<u8>> {
        Ok(self.model.config(offset, size))
    }

    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> Result<()> {
        // Nothing in our config space is writable (no WCE feature).
        Err(VuError::InvalidOperation("the config space is read-only"))
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> Result<()> {
        Err(VuError::InvalidOperation("not a GPU"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> Result<File> {
        Err(VuError::InvalidOperation("no shared objects"))
    }

    fn get_inflight_fd(&mut self, req: &VhostUserInflight) -> Result<(VhostUserInflight, File)> {
        let (file, len) =
            inflight::allocate(req.num_queues, req.queue_size).map_err(handler_err)?;
        tracing::info!(
            "inflight region: {} queue(s) of {} entries, {len} bytes",
            req.num_queues,
            req.queue_size
        );
        Ok((
            VhostUserInflight::new(len, 0, req.num_queues, req.queue_size),
            file,
        ))
    }

    fn set_inflight_fd(&mut self, info: &VhostUserInflight, file: File) -> Result<()> {
        let region = InflightRegion::map(
            file,
            info.mmap_offset,
            info.mmap_size,
            info.num_queues,
            info.queue_size,
        )
        .map_err(handler_err)?;
        self.inflight = Some(region);
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> Result<u64> {
        Ok(MAX_SLOTS)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        postcopy_listening: Option<bool>,
    ) -> Result<Option<VhostUserMemoryRegionBase>> {
        if postcopy_listening.is_some() {
            return Err(VuError::InvalidOperation("postcopy is not supported"));
        }
        self.memory.add(region, fd).map_err(handler_err)?;
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> Result<()> {
        self.memory.remove(region).map_err(handler_err)
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> Result<Option<File>> {
        Err(VuError::InvalidOperation("no device state transfer"))
    }

    fn check_device_state(&mut self) -> Result<()> {
        Err(VuError::InvalidOperation("no device state transfer"))
    }

    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        Err(VuError::InvalidOperation("no shared memory regions"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> Result<()> {
        Err(VuError::InvalidOperation("no dirty logging"))
    }
}
