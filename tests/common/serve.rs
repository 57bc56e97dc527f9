//! `ocidisk serve` as a child process: started with a socket in a temp
//! dir, ready when it prints its ready line, stopped with SIGTERM.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cli::Ocidisk;
use super::imagegen::{self, Compression};

/// The standard test image as an OCI layout in a temp dir, `materialize`'s
/// image of it (the bytes a served disk must show), and a socket path.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub o: Ocidisk,
    /// `oci:DIR:v1`.
    pub image: String,
    pub img: Vec<u8>,
    pub sock: PathBuf,
    pub dir: PathBuf,
}

impl Fixture {
    pub fn standard(read_only: bool, compression: Compression) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        imagegen::write_standard(dir.path(), "v1", compression);
        let image = format!("oci:{}:v1", dir.path().display());
        let img_path = dir.path().join("m.img");
        let o = Ocidisk::new();
        let mut args = vec!["materialize", &image, img_path.to_str().unwrap()];
        if read_only {
            args.insert(1, "--read-only");
        }
        o.ok(&args);
        let img = std::fs::read(&img_path).unwrap();
        Fixture {
            sock: dir.path().join("blk.sock"),
            dir: dir.path().to_path_buf(),
            _dir: dir,
            o,
            image,
            img,
        }
    }
}

pub struct Served {
    child: Option<Child>,
    pub socket: PathBuf,
    pub ready_line: String,
    stderr: Arc<Mutex<String>>,
}

impl Served {
    /// `ocidisk serve IMAGE --socket SOCKET EXTRA...`, waiting (up to 120 s)
    /// for the ready line.
    pub fn start(o: &Ocidisk, image: &str, socket: &Path, extra: &[&str]) -> Served {
        Served::start_env(o, image, socket, extra, &[])
    }

    /// [`Served::start`] with more environment variables for the server.
    pub fn start_env(
        o: &Ocidisk,
        image: &str,
        socket: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Served {
        let mut args = vec!["serve", image, "--socket", socket.to_str().unwrap()];
        args.extend_from_slice(extra);
        let mut child = o
            .command(&args)
            .env(
                "RUST_LOG",
                std::env::var("SERVE_LOG").unwrap_or("ocidisk=info".into()),
            )
            .envs(env.iter().copied())
            .spawn()
            .expect("spawn ocidisk serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = tx.send(l);
            }
            for _ in lines {}
        });
        let ready_line = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                panic!(
                    "ocidisk serve printed no ready line ({status}); stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        assert!(
            ready_line.starts_with("serving "),
            "ready line: {ready_line}"
        );
        Served {
            child: Some(child),
            socket: socket.to_path_buf(),
            ready_line,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Whether the server process is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// Send `sig` and wait (up to 60 s) for the exit.
    pub fn signal(&mut self, sig: i32) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "ocidisk serve ignored signal {sig}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- ocidisk serve stderr ---\n{}", self.stderr());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
