//! Writing a planned image into a file: the sinks (a sparse raw file,
//! qcow2 clusters) and the one streaming pass over each layer that copies
//! file bytes to their planned places. Shared by a fresh `materialize` and
//! the `--base` update, which streams only the layers whose bytes changed.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::MaterializeError;
use super::early::Early;
use crate::digest::Digest;
use crate::fs::{DataExtent, FsImage, Region};
use crate::image_format::ImageFormat;
use crate::partial::{self, PartialFile};
use crate::pull::PullProgress;
use crate::qcow2::{Assembler, Qcow2Writer};
use crate::source::manifest::Compression;

/// A layer blob in the cache: digest, path, compression.
pub type LayerBlob = (Digest, PathBuf, Compression);

/// Where the device's bytes go: a sparse raw file, or qcow2 clusters.
pub(super) enum Sink<'a> {
    Raw(&'a File),
    Qcow2(Box<Assembler>),
}

impl Sink<'_> {
    pub(super) fn write_at(
        &mut self,
        data: &[u8],
        offset: u64,
        output: &Path,
    ) -> Result<(), MaterializeError> {
        match self {
            Sink::Raw(f) => {
                write_nonzero(f, data, offset).map_err(|source| MaterializeError::Write {
                    path: output.to_path_buf(),
                    source,
                })
            }
            Sink::Qcow2(a) => Ok(a.write_at(data, offset)?),
        }
    }
}

/// Write the image; returns the bytes the file takes on disk.
pub(super) fn write_image(
    fs: &FsImage,
    layers: &[LayerBlob],
    output: &Path,
    format: ImageFormat,
    progress: &dyn PullProgress,
) -> Result<u64, MaterializeError> {
    let werr = |source| MaterializeError::Write {
        path: output.to_path_buf(),
        source,
    };
    partial::clean_stale(output);
    let partial = PartialFile::create(output)?;
    let file = partial.file();
    let mut sink = match format {
        ImageFormat::Raw => {
            file.set_len(fs.size).map_err(werr)?;
            Sink::Raw(file)
        }
        ImageFormat::Qcow2(opts) => {
            let tmp = partial.temp_path();
            let writer = Qcow2Writer::new(file.try_clone().map_err(werr)?, tmp, fs.size, opts)?;
            let dir = tmp.parent().unwrap_or(Path::new("."));
            let promised = fs
                .regions(0, fs.size)
                .filter(|(_, r)| !matches!(r, Region::Zeros(_)))
                .map(|(off, r)| (off, r.len()));
            Sink::Qcow2(Box::new(Assembler::new(writer, dir, promised)?))
        }
    };
    fill(
        &mut sink,
        fs,
        layers,
        |i| fs.extents_of_layer(i),
        output,
        progress,
    )?;
    if let Sink::Qcow2(a) = sink {
        a.finish()?;
    }
    let file = partial.commit()?;
    use std::os::unix::fs::MetadataExt;
    Ok(file.metadata().map_err(werr)?.blocks() * 512)
}

/// Finish an image whose file data the pull's pass already wrote where it
/// guessed ([`Early`]): size it, punch out what the plan does not want
/// there, then write the metadata and the extents still missing. Returns
/// the bytes the file takes on disk and the file bytes the pass wrote.
pub(super) fn finish_early(
    partial: PartialFile,
    early: &Early,
    fs: &FsImage,
    layers: &[LayerBlob],
    output: &Path,
    progress: &dyn PullProgress,
) -> Result<(u64, u64), MaterializeError> {
    let werr = |source| MaterializeError::Write {
        path: output.to_path_buf(),
        source,
    };
    let left = early.reconcile(fs, layers.len());
    let file = partial.file();
    file.set_len(fs.size).map_err(werr)?;
    for &(start, len) in &left.punch {
        crate::sparse::punch(file, start, len).map_err(werr)?;
    }
    let extents = |i: usize| left.extents.get(i).cloned().unwrap_or_default();
    fill(&mut Sink::Raw(file), fs, layers, extents, output, progress)?;
    let file = partial.commit()?;
    use std::os::unix::fs::MetadataExt;
    Ok((file.metadata().map_err(werr)?.blocks() * 512, left.streamed))
}

