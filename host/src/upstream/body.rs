//! The two bodies that cross the connection to a server: the client's request body on
//! its way there, and the server's response body on its way back. Neither is ever
//! buffered whole.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::direct;
use super::pool::{Hyper, Sender};
use crate::activity::{Activity, ReceivingBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a request has received from the client so far, shared by its body, the pipeline
/// and its log record (one allocation for all three).
#[derive(Debug, Default)]
pub struct Received {
    /// The head (as sent on HTTP/1.1) and the body read so far: the log's `bytes_in`.
    pub bytes: AtomicU64,
    /// Reading the body failed: a broken chunk from the client is a 400, not a server
    /// failure.
    pub failed: AtomicBool,
    /// The body has been read to its end (or there was none), once the request is on
    /// its way to a server.
    pub complete: AtomicBool,
}

/// The client's request body, forwarded as it arrives.
pub struct ClientBody {
    /// None for a bodiless request sent again.
    inner: Option<Incoming>,
    /// Counts the bytes read and notes a failure; None for a body sent again.
    received: Option<Arc<Received>>,
    /// Held until the body ends: while it is coming, the client timeout applies.
    receiving: Option<ReceivingBody>,
}

impl ClientBody {
    pub fn new(inner: Incoming, received: Arc<Received>, activity: &Arc<Activity>) -> Self {
        let receiving = (!inner.is_end_stream()).then(|| activity.receiving_body());
        if receiving.is_none() {
            received.complete.store(true, Ordering::Release);
        }
        Self {
            inner: Some(inner),
            received: Some(received),
            receiving,
        }
    }

    /// The body of a bodiless request sent again.
    pub fn empty() -> Self {
        Self {
            inner: None,
            received: None,
            receiving: None,
        }
    }

    /// The body came to its end.
    fn ended(&mut self) {
        self.receiving = None;
        if let Some(received) = &self.received {
            received.complete.store(true, Ordering::Release);
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Err(_))) => {
                if let Some(received) = &self.received {
                    received.failed.store(true, Ordering::Release);
                }
                self.receiving = None;
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(received)) = (frame.data_ref(), &self.received) {
                    received
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if self.inner.as_ref().is_some_and(|b| b.is_end_stream()) {
                    self.ended();
                }
            }
            Poll::Ready(None) => self.ended(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// A server's response body, and the connection it comes on.
pub enum ServerBody {
    /// Read by the request's task; the body owns its connection.
    Direct(direct::Body),
    /// Read by hyper's client; its sender, for the pool once the body has ended.
    Hyper(Incoming, Option<Hyper>),
}

impl ServerBody {
    /// The connection, for its pool: only once the body has been read to its end.
    pub(crate) fn take_idle(&mut self) -> Option<Sender> {
        match self {
            ServerBody::Direct(body) => body.take_idle().map(Sender::Direct),
            ServerBody::Hyper(_, sender) => sender.take().map(Sender::Hyper),
        }
    }

    /// Closes the connection (the body ended some other way).
    pub fn close(&mut self) {
        match self {
            ServerBody::Direct(body) => body.abandon(),
            ServerBody::Hyper(_, sender) => *sender = None,
        }
    }
}

impl Body for ServerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ServerBody::Direct(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ServerBody::Hyper(body, _) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ServerBody::Direct(body) => body.is_end_stream(),
            ServerBody::Hyper(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ServerBody::Direct(body) => body.size_hint(),
            ServerBody::Hyper(body, _) => body.size_hint(),
        }
    }
}
