//! Socket helpers both sides of weir share: asking the kernel to acknowledge at once what
//! came ([`AckNow`]), and the writing half of IO wrappers that only watch what is read
//! ([`write_through`]).

/// The writing half of an IO wrapper that only watches what is read: `poll_write`,
/// `poll_write_vectored`, `is_write_vectored` and `poll_flush` go to `self.inner` as they
/// are; `poll_shutdown` is the wrapper's own.
macro_rules! write_through {
    () => {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, data)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
    };
}
pub(crate) use write_through;

/// A stream whose socket can be told to acknowledge at once what came. A peer that
/// writes a message's head and its body apart with Nagle's algorithm on sends the body
/// only once the head is acknowledged, and on a kept-alive connection the kernel delays
/// that ACK by up to 40 ms. Clients do it with a request (many HTTP libraries' default;
/// the framing guard asks when a head came without all of its body); servers with a
/// response (Python's http.server, and what is built on it; weir's HTTP/1.1 client asks
/// when a response is not whole after a read, hyper's when a read ended with a head).
pub trait AckNow {
    fn ack_now(&self);
}

impl AckNow for tokio::net::TcpStream {
    fn ack_now(&self) {
        let _ = socket2::SockRef::from(self).set_tcp_quickack(true);
    }
}

impl<S: AckNow> AckNow for Box<S> {
    fn ack_now(&self) {
        (**self).ack_now();
    }
}

impl<S: AckNow> AckNow for tokio_rustls::server::TlsStream<S> {
    fn ack_now(&self) {
        self.get_ref().0.ack_now();
    }
}

impl<S: AckNow> AckNow for tokio_rustls::client::TlsStream<S> {
    fn ack_now(&self) {
        self.get_ref().0.ack_now();
    }
}

impl AckNow for () {
    fn ack_now(&self) {}
}
