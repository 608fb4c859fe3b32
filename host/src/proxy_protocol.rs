//! The PROXY protocol (versions 1 and 2, as HAProxy specifies it): the header a proxy in
//! front of weir sends first to pass on the client's address (`accept_proxy`), and the one
//! weir sends to servers (`send_proxy`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The version 2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest version 1 line, CRLF included.
const V1_MAX: usize = 107;
/// The largest version 2 header weir accepts (addresses and TLVs included).
pub const V2_MAX: usize = 16 + 1024;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The client's address and the address it connected to.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// No address to pass on (v1 `UNKNOWN`, v2 `LOCAL` or a family other than TCP over
    /// IPv4 / IPv6): the connection's own addresses stand.
    Unknown,
}

/// Why a header was refused; the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol v1 header: {0}")]
    V1(&'static str),
    #[error("malformed PROXY protocol v2 header: {0}")]
    V2(&'static str),
}

/// Parses a header at the start of `buf`: `Ok(None)` while more bytes are needed, else
/// the header and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    let starts = |prefix: &[u8]| {
        let n = buf.len().min(prefix.len());
        buf[..n] == prefix[..n]
    };
    if starts(&V2_SIGNATURE) {
        parse_v2(buf)
    } else if starts(V1_PREFIX) {
        parse_v1(buf)
    } else {
        Err(Error::Missing)
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(Error::V1("no CRLF within 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line =
        std::str::from_utf8(&buf[V1_PREFIX.len()..end]).map_err(|_| Error::V1("not ASCII"))?;
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or_default();
    if family == "UNKNOWN" {
        return Ok(Some((Header::Unknown, end + 2)));
    }
    let v4 = match family {
        "TCP4" => true,
        "TCP6" => false,
        _ => return Err(Error::V1("the protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let ip = |text: Option<&str>| -> Result<IpAddr, Error> {
        let ip: IpAddr = text
            .ok_or(Error::V1("missing field"))?
            .parse()
            .map_err(|_| Error::V1("bad address"))?;
        if ip.is_ipv4() == v4 {
            Ok(ip)
        } else {
            Err(Error::V1("address of the wrong family"))
        }
    };
    let port = |text: Option<&str>| -> Result<u16, Error> {
        let text = text.ok_or(Error::V1("missing field"))?;
        // Decimal without sign or leading zero, as the specification writes it.
        if text.is_empty()
            || !text.bytes().all(|b| b.is_ascii_digit())
            || (text.len() > 1 && text.starts_with('0'))
        {
            return Err(Error::V1("bad port"));
        }
        text.parse().map_err(|_| Error::V1("bad port"))
    };
    let (src, dst) = (ip(fields.next())?, ip(fields.next())?);
    let (sport, dport) = (port(fields.next())?, port(fields.next())?);
    if fields.next().is_some() {
        return Err(Error::V1("too many fields"));
    }
    Ok(Some((
        Header::Proxied {
            source: SocketAddr::new(src, sport),
            destination: SocketAddr::new(dst, dport),
        },
        end + 2,
    )))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Err(Error::V2("version is not 2"));
    }
    let family = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if 16 + len > V2_MAX {
        return Err(Error::V2("longer than weir accepts"));
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let header = match command {
        // LOCAL: the proxy's own connection (a health check); its addresses stand.
        0x0 => Header::Unknown,
        0x1 => match family {
            0x11 => {
                let a = body.get(..12).ok_or(Error::V2("address block too short"))?;
                let ip = |o: usize| Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]);
                Header::Proxied {
                    source: SocketAddr::new(ip(0).into(), u16::from_be_bytes([a[8], a[9]])),
                    destination: SocketAddr::new(ip(4).into(), u16::from_be_bytes([a[10], a[11]])),
                }
            }
            0x21 => {
                let a = body.get(..36).ok_or(Error::V2("address block too short"))?;
                let ip = |o: usize| {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(&a[o..o + 16]);
                    Ipv6Addr::from(b)
                };
                Header::Proxied {
                    source: SocketAddr::new(ip(0).into(), u16::from_be_bytes([a[32], a[33]])),
                    destination: SocketAddr::new(ip(16).into(), u16::from_be_bytes([a[34], a[35]])),
                }
            }
            // UNSPEC, UDP, unix sockets: nothing weir can use.
            0x00 | 0x12 | 0x22 | 0x31 | 0x32 => Header::Unknown,
            _ => return Err(Error::V2("unknown address family")),
        },
        _ => return Err(Error::V2("unknown command")),
    };
    Ok(Some((header, 16 + len)))
}

/// Which header weir sends to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The header of a connection weir makes on its own behalf (a health check): v1
/// `UNKNOWN`, v2 `LOCAL`.
pub fn local(version: Version) -> Vec<u8> {
    match version {
        Version::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        Version::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            out.extend_from_slice(&[0x20, 0x00, 0, 0]);
            out
        }
    }
}

/// Both addresses in one family: IPv4 ones become IPv4-mapped IPv6 when the other is IPv6.
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let six = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if source.is_ipv4() == destination.is_ipv4() {
        (source, destination)
    } else {
        (six(source), six(destination))
    }
}

