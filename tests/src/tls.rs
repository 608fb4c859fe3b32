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
        let dir = std::env::temp_dir().join(format!("weir-tls-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
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
