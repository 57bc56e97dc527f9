//! Tables of contents that let a lazy disk start without streaming whole
//! layers: SOCI zTOCs read from an index published beside the image
//! (`soci.rs`), made and published by `ocidisk index push`
//! (`publish.rs`), in the zTOC wire format (`ztoc.rs`, over the small
//! FlatBuffers codec in `flatbuf.rs`).
//!
//! Trust: a SOCI v1 index is a referrer that anyone with write access to
//! the repository can push, so it is used only when asked for
//! (`--soci-v1`), and every span read through it is checked against the
//! zTOC's digest of that span's compressed bytes.

pub mod flatbuf;
pub mod publish;
pub mod soci;
pub mod ztoc;