/// The header that tells a server the client is `source` and connected to `destination`.
pub fn encode(version: Version, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    match version {
        Version::V1 => format!(
            "PROXY {} {} {} {} {}\r\n",
            if source.is_ipv4() { "TCP4" } else { "TCP6" },
            source.ip(),
            destination.ip(),
            source.port(),
            destination.port()
        )
        .into_bytes(),
        Version::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            out.push(0x21);
            match (source.ip(), destination.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.extend_from_slice(&[0x11, 0, 12]);
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    let v6 = |ip: IpAddr| match ip {
                        IpAddr::V6(v6) => v6.octets(),
                        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                    };
                    out.extend_from_slice(&[0x21, 0, 36]);
                    out.extend_from_slice(&v6(s));
                    out.extend_from_slice(&v6(d));
                }
            }
            out.extend_from_slice(&source.port().to_be_bytes());
            out.extend_from_slice(&destination.port().to_be_bytes());
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_lines_parse_and_bad_ones_are_refused() {
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nGET /";
        assert_eq!(
            parse(line),
            Ok(Some((
                Header::Proxied {
                    source: addr("192.0.2.7:56324"),
                    destination: addr("198.51.100.1:443")
                },
                45
            )))
        );
        let six = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert!(matches!(parse(six), Ok(Some((Header::Proxied { .. }, 40)))));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Some((Header::Unknown, 15))));
        assert_eq!(parse(b"PROXY TCP4 192.0.2.7"), Ok(None), "incomplete");
        assert_eq!(parse(b"PRO"), Ok(None));
        for bad in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n"[..],
            b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 70000\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 01 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2 3\r\n",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
        ] {
            assert!(matches!(parse(bad), Err(Error::V1(_))), "{bad:?}");
        }
        assert!(matches!(parse(&[b'P'; 200][..]), Err(Error::Missing)));
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.extend_from_slice(&[b'x'; 120]);
        assert!(matches!(parse(&long), Err(Error::V1(_))));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Error::Missing));
    }

    #[test]
    fn what_weir_encodes_it_parses_back() {
        for (s, d) in [
            ("192.0.2.7:56324", "198.51.100.1:443"),
            ("[2001:db8::1]:1", "[2001:db8::2]:2"),
        ] {
            for v in [Version::V1, Version::V2] {
                let mut bytes = encode(v, addr(s), addr(d));
                let len = bytes.len();
                bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
                assert_eq!(
                    parse(&bytes),
                    Ok(Some((
                        Header::Proxied {
                            source: addr(s),
                            destination: addr(d)
                        },
                        len
                    ))),
                    "{v:?} {s}"
                );
                assert_eq!(parse(&bytes[..len - 1]), Ok(None), "{v:?} incomplete");
            }
        }
        // Mixed families travel as IPv6.
        let mixed = encode(Version::V1, addr("192.0.2.7:1"), addr("[2001:db8::2]:2"));
        assert_eq!(
            mixed,
            b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::2 1 2\r\n".to_vec()
        );
    }

    #[test]
    fn the_fuzz_seed_corpus_parses_as_its_names_say() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/proxy_protocol");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let parsed = parse(&std::fs::read(&path).unwrap());
            let good =
                (name.starts_with("v1-") || name.starts_with("v2-")) && !name.contains("bad");
            assert_eq!(matches!(parsed, Ok(Some(_))), good, "{name}: {parsed:?}");
            seen += 1;
        }
        assert!(seen >= 8);
    }

    #[test]
    fn v2_local_unknown_families_and_bad_headers() {
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local), Ok(Some((Header::Unknown, 16))));
        assert_eq!(local, super::local(Version::V2));
        assert_eq!(
            parse(&super::local(Version::V1)),
            Ok(Some((Header::Unknown, 15)))
        );
        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 216]);
        unix.extend_from_slice(&[0; 216]);
        assert_eq!(parse(&unix), Ok(Some((Header::Unknown, 232))));
        let with = |b12: u8, fam: u8, len: u16| {
            let mut h = V2_SIGNATURE.to_vec();
            h.extend_from_slice(&[b12, fam]);
            h.extend_from_slice(&len.to_be_bytes());
            h.extend_from_slice(&vec![0; usize::from(len)]);
            h
        };
        assert!(
            matches!(parse(&with(0x11, 0x11, 12)), Err(Error::V2(_))),
            "version 1"
        );
        assert!(
            matches!(parse(&with(0x22, 0x11, 12)), Err(Error::V2(_))),
            "command"
        );
        assert!(
            matches!(parse(&with(0x21, 0x11, 4)), Err(Error::V2(_))),
            "short block"
        );
        assert!(
            matches!(parse(&with(0x21, 0x45, 0)), Err(Error::V2(_))),
            "family"
        );
        assert!(
            matches!(parse(&with(0x21, 0x11, 2000)), Err(Error::V2(_))),
            "too long"
        );
        // TLVs after the addresses are skipped.
        let mut tlv = with(0x21, 0x11, 20);
        tlv[16] = 127;
        assert!(matches!(
            parse(&tlv),
            Ok(Some((Header::Proxied { .. }, 36)))
        ));
        assert_eq!(parse(&with(0x21, 0x11, 12)[..20]), Ok(None));
    }
}
