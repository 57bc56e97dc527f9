//! `--init`: one more layer on top of the image, holding `/.ocidisk/init`
//! (a static PID 1 built from `init/ocidisk-init.c`, no file of the image
//! needed) and `/.ocidisk/config.json` (what it needs from the image
//! config), so that `root=/dev/vda init=/.ocidisk/init` boots straight into
//! the image's own process with docker's semantics.
//!
//! The layer is an ordinary uncompressed tar, the same bytes for the same
//! image: it is stored in the blob cache under its digest and indexed like
//! any layer, so `materialize` streams it and the lazy disk serves it from
//! the cache, whatever the filesystem writer. It also carries, when no
//! layer of the image has them, the directories an init and Debian's
//! initrd mount on (`/dev`, `/proc`, `/sys`, `/run`, `/tmp`, with their
//! usual modes) and the WorkingDir (0755, root, as docker creates a
//! missing one): a read-only root could not get them at boot.

use serde::Serialize;

use crate::cache::BlobCache;
use crate::digest::Digest;
use crate::layer_index::LayerIndex;
use crate::source::manifest::{Compression, Descriptor};
use crate::source::{Layer, ResolvedImage};

/// Where the init is on the disk.
pub const INIT_PATH: &str = "/.ocidisk/init";
/// Where its configuration is.
pub const CONFIG_PATH: &str = "/.ocidisk/config.json";
/// The kernel command line that boots an `--init` disk (`ro` for a
/// read-only one).
pub const BOOT_ARGS: &str = "root=/dev/vda init=/.ocidisk/init console=ttyS0";

/// The x86-64 init, as build.rs built it (empty when it could not).
static INIT_X86_64: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ocidisk-init-x86_64"));

/// Errors adding the init layer.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// No init for the image's architecture.
    #[error("--init: ocidisk has no init for {0} images (it has one for amd64)")]
    NoInitFor(String),
    /// This build has no init binary.
    #[error(
        "--init: this ocidisk was built without a static C compiler (musl-gcc or gcc -static), so it has no init"
    )]
    NotBuilt,
    /// A stop signal the init does not know.
    #[error("--init: the image's StopSignal {0:?} is not a Linux signal")]
    StopSignal(String),
    /// Storing the layer in the cache failed.
    #[error("--init: storing the init layer: {0}")]
    Cache(#[from] crate::cache::CacheError),
    /// Indexing it failed.
    #[error("--init: indexing the init layer: {0}")]
    Index(#[from] crate::layer_index::IndexError),
    /// Building the tar failed.
    #[error("--init: building the init layer: {0}")]
    Tar(std::io::Error),
}

/// What the init reads from `/.ocidisk/config.json`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct InitConfig {
    /// The image's Entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// The image's Cmd.
    pub cmd: Option<Vec<String>>,
    /// The image's Env.
    pub env: Vec<String>,
    /// The image's User (uid, uid:gid, name, name:group).
    pub user: Option<String>,
    /// The image's WorkingDir.
    pub working_dir: Option<String>,
    /// StopSignal as a number (SIGTERM when the image has none).
    pub stop_signal: i32,
    /// The VM's hostname: the first 12 hex digits of the image digest, as
    /// docker names a container's host after its id.
    pub hostname: String,
}

/// A Linux x86-64 signal by name (`SIGTERM`, `TERM`) or number.
pub fn signal_number(name: &str) -> Option<i32> {
    const NAMES: [&str; 31] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
        "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    if let Ok(n) = name.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let bare = name.strip_prefix("SIG").unwrap_or(name);
    if let Some(i) = NAMES.iter().position(|n| *n == bare) {
        return Some(i as i32 + 1);
    }
    let rt = |s: &str, base: i32, sign: i32| {
        s.parse::<i32>()
            .ok()
            .map(|k| base + sign * k)
            .filter(|n| (34..=64).contains(n))
    };
    match bare {
        "RTMIN" => Some(34),
        "RTMAX" => Some(64),
        _ => bare
            .strip_prefix("RTMIN+")
            .and_then(|k| rt(k, 34, 1))
            .or_else(|| bare.strip_prefix("RTMAX-").and_then(|k| rt(k, 64, -1))),
    }
}

impl InitConfig {
    /// The init's configuration for `image`.
    pub fn of(image: &ResolvedImage) -> Result<InitConfig, InitError> {
        let rc = image.config.config.clone().unwrap_or_default();
        let stop_signal = match rc.stop_signal.as_deref() {
            None | Some("") => 15,
            Some(s) => signal_number(s).ok_or_else(|| InitError::StopSignal(s.to_string()))?,
        };
        Ok(InitConfig {
            entrypoint: rc.entrypoint,
            cmd: rc.cmd,
            env: rc.env.unwrap_or_default(),
            user: rc.user.filter(|u| !u.is_empty()),
            working_dir: rc.working_dir.filter(|w| !w.is_empty()),
            stop_signal,
            hostname: image.id().hex()[..12].to_string(),
        })
    }
}

