//! `ocidisk serve` through a real client library: libblkio's
//! `virtio-blk-vhost-user` driver (the `blkio` crate) reads the whole device
//! and must see exactly `materialize`'s image; on a writable disk, its
//! writes, write-zeroes and flushes land.

mod common;

use std::mem::MaybeUninit;

use blkio::{Blkio, Completion, MemoryRegion, ReqFlags};
use common::imagegen::Compression;
use common::serve::{Fixture, Served};

struct Client {
    b: Blkio,
    q: blkio::Blkioq,
    buf: MemoryRegion,
}

const BUF: usize = 1 << 20;

impl Client {
    fn connect(sock: &std::path::Path, queues: i32, read_only: bool) -> Client {
        let mut b = Blkio::new("virtio-blk-vhost-user").unwrap();
        b.set_str("path", sock.to_str().unwrap()).unwrap();
        // libblkio refuses to start read-write on a device offering RO.
        b.set_bool("read-only", read_only).unwrap();
        b.connect().expect("libblkio connects to ocidisk serve");
        b.set_i32("num-queues", queues).unwrap();
        let mut started = b.start().expect("libblkio starts");
        let q = started.queues.remove(0);
        let buf = b.alloc_mem_region(BUF).unwrap();
        b.map_mem_region(&buf).unwrap();
        Client { b, q, buf }
    }

    fn buf(&mut self) -> &mut [u8] {
        // SAFETY: the region is BUF bytes of memory libblkio allocated and
        // mapped for us; it stays alive as long as `self`, and no request
        // is in flight while the test looks at it (complete() waits).
        unsafe { std::slice::from_raw_parts_mut(self.buf.addr as *mut u8, BUF) }
    }

    /// Wait for the one request in flight; returns its `ret`.
    fn complete(&mut self) -> i32 {
        let mut c = [MaybeUninit::<Completion>::uninit()];
        let mut timeout = std::time::Duration::from_secs(30);
        let n = self.q.do_io(&mut c, 1, Some(&mut timeout), None).unwrap();
        assert_eq!(n, 1, "a completion within 30 s");
        // SAFETY: do_io initialised the first n = 1 completions.
        unsafe { c[0].assume_init_read() }.ret
    }

    fn read(&mut self, at: u64, len: usize) -> Vec<u8> {
        let addr = self.buf.addr as *mut u8;
        self.q.read(at, addr, len, 0, ReqFlags::empty());
        assert_eq!(self.complete(), 0, "read of {len} at {at}");
        self.buf()[..len].to_vec()
    }
}

#[test]
fn libblkio_reads_the_whole_device_as_materialize_wrote_it() {
    let f = Fixture::standard(true, Compression::Zstd);
    let (o, image, img, sock) = (&f.o, &f.image, &f.img, &f.sock);
    let _served = Served::start(o, image, sock, &["--read-only", "--queues", "2"]);
    let mut c = Client::connect(sock, 2, true);
    assert_eq!(c.b.get_u64("capacity").unwrap(), img.len() as u64);
    assert!(c.b.get_bool("read-only").unwrap());
    let mut all = Vec::with_capacity(img.len());
    while all.len() < img.len() {
        let n = BUF.min(img.len() - all.len());
        all.extend_from_slice(&c.read(all.len() as u64, n));
    }
    assert!(
        all == *img,
        "libblkio read differs from the materialized image"
    );
    drop(c);
    // Opened read-write, the read-only device is refused by the client.
    let mut b = Blkio::new("virtio-blk-vhost-user").unwrap();
    b.set_str("path", sock.to_str().unwrap()).unwrap();
    b.connect().unwrap();
    let e = b
        .start()
        .err()
        .expect("read-write start on a RO device fails");
    assert!(e.message().contains("read-only"), "{}", e.message());
}

#[test]
fn libblkio_writes_flushes_and_zeroes_a_writable_device() {
    let f = Fixture::standard(false, Compression::Zstd);
    let (o, image, img, sock) = (&f.o, &f.image, &f.img, &f.sock);
    let overlay = f.dir.join("o.overlay");
    let mut served = Served::start(o, image, sock, &["--overlay", overlay.to_str().unwrap()]);
    let mut c = Client::connect(sock, 1, false);
    assert!(!c.b.get_bool("read-only").unwrap());
    let at = img.len() as u64 - (1 << 20);
    let pattern: Vec<u8> = (0..65536u32).map(|i| (i % 253) as u8).collect();
    c.buf()[..pattern.len()].copy_from_slice(&pattern);
    c.q.write(
        at,
        c.buf.addr as *const u8,
        pattern.len(),
        0,
        ReqFlags::empty(),
    );
    assert_eq!(c.complete(), 0);
    c.q.flush(0, ReqFlags::empty());
    assert_eq!(c.complete(), 0);
    c.q.write_zeroes(4096, 8192, 0, ReqFlags::empty());
    assert_eq!(c.complete(), 0);
    assert_eq!(c.read(at, pattern.len()), pattern);
    assert!(c.read(4096, 8192).iter().all(|&b| b == 0));
    assert!(c.read(0, 4096) == img[..4096]);
    drop(c);
    let status = served.stop();
    assert!(status.success());
    // The overlay carried the writes across a server restart.
    let _served = Served::start(o, image, sock, &["--overlay", overlay.to_str().unwrap()]);
    let mut c = Client::connect(sock, 1, false);
    assert_eq!(c.read(at, pattern.len()), pattern);
}

/// A driver maps its buffers (ADD_MEM_REG) right before its first
/// requests, while the queue's worker may already be in a turn started by
/// the kick: that turn's memory snapshot lacks the new region, and a
/// request served with it failed as a malformed chain with no status byte
/// (the driver then saw stale bytes as a successful read). The server
/// pauses each turn after its snapshot (a test hook), so that every
/// connect hits that window.
#[test]
fn requests_into_a_just_added_region_are_served() {
    let f = Fixture::standard(true, Compression::Gzip);
    let (o, image, img, sock) = (&f.o, &f.image, &f.img, &f.sock);
    let _served = Served::start_env(
        o,
        image,
        sock,
        &["--read-only", "--queues", "2"],
        &[("OCIDISK_TEST_TURN_PAUSE_MS", "40")],
    );
    for round in 0..8 {
        let mut c = Client::connect(sock, 2, true);
        let at = (round * 65536) as u64 % (img.len() as u64 - 65536);
        c.buf()[..65536].fill(0xa5);
        assert!(
            c.read(at, 65536) == img[at as usize..at as usize + 65536],
            "round {round}: read at {at} differs"
        );
    }
}
