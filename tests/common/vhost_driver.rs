//! A virtio-blk driver in the test process: it talks to `ocidisk serve`
//! over the real vhost-user socket with `vhost`'s frontend, shares a memfd
//! as guest memory, and lays out split rings with `virtio-queue`'s mock
//! (test-utils). One request in flight at a time, so tests read simply.

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserInflight, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::{AvailRing, DescriptorTable, UsedRing};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub const MEM_SIZE: usize = 32 << 20;
pub const QUEUE_SIZE: u16 = 64;
/// Where request headers, data and status live in guest memory.
pub const HDR: u64 = 0x10_0000;
pub const STATUS: u64 = 0x10_1000;
pub const INDIRECT: u64 = 0x10_2000;
pub const DATA: u64 = 0x20_0000;
pub const DATA_MAX: u64 = 16 << 20;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
pub const F_RING_EVENT_IDX: u64 = 1 << 29;
pub const F_BLK_RO: u64 = 1 << 5;
pub const F_BLK_DISCARD: u64 = 1 << 13;
pub const F_BLK_WRITE_ZEROES: u64 = 1 << 14;
pub const F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// A split ring at fixed offsets: descriptors, then avail at +0x1000 and
/// used at +0x2000. (`MockSplitQueue::create` packs the used ring right
/// after `avail.end()`, which counts ring entries as bytes: its used ring
/// overlaps the avail ring's tail and `used_event`, so element 7 of the
/// used ring overwrites `used_event` for a 64-entry queue.)
struct Ring {
    base: GuestAddress,
    desc: DescriptorTable<'static, GuestMemoryMmap>,
    avail: AvailRing<'static, GuestMemoryMmap>,
    used: UsedRing<'static, GuestMemoryMmap>,
    avail_idx: u16,
    used_seen: u16,
    kick: EventFd,
    call: EventFd,
}

/// One descriptor of a chain: (guest address, length, device-writable).
pub type Desc = (u64, u32, bool);

pub struct Driver {
    fe: Frontend,
    pub mem: &'static GuestMemoryMmap,
    rings: Vec<Ring>,
    pub features: u64,
    pub protocol: VhostUserProtocolFeatures,
    /// The in-flight buffer the first backend gave (as QEMU keeps it).
    inflight: Option<(VhostUserInflight, File)>,
}

