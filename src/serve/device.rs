//! The virtio-blk device the guest sees: its feature bits, the vhost-user
//! protocol features we speak, and the config space. Nothing here knows
//! about rings or connections.

use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, virtio_blk_config,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::request::{BlockDevice, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, SECTOR};

/// The largest queue a driver may set up.
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// Segments per request we advertise (QEMU's default for a 128-entry queue;
/// with indirect descriptors a request may use them all).
pub const SEG_MAX: u32 = 126;

/// What the guest sees of a disk.
pub struct BlkDevice {
    device: Arc<dyn BlockDevice>,
    queues: usize,
}

impl BlkDevice {
    /// The device model of `device` with `queues` queues.
    pub fn new(device: Arc<dyn BlockDevice>, queues: usize) -> Self {
        BlkDevice { device, queues }
    }

    /// Number of queues.
    pub fn queues(&self) -> usize {
        self.queues
    }

    /// The virtio feature bits offered.
    pub fn features(&self) -> u64 {
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

    /// The vhost-user protocol features offered. `INFLIGHT_SHMFD` lets a
    /// running VM survive a restart of the server (see `inflight`).
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
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

    /// `size` bytes of the config space from `offset`; nothing when the
    /// range falls outside it.
    pub fn config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = self.config_space();
        let start = offset as usize;
        match start.checked_add(size as usize) {
            Some(end) if end <= config.len() => config[start..end].to_vec(),
            _ => Vec::new(),
        }
    }
}
