//! eStargz layers (containerd/stargz-snapshotter `estargz`): a gzip layer
//! whose every non-empty file starts a gzip member of its own, with a
//! table of contents (`stargz.index.json`, in a tar of its own in the
//! second-to-last member) and a 51-byte footer naming where that member
//! starts. The layer's descriptor in the manifest carries the sha256 of
//! the TOC's JSON (`containerd.io/snapshot/stargz/toc.digest`): the
//! manifest vouches for the table, and the table for every chunk. Wire
//! format: `docs/toc-formats.md` §4.

use std::io::{Read as _, Write as _};

use sha2::Digest as _;

use super::chunked::{self, Extra, JsonToc};
use super::{LayerReader, TocError};
use crate::digest::Digest;
use crate::layer_index::{ChunkAt, ChunkCodec, LayerIndex};
use crate::source::manifest::Compression;

/// The layer annotation with the sha256 of the TOC's JSON.
pub const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
/// The footer's length.
pub const FOOTER: u64 = 51;
/// The TOC's name in its tar.
pub const TOC_NAME: &[u8] = b"stargz.index.json";
/// The largest TOC read, decoded.
const TOC_LIMIT: u64 = 256 << 20;

/// The TOC's compressed offset, from the footer (`None`: not an eStargz
/// footer).
pub fn parse_footer(f: &[u8]) -> Option<u64> {
    let ok = f.len() == FOOTER as usize
        && f[0..3] == [0x1f, 0x8b, 0x08]
        && f[3] & 0x04 != 0
        && f[10..12] == [26, 0]
        && &f[12..14] == b"SG"
        && f[14..16] == [22, 0]
        && &f[32..38] == b"STARGZ";
    if !ok {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&f[16..32]).ok()?, 16).ok()
}

/// The index of an eStargz layer from its TOC, or `None` if the layer
/// carries no TOC digest annotation.
pub async fn load(r: &LayerReader<'_>) -> Result<Option<LayerIndex>, TocError> {
    let (layer, desc) = (r.layer, &r.layer.descriptor);
    let Some(want) = desc.annotations.as_ref().and_then(|a| a.get(TOC_DIGEST)) else {
        return Ok(None);
    };
    let invalid = |what: String| r.invalid("eStargz", what);
    let want: Digest = want
        .parse()
        .map_err(|e| invalid(format!("annotation {TOC_DIGEST}: {e}")))?;
    if layer.compression != Compression::Gzip || desc.size < FOOTER {
        return Err(invalid("not a gzip layer with a footer".into()));
    }
    let footer = r.range(desc.size - FOOTER, desc.size).await?;
    let toc_at = parse_footer(&footer).ok_or_else(|| invalid("no eStargz footer".into()))?;
    let member_end = desc.size - FOOTER;
    if toc_at >= member_end {
        return Err(invalid(format!(
            "footer names the TOC at {toc_at}, past the data"
        )));
    }
    let member = r.range(toc_at, member_end).await?;
    let mut tar = Vec::new();
    flate2::read::MultiGzDecoder::new(&member[..])
        .take(TOC_LIMIT)
        .read_to_end(&mut tar)
        .map_err(|e| invalid(format!("the TOC member does not inflate: {e}")))?;
    let mut t = crate::tar::TarIndexer::new();
    t.write_all(&tar)
        .and_then(|()| t.flush())
        .map_err(|e| invalid(format!("the TOC member is not a tar: {e}")))?;
    let entries = t
        .finish()
        .map_err(|e| invalid(format!("the TOC member is not a tar: {e}")))?;
    let entry = entries
        .into_iter()
        .find(|e| e.path == TOC_NAME)
        .ok_or_else(|| invalid("no stargz.index.json in the TOC member".into()))?;
    let json = tar
        .get(entry.data_offset as usize..(entry.data_offset + entry.data_len) as usize)
        .ok_or_else(|| invalid("the TOC is cut short".into()))?;
    let actual = Digest::sha256_of(json);
    if actual != want {
        return Err(invalid(format!(
            "the TOC hashes to {actual}, the manifest says {want}"
        )));
    }
    let toc: JsonToc =
        serde_json::from_slice(json).map_err(|e| invalid(format!("TOC JSON: {e}")))?;
    let sha256: [u8; 32] = sha2::Sha256::digest(json).into();
    let extra = Extra {
        at: ChunkAt {
            compressed: toc_at,
            skip: entry.data_offset,
        },
        end: member_end,
        sha256,
        entry,
    };
    chunked::build(
        &desc.digest,
        &layer.diff_id,
        toc,
        ChunkCodec::Gzip,
        toc_at,
        Some(extra),
    )
    .map(Some)
    .map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footers_name_the_toc_offset() {
        let mut f = vec![
            0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
        ];
        f.extend_from_slice(format!("{:016x}STARGZ", 0x1234_5678u64).as_bytes());
        f.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
        f.extend_from_slice(&[0; 8]);
        assert_eq!(parse_footer(&f), Some(0x1234_5678));
        let mut bad = f.clone();
        bad[33] = b'x';
        assert_eq!(parse_footer(&bad), None);
        assert_eq!(parse_footer(&f[1..]), None);
    }
}
