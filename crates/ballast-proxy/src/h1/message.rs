//! What the fast path needs to know of an HTTP/1.1 message's header lines, found in one pass:
//! its framing, its `Connection` options, and which headers stay on their hop.

use bytes::{BufMut, BytesMut};

/// At most this many header lines in a request or response.
pub(super) const MAX_HEADERS: usize = 100;
/// Request or response heads larger than this are refused (431 for requests).
pub(super) const MAX_HEAD: usize = 64 * 1024;
// Read buffers grow by this much at a time.
pub(super) use crate::spare::READ_CHUNK;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes (responses only).
    UntilClose,
}

/// What the `Transfer-Encoding` field lines (all of them, as one list) say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Coding {
    /// `chunked` alone.
    Chunked,
    /// Other codings, then `chunked` (e.g. `gzip, chunked`).
    EndsChunked,
    /// Codings without a final `chunked`.
    NotChunked,
}

/// Header lines that cannot be framed safely: malformed or conflicting framing (400 for a
/// request, 502 for a response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MalformedFraming;

/// What one pass over a message's header lines found.
#[derive(Debug, Default)]
pub(super) struct Message<'a> {
    pub(super) length: Option<u64>,
    pub(super) coding: Option<Coding>,
    /// The `Transfer-Encoding` value, when there is exactly one such line.
    pub(super) transfer_encoding: Option<&'a [u8]>,
    pub(super) connection_close: bool,
    pub(super) connection_keep_alive: bool,
    pub(super) connection_upgrade: bool,
    /// Other header names listed in `Connection` (hop-by-hop by declaration).
    pub(super) connection_named: Vec<&'a str>,
    pub(super) upgrade: bool,
    /// The first `Host` value, and how many `Host` lines there were.
    pub(super) host: Option<&'a [u8]>,
    pub(super) hosts: usize,
    pub(super) forwarded_for: Option<&'a [u8]>,
    pub(super) expect_continue: bool,
}

impl<'a> Message<'a> {
    /// Reads the framing strictly (RFC 9112 §6): a `Content-Length` is digits and nothing else,
    /// every copy of it the same; `Transfer-Encoding` is a list of tokens in which `chunked`
    /// appears at most once, and only last.
    pub(super) fn scan(headers: &'a [httparse::Header<'a>]) -> Result<Self, MalformedFraming> {
        let mut message = Self::default();
        let mut chunked_seen = false;
        let mut codings = 0usize;
        let mut te_lines = 0usize;
        for header in headers {
            let name = header.name;
            if name.eq_ignore_ascii_case("content-length") {
                let value = content_length(header.value).ok_or(MalformedFraming)?;
                if message.length.is_some_and(|earlier| earlier != value) {
                    return Err(MalformedFraming);
                }
                message.length = Some(value);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                te_lines += 1;
                message.transfer_encoding = Some(header.value);
                for coding in list(header.value)? {
                    if chunked_seen {
                        // `chunked` must be the last coding, applied once (RFC 9112 §7).
                        return Err(MalformedFraming);
                    }
                    codings += 1;
                    chunked_seen = coding.eq_ignore_ascii_case(b"chunked");
                }
            } else if name.eq_ignore_ascii_case("connection") {
                for token in list(header.value)? {
                    if token.eq_ignore_ascii_case(b"close") {
                        message.connection_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        message.connection_keep_alive = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        message.connection_upgrade = true;
                    } else if let Ok(named) = std::str::from_utf8(token) {
                        message.connection_named.push(named);
                    }
                }
            } else if name.eq_ignore_ascii_case("upgrade") {
                message.upgrade = true;
            } else if name.eq_ignore_ascii_case("host") {
                message.hosts += 1;
                message.host.get_or_insert(header.value);
            } else if name.eq_ignore_ascii_case("x-forwarded-for") {
                message.forwarded_for = Some(header.value);
            } else if name.eq_ignore_ascii_case("expect") {
                message.expect_continue = header.value.eq_ignore_ascii_case(b"100-continue");
            }
        }
        if te_lines > 1 {
            message.transfer_encoding = None;
        }
        message.coding = match (codings, chunked_seen) {
            (0, _) => None,
            (1, true) => Some(Coding::Chunked),
            (_, true) => Some(Coding::EndsChunked),
            (_, false) => Some(Coding::NotChunked),
        };
        Ok(message)
    }

    /// Whether a header stays on its hop (RFC 9110 §7.6.1). The framing headers are not
    /// decided here: whoever writes a message writes its framing itself, whatever `Connection`
    /// names.
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

