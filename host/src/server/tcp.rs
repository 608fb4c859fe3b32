//! A tcp frontend's connections, once any PROXY header is read: TLS terminated (`tls`),
//! or the ClientHello read without decrypting it (`tls_passthrough`, for its server name),
//! or nothing at all; then relayed by [`proxy::tcp::relay`].

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::conn::FrontendServer;
use super::current;
use crate::activity::Tracked;
use crate::proxy::tcp::{Client, Opening};
use crate::proxy::{self, ConnInfo};

/// The most of a ClientHello weir reads to find its server name (a hello with post-quantum
/// key shares is about 2 KiB; TLS allows a handshake message of up to 16 MiB, which no
/// client sends).
const HELLO_LIMIT: usize = 64 * 1024;

/// A tcp frontend's connection from its accept to its end: the PROXY header when the
/// frontend takes one, then what [`opened`] reads, then the relay.
pub(super) async fn accepted(
    mut stream: TcpStream,
    server: Arc<FrontendServer>,
    mut conn: ConnInfo,
    _guard: super::ConnGuard,
) {
    let Some(early) = super::conn::proxied(&mut stream, &server.cfg, &mut conn).await else {
        return;
    };
    // Counted until the connection ends: for plugins' connection limits.
    let (client_connections, _counted) = crate::stats::per_client().enter(conn.peer.ip());
    let Some(fe) = current(&server.live).frontend(&server.cfg.name).cloned() else {
        return;
    };
    // The relay is awaited in this one place, and what comes before it that is not a plain
    // relay's (a TLS handshake, a ClientHello) in a box: a connection's task is then only
    // as large as a plain relay needs, which keeps spawning it cheap.
    let (client, mut opening) = if server.tls.is_none() && !server.cfg.tls_passthrough {
        (
            Client::Plain(stream, Bytes::from(early)),
            Opening::default(),
        )
    } else {
        match Box::pin(opened(stream, &server, &fe, &conn, early)).await {
            Some(opened) => opened,
            None => return,
        }
    };
    opening.client_connections = client_connections;
    proxy::tcp::relay(fe, conn, client, opening).await;
}

/// The client's side of a connection with `tls` or `tls_passthrough`, ready to relay: TLS
/// terminated, or its ClientHello read (its server name and ALPN in the [`Opening`]).
/// None when it cannot be relayed (said in the log).
async fn opened(
    mut stream: TcpStream,
    server: &FrontendServer,
    fe: &proxy::FrontendRt,
    conn: &ConnInfo,
    early: Vec<u8>,
) -> Option<(Client, Opening)> {
    let cfg = &server.cfg;
    // The TLS handshake, or the ClientHello, must come within timeout.client.
    let limit = cfg.timeout_client;
    if let Some(acceptor) = &server.tls {
        let tracked = Tracked::new(stream, Bytes::from(early), Arc::clone(&conn.activity));
        let handshake =
            super::conn::handshake(acceptor, tracked, (limit, "timeout.client"), conn.peer);
        let tls = handshake.await?;
        let opening = Opening {
            sni: tls.get_ref().1.server_name().map(str::to_owned),
            ..Opening::default()
        };
        return Some((Client::Tls(Box::new(tls)), opening));
    }
    match tokio::time::timeout(limit, client_hello(&mut stream, early)).await {
        Ok(Ok((opening, read))) => Some((Client::Plain(stream, Bytes::from(read)), opening)),
        Ok(Err(why)) => {
            proxy::tcp::refused(fe, conn, &why);
            None
        }
        Err(_) => {
            let why = format!("no TLS ClientHello within timeout.client ({limit:?})");
            proxy::tcp::refused(fe, conn, &why);
            None
        }
    }
}

/// Reads a TLS ClientHello, however it is split into records and packets, without
/// answering it: its server name and ALPN, and every byte read (to be relayed untouched).
async fn client_hello(
    stream: &mut TcpStream,
    mut read: Vec<u8>,
) -> Result<(Opening, Vec<u8>), String> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    let mut chunk = [0u8; 4096];
    loop {
        while fed < read.len() {
            let mut rest = &read[fed..];
            match acceptor.read_tls(&mut rest) {
                Ok(0) => break,
                Ok(n) => fed += n,
                Err(e) => return Err(format!("not a TLS ClientHello: {e}")),
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let opening = Opening {
                    sni: hello.server_name().map(str::to_owned),
                    alpn: hello
                        .alpn()
                        .map(|offered| {
                            offered
                                .map(|p| String::from_utf8_lossy(p).into_owned())
                                .collect()
                        })
                        .unwrap_or_default(),
                    client_connections: 0,
                };
                return Ok((opening, read));
            }
            Ok(None) => {}
            Err((e, _)) => return Err(format!("not a TLS ClientHello: {e}")),
        }
        if read.len() >= HELLO_LIMIT {
            return Err(format!(
                "no whole ClientHello in its first {HELLO_LIMIT} bytes"
            ));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the ClientHello: {e}"))?;
        if n == 0 {
            return Err("closed before its ClientHello ended".into());
        }
        read.extend_from_slice(&chunk[..n]);
    }
}
