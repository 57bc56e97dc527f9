//! Prometheus metrics of a running `serve` or `mount`: what was fetched
//! from where, how the span caches answer, how long fetches take, what
//! the guest asks for, and what went wrong. `--metrics ADDR:PORT` serves
//! them as Prometheus text at `/metrics` on that address only.
//!
//! The counters are process-wide (one process serves one disk) and cost
//! an atomic add where they are counted; the text is made on each scrape.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Errors starting the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error("metrics endpoint {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Upper bounds (seconds) of the fetch latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Guest request types, as [`GuestRequest`] numbers them (label values).
pub const GUEST_REQUEST_TYPES: [&str; 7] = [
    "read",
    "write",
    "flush",
    "get_id",
    "discard",
    "write_zeroes",
    "unsupported",
];

/// A guest request type (an index into [`GUEST_REQUEST_TYPES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestRequest {
    /// VIRTIO_BLK_T_IN, a FUSE read.
    Read = 0,
    /// VIRTIO_BLK_T_OUT, a FUSE write.
    Write = 1,
    /// VIRTIO_BLK_T_FLUSH, fsync.
    Flush = 2,
    /// VIRTIO_BLK_T_GET_ID.
    GetId = 3,
    /// VIRTIO_BLK_T_DISCARD.
    Discard = 4,
    /// VIRTIO_BLK_T_WRITE_ZEROES.
    WriteZeroes = 5,
    /// Anything else.
    Unsupported = 6,
}

/// Error kinds, as [`ErrorKind`] numbers them (label values).
pub const ERROR_KINDS: [&str; 4] = ["fetch", "verify", "guest_io", "overlay"];

/// An error kind (an index into [`ERROR_KINDS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A fetch from the image source failed.
    Fetch = 0,
    /// Fetched bytes failed their hash or did not decode.
    Verify = 1,
    /// A guest request was answered with an I/O error.
    GuestIo = 2,
    /// The overlay could not keep a write.
    Overlay = 3,
}

/// The process's counters.
#[derive(Default)]
pub struct Metrics {
    /// Per source: (requests, bytes received).
    sources: Mutex<BTreeMap<String, (u64, u64)>>,
    span_hits_memory: AtomicU64,
    span_hits_disk: AtomicU64,
    span_misses: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_micros: AtomicU64,
    inflight: AtomicI64,
    guest_requests: [AtomicU64; GUEST_REQUEST_TYPES.len()],
    guest_read_bytes: AtomicU64,
    guest_written_bytes: AtomicU64,
    errors: [AtomicU64; ERROR_KINDS.len()],
    overlay: Mutex<Option<PathBuf>>,
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::default)
}

