//! The in-process floor of a cold pass over a gzip layer (see
//! bench/materialize.sh): one thread reads the blob, hashes it (the
//! descriptor digest), inflates it with the same zlib-rs ocidisk uses and
//! hashes the output (the diff_id). Nothing else: no tar parsing, no span
//! hashes, no writing. Prints the median seconds of RUNS runs.
//!
//! Usage: floor LAYER.gz RUNS

use std::io::Read;
use std::time::Instant;

use sha2::Digest as _;

/// Reads through, hashing what passes.
struct Hashing<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, runs] = &args[..] else {
        eprintln!("usage: floor LAYER.gz RUNS");
        std::process::exit(2);
    };
    let runs: usize = runs.parse().expect("RUNS is a number");
    let mut times = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let file = std::fs::File::open(path).expect("open the layer");
        let mut blob = Hashing {
            inner: std::io::BufReader::with_capacity(1 << 20, file),
            hasher: sha2::Sha256::new(),
        };
        let mut gz = flate2::read::MultiGzDecoder::new(&mut blob);
        let mut diff_id = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = gz.read(&mut buf).expect("inflate the layer");
            if n == 0 {
                break;
            }
            diff_id.update(&buf[..n]);
        }
        drop(gz);
        std::hint::black_box((blob.hasher.finalize(), diff_id.finalize()));
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!("{:.3}", times[times.len() / 2]);
}
