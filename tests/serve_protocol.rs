//! `ocidisk serve` at the protocol level, no VM: this test is the driver. It
//! connects with `vhost`'s frontend over the real socket, shares memfd
//! memory, builds split rings, and checks what a guest sees: the device's
//! bytes equal `materialize`'s image, writes stick across reconnects, and
//! hostile requests get an error status without hurting the server.

mod common;

use std::path::Path;
use std::time::Duration;

use common::cli::inspect_json;
use common::imagegen::Compression;
use common::serve::{Fixture, Served};
use common::vhost_driver::*;
use vhost::vhost_user::VhostUserProtocolFeatures;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use vm_memory::Bytes;

/// The standard image (gzip layers) as an OCI layout, and its bytes.
fn fixture(read_only: bool) -> Fixture {
    Fixture::standard(read_only, Compression::Gzip)
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn read_all(d: &mut Driver, q: usize, size: usize, chunk: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let n = chunk.min((size - out.len()) as u32);
        let (status, data) = d.read(q, (out.len() / 512) as u64, n);
        assert_eq!(status, S_OK, "read at {}", out.len());
        out.extend_from_slice(&data);
    }
    out
}

#[test]
fn reads_equal_materialize_and_writes_stick_across_reconnects() {
    let f = fixture(false);
    let overlay = f.dir.join("guest.overlay");
    let pid_file = f.dir.join("serve.pid");
    let mut served = Served::start(
        &f.o,
        &f.image,
        &f.sock,
        &[
            "--overlay",
            overlay.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        served.pid().to_string()
    );

    let mut d = Driver::connect(&f.sock, 1, 0);
    // Features and config space.
    assert_eq!(d.features & F_BLK_RO, 0, "writable disk offers no RO");
    assert_ne!(d.features & F_BLK_DISCARD, 0);
    assert_ne!(d.features & F_BLK_WRITE_ZEROES, 0);
    assert_ne!(d.features & F_RING_EVENT_IDX, 0);
    for p in [
        VhostUserProtocolFeatures::CONFIG,
        VhostUserProtocolFeatures::MQ,
        VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
        VhostUserProtocolFeatures::REPLY_ACK,
    ] {
        assert!(d.protocol.contains(p), "protocol feature {p:?}");
    }
    let config = d.config();
    let capacity = u64::from_le_bytes(config[0..8].try_into().unwrap());
    assert_eq!(capacity * 512, f.img.len() as u64);
    assert_eq!(le32(&config, 12), 126, "seg_max");
    assert_eq!(le32(&config, 20), 512, "blk_size");
    assert_eq!(
        u16::from_le_bytes([config[34], config[35]]),
        1,
        "num_queues"
    );

    // Every byte, in 4 MiB requests, equals materialize's image.
    let all = read_all(&mut d, 0, f.img.len(), 4 << 20);
    assert!(
        all == f.img,
        "device bytes differ from the materialized image"
    );
    // Through an indirect table too.
    d.mem
        .write_slice(&[0u8; 8192], vm_memory::GuestAddress(DATA))
        .unwrap();
    let hdr_in = {
        let mut h = [0u8; 16];
        h[8..16].copy_from_slice(&2u64.to_le_bytes());
        h
    };
    d.mem
        .write_slice(&hdr_in, vm_memory::GuestAddress(HDR))
        .unwrap();
    let used = d
        .submit_indirect(
            0,
            &[(HDR, 16, false), (DATA, 8192, true), (STATUS, 1, true)],
            Duration::from_secs(10),
        )
        .expect("indirect request answered");
    assert_eq!((d.status(), used), (S_OK, 8193));
    let mut got = vec![0u8; 8192];
    d.mem
        .read_slice(&mut got, vm_memory::GuestAddress(DATA))
        .unwrap();
    assert!(got == f.img[1024..1024 + 8192]);

    // GET_ID: the image digest's first 20 hex digits.
    let digest = inspect_json(&f.o.ok(&["inspect", "--json", &f.image]))["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let (status, _) = d.request(0, VIRTIO_BLK_T_GET_ID, 0, 20, true);
    assert_eq!(status, S_OK);
    let mut id = vec![0u8; 20];
    d.mem
        .read_slice(&mut id, vm_memory::GuestAddress(DATA))
        .unwrap();
    assert_eq!(String::from_utf8(id).unwrap(), digest[..20]);

    // Write, flush, read back; WRITE_ZEROES and DISCARD read back zeros.
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 256) as u8).collect();
    let sector = (f.img.len() as u64 / 512) - 64;
    assert_eq!(d.write(0, sector, &pattern), S_OK);
    assert_eq!(d.request(0, VIRTIO_BLK_T_FLUSH, 0, 0, false).0, S_OK);
    assert_eq!(d.read(0, sector, 8192), (S_OK, pattern.clone()));
    for (kind, at) in [
        (VIRTIO_BLK_T_WRITE_ZEROES, 8u64),
        (VIRTIO_BLK_T_DISCARD, 40),
    ] {
        let mut seg = [0u8; 16];
        seg[0..8].copy_from_slice(&at.to_le_bytes());
        seg[8..12].copy_from_slice(&16u32.to_le_bytes());
        d.mem
            .write_slice(&seg, vm_memory::GuestAddress(DATA))
            .unwrap();
        assert_eq!(d.request(0, kind, 0, 16, false).0, S_OK, "type {kind}");
        let (s, z) = d.read(0, at, 16 * 512);
        assert_eq!(s, S_OK);
        assert!(z.iter().all(|&b| b == 0), "type {kind} reads back zeros");
    }
    drop(d);

    // A new connection (a VM reboot) sees the same disk.
    let mut d = Driver::connect(&f.sock, 1, 0);
    assert_eq!(d.read(0, sector, 8192), (S_OK, pattern.clone()));
    drop(d);

    // A restarted server with the same overlay too.
    let status = served.stop();
    assert!(status.success(), "{status}; stderr:\n{}", served.stderr());
    assert!(!f.sock.exists(), "socket removed at exit");
    assert!(!pid_file.exists(), "pid file removed at exit");
    let _served = Served::start(
        &f.o,
        &f.image,
        &f.sock,
        &["--overlay", overlay.to_str().unwrap()],
    );
    let mut d = Driver::connect(&f.sock, 1, F_RING_EVENT_IDX);
    assert_eq!(d.features & F_RING_EVENT_IDX, 0);
    assert_eq!(d.read(0, sector, 8192), (S_OK, pattern));
    // Without EVENT_IDX every request still completes; the zeroed ranges
    // stayed zero across the restart.
    let mut expected = f.img[..1 << 20].to_vec();
    expected[8 * 512..24 * 512].fill(0);
    expected[40 * 512..56 * 512].fill(0);
    let again = read_all(&mut d, 0, 1 << 20, 4096);
    assert!(again == expected);
}

