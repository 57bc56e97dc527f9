//! A private containerd for a test: Debian's `containerd` started in the
//! background with its own root, state and sockets under a temp dir and
//! the CRI plugin off, stopped (and its files removed) on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::registry::run_ok;

/// A running containerd.
pub struct Containerd {
    child: Option<Child>,
    dir: TempDir,
}

impl Containerd {
    /// Start one and wait until its socket answers.
    pub fn start() -> Containerd {
        // Short: unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("ctd-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path().display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/c.sock\"\n\
             [ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n\
             [debug]\n  address = \"{d}/debug.sock\"\n"
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd (scripts/setup.sh installs it)");
        let mut c = Containerd {
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new("ctr")
                .arg("--address")
                .arg(c.socket())
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(c.dir.path().join("log")).unwrap_or_default();
                c.stop();
                panic!("containerd did not come up in 30 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// Its gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    /// `ctr --address SOCK -n NS ARGS…`, which must succeed.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> String {
        run_ok(
            Command::new("ctr")
                .arg("--address")
                .arg(self.socket())
                .args(["-n", namespace])
                .args(args),
            Duration::from_secs(120),
        )
        .stdout
    }

    /// Import an OCI layout's tagged image (via an oci-archive written by
    /// skopeo) as `NAME:TAG` in `namespace`, without unpacking it.
    pub fn import_layout(&self, namespace: &str, layout: &Path, tag: &str, name: &str) {
        let tar = self.dir.path().join(format!("import-{tag}.tar"));
        run_ok(
            Command::new("skopeo").args([
                "--insecure-policy",
                "copy",
                "-q",
                &format!("oci:{}:{tag}", layout.display()),
                &format!("oci-archive:{}:{tag}", tar.display()),
            ]),
            Duration::from_secs(120),
        );
        self.ctr(
            namespace,
            &[
                "images",
                "import",
                "--no-unpack",
                "--all-platforms",
                "--base-name",
                name,
                tar.to_str().unwrap(),
            ],
        );
        std::fs::remove_file(&tar).unwrap();
    }

    /// Stop it (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}
