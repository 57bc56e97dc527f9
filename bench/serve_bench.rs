//! Host-side vhost-user-blk load generator for `bench/serve.sh`: libblkio's
//! `virtio-blk-vhost-user` driver against any vhost-user-blk socket
//! (`ocidisk serve` or `qemu-storage-daemon`), so both are measured by the
//! same client.
//!
//! ```text
//! serve_bench SOCKET randread|seqread|warm|mixed BLOCK_SIZE QUEUE_DEPTH SECONDS
//! ```
//! Prints `IOPS MiB/s` on one line. `warm` reads the whole device once
//! (1 MiB requests) and prints the time it took. `mixed` (for
//! `bench/soak.sh`) connects writable and sends random reads and writes,
//! half each, with a flush after every 1000 completions; each written
//! block carries its offset, and reads of blocks written before check it.

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use blkio::{Blkio, Completion, ReqFlags};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!(
            "usage: serve_bench SOCKET randread|seqread|warm|mixed BLOCK_SIZE QUEUE_DEPTH SECONDS"
        );
        std::process::exit(2);
    }
    let (sock, mode) = (&args[1], args[2].as_str());
    let bs: usize = args[3].parse().expect("BLOCK_SIZE");
    let qd: usize = args[4].parse().expect("QUEUE_DEPTH");
    let secs: f64 = args[5].parse().expect("SECONDS");

    let mut b = Blkio::new("virtio-blk-vhost-user").expect("libblkio driver");
    b.set_str("path", sock).unwrap();
    let mixed = mode == "mixed";
    b.set_bool("read-only", !mixed).unwrap();
    b.connect().expect("connect");
    let capacity = b.get_u64("capacity").unwrap();
    let mut q = b.start().expect("start").queues.remove(0);
    let (bs, qd) = if mode == "warm" {
        (1 << 20, 1)
    } else {
        (bs, qd)
    };
    let region = b.alloc_mem_region(bs * qd).unwrap();
    b.map_mem_region(&region).unwrap();

    let blocks = capacity / bs as u64;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_seq = 0u64;
    let mut next_offset = |mode: &str| -> u64 {
        if mode == "randread" || mode == "mixed" {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % blocks) * bs as u64
        } else {
            let o = (next_seq % blocks) * bs as u64;
            next_seq += 1;
            o
        }
    };
    // mixed: which blocks hold our stamp, and what each slot is doing
    // (offset, written); a flush uses the slot past the data slots.
    let mut written = std::collections::HashSet::new();
    // (offset, is a write, a read that must see our stamp: the block's
    // write had completed when the read was sent).
    let mut slots: Vec<(u64, bool, bool)> = vec![(0, false, false); qd];
    let mut turn = 0u64;
    let submit = |q: &mut blkio::Blkioq,
                  slots: &mut Vec<(u64, bool, bool)>,
                  written: &std::collections::HashSet<u64>,
                  turn: &mut u64,
                  slot: usize,
                  at: u64| {
        let buf = (region.addr + slot * bs) as *mut u8;
        *turn += 1;
        if mixed && (*turn).is_multiple_of(2) {
            // SAFETY: the slot's `bs` bytes lie in the mapped region, and
            // no request is in flight on this slot.
            let data = unsafe { std::slice::from_raw_parts_mut(buf, bs) };
            for (i, w) in data.chunks_mut(8).enumerate() {
                w.copy_from_slice(&(at + i as u64).to_le_bytes());
            }
            slots[slot] = (at, true, false);
            q.write(at, buf, bs, slot, ReqFlags::empty());
        } else {
            slots[slot] = (at, false, written.contains(&at));
            q.read(at, buf, bs, slot, ReqFlags::empty());
        }
    };

    let start = Instant::now();
    let deadline = if mode == "warm" {
        None
    } else {
        Some(start + Duration::from_secs_f64(secs))
    };
    for slot in 0..qd {
        submit(
            &mut q,
            &mut slots,
            &written,
            &mut turn,
            slot,
            next_offset(mode),
        );
    }
    /// The user data of flush requests.
    const FLUSH: usize = usize::MAX;
    let mut flushes = 0u64;
    let mut done = 0u64;
    let mut inflight = qd;
    let mut completions: Vec<MaybeUninit<Completion>> =
        (0..qd + 1).map(|_| MaybeUninit::uninit()).collect();
    let total = if mode == "warm" { blocks } else { u64::MAX };
    while inflight > 0 {
        let n = q.do_io(&mut completions, 1, None, None).expect("do_io");
        for c in &completions[..n] {
            // SAFETY: do_io initialised the first n completions.
            let c = unsafe { c.assume_init_read() };
            assert_eq!(c.ret, 0, "a request failed");
            inflight -= 1;
            if c.user_data == FLUSH {
                flushes += 1;
                continue;
            }
            done += 1;
            if mixed {
                let (at, was_write, stamped) = slots[c.user_data];
                if was_write {
                    written.insert(at);
                } else if stamped {
                    let buf = (region.addr + c.user_data * bs) as *const u8;
                    // SAFETY: the read into this slot has completed.
                    let data = unsafe { std::slice::from_raw_parts(buf, 8) };
                    assert_eq!(data, at.to_le_bytes(), "block {at} lost its write");
                }
                if done.is_multiple_of(1000) {
                    q.flush(FLUSH, ReqFlags::empty());
                    inflight += 1;
                }
            }
            let more =
                done + (inflight as u64) < total && deadline.is_none_or(|d| Instant::now() < d);
            if more {
                submit(
                    &mut q,
                    &mut slots,
                    &written,
                    &mut turn,
                    c.user_data,
                    next_offset(mode),
                );
                inflight += 1;
            }
        }
    }
    let t = start.elapsed().as_secs_f64();
    if mode == "warm" {
        println!("{t:.3}");
    } else {
        let iops = done as f64 / t;
        println!("{iops:.0} {:.1}", iops * bs as f64 / 1048576.0);
        if mixed {
            eprintln!(
                "{done} requests, {flushes} flushes, {} blocks written",
                written.len()
            );
        }
    }
}
