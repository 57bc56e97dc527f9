//! The `virtio_blk_request` target: a guest that writes whatever it likes
//! into its descriptor table and available ring, served by the same
//! [`RequestHandler`] `ocidisk serve` runs, over a device that fails the
//! run when it is asked for a byte outside itself.

use std::sync::Mutex;

use ocidisk::disk::DiskError;
use ocidisk::serve::request::{BlockDevice, Completion, RequestHandler, SECTOR};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// Guest memory: two regions with a hole between them, so that buffers
/// can straddle a region's end or fall into the hole.
const REGIONS: [(u64, usize); 2] = [(0, 0x8000), (0x10000, 0x8000)];
/// The end of the highest region.
const MEM_END: u64 = 0x18000;
/// Where the input's tail is copied into guest memory (after the rings).
const FILL_AT: u64 = 0x1000;
/// Sectors of the device.
const DEVICE_SECTORS: u64 = 96;
/// Most chains served per input.
const MAX_CHAINS: usize = 64;

/// A device of bytes that panics (a finding) when the handler asks for a
/// range outside it: the bounds check of the request path is under test.
struct Strict {
    data: Mutex<Vec<u8>>,
    read_only: bool,
}

impl Strict {
    fn range(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        let size = self.data.lock().map_or(0, |d| d.len()) as u64;
        let end = offset.checked_add(len);
        assert!(
            end.is_some_and(|e| e <= size),
            "device asked for {len} bytes at {offset}, outside its {size} bytes"
        );
        offset as usize..(offset + len) as usize
    }

    fn bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let r = self.range(offset, len as u64);
        self.data.lock().map(|d| d[r].to_vec()).unwrap_or_default()
    }
}

impl BlockDevice for Strict {
    fn size(&self) -> u64 {
        DEVICE_SECTORS * SECTOR
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let r = self.range(offset, buf.len() as u64);
        if let Ok(d) = self.data.lock() {
            buf.copy_from_slice(&d[r]);
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        assert!(!self.read_only, "write reached a read-only device");
        let r = self.range(offset, data.len() as u64);
        if let Ok(mut d) = self.data.lock() {
            d[r].copy_from_slice(data);
        }
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        assert!(!self.read_only, "zeroing reached a read-only device");
        let r = self.range(offset, len);
        if let Ok(mut d) = self.data.lock() {
            d[r].fill(0);
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), DiskError> {
        Ok(())
    }
}

/// Bytes taken from the front of the input, zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
}

/// An address: mostly inside (or just past) guest memory, where requests
/// do something; with the top bit set, anything at all.
fn address(raw: u32) -> u64 {
    if raw & 0x8000_0000 != 0 {
        u64::MAX - u64::from(raw & 0x7fff_ffff)
    } else {
        u64::from(raw) % (MEM_END + 0x1000)
    }
}

/// A length: mostly up to two regions' worth; with the top bit set,
/// anything up to `u32::MAX`.
fn length(raw: u32) -> u32 {
    if raw & 0x8000_0000 != 0 {
        raw
    } else {
        raw % 0x11000
    }
}

/// What a chain looked like before the device touched it, when its
/// buffers are plain enough to predict the outcome: every descriptor in
/// guest memory, none overlapping another or the rings, readable ones
/// first.
struct Plain {
    kind: u32,
    sector: u64,
    /// The readable bytes after the 16-byte header.
    payload: Vec<u8>,
    /// The writable buffers, in order.
    writable: Vec<(u64, usize)>,
}

fn plain(mem: &GuestMemoryMmap, descs: &[Descriptor], rings_end: u64) -> Option<Plain> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut seen_writable = false;
    let (mut readable, mut writable) = (Vec::new(), Vec::new());
    for d in descs {
        let (start, len) = (d.addr().0, u64::from(d.len()));
        let end = start.checked_add(len)?;
        if len == 0
            || start < rings_end
            || !mem.check_range(d.addr(), len as usize, Permissions::ReadWrite)
        {
            return None;
        }
        if d.is_write_only() {
            seen_writable = true;
            writable.push((start, len as usize));
        } else if seen_writable {
            return None;
        } else {
            let mut buf = vec![0u8; len as usize];
            mem.read_slice(&mut buf, d.addr()).ok()?;
            readable.extend_from_slice(&buf);
        }
        ranges.push((start, end));
    }
    ranges.sort_unstable();
    if ranges.windows(2).any(|w| w[1].0 < w[0].1) || readable.len() < 16 {
        return None;
    }
    Some(Plain {
        kind: u32::from_le_bytes(readable[0..4].try_into().ok()?),
        sector: u64::from_le_bytes(readable[8..16].try_into().ok()?),
        payload: readable[16..].to_vec(),
        writable,
    })
}

