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
