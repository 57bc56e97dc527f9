//! Cluster compression: one encoder per worker thread, jobs numbered as
//! they are submitted and handed back in that order, so the file's bytes
//! do not depend on which worker finished first.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{Codec, Qcow2Error};

/// zstd level: zstd's own default (QEMU's too).
const ZSTD_LEVEL: i32 = 3;
/// zlib level: a little below zlib's default 6; within 1% of its size on
/// filesystem images at about twice the speed.
const ZLIB_LEVEL: u32 = 4;
/// qcow2's deflate streams are raw with a 4 KiB window: QEMU inflates
/// with `windowBits = -12`.
const ZLIB_WINDOW_BITS: u8 = 12;

fn new_zlib() -> flate2::Compress {
    flate2::Compress::new_with_window_bits(
        flate2::Compression::new(ZLIB_LEVEL),
        false,
        ZLIB_WINDOW_BITS,
    )
}

/// A cluster as it goes into the file.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Encoded {
    /// Compressed bytes, shorter than a cluster.
    Compressed(Vec<u8>),
    /// The cluster as it is: compression did not shrink it.
    Plain(Vec<u8>),
}

/// Compresses clusters of one size with one codec.
pub(super) struct Encoder {
    cluster_size: usize,
    zlib: Option<flate2::Compress>,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl Encoder {
    pub(super) fn new(codec: Codec, cluster_size: usize) -> Result<Encoder, Qcow2Error> {
        Ok(match codec {
            Codec::Zlib => Encoder {
                cluster_size,
                zlib: Some(new_zlib()),
                zstd: None,
            },
            Codec::Zstd => Encoder {
                cluster_size,
                zlib: None,
                zstd: Some(
                    zstd::bulk::Compressor::new(ZSTD_LEVEL)
                        .map_err(|e| Qcow2Error::Internal(format!("zstd compressor: {e}")))?,
                ),
            },
        })
    }

    /// `data` compressed if that makes it shorter than a cluster.
    pub(super) fn encode(&mut self, data: Vec<u8>) -> Encoded {
        let limit = self.cluster_size - 1;
        let mut out = Vec::with_capacity(limit);
        let shrunk = if let Some(z) = &mut self.zlib {
            z.reset();
            let done = matches!(
                z.compress_vec(&data, &mut out, flate2::FlushCompress::Finish),
                Ok(flate2::Status::StreamEnd)
            );
            if !done {
                // zlib-rs 0.6.8: `reset` after a stream that ran out of
                // output space leaves state behind, and a later cluster
                // panics in `zng_tr_stored_block` (seen with 512 B and
                // 4 KiB clusters of the Debian image). A fresh stream
                // after each such cluster avoids it.
                *z = new_zlib();
            }
            done
        } else if let Some(z) = &mut self.zstd {
            z.compress_to_buffer(&data, &mut out).is_ok()
        } else {
            false
        };
        if shrunk && out.len() <= limit {
            Encoded::Compressed(out)
        } else {
            Encoded::Plain(data)
        }
    }
}

/// A compressed cluster back to its `cluster_size` bytes. `bytes` may run
/// past the compressed stream's end (to the end of its last sector).
pub(super) fn decode(codec: Codec, bytes: &[u8], cluster_size: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; cluster_size];
    match codec {
        Codec::Zlib => {
            let mut d = flate2::Decompress::new_with_window_bits(false, ZLIB_WINDOW_BITS);
            d.decompress(bytes, &mut out, flate2::FlushDecompress::Finish)
                .ok()?;
            (d.total_out() as usize == cluster_size).then_some(out)
        }
        Codec::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(bytes).ok()?.single_frame();
            std::io::Read::read_exact(&mut d, &mut out).ok()?;
            Some(out)
        }
    }
}

/// A job: its number, the guest cluster, the bytes.
type Job = (u64, u64, Vec<u8>);
/// A result: its number, the guest cluster, the encoding.
type Done = (u64, u64, Encoded);

/// Worker threads compressing clusters, results in submission order.
pub(super) struct Pipeline {
    jobs: Option<SyncSender<Job>>,
    results: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    submitted: u64,
    next: u64,
    early: BTreeMap<u64, (u64, Encoded)>,
}

