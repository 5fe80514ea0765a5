//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2): how a TCP load balancer
//! in front (a cloud NLB, HAProxy's `send-proxy`) tells the next hop who the client was, and how
//! this LB tells its backends. Behind such a balancer every connection comes from the balancer's
//! address; the header, sent once before the connection's own bytes, names the client's.
//!
//! Reading: the header must come first and whole within the header timeout; anything else closes
//! the connection (a listener that expects the header must never take a client's bytes for one,
//! nor serve a client who could forge one by connecting directly). A `LOCAL` header (the
//! balancer's own health check) or an `UNKNOWN`/unspecified family keeps the connection's own
//! address, as the specification says.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The twelve bytes that open a version 2 header.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A version 1 header is at most this long, CRLF included.
const V1_MAX: usize = 107;
/// The longest version 2 header read (addresses and TLVs); the specification allows 64 KiB, no
/// sender sends more than a few hundred bytes.
const V2_MAX: usize = 4096;

/// Which version a pool sends to its backends.
pub(crate) use ballast_config::ProxyProtocol as Version;

/// Why a connection's PROXY header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeaderError {
    /// The bytes are not a PROXY header of either version.
    #[error("not a PROXY protocol header")]
    NotProxy,
    /// A header of a known version that breaks its rules.
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    /// The peer closed, or went quiet, before a whole header.
    #[error("no whole PROXY header within {0:?}")]
    Incomplete(Duration),
    /// Reading failed.
    #[error("reading the PROXY header: {0}")]
    Io(String),
}

/// What a whole header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Its length in bytes: the connection's own bytes follow.
    pub length: usize,
    /// The client's address; `None`: keep the connection's (LOCAL, UNKNOWN, unspecified).
    pub source: Option<SocketAddr>,
}

/// The header at the start of `bytes`: `Ok(None)` while it may still be one that is not whole.
pub(crate) fn parse(bytes: &[u8]) -> Result<Option<Header>, HeaderError> {
    let v2_seen = bytes.len().min(V2_SIGNATURE.len());
    if bytes[..v2_seen] == V2_SIGNATURE[..v2_seen] {
        return if v2_seen < V2_SIGNATURE.len() {
            Ok(None)
        } else {
            parse_v2(bytes)
        };
    }
    let v1_seen = bytes.len().min(6);
    if bytes[..v1_seen] == b"PROXY "[..v1_seen] {
        return if v1_seen < 6 {
            Ok(None)
        } else {
            parse_v1(bytes)
        };
    }
    Err(HeaderError::NotProxy)
}

fn parse_v1(bytes: &[u8]) -> Result<Option<Header>, HeaderError> {
    let window = &bytes[..bytes.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|pair| pair == b"\r\n") else {
        return if bytes.len() >= V1_MAX {
            Err(HeaderError::Malformed(
                "version 1 header longer than 107 bytes",
            ))
        } else {
            Ok(None)
        };
    };
    let length = end + 2;
    let line = std::str::from_utf8(&bytes[6..end])
        .map_err(|_| HeaderError::Malformed("version 1 header is not text"))?;
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or_default();
    if family == "UNKNOWN" {
        return Ok(Some(Header {
            length,
            source: None,
        }));
    }
    let fields: Vec<&str> = fields.collect();
    let [source, destination, source_port, destination_port] = fields[..] else {
        return Err(HeaderError::Malformed(
            "version 1 header needs four fields after the family",
        ));
    };
    let address = |text: &str| -> Result<IpAddr, HeaderError> {
        let parsed = match family {
            "TCP4" => text.parse::<Ipv4Addr>().map(IpAddr::V4),
            "TCP6" => text.parse::<Ipv6Addr>().map(IpAddr::V6),
            _ => {
                return Err(HeaderError::Malformed(
                    "version 1 family is not TCP4, TCP6 or UNKNOWN",
                ));
            }
        };
        parsed.map_err(|_| HeaderError::Malformed("version 1 address does not fit its family"))
    };
    let port = |text: &str| -> Result<u16, HeaderError> {
        // Decimal, no sign, no leading zero (the specification's own rule).
        let canonical = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit())
            && (text == "0" || !text.starts_with('0'));
        text.parse()
            .ok()
            .filter(|_| canonical)
            .ok_or(HeaderError::Malformed(
                "version 1 port is not a number from 0 to 65535",
            ))
    };
    let source = SocketAddr::new(address(source)?, port(source_port)?);
    address(destination)?;
    port(destination_port)?;
    Ok(Some(Header {
        length,
        source: Some(source),
    }))
}