#[test]
fn hostile_requests_get_errors_and_the_server_survives() {
    let f = fixture(true);
    let mut served = Served::start(&f.o, &f.image, &f.sock, &["--read-only"]);
    let mut d = Driver::connect(&f.sock, 1, 0);
    assert_ne!(d.features & F_BLK_RO, 0, "read-only disk offers RO");
    assert_eq!(d.features & F_BLK_DISCARD, 0);
    let sectors = f.img.len() as u64 / 512;
    let wait = Duration::from_secs(10);
    let ok_read = |d: &mut Driver| {
        let (s, data) = d.read(0, 0, 4096);
        assert_eq!(s, S_OK);
        assert!(data == f.img[..4096]);
    };

    // Ranges past the end, overflowing sector*512, unaligned lengths.
    for (sector, len) in [
        (sectors, 512),
        (sectors - 1, 1024),
        (u64::MAX / 512 + 1, 512),
        (u64::MAX, 512),
        (0, 100),
    ] {
        let (s, _) = d.request(0, VIRTIO_BLK_T_IN, sector, len, true);
        assert_eq!(s, S_IOERR, "sector {sector} len {len}");
    }
    // Writes on a read-only disk, and unknown request types.
    assert_eq!(d.write(0, 0, &[1u8; 512]), S_IOERR);
    assert_eq!(d.request(0, VIRTIO_BLK_T_DISCARD, 0, 16, false).0, S_IOERR);
    assert_eq!(d.request(0, 2, 0, 0, false).0, S_UNSUPP);
    assert_eq!(d.request(0, 0xdead_beef, 0, 0, false).0, S_UNSUPP);
    ok_read(&mut d);

    // Header too short, header device-writable, no status byte.
    assert_eq!(
        d.raw_request(VIRTIO_BLK_T_IN, 0, &[(HDR, 8, false), (STATUS, 1, true)]),
        Some(1)
    );
    assert_eq!(d.status(), S_IOERR);
    assert_eq!(
        d.raw_request(VIRTIO_BLK_T_IN, 0, &[(HDR, 16, true), (STATUS, 1, true)]),
        Some(1)
    );
    assert_eq!(d.status(), S_IOERR);
    assert_eq!(
        d.raw_request(VIRTIO_BLK_T_IN, 0, &[(HDR, 16, false), (DATA, 512, false)]),
        Some(0),
        "no writable byte: nothing written, request still completed"
    );
    // Data descriptors of the wrong direction: a read whose buffer is
    // device-readable has no data to fill, only the status.
    assert_eq!(
        d.raw_request(
            VIRTIO_BLK_T_IN,
            0,
            &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]
        ),
        Some(1)
    );
    // Buffers outside guest memory, huge lengths, lengths that wrap.
    for descs in [
        vec![(HDR, 16, false), (1 << 40, 4096, true), (STATUS, 1, true)],
        vec![(HDR, 16, false), (DATA, u32::MAX, true), (STATUS, 1, true)],
        vec![
            (HDR, 16, false),
            (u64::MAX - 100, 4096, true),
            (STATUS, 1, true),
        ],
        vec![
            (HDR, 16, false),
            (DATA, 4096, true),
            (MEM_SIZE as u64, 1, true),
        ],
    ] {
        let used = d.raw_request(VIRTIO_BLK_T_IN, 0, &descs);
        assert_eq!(used, Some(0), "{descs:x?}: completed with nothing written");
    }
    // A header outside guest memory: the status byte still says IOERR.
    let used = d.raw_request(
        VIRTIO_BLK_T_IN,
        0,
        &[(u64::MAX - 8, 16, false), (STATUS, 1, true)],
    );
    assert_eq!((used, d.status()), (Some(1), S_IOERR));
    ok_read(&mut d);
    // A descriptor chain that loops back on itself.
    let looped = [
        RawDescriptor::from(Descriptor::new(HDR, 16, 1, 1)),
        RawDescriptor::from(Descriptor::new(DATA, 512, 1 | 2, 0)),
    ];
    let used = d.submit_raw(0, &looped, 0, wait);
    assert!(used.is_some(), "a looping chain still completes");
    // A descriptor index beyond the table.
    let bad_next = [RawDescriptor::from(Descriptor::new(HDR, 16, 1, 5000))];
    assert!(d.submit_raw(0, &bad_next, 0, wait).is_some());
    ok_read(&mut d);

    // An avail index far ahead of the ring breaks the queue: the device
    // stops using it, the server stays up.
    d.set_avail_idx(0, 40_000);
    std::thread::sleep(Duration::from_millis(300));
    assert!(served.running(), "server survived a broken queue");
    drop(d);
    // Garbage on the socket instead of vhost-user messages.
    {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(&f.sock).unwrap();
        let _ = s.write_all(&[0xffu8; 4096]);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(served.running(), "server survived garbage on the socket");
    // And serves the next driver normally.
    let mut d = Driver::connect(&f.sock, 1, 0);
    ok_read(&mut d);
    let stderr = served.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn two_queues_serve_independently() {
    let f = fixture(true);
    let _served = Served::start(&f.o, &f.image, &f.sock, &["--read-only", "--queues", "2"]);
    assert!(
        _served.ready_line.contains("2 queues"),
        "{}",
        _served.ready_line
    );
    let mut d = Driver::connect(&f.sock, 2, 0);
    let config = d.config();
    assert_eq!(u16::from_le_bytes([config[34], config[35]]), 2);
    let half = f.img.len() / 2 / 512 * 512;
    let a = read_all(&mut d, 0, half, 1 << 20);
    // The second half on queue 1, in the largest requests the driver's
    // memory holds.
    let mut b = Vec::new();
    while half + b.len() < f.img.len() {
        let n = (f.img.len() - half - b.len()).min(DATA_MAX as usize);
        let (s, piece) = d.read(1, ((half + b.len()) / 512) as u64, n as u32);
        assert_eq!(s, S_OK);
        b.extend_from_slice(&piece);
    }
    assert!(a == f.img[..half] && b == f.img[half..]);
}

#[test]
fn socket_lifecycle_refuses_live_replaces_stale() {
    let f = fixture(true);
    // A regular file in the way is never removed.
    std::fs::write(&f.sock, b"precious").unwrap();
    let out = f.o.fail(&[
        "serve",
        &f.image,
        "--read-only",
        "--socket",
        f.sock.to_str().unwrap(),
    ]);
    assert!(out.contains("is not a socket"), "{out}");
    assert_eq!(std::fs::read(&f.sock).unwrap(), b"precious");
    std::fs::remove_file(&f.sock).unwrap();

    // A stale socket (nobody listening) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&f.sock).unwrap());
    assert!(f.sock.exists());
    let mut served = Served::start(&f.o, &f.image, &f.sock, &["--read-only"]);

    // A live one is refused, and the live server keeps working.
    let out = f.o.fail(&[
        "serve",
        &f.image,
        "--read-only",
        "--socket",
        f.sock.to_str().unwrap(),
    ]);
    assert!(out.contains("in use by a running server"), "{out}");
    let mut d = Driver::connect(&f.sock, 1, 0);
    assert_eq!(d.read(0, 0, 512).0, S_OK);

    // Too many queues is a clear error before anything is created.
    let other = f.dir.join("other.sock");
    let out = f.o.fail(&[
        "serve",
        &f.image,
        "--queues",
        "999",
        "--socket",
        other.to_str().unwrap(),
    ]);
    assert!(out.contains("--queues 999"), "{out}");
    assert!(!Path::new(&other).exists());

    // SIGINT with a driver connected: clean exit, socket gone.
    let status = served.signal(libc::SIGINT);
    assert!(status.success(), "{status}; stderr:\n{}", served.stderr());
    assert!(!f.sock.exists());
}

#[test]
fn prefetch_and_flush_to_keep_a_complete_image_with_guest_writes() {
    let f = fixture(false);
    let full = f.dir.join("full.img");
    let mut served = Served::start(
        &f.o,
        &f.image,
        &f.sock,
        &["--prefetch", "--flush-to", full.to_str().unwrap()],
    );
    let mut d = Driver::connect(&f.sock, 1, 0);
    let sector = 2048;
    assert_eq!(d.write(0, sector, &[0x5au8; 4096]), S_OK);
    assert_eq!(d.request(0, VIRTIO_BLK_T_FLUSH, 0, 0, false).0, S_OK);
    // --prefetch fetches every span; --flush-to renames the image into
    // place once all have arrived.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !full.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "--flush-to image never completed; stderr:\n{}",
            served.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(d);
    assert!(served.stop().success());
    let mut want = f.img.clone();
    let at = sector as usize * 512;
    want[at..at + 4096].fill(0x5a);
    assert!(
        std::fs::read(&full).unwrap() == want,
        "--flush-to image differs"
    );
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn a_flooding_guest_cannot_block_shutdown_and_reconnects_leak_nothing() {
    let f = fixture(true);
    let mut served = Served::start(&f.o, &f.image, &f.sock, &["--read-only", "--queues", "2"]);
    // Many connections, one after another: no descriptor is left behind.
    drop(Driver::connect(&f.sock, 2, 0));
    std::thread::sleep(Duration::from_millis(200));
    let before = open_fds(served.pid());
    for _ in 0..20 {
        let mut d = Driver::connect(&f.sock, 2, 0);
        assert_eq!(d.read(1, 0, 4096).0, S_OK);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = open_fds(served.pid());
    assert!(
        after <= before + 2,
        "open descriptors grew from {before} to {after} over 20 connections"
    );

    // A guest that keeps its queue full forever: the server still answers
    // the frontend's control messages, its other queue still works, and
    // SIGTERM still stops it promptly.
    let mut d = Driver::connect(&f.sock, 2, 0);
    let (stop, spinner) = d.flood(0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.read(1, 0, 4096).0, S_OK, "queue 1 unaffected");
    assert!(d.stop_queue(0) > 0, "GET_VRING_BASE answered while flooded");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spinner.join().unwrap();
    let (stop, spinner) = d.flood(1);
    std::thread::sleep(Duration::from_millis(500));
    let t = std::time::Instant::now();
    let status = served.stop();
    let took = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spinner.join().unwrap();
    assert!(status.success(), "{status}; stderr:\n{}", served.stderr());
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
}
