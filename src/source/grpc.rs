//! A minimal gRPC client over a unix socket: HTTP/2 (hyper) and protobuf
//! messages (prost), unary and server-streaming calls. Enough for the few
//! containerd calls the containerd source makes, without generated code or
//! `protoc` at build time.
//!
//! Framing as the gRPC HTTP/2 protocol defines it: each message is one
//! byte "compressed" (always 0 here; a compressed answer is refused), a
//! big-endian u32 length, then the message. The call's status comes in
//! the trailers (`grpc-status`, `grpc-message`), or in the headers of a
//! trailers-only answer.

use std::path::{Path, PathBuf};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The largest message accepted from the server.
const MAX_MESSAGE: usize = 16 << 20;

/// Errors of a gRPC call.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// The socket could not be reached.
    #[error("connecting to {socket}: {source}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The OS or HTTP/2 error.
        source: std::io::Error,
    },
    /// The server answered with a non-OK status.
    #[error("{method} on {socket}: {message} (gRPC status {code})")]
    Status {
        /// The socket.
        socket: PathBuf,
        /// The method called.
        method: String,
        /// The gRPC status code (5 = not found).
        code: u32,
        /// The server's message.
        message: String,
    },
    /// The answer is not gRPC as this client speaks it.
    #[error("{method} on {socket}: {detail}")]
    Protocol {
        /// The socket.
        socket: PathBuf,
        /// The method called.
        method: String,
        /// What was wrong.
        detail: String,
    },
}

/// gRPC status "not found".
pub const NOT_FOUND: u32 = 5;

/// A connection to one gRPC server on a unix socket.
#[derive(Clone)]
pub struct Channel {
    socket: PathBuf,
    send: SendRequest<Full<Bytes>>,
}

/// The messages of a server-streaming call as they arrive.
pub struct MessageStream {
    body: hyper::body::Incoming,
    buf: BytesMut,
    socket: PathBuf,
    method: String,
    done: bool,
}

impl Channel {
    /// Connect to the server on `socket` (HTTP/2 with prior knowledge).
    pub async fn connect(socket: &Path) -> Result<Channel, GrpcError> {
        let err = |source| GrpcError::Connect {
            socket: socket.to_path_buf(),
            source,
        };
        let stream = tokio::net::UnixStream::connect(socket).await.map_err(err)?;
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .max_frame_size(1 << 20)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| err(std::io::Error::other(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("gRPC connection ended: {e}");
            }
        });
        Ok(Channel {
            socket: socket.to_path_buf(),
            send,
        })
    }

    /// The socket this channel talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn protocol(&self, method: &str, detail: impl Into<String>) -> GrpcError {
        GrpcError::Protocol {
            socket: self.socket.clone(),
            method: method.to_string(),
            detail: detail.into(),
        }
    }

    /// Call `method` (`/package.Service/Method`) with `request` and the
    /// extra `headers`; the answer's messages stream in.
    pub async fn call<M: prost::Message>(
        &self,
        method: &str,
        headers: &[(&'static str, &str)],
        request: &M,
    ) -> Result<MessageStream, GrpcError> {
        let body = request.encode_to_vec();
        let mut framed = Vec::with_capacity(body.len() + 5);
        framed.push(0);
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        let mut req = hyper::Request::post(format!("http://localhost{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(framed)))
            .map_err(|e| self.protocol(method, e.to_string()))?;
        let mut send = self.send.clone();
        send.ready().await.map_err(|e| GrpcError::Connect {
            socket: self.socket.clone(),
            source: std::io::Error::other(e),
        })?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| self.protocol(method, format!("the call failed: {e}")))?;
        if resp.status() != hyper::StatusCode::OK {
            return Err(self.protocol(method, format!("HTTP status {}", resp.status())));
        }
        // A trailers-only answer carries its status in the headers.
        status(&self.socket, method, resp.headers())?;
        Ok(MessageStream {
            body: resp.into_body(),
            buf: BytesMut::new(),
            socket: self.socket.clone(),
            method: method.to_string(),
            done: false,
        })
    }

    /// A unary call: exactly one answer.
    pub async fn unary<M: prost::Message, R: prost::Message + Default>(
        &self,
        method: &str,
        headers: &[(&'static str, &str)],
        request: &M,
    ) -> Result<R, GrpcError> {
        let mut s = self.call(method, headers, request).await?;
        let first = s.next::<R>().await?;
        first.ok_or_else(|| self.protocol(method, "no answer message"))
    }
}

/// `Err` for a non-OK `grpc-status` in `headers`; `Ok(true)` for OK,
/// `Ok(false)` when there is none.
fn status(socket: &Path, method: &str, headers: &hyper::HeaderMap) -> Result<bool, GrpcError> {
    let Some(code) = headers.get("grpc-status") else {
        return Ok(false);
    };
    let code: u32 = code.to_str().ok().and_then(|c| c.parse().ok()).unwrap_or(2);
    if code == 0 {
        return Ok(true);
    }
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Err(GrpcError::Status {
        socket: socket.to_path_buf(),
        method: method.to_string(),
        code,
        message,
    })
}

/// `grpc-message` is percent-encoded.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl MessageStream {
    fn protocol(&self, detail: impl Into<String>) -> GrpcError {
        GrpcError::Protocol {
            socket: self.socket.clone(),
            method: self.method.clone(),
            detail: detail.into(),
        }
    }

    /// The next message, `None` at the end of a successful call.
    pub async fn next<R: prost::Message + Default>(&mut self) -> Result<Option<R>, GrpcError> {
        loop {
            if self.buf.len() >= 5 {
                if self.buf[0] != 0 {
                    return Err(self.protocol("a compressed message, which was not asked for"));
                }
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if len > MAX_MESSAGE {
                    return Err(self.protocol(format!(
                        "a {len}-byte message, over the {MAX_MESSAGE}-byte limit"
                    )));
                }
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    let msg = self.buf.split_to(len);
                    return R::decode(msg.freeze())
                        .map(Some)
                        .map_err(|e| self.protocol(format!("an undecodable message: {e}")));
                }
            }
            if self.done {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(self.protocol("the answer ends inside a message"))
                };
            }
            match self.body.frame().await {
                None => {
                    return Err(self.protocol("the answer ended without a status"));
                }
                Some(Err(e)) => return Err(self.protocol(format!("reading the answer: {e}"))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buf.extend_from_slice(&data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            if !status(&self.socket, &self.method, &trailers)? {
                                return Err(self.protocol("trailers without grpc-status"));
                            }
                            self.done = true;
                        }
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(
            percent_decode("image %22x%22: not found"),
            "image \"x\": not found"
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn statuses_in_headers() {
        let mut h = hyper::HeaderMap::new();
        assert!(!status(Path::new("s"), "/m", &h).unwrap());
        h.insert("grpc-status", "0".parse().unwrap());
        assert!(status(Path::new("s"), "/m", &h).unwrap());
        h.insert("grpc-status", "5".parse().unwrap());
        h.insert("grpc-message", "nope".parse().unwrap());
        let e = status(Path::new("s"), "/m", &h).unwrap_err();
        assert!(matches!(e, GrpcError::Status { code: 5, .. }), "{e}");
        assert_eq!(e.to_string(), "/m on s: nope (gRPC status 5)");
    }
}
