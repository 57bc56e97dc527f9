//! Host-side vhost-user-blk load generator for `bench/serve.sh`: libblkio's
//! `virtio-blk-vhost-user` driver against any vhost-user-blk socket
//! (`ocidisk serve` or `qemu-storage-daemon`), so both are measured by the
//! same client.
//!
//! ```text
//! serve_bench SOCKET randread|seqread|warm BLOCK_SIZE QUEUE_DEPTH SECONDS
//! ```
//! Prints `IOPS MiB/s` on one line. `warm` reads the whole device once
//! (1 MiB requests) and prints the time it took.

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use blkio::{Blkio, Completion, ReqFlags};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: serve_bench SOCKET randread|seqread|warm BLOCK_SIZE QUEUE_DEPTH SECONDS");
        std::process::exit(2);
    }
    let (sock, mode) = (&args[1], args[2].as_str());
    let bs: usize = args[3].parse().expect("BLOCK_SIZE");
    let qd: usize = args[4].parse().expect("QUEUE_DEPTH");
    let secs: f64 = args[5].parse().expect("SECONDS");

    let mut b = Blkio::new("virtio-blk-vhost-user").expect("libblkio driver");
    b.set_str("path", sock).unwrap();
    b.set_bool("read-only", true).unwrap();
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
        if mode == "randread" {
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
    let submit = |q: &mut blkio::Blkioq, slot: usize, at: u64| {
        let buf = (region.addr + slot * bs) as *mut u8;
        q.read(at, buf, bs, slot, ReqFlags::empty());
    };

    let start = Instant::now();
    let deadline = if mode == "warm" {
        None
    } else {
        Some(start + Duration::from_secs_f64(secs))
    };
    for slot in 0..qd {
        submit(&mut q, slot, next_offset(mode));
    }
    let mut done = 0u64;
    let mut inflight = qd;
    let mut completions: Vec<MaybeUninit<Completion>> =
        (0..qd).map(|_| MaybeUninit::uninit()).collect();
    let total = if mode == "warm" { blocks } else { u64::MAX };
    while inflight > 0 {
        let n = q.do_io(&mut completions, 1, None, None).expect("do_io");
        for c in &completions[..n] {
            // SAFETY: do_io initialised the first n completions.
            let c = unsafe { c.assume_init_read() };
            assert_eq!(c.ret, 0, "a read failed");
            done += 1;
            inflight -= 1;
            let more =
                done + (inflight as u64) < total && deadline.is_none_or(|d| Instant::now() < d);
            if more {
                submit(&mut q, c.user_data, next_offset(mode));
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
    }
}
