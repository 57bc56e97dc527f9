//! `ocidisk serve`: a block device exported over a vhost-user socket, for
//! QEMU, Cloud Hypervisor and Firecracker.
//!
//! This module owns the socket's lifecycle: it refuses a socket another
//! server is listening on, replaces a stale one, announces readiness once
//! the socket accepts, serves one frontend connection at a time and, when a
//! frontend goes away (VM shutdown or reboot), keeps the device and waits
//! for the next on the same socket. SIGINT and SIGTERM end the current
//! connection, flush the device and remove the socket.
//!
//! A connection is a [`session::Session`] over the `vhost` crate's message
//! parser: the device model is in [`device`], each queue and its worker in
//! [`vring`], guest memory in [`memory`], in-flight tracking (which lets a
//! running VM survive a restart of the server) in [`inflight`], requests in
//! [`request`]. None of them knows what filesystem the device holds.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::{BackendReqHandler, Listener};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub mod device;
pub mod inflight;
pub mod memory;
pub mod request;
pub mod session;
pub mod vring;

use crate::partial::PartialFile;
use request::BlockDevice;
use session::Session;

/// Errors of the serve frontend.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another process is listening on the socket path.
    #[error("{0} is in use by a running server; stop it or choose another --socket")]
    SocketInUse(PathBuf),
    /// The socket path exists and is not a socket.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// Creating, inspecting or removing the socket failed.
    #[error("socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The vhost-user library failed outside any one connection.
    #[error("vhost-user: {0}")]
    VhostUser(String),
    /// `--queues` out of range.
    #[error("--queues {given}: must be between 1 and {max} (the cores here)")]
    Queues {
        /// What was asked for.
        given: usize,
        /// The limit.
        max: usize,
    },
    /// Signal handling could not be installed.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    /// Writing the pid file failed.
    #[error("pid file {path}: {source}")]
    PidFile {
        /// The pid file path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Creating the pid file or putting it in place failed.
    #[error("pid file: {0}")]
    PidFilePlace(crate::partial::PartialError),
    /// Flushing the device at exit failed.
    #[error("flushing the disk at exit: {0}")]
    Flush(#[from] crate::disk::DiskError),
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The vhost-user socket to listen on.
    pub socket: PathBuf,
    /// Number of virtqueues (one worker thread each).
    pub queues: usize,
    /// Write our pid here once the socket accepts connections.
    pub pid_file: Option<PathBuf>,
    /// Serial number answered to GET_ID (its first 20 bytes).
    pub serial: String,
}

/// The most queues `--queues` accepts: one per core.
pub fn max_queues() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(64)
}

/// Check a `--queues` value: 1 up to [`max_queues`].
pub fn check_queues(queues: usize) -> Result<(), ServeError> {
    let max = max_queues();
    if queues == 0 || queues > max {
        return Err(ServeError::Queues { given: queues, max });
    }
    Ok(())
}

/// A server stopper that signal handlers and tests can hold.
#[derive(Clone)]
pub struct Stopper {
    stop: Arc<AtomicBool>,
    wake: Arc<EventFd>,
    /// The current connection, to shut down.
    conn: Arc<Mutex<Option<std::os::unix::net::UnixStream>>>,
}

