//! `ocidisk diff OLD NEW`: what a new image version shares with an old one
//! on disk, before anything is written: the layers it shares and adds
//! (what a host with OLD cached fetches), and the 512 KiB chunks of NEW's
//! disk that equal OLD's at the same offset (what `materialize --base`
//! keeps and the chunk store dedups). Both plans come from the layer
//! indexes; no image is written and no layer blob is kept.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;

use crate::cache::BlobCache;
use crate::digest::Digest;
use crate::fs::compare::{self, CHUNK, Side};
use crate::fs::{self, FsError, FsOptions};
use crate::inspect::human_size;
use crate::pull::{NoProgress, PullError, PullOptions, pull_image};

/// Errors comparing two images.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// Pulling an image's indexes failed.
    #[error(transparent)]
    Pull(#[from] Box<PullError>),
    /// Planning an image's filesystem failed.
    #[error("planning {image}: {source}")]
    Plan {
        /// The image.
        image: String,
        /// The error.
        source: FsError,
    },
    /// A worker thread panicked: a bug, reported instead of a crash.
    #[error("internal error while planning: {0}")]
    Internal(String),
}

/// One image of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct DiffImage {
    /// The reference as resolved.
    pub reference: String,
    /// Its digest.
    pub image_id: Digest,
    /// Its layers.
    pub layers: usize,
    /// Compressed bytes of its layers.
    pub layers_bytes: u64,
    /// Device size of its disk.
    pub device_size: u64,
    /// Non-zero 512 KiB chunks of its disk.
    pub chunks: u64,
}

/// What NEW shares with OLD and what it adds.
#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    /// The old image.
    pub old: DiffImage,
    /// The new image.
    pub new: DiffImage,
    /// NEW's layers OLD has too (by digest).
    pub shared_layers: usize,
    /// Their compressed bytes.
    pub shared_layers_bytes: u64,
    /// NEW's layers OLD does not have.
    pub added_layers: usize,
    /// Their compressed bytes: what a host with OLD cached fetches.
    pub added_layers_bytes: u64,
    /// NEW's non-zero chunks equal to OLD's at the same offset.
    pub shared_chunks: u64,
    /// NEW's chunks with a byte that differs from OLD's.
    pub changed_chunks: u64,
    /// Device bytes of NEW that differ from OLD (whole blocks).
    pub changed_bytes: u64,
    /// File bytes NEW takes from layers OLD has.
    pub data_bytes_shared: u64,
    /// File bytes NEW takes from layers OLD does not have.
    pub data_bytes_added: u64,
}

