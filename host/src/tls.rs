//! TLS termination with rustls (the ring provider): certificates loaded and checked with
//! the config, the one to present chosen by SNI (the first is the default), TLS 1.3 and 1.2
//! only, the server's cipher order, ALPN h2 and http/1.1.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// ALPN protocol ids, in the server's order of preference.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Which of a certificate's two files a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum File {
    Cert,
    Key,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain (leaf first) and its PEM private key, and checks that the
/// key belongs to the certificate. The error says which file and why.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, (File, String)> {
    let text = std::fs::read(cert)
        .map_err(|e| (File::Cert, format!("cannot read {}: {e}", cert.display())))?;
    let chain = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| (File::Cert, format!("{} is not PEM: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err((
            File::Cert,
            format!("{} holds no CERTIFICATE block", cert.display()),
        ));
    }
    let text = std::fs::read(key)
        .map_err(|e| (File::Key, format!("cannot read {}: {e}", key.display())))?;
    let private = PrivateKeyDer::from_pem_slice(&text).map_err(|e| {
        (
            File::Key,
            format!("{} holds no usable private key: {e}", key.display()),
        )
    })?;
    let certified = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => (
            File::Key,
            format!(
                "{} does not belong to the certificate in {}",
                key.display(),
                cert.display()
            ),
        ),
        e => (File::Key, format!("{}: {e}", key.display())),
    })?;
    Ok(Arc::new(certified))
}

/// Presents the first certificate valid for the name the client asked for (SNI), else
/// the first one.
#[derive(Debug)]
struct BySni {
    certs: Vec<Arc<CertifiedKey>>,
}

impl BySni {
    fn find(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = ServerName::try_from(name).ok()?;
        self.certs.iter().find(|certified| {
            certified.end_entity_cert().is_ok_and(|der| {
                webpki::EndEntityCert::try_from(der)
                    .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
            })
        })
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|name| self.find(name))
            .or_else(|| self.certs.first())
            .cloned()
    }
}

/// The acceptor of a TLS frontend.
pub fn acceptor(certs: &[Arc<CertifiedKey>], alpn: bool) -> TlsAcceptor {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.3 and 1.2")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni {
            certs: certs.to_vec(),
        }));
    config.ignore_client_order = true;
    if alpn {
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    }
    TlsAcceptor::from(Arc::new(config))
}

/// How weir speaks TLS to a server: the client config and the name it expects the
/// server's certificate to carry (also sent as SNI when it is a DNS name).
#[derive(Clone)]
pub struct ServerTls {
    pub connector: tokio_rustls::TlsConnector,
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The TLS client for a server: certificates verified against `ca` (a PEM file) or the
/// system's trusted roots, or not at all without `verify`; ALPN `h2` or `http/1.1`.
pub fn client(
    ca: Option<&Path>,
    verify: bool,
    h2: bool,
    name: ServerName<'static>,
) -> Result<ServerTls, String> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.3 and 1.2");
    let mut config = if verify {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(path) => {
                let text = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                for cert in CertificateDer::pem_slice_iter(&text) {
                    let cert = cert.map_err(|e| format!("{} is not PEM: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        if roots.is_empty() {
            return Err("no trusted certificate authority: name a PEM file in `ca`".into());
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![if h2 { ALPN_H2 } else { ALPN_HTTP11 }.to_vec()];
    Ok(ServerTls {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        name,
    })
}

/// `verify = false`: any certificate is taken, but the handshake's signatures are still
/// checked.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
