//! `--flush-to IMG`: a complete image kept up to date beside a running
//! disk: the bytes `materialize` would write, plus the guest's changes.
//!
//! The file is created as a [`PartialFile`] beside `IMG` (partial files a
//! killed run left there are removed first) with every metadata block. Each
//! span that arrives (read by the guest, by read-ahead or by `--prefetch`)
//! writes the file data it holds; guest writes are written merged with the
//! block below. Base data never overwrites a block the guest has written:
//! both paths take one lock, and spans skip blocks the overlay holds. When
//! every span has arrived once the file is fsynced and renamed to `IMG`;
//! from then on it is complete and stays current (fsynced on flush).
//!
//! A qcow2 `IMG` is built the same way as a raw working file (the partial
//! file); when the last span arrives it is written as qcow2 from that file
//! (compressed on every core if asked), renamed to `IMG` and the working
//! file removed. Later guest writes update the qcow2 in place
//! ([`Qcow2File`]).

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::DiskError;
use crate::fs::{BLOCK_SIZE, DataExtent, FsImage};
use crate::image_format::ImageFormat;
use crate::layer_index::LayerIndex;
use crate::partial::{self, PartialFile};
use crate::qcow2::{Qcow2File, Qcow2Options, Qcow2Writer};
use crate::source::manifest::Descriptor;

/// The file: still partial (raw), or complete under its final name.
enum Out {
    Partial(PartialFile),
    Complete(File),
    Qcow2(Qcow2File),
    /// Completing failed; the error was reported once.
    Failed,
}

impl Out {
    /// The raw file spans and writes go to, until a qcow2 takes over.
    fn file(&self) -> Option<&File> {
        match self {
            Out::Partial(p) => Some(p.file()),
            Out::Complete(f) => Some(f),
            Out::Qcow2(_) | Out::Failed => None,
        }
    }
}

struct Progress {
    arrived: HashSet<(usize, usize)>,
    out: Out,
}

/// The image file being kept.
pub struct FlushTo {
    path: PathBuf,
    by_layer: Vec<Vec<DataExtent>>,
    total_spans: usize,
    /// `Some` for a qcow2 `path`.
    qcow2: Option<Qcow2Options>,
    size: u64,
    progress: Mutex<Progress>,
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |e| DiskError::FlushTo(path.to_path_buf(), e)
}

impl FlushTo {
    /// Start the partial file of `path` with the metadata of `fs`.
    pub fn create(
        path: &Path,
        fs: &FsImage,
        layers: &[(std::sync::Arc<LayerIndex>, Descriptor)],
        format: ImageFormat,
    ) -> Result<FlushTo, DiskError> {
        if let ImageFormat::Qcow2(opts) = format {
            // Refuse a size qcow2 cannot hold now, not when complete.
            crate::qcow2::check_size(fs.size, &opts).map_err(DiskError::FlushToQcow2)?;
        }
        partial::clean_stale(path);
        let partial = PartialFile::create(path).map_err(DiskError::FlushToCreate)?;
        let tmp = partial.temp_path().to_path_buf();
        let file = partial.file();
        file.set_len(fs.size).map_err(write_err(&tmp))?;
        fs.write_metadata(file).map_err(write_err(&tmp))?;
        Ok(FlushTo {
            path: path.to_path_buf(),
            by_layer: (0..layers.len()).map(|i| fs.extents_of_layer(i)).collect(),
            total_spans: layers.iter().map(|(ix, _)| ix.spans().len()).sum(),
            qcow2: match format {
                ImageFormat::Qcow2(o) => Some(o),
                ImageFormat::Raw => None,
            },
            size: fs.size,
            progress: Mutex::new(Progress {
                arrived: HashSet::new(),
                out: Out::Partial(partial),
            }),
        })
    }

    /// Whether every span has arrived and the file has its final name.
    pub fn complete(&self) -> bool {
        matches!(
            crate::sync::lock(&self.progress).out,
            Out::Complete(_) | Out::Qcow2(_)
        )
    }