/// Check what the handler did with a plain chain.
fn check(mem: &GuestMemoryMmap, dev: &Strict, p: &Plain, done: &Completion) {
    let total: usize = p.writable.iter().map(|w| w.1).sum();
    assert!(
        done.written as usize <= total,
        "{} bytes reported written, the chain has {total} writable",
        done.written
    );
    let Some(&(last, last_len)) = p.writable.last() else {
        assert!(
            done.error.is_some(),
            "a chain with no status byte succeeded"
        );
        return;
    };
    let status = mem
        .read_obj::<u8>(GuestAddress(last + last_len as u64 - 1))
        .unwrap_or(0xff);
    assert_eq!(
        status == 0,
        done.error.is_none(),
        "status byte {status} against {:?}",
        done.error
    );
    // The data the guest sees or gave, concatenated (status byte excluded).
    let data_len = total - 1;
    let fits = (p.sector.checked_mul(SECTOR))
        .and_then(|off| off.checked_add(data_len as u64))
        .is_some_and(|end| end <= dev.size());
    match p.kind {
        // IN: a well-formed read in range succeeds with the device's bytes.
        0 => {
            if fits && (data_len as u64).is_multiple_of(SECTOR) {
                assert!(done.error.is_none(), "a good read failed: {:?}", done.error);
            }
            if done.error.is_none() {
                let mut seen = Vec::with_capacity(data_len);
                for &(addr, len) in &p.writable {
                    let mut buf = vec![0u8; len];
                    mem.read_slice(&mut buf, GuestAddress(addr))
                        .unwrap_or_default();
                    seen.extend_from_slice(&buf);
                }
                seen.truncate(data_len);
                assert!(
                    seen == dev.bytes(p.sector * SECTOR, data_len),
                    "a read returned bytes the device does not hold"
                );
            }
        }
        // OUT: what succeeded is on the device.
        1 if done.error.is_none() => {
            assert!(!dev.read_only, "a write to a read-only device succeeded");
            assert!(
                dev.bytes(p.sector * SECTOR, p.payload.len()) == p.payload,
                "a write did not land"
            );
        }
        _ => {}
    }
}

/// Fuzz target `virtio_blk_request`. The input: a byte of options (device
/// read-only, queue size), the avail index, the descriptor table (16
/// bytes per entry: address, length, flags, next, folded so that most
/// land in guest memory), the avail ring, and bytes for guest memory
/// (headers, segments, data). Every chain the queue yields goes through
/// the handler. No panic; the device is never asked for a byte outside
/// it; for chains plain enough to predict, reads return the device's
/// bytes, writes land, good reads succeed and the status byte tells the
/// truth.
pub fn virtio_blk_request(data: &[u8]) {
    let _ = serve_chains(data);
}

/// What became of one chain: whether it was plain enough to check, and
/// whether the request succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The chain's outcome was predicted and checked.
    pub checked: bool,
    /// The handler reported success.
    pub ok: bool,
}

/// Serve every chain of the input (see [`virtio_blk_request`]) and say
/// what became of each.
pub fn serve_chains(data: &[u8]) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let mut input = Input(data);
    let [opts] = input.take::<1>();
    let qsize: u16 = 1 << ((opts >> 1) % 5);
    let read_only = opts & 1 != 0;
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&REGIONS.map(|(a, l)| (GuestAddress(a), l)))
    else {
        return outcomes;
    };
    let mock = MockSplitQueue::new(&mem, qsize);
    let avail_idx = input.u16();
    for i in 0..qsize {
        let addr = address(input.u32());
        let len = length(input.u32());
        let (flags, next) = (input.u16(), input.u16());
        let desc = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
        if mock.desc_table().store(i, desc).is_err() {
            return outcomes;
        }
    }
    for i in 0..qsize {
        let head = input.u16();
        let at = mock.avail_addr().0 + 4 + 2 * u64::from(i);
        let _ = mem.write_obj(head.to_le(), GuestAddress(at));
    }
    let _ = mem.write_obj(avail_idx.to_le(), GuestAddress(mock.avail_addr().0 + 2));
    let _ = mem.write_slice(
        &input.0[..input.0.len().min(0x8000 - FILL_AT as usize)],
        GuestAddress(FILL_AT),
    );
    let rings_end = mock.used_addr().0 + 6 + 8 * u64::from(qsize);
    let dev = Strict {
        data: Mutex::new(
            (0..DEVICE_SECTORS * SECTOR)
                .map(|i| (i % 251) as u8)
                .collect(),
        ),
        read_only,
    };
    let Ok(mut queue) = mock.create_queue::<Queue>() else {
        return outcomes;
    };
    let mut handler = RequestHandler::new(&dev, "fuzz-serial");
    let chains: Vec<_> = match queue.iter(&mem) {
        Ok(it) => it.take(MAX_CHAINS).collect(),
        Err(_) => return outcomes,
    };
    for chain in chains {
        let head = chain.head_index();
        let descs: Vec<Descriptor> = chain.clone().collect();
        let before = plain(&mem, &descs, rings_end);
        let done = handler.handle(&mem, chain);
        if let Some(p) = &before {
            check(&mem, &dev, p, &done);
        }
        outcomes.push(Outcome {
            checked: before.is_some(),
            ok: done.error.is_none(),
        });
        let _ = queue.add_used(&mem, head, done.written);
    }
    outcomes
}
