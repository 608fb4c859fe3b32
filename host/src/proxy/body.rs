//! The two bodies weir streams: the client's request body on its way to a server, and the
//! response body on its way to the client. Neither is ever buffered whole.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::backend::InFlight;
use super::direct;
use super::log::{AccessLog, LogRecord};
use super::pool::{Hyper, Pool, Sender};
use crate::server::io::{Activity, InRequest, ReceivingBody};

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
                    self.receiving = None;
                }
            }
            Poll::Ready(None) => self.receiving = None,
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

#[derive(Debug, thiserror::Error)]
#[error("server sent nothing for {0:?} in the middle of its response")]
pub struct ServerIdle(Duration);

/// A server's response body, and the connection it comes on.
pub enum ServerBody {
    /// Read by the request's task; the body owns its connection.
    Direct(direct::Body),
    /// Read by hyper's client; its sender, for the pool once the body has ended.
    Hyper(Incoming, Option<Hyper>),
}

impl ServerBody {
    /// The connection, for its pool: only once the body has been read to its end.
    fn take_idle(&mut self) -> Option<Sender> {
        match self {
            ServerBody::Direct(body) => body.take_idle().map(Sender::Direct),
            ServerBody::Hyper(_, sender) => sender.take().map(Sender::Hyper),
        }
    }

    /// Closes the connection (the body ended some other way).
    fn close(&mut self) {
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

enum Source {
    Local(Option<Bytes>),
    Server {
        body: ServerBody,
        idle: Duration,
        /// Armed the first time the body has to wait for the server: most bodies come
        /// with their head and never need it.
        timer: Option<Pin<Box<Sleep>>>,
        /// The pool the connection goes back to once the body has ended.
        pool: Option<Arc<Pool>>,
    },
}

/// A response on its way to the client: a local one (an error page) or a server's body
/// streamed through. When it ends, or the client goes away first, it releases the server
/// slot and, once a record is attached, writes the access log line with the byte count
/// and termination state.
pub struct ResponseBody {
    source: Source,
    logged: Option<Box<Logged>>,
    in_flight: Option<InFlight>,
}

/// The request's log record and where its line goes, and the request's mark on its
/// connection (released when the response ends).
struct Logged {
    record: LogRecord,
    log: AccessLog,
    request: InRequest,
}

impl ResponseBody {
    /// A local response; neither logged nor counted until [`Self::attach`].
    pub fn local(bytes: Bytes) -> Self {
        Self {
            source: Source::Local(Some(bytes)),
            logged: None,
            in_flight: None,
        }
    }

    /// A server's response body; its connection goes back to `pool` when the body has
    /// been read to the end, and is closed if it ends any other way.
    pub fn server(body: ServerBody, idle: Duration, in_flight: InFlight, pool: Arc<Pool>) -> Self {
        Self {
            source: Source::Server {
                body,
                idle,
                timer: None,
                pool: Some(pool),
            },
            logged: None,
            in_flight: Some(in_flight),
        }
    }

    /// The request's record, logged and counted when the body ends, and its mark on the
    /// connection. Both move here from the request's handler once the response is decided.
    pub fn attach(&mut self, record: LogRecord, log: AccessLog, request: InRequest) {
        self.logged = Some(Box::new(Logged {
            record,
            log,
            request,
        }));
    }

    /// Releases the server slot and logs, once. `termination` overrides the record's own
    /// (which a local error response has already set); with none, the body ended as it
    /// should and the server connection can serve another request.
    fn finish(&mut self, termination: Option<[u8; 2]>) {
        // One clock reading for the pool, the counters and the connection's wait for its
        // next request.
        let now = std::time::Instant::now();
        if let Source::Server { body, pool, .. } = &mut self.source
            && let Some(pool) = pool.take()
        {
            match termination {
                None => {
                    if let Some(sender) = body.take_idle() {
                        pool.recycle(sender, now);
                    }
                }
                Some(_) => body.close(),
            }
        }
        self.in_flight = None;
        if let Some(logged) = self.logged.take() {
            let Logged {
                mut record,
                log,
                request,
            } = *logged;
            if let Some(t) = termination {
                record.termination = t;
            }
            record.tally.count_at(&record, now);
            log.emit(&record);
            request.end_at(now.into());
        }
    }

    fn count(&mut self, frame: &Frame<Bytes>) {
        if let (Some(logged), Some(data)) = (self.logged.as_mut(), frame.data_ref()) {
            logged.record.bytes += data.len() as u64;
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.source {
            Source::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Source::Server {
                body, idle, timer, ..
            } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(timer) = timer {
                        timer.as_mut().reset(Instant::now() + *idle);
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    this.finish(Some(*b"SD"));
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => {
                    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(*idle)));
                    if timer.as_mut().poll(cx).is_ready() {
                        let idle = *idle;
                        this.finish(Some(*b"sD"));
                        return Poll::Ready(Some(Err(Box::new(ServerIdle(idle)))));
                    }
                    Poll::Pending
                }
            },
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => this.count(frame),
            Poll::Ready(None) => this.finish(None),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            // An empty body is over before it starts (hyper may never poll it).
            Source::Local(bytes) => bytes.as_ref().is_none_or(|b| b.is_empty()),
            Source::Server { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Source::Server { body, .. } => body.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if self.logged.is_some() || self.in_flight.is_some() {
            // Dropped before its end: the client went away (or the connection was cut).
            let ended = self.is_end_stream();
            self.finish(if ended { None } else { Some(*b"CD") });
        }
    }
}
