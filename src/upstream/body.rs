//! The request body sent upstream: the client's streamed body, cut off at `max_body_bytes`, or
//! nothing (a bodiless request, which can be rebuilt for a retry).

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Body of a request sent upstream (see the module doc).
pub type UpBody = Either<ClientBody, Empty<Bytes>>;

/// A client's request body on its way to a backend, cut off with an error once it grows past
/// `max_body_bytes`. Its errors say whose fault they were (the proxy answers `413` or `400`
/// rather than blaming the backend).
pub struct ClientBody {
    inner: Incoming,
    /// Bytes still allowed; `None` without a limit.
    left: Option<u64>,
}

impl ClientBody {
    pub fn new(inner: Incoming, limit: Option<u64>) -> Self {
        ClientBody { inner, left: limit }
    }
}

/// Why a [`ClientBody`] failed.
#[derive(Debug)]
pub enum ClientBodyError {
    /// Reading from the client failed (it went away, or its framing broke).
    Read(hyper::Error),
    /// The body grew past the limit.
    TooLarge,
}

impl fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientBodyError::Read(e) => write!(f, "reading the client's request body failed: {e}"),
            ClientBodyError::TooLarge => f.write_str("the client's request body is over max_body_bytes"),
        }
    }
}

impl StdError for ClientBodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            ClientBodyError::Read(e) => Some(e),
            ClientBodyError::TooLarge => None,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(left), Some(data)) = (this.left.as_mut(), frame.data_ref()) {
                    let n = data.len() as u64;
                    if n > *left {
                        return Poll::Ready(Some(Err(ClientBodyError::TooLarge)));
                    }
                    *left -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(ClientBodyError::Read(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
