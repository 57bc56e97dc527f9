//! An HTTP-aware TCP proxy on 127.0.0.1 in front of a real registry: the
//! hostile network of the tests. It forwards requests and responses one
//! by one (keep-alive included), counts the bytes sent to clients, and can
//! cut connections after a given number of response bytes or do one of
//! the [`Fault`]s to layer-blob GETs. The registry still does all the
//! HTTP; the proxy only damages what crosses it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to a blob GET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: forward it.
    None,
    /// The connection is reset (RST) halfway through the body.
    Reset,
    /// The response headers, then silence for this long, then a close.
    Stall(Duration),
    /// Headers with the full Content-Length, half the body, then a close.
    Truncate,
    /// One byte in the middle of the body flipped.
    FlipByte,
    /// This status, answered by the proxy without asking the registry.
    Status(u16),
    /// The Range header hidden: a 200 with the whole blob.
    Whole,
    /// The Range moved 4 KiB on: a 206 of other bytes than asked.
    WrongRange,
    /// The body in 16 KiB pieces, 10 ms apart.
    Drip,
}

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
    /// The fault for the next blob GETs, and how many more get it.
    fault: Mutex<(Fault, u32)>,
    /// Blob GETs that got a fault.
    faults_done: AtomicU32,
    /// Answer blob GETs with a 307 to this base URL plus the request path.
    redirect_blobs: Mutex<Option<String>>,
}

impl Shared {
    fn take_fault(&self) -> Fault {
        let mut f = self.fault.lock().unwrap();
        if f.1 == 0 || f.0 == Fault::None {
            return Fault::None;
        }
        f.1 -= 1;
        self.faults_done.fetch_add(1, Ordering::SeqCst);
        f.0
    }
}

/// A running proxy; stops accepting when dropped.
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
            fault: Mutex::new((Fault::None, 0)),
            faults_done: AtomicU32::new(0),
            redirect_blobs: Mutex::new(None),
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

    /// Make the registry behind ignore Range for every request.
    pub fn strip_range(&self) {
        self.shared.strip_range.store(true, Ordering::SeqCst);
    }

    /// Do `fault` to the next `count` layer-blob GETs (`u32::MAX`: until
    /// [`FaultProxy::clear_fault`]).
    pub fn set_fault(&self, fault: Fault, count: u32) {
        *self.shared.fault.lock().unwrap() = (fault, count);
    }

    /// Answer every blob GET with `307 Temporary Redirect` to `base` (e.g.
    /// `https://127.0.0.1:PORT`) plus the request's path, as a registry
    /// whose storage redirects (S3, GCS) does.
    pub fn redirect_blobs_to(&self, base: &str) {
        *self.shared.redirect_blobs.lock().unwrap() = Some(base.to_string());
    }

    /// Stop doing faults.
    pub fn clear_fault(&self) {
        self.set_fault(Fault::None, 0);
    }

    /// Blob GETs that got a fault so far.
    pub fn faults_done(&self) -> u32 {
        self.shared.faults_done.load(Ordering::SeqCst)
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

/// Read up to the end of an HTTP head (`\r\n\r\n`) into `pending`; split it
/// off. `None` at EOF or on an error.
fn read_head(from: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut buf = [0u8; 16 << 10];
    loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = pending.split_off(i + 4);
            return Some(std::mem::replace(pending, rest));
        }
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
        // A TLS handshake (ocidisk probing for HTTPS) is not HTTP: close,
        // as the plain-HTTP registry behind would, instead of waiting.
        if pending.first() == Some(&0x16) {
            return None;
        }
    }
}

/// The value of header `name` (lower case) in `head`.
fn header(head: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(head).lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// `head` with its `Range` header changed by `edit` (or dropped on `None`).
fn edit_range(head: &[u8], edit: impl Fn(&str) -> Option<String>) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in text.split_inclusive("\r\n") {
        match line.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("range") => {
                if let Some(v) = edit(v.trim()) {
                    out.push_str(&format!("Range: {v}\r\n"));
                }
            }
            _ => out.push_str(line),
        }
    }
    out.into_bytes()
}

/// `bytes=A-B` moved `by` bytes on.
fn shift_range(v: &str, by: u64) -> Option<String> {
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    let a: u64 = a.parse().ok()?;
    let b = match b {
        "" => String::new(),
        b => (b.parse::<u64>().ok()? + by).to_string(),
    };
    Some(format!("bytes={}-{b}", a + by))
}

