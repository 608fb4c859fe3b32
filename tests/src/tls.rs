//! TLS test helpers: a certificate authority made at test time (never a committed key),
//! certificates it signs written to a temporary folder, and clients that trust it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::{Body, Reply, empty, read_reply};

/// A certificate authority for one test, and a folder for the files it issues.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub dir: PathBuf,
}

impl TestCa {
    pub fn new(tag: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("weir test CA {tag}"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = crate::scratch_dir(&format!("tls-{tag}"));
        TestCa { issuer, dir }
    }

    /// Issues a certificate for `names`, written as `<file>.pem` and `<file>.key`.
    pub fn issue(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    /// A TLS client that trusts this CA and offers `alpn`.
    pub fn connector(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// Connects to `addr` asking for the name `sni`, offering `alpn`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        sni: &str,
        alpn: &[&[u8]],
    ) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        self.connector(alpn)
            .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
            .await
            .unwrap_or_else(|e| panic!("TLS handshake with {sni}: {e}"))
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The protocol ALPN settled on, and the certificate the server presented.
pub fn negotiated(stream: &TlsStream<TcpStream>) -> (Option<Vec<u8>>, CertificateDer<'static>) {
    let (_, conn) = stream.get_ref();
    (
        conn.alpn_protocol().map(|p| p.to_vec()),
        conn.peer_certificates().unwrap()[0].clone().into_owned(),
    )
}

/// `GET path` with this Host over an HTTP/1.1 connection on `stream`.
pub async fn get_h1(stream: TlsStream<TcpStream>, host: &str, path: &str) -> Reply {
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", host)
        .body(empty())
        .unwrap();
    read_reply(sender.send_request(req).await.unwrap())
        .await
        .unwrap()
}

/// `GET https://host/path` over an HTTP/2 connection on `stream`.
pub async fn get_h2(stream: TlsStream<TcpStream>, host: &str, path: &str) -> Reply {
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Body>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://{host}{path}"))
        .body(empty())
        .unwrap();
    read_reply(sender.send_request(req).await.unwrap())
        .await
        .unwrap()
}

impl TestCa {
    /// The CA certificate as a PEM file, for `ca = "..."`.
    pub fn ca_file(&self) -> PathBuf {
        let path = self.dir.join("ca.pem");
        std::fs::write(&path, self.issuer.pem()).unwrap();
        path
    }
}

/// How an [`echo_server`] listens.
pub enum Listen {
    /// HTTP/1.1 in the clear.
    Http1,
    /// HTTP/2 in the clear (prior knowledge).
    H2c,
    /// TLS with this certificate, HTTP/2 or HTTP/1.1 by ALPN.
    Tls(PathBuf, PathBuf),
}

/// A server that answers every request with JSON of what it received (`version`, `path`,
/// `authority`, `headers`, `body`, `trailers`), and ends its response with the trailers
/// `grpc-status: 0` and `x-echo: <the request's x-trailer trailer>`, as gRPC servers do.
pub async fn echo_server(listen: Listen) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = match &listen {
        Listen::Tls(cert, key) => Some(weir::tls::acceptor(
            &[weir::tls::load(cert, key).unwrap()],
            true,
        )),
        _ => None,
    };
    let h2c = matches!(listen, Listen::H2c);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        serve_echo(TokioIo::new(tls), h2).await;
                    }
                    None => serve_echo(TokioIo::new(stream), h2c).await,
                }
            });
        }
    });
    addr
}

async fn serve_echo<I>(io: TokioIo<I>, h2: bool)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(echo);
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await;
    }
}

async fn echo(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Body>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    let collected = body.collect().await.ok();
    let trailers = collected.as_ref().and_then(|c| c.trailers().cloned());
    let bytes = collected.map(|c| c.to_bytes()).unwrap_or_default();
    let map = |h: &http::HeaderMap| -> serde_json::Map<String, serde_json::Value> {
        h.iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().into()))
            .collect()
    };
    let json = serde_json::json!({
        "version": format!("{:?}", parts.version),
        "path": parts.uri.path(),
        "authority": parts.uri.authority().map(|a| a.to_string()),
        "headers": map(&parts.headers),
        "body": String::from_utf8_lossy(&bytes),
        "trailers": trailers.as_ref().map(map),
    });
    let mut out = http::HeaderMap::new();
    out.insert("grpc-status", http::HeaderValue::from_static("0"));
    if let Some(v) = trailers.as_ref().and_then(|t| t.get("x-trailer")) {
        out.insert("x-echo", v.clone());
    }
    let frames = vec![
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(
            json.to_string(),
        ))),
        Ok(hyper::body::Frame::trailers(out)),
    ];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed();
    Ok(http::Response::builder()
        .header("content-type", "application/json")
        .body(body)
        .unwrap())
}
