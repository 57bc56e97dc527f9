//! A running VM survives the death of `ocidisk serve`: SIGKILL it, start
//! the same command again on the same socket, and the frontend reconnects
//! and goes on. Requests the dead server had taken from the ring but not
//! completed are resubmitted from the in-flight buffer
//! (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`); writes it had completed, flushed
//! or not, are still there.
//!
//! Two levels: this test process as the frontend (exact control over what
//! is in flight: the disk reads through a proxy that stalls, so a request
//! is provably inside the server when it dies), and QEMU with
//! `reconnect-ms` booting a real kernel whose guest reads every file, and
//! writes, while the server is killed and restarted.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cli::Ocidisk;
use common::fscheck::with_lost_found;
use common::imagegen::{self, Compression};
use common::proxy::{Fault, FaultProxy};
use common::registry::{Registry, run_ok};
use common::serve::{Fixture, Served};
use common::vhost_driver::{Driver, S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use common::vm::{Vm, compare_listing, run_qemu};
use vm_memory::{Bytes, GuestAddress};

const SECTOR: u64 = 512;
/// Where the tests lay out their own requests in guest memory.
const REQ_HDR: u64 = 0x30_0000;
const REQ_DATA: u64 = 0x40_0000;

/// The physical byte offset of `path`'s first data block in an ext4 image.
fn first_block_offset(img: &Path, path: &str) -> u64 {
    let out = run_ok(
        Command::new("debugfs")
            .args(["-R", &format!("bmap {path} 0")])
            .arg(img),
        Duration::from_secs(60),
    );
    let block: u64 = out
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("debugfs bmap {path}: {:?} {:?}", out.stdout, out.stderr));
    assert!(block > 0, "{path} has no first block");
    block * 4096
}

/// The standard image behind a registry and a fault proxy, served from
/// `proxy/restart:v1`.
struct Setup {
    fx: Fixture,
    /// The serving installation: a cache of its own (the fixture's holds
    /// the blobs materialize read, which a server would use instead of the
    /// network).
    o: Ocidisk,
    _reg: Registry,
    proxy: FaultProxy,
    image: String,
}

fn setup(read_only: bool) -> Setup {
    let fx = Fixture::standard(read_only, Compression::Gzip);
    let reg = Registry::start();
    reg.push(&fx.image, "restart:v1", false);
    let proxy = FaultProxy::start(&reg.host());
    let image = format!("{}/restart:v1", proxy.host());
    Setup {
        fx,
        o: Ocidisk::new(),
        _reg: reg,
        proxy,
        image,
    }
}

/// Post request `i` on queue 0 (descriptors 3i..3i+2): header, `len` bytes
/// of data at REQ_DATA + i MiB, status.
fn post(d: &mut Driver, i: u16, kind: u32, offset: u64, len: u32) {
    let hdr = REQ_HDR + u64::from(i) * 0x100;
    d.header_at(hdr, hdr + 0x80, kind, offset / SECTOR);
    let data = REQ_DATA + (u64::from(i) << 20);
    let mut descs = vec![(hdr, 16, false)];
    if len > 0 {
        descs.push((data, len, kind == VIRTIO_BLK_T_IN));
    }
    descs.push((hdr + 0x80, 1, true));
    d.post(0, &descs, 3 * i);
}

fn status_of(d: &Driver, i: u16) -> u8 {
    d.mem
        .read_obj(GuestAddress(REQ_HDR + u64::from(i) * 0x100 + 0x80))
        .unwrap()
}

fn data_of(d: &Driver, i: u16, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    d.mem
        .read_slice(&mut buf, GuestAddress(REQ_DATA + (u64::from(i) << 20)))
        .unwrap();
    buf
}

