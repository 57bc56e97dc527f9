//! Runs the real `ocidisk` binary for integration tests, with a private cache
//! dir and an empty docker config (so the host's credentials never leak in),
//! under a timeout so no test hangs forever.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest as _;

/// One `ocidisk` installation: a cache dir and a docker config dir.
pub struct Ocidisk {
    dir: tempfile::TempDir,
    envs: Vec<(String, String)>,
}

impl Default for Ocidisk {
    fn default() -> Self {
        Self::new()
    }
}

impl Ocidisk {
    pub fn new() -> Ocidisk {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("docker")).unwrap();
        Ocidisk {
            dir,
            envs: Vec::new(),
        }
    }

    /// Set an environment variable for every run.
    pub fn env(mut self, k: &str, v: &str) -> Ocidisk {
        self.envs.push((k.into(), v.into()));
        self
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// The docker config dir (`$DOCKER_CONFIG`) the runs use.
    pub fn docker_config_dir(&self) -> PathBuf {
        self.dir.path().join("docker")
    }

    /// The command for `ocidisk ARGS` in this installation, pipes for all
    /// three standard streams.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ocidisk"));
        cmd.args(args)
            .env("OCIDISK_CACHE_DIR", self.cache_dir())
            .env("DOCKER_CONFIG", self.docker_config_dir())
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut cmd = self.command(args);
        let mut child = cmd.spawn().expect("spawn ocidisk");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let t_out = std::thread::spawn(move || {
            let mut v = Vec::new();
            out.read_to_end(&mut v).unwrap();
            v
        });
        let t_err = std::thread::spawn(move || {
            let mut v = Vec::new();
            err.read_to_end(&mut v).unwrap();
            v
        });
        let deadline = Instant::now() + Duration::from_secs(180);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("ocidisk {args:?} did not finish within 180 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            status,
            stdout: t_out.join().unwrap(),
            stderr: t_err.join().unwrap(),
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, "")
    }

    /// Run and expect success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_with_stdin(args, "")
    }

    pub fn ok_with_stdin(&self, args: &[&str], stdin: &str) -> String {
        let out = self.run_with_stdin(args, stdin);
        assert!(
            out.status.success(),
            "ocidisk {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run and expect a clean failure: non-zero exit, no panic, the last
    /// stderr line is one `ocidisk: error: …` line. Returns that line.
    pub fn fail(&self, args: &[&str]) -> String {
        self.fail_with_stdin(args, "")
    }

    pub fn fail_with_stdin(&self, args: &[&str], stdin: &str) -> String {
        let out = self.run_with_stdin(args, stdin);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "ocidisk {args:?} succeeded:\n{stderr}"
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "exit status {:?}: {stderr}",
            out.status
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
            "ocidisk {args:?} panicked:\n{stderr}"
        );
        let last = stderr.lines().last().unwrap_or_default().to_string();
        assert!(
            last.starts_with("ocidisk: error: "),
            "last stderr line is not the error line:\n{stderr}"
        );
        assert_eq!(
            stderr.matches("ocidisk: error:").count(),
            1,
            "more than one error line:\n{stderr}"
        );
        last
    }

    /// Digests (`sha256:HEX`) of the blobs in the cache.
    pub fn cached_blobs(&self) -> BTreeSet<String> {
        let dir = self.cache_dir().join("blobs").join("sha256");
        match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
                .collect(),
            Err(_) => BTreeSet::new(),
        }
    }

    /// Path of a cached blob.
    pub fn cached_blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.cache_dir().join("blobs").join("sha256").join(hex)
    }

    /// Every cached blob's content hashes to its name, and `tmp/` is empty.
    pub fn assert_cache_consistent(&self) {
        for d in self.cached_blobs() {
            let bytes = std::fs::read(self.cached_blob_path(&d)).unwrap();
            let actual = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
            assert_eq!(actual, d, "cached blob content does not match its name");
        }
        let tmp = self.cache_dir().join("tmp");
        if tmp.exists() {
            let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
            assert!(left.is_empty(), "temp files left in the cache: {left:?}");
        }
    }
}

/// Parse `ocidisk inspect --json` output.
pub fn inspect_json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("inspect --json output: {e}\n{stdout}"))
}

/// Flip one byte in the middle of a file, keeping its size.
pub fn corrupt_file(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    assert!(!bytes.is_empty(), "{} is empty", path.display());
    let i = bytes.len() / 2;
    bytes[i] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}