fn memfd(size: usize) -> File {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the
    // returned descriptor is checked before use and owned by the File.
    let fd = unsafe { libc::memfd_create(c"ocidisk-test-guest".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size as u64).unwrap();
    f
}

impl Driver {
    /// Connect and bring up `queues` queues with the device's features
    /// (minus `drop_features`).
    pub fn connect(socket: &Path, queues: usize, drop_features: u64) -> Driver {
        Self::open(socket, queues, drop_features, false)
    }

    /// Connect like QEMU's vhost-user-blk does: ask the backend for an
    /// in-flight buffer (GET_INFLIGHT_FD) and hand it back (SET_INFLIGHT_FD)
    /// before the rings start, so a later [`Driver::reconnect`] can give it
    /// to a restarted server.
    pub fn connect_tracked(socket: &Path, queues: usize) -> Driver {
        Self::open(socket, queues, 0, true)
    }

    fn open(socket: &Path, queues: usize, drop_features: u64, track: bool) -> Driver {
        let fe =
            Frontend::connect(socket, queues as u64).expect("connect to the vhost-user socket");
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            MEM_SIZE,
            Some(FileOffset::new(memfd(MEM_SIZE), 0)),
        )])
        .unwrap();
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(mem));
        let mut d = Driver {
            fe,
            mem,
            rings: Vec::new(),
            features: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            inflight: None,
        };
        d.setup(queues, drop_features, track);
        d
    }

    /// The backend died and a new one listens on `socket`: connect again
    /// and bring the same rings up where they stand (as QEMU does on
    /// reconnect: the avail base is the used index, the in-flight buffer
    /// is the one from the first connection).
    pub fn reconnect(&mut self, socket: &Path) {
        let queues = self.rings.len();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        self.fe = loop {
            match Frontend::connect(socket, queues as u64) {
                Ok(fe) => break fe,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("reconnecting: {e}"),
            }
        };
        self.fe.set_owner().unwrap();
        let offered = self.fe.get_features().unwrap();
        assert_eq!(offered & self.features, self.features, "features changed");
        self.fe.set_features(self.features).unwrap();
        let proto = self.fe.get_protocol_features().unwrap();
        self.fe.set_protocol_features(proto).unwrap();
        let region = self.mem.find_region(GuestAddress(0)).unwrap();
        let info = VhostUserMemoryRegionInfo::from_guest_region(region).unwrap();
        self.fe.set_mem_table(&[info]).unwrap();
        let (inflight, file) = self
            .inflight
            .as_ref()
            .expect("connected with connect_tracked");
        self.fe.set_inflight_fd(inflight, file.as_raw_fd()).unwrap();
        for q in 0..queues {
            let base = self.rings[q].base;
            // Where the ring stands: QEMU restores the avail base to the
            // used index when the backend died.
            let used_idx: u16 = self
                .mem
                .read_obj(GuestAddress(base.0 + 0x2000 + 2))
                .unwrap();
            let (call, kick) = self.start_ring(q, base, used_idx);
            let r = &mut self.rings[q];
            (r.call, r.kick) = (call, kick);
        }
    }

    /// Give the device queue `q` at `base` (descriptors, avail at +0x1000,
    /// used at +0x2000) from avail index `next_avail`, with fresh call and
    /// kick eventfds, and enable it.
    fn start_ring(&mut self, q: usize, base: GuestAddress, next_avail: u16) -> (EventFd, EventFd) {
        let host = |a: u64| self.mem.get_host_address(GuestAddress(a)).unwrap() as u64;
        self.fe.set_vring_num(q, QUEUE_SIZE).unwrap();
        self.fe
            .set_vring_addr(
                q,
                &VringConfigData {
                    queue_max_size: QUEUE_SIZE,
                    queue_size: QUEUE_SIZE,
                    flags: 0,
                    desc_table_addr: host(base.0),
                    used_ring_addr: host(base.0 + 0x2000),
                    avail_ring_addr: host(base.0 + 0x1000),
                    log_addr: None,
                },
            )
            .unwrap();
        self.fe.set_vring_base(q, next_avail).unwrap();
        let call = EventFd::new(EFD_NONBLOCK).unwrap();
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        self.fe.set_vring_call(q, &call).unwrap();
        self.fe.set_vring_kick(q, &kick).unwrap();
        self.fe.set_vring_enable(q, true).unwrap();
        (call, kick)
    }

    fn setup(&mut self, queues: usize, drop_features: u64, track: bool) {
        self.fe.set_owner().unwrap();
        let offered = self.fe.get_features().unwrap();
        self.features = offered & !drop_features;
        self.fe.set_features(self.features).unwrap();
        let proto = self.fe.get_protocol_features().unwrap();
        self.protocol = proto;
        self.fe.set_protocol_features(proto).unwrap();
        let region = self.mem.find_region(GuestAddress(0)).unwrap();
        let info = VhostUserMemoryRegionInfo::from_guest_region(region).unwrap();
        self.fe.set_mem_table(&[info]).unwrap();
        if track {
            let ask = VhostUserInflight {
                num_queues: queues as u16,
                queue_size: QUEUE_SIZE,
                ..Default::default()
            };
            let (info, file) = self.fe.get_inflight_fd(&ask).unwrap();
            self.fe.set_inflight_fd(&info, file.as_raw_fd()).unwrap();
            self.inflight = Some((info, file));
        }
        self.rings.clear();
        for q in 0..queues {
            let base = GuestAddress(q as u64 * 0x1_0000);
            let (desc_addr, avail_addr, used_addr) = (
                base,
                GuestAddress(base.0 + 0x1000),
                GuestAddress(base.0 + 0x2000),
            );
            let desc = DescriptorTable::new(self.mem, desc_addr, QUEUE_SIZE);
            let avail = AvailRing::new(self.mem, avail_addr, QUEUE_SIZE);
            let used = UsedRing::new(self.mem, used_addr, QUEUE_SIZE);
            let (call, kick) = self.start_ring(q, base, 0);
            self.rings.push(Ring {
                base,
                desc,
                avail,
                used,
                avail_idx: 0,
                used_seen: 0,
                kick,
                call,
            });
        }
    }

    /// The device's config space.
    pub fn config(&mut self) -> Vec<u8> {
        let (_, payload) = self
            .fe
            .get_config(0, 60, VhostUserConfigFlags::WRITABLE, &[0u8; 60])
            .unwrap();
        payload.to_vec()
    }

    /// Stop queue `q` (GET_VRING_BASE): returns the device's next avail index.
    pub fn stop_queue(&mut self, q: usize) -> u32 {
        self.fe.get_vring_base(q).unwrap()
    }

    /// Offer `descs` as one chain on queue `q` at descriptor index 0..n and
    /// wait for the device to use it. Returns the used length, or None if
    /// nothing came back within `timeout`.
    pub fn submit(&mut self, q: usize, descs: &[Desc], timeout: Duration) -> Option<u32> {
        self.post(q, descs, 0);
        self.wait_used(q, timeout)
    }

    /// Offer `descs` through one INDIRECT descriptor.
    pub fn submit_indirect(&mut self, q: usize, descs: &[Desc], timeout: Duration) -> Option<u32> {
        for (i, &(addr, len, w)) in descs.iter().enumerate() {
            let mut flags = if w { F_WRITE } else { 0 };
            if i + 1 < descs.len() {
                flags |= F_NEXT;
            }
            let d = RawDescriptor::from(Descriptor::new(addr, len, flags, i as u16 + 1));
            self.mem
                .write_obj(d, GuestAddress(INDIRECT + 16 * i as u64))
                .unwrap();
        }
        let head = RawDescriptor::from(Descriptor::new(
            INDIRECT,
            16 * descs.len() as u32,
            F_INDIRECT,
            0,
        ));
        self.submit_raw(q, &[head], 0, timeout)
    }

    /// Put raw descriptors at table index `at`.., offer index `at` as the
    /// head, kick, and wait for a used element.
    pub fn submit_raw(
        &mut self,
        q: usize,
        raw: &[RawDescriptor],
        at: u16,
        timeout: Duration,
    ) -> Option<u32> {
        self.post_raw(q, raw, at);
        self.wait_used(q, timeout)
    }

    /// Offer one chain of `descs` (at descriptor index `at`..) on queue
    /// `q` and kick, without waiting for it.
    pub fn post(&mut self, q: usize, descs: &[Desc], at: u16) {
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, w))| {
                let mut flags = if w { F_WRITE } else { 0 };
                if i + 1 < descs.len() {
                    flags |= F_NEXT;
                }
                RawDescriptor::from(Descriptor::new(addr, len, flags, at + i as u16 + 1))
            })
            .collect();
        self.post_raw(q, &raw, at);
    }

    fn post_raw(&mut self, q: usize, raw: &[RawDescriptor], at: u16) {
        let r = &mut self.rings[q];
        for (i, d) in raw.iter().enumerate() {
            r.desc.store(at + i as u16, *d).unwrap();
        }
        r.avail
            .ring()
            .ref_at((r.avail_idx % QUEUE_SIZE) as usize)
            .unwrap()
            .store(at);
        r.avail_idx = r.avail_idx.wrapping_add(1);
        self.publish_avail(q);
    }

    /// Make the avail index visible and ask to be notified of the next
    /// used element (used_event, honoured with EVENT_IDX).
    fn publish_avail(&mut self, q: usize) {
        let r = &mut self.rings[q];
        let used_event = r.base.0 + 0x1000 + 4 + 2 * QUEUE_SIZE as u64;
        self.mem
            .write_obj(r.used_seen, GuestAddress(used_event))
            .unwrap();
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        r.avail.idx().store(r.avail_idx);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        r.kick.write(1).unwrap();
    }

    /// A guest that floods queue `q`: from another thread, keep a queue's
    /// worth of 1 MiB reads always outstanding (never reading completions), so the device
    /// always finds more work, until the returned flag is set.
    pub fn flood(&mut self, q: usize) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
        self.header(VIRTIO_BLK_T_IN, 0);
        let r = &mut self.rings[q];
        r.desc
            .store(0, RawDescriptor::from(Descriptor::new(HDR, 16, F_NEXT, 1)))
            .unwrap();
        r.desc
            .store(
                1,
                RawDescriptor::from(Descriptor::new(DATA, 1 << 20, F_WRITE | F_NEXT, 2)),
            )
            .unwrap();
        r.desc
            .store(
                2,
                RawDescriptor::from(Descriptor::new(STATUS, 1, F_WRITE, 0)),
            )
            .unwrap();
        for i in 0..QUEUE_SIZE as usize {
            r.avail.ring().ref_at(i).unwrap().store(0);
        }
        let mem = self.mem;
        let avail_idx = GuestAddress(r.base.0 + 0x1000 + 2);
        let used_idx = GuestAddress(r.base.0 + 0x2000 + 2);
        let kick = r.kick.try_clone().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let t = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let used: u16 = mem.read_obj(used_idx).unwrap();
                mem.write_obj(used.wrapping_add(QUEUE_SIZE), avail_idx)
                    .unwrap();
                std::sync::atomic::fence(Ordering::SeqCst);
                let _ = kick.write(1);
                std::thread::yield_now();
            }
        });
        (stop, t)
    }

    /// Set the avail index to an arbitrary (possibly hostile) value and kick.
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        let r = &mut self.rings[q];
        r.avail_idx = idx;
        r.avail.idx().store(idx);
        r.kick.write(1).unwrap();
    }

    /// Wait for the next used element of queue `q`: its (head, length).
    pub fn wait_used_elem(&mut self, q: usize, timeout: Duration) -> Option<(u32, u32)> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.next_used(q) {
                return Some(e);
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return None;
            }
            wait_fd(
                &self.rings[q].call,
                deadline.min(now + Duration::from_millis(20)),
            );
        }
    }

    /// The next used element of queue `q`, if the device published one.
    fn next_used(&mut self, q: usize) -> Option<(u32, u32)> {
        let r = &mut self.rings[q];
        if r.used.idx().load() == r.used_seen {
            return None;
        }
        let elem = r
            .used
            .ring()
            .ref_at((r.used_seen % QUEUE_SIZE) as usize)
            .unwrap()
            .load();
        r.used_seen = r.used_seen.wrapping_add(1);
        Some((elem.id(), elem.len()))
    }

    /// Wait for the next used element of queue `q` and its call
    /// notification; its length.
    fn wait_used(&mut self, q: usize, timeout: Duration) -> Option<u32> {
        let deadline = std::time::Instant::now() + timeout;
        let mut signalled = false;
        loop {
            if let Some((_, len)) = self.next_used(q) {
                // The device must also have signalled the call eventfd.
                signalled = signalled || wait_fd(&self.rings[q].call, deadline);
                assert!(
                    signalled,
                    "used element {} without a call notification",
                    self.rings[q].used_seen.wrapping_sub(1)
                );
                return Some(len);
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return None;
            }
            signalled |= wait_fd(
                &self.rings[q].call,
                deadline.min(now + Duration::from_millis(20)),
            );
        }
    }

    /// Read the status byte of the last request.
    pub fn status(&self) -> u8 {
        self.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap()
    }

    fn header(&self, kind: u32, sector: u64) {
        self.header_at(HDR, STATUS, kind, sector);
    }

    /// A request header at `hdr` and a status byte (0xff: not yet set) at
    /// `status`, for requests the test lays out itself.
    pub fn header_at(&self, hdr: u64, status: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
    }

    /// A well-formed request: header, optional data, status.
    pub fn request(
        &mut self,
        q: usize,
        kind: u32,
        sector: u64,
        data_len: u32,
        device_writes_data: bool,
    ) -> (u8, u32) {
        self.header(kind, sector);
        let mut descs = vec![(HDR, 16, false)];
        if data_len > 0 {
            descs.push((DATA, data_len, device_writes_data));
        }
        descs.push((STATUS, 1, true));
        let used = self
            .submit(q, &descs, Duration::from_secs(30))
            .expect("the device answered");
        (self.status(), used)
    }

    /// Read `len` bytes at `sector` on queue `q`.
    pub fn read(&mut self, q: usize, sector: u64, len: u32) -> (u8, Vec<u8>) {
        let (status, _) = self.request(q, VIRTIO_BLK_T_IN, sector, len, true);
        let mut buf = vec![0u8; len as usize];
        self.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        (status, buf)
    }

    /// Write `data` at `sector` on queue `q`.
    pub fn write(&mut self, q: usize, sector: u64, data: &[u8]) -> u8 {
        self.mem.write_slice(data, GuestAddress(DATA)).unwrap();
        self.request(q, VIRTIO_BLK_T_OUT, sector, data.len() as u32, false)
            .0
    }

    /// Send the header of `kind` with the descriptors the test chooses.
    pub fn raw_request(&mut self, kind: u32, sector: u64, descs: &[Desc]) -> Option<u32> {
        self.header(kind, sector);
        self.submit(0, descs, Duration::from_secs(10))
    }
}

fn wait_fd(fd: &EventFd, deadline: std::time::Instant) -> bool {
    let ms = deadline
        .saturating_duration_since(std::time::Instant::now())
        .as_millis()
        .min(i32::MAX as u128) as i32;
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, alive across the call.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    if n == 1 {
        let _ = fd.read();
        true
    } else {
        false
    }
}