/// Wait until the proxy has stalled a blob fetch: the server is inside a
/// request that needs the network.
fn wait_for_stall(proxy: &FaultProxy, served: &Served) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.faults_done() == 0 {
        assert!(
            Instant::now() < deadline,
            "the server never fetched; stderr:\n{}",
            served.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the server get well into the stalled read.
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn reads_in_flight_when_the_server_is_killed_complete_after_the_restart() {
    let s = setup(true);
    let data_at = first_block_offset(&s.fx.dir.join("m.img"), "/usr/lib/size-1m-plus-3");
    // Nothing cached but indexes: every data read goes to the network.
    let extra = ["--read-only", "--cache-mem", "0", "--cache-disk", "0"];
    let mut served = Served::start(&s.o, &s.image, &s.fx.sock, &extra);
    let mut d = Driver::connect_tracked(&s.fx.sock, 1);
    // Every blob fetch from now on stalls (far past the test).
    s.proxy
        .set_fault(Fault::Stall(Duration::from_secs(300)), u32::MAX);
    // Eight reads: the file's data (which needs the network), metadata
    // blocks (which do not), spread so they are different spans.
    let reads: Vec<(u64, u32)> = (0..8u64)
        .map(|i| match i % 2 {
            0 => (data_at + i * 65536, 65536),
            _ => (i * 4096, 4096),
        })
        .collect();
    for (i, &(off, len)) in reads.iter().enumerate() {
        post(&mut d, i as u16, VIRTIO_BLK_T_IN, off, len);
    }
    wait_for_stall(&s.proxy, &served);
    // Whatever completed before the kill was right; the rest is in flight.
    let mut done = std::collections::HashSet::new();
    while let Some((head, _)) = d.wait_used_elem(0, Duration::from_millis(100)) {
        done.insert(head / 3);
    }
    assert!(done.len() < reads.len(), "nothing was in flight");
    served.signal(libc::SIGKILL);

    s.proxy.clear_fault();
    let t = Instant::now();
    let mut again = Served::start(&s.o, &s.image, &s.fx.sock, &extra);
    let ready = t.elapsed();
    d.reconnect(&s.fx.sock);
    while done.len() < reads.len() {
        let (head, _) = d
            .wait_used_elem(0, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("requests never completed; stderr:\n{}", again.stderr()));
        assert!(
            done.insert(head / 3),
            "request {} completed twice",
            head / 3
        );
    }
    for (i, &(off, len)) in reads.iter().enumerate() {
        assert_eq!(status_of(&d, i as u16), S_OK, "read {i}");
        assert!(
            data_of(&d, i as u16, len as usize)
                == s.fx.img[off as usize..(off + len as u64) as usize],
            "read {i} at {off} returned wrong bytes"
        );
    }
    let log = again.stderr();
    assert!(
        log.contains("resubmitting"),
        "nothing was resubmitted:\n{log}"
    );
    // The restarted server is ready from its caches fast.
    assert!(ready < Duration::from_secs(3), "restart took {ready:?}");
    eprintln!("restarted server ready in {ready:?}");
    // And it goes on serving new requests.
    let (st, bytes) = d.read(0, data_at / SECTOR, 4096);
    assert_eq!(st, S_OK);
    assert!(bytes == s.fx.img[data_at as usize..data_at as usize + 4096]);
    again.stop();
}

#[test]
fn acknowledged_writes_survive_a_kill_and_a_write_in_flight_is_redone() {
    let s = setup(false);
    let data_at = first_block_offset(&s.fx.dir.join("m.img"), "/usr/lib/size-1m-plus-3");
    let overlay = s.fx.dir.join("overlay");
    let ov = overlay.to_str().unwrap();
    let extra = ["--overlay", ov, "--cache-mem", "0", "--cache-disk", "0"];
    let mut served = Served::start(&s.o, &s.image, &s.fx.sock, &extra);
    let mut d = Driver::connect_tracked(&s.fx.sock, 1);
    let mut want = s.fx.img.clone();

    // A: written and flushed. B: written, acknowledged, never flushed.
    let a_at = 4 * 4096;
    let b_at = data_at + 8 * 4096;
    for (at, byte) in [(a_at, 0xaau8), (b_at, 0xbb)] {
        assert_eq!(d.write(0, at / SECTOR, &[byte; 4096]), S_OK);
        want[at as usize..at as usize + 4096].fill(byte);
        if byte == 0xaa {
            assert_eq!(d.request(0, VIRTIO_BLK_T_FLUSH, 0, 0, false).0, S_OK);
        }
    }
    // C: half a sector-aligned block in file data the server has not read:
    // it must fetch the lower block first, and that fetch stalls.
    s.proxy
        .set_fault(Fault::Stall(Duration::from_secs(300)), u32::MAX);
    let c_at = data_at + 2 * 4096 + 1024;
    d.mem
        .write_slice(&[0xcc; 2048], GuestAddress(REQ_DATA + (9u64 << 20)))
        .unwrap();
    post(&mut d, 9, VIRTIO_BLK_T_OUT, c_at, 2048);
    want[c_at as usize..c_at as usize + 2048].fill(0xcc);
    wait_for_stall(&s.proxy, &served);
    assert!(
        d.wait_used_elem(0, Duration::from_millis(200)).is_none(),
        "the write completed before the kill"
    );
    served.signal(libc::SIGKILL);

    s.proxy.clear_fault();
    let mut again = Served::start(&s.o, &s.image, &s.fx.sock, &extra);
    d.reconnect(&s.fx.sock);
    let (head, _) = d
        .wait_used_elem(0, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the write never completed; stderr:\n{}", again.stderr()));
    assert_eq!(head, 27, "the resubmitted write");
    assert_eq!(status_of(&d, 9), S_OK);
    for (what, at) in [
        ("flushed", a_at),
        ("unflushed", b_at),
        ("in flight", c_at - 1024),
    ] {
        let (st, got) = d.read(0, at / SECTOR, 4096);
        assert_eq!(st, S_OK, "{what}");
        assert!(
            got == want[at as usize..at as usize + 4096],
            "the {what} write is not there after the restart"
        );
    }
    // And after a clean stop and a third start, from the overlay alone.
    again.stop();
    let _third = Served::start(&s.o, &s.image, &s.fx.sock, &extra);
    let mut d = Driver::connect(&s.fx.sock, 1, 0);
    for at in [a_at, b_at, c_at - 1024] {
        let (_, got) = d.read(0, at / SECTOR, 4096);
        assert!(got == want[at as usize..at as usize + 4096]);
    }
}

/// A listing of the guest's tree for every round of `survive`.
fn rounds(console: &str) -> Vec<Vec<&str>> {
    console
        .split("OCIDISK-ROUND ")
        .skip(1)
        .map(|r| {
            r.lines()
                .skip_while(|l| *l != "OCIDISK-TREE-BEGIN")
                .skip(1)
                .take_while(|l| *l != "OCIDISK-TREE-END")
                .filter(|l| !l.starts_with("./ocidisk-guest-file "))
                .collect()
        })
        .collect()
}

/// Boot a guest that reads every file (sha256) in three rounds while its
/// server is SIGKILLed and started again twice, each time while a guest
/// read is inside the server (its fetch stalled by the proxy); returns the
/// console and the three servers' logs.
fn survive(read_only: bool) -> (String, Vec<String>) {
    let s = setup(read_only);
    let oracle = with_lost_found(imagegen::oracle(&imagegen::standard_layers()));
    let overlay = s.fx.dir.join("overlay");
    // Nothing cached but indexes: every round reads through the network.
    let mut extra = vec!["--cache-mem", "0", "--cache-disk", "0"];
    if read_only {
        extra.push("--read-only");
    } else {
        extra.extend(["--overlay", overlay.to_str().unwrap()]);
    }
    let mut vm = Vm::new(if read_only {
        "survive"
    } else {
        "survive:written-before-the-kill"
    });
    vm.mount = if read_only { "ro" } else { "rw" };
    vm.reconnect = true;
    let mut served = Served::start(&s.o, &s.image, &s.fx.sock, &extra);
    let mut logs = Vec::new();
    let (status, console, err) = std::thread::scope(|scope| {
        // The next fetch stalls: the guest's first data read is then inside
        // the server.
        s.proxy.set_fault(Fault::Stall(Duration::from_secs(300)), 1);
        let mut cmd = vm.command(&s.fx.sock, "initramfs.cpio");
        let qemu = scope.spawn(move || run_qemu(&mut cmd, Duration::from_secs(900), None));
        // VM tests take turns (one TCG guest at a time): wait for ours.
        let booted = Instant::now() + Duration::from_secs(900);
        while !served.stderr().contains("frontend connected") && !qemu.is_finished() {
            assert!(Instant::now() < booted, "the VM never connected");
            std::thread::sleep(Duration::from_millis(50));
        }
        for kill in 1..=2 {
            let deadline = Instant::now() + Duration::from_secs(240);
            while s.proxy.faults_done() < kill && !qemu.is_finished() {
                assert!(Instant::now() < deadline, "no fetch stalled (kill {kill})");
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(300));
            served.signal(libc::SIGKILL);
            logs.push(served.stderr());
            s.proxy.clear_fault();
            served = Served::start(&s.o, &s.image, &s.fx.sock, &extra);
            if kill == 1 {
                // Again for the second server, which may stall on the very
                // request it resubmits.
                s.proxy.set_fault(Fault::Stall(Duration::from_secs(300)), 1);
            }
        }
        qemu.join().unwrap()
    });
    logs.push(served.stderr());
    served.stop();
    assert!(
        status.is_some() && console.contains("OCIDISK-DONE rc=0"),
        "the guest did not finish; console:\n{console}\nqemu:\n{err}\nservers:\n{}",
        logs.join("\n----\n")
    );
    let r = rounds(&console);
    assert_eq!(r.len(), 3, "{console}");
    for (i, listing) in r.iter().enumerate() {
        let diff = compare_listing(listing, &oracle);
        assert!(diff.is_empty(), "round {}: {diff:#?}", i + 1);
    }
    assert!(
        console.contains("OCIDISK-IOERRORS 0\n"),
        "the guest saw I/O errors:\n{console}"
    );
    // Each restarted server took up what the dead one had in flight.
    for l in &logs[1..] {
        assert!(
            l.contains("resubmitting"),
            "a restart resubmitted nothing:\n{}",
            logs.join("\n----\n")
        );
    }
    (console, logs)
}

#[test]
fn a_vm_reading_every_file_survives_two_kills_of_its_server() {
    survive(true);
}

#[test]
fn a_vm_write_fsynced_before_a_kill_reads_back_after_it() {
    let (console, _) = survive(false);
    let cats: Vec<&str> = console
        .split("OCIDISK-CAT-BEGIN\n")
        .skip(1)
        .map(|c| c.split("OCIDISK-CAT-END").next().unwrap_or(""))
        .collect();
    assert_eq!(cats.len(), 3, "{console}");
    for c in cats {
        assert_eq!(c, "written-before-the-kill\n", "{console}");
    }
}
