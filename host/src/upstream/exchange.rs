//! One exchange with one server: a connection (pooled, or dialed within
//! `timeout.connect`), the request written, the response head awaited within
//! `timeout.server`. It hides which client speaks: weir's own HTTP/1.1 client
//! ([`super::direct`]) for bodiless requests on plain TCP, hyper's for the rest. Retries
//! and the choice of the next server are the pipeline's (`proxy`).

use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use tokio::time::Sleep;

use super::backend::{BackendRt, ServerRt};
use super::body::{ClientBody, ServerBody};
use super::connect::{ConnectError, Dial};
use super::direct;
use super::pool::Sender;

/// A connection ready for one request.
pub struct Connection {
    sender: Sender,
    /// Taken from the pool, not dialed for this request.
    reused: bool,
}

impl Connection {
    /// Whether the request goes out as HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.sender.is_h2()
    }

    pub fn reused(&self) -> bool {
        self.reused
    }
}

impl ServerRt {
    /// An idle pooled connection that is still open and fresh at `now`, ready for a
    /// request that is `direct` (bodiless, no upgrade).
    pub fn pooled(&self, now: Instant, direct: bool) -> Option<Connection> {
        self.pool
            .take(now, direct, self.cfg.addr)
            .map(|sender| Connection {
                sender,
                reused: true,
            })
    }

    /// How to reach the server: its address and TLS, and `preface` (a PROXY header) to
    /// write first.
    fn dial<'a>(&'a self, preface: Option<&'a [u8]>) -> Dial<'a> {
        Dial {
            addr: self.cfg.addr,
            preface,
            tls: self.cfg.tls.as_ref(),
        }
    }

    /// A bare stream to the server (TCP, PROXY header, TLS) within `timeout`, for a tcp
    /// frontend's relay.
    pub async fn stream(
        &self,
        timeout: Duration,
        preface: Option<&[u8]>,
    ) -> Result<super::connect::Stream, ConnectError> {
        let dial = self.dial(preface);
        match tokio::time::timeout(timeout, super::connect::dial(&dial)).await {
            Ok(stream) => stream,
            Err(_) => Err(ConnectError::Timeout(self.cfg.addr)),
        }
    }

    /// A new connection within `timeout`, beginning with `preface` (a PROXY header) when
    /// given.
    pub async fn connect(
        &self,
        timeout: Duration,
        preface: Option<&[u8]>,
        direct: bool,
    ) -> Result<Connection, ConnectError> {
        let sender = self
            .pool
            .connect(self.dial(preface), timeout, direct)
            .await?;
        Ok(Connection {
            sender,
            reused: false,
        })
    }
}

/// How an exchange ended.
pub enum Outcome {
    /// With the server's side of an upgrade, for a 101 from hyper's client.
    Response(Response<ServerBody>, Option<OnUpgrade>),
    /// Nothing reached the server; the request comes back for another attempt.
    Unsent(Request<ClientBody>, Unsent),
    Timeout,
    Failed(String),
    /// Reading the client's body failed: the client's fault, not the server's.
    ClientBody,
}

/// Why a request was not sent.
#[derive(Debug)]
pub enum Unsent {
    /// Writing it failed on a new connection.
    Write(String),
    /// A pooled connection turned out closed and a new one could not be opened.
    Connect(ConnectError),
}

/// Sends one request on `conn` within `timeout.server` (from `sent_at`, when it goes out),
/// on the timer `timer`. A pooled connection that turns out closed before the request
/// was written gets one fresh connection to the same server. `client_failed`: set when
/// reading the client's body failed.
pub async fn send(
    backend: &BackendRt,
    server: &ServerRt,
    conn: Connection,
    mut request: Request<ClientBody>,
    timer: &mut Timer<'_>,
    client_failed: &AtomicBool,
) -> Outcome {
    let Connection {
        mut sender,
        mut reused,
    } = conn;
    loop {
        let direct = matches!(sender, Sender::Direct(_));
        match sender {
            Sender::Direct(connection) => {
                match within(connection.exchange(&request), timer).await {
                    None => return Outcome::Timeout,
                    Some(Ok(response)) => {
                        return Outcome::Response(response.map(ServerBody::Direct), None);
                    }
                    Some(Err(direct::Failure::Response(why))) => return Outcome::Failed(why),
                    Some(Err(direct::Failure::Write(e))) if !reused => {
                        return Outcome::Unsent(request, Unsent::Write(e.to_string()));
                    }
                    // A pooled connection the server had closed: once more on a fresh one.
                    Some(Err(direct::Failure::Write(_))) => {}
                }
            }
            Sender::Hyper(mut hyper) => {
                // In a block of its own, so that the answer and its parts are not held (as
                // room in every request's future) across the reconnection below.
                request = {
                    let answer = within(hyper.try_send_request(request), timer).await;
                    match answer {
                        None => return Outcome::Timeout,
                        Some(Ok(mut response)) => {
                            let upgrade = (response.status() == StatusCode::SWITCHING_PROTOCOLS)
                                .then(|| hyper::upgrade::on(&mut response));
                            let response = response.map(|b| ServerBody::Hyper(b, Some(hyper)));
                            return Outcome::Response(response, upgrade);
                        }
                        Some(Err(mut e)) => {
                            if client_failed.load(Ordering::Acquire) {
                                return Outcome::ClientBody;
                            }
                            let Some(unsent) = e.take_message() else {
                                return Outcome::Failed(e.into_error().to_string());
                            };
                            if !reused {
                                return Outcome::Unsent(
                                    unsent,
                                    Unsent::Write(e.into_error().to_string()),
                                );
                            }
                            unsent
                        }
                    }
                };
            }
        }
        // Only pooled connections get here, and servers with send_proxy have no pool:
        // no PROXY header is due.
        match server
            .connect(backend.cfg.timeout_connect, None, direct)
            .await
        {
            Ok(fresh) => {
                sender = fresh.sender;
                reused = false;
                timer.reset(Instant::now() + backend.cfg.timeout_server);
            }
            Err(ce) => return Outcome::Unsent(request, Unsent::Connect(ce)),
        }
    }
}

/// `fut`'s output, or `None` if `timer` fires first (an output that is in wins).
async fn within<T>(fut: impl Future<Output = T>, timer: &mut Timer<'_>) -> Option<T> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        timer.poll(cx).map(|()| None)
    })
    .await
}

/// A client connection's timer for the waits on servers (`timeout.server`), kept from
/// one request to the next: moving a registered timer's deadline later costs one atomic
/// operation, where a timer per request is registered in tokio's timer wheel and removed
/// again.
#[derive(Default)]
pub struct TimerSlot(Mutex<Option<Pin<Box<Sleep>>>>);

impl TimerSlot {
    /// A timer that goes off at `deadline`: the slot's own, or a new one while another
    /// request of the connection holds that (HTTP/2 requests run side by side).
    pub fn take(&self, deadline: Instant) -> Timer<'_> {
        let deadline = tokio::time::Instant::from_std(deadline);
        let taken = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        let sleep = match taken {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Timer {
            slot: self,
            sleep: Some(sleep),
        }
    }
}

/// A request's hold on a timer from [`TimerSlot::take`]; gives it back when dropped.
pub struct Timer<'a> {
    slot: &'a TimerSlot,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Timer<'_> {
    fn reset(&mut self, deadline: Instant) {
        if let Some(sleep) = &mut self.sleep {
            sleep
                .as_mut()
                .reset(tokio::time::Instant::from_std(deadline));
        }
    }

    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        let mut slot = self.slot.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = self.sleep.take();
        }
    }
}
