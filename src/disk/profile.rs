//! Prefetch profiles: the order in which a run's readers (a VM booting)
//! first touched the image's spans, recorded with `--record-profile FILE`
//! and replayed by a later run with `--prefetch-profile FILE`, which
//! fetches those spans first, in that order, in the background, so a cold
//! boot finds them arriving before it asks.
//!
//! The file is JSON naming spans by layer digest and uncompressed offset,
//! not by index, so it stays valid for any image that shares the layers
//! (spans of other layers are skipped) and can be shared between hosts.
//! It is written with a temporary file and a rename; it is a hint, never
//! trusted for bytes: every span it names is fetched and verified as any
//! other.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::layer_index::LayerIndex;
use crate::source::manifest::Descriptor;

/// The format version written.
const VERSION: u32 = 1;
/// Profiles larger than this are refused (a span entry is ~100 bytes).
const MAX_FILE: u64 = 64 << 20;

/// Errors reading or writing a profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read or written.
    #[error("prefetch profile {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a profile.
    #[error("prefetch profile {path} is not valid: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// `--record-profile` and `--prefetch-profile`.
#[derive(Debug, Clone, Default)]
pub struct ProfileOptions {
    /// Record the order of first touches here (written when the disk is
    /// saved or closed).
    pub record: Option<PathBuf>,
    /// Fetch the spans this profile names first, in its order.
    pub prefetch: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
struct File {
    version: u32,
    /// The image it was recorded on (informational).
    image: String,
    spans: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    layer: String,
    offset: u64,
}

/// The spans first touched, in order.
#[derive(Debug, Default)]
pub struct Recorder {
    seen: HashSet<(usize, usize)>,
    order: Vec<(usize, usize)>,
}

impl Recorder {
    /// Span `span` of layer `layer` was read.
    pub fn touch(&mut self, layer: usize, span: usize) {
        if self.seen.insert((layer, span)) {
            self.order.push((layer, span));
        }
    }

    /// Spans recorded so far.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Write the profile to `path` (temp file + rename).
    pub fn save(
        &self,
        path: &Path,
        image: &str,
        layers: &[(Arc<LayerIndex>, Descriptor)],
    ) -> Result<(), ProfileError> {
        let file = File {
            version: VERSION,
            image: image.to_string(),
            spans: self
                .order
                .iter()
                .map(|&(l, s)| Entry {
                    layer: layers[l].1.digest.to_string(),
                    offset: layers[l].0.span_range(s).0,
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| ProfileError::Invalid {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        // The temp file beside the profile, so the rename stays on one
        // filesystem.
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        crate::cache::write_atomic(dir, path, &json).map_err(|e| ProfileError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        Ok(())
    }
}

/// The spans `path` names, as (layer, span) of this image in the file's
/// order; spans of layers the image lacks, or past a layer's end, are
/// skipped (and counted in the log).
pub fn load(
    path: &Path,
    layers: &[(Arc<LayerIndex>, Descriptor)],
) -> Result<Vec<(usize, usize)>, ProfileError> {
    let io = |source| ProfileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let invalid = |detail: String| ProfileError::Invalid {
        path: path.to_path_buf(),
        detail,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE {
        return Err(invalid(format!(
            "{len} bytes, over the {MAX_FILE}-byte limit"
        )));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let file: File = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    if file.version != VERSION {
        return Err(invalid(format!(
            "version {}, this ocidisk reads version {VERSION}",
            file.version
        )));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut skipped = 0usize;
    for e in &file.spans {
        let found = layers
            .iter()
            .position(|(_, d)| d.digest.to_string() == e.layer)
            .and_then(|l| layers[l].0.span_at(e.offset).map(|(s, _, _)| (l, s)));
        match found {
            Some(k) if seen.insert(k) => out.push(k),
            Some(_) => {}
            None => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::info!(
            profile = %path.display(),
            skipped,
            "spans of layers this image does not have (or past their end) skipped"
        );
    }
    Ok(out)
}