/// Reset the connection when it closes (SO_LINGER 0), instead of FIN.
fn reset_on_close(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized linger
    // struct that outlives the call.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// One client connection: request, response, request, ... until either
/// side closes or a fault ends it.
fn serve(mut client: TcpStream, s: &Shared) {
    let Ok(mut server) = TcpStream::connect(&s.upstream) else {
        return;
    };
    // As Go's net/http and nginx do: a response head and body written
    // apart would otherwise wait out the client's delayed ACK (40 ms).
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut from_client = Vec::new();
    let mut from_server = Vec::new();
    let mut carried = 0u64;
    while let Some(mut head) = read_head(&mut client, &mut from_client) {
        let blob_get = head.starts_with(b"GET ")
            && String::from_utf8_lossy(&head)
                .lines()
                .next()
                .is_some_and(|l| l.contains("/blobs/"));
        let fault = if blob_get {
            s.take_fault()
        } else {
            Fault::None
        };
        if s.strip_range.load(Ordering::SeqCst) || fault == Fault::Whole {
            head = edit_range(&head, |_| None);
        }
        if fault == Fault::WrongRange {
            head = edit_range(&head, |v| shift_range(v, 4096).or(Some(v.to_string())));
        }
        let redirect = s.redirect_blobs.lock().unwrap().clone();
        if let Some(base) = redirect.filter(|_| blob_get) {
            let text = String::from_utf8_lossy(&head);
            let path = text.split_whitespace().nth(1).unwrap_or("/");
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {base}{path}\r\nContent-Length: 0\r\n\r\n"
            );
            if !send(&mut client, answer.as_bytes(), &mut carried, s) {
                return;
            }
            continue;
        }
        if let Fault::Status(code) = fault {
            let answer =
                format!("HTTP/1.1 {code} Fault\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = client.write_all(answer.as_bytes());
            break;
        }
        let is_head = head.starts_with(b"HEAD ");
        // The request and its body.
        let mut body_left: u64 = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if server.write_all(&head).is_err() {
            break;
        }
        let take = (body_left as usize).min(from_client.len());
        if server.write_all(&from_client[..take]).is_err() {
            break;
        }
        from_client.drain(..take);
        body_left -= take as u64;
        let mut buf = [0u8; 16 << 10];
        while body_left > 0 {
            match client.read(&mut buf[..(body_left as usize).min(16 << 10)]) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if server.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    body_left -= n as u64;
                }
            }
        }
        // The response.
        let Some(rhead) = read_head(&mut server, &mut from_server) else {
            break;
        };
        let status: u16 = String::from_utf8_lossy(&rhead)
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let length: Option<u64> = if is_head || status == 204 || status == 304 {
            Some(0)
        } else if header(&rhead, "transfer-encoding").is_some() {
            None
        } else {
            header(&rhead, "content-length").and_then(|v| v.parse().ok())
        };
        if !send(&mut client, &rhead, &mut carried, s) {
            return;
        }
        if let Fault::Stall(d) = fault {
            let until = std::time::Instant::now() + d;
            while std::time::Instant::now() < until && !s.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            break;
        }
        // The body: `length` bytes, or everything until the server closes.
        let total = length.unwrap_or(u64::MAX);
        let mut sent = 0u64;
        let half = total / 2;
        loop {
            if sent == total {
                break;
            }
            if from_server.is_empty() {
                match server.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        if length.is_some() {
                            return; // the registry closed mid-body
                        }
                        break;
                    }
                    Ok(n) => from_server.extend_from_slice(&buf[..n]),
                }
            }
            let room = (total - sent).min(from_server.len() as u64) as usize;
            let mut piece: Vec<u8> = from_server.drain(..room).collect();
            match fault {
                Fault::Reset | Fault::Truncate if sent + piece.len() as u64 > half => {
                    piece.truncate((half - sent) as usize);
                    let _ = send(&mut client, &piece, &mut carried, s);
                    if fault == Fault::Reset {
                        reset_on_close(&client);
                    } else {
                        let _ = client.shutdown(Shutdown::Both);
                    }
                    return;
                }
                Fault::FlipByte if sent <= half && half < sent + piece.len() as u64 => {
                    piece[(half - sent) as usize] ^= 0x01;
                }
                Fault::Drip => {
                    for p in piece.chunks(16 << 10) {
                        std::thread::sleep(Duration::from_millis(10));
                        if !send(&mut client, p, &mut carried, s) {
                            return;
                        }
                    }
                    sent += piece.len() as u64;
                    continue;
                }
                _ => {}
            }
            if !send(&mut client, &piece, &mut carried, s) {
                return;
            }
            sent += piece.len() as u64;
        }
        if length.is_none() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}

/// Forward `bytes` to the client, cutting the connection when the cut
/// budget says so. False when the connection is gone.
fn send(client: &mut TcpStream, bytes: &[u8], carried: &mut u64, s: &Shared) -> bool {
    let limit = s.cut_after.load(Ordering::SeqCst);
    if *carried + bytes.len() as u64 > limit
        && s.cuts_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1))
            .is_ok()
    {
        let keep = (limit - *carried) as usize;
        let _ = client.write_all(&bytes[..keep]);
        s.bytes_down.fetch_add(keep as u64, Ordering::SeqCst);
        s.cuts_done.fetch_add(1, Ordering::SeqCst);
        let _ = client.shutdown(Shutdown::Both);
        return false;
    }
    if client.write_all(bytes).is_err() {
        return false;
    }
    *carried += bytes.len() as u64;
    s.bytes_down.fetch_add(bytes.len() as u64, Ordering::SeqCst);
    true
}
