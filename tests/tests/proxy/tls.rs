//! TLS termination: ALPN h2 and http/1.1, certificates chosen by SNI, errors named at load,
//! certificates read again on reload, and the redirect of plain http to https.

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use weir_tests::tls::{TestCa, get_h1, get_h2, negotiated};
use weir_tests::{Client, MockServer, TestProxy, config};

const H2: &[u8] = b"h2";
const H1: &[u8] = b"http/1.1";

/// The test config with `tls` on the frontend.
fn with_tls(server: &MockServer, tls: &str) -> String {
    config("roundrobin", &[("s1", server.addr, "")], "").replace(
        "default_backend = \"app\"\n",
        &format!("default_backend = \"app\"\ntls = {tls}\n"),
    )
}

fn pair(files: &(PathBuf, PathBuf)) -> String {
    format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        files.0.display(),
        files.1.display()
    )
}

fn cert_der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_chooses_http2_or_http11_and_the_server_hears_https() {
    let ca = TestCa::new("alpn");
    let site = ca.issue("site", &["site.test"]);
    let server = MockServer::start("s1").await;
    let proxy = TestProxy::start(&with_tls(&server, &pair(&site))).await;
    let addr = proxy.addr();

    let stream = ca.connect(addr, "site.test", &[H2, H1]).await;
    assert_eq!(negotiated(&stream).0.as_deref(), Some(H2));
    let reply = get_h2(stream, "site.test", "/over-h2").await;
    assert_eq!(reply.status, 200);
    let seen = reply.json();
    assert_eq!(seen["path"], "/over-h2");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");

    let stream = ca.connect(addr, "site.test", &[H1]).await;
    assert_eq!(negotiated(&stream).0.as_deref(), Some(H1));
    let reply = get_h1(stream, "site.test", "/over-h1").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["headers"]["x-forwarded-proto"], "https");

    // A client that offers no ALPN speaks HTTP/1.1.
    let stream = ca.connect(addr, "site.test", &[]).await;
    assert_eq!(negotiated(&stream).0, None);
    assert_eq!(get_h1(stream, "site.test", "/").await.status, 200);

    // Plain http on a TLS port gets no HTTP answer.
    let (text, closed) = weir_tests::raw(addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(closed && !text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_combined_pem_of_chain_and_key_serves_as_haproxy_takes_it() {
    let ca = TestCa::new("combined");
    let (cert, key) = ca.issue("site", &["site.test"]);
    let combined = ca.dir.join("site-combined.pem");
    let text = std::fs::read_to_string(&cert).unwrap() + &std::fs::read_to_string(&key).unwrap();
    std::fs::write(&combined, text).unwrap();
    let server = MockServer::start("s1").await;
    let tls = format!("{{ cert = \"{}\" }}", combined.display());
    let proxy = TestProxy::start(&with_tls(&server, &tls)).await;
    let stream = ca.connect(proxy.addr(), "site.test", &[H1]).await;
    assert_eq!(negotiated(&stream).1, cert_der(&cert));
    assert_eq!(get_h1(stream, "site.test", "/").await.status, 200);

    // A certificate file without a key is named at `cert`.
    let only = with_tls(&server, &format!("{{ cert = \"{}\" }}", cert.display()));
    let e = weir::Config::from_toml(&only, Path::new("."))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("frontend[0].tls.cert") && e.contains("private key"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_the_first_is_the_default() {
    let ca = TestCa::new("sni");
    let first = ca.issue("first", &["a.test", "127.0.0.1"]);
    let second = ca.issue("second", &["b.test", "*.b.test"]);
    let server = MockServer::start("s1").await;
    let tls = format!("[{}, {}]", pair(&first), pair(&second));
    let proxy = TestProxy::start(&with_tls(&server, &tls)).await;
    let addr = proxy.addr();

    for (sni, expected) in [
        ("a.test", &first),
        ("b.test", &second),
        ("api.b.test", &second),
        // An IP address sends no SNI: the default certificate.
        ("127.0.0.1", &first),
    ] {
        let stream = ca.connect(addr, sni, &[H1]).await;
        assert_eq!(negotiated(&stream).1, cert_der(&expected.0), "for {sni}");
        assert_eq!(get_h1(stream, sni, "/").await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reads_the_certificates_again() {
    let ca = TestCa::new("reload");
    let old = ca.issue("site", &["site.test"]);
    let old_der = cert_der(&old.0);
    let server = MockServer::start("s1").await;
    let toml = with_tls(&server, &pair(&old));
    let proxy = TestProxy::start(&toml).await;
    let addr = proxy.addr();
    let kept = ca.connect(addr, "site.test", &[H1]).await;
    assert_eq!(negotiated(&kept).1, old_der);

    // Renewed in place, same paths.
    let renewed = ca.issue("site", &["site.test"]);
    assert_eq!(renewed, old);
    let reloaded = weir::Config::from_toml(&toml, Path::new(".")).unwrap();
    proxy.running.reload(&reloaded).await.unwrap();
    let fresh = ca.connect(addr, "site.test", &[H1]).await;
    let new_der = negotiated(&fresh).1;
    assert_ne!(
        new_der, old_der,
        "new connections get the renewed certificate"
    );
    assert_eq!(new_der, cert_der(&renewed.0));
    assert_eq!(get_h1(kept, "site.test", "/").await.status, 200);
}

#[tokio::test]
async fn certificate_problems_are_named_with_the_key_path() {
    let ca = TestCa::new("errors");
    let a = ca.issue("a", &["a.test"]);
    let b = ca.issue("b", &["b.test"]);
    let not_pem = ca.dir.join("garbage.key");
    std::fs::write(&not_pem, "not a key\n").unwrap();
    let server = MockServer::start("s1").await;
    let missing = ca.dir.join("missing.pem");
    let cases = [
        (
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                missing.display(),
                a.1.display()
            ),
            "frontend[0].tls.cert",
            "cannot read",
        ),
        (
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                a.0.display(),
                b.1.display()
            ),
            "frontend[0].tls.key",
            "does not belong to the certificate",
        ),
        (
            format!(
                "[{}, {{ cert = \"{}\", key = \"{}\" }}]",
                pair(&a),
                b.0.display(),
                not_pem.display()
            ),
            "frontend[0].tls[1].key",
            "no usable private key",
        ),
    ];
    for (tls, path, message) in cases {
        let errors = weir::Config::from_toml(&with_tls(&server, &tls), Path::new("."))
            .expect_err("refused")
            .to_string();
        assert!(
            errors.contains(path) && errors.contains(message),
            "{errors}"
        );
    }
    let both = with_tls(&server, &pair(&a)).replace("tls =", "redirect_https = true\ntls =");
    let errors = weir::Config::from_toml(&both, Path::new("."))
        .expect_err("refused")
        .to_string();
    assert!(errors.contains("frontend[0].redirect_https"), "{errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_https_answers_plain_http_with_a_301() {
    let server = MockServer::start("s1").await;
    let toml = config("roundrobin", &[("s1", server.addr, "")], "").replace(
        "default_backend = \"app\"\n",
        "default_backend = \"app\"\nredirect_https = true\n",
    );
    let proxy = TestProxy::start(&toml).await;
    let reply = Client::connect(proxy.addr())
        .await
        .send(
            http::Request::get("/shop/cart?item=7")
                .header("host", "www.example.com:8080")
                .body(weir_tests::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 301);
    assert_eq!(
        reply.headers["location"],
        "https://www.example.com/shop/cart?item=7"
    );
    assert_eq!(server.requests(), 0, "nothing reaches the server");
    let lines = proxy.log.wait_for(1).await;
    assert!(lines[0].contains(" 301 0 LR "), "{}", lines[0]);
}