    /// The raw working file is complete: put it in place as `path`, as it
    /// is or written as qcow2.
    fn finish(&self, raw: PartialFile) -> Result<Out, DiskError> {
        let Some(opts) = self.qcow2 else {
            return Ok(Out::Complete(
                raw.commit().map_err(DiskError::FlushToCreate)?,
            ));
        };
        let q = PartialFile::create(&self.path).map_err(DiskError::FlushToCreate)?;
        let file = q.file().try_clone().map_err(write_err(q.temp_path()))?;
        let writer = Qcow2Writer::new(file, q.temp_path(), self.size, opts)
            .map_err(DiskError::FlushToQcow2)?;
        let image = crate::qcow2::convert(raw.file(), raw.temp_path(), writer)
            .map_err(DiskError::FlushToQcow2)?;
        q.commit().map_err(DiskError::FlushToCreate)?;
        drop(raw);
        Ok(Out::Qcow2(image))
    }

    /// A verified span of `layer` covering tar bytes `[start, start+len)`
    /// arrived. `guest_has(block)` says whether the overlay holds a block.
    pub fn span_arrived(
        &self,
        layer: usize,
        span: usize,
        start: u64,
        data: &[u8],
        guest_has: &dyn Fn(u64) -> bool,
    ) -> Result<(), DiskError> {
        let mut p = crate::sync::lock(&self.progress);
        if !p.arrived.insert((layer, span)) {
            return Ok(());
        }
        let Some(file) = p.out.file() else {
            return Ok(());
        };
        let end = start + data.len() as u64;
        let exts = &self.by_layer[layer];
        let first = exts.partition_point(|e| e.tar_offset + e.len <= start);
        for e in &exts[first..] {
            if e.tar_offset >= end {
                break;
            }
            let lo = e.tar_offset.max(start);
            let hi = (e.tar_offset + e.len).min(end);
            let mut dev = e.device_offset + (lo - e.tar_offset);
            let mut piece = &data[(lo - start) as usize..(hi - start) as usize];
            // Block by block, skipping what the guest has written.
            while !piece.is_empty() {
                let block = dev / BLOCK_SIZE;
                let n = (((block + 1) * BLOCK_SIZE - dev) as usize).min(piece.len());
                if !guest_has(block) {
                    file.write_all_at(&piece[..n], dev)
                        .map_err(write_err(&self.path))?;
                }
                piece = &piece[n..];
                dev += n as u64;
            }
        }
        if matches!(p.out, Out::Partial(_)) && p.arrived.len() == self.total_spans {
            let Out::Partial(partial) = std::mem::replace(&mut p.out, Out::Failed) else {
                unreachable!("checked above");
            };
            p.out = self.finish(partial)?;
            tracing::info!(path = %self.path.display(), "flush-to image is complete");
        }
        Ok(())
    }

    /// The guest wrote: `merged` is the device's bytes at `offset` (whole
    /// blocks, overlay included).
    pub fn guest_wrote(&self, offset: u64, merged: &[u8]) -> Result<(), DiskError> {
        let mut p = crate::sync::lock(&self.progress);
        if let Out::Qcow2(q) = &mut p.out {
            return q.write_at(merged, offset).map_err(DiskError::FlushToQcow2);
        }
        match p.out.file() {
            Some(f) => f
                .write_all_at(merged, offset)
                .map_err(write_err(&self.path)),
            None => Ok(()),
        }
    }

    /// Make what was written durable.
    pub fn flush(&self) -> Result<(), DiskError> {
        let p = crate::sync::lock(&self.progress);
        if let Out::Qcow2(q) = &p.out {
            return q.flush().map_err(DiskError::FlushToQcow2);
        }
        match p.out.file() {
            Some(f) => f.sync_data().map_err(write_err(&self.path)),
            None => Ok(()),
        }
    }
}
