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
pub fn acceptor(certs: &[Arc<CertifiedKey>]) -> TlsAcceptor {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.3 and 1.2")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni {
            certs: certs.to_vec(),
        }));
    config.ignore_client_order = true;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    TlsAcceptor::from(Arc::new(config))
}