/// Counts an in-flight fetch until dropped.
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// `bytes` received from `source` in one request.
    pub fn fetched(&self, source: &str, bytes: u64) {
        let mut s = crate::sync::lock(&self.sources);
        let e = s.entry(source.to_string()).or_default();
        e.0 += 1;
        e.1 += bytes;
    }

    /// More bytes of a request already counted by [`Metrics::fetched`].
    pub fn fetched_more(&self, source: &str, bytes: u64) {
        let mut s = crate::sync::lock(&self.sources);
        s.entry(source.to_string()).or_default().1 += bytes;
    }

    /// Bytes received from `source` so far.
    pub fn source_bytes(&self, source: &str) -> u64 {
        crate::sync::lock(&self.sources)
            .get(source)
            .map_or(0, |e| e.1)
    }

    /// A span answered from memory.
    pub fn span_hit_memory(&self) {
        self.span_hits_memory.fetch_add(1, Ordering::Relaxed);
    }

    /// A span answered from the on-disk chunk store.
    pub fn span_hit_disk(&self) {
        self.span_hits_disk.fetch_add(1, Ordering::Relaxed);
    }

    /// A span that had to be fetched.
    pub fn span_miss(&self) {
        self.span_misses.fetch_add(1, Ordering::Relaxed);
    }

    /// A fetch starts; it is in flight until the guard drops.
    pub fn fetch_started(&self) -> InFlight<'_> {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// A fetch took `d`.
    pub fn fetch_latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// A guest request of type `t` moving `bytes` (read or written).
    pub fn guest(&self, t: GuestRequest, bytes: u64) {
        self.guest_requests[t as usize].fetch_add(1, Ordering::Relaxed);
        match t {
            GuestRequest::Read => &self.guest_read_bytes,
            GuestRequest::Write => &self.guest_written_bytes,
            _ => return,
        }
        .fetch_add(bytes, Ordering::Relaxed);
    }

    /// An error of kind `k`.
    pub fn error(&self, k: ErrorKind) {
        self.errors[k as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The overlay file whose allocated size is reported.
    pub fn set_overlay(&self, path: Option<PathBuf>) {
        *crate::sync::lock(&self.overlay) = path;
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut o = String::new();
        fn family(o: &mut String, name: &str, kind: &str, help: &str) {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        }
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let sources = crate::sync::lock(&self.sources).clone();
        family(
            &mut o,
            "ocidisk_source_requests_total",
            "counter",
            "Requests made to an image source (manifests, configs, blobs, ranges).",
        );
        for (s, (n, _)) in &sources {
            let _ = writeln!(
                o,
                "ocidisk_source_requests_total{{source=\"{}\"}} {n}",
                esc(s)
            );
        }
        family(
            &mut o,
            "ocidisk_source_bytes_total",
            "counter",
            "Bytes received from an image source.",
        );
        for (s, (_, b)) in &sources {
            let _ = writeln!(o, "ocidisk_source_bytes_total{{source=\"{}\"}} {b}", esc(s));
        }
        family(
            &mut o,
            "ocidisk_span_cache_hits_total",
            "counter",
            "Span lookups answered from a cache tier.",
        );
        let _ = writeln!(
            o,
            "ocidisk_span_cache_hits_total{{tier=\"memory\"}} {}\nocidisk_span_cache_hits_total{{tier=\"disk\"}} {}",
            get(&self.span_hits_memory),
            get(&self.span_hits_disk)
        );
        family(
            &mut o,
            "ocidisk_span_cache_misses_total",
            "counter",
            "Span lookups that had to fetch from the source.",
        );
        let _ = writeln!(
            o,
            "ocidisk_span_cache_misses_total {}",
            get(&self.span_misses)
        );
        family(
            &mut o,
            "ocidisk_fetch_duration_seconds",
            "histogram",
            "Time of each fetch of a span's bytes from the source.",
        );
        let mut cum = 0;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            cum += get(&self.latency[i]);
            let _ = writeln!(
                o,
                "ocidisk_fetch_duration_seconds_bucket{{le=\"{b}\"}} {cum}"
            );
        }
        cum += get(&self.latency[LATENCY_BUCKETS.len()]);
        let _ = writeln!(
            o,
            "ocidisk_fetch_duration_seconds_bucket{{le=\"+Inf\"}} {cum}\nocidisk_fetch_duration_seconds_sum {}\nocidisk_fetch_duration_seconds_count {cum}",
            get(&self.latency_sum_micros) as f64 / 1e6
        );
        family(
            &mut o,
            "ocidisk_fetches_in_flight",
            "gauge",
            "Fetches from the source under way.",
        );
        let _ = writeln!(
            o,
            "ocidisk_fetches_in_flight {}",
            self.inflight.load(Ordering::Relaxed)
        );
        family(
            &mut o,
            "ocidisk_guest_requests_total",
            "counter",
            "Requests of the guest (virtio-blk) or of FUSE readers and writers, by type.",
        );
        for (i, t) in GUEST_REQUEST_TYPES.iter().enumerate() {
            let _ = writeln!(
                o,
                "ocidisk_guest_requests_total{{type=\"{t}\"}} {}",
                get(&self.guest_requests[i])
            );
        }
        family(
            &mut o,
            "ocidisk_guest_read_bytes_total",
            "counter",
            "Bytes the guest read.",
        );
        let _ = writeln!(
            o,
            "ocidisk_guest_read_bytes_total {}",
            get(&self.guest_read_bytes)
        );
        family(
            &mut o,
            "ocidisk_guest_written_bytes_total",
            "counter",
            "Bytes the guest wrote.",
        );
        let _ = writeln!(
            o,
            "ocidisk_guest_written_bytes_total {}",
            get(&self.guest_written_bytes)
        );
        family(
            &mut o,
            "ocidisk_overlay_bytes",
            "gauge",
            "Bytes the overlay file holds on disk (0 without an overlay).",
        );
        let overlay = crate::sync::lock(&self.overlay).clone();
        let held = overlay
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| std::os::unix::fs::MetadataExt::blocks(&m) * 512);
        let _ = writeln!(o, "ocidisk_overlay_bytes {held}");
        family(&mut o, "ocidisk_errors_total", "counter", "Errors by kind.");
        for (i, k) in ERROR_KINDS.iter().enumerate() {
            let _ = writeln!(
                o,
                "ocidisk_errors_total{{kind=\"{k}\"}} {}",
                get(&self.errors[i])
            );
        }
        o
    }
}

