//! zstd:chunked layers (containers/storage `pkg/chunked`): a zstd layer
//! whose every file payload is whole zstd frames of its own, with a table
//! of contents (the "manifest", zstd-compressed in a skippable frame near
//! the end). The layer's descriptor carries where the manifest is and the
//! sha256 of its compressed bytes, under the current
//! `io.github.containers.zstd-chunked.*` names or the older
//! `io.containers.zstd-chunked.*` ones Debian 12's skopeo writes: the
//! manifest vouches for the table, and the table for every chunk. Wire
//! format: `docs/toc-formats.md` §5.
//!
//! The rule for diff_ids: a layer started from its table is never
//! decompressed whole, so the config's diff_id for it is not checked.
//! skopeo 1.9.3's zstd:chunked images carry a diff_id that does not match
//! their layers' content (a full pass such as `materialize` refuses them);
//! through the table they serve, each chunk checked against its sha256.

use super::chunked::{self, JsonToc};
use super::{LayerReader, TocError};
use crate::digest::Digest;
use crate::layer_index::{ChunkCodec, LayerIndex};
use crate::source::manifest::Compression;

/// The annotation prefixes, current first.
const PREFIXES: [&str; 2] = [
    "io.github.containers.zstd-chunked.",
    "io.containers.zstd-chunked.",
];
/// The largest manifest read, decoded.
const MANIFEST_LIMIT: u64 = 256 << 20;

/// `offset:length:uncompressed length:type` (type 1: CRFS-style JSON).
fn parse_position(p: &str) -> Option<(u64, u64, u64)> {
    let mut it = p.split(':').map(|x| x.parse::<u64>().ok());
    let (o, l, u) = (it.next()??, it.next()??, it.next()??);
    match it.next() {
        None | Some(Some(1)) => Some((o, l, u)),
        _ => None,
    }
}

/// The index of a zstd:chunked layer from its manifest, or `None` if the
/// layer carries no manifest annotations.
pub async fn load(r: &LayerReader<'_>) -> Result<Option<LayerIndex>, TocError> {
    let (layer, desc) = (r.layer, &r.layer.descriptor);
    let Some(ann) = desc.annotations.as_ref() else {
        return Ok(None);
    };
    let Some((checksum, position)) = PREFIXES.iter().find_map(|p| {
        Some((
            ann.get(&format!("{p}manifest-checksum"))?,
            ann.get(&format!("{p}manifest-position"))?,
        ))
    }) else {
        return Ok(None);
    };
    let invalid = |what: String| r.invalid("zstd:chunked", what);
    if layer.compression != Compression::Zstd {
        return Err(invalid("not a zstd layer".into()));
    }
    let want: Digest = checksum
        .parse()
        .map_err(|e| invalid(format!("manifest checksum: {e}")))?;
    let (offset, length, plain) = parse_position(position)
        .ok_or_else(|| invalid(format!("manifest position {position:?}")))?;
    let end = offset
        .checked_add(length)
        .filter(|e| *e <= desc.size && offset >= 8)
        .ok_or_else(|| invalid(format!("manifest at {offset}+{length} is outside the blob")))?;
    if plain > MANIFEST_LIMIT {
        return Err(invalid(format!("a {plain} byte manifest")));
    }
    let z = r.range(offset, end).await?;
    let actual = Digest::sha256_of(&z);
    if actual != want {
        return Err(invalid(format!(
            "the manifest hashes to {actual}, the annotation says {want}"
        )));
    }
    let json = zstd::bulk::decompress(&z, plain as usize)
        .map_err(|e| invalid(format!("the manifest does not decompress: {e}")))?;
    if json.len() as u64 != plain {
        return Err(invalid(format!(
            "the manifest is {} bytes, the annotation says {plain}",
            json.len()
        )));
    }
    let toc: JsonToc =
        serde_json::from_slice(&json).map_err(|e| invalid(format!("manifest JSON: {e}")))?;
    // File data ends where the manifest's skippable frame begins.
    chunked::build(
        &desc.digest,
        &layer.diff_id,
        toc,
        ChunkCodec::Zstd,
        offset - 8,
        None,
    )
    .map(Some)
    .map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_as_containers_storage_writes_them() {
        assert_eq!(parse_position("123:45:678:1"), Some((123, 45, 678)));
        assert_eq!(parse_position("123:45:678"), Some((123, 45, 678)));
        assert_eq!(parse_position("123:45:678:2"), None);
        assert_eq!(parse_position("123:x:678:1"), None);
        assert_eq!(parse_position("123:45"), None);
    }
}
