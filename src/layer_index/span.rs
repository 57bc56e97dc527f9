//! Reading one span back: decode the compressed bytes from its access
//! point and check every span decoded on the way against the sha256 the
//! verified first pass recorded.

use super::{Access, ChunkCodec, LayerIndex, gzip};
use crate::digest::Digest;

/// Errors decoding a fetched span.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpanError {
    /// The bytes do not decode.
    #[error("layer {layer}, span {span}: {detail}")]
    Decode {
        /// The layer.
        layer: Digest,
        /// The span.
        span: usize,
        /// What went wrong.
        detail: String,
    },
    /// The decoded bytes do not match the hash from the verified first pass.
    #[error(
        "layer {layer}, span {span}: content does not match its recorded sha256 (tampered or corrupt)"
    )]
    Mismatch {
        /// The layer.
        layer: Digest,
        /// The span.
        span: usize,
    },
}

impl LayerIndex {
    /// Decode the bytes [`LayerIndex::span_fetch`] named for span `i`: every
    /// span from the access point through `i`, each checked against the hash
    /// recorded in the verified first pass. Returns (span index, bytes).
    pub fn decode_spans(
        &self,
        i: usize,
        compressed: &[u8],
    ) -> Result<Vec<(usize, Vec<u8>)>, SpanError> {
        use sha2::Digest as _;
        let (_, base, first) = self.access_for(i);
        let from = self.spans[first].start;
        let to = self.span_range(i).1;
        let len = (to - from) as usize;
        let err = |detail: String| SpanError::Decode {
            layer: self.layer.clone(),
            span: i,
            detail,
        };
        let data = match &self.access {
            Access::Tar => compressed.to_vec(),
            Access::Gzip(cps) => {
                let cp = &cps[cps.partition_point(|c| c.uncompressed <= from) - 1];
                gzip::read_span(cp, compressed, from - base, len).map_err(|e| err(e.to_string()))?
            }
            Access::Zstd(_) => zstd_range(compressed, from - base, len).map_err(err)?,
            Access::Chunks(ChunkCodec::Zstd, at) => {
                zstd_range(compressed, at[i].skip, len).map_err(err)?
            }
            Access::Chunks(ChunkCodec::Gzip, at) => {
                gzip_members(compressed, at[i].skip, len).map_err(err)?
            }
            Access::GzipRanges(cps) => {
                // The hash covers the compressed range: check it before
                // inflating a byte of it.
                if <[u8; 32]>::from(sha2::Sha256::digest(compressed)) != self.spans[i].sha256 {
                    return Err(SpanError::Mismatch {
                        layer: self.layer.clone(),
                        span: i,
                    });
                }
                let cp = &cps[i];
                let data =
                    gzip::read_span(cp, compressed, 0, len).map_err(|e| err(e.to_string()))?;
                return Ok(vec![(i, data)]);
            }
        };
        if data.len() != len {
            return Err(SpanError::Mismatch {
                layer: self.layer.clone(),
                span: i,
            });
        }
        let mut out = Vec::with_capacity(i + 1 - first);
        for k in first..=i {
            let (s, e) = self.span_range(k);
            let piece = &data[(s - from) as usize..(e - from) as usize];
            if <[u8; 32]>::from(sha2::Sha256::digest(piece)) != self.spans[k].sha256 {
                return Err(SpanError::Mismatch {
                    layer: self.layer.clone(),
                    span: k,
                });
            }
            out.push((k, piece.to_vec()));
        }
        Ok(out)
    }

    /// Decode and verify span `i` alone (see [`LayerIndex::decode_spans`]).
    pub fn decode_span(&self, i: usize, compressed: &[u8]) -> Result<Vec<u8>, SpanError> {
        let mut all = self.decode_spans(i, compressed)?;
        Ok(all.pop().expect("at least span i").1)
    }
}

/// Decode `len` bytes after skipping `skip`, from gzip data that starts at
/// a member's header and may run on through further members.
fn gzip_members(compressed: &[u8], skip: u64, len: usize) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let mut d = flate2::read::MultiGzDecoder::new(compressed);
    std::io::copy(&mut (&mut d).take(skip), &mut std::io::sink()).map_err(|e| e.to_string())?;
    let mut out = vec![0u8; len];
    d.read_exact(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Decode `len` bytes after skipping `skip`, from zstd data that starts at a
/// frame and may stop in the middle of one (the raw decoder, unlike the
/// reader, returns what it can without demanding the rest of the frame).
fn zstd_range(compressed: &[u8], mut skip: u64, len: usize) -> Result<Vec<u8>, String> {
    use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
    let mut dec = Decoder::new().map_err(|e| e.to_string())?;
    let mut input = InBuffer::around(compressed);
    let mut out = vec![0u8; len];
    let mut scratch = vec![0u8; 128 << 10];
    let mut filled = 0;
    while filled < len {
        let before = (input.pos(), filled, skip);
        if skip > 0 {
            let n = skip.min(scratch.len() as u64) as usize;
            let mut o = OutBuffer::around(&mut scratch[..n]);
            dec.run(&mut input, &mut o).map_err(|e| e.to_string())?;
            skip -= o.pos() as u64;
        } else {
            let mut o = OutBuffer::around(&mut out[filled..]);
            dec.run(&mut input, &mut o).map_err(|e| e.to_string())?;
            filled += o.pos();
        }
        if (input.pos(), filled, skip) == before {
            return Err("zstd data ended early".into());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::tests::big_tar;
    use super::super::*;
    use crate::digest::Algorithm;
    use std::io::Write;

    #[test]
    fn every_span_decodes_from_its_fetch_range_and_verifies() {
        let tar = big_tar();
        let diff_id = Digest::sha256_of(&tar);
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&tar).unwrap();
            e.finish().unwrap()
        };
        // Several zstd frames, as a seekable zstd writer would produce.
        let zst: Vec<u8> = tar
            .chunks(1_500_000)
            .flat_map(|c| zstd::bulk::compress(c, 3).unwrap())
            .collect();
        for (compression, blob) in [
            (Compression::None, tar.clone()),
            (Compression::Gzip, gz),
            (Compression::Zstd, zst),
        ] {
            let mut ix = LayerIndexer::new(compression, Algorithm::Sha256).unwrap();
            for c in blob.chunks(77_777) {
                ix.push(c).unwrap();
            }
            let layer = Digest::sha256_of(&blob);
            let index = ix.finish(&layer, &diff_id).unwrap();
            assert!(
                index.spans.len() >= 3,
                "{compression:?}: {} spans",
                index.spans.len()
            );
            if compression == Compression::Zstd {
                let Access::Zstd(f) = &index.access else {
                    panic!()
                };
                assert!(f.len() >= 2, "frame starts recorded: {f:?}");
            }
            for i in 0..index.spans.len() {
                let f = index.span_fetch(i, blob.len() as u64);
                let (s, e) = index.span_range(i);
                let data = index
                    .decode_span(i, &blob[f.start as usize..f.end as usize])
                    .unwrap();
                assert_eq!(
                    data,
                    &tar[s as usize..e as usize],
                    "{compression:?} span {i}"
                );
            }
            // A tampered byte inside a span is caught by its hash (or decoding).
            let f = index.span_fetch(1, blob.len() as u64);
            let mut bad = blob[f.start as usize..f.end as usize].to_vec();
            let mid = bad.len() / 2;
            bad[mid] ^= 0x20;
            assert!(index.decode_span(1, &bad).is_err(), "{compression:?}");
            assert_eq!(decode(&encode(&index)).unwrap(), index);
        }
    }
}