/// A label value escaped as the text format wants.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serve [`global`]'s text at `http://ADDR/metrics` from a background
/// thread; bound to `addr` only. Returns the bound address (port 0 picks
/// one).
pub fn serve(addr: &str) -> Result<SocketAddr, MetricsError> {
    let bind = |source| MetricsError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).map_err(bind)?;
    let local = listener.local_addr().map_err(bind)?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                // One scrape at a time; a slow client cannot hold it long.
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
                if let Err(e) = answer(conn) {
                    tracing::debug!("metrics request: {e}");
                }
            }
        })
        .map_err(bind)?;
    Ok(local)
}

fn answer(conn: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?).take(16 << 10);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Drain the headers.
    let mut h = String::new();
    while reader.read_line(&mut h)? > 2 {
        h.clear();
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            global().render(),
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "see /metrics\n".into()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n".into(),
        ),
    };
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        conn.write_all(body.as_bytes())?;
    }
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn text_format_and_endpoint() {
        let m = Metrics::default();
        m.fetched("reg:5000", 100);
        m.fetched_more("reg:5000", 50);
        m.fetch_latency(Duration::from_millis(30));
        m.guest(GuestRequest::Read, 4096);
        m.error(ErrorKind::Verify);
        let t = m.render();
        assert!(
            t.contains("ocidisk_source_bytes_total{source=\"reg:5000\"} 150\n"),
            "{t}"
        );
        assert!(
            t.contains("ocidisk_source_requests_total{source=\"reg:5000\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("ocidisk_fetch_duration_seconds_bucket{le=\"0.025\"} 0\n"),
            "{t}"
        );
        assert!(
            t.contains("ocidisk_fetch_duration_seconds_bucket{le=\"0.05\"} 1\n"),
            "{t}"
        );
        assert!(t.contains("ocidisk_guest_read_bytes_total 4096\n"), "{t}");
        assert!(
            t.contains("ocidisk_errors_total{kind=\"verify\"} 1\n"),
            "{t}"
        );
        assert_eq!(esc("a\"b\\"), "a\\\"b\\\\");

        let addr = serve("127.0.0.1:0").unwrap();
        let get = |path: &str| {
            let mut c = TcpStream::connect(addr).unwrap();
            write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut s = String::new();
            c.read_to_string(&mut s).unwrap();
            s
        };
        let r = get("/metrics");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.contains("# TYPE ocidisk_source_bytes_total counter"),
            "{r}"
        );
        assert!(get("/").starts_with("HTTP/1.1 404"));
        let e = serve(&addr.to_string()).unwrap_err().to_string();
        assert!(e.contains(&addr.to_string()), "{e}");
    }
}