fn parse_v2(bytes: &[u8]) -> Result<Option<Header>, HeaderError> {
    if bytes.len() < 16 {
        return Ok(None);
    }
    let (version, command) = (bytes[12] >> 4, bytes[12] & 0x0f);
    if version != 2 {
        return Err(HeaderError::Malformed(
            "version 2 signature with another version",
        ));
    }
    let (family, transport) = (bytes[13] >> 4, bytes[13] & 0x0f);
    let declared = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    let length = 16 + declared;
    if length > V2_MAX {
        return Err(HeaderError::Malformed(
            "version 2 header longer than 4096 bytes",
        ));
    }
    if bytes.len() < length {
        return Ok(None);
    }
    let body = &bytes[16..length];
    let source = match command {
        // The balancer's own connection (a health check): its address is the right one.
        0 => None,
        1 => match (family, transport) {
            (1, 1) => {
                let addresses = body.get(..12).ok_or(HeaderError::Malformed(
                    "version 2 TCP over IPv4 needs 12 bytes of addresses",
                ))?;
                let ip = Ipv4Addr::from(<[u8; 4]>::try_from(&addresses[..4]).unwrap_or_default());
                let port = u16::from_be_bytes([addresses[8], addresses[9]]);
                Some(SocketAddr::new(IpAddr::V4(ip), port))
            }
            (2, 1) => {
                let addresses = body.get(..36).ok_or(HeaderError::Malformed(
                    "version 2 TCP over IPv6 needs 36 bytes of addresses",
                ))?;
                let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&addresses[..16]).unwrap_or_default());
                let port = u16::from_be_bytes([addresses[32], addresses[33]]);
                Some(SocketAddr::new(IpAddr::V6(ip), port))
            }
            // Unspecified, UNIX sockets or datagrams: nothing this LB can use as a client address.
            (0 | 3, _) | (1 | 2, 0 | 2) => None,
            _ => {
                return Err(HeaderError::Malformed(
                    "version 2 family or transport unknown",
                ));
            }
        },
        _ => {
            return Err(HeaderError::Malformed(
                "version 2 command is neither LOCAL nor PROXY",
            ));
        }
    };
    Ok(Some(Header { length, source }))
}

/// Reads the header a connection must open with, within `timeout`; `buffer` keeps the bytes
/// that came after it (the connection's own). The client's address, if the header names one.
pub(crate) async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut BytesMut,
    timeout: Duration,
) -> Result<Option<SocketAddr>, HeaderError> {
    let reading = async {
        loop {
            if !buffer.is_empty()
                && let Some(header) = parse(buffer)?
            {
                buffer.advance(header.length);
                return Ok(header.source);
            }
            buffer.reserve(512);
            match stream.read_buf(buffer).await {
                Ok(0) => return Err(HeaderError::Incomplete(timeout)),
                Ok(_) => {}
                Err(error) => return Err(HeaderError::Io(error.to_string())),
            }
        }
    };
    tokio::time::timeout(timeout, reading)
        .await
        .unwrap_or(Err(HeaderError::Incomplete(timeout)))
}