impl Stopper {
    /// Ask the server to end its connection and return.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
        if let Some(c) = crate::sync::lock(&self.conn).as_ref() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A listening server: the socket exists and accepts connections.
pub struct Server {
    device: Arc<dyn BlockDevice>,
    opts: ServeOptions,
    listener: Listener,
    stopper: Stopper,
}

impl Server {
    /// Create the socket (replacing a stale one, refusing a live one).
    pub fn bind(device: Arc<dyn BlockDevice>, opts: ServeOptions) -> Result<Server, ServeError> {
        check_queues(opts.queues)?;
        prepare_socket(&opts.socket)?;
        let listener = Listener::new(&opts.socket, false).map_err(|e| ServeError::Socket {
            path: opts.socket.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let wake = EventFd::new(EFD_NONBLOCK).map_err(|e| ServeError::Socket {
            path: opts.socket.clone(),
            source: e,
        })?;
        Ok(Server {
            device,
            opts,
            listener,
            stopper: Stopper {
                stop: Arc::new(AtomicBool::new(false)),
                wake: Arc::new(wake),
                conn: Arc::new(Mutex::new(None)),
            },
        })
    }

    /// A handle that stops [`Server::run`] from another thread.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Make SIGINT and SIGTERM stop the server (flush, clean up); a second
    /// signal exits at once.
    pub fn stop_on_signals(&self) -> Result<(), ServeError> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals =
            signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(ServeError::Signals)?;
        let stopper = self.stopper();
        std::thread::Builder::new()
            .name("ocidisk-signals".into())
            .spawn(move || {
                let mut seen = 0;
                for sig in signals.forever() {
                    seen += 1;
                    if seen == 1 {
                        tracing::info!("signal {sig}: stopping");
                        stopper.stop();
                    } else {
                        eprintln!("ocidisk: second signal {sig}: exiting without flushing");
                        std::process::exit(130);
                    }
                }
            })
            .map_err(ServeError::Signals)?;
        Ok(())
    }

    /// Write `--pid-file` (call once signal handling is set up, so whoever
    /// reacts to the pid file can already stop us cleanly).
    pub fn write_pid_file(&self) -> Result<(), ServeError> {
        match &self.opts.pid_file {
            Some(p) => write_pid_file(p),
            None => Ok(()),
        }
    }

    /// Serve connections one after another until stopped; then flush the
    /// device and remove the socket and pid file.
    pub fn run(mut self) -> Result<(), ServeError> {
        let mut connections = 0u64;
        let result = loop {
            if self.stopper.stop.load(Ordering::SeqCst) {
                break Ok(());
            }
            match self.wait_for_connection() {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
            connections += 1;
            if let Err(e) = self.serve_one(connections) {
                break Err(e);
            }
            // A frontend is gone: whatever it wrote is made durable now,
            // not only at exit.
            if let Err(e) = self.device.flush() {
                tracing::error!("flushing after disconnect: {e}");
            }
        };
        let flushed = self.device.flush();
        if let Some(p) = &self.opts.pid_file {
            let _ = std::fs::remove_file(p);
        }
        // Dropping the listener removes the socket.
        drop(self.listener);
        result?;
        flushed?;
        Ok(())
    }

    /// Block until a frontend connects (true) or we are stopped (false).
    fn wait_for_connection(&self) -> Result<bool, ServeError> {
        let mut fds = [
            libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.stopper.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: `fds` is a valid array of two pollfd structs that
            // lives across the call; both descriptors stay open (owned by
            // `self`) while poll runs.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ServeError::Socket {
                    path: self.opts.socket.clone(),
                    source: e,
                });
            }
            if fds[1].revents != 0 || self.stopper.stop.load(Ordering::SeqCst) {
                return Ok(false);
            }
            if fds[0].revents != 0 {
                return Ok(true);
            }
        }
    }

    /// Serve one frontend connection to its end.
    fn serve_one(&mut self, n: u64) -> Result<(), ServeError> {
        let stream = match self.listener.accept() {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!("accepting connection {n}: {e}");
                // An error that persists (EMFILE) must not spin the loop.
                std::thread::sleep(std::time::Duration::from_millis(100));
                return Ok(());
            }
        };
        let session = match Session::new(self.device.clone(), &self.opts.serial, self.opts.queues) {
            Ok(s) => Arc::new(Mutex::new(s)),
            Err(e) => {
                tracing::warn!("connection {n}: starting its queues: {e}");
                return Ok(());
            }
        };
        let _ = stream.set_nonblocking(false);
        let control = stream.try_clone().map_err(|e| ServeError::Socket {
            path: self.opts.socket.clone(),
            source: e,
        })?;
        *crate::sync::lock(&self.stopper.conn) = Some(control);
        tracing::info!("frontend connected (connection {n})");
        if self.stopper.stop.load(Ordering::SeqCst) {
            self.stopper.stop();
        }
        let mut handler = BackendReqHandler::from_stream(stream, session.clone());
        let ended = loop {
            // A panic in a message handler ends this connection, not the
            // server.
            let r =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.handle_request()));
            match r {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => break Some(e),
                Err(_) => {
                    tracing::error!("connection {n}: a message handler panicked; closing it");
                    break None;
                }
            }
        };
        match ended {
            Some(
                vhost::vhost_user::Error::Disconnected
                | vhost::vhost_user::Error::PartialMessage
                | vhost::vhost_user::Error::SocketBroken(_),
            )
            | None => tracing::info!("frontend disconnected (connection {n})"),
            Some(e) if self.stopper.stop.load(Ordering::SeqCst) => {
                tracing::info!("connection {n} closed on stop ({e})")
            }
            Some(e) => tracing::warn!("connection {n} ended: {e}"),
        }
        *crate::sync::lock(&self.stopper.conn) = None;
        drop(handler);
        // Workers leave after their current batch.
        crate::sync::lock(&session).shut_down();
        Ok(())
    }
}

/// Make `path` free for a new socket: remove a stale socket (nobody
/// listening), refuse a live one or anything that is not a socket.
fn prepare_socket(path: &Path) -> Result<(), ServeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| ServeError::Socket {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
            return Ok(());
        }
        Err(source) => {
            return Err(ServeError::Socket {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket(path.to_path_buf()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServeError::SocketInUse(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!("removing stale socket {}", path.display());
            std::fs::remove_file(path).map_err(|source| ServeError::Socket {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(ServeError::Socket {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Write our pid to `path` atomically (temp file + rename).
fn write_pid_file(path: &Path) -> Result<(), ServeError> {
    use std::io::Write as _;
    let err = |source| ServeError::PidFile {
        path: path.to_path_buf(),
        source,
    };
    let f = PartialFile::create(path).map_err(ServeError::PidFilePlace)?;
    writeln!(f.file(), "{}", std::process::id()).map_err(err)?;
    f.commit().map_err(ServeError::PidFilePlace)?;
    Ok(())
}
