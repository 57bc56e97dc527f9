//! A running `ocidisk mount` for the tests that use its FUSE file.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cli::Ocidisk;

/// A running `ocidisk mount`, stopped with SIGTERM when dropped.
pub struct MountProc {
    /// The process.
    pub child: Child,
    /// The disk's file (PATH, or PATH/disk.img for a directory).
    pub image: PathBuf,
}

impl MountProc {
    /// Start `ocidisk mount EXTRA IMAGE PATH` and wait for its ready line.
    pub fn start(o: &Ocidisk, image: &str, path: &Path, extra: &[&str]) -> MountProc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ocidisk"))
            .arg("mount")
            .args(extra)
            .arg(image)
            .arg(path)
            .env("OCIDISK_CACHE_DIR", o.cache_dir())
            .env("DOCKER_CONFIG", o.docker_config_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("mounted "),
            "no ready line from ocidisk mount: {line:?}"
        );
        let image = if path.is_dir() {
            path.join("disk.img")
        } else {
            path.to_path_buf()
        };
        MountProc { child, image }
    }

    /// SIGTERM, then wait; returns the exit status code.
    pub fn stop(mut self) -> Option<i32> {
        self.terminate()
    }

    pub fn terminate(&mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(
                Instant::now() < deadline,
                "ocidisk mount did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for MountProc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
    }
}
