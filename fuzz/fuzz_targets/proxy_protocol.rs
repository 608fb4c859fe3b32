//! Fuzzes the PROXY protocol parser (`accept_proxy`): any bytes must give a header, a
//! request for more, or an error, never a panic; a header must fit in what was given, and
//! what weir encodes must parse back.

#![no_main]

use libfuzzer_sys::fuzz_target;

// The parser alone, without the rest of weir, so fuzz builds stay quick.
#[path = "../../host/src/proxy_protocol.rs"]
#[allow(dead_code)]
mod proxy_protocol;

use proxy_protocol::{Header, Version, encode, parse};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Some((header, used))) => {
            assert!(used <= data.len());
            // A prefix that stops short of the header is incomplete or refused.
            if used > 0 {
                assert!(matches!(parse(&data[..used - 1]), Ok(None) | Err(_)));
            }
            if let Header::Proxied {
                source,
                destination,
            } = header
            {
                for version in [Version::V1, Version::V2] {
                    let bytes = encode(version, source, destination);
                    let (again, n) = parse(&bytes).unwrap().unwrap();
                    assert_eq!(n, bytes.len());
                    // Mixed families come back as IPv6; same-family ones exactly.
                    if source.is_ipv4() == destination.is_ipv4() {
                        assert_eq!(again, header);
                    }
                }
            }
        }
        Ok(None) => assert!(data.len() < proxy_protocol::V2_MAX),
        Err(_) => {}
    }
});
