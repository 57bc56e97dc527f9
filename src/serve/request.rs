//! One virtio-blk request: parsed from a descriptor chain the guest built,
//! carried out on a [`BlockDevice`], answered with a status byte.
//!
//! The guest is untrusted. Every address and length comes from guest
//! memory, so nothing here indexes or allocates by a guest number without
//! a bound: descriptor ranges are resolved by `vm-memory` (an address
//! outside guest memory fails the chain), data moves in bounded chunks,
//! sector arithmetic is checked, and every malformed request ends with an
//! IOERR or UNSUPP status when the chain has room for one.

use std::io::{Read, Write};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use crate::disk::{Disk, DiskError};
use crate::metrics::{self, ErrorKind, GuestRequest};

/// The virtio-blk sector: request offsets are in these units.
pub const SECTOR: u64 = 512;
/// Data moves between the device and guest memory in pieces of this size.
const CHUNK: usize = 1 << 20;
/// Most segments one DISCARD or WRITE_ZEROES request may carry.
pub const MAX_DISCARD_SEG: u32 = 16;
/// Most sectors one DISCARD or WRITE_ZEROES segment may cover (32 MiB).
pub const MAX_DISCARD_SECTORS: u32 = 65536;

/// What a request needs from the device being served.
pub trait BlockDevice: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// Fill `buf` from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError>;
    /// Hand `len` bytes at `offset` to `emit` in order. The default reads
    /// into a buffer; a device holding its bytes in memory hands out
    /// slices of them instead.
    fn read_with(
        &self,
        offset: u64,
        len: usize,
        emit: &mut dyn FnMut(&[u8]) -> Result<(), DiskError>,
    ) -> Result<(), DiskError> {
        let mut buf = vec![0u8; len.min(CHUNK)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            self.read_at(offset + done as u64, &mut buf[..n])?;
            emit(&buf[..n])?;
            done += n;
        }
        Ok(())
    }
    /// Write `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DiskError>;
    /// Make a range read as zeros.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), DiskError>;
    /// Make earlier writes durable.
    fn flush(&self) -> Result<(), DiskError>;
}

impl BlockDevice for Disk {
    fn size(&self) -> u64 {
        Disk::size(self)
    }
    fn read_only(&self) -> bool {
        Disk::read_only(self)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        Disk::read_at(self, offset, buf)
    }
    fn read_with(
        &self,
        offset: u64,
        len: usize,
        emit: &mut dyn FnMut(&[u8]) -> Result<(), DiskError>,
    ) -> Result<(), DiskError> {
        Disk::read_with(self, offset, len, emit)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        Disk::write_at(self, offset, data)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        Disk::write_zeroes(self, offset, len)
    }
    fn flush(&self) -> Result<(), DiskError> {
        Disk::flush(self)
    }
}

/// Why a request failed (logged; the guest sees only the status byte).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The chain's descriptors do not lie in guest memory or are malformed.
    #[error("malformed descriptor chain: {0}")]
    Chain(String),
    /// The chain has no device-writable byte for the status.
    #[error("descriptor chain has no writable status byte")]
    NoStatus,
    /// The device-readable part is shorter than the 16-byte header.
    #[error("request header too short: {0} readable bytes, need 16")]
    ShortHeader(usize),
    /// The request type is not one this device implements.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// A data length that is not a whole number of sectors.
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(usize),
    /// The sector range does not fit the device.
    #[error("sectors {sector}+{bytes} bytes lie outside the {size}-byte device")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Length in bytes.
        bytes: u64,
        /// Device size in bytes.
        size: u64,
    },
    /// A write to a read-only device.
    #[error("write request on a read-only device")]
    ReadOnly,
    /// A DISCARD/WRITE_ZEROES request outside the advertised limits.
    #[error("discard/write-zeroes request: {0}")]
    BadSegments(String),
    /// Moving bytes to or from guest memory failed.
    #[error("guest memory: {0}")]
    Memory(std::io::Error),
    /// The device failed.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// Handling the request panicked (a bug; the request fails, the server
    /// goes on).
    #[error("internal error while handling the request (see the panic message above)")]
    Panicked,
}

