//! Header handling between client and server: hop-by-hop removal (RFC 9110 §7.6.1),
//! the request's host (RFC 9112 §3.2), and X-Forwarded-*.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Uri};
use http::{Method, Version};

use super::error::ProxyError;
use crate::http1::list_has;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1, plus the
/// non-standard Keep-Alive and Proxy-Connection).
/// (`Connection` comes first: [`strip_hop_by_hop`] relies on it.)
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The position of `name` in [`HOP_BY_HOP`]. A `match` on the text looks at its length
/// first, which rules out nearly every name at once; comparing with each of the seven
/// names in turn cost about 30 instructions per header.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "te" => Some(3),
        "trailer" => Some(4),
        "transfer-encoding" => Some(5),
        "upgrade" => Some(6),
        _ => None,
    }
}

/// Headers that a client's `Connection` header may not strip: weir sets or needs them.
const PROTECTED: [HeaderName; 3] = [header::HOST, header::CONTENT_LENGTH, header::CONTENT_TYPE];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// True when `Connection` lists `token` (case-insensitive, comma-separated, any number of headers).
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| list_has(v, token))
}

/// Removes the hop-by-hop headers and every header that `Connection` nominates. With
/// `upgrade`, the `Upgrade` value is kept and `Connection: upgrade` restored, so that an
/// upgrade handshake passes through.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One look at each name finds the hop-by-hop headers present, as bits of
    // HOP_BY_HOP's positions.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present |= 1 << i;
        }
    }
    let has = |name: &HeaderName| hop_by_hop_index(name).is_some_and(|i| present & (1 << i) != 0);
    let plain = |v: &HeaderValue| {
        v.as_bytes().eq_ignore_ascii_case(b"keep-alive")
            || v.as_bytes().eq_ignore_ascii_case(b"close")
    };
    match present {
        0 => return,
        // The usual case: `Connection: keep-alive` or `close`, nothing else to remove.
        1 if headers.get_all(header::CONNECTION).iter().all(plain) => {
            headers.remove(header::CONNECTION);
            return;
        }
        _ => {}
    }
    // Headers `Connection` nominates besides the hop-by-hop ones.
    let nominated: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            !PROTECTED.contains(n)
                && hop_by_hop_index(n).is_none()
                && connection_has(headers, n.as_str())
        })
        .cloned()
        .collect();
    let upgrade_value = if upgrade && has(&header::UPGRADE) {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    // `TE: trailers` says the client takes trailers, which weir passes on: gRPC servers
    // ask for it, so it stays. Other TE codings are the client's business with weir.
    let te_trailers = has(&header::TE)
        && headers.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|c| c.trim().eq_ignore_ascii_case("trailers"))
            })
        });
    for name in HOP_BY_HOP.iter().filter(|n| has(n)).chain(&nominated) {
        headers.remove(name);
    }
    if let Some(value) = upgrade_value {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, value);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// An HTTP/1.1 request asking to switch protocols (WebSocket and the like).
pub fn is_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && connection_has(headers, "upgrade")
}

/// The host the client addressed: the authority of an absolute-form target or of an
/// HTTP/2 request wins over the Host header (RFC 9112 §3.2.2); an HTTP/1.1 request must
/// carry exactly one valid Host otherwise.
pub fn request_host(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<Authority>, ProxyError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("More than one Host header."));
    }
    if let Some(authority) = uri.authority() {
        return Ok(Some(authority.clone()));
    }
    match host {
        Some(value) => Authority::try_from(value.as_bytes())
            .map(Some)
            .map_err(|_| ProxyError::BadRequest("Invalid Host header.")),
        None if version == Version::HTTP_11 => Err(ProxyError::BadRequest(
            "HTTP/1.1 requests need a Host header.",
        )),
        None => Ok(None),
    }
}

/// Refuses HTTP/1.x framing that two parsers could read differently (request smuggling)
/// and that both hyper and weir's framing check below it let through: Transfer-Encoding
/// written more than once. The framing check refuses Content-Length with
/// Transfer-Encoding, repeated Content-Lengths and unknown codings before hyper sees the
/// head; hyper refuses invalid Content-Lengths, Transfer-Encoding in HTTP/1.0 and bad
/// chunk sizes.
pub fn check_framing(version: Version, headers: &HeaderMap) -> Result<(), ProxyError> {
    if version >= Version::HTTP_2 {
        return Ok(());
    }
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(value) = codings.next()
        && (codings.next().is_some() || !value.as_bytes().eq_ignore_ascii_case(b"chunked"))
    {
        return Err(ProxyError::BadRequest(
            "Transfer-Encoding must be chunked, once.",
        ));
    }
    Ok(())
}

/// Refuses an HTTP/1.x request target in a form its method cannot have (RFC 9112 §3.2):
/// authority-form (`a:80`) is for CONNECT only, asterisk-form (`*`) for OPTIONS only.
pub fn check_target(method: &Method, version: Version, uri: &Uri) -> Result<(), ProxyError> {
    if version >= Version::HTTP_2 {
        return Ok(());
    }
    if uri.scheme().is_none() && uri.authority().is_some() {
        return Err(ProxyError::BadRequest(
            "An authority-form target is only for CONNECT.",
        ));
    }
    if uri.path() == "*" && method != Method::OPTIONS {
        return Err(ProxyError::BadRequest(
            "An asterisk-form target is only for OPTIONS.",
        ));
    }
    Ok(())
}