/// Compare `new` with `old`, both planned with `fs`.
pub async fn diff(
    old: &PullOptions,
    new: &PullOptions,
    fs: &FsOptions,
    cache: &BlobCache,
) -> Result<DiffReport, DiffError> {
    let indexes_only = |o: &PullOptions| PullOptions {
        keep_blobs: false,
        ..o.clone()
    };
    let (old_r, old_img, old_ix) = pull_image(&indexes_only(old), cache, Arc::new(NoProgress))
        .await
        .map_err(Box::new)?;
    let (new_r, new_img, new_ix) = pull_image(&indexes_only(new), cache, Arc::new(NoProgress))
        .await
        .map_err(Box::new)?;
    let fs = fs.clone();
    let (old_id, new_id) = (old_img.id().clone(), new_img.id().clone());
    let (old_ref, new_ref) = (old_r.reference.clone(), new_r.reference.clone());
    let plans = tokio::task::spawn_blocking(move || {
        let plan = |id: &Digest, ix, image: &str| {
            fs::plan_layers(id, ix, &fs).map_err(|source| DiffError::Plan {
                image: image.to_string(),
                source,
            })
        };
        Ok::<_, DiffError>((
            plan(&old_id, &old_ix, &old_ref)?,
            plan(&new_id, &new_ix, &new_ref)?,
        ))
    })
    .await
    .map_err(|e| DiffError::Internal(e.to_string()))?;
    let (old_plan, new_plan) = plans?;
    let digests = |img: &crate::source::ResolvedImage| -> Vec<Digest> {
        img.layers
            .iter()
            .map(|l| l.descriptor.digest.clone())
            .collect()
    };
    let (old_layers, new_layers) = (digests(&old_img), digests(&new_img));
    let changed = compare::changed_ranges(
        Side {
            image: &old_plan,
            layers: &old_layers,
        },
        Side {
            image: &new_plan,
            layers: &new_layers,
        },
    );
    let counted = compare::chunk_count(&new_plan, &changed);
    let in_old: HashSet<&Digest> = old_layers.iter().collect();
    let (mut shared_layers, mut shared_layers_bytes) = (0, 0);
    let (mut added_layers, mut added_layers_bytes) = (0, 0);
    for l in &new_img.layers {
        if in_old.contains(&l.descriptor.digest) {
            shared_layers += 1;
            shared_layers_bytes += l.descriptor.size;
        } else {
            added_layers += 1;
            added_layers_bytes += l.descriptor.size;
        }
    }
    let (mut data_bytes_shared, mut data_bytes_added) = (0, 0);
    for e in &new_plan.data {
        if new_layers.get(e.layer).is_some_and(|d| in_old.contains(d)) {
            data_bytes_shared += e.len;
        } else {
            data_bytes_added += e.len;
        }
    }
    let image = |r: &crate::pull::PullReport,
                 img: &crate::source::ResolvedImage,
                 plan: &fs::FsImage,
                 chunks: u64| DiffImage {
        reference: r.reference.clone(),
        image_id: r.image_id.clone(),
        layers: img.layers.len(),
        layers_bytes: img.layers.iter().map(|l| l.descriptor.size).sum(),
        device_size: plan.size,
        chunks,
    };
    Ok(DiffReport {
        old: image(
            &old_r,
            &old_img,
            &old_plan,
            compare::chunk_count(&old_plan, &[]).chunks,
        ),
        new: image(&new_r, &new_img, &new_plan, counted.chunks),
        shared_layers,
        shared_layers_bytes,
        added_layers,
        added_layers_bytes,
        shared_chunks: counted.shared,
        changed_chunks: counted.changed,
        changed_bytes: changed.iter().map(|r| r.1).sum(),
        data_bytes_shared,
        data_bytes_added,
    })
}

impl DiffReport {
    /// The report as a table.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let (o, n) = (&self.old, &self.new);
        let pct = |a: u64, b: u64| {
            if b == 0 {
                0.0
            } else {
                100.0 * a as f64 / b as f64
            }
        };
        let row = |s: &mut String, what: &str, a: String, b: String| {
            let _ = writeln!(s, "{what:<18} {a:<40} {b}");
        };
        row(&mut s, "", "OLD".into(), "NEW".into());
        row(&mut s, "image", o.reference.clone(), n.reference.clone());
        row(&mut s, "digest", o.image_id.short(), n.image_id.short());
        row(
            &mut s,
            "layers",
            format!("{} ({})", o.layers, human_size(o.layers_bytes)),
            format!("{} ({})", n.layers, human_size(n.layers_bytes)),
        );
        row(
            &mut s,
            "disk",
            human_size(o.device_size),
            human_size(n.device_size),
        );
        row(
            &mut s,
            "non-zero chunks",
            o.chunks.to_string(),
            n.chunks.to_string(),
        );
        s.push('\n');
        let _ = writeln!(
            s,
            "layers:  {} shared ({}), {} added ({} to fetch with OLD cached)",
            self.shared_layers,
            human_size(self.shared_layers_bytes),
            self.added_layers,
            human_size(self.added_layers_bytes)
        );
        let _ = writeln!(
            s,
            "chunks:  {} of NEW's {} ({:.1}%) equal OLD's at the same offset; {} differ ({} KiB chunks)",
            self.shared_chunks,
            n.chunks,
            pct(self.shared_chunks, n.chunks),
            self.changed_chunks,
            CHUNK / 1024
        );
        let _ = writeln!(
            s,
            "bytes:   {} of NEW's disk differ from OLD (what materialize --base rewrites)",
            human_size(self.changed_bytes)
        );
        let _ = writeln!(
            s,
            "data:    {} of file data from shared layers, {} from added ones",
            human_size(self.data_bytes_shared),
            human_size(self.data_bytes_added)
        );
        s
    }
}
