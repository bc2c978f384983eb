//! Response bodies: bytes in memory, or a file streamed in slices so that a large manifest
//! costs one slice of memory per connection, not its size. The access-log line of a
//! request is written when its body is dropped, i.e. after the reply has gone out (or the
//! client went away), with the time that took.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

use super::access_log::AccessLog;

/// Largest slice of a file sent in one frame.
const SLICE: usize = 256 * 1024;

/// What a response carries.
pub(crate) enum Content {
    Bytes(Option<Bytes>),
    File {
        file: tokio::fs::File,
        remaining: u64,
        buf: Vec<u8>,
    },
}

impl Content {
    pub(crate) fn empty() -> Content {
        Content::Bytes(None)
    }

    pub(crate) fn bytes(b: impl Into<Bytes>) -> Content {
        let b = b.into();
        Content::Bytes((!b.is_empty()).then_some(b))
    }

    pub(crate) fn file(file: tokio::fs::File, len: u64) -> Content {
        Content::File {
            file,
            remaining: len,
            buf: Vec::new(),
        }
    }
}

/// One access-log line, written on drop.
pub(crate) struct LogLine {
    pub log: Arc<AccessLog>,
    pub peer: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub bytes: u64,
    pub start: Instant,
}

impl Drop for LogLine {
    fn drop(&mut self) {
        self.log.record(
            &self.peer,
            &self.method,
            &self.path,
            self.status,
            self.bytes,
            self.start.elapsed(),
        );
    }
}

/// A response body with its access-log line.
pub struct Body {
    content: Content,
    _line: Option<LogLine>,
}

impl Body {
    pub(crate) fn new(content: Content, line: Option<LogLine>) -> Body {
        Body {
            content,
            _line: line,
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().content {
            Content::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Content::File {
                file,
                remaining,
                buf,
            } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let want = (*remaining).min(SLICE as u64) as usize;
                if buf.len() < want {
                    buf.resize(want, 0);
                }
                let mut rb = ReadBuf::new(&mut buf[..want]);
                ready!(Pin::new(file).poll_read(cx, &mut rb))?;
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file became shorter while it was sent",
                    ))));
                }
                *remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(&buf[..n])))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.content {
            Content::Bytes(b) => b.is_none(),
            Content::File { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.content {
            Content::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Content::File { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}
