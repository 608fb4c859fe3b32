//! The response body on its way to the client: a local one or a server's streamed
//! through (the request body on its way to a server is [`crate::upstream::ClientBody`]).
//! Never buffered whole.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::log::{AccessLog, LogRecord};
use crate::activity::InRequest;
use crate::upstream::{BoxError, InFlight, ServerBody};

#[derive(Debug, thiserror::Error)]
#[error("server sent nothing for {0:?} in the middle of its response")]
pub struct ServerIdle(Duration);

enum Source {
    Local(Option<Bytes>),
    Server {
        body: ServerBody,
        idle: Duration,
        /// Armed the first time the body has to wait for the server: most bodies come
        /// with their head and never need it.
        timer: Option<Pin<Box<Sleep>>>,
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

/// A request's log record, where its line goes, and the request's mark on its connection
/// (released when the response ends). Made boxed when the request begins, so that the
/// record (a few hundred bytes) is not copied from stage to stage on its way to the
/// response body, which logs it at its end.
pub struct Logged {
    pub record: LogRecord,
    log: AccessLog,
    request: InRequest,
}

impl Logged {
    /// `make` builds the record in its box.
    pub fn boxed(
        make: impl FnOnce() -> LogRecord,
        log: AccessLog,
        request: InRequest,
    ) -> Box<Self> {
        crate::util::in_box(|| Logged {
            record: make(),
            log,
            request,
        })
    }
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

    /// A server's response body, on the server slot `in_flight`; its connection goes
    /// back to the server's pool when the body has been read to the end, and is closed if
    /// it ends any other way.
    pub fn server(body: ServerBody, idle: Duration, in_flight: InFlight) -> Self {
        Self {
            source: Source::Server {
                body,
                idle,
                timer: None,
            },
            logged: None,
            in_flight: Some(in_flight),
        }
    }

    /// The request's record, logged and counted when the body ends, and its mark on the
    /// connection. They move here from the request's handler once the response is decided.
    pub fn attach(&mut self, logged: Box<Logged>) {
        self.logged = Some(logged);
    }

    /// Releases the server slot and logs, once. `termination` overrides the record's own
    /// (which a local error response has already set); with none, the body ended as it
    /// should and the server connection can serve another request.
    fn finish(&mut self, termination: Option<[u8; 2]>) {
        // One clock reading for the pool, the counters and the connection's wait for its
        // next request.
        let now = std::time::Instant::now();
        if let Some(slot) = self.in_flight.take()
            && let Source::Server { body, .. } = &mut self.source
        {
            match termination {
                None => slot.recycle(body, now),
                Some(_) => body.close(),
            }
        }
        if let Some(mut logged) = self.logged.take() {
            let Logged {
                record,
                log,
                request,
            } = &mut *logged;
            if let Some(t) = termination {
                record.termination = t;
            }
            record.tally.count_at(record, now);
            log.emit(record);
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
            let who = match &self.logged {
                Some(logged) if logged.request.activity().timed_out() => b'c',
                _ => b'C',
            };
            self.finish(if ended { None } else { Some([who, b'D']) });
        }
    }
}