impl Pipeline {
    /// Start `threads` workers.
    pub(super) fn new(
        codec: Codec,
        cluster_size: usize,
        threads: usize,
    ) -> Result<Pipeline, Qcow2Error> {
        let threads = threads.max(1);
        // Enough queued work to keep every worker busy, little enough to
        // bound memory to a few MiB.
        let (jobs, job_rx) = sync_channel::<Job>(threads * 4);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, results) = std::sync::mpsc::channel::<Done>();
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let mut enc = Encoder::new(codec, cluster_size)?;
            let (rx, tx) = (Arc::clone(&job_rx), done_tx.clone());
            let w = std::thread::Builder::new()
                .name(format!("qcow2-compress-{i}"))
                .spawn(move || {
                    loop {
                        let job = crate::sync::lock(&rx).recv();
                        let Ok((seq, guest, data)) = job else { return };
                        if tx.send((seq, guest, enc.encode(data))).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|e| Qcow2Error::Internal(format!("starting a compression thread: {e}")))?;
            workers.push(w);
        }
        Ok(Pipeline {
            jobs: Some(jobs),
            results,
            workers,
            submitted: 0,
            next: 0,
            early: BTreeMap::new(),
        })
    }

    /// Queue a cluster (blocks while the workers are a queue behind).
    pub(super) fn submit(&mut self, guest: u64, data: Vec<u8>) -> Result<(), Qcow2Error> {
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| Qcow2Error::Internal("submit after close".into()))?;
        jobs.send((self.submitted, guest, data))
            .map_err(|_| Qcow2Error::Internal("the compression threads stopped".into()))?;
        self.submitted += 1;
        Ok(())
    }

    /// The next result in order: without waiting (`wait == false`: `None`
    /// when it is not done yet), or waiting for it (`None` when every
    /// submitted cluster has been handed back).
    pub(super) fn next(&mut self, wait: bool) -> Result<Option<(u64, Encoded)>, Qcow2Error> {
        loop {
            if let Some(r) = self.early.remove(&self.next) {
                self.next += 1;
                return Ok(Some(r));
            }
            if self.next == self.submitted {
                return Ok(None);
            }
            let got = if wait {
                self.results.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                self.results.try_recv()
            };
            match got {
                Ok((seq, guest, enc)) => {
                    self.early.insert(seq, (guest, enc));
                }
                Err(TryRecvError::Empty) => return Ok(None),
                Err(TryRecvError::Disconnected) => {
                    return Err(Qcow2Error::Internal(
                        "a compression thread stopped with clusters outstanding".into(),
                    ));
                }
            }
        }
    }

    /// No more clusters: let the workers finish once the queue is empty.
    pub(super) fn close(&mut self) {
        self.jobs = None;
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.jobs = None;
        // Workers exit when the job queue closes; results left unread are
        // dropped with the channel.
        while self.results.try_recv().is_ok() {}
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(cs: usize) -> Vec<u8> {
        (0..cs).map(|i| (i / 100) as u8).collect()
    }

    #[test]
    fn both_codecs_round_trip_and_leave_noise_plain() {
        for codec in [Codec::Zlib, Codec::Zstd] {
            let mut e = Encoder::new(codec, 65536).unwrap();
            let data = sample(65536);
            let Encoded::Compressed(c) = e.encode(data.clone()) else {
                panic!("{codec:?}: a repetitive cluster must shrink");
            };
            let mut padded = c.clone();
            padded.extend_from_slice(&[0xAA; 300]);
            assert_eq!(decode(codec, &padded, 65536).unwrap(), data, "{codec:?}");
            // Pseudo-random bytes do not shrink: stored as they are.
            let mut x = 0x9E3779B97F4A7C15u64;
            let noise: Vec<u8> = (0..65536)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            assert_eq!(e.encode(noise.clone()), Encoded::Plain(noise), "{codec:?}");
            // Corrupt input decodes to nothing, never to a wrong cluster.
            assert_eq!(decode(codec, &c[..c.len() / 2], 65536), None, "{codec:?}");
        }
    }

    #[test]
    fn results_come_back_in_submission_order() {
        let mut p = Pipeline::new(Codec::Zstd, 4096, 3).unwrap();
        let mut got = Vec::new();
        for i in 0..200u64 {
            p.submit(1000 - i, vec![i as u8; 4096]).unwrap();
            while let Some((g, _)) = p.next(false).unwrap() {
                got.push(g);
            }
        }
        p.close();
        while let Some((g, _)) = p.next(true).unwrap() {
            got.push(g);
        }
        assert_eq!(got, (0..200u64).map(|i| 1000 - i).collect::<Vec<_>>());
    }
}