/// Headers that frame or route a message: never copied from one hop to the next, always written
/// anew from what Ballast understood.
pub(super) fn is_framing(name: &str) -> bool {
    ["content-length", "transfer-encoding", "host"]
        .iter()
        .any(|framing| name.eq_ignore_ascii_case(framing))
}

/// `1*DIGIT` between optional spaces or tabs; `None` for anything else (`+5`, `5, 5`, `0x5`,
/// Unicode spaces) or a value that does not fit.
fn content_length(value: &[u8]) -> Option<u64> {
    let digits = trim_ows(value);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |length, &digit| {
        length.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// A list of tokens as Ballast writes it: its elements joined by `, `, empty ones dropped (a
/// trailing comma could make the next hop read an empty last coding, not `chunked`).
pub(super) fn normalized_list(value: &[u8]) -> Result<Vec<u8>, MalformedFraming> {
    let mut out = Vec::with_capacity(value.len());
    for element in list(value)? {
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(element);
    }
    Ok(out)
}

/// A comma-separated list of tokens (RFC 9110 §5.6.1), empty elements skipped; an element that
/// is not a token makes the whole list malformed.
fn list(value: &[u8]) -> Result<impl Iterator<Item = &[u8]>, MalformedFraming> {
    let elements = value.split(|&b| b == b',').map(trim_ows);
    if elements
        .clone()
        .any(|element| !element.iter().all(|&b| super::chunked::is_tchar(b)))
    {
        return Err(MalformedFraming);
    }
    Ok(elements.filter(|element| !element.is_empty()))
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

    fn scan(head: &[u8]) -> Result<(Option<u64>, Option<Coding>, bool, bool), MalformedFraming> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        request.parse(head).expect("a head httparse takes");
        let message = Message::scan(request.headers)?;
        Ok((
            message.length,
            message.coding,
            message.connection_close,
            message.is_hop_by_hop("x-private"),
        ))
    }

    #[test]
    fn reads_framing_and_connection_options() {
        let head = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 12\r\nConnection: close, X-Private\r\n\r\n";
        assert_eq!(scan(head), Ok((Some(12), None, true, true)));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(
            scan(chunked),
            Ok((None, Some(Coding::EndsChunked), false, false))
        );
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding:  Chunked \r\n\r\n";
        assert_eq!(
            scan(chunked),
            Ok((None, Some(Coding::Chunked), false, false))
        );
        let gzip = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(
            scan(gzip),
            Ok((None, Some(Coding::NotChunked), false, false))
        );
    }

    #[test]
    fn malformed_framing_is_refused() {
        for head in [
            &b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: \xc2\xa05\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\xc2\xa0\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\xc2\xa0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: \"chunked\"\r\n\r\n",
        ] {
            assert_eq!(
                scan(head),
                Err(MalformedFraming),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        // The same length twice is one length.
        let twice = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(scan(twice).map(|m| m.0), Ok(Some(3)));
    }

    #[test]
    fn lists_are_written_without_empty_elements() {
        // Found by the fuzz target: `gzip, chunked,` went on as it came.
        assert_eq!(
            normalized_list(b" gzip ,, chunked, "),
            Ok(b"gzip, chunked".to_vec())
        );
        assert_eq!(normalized_list(b"gzip, \"x\""), Err(MalformedFraming));
    }

    #[test]
    fn framing_headers_are_never_hop_by_hop_by_declaration() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Content-Length, Host, Transfer-Encoding\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        request.parse(head).expect("parses");
        let message = Message::scan(request.headers).expect("valid");
        // Listed, so hop-by-hop as far as copying goes; but framing is written anew anyway.
        assert!(message.is_hop_by_hop("content-length"));
        assert!(
            is_framing("Content-Length") && is_framing("HOST") && is_framing("transfer-encoding")
        );
        assert!(!is_framing("x-private"));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_header_values_never_panic(name in "[A-Za-z-]{1,20}", value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut head = format!("GET / HTTP/1.1\r\n{name}: ").into_bytes();
            head.extend(value.iter().filter(|b| **b != b'\r' && **b != b'\n'));
            head.extend_from_slice(b"\r\n\r\n");
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            if request.parse(&head).is_ok() {
                let _ = Message::scan(request.headers);
            }
        }
    }
}
