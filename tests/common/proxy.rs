//! A TCP proxy on 127.0.0.1 in front of a real registry. It counts the
//! bytes sent to clients and can cut connections after a given number of
//! response bytes, to test that clients resume interrupted downloads. It
//! forwards bytes unchanged: the registry still does all the HTTP.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

struct Shared {
    upstream: String,
    stop: AtomicBool,
    /// Response bytes one connection may carry before it is cut.
    cut_after: AtomicU64,
    /// How many more connections to cut.
    cuts_left: AtomicU32,
    /// Connections cut so far.
    cuts_done: AtomicU32,
    /// Response bytes forwarded, in all.
    bytes_down: AtomicU64,
    /// Rename `Range:` request headers so the registry answers 200.
    strip_range: AtomicBool,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Forward 127.0.0.1:PORT to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            stop: AtomicBool::new(false),
            cut_after: AtomicU64::new(u64::MAX),
            cuts_left: AtomicU32::new(0),
            cuts_done: AtomicU32::new(0),
            bytes_down: AtomicU64::new(0),
            strip_range: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            while !s.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let s = s.clone();
                        std::thread::spawn(move || serve(client, &s));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        FaultProxy { port, shared }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Cut the next `count` connections once each has carried `bytes`
    /// response bytes.
    pub fn cut_connections_after(&self, bytes: u64, count: u32) {
        self.shared.cut_after.store(bytes, Ordering::SeqCst);
        self.shared.cuts_left.store(count, Ordering::SeqCst);
    }

    /// Make the registry behind ignore Range: the header is renamed (same
    /// length) on its way through, so the registry answers 200.
    pub fn strip_range(&self) {
        self.shared.strip_range.store(true, Ordering::SeqCst);
    }

    /// Connections cut so far.
    pub fn cuts_done(&self) -> u32 {
        self.shared.cuts_done.load(Ordering::SeqCst)
    }

    /// Response bytes forwarded so far.
    pub fn bytes_down(&self) -> u64 {
        self.shared.bytes_down.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(client: TcpStream, s: &Shared) {
    let Ok(server) = TcpStream::connect(&s.upstream) else {
        return;
    };
    let (Ok(mut c_read), Ok(mut s_write)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    // Requests: client → server, unchanged unless Range is stripped.
    let strip = s.strip_range.load(Ordering::SeqCst);
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        while let Ok(n) = c_read.read(&mut buf) {
            if n == 0 {
                break;
            }
            if strip {
                for i in 0..n.saturating_sub(7) {
                    if buf[i..i + 7].eq_ignore_ascii_case(b"\nrange:") {
                        buf[i + 1..i + 7].copy_from_slice(b"xange:");
                    }
                }
            }
            if s_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_write.shutdown(Shutdown::Write);
    });
    // Responses: server → client, counted, maybe cut.
    let (mut s_read, mut c_write) = (server, client);
    let mut carried = 0u64;
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match s_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let limit = s.cut_after.load(Ordering::SeqCst);
        if carried + n as u64 > limit
            && s.cuts_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1))
                .is_ok()
        {
            let keep = (limit - carried) as usize;
            let _ = c_write.write_all(&buf[..keep]);
            s.bytes_down.fetch_add(keep as u64, Ordering::SeqCst);
            s.cuts_done.fetch_add(1, Ordering::SeqCst);
            let _ = c_write.shutdown(Shutdown::Both);
            let _ = s_read.shutdown(Shutdown::Both);
            return;
        }
        if c_write.write_all(&buf[..n]).is_err() {
            break;
        }
        carried += n as u64;
        s.bytes_down.fetch_add(n as u64, Ordering::SeqCst);
    }
    let _ = c_write.shutdown(Shutdown::Both);
}
