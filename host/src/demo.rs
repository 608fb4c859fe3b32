//! `weir demo`: three small servers and the quickstart config, for a first look.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The config `weir demo` runs: examples/quickstart.toml, built into the binary.
pub const QUICKSTART: &str = include_str!("../../examples/quickstart.toml");

/// The demo servers' addresses, as examples/quickstart.toml names them.
pub const SERVERS: [(&str, &str); 3] = [
    ("web1", "127.0.0.1:9001"),
    ("web2", "127.0.0.1:9002"),
    ("web3", "127.0.0.1:9003"),
];

/// Answers every request with `{"instance": <name>, "path": <path>}`, and `/health` with
/// `{"status": "healthy"}`. Runs until the task is dropped.
pub async fn serve_demo(listener: TcpListener, name: &'static str) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| async move {
                let body = if req.uri().path() == "/health" {
                    serde_json::json!({ "status": "healthy" })
                } else {
                    serde_json::json!({ "instance": name, "path": req.uri().path() })
                };
                let mut response = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
                *response.status_mut() = StatusCode::OK;
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                Ok::<_, Infallible>(response)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds the three demo servers.
pub async fn start_servers() -> std::io::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::new();
    for (name, addr) in SERVERS {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("demo server {name} on {addr}: {e}"))
        })?;
        addrs.push(listener.local_addr()?);
        tokio::spawn(serve_demo(listener, name));
    }
    Ok(addrs)
}
