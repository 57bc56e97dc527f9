//! Images in a running containerd's content store: `containerd:[NS/]REF`.
//!
//! The image service names the image's target (a manifest or an index);
//! manifests, configs and layers are read from the content store, layers
//! by ranges for the lazy disk (the store's `Read` takes an offset and a
//! size). Everything read is checked as registry blobs are: by digest and
//! size. Nothing is pulled from a registry, so what `ctr`, nerdctl or the
//! CRI plugin pulled is usable at once.
//!
//! `NS/` is a namespace when one of that name exists in containerd (image
//! names start with a registry host, which is never a namespace name in
//! practice); without it, the `default` namespace.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::stream::BoxStream;

use super::grpc::{Channel, GrpcError, NOT_FOUND};
use crate::digest::Digest;

/// containerd's default socket.
pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";
/// The namespace when the reference names none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Bytes asked for per Read call of a stream.
const READ_PIECE: u64 = 1 << 20;

/// Errors reading from containerd.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// containerd is not reachable.
    #[error(
        "containerd at {socket} is not reachable: {source} (is it running? pick another socket with --containerd-address)"
    )]
    Unreachable {
        /// The socket.
        socket: PathBuf,
        /// The error.
        source: GrpcError,
    },
    /// No image of that name.
    #[error(
        "image {name:?} not found in containerd namespace {namespace:?} at {socket} (list them with: ctr -n {namespace} images ls)"
    )]
    ImageNotFound {
        /// The image name.
        name: String,
        /// The namespace.
        namespace: String,
        /// The socket.
        socket: PathBuf,
    },
    /// The content store lacks a blob the image needs.
    #[error(
        "blob {digest} of {image} is not in containerd's content store (was the image pulled for this platform?)"
    )]
    BlobNotFound {
        /// The image.
        image: String,
        /// The blob.
        digest: Digest,
    },
    /// A blob is not what its descriptor says.
    #[error("blob {digest} of {image}: {detail}")]
    BadBlob {
        /// The image.
        image: String,
        /// The blob.
        digest: Digest,
        /// What is wrong.
        detail: String,
    },
    /// The image's target descriptor is unusable.
    #[error("image {name:?} in containerd has an unusable target: {detail}")]
    BadTarget {
        /// The image name.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// Any other failed call.
    #[error(transparent)]
    Call(#[from] GrpcError),
}

/// The messages of containerd's API this source uses (field numbers from
/// containerd's `api/services/{images,content,namespaces}/v1` and
/// `api/types/descriptor.proto`).
mod api {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Descriptor {
        #[prost(string, tag = "1")]
        pub media_type: String,
        #[prost(string, tag = "2")]
        pub digest: String,
        #[prost(int64, tag = "3")]
        pub size: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Image {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "3")]
        pub target: Option<Descriptor>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetImageRequest {
        #[prost(string, tag = "1")]
        pub name: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetImageResponse {
        #[prost(message, optional, tag = "1")]
        pub image: Option<Image>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InfoRequest {
        #[prost(string, tag = "1")]
        pub digest: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Info {
        #[prost(string, tag = "1")]
        pub digest: String,
        #[prost(int64, tag = "2")]
        pub size: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InfoResponse {
        #[prost(message, optional, tag = "1")]
        pub info: Option<Info>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ReadContentRequest {
        #[prost(string, tag = "1")]
        pub digest: String,
        #[prost(int64, tag = "2")]
        pub offset: i64,
        #[prost(int64, tag = "3")]
        pub size: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ReadContentResponse {
        #[prost(int64, tag = "1")]
        pub offset: i64,
        #[prost(bytes = "bytes", tag = "2")]
        pub data: bytes::Bytes,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListNamespacesRequest {
        #[prost(string, tag = "1")]
        pub filter: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Namespace {
        #[prost(string, tag = "1")]
        pub name: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListNamespacesResponse {
        #[prost(message, repeated, tag = "1")]
        pub namespaces: Vec<Namespace>,
    }
}

const GET_IMAGE: &str = "/containerd.services.images.v1.Images/Get";
const INFO: &str = "/containerd.services.content.v1.Content/Info";
const READ: &str = "/containerd.services.content.v1.Content/Read";
const LIST_NAMESPACES: &str = "/containerd.services.namespaces.v1.Namespaces/List";

/// An image in containerd, resolved to its target.
pub struct ContainerdSource {
    store: Store,
    name: String,
    target: Digest,
    target_media_type: String,
    target_size: u64,
}

/// The content store of one namespace, for one image's messages.
#[derive(Clone)]
pub struct Store {
    channel: Channel,
    namespace: String,
    image: String,
}

impl ContainerdSource {
    /// Connect to containerd at `socket` and look up `reference`
    /// (`[NS/]NAME`).
    pub async fn open(socket: &Path, reference: &str) -> Result<ContainerdSource, ContainerdError> {
        let unreachable = |source| ContainerdError::Unreachable {
            socket: socket.to_path_buf(),
            source,
        };
        let channel = Channel::connect(socket).await.map_err(unreachable)?;
        let (namespace, name) = match reference.split_once('/') {
            Some((ns, rest)) if !rest.is_empty() => {
                let list: api::ListNamespacesResponse = channel
                    .unary(LIST_NAMESPACES, &[], &api::ListNamespacesRequest::default())
                    .await
                    .map_err(unreachable)?;
                if list.namespaces.iter().any(|n| n.name == ns) {
                    (ns.to_string(), rest.to_string())
                } else {
                    (DEFAULT_NAMESPACE.to_string(), reference.to_string())
                }
            }
            _ => (DEFAULT_NAMESPACE.to_string(), reference.to_string()),
        };
        let resp: Result<api::GetImageResponse, _> = channel
            .unary(
                GET_IMAGE,
                &[("containerd-namespace", &namespace)],
                &api::GetImageRequest { name: name.clone() },
            )
            .await;
        let not_found = || ContainerdError::ImageNotFound {
            name: name.clone(),
            namespace: namespace.clone(),
            socket: socket.to_path_buf(),
        };
        let image = match resp {
            Ok(r) => r.image.ok_or_else(not_found)?,
            Err(GrpcError::Status { code, .. }) if code == NOT_FOUND => return Err(not_found()),
            Err(e) => return Err(e.into()),
        };
        let bad = |detail: String| ContainerdError::BadTarget {
            name: name.clone(),
            detail,
        };
        let target = image.target.ok_or_else(|| bad("no target".into()))?;
        let digest: Digest = target
            .digest
            .parse()
            .map_err(|e| bad(format!("digest {:?}: {e}", target.digest)))?;
        let size = u64::try_from(target.size).map_err(|_| bad("a negative size".into()))?;
        Ok(ContainerdSource {
            store: Store {
                channel,
                image: format!("containerd:{namespace}/{name}"),
                namespace,
            },
            name,
            target: digest,
            target_media_type: target.media_type,
            target_size: size,
        })
    }

    /// `containerd:NS/NAME`, as the image is named in messages.
    pub fn describe(&self) -> &str {
        &self.store.image
    }

    /// The image name in containerd.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.store.namespace
    }

    /// The image's target: digest, media type and size.
    pub fn target(&self) -> (&Digest, &str, u64) {
        (&self.target, &self.target_media_type, self.target_size)
    }

    /// The content store the image is read from.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl Store {
    fn headers(&self) -> [(&'static str, &str); 1] {
        [("containerd-namespace", self.namespace.as_str())]
    }

    fn bad(&self, digest: &Digest, detail: String) -> ContainerdError {
        ContainerdError::BadBlob {
            image: self.image.clone(),
            digest: digest.clone(),
            detail,
        }
    }

    fn missing(&self, digest: &Digest) -> impl Fn(GrpcError) -> ContainerdError + '_ {
        let digest = digest.clone();
        move |e| match e {
            GrpcError::Status { code, .. } if code == NOT_FOUND => ContainerdError::BlobNotFound {
                image: self.image.clone(),
                digest: digest.clone(),
            },
            e => e.into(),
        }
    }

    /// The size of a blob in the content store.
    pub async fn size(&self, digest: &Digest) -> Result<u64, ContainerdError> {
        let r: api::InfoResponse = self
            .channel
            .unary(
                INFO,
                &self.headers(),
                &api::InfoRequest {
                    digest: digest.to_string(),
                },
            )
            .await
            .map_err(self.missing(digest))?;
        let size = r.info.map_or(-1, |i| i.size);
        u64::try_from(size)
            .map_err(|_| self.bad(digest, format!("the content store says its size is {size}")))
    }

    /// Bytes `[start, end)` of a blob, unverified (the caller checks them).
    pub async fn read_range(
        &self,
        digest: &Digest,
        start: u64,
        end: u64,
    ) -> Result<Vec<u8>, ContainerdError> {
        let want = end.saturating_sub(start);
        let req = api::ReadContentRequest {
            digest: digest.to_string(),
            offset: i64::try_from(start).unwrap_or(i64::MAX),
            size: i64::try_from(want).unwrap_or(i64::MAX),
        };
        let mut answers = self
            .channel
            .call(READ, &self.headers(), &req)
            .await
            .map_err(self.missing(digest))?;
        let mut out = Vec::with_capacity(want.min(64 << 20) as usize);
        while let Some(m) = answers
            .next::<api::ReadContentResponse>()
            .await
            .map_err(self.missing(digest))?
        {
            // containerd numbers the answers from the start of the read.
            let next = out.len() as u64;
            if u64::try_from(m.offset).ok() != Some(next) {
                return Err(self.bad(
                    digest,
                    format!(
                        "reading from {start}, the content store answered offset {} where {next} was next",
                        m.offset
                    ),
                ));
            }
            out.extend_from_slice(&m.data);
            if out.len() as u64 > want {
                break;
            }
        }
        if out.len() as u64 != want {
            return Err(self.bad(
                digest,
                format!(
                    "asked for bytes {start}-{end}, the content store gave {}",
                    out.len()
                ),
            ));
        }
        Ok(out)
    }

    /// A whole small blob (manifest, config), checked against `digest`
    /// and at most `limit` bytes.
    pub async fn read_small(
        &self,
        digest: &Digest,
        limit: u64,
    ) -> Result<Vec<u8>, ContainerdError> {
        let size = self.size(digest).await?;
        if size > limit {
            return Err(self.bad(digest, format!("{size} bytes, over the {limit}-byte limit")));
        }
        let bytes = if size == 0 {
            Vec::new()
        } else {
            self.read_range(digest, 0, size).await?
        };
        if !digest.matches(&bytes) {
            return Err(self.bad(
                digest,
                format!(
                    "the content store's bytes hash to {}",
                    Digest::sha256_of(&bytes)
                ),
            ));
        }
        Ok(bytes)
    }

    /// A blob of `size` bytes from byte `offset` to its end, as a stream
    /// of pieces read one at a time, so a slow consumer holds no more
    /// than one. The caller verifies the bytes.
    pub fn blob_stream(
        &self,
        digest: &Digest,
        offset: u64,
        size: u64,
    ) -> BoxStream<'static, std::io::Result<Bytes>> {
        let state = (self.clone(), digest.clone(), offset);
        Box::pin(futures_util::stream::try_unfold(
            state,
            move |(store, digest, at)| async move {
                if at >= size {
                    return Ok(None);
                }
                let end = (at + READ_PIECE).min(size);
                let piece = store
                    .read_range(&digest, at, end)
                    .await
                    .map_err(std::io::Error::other)?;
                Ok(Some((Bytes::from(piece), (store, digest, end))))
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::api::*;
    use prost::Message;

    /// The field numbers against bytes encoded by hand from containerd's
    /// .proto files.
    #[test]
    fn messages_match_containerds_wire_format() {
        let r = ReadContentRequest {
            digest: "sha256:ab".into(),
            offset: 5,
            size: 300,
        };
        assert_eq!(
            r.encode_to_vec(),
            [&[0x0a, 9][..], b"sha256:ab", &[0x10, 5, 0x18, 0xac, 0x02]].concat()
        );
        // GetImageResponse{image{name "n", target{media_type "m", digest "d", size 7}}}
        let wire = [
            0x0a, 13, 0x0a, 1, b'n', 0x1a, 8, 0x0a, 1, b'm', 0x12, 1, b'd', 0x18, 7,
        ];
        let g = GetImageResponse::decode(&wire[..]).unwrap();
        let img = g.image.unwrap();
        assert_eq!(img.name, "n");
        let t = img.target.unwrap();
        assert_eq!(
            (t.media_type.as_str(), t.digest.as_str(), t.size),
            ("m", "d", 7)
        );
    }
}