/// Write the metadata blocks, then the data `extents` gives for each
/// layer, reporting progress against both.
fn fill(
    sink: &mut Sink<'_>,
    fs: &FsImage,
    layers: &[LayerBlob],
    extents: impl Fn(usize) -> Vec<DataExtent>,
    output: &Path,
    progress: &dyn PullProgress,
) -> Result<(), MaterializeError> {
    let data: u64 = (0..layers.len()).flat_map(&extents).map(|e| e.len).sum();
    let total = fs.metadata.values().map(|b| b.len() as u64).sum::<u64>() + data;
    let mut written = 0u64;
    progress.writing(0, total);
    for (offset, region) in fs.regions(0, fs.size) {
        if let Region::Metadata(bytes) = region {
            sink.write_at(bytes, offset, output)?;
            written += bytes.len() as u64;
        }
    }
    progress.writing(written, total);
    copy_layers(
        layers,
        extents,
        sink,
        output,
        progress,
        (&mut written, total),
    )?;
    progress.writing(total, total);
    Ok(())
}

/// Stream each layer that `extents` gives pieces for (sorted by tar
/// offset) once, copying them to their device offsets in `sink`; layers
/// without pieces are not read. `count`: bytes written so far and in all,
/// for progress.
pub(super) fn copy_layers(
    layers: &[LayerBlob],
    extents: impl Fn(usize) -> Vec<DataExtent>,
    sink: &mut Sink<'_>,
    output: &Path,
    progress: &dyn PullProgress,
    (written, total): (&mut u64, u64),
) -> Result<(), MaterializeError> {
    let mut buf = vec![0u8; 1 << 20];
    for (i, (digest, path, compression)) in layers.iter().enumerate() {
        let extents = extents(i);
        if extents.is_empty() {
            continue;
        }
        let rerr = |source| MaterializeError::ReadLayer {
            layer: digest.clone(),
            source,
        };
        let f = io::BufReader::with_capacity(1 << 20, File::open(path).map_err(rerr)?);
        let mut reader: Box<dyn Read> = match compression {
            Compression::None => Box::new(f),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(f).map_err(rerr)?),
        };
        let mut pos = 0u64;
        for e in extents {
            let skip = e.tar_offset - pos;
            let skipped = io::copy(&mut (&mut reader).take(skip), &mut io::sink()).map_err(rerr)?;
            if skipped != skip {
                return Err(rerr(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "layer ended before a file's data",
                )));
            }
            let mut done = 0u64;
            while done < e.len {
                let n = (e.len - done).min(buf.len() as u64) as usize;
                reader.read_exact(&mut buf[..n]).map_err(rerr)?;
                sink.write_at(&buf[..n], e.device_offset + done, output)?;
                done += n as u64;
                *written += n as u64;
                progress.writing(*written, total);
            }
            pos = e.tar_offset + e.len;
        }
    }
    Ok(())
}

/// Write `data` at `offset`, skipping 4 KiB-aligned all-zero pieces (the file
/// is sparse and reads zeros there already).
pub(super) fn write_nonzero(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    // Consecutive non-zero pieces go in one write.
    let mut run: Option<usize> = None;
    let mut i = 0usize;
    while i < data.len() {
        let next = ((offset + i as u64) / 4096 + 1) * 4096;
        let end = ((next - offset) as usize).min(data.len());
        let zero = data[i..end].iter().all(|b| *b == 0);
        match (zero, run) {
            (false, None) => run = Some(i),
            (true, Some(from)) => {
                file.write_all_at(&data[from..i], offset + from as u64)?;
                run = None;
            }
            _ => {}
        }
        i = end;
    }
    if let Some(from) = run {
        file.write_all_at(&data[from..], offset + from as u64)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pieces_are_not_written() {
        let d = tempfile::tempdir().unwrap();
        let f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(d.path().join("x"))
            .unwrap();
        f.set_len(3 * 4096).unwrap();
        let mut data = vec![0u8; 3 * 4096];
        data[5000] = 1;
        write_nonzero(&f, &data, 0).unwrap();
        let mut back = vec![0u8; 3 * 4096];
        f.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, data);
        // Only the middle block was written: the others are still holes.
        assert_eq!(allocated(&f), 4096);
        // Unaligned, with runs of non-zero pieces on both sides of a hole.
        let g = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(d.path().join("y"))
            .unwrap();
        let mut data = vec![7u8; 5 * 4096];
        data[4096 - 100..2 * 4096 - 100].fill(0);
        write_nonzero(&g, &data, 100).unwrap();
        let mut back = vec![0u8; 5 * 4096 + 100];
        g.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back[100..], &data[..]);
        assert_eq!(allocated(&g), 5 * 4096);
    }

    fn allocated(f: &File) -> u64 {
        use std::os::unix::fs::MetadataExt;
        f.metadata().unwrap().blocks() * 512
    }
}