/// Rewrites a client request head into the one sent to a server: origin-form target,
/// HTTP/1.1, hop-by-hop headers removed, Host set, and X-Forwarded-* when enabled.
pub fn prepare_request(
    method: &Method,
    uri: &mut Uri,
    version: &mut Version,
    headers: &mut HeaderMap,
    host: Option<&Authority>,
    upgrade: bool,
    forwarded: Option<(&str, &'static str)>,
) {
    if method != Method::OPTIONS || uri.path() != "*" {
        let origin = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
        if uri.authority().is_some() || uri.scheme().is_some() {
            *uri = Uri::try_from(if origin.is_empty() { "/" } else { origin })
                .unwrap_or_else(|_| Uri::from_static("/"));
        }
    }
    *version = Version::HTTP_11;
    strip_hop_by_hop(headers, upgrade);
    if let Some(host) = host {
        // Usually the Host the client sent, left as it is.
        let unchanged = headers
            .get(header::HOST)
            .is_some_and(|v| v.as_bytes() == host.as_str().as_bytes());
        if !unchanged && let Ok(v) = HeaderValue::from_str(host.as_str()) {
            headers.insert(header::HOST, v);
        }
        if forwarded.is_some()
            && let Some(v) = headers.get(header::HOST).cloned()
        {
            headers.insert(X_FORWARDED_HOST.clone(), v);
        }
    }
    if let Some((client_ip, proto)) = forwarded {
        append_forwarded_for(headers, client_ip);
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
}

/// Fits a prepared request to the protocol of the connection it goes out on: HTTP/1.1 with
/// an origin-form target, or HTTP/2 with the scheme and authority (from Host) in the
/// target, as HTTP/2 carries them in pseudo-headers.
pub fn for_server<B>(req: &mut http::Request<B>, h2: bool, tls: bool) {
    if h2 {
        *req.version_mut() = Version::HTTP_2;
        let authority = req
            .headers()
            .get(header::HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok());
        if let Some(authority) = authority {
            let mut parts = req.uri().clone().into_parts();
            parts.scheme = Some(if tls {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            });
            parts.authority = Some(authority);
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            }
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        // Host stays beside :authority (RFC 9113 §8.3.1 lets an intermediary keep it),
        // so that a retry on an HTTP/1.1 server still has it.
    } else if req.version() != Version::HTTP_11 {
        *req.version_mut() = Version::HTTP_11;
        let origin = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        if let Ok(uri) = Uri::try_from(origin) {
            *req.uri_mut() = uri;
        }
    }
}

/// Appends the client to X-Forwarded-For, folding any earlier headers into one list.
fn append_forwarded_for(headers: &mut HeaderMap, client_ip: &str) {
    let mut list = String::new();
    for v in headers.get_all(&X_FORWARDED_FOR).iter() {
        if let Ok(s) = v.to_str() {
            list.push_str(s.trim());
            list.push_str(", ");
        }
    }
    list.push_str(client_ip);
    if let Ok(v) = HeaderValue::from_str(&list) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_index_of_each_hop_by_hop_header_is_its_place_in_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        for name in [
            "host",
            "content-length",
            "x-connection",
            "upgrade-insecure-requests",
        ] {
            assert_eq!(
                hop_by_hop_index(&HeaderName::from_static(name)),
                None,
                "{name}"
            );
        }
    }

    #[test]
    fn strips_hop_by_hop_and_nominated_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret, content-length"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("content-length", "3"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["content-length", "x-kept"]);

        // The usual `Connection: keep-alive` (or close) goes, alone; a name it nominates
        // goes with it.
        for value in ["keep-alive", "Close"] {
            let mut h = map(&[("connection", value), ("x-kept", "yes")]);
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        }
        let mut h = map(&[("connection", "x-gone"), ("x-gone", "1"), ("x-kept", "yes")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);

        // Without hop-by-hop headers, nothing changes.
        let plain = map(&[("host", "a"), ("x-kept", "yes"), ("accept", "*/*")]);
        let mut h = plain.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, plain);

        // TE: trailers goes on (gRPC), alone.
        let mut h = map(&[("te", "deflate, Trailers")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn keeps_upgrade_for_upgrades_only() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(Version::HTTP_11, &h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        let mut h = map(&[("upgrade", "websocket")]);
        assert!(!is_upgrade(Version::HTTP_11, &h));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
    }

    #[test]
    fn absolute_form_authority_wins_over_host() {
        let uri: Uri = "http://b.example/x".parse().unwrap();
        let h = map(&[("host", "a.example")]);
        let host = request_host(Version::HTTP_11, &uri, &h).unwrap().unwrap();
        assert_eq!(host.as_str(), "b.example");
    }

    #[test]
    fn host_rules_for_http11() {
        let uri: Uri = "/x".parse().unwrap();
        assert!(request_host(Version::HTTP_11, &uri, &HeaderMap::new()).is_err());
        assert!(
            request_host(Version::HTTP_10, &uri, &HeaderMap::new())
                .unwrap()
                .is_none()
        );
        let two = map(&[("host", "a"), ("host", "b")]);
        assert!(request_host(Version::HTTP_11, &uri, &two).is_err());
        let bad = map(&[("host", "a b")]);
        assert!(request_host(Version::HTTP_11, &uri, &bad).is_err());
    }

    #[test]
    fn forwarded_for_is_appended_to_one_list() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        append_forwarded_for(&mut h, "127.0.0.1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            h.get("x-forwarded-for").unwrap(),
            "10.0.0.1, 10.0.0.2, 127.0.0.1"
        );
    }
}