/// The header that tells a backend about a client at `source` that connected to `destination`.
/// Both must be of one family; a mix (an IPv4 client of an IPv6 listener) is written with both
/// as IPv6, as the specification asks of a sender.
pub(crate) fn header(version: Version, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    match version {
        Version::V1 => {
            let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                source.ip(),
                destination.ip(),
                source.port(),
                destination.port()
            )
            .into_bytes()
        }
        Version::V2 => {
            let mut header = V2_SIGNATURE.to_vec();
            header.push(0x21); // version 2, PROXY
            match (source.ip(), destination.ip()) {
                (IpAddr::V4(from), IpAddr::V4(to)) => {
                    header.extend_from_slice(&[0x11, 0, 12]);
                    header.extend_from_slice(&from.octets());
                    header.extend_from_slice(&to.octets());
                }
                (from, to) => {
                    header.extend_from_slice(&[0x21, 0, 36]);
                    header.extend_from_slice(&v6(from).octets());
                    header.extend_from_slice(&v6(to).octets());
                }
            }
            header.extend_from_slice(&source.port().to_be_bytes());
            header.extend_from_slice(&destination.port().to_be_bytes());
            header
        }
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    if source.is_ipv4() == destination.is_ipv4() {
        return (source, destination);
    }
    let widen = |a: SocketAddr| SocketAddr::new(IpAddr::V6(v6(a.ip())), a.port());
    (widen(source), widen(destination))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    #[test]
    fn reads_version_1_as_haproxy_writes_it() {
        let text = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n";
        let header = parse(text).expect("valid").expect("whole");
        assert_eq!(header.source, Some(addr("192.0.2.7:56324")));
        assert_eq!(&text[header.length..], b"GET / HTTP/1.1\r\n");
        let six = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 80\r\n";
        let header = parse(six).expect("valid").expect("whole");
        assert_eq!(header.source, Some(addr("[2001:db8::1]:4000")));
        let unknown = parse(b"PROXY UNKNOWN whatever\r\n")
            .expect("valid")
            .expect("whole");
        assert_eq!(unknown.source, None);
    }

    #[test]
    fn waits_for_a_whole_header_and_refuses_anything_else() {
        for partial in [&b""[..], b"PRO", b"PROXY TCP4 1.2.3.4", b"\r\n\r\n\0\r\nQU"] {
            assert_eq!(parse(partial), Ok(None), "{partial:?}");
        }
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HeaderError::NotProxy));
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"[..],
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(HeaderError::Malformed(_))),
                "{bad:?}"
            );
        }
        let endless = [b"PROXY ".as_slice(), &[b'x'; 200]].concat();
        assert!(matches!(parse(&endless), Err(HeaderError::Malformed(_))));
    }

    #[test]
    fn version_2_round_trips_both_families_and_local_keeps_the_peer() {
        for (from, to) in [
            ("192.0.2.7:56324", "198.51.100.1:443"),
            ("[2001:db8::1]:4000", "[2001:db8::2]:80"),
        ] {
            let written = header(Version::V2, addr(from), addr(to));
            let read = parse(&written).expect("valid").expect("whole");
            assert_eq!(
                (read.source, read.length),
                (Some(addr(from)), written.len())
            );
            let written = header(Version::V1, addr(from), addr(to));
            let read = parse(&written).expect("valid").expect("whole");
            assert_eq!(
                (read.source, read.length),
                (Some(addr(from)), written.len())
            );
        }
        // An IPv4 client of an IPv6 listener is told in IPv6.
        let mixed = header(Version::V2, addr("192.0.2.7:1"), addr("[::1]:2"));
        let read = parse(&mixed).expect("valid").expect("whole");
        assert_eq!(read.source, Some(addr("[::ffff:192.0.2.7]:1")));
        let local = [V2_SIGNATURE.as_slice(), &[0x20, 0x00, 0, 0]].concat();
        assert_eq!(
            parse(&local),
            Ok(Some(Header {
                length: 16,
                source: None
            }))
        );
        let version_3 = [V2_SIGNATURE.as_slice(), &[0x31, 0x11, 0, 12]].concat();
        assert!(matches!(parse(&version_3), Err(HeaderError::Malformed(_))));
        let short = [V2_SIGNATURE.as_slice(), &[0x21, 0x11, 0, 4, 1, 2, 3, 4]].concat();
        assert!(matches!(parse(&short), Err(HeaderError::Malformed(_))));
    }

    proptest! {
        /// Whatever arrives, the parser answers without panicking, and a header it accepts is
        /// never longer than the bytes it was given.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some(header)) = parse(&bytes) {
                prop_assert!(header.length <= bytes.len());
            }
        }

        #[test]
        fn never_panics_after_a_signature(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
            let bytes = [V2_SIGNATURE.as_slice(), &tail].concat();
            if let Ok(Some(header)) = parse(&bytes) {
                prop_assert!(header.length <= bytes.len());
            }
        }
    }
}
