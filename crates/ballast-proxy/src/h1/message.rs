//! What the fast path needs to know of an HTTP/1.1 message's header lines, found in one pass:
//! its framing, its `Connection` options, and which headers stay on their hop.

use bytes::{BufMut, BytesMut};

/// At most this many header lines in a request or response.
pub(super) const MAX_HEADERS: usize = 100;
/// Request or response heads larger than this are refused (431 for requests).
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Read buffers grow by this much at a time.
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes (responses only).
    UntilClose,
}

/// What one pass over a message's header lines found.
#[derive(Debug, Default)]
pub(super) struct Message<'a> {
    pub(super) length: Option<u64>,
    pub(super) chunked: bool,
    pub(super) connection_close: bool,
    pub(super) connection_keep_alive: bool,
    pub(super) connection_upgrade: bool,
    /// Other header names listed in `Connection` (hop-by-hop by declaration).
    pub(super) connection_named: Vec<&'a str>,
    pub(super) upgrade: bool,
    pub(super) host: bool,
    pub(super) forwarded_for: Option<&'a [u8]>,
    pub(super) expect_continue: bool,
}

impl<'a> Message<'a> {
    /// `None` when the framing headers are malformed.
    pub(super) fn scan(headers: &'a [httparse::Header<'a>]) -> Option<Self> {
        let mut message = Self::default();
        for header in headers {
            let name = header.name;
            if name.eq_ignore_ascii_case("content-length") {
                let value: u64 = std::str::from_utf8(header.value)
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                if message.length.is_some_and(|earlier| earlier != value) {
                    return None;
                }
                message.length = Some(value);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                let value = std::str::from_utf8(header.value).ok()?;
                let last = value.rsplit(',').next().unwrap_or("").trim();
                if !last.eq_ignore_ascii_case("chunked") {
                    return None;
                }
                message.chunked = true;
            } else if name.eq_ignore_ascii_case("connection") {
                let value = std::str::from_utf8(header.value).ok()?;
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        message.connection_close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        message.connection_keep_alive = true;
                    } else if token.eq_ignore_ascii_case("upgrade") {
                        message.connection_upgrade = true;
                    } else if !token.is_empty() {
                        message.connection_named.push(token);
                    }
                }
            } else if name.eq_ignore_ascii_case("upgrade") {
                message.upgrade = true;
            } else if name.eq_ignore_ascii_case("host") {
                message.host = true;
            } else if name.eq_ignore_ascii_case("x-forwarded-for") {
                message.forwarded_for = Some(header.value);
            } else if name.eq_ignore_ascii_case("expect") {
                message.expect_continue = header.value.eq_ignore_ascii_case(b"100-continue");
            }
        }
        Some(message)
    }

    /// Whether a header stays on its hop (RFC 9110 §7.6.1).
    pub(super) fn is_hop_by_hop(&self, name: &str) -> bool {
        const HOP_BY_HOP: [&str; 9] = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authenticate",
            "proxy-authorization",
        ];
        HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop))
            || self
                .connection_named
                .iter()
                .any(|named| name.eq_ignore_ascii_case(named))
    }
}

pub(super) fn put_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(head: &[u8]) -> Option<(Option<u64>, bool, bool, bool)> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        request.parse(head).ok()?;
        let message = Message::scan(request.headers)?;
        Some((
            message.length,
            message.chunked,
            message.connection_close,
            message.is_hop_by_hop("x-private"),
        ))
    }

    #[test]
    fn reads_framing_and_connection_options() {
        let head = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 12\r\nConnection: close, X-Private\r\n\r\n";
        assert_eq!(scan(head), Some((Some(12), false, true, true)));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(scan(chunked), Some((None, true, false, false)));
    }

    #[test]
    fn malformed_framing_is_refused() {
        for head in [
            &b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        ] {
            assert_eq!(scan(head), None, "{}", String::from_utf8_lossy(head));
        }
        // The same length twice is one length.
        let twice = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(scan(twice).map(|m| m.0), Some(Some(3)));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_header_values_never_panic(name in "[A-Za-z-]{1,20}", value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut head = format!("GET / HTTP/1.1\r\n{name}: ").into_bytes();
            head.extend(value.iter().filter(|b| **b != b'\r' && **b != b'\n'));
            head.extend_from_slice(b"\r\n\r\n");
            let _ = scan(&head);
        }
    }
}