/// The init binary for an image architecture.
fn init_for(arch: &str) -> Result<&'static [u8], InitError> {
    match arch {
        "amd64" | "x86_64" if INIT_X86_64.is_empty() => Err(InitError::NotBuilt),
        "amd64" | "x86_64" => Ok(INIT_X86_64),
        other => Err(InitError::NoInitFor(other.to_string())),
    }
}

/// Whether any layer has an entry at `path` (relative, no slashes at
/// either end) or below it.
fn mentioned(indexes: &[LayerIndex], path: &str) -> bool {
    indexes.iter().flat_map(|ix| ix.entries()).any(|e| {
        let mut p: &[u8] = &e.path;
        while let Some(rest) = p.strip_prefix(b"./").or_else(|| p.strip_prefix(b"/")) {
            p = rest;
        }
        let p = p.strip_suffix(b"/").unwrap_or(p);
        p == path.as_bytes() || (p.starts_with(path.as_bytes()) && p.get(path.len()) == Some(&b'/'))
    })
}

/// The directories the layer must add to `image` (tar paths with a
/// trailing slash, modes): those no layer has.
fn missing_dirs(image: &ResolvedImage, indexes: &[LayerIndex]) -> Vec<(String, u32)> {
    let mut dirs: Vec<(String, u32)> = [
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("tmp", 0o1777),
    ]
    .iter()
    .map(|(p, m)| (p.to_string(), *m))
    .collect();
    if let Some(wd) = image
        .config
        .config
        .as_ref()
        .and_then(|c| c.working_dir.as_deref())
    {
        // Each missing component of the WorkingDir, parents first.
        let mut at = String::new();
        for part in wd.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if part == ".." {
                break;
            }
            at = if at.is_empty() {
                part.to_string()
            } else {
                format!("{at}/{part}")
            };
            dirs.push((at.clone(), 0o755));
        }
    }
    let mut out: Vec<(String, u32)> = Vec::new();
    for (p, m) in dirs {
        if !mentioned(indexes, &p) && !out.iter().any(|(q, _)| *q == p) {
            out.push((format!("{p}/"), m));
        }
    }
    out
}

/// The layer's tar: the missing directories, the init, its config.
pub fn layer_tar(image: &ResolvedImage, indexes: &[LayerIndex]) -> Result<Vec<u8>, InitError> {
    let init = init_for(&image.platform.architecture)?;
    let mut config =
        serde_json::to_vec_pretty(&InitConfig::of(image)?).map_err(|e| InitError::Tar(e.into()))?;
    config.push(b'\n');
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        b.append_data(&mut h, path, std::io::empty())
    };
    let file = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]| {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        b.append_data(&mut h, path, data)
    };
    (|| {
        for (path, mode) in missing_dirs(image, indexes) {
            dir(&mut b, &path, mode)?;
        }
        dir(&mut b, ".ocidisk/", 0o755)?;
        file(&mut b, ".ocidisk/init", 0o755, init)?;
        file(&mut b, ".ocidisk/config.json", 0o644, &config)?;
        b.into_inner()
    })()
    .map_err(InitError::Tar)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    // The same bytes for the same image: a fixed time (2000-01-01).
    h.set_mtime(946_684_800);
    h
}

/// Put the init layer on top of `image`: stored in `cache`, indexed, and
/// appended to the layers and `indexes`.
pub fn append(
    image: &mut ResolvedImage,
    indexes: &mut Vec<LayerIndex>,
    cache: &BlobCache,
) -> Result<(), InitError> {
    let tar = layer_tar(image, indexes)?;
    let digest = Digest::sha256_of(&tar);
    cache.put_bytes(&digest, &tar)?;
    let path = cache.blob_path(&digest);
    let index = crate::layer_index::index_blob(&path, &digest, &digest, Compression::None)?;
    image.layers.push(Layer {
        descriptor: Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".to_string(),
            digest: digest.clone(),
            size: tar.len() as u64,
            platform: None,
            annotations: None,
            urls: None,
        },
        compression: Compression::None,
        diff_id: digest,
    });
    indexes.push(index);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(signal_number("SIGTERM"), Some(15));
        assert_eq!(signal_number("TERM"), Some(15));
        assert_eq!(signal_number("SIGKILL"), Some(9));
        assert_eq!(signal_number("SIGWINCH"), Some(28));
        assert_eq!(signal_number("SIGRTMIN+3"), Some(37));
        assert_eq!(signal_number("RTMAX-1"), Some(63));
        assert_eq!(signal_number("3"), Some(3));
        assert_eq!(signal_number("SIGNOPE"), None);
        assert_eq!(signal_number("0"), None);
        assert_eq!(signal_number("99"), None);
    }

    #[test]
    fn no_init_for_other_architectures() {
        assert!(matches!(init_for("arm64"), Err(InitError::NoInitFor(a)) if a == "arm64"));
        assert!(
            init_for("amd64").is_ok_and(|b| b.starts_with(b"\x7fELF")),
            "build.rs built the x86-64 init"
        );
    }
}