impl RequestError {
    fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// The outcome of one chain: what to put in the used ring.
#[derive(Debug)]
pub struct Completion {
    /// Bytes written into the chain's device-writable buffers (the used
    /// element's `len`).
    pub written: u32,
    /// The request's error, if it failed.
    pub error: Option<RequestError>,
}

/// Serves requests against one device; `serial` answers GET_ID.
pub struct RequestHandler<'d> {
    device: &'d dyn BlockDevice,
    serial: [u8; VIRTIO_BLK_ID_BYTES as usize],
    buf: Vec<u8>,
}

impl<'d> RequestHandler<'d> {
    /// A handler for `device`; GET_ID answers the first 20 bytes of `serial`.
    pub fn new(device: &'d dyn BlockDevice, serial: &str) -> Self {
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let n = serial.len().min(id.len());
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        RequestHandler {
            device,
            serial: id,
            buf: Vec::new(),
        }
    }

    /// Carry out the request in `chain` and write its status byte.
    pub fn handle(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Completion {
        let reader = chain.clone().reader(mem);
        let mut writer: Writer = match chain.writer(mem) {
            Ok(w) => w,
            Err(e) => {
                return Completion {
                    written: 0,
                    error: Some(RequestError::Chain(e.to_string())),
                };
            }
        };
        let writable = writer.available_bytes();
        if writable == 0 {
            return Completion {
                written: 0,
                error: Some(RequestError::NoStatus),
            };
        }
        // The status is the last writable byte; everything before it is
        // data the device may fill.
        let mut status_writer = match writer.split_at(writable - 1) {
            Ok(w) => w,
            Err(e) => {
                return Completion {
                    written: 0,
                    error: Some(RequestError::Chain(e.to_string())),
                };
            }
        };
        let result = match reader {
            Ok(mut reader) => self.execute(&mut reader, &mut writer),
            // The readable part is unusable, but the guest still learns
            // that the request failed.
            Err(e) => Err(RequestError::Chain(e.to_string())),
        };
        let (status, error) = match result {
            Ok(()) => (VIRTIO_BLK_S_OK as u8, None),
            Err(e) => (e.status(), Some(e)),
        };
        if status == VIRTIO_BLK_S_IOERR as u8 {
            metrics::global().error(ErrorKind::GuestIo);
        }
        let mut written = writer.bytes_written();
        match status_writer.write_all(&[status]) {
            Ok(()) => written += 1,
            Err(e) => {
                return Completion {
                    written: written as u32,
                    error: Some(RequestError::Memory(e)),
                };
            }
        }
        Completion {
            written: u32::try_from(written).unwrap_or(u32::MAX),
            error,
        }
    }

    fn execute(&mut self, reader: &mut Reader, data_out: &mut Writer) -> Result<(), RequestError> {
        let readable = reader.available_bytes();
        if readable < 16 {
            return Err(RequestError::ShortHeader(readable));
        }
        let mut header = [0u8; 16];
        reader
            .read_exact(&mut header)
            .map_err(RequestError::Memory)?;
        let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let (t, bytes) = match kind {
            VIRTIO_BLK_T_IN => (GuestRequest::Read, data_out.available_bytes()),
            VIRTIO_BLK_T_OUT => (GuestRequest::Write, reader.available_bytes()),
            VIRTIO_BLK_T_FLUSH => (GuestRequest::Flush, 0),
            VIRTIO_BLK_T_GET_ID => (GuestRequest::GetId, 0),
            VIRTIO_BLK_T_DISCARD => (GuestRequest::Discard, 0),
            VIRTIO_BLK_T_WRITE_ZEROES => (GuestRequest::WriteZeroes, 0),
            _ => (GuestRequest::Unsupported, 0),
        };
        metrics::global().guest(t, bytes as u64);
        match kind {
            VIRTIO_BLK_T_IN => {
                let len = data_out.available_bytes();
                let offset = self.range(sector, len)?;
                self.read(offset, len, data_out)
            }
            VIRTIO_BLK_T_OUT => {
                if self.device.read_only() {
                    return Err(RequestError::ReadOnly);
                }
                let len = reader.available_bytes();
                let offset = self.range(sector, len)?;
                self.write(offset, len, reader)
            }
            VIRTIO_BLK_T_FLUSH => Ok(self.device.flush()?),
            VIRTIO_BLK_T_GET_ID => {
                let n = data_out.available_bytes().min(self.serial.len());
                data_out
                    .write_all(&self.serial[..n])
                    .map_err(RequestError::Memory)
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                if self.device.read_only() {
                    return Err(RequestError::ReadOnly);
                }
                self.zero_segments(reader)
            }
            other => Err(RequestError::Unsupported(other)),
        }
    }

    /// The byte offset of `len` bytes at `sector`, if they fit the device.
    fn range(&self, sector: u64, len: usize) -> Result<u64, RequestError> {
        if !(len as u64).is_multiple_of(SECTOR) {
            return Err(RequestError::Unaligned(len));
        }
        let size = self.device.size();
        sector
            .checked_mul(SECTOR)
            .filter(|off| off.checked_add(len as u64).is_some_and(|end| end <= size))
            .ok_or(RequestError::OutOfRange {
                sector,
                bytes: len as u64,
                size,
            })
    }

    /// Device bytes go from where the disk holds them (decoded spans,
    /// metadata blocks) straight into the guest's buffers.
    fn read(&mut self, offset: u64, len: usize, out: &mut Writer) -> Result<(), RequestError> {
        self.device.read_with(offset, len, &mut |piece| {
            out.write_all(piece).map_err(DiskError::Sink)
        })?;
        Ok(())
    }

    fn write(&mut self, offset: u64, len: usize, input: &mut Reader) -> Result<(), RequestError> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            self.buf.resize(n, 0);
            input
                .read_exact(&mut self.buf[..n])
                .map_err(RequestError::Memory)?;
            self.device.write_at(offset + done as u64, &self.buf[..n])?;
            done += n;
        }
        Ok(())
    }

    /// DISCARD and WRITE_ZEROES: a list of 16-byte segments
    /// `{sector: u64, num_sectors: u32, flags: u32}`; both read back zeros.
    fn zero_segments(&mut self, input: &mut Reader) -> Result<(), RequestError> {
        let bytes = input.available_bytes();
        if bytes == 0 || !bytes.is_multiple_of(16) {
            return Err(RequestError::BadSegments(format!(
                "{bytes} bytes of segments, need a non-zero multiple of 16"
            )));
        }
        let count = bytes / 16;
        if count > MAX_DISCARD_SEG as usize {
            return Err(RequestError::BadSegments(format!(
                "{count} segments, the limit is {MAX_DISCARD_SEG}"
            )));
        }
        let mut segments = Vec::with_capacity(count);
        for _ in 0..count {
            let mut seg = [0u8; 16];
            input.read_exact(&mut seg).map_err(RequestError::Memory)?;
            let sector = u64::from_le_bytes(seg[0..8].try_into().expect("8 bytes"));
            let sectors = u32::from_le_bytes(seg[8..12].try_into().expect("4 bytes"));
            let flags = u32::from_le_bytes(seg[12..16].try_into().expect("4 bytes"));
            if sectors > MAX_DISCARD_SECTORS {
                return Err(RequestError::BadSegments(format!(
                    "{sectors} sectors in one segment, the limit is {MAX_DISCARD_SECTORS}"
                )));
            }
            // Bit 0 is UNMAP (allowed); the rest are reserved.
            if flags & !1 != 0 {
                return Err(RequestError::BadSegments(format!(
                    "reserved flags {flags:#x}"
                )));
            }
            let len = sectors as u64 * SECTOR;
            let offset = self.range(sector, len as usize)?;
            segments.push((offset, len));
        }
        for (offset, len) in segments {
            self.device.write_zeroes(offset, len)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::QueueOwnedT;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    /// A byte vector standing in for the disk: these tests are about chain
    /// parsing; the real disk is driven by the socket-level tests.
    struct Bytes512 {
        data: Mutex<Vec<u8>>,
        ro: bool,
    }

    impl BlockDevice for Bytes512 {
        fn size(&self) -> u64 {
            self.data.lock().unwrap().len() as u64
        }
        fn read_only(&self) -> bool {
            self.ro
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
            let d = self.data.lock().unwrap();
            buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
            let mut d = self.data.lock().unwrap();
            d[offset as usize..offset as usize + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), DiskError> {
            let mut d = self.data.lock().unwrap();
            d[offset as usize..(offset + len) as usize].fill(0);
            Ok(())
        }
        fn flush(&self) -> Result<(), DiskError> {
            Ok(())
        }
    }

    fn device(ro: bool) -> Bytes512 {
        let data = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
        Bytes512 {
            data: Mutex::new(data),
            ro,
        }
    }

    const HDR: u64 = 0x10000;
    const DATA: u64 = 0x20000;
    const STATUS: u64 = 0x30000;

    fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        mem.write_slice(&[0xff], GuestAddress(STATUS)).unwrap();
    }

    /// Run one chain built of `(addr, len, writable)` descriptors.
    fn run(dev: &Bytes512, mem: &GuestMemoryMmap, descs: &[(u64, u32, bool)]) -> Completion {
        let q = MockSplitQueue::new(mem, 16);
        let table: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, w))| {
                let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
                if i + 1 < descs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(Descriptor::new(addr, len, flags, i as u16 + 1))
            })
            .collect();
        q.build_desc_chain(&table).unwrap();
        let mut queue: virtio_queue::Queue = q.create_queue().unwrap();
        let chain = queue.iter(mem).unwrap().next().unwrap();
        RequestHandler::new(dev, "serial-of-test-image-xyz").handle(mem, chain)
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100000)]).unwrap()
    }

    fn status(mem: &GuestMemoryMmap) -> u8 {
        mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap()
    }

    #[test]
    fn read_returns_device_bytes() {
        let (dev, mem) = (device(true), memory());
        header(&mem, VIRTIO_BLK_T_IN, 2);
        let c = run(
            &dev,
            &mem,
            &[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)],
        );
        assert!(c.error.is_none(), "{:?}", c.error);
        assert_eq!(c.written, 1025);
        assert_eq!(status(&mem), 0);
        let mut got = vec![0u8; 1024];
        mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, dev.data.lock().unwrap()[1024..2048]);
    }

    #[test]
    fn write_lands_and_read_only_refuses() {
        let (dev, mem) = (device(false), memory());
        header(&mem, VIRTIO_BLK_T_OUT, 1);
        mem.write_slice(&[7u8; 512], GuestAddress(DATA)).unwrap();
        let c = run(
            &dev,
            &mem,
            &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
        );
        assert!(c.error.is_none(), "{:?}", c.error);
        assert_eq!(c.written, 1);
        assert_eq!(dev.data.lock().unwrap()[512..1024], [7u8; 512]);

        let ro = device(true);
        header(&mem, VIRTIO_BLK_T_OUT, 1);
        let c = run(
            &ro,
            &mem,
            &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
        );
        assert!(matches!(c.error, Some(RequestError::ReadOnly)));
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(
            ro.data.lock().unwrap()[512],
            (512 % 251) as u8,
            "read-only data unchanged"
        );
    }

    #[test]
    fn header_and_data_in_one_descriptor() {
        // VERSION_1 drivers may frame a request any way they like.
        let (dev, mem) = (device(false), memory());
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        mem.write_slice(&[9u8; 512], GuestAddress(HDR + 16))
            .unwrap();
        let c = run(&dev, &mem, &[(HDR, 16 + 512, false), (STATUS, 1, true)]);
        assert!(c.error.is_none(), "{:?}", c.error);
        assert_eq!(dev.data.lock().unwrap()[..512], [9u8; 512]);
    }

    #[test]
    fn get_id_and_unsupported() {
        let (dev, mem) = (device(true), memory());
        header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        let c = run(
            &dev,
            &mem,
            &[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)],
        );
        assert!(c.error.is_none());
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"serial-of-test-image");

        header(&mem, 2, 0); // SCSI_CMD
        let c = run(&dev, &mem, &[(HDR, 16, false), (STATUS, 1, true)]);
        assert!(matches!(c.error, Some(RequestError::Unsupported(2))));
        assert_eq!(status(&mem), VIRTIO_BLK_S_UNSUPP as u8);
    }

    #[test]
    fn hostile_chains_fail_cleanly() {
        let (dev, mem) = (device(false), memory());
        let size_sectors = 64 * 1024 / 512;
        // Past the end, overflowing sector*512, unaligned length.
        for (sector, len) in [(size_sectors, 512), (u64::MAX / 256, 512), (0, 100)] {
            header(&mem, VIRTIO_BLK_T_IN, sector);
            let c = run(
                &dev,
                &mem,
                &[(HDR, 16, false), (DATA, len, true), (STATUS, 1, true)],
            );
            assert!(c.error.is_some(), "sector {sector} len {len}");
            assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR as u8);
        }
        // Header too short.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let c = run(&dev, &mem, &[(HDR, 8, false), (STATUS, 1, true)]);
        assert!(matches!(c.error, Some(RequestError::ShortHeader(8))));
        // Header writable (so there is no readable header at all).
        let c = run(&dev, &mem, &[(HDR, 16, true), (STATUS, 1, true)]);
        assert!(matches!(c.error, Some(RequestError::ShortHeader(0))));
        // No status byte.
        let c = run(&dev, &mem, &[(HDR, 16, false), (DATA, 512, false)]);
        assert!(matches!(c.error, Some(RequestError::NoStatus)));
        assert_eq!(c.written, 0);
        // Data outside guest memory.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let c = run(
            &dev,
            &mem,
            &[
                (HDR, 16, false),
                (0xff000, 0x10_0000, true),
                (STATUS, 1, true),
            ],
        );
        assert!(matches!(c.error, Some(RequestError::Chain(_))));
        // A write whose data descriptor is device-writable: the readable
        // part is only the header, so nothing is written.
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        let before = dev.data.lock().unwrap().clone();
        let c = run(
            &dev,
            &mem,
            &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
        );
        assert!(c.error.is_none(), "a zero-length write is valid");
        assert_eq!(*dev.data.lock().unwrap(), before);
    }

    #[test]
    fn discard_and_write_zeroes_check_segments() {
        let (dev, mem) = (device(false), memory());
        let seg = |sector: u64, n: u32, flags: u32| {
            let mut s = [0u8; 16];
            s[0..8].copy_from_slice(&sector.to_le_bytes());
            s[8..12].copy_from_slice(&n.to_le_bytes());
            s[12..16].copy_from_slice(&flags.to_le_bytes());
            s
        };
        header(&mem, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        mem.write_slice(&seg(4, 2, 1), GuestAddress(DATA)).unwrap();
        let c = run(
            &dev,
            &mem,
            &[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)],
        );
        assert!(c.error.is_none(), "{:?}", c.error);
        let d = dev.data.lock().unwrap().clone();
        assert!(d[2048..3072].iter().all(|&b| b == 0));
        assert_ne!(d[3072], 0);

        for bad in [
            seg(1000, 1, 0),
            seg(0, 1, 2),
            seg(0, MAX_DISCARD_SECTORS + 1, 0),
        ] {
            header(&mem, VIRTIO_BLK_T_DISCARD, 0);
            mem.write_slice(&bad, GuestAddress(DATA)).unwrap();
            let c = run(
                &dev,
                &mem,
                &[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)],
            );
            assert!(c.error.is_some());
            assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR as u8);
        }
    }
}
