//! Any bytes as a request, a response or a chunked body, through the HTTP/1.1 fast path's own
//! parsers, with what they produce checked against `httparse` (a second reading of the same
//! bytes) and against a strict re-reading of their own output. No input may panic, and:
//!
//! - a request head it accepts is one `httparse` accepts with the same length, and the head it
//!   writes for the backend parses as exactly one complete head, in origin form, with at most
//!   one `Host`, no hop-by-hop header, and exactly the framing the parser chose (one
//!   `Content-Length` equal to the body's, or `Transfer-Encoding: chunked`, never both);
//! - a response head it accepts is framed for the client the same way;
//! - a chunked body it accepts has every chunk-size line accepted by `httparse::parse_chunk_size`
//!   with the same size, its re-encoding decodes to the same data, and re-encoding that changes
//!   nothing.
//!
//! `cargo +nightly fuzz run h1 fuzz/corpus/h1 fuzz/seeds/h1` from `crates/ballast-proxy`.

#![no_main]

use ballast_proxy::fuzzing::{self, Body};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&selector, data)) = input.split_first() else {
        return;
    };
    let step = usize::from(selector >> 2) + 1;
    match selector & 3 {
        0 | 1 => request(data, step),
        2 => response(data, selector & 0x80 != 0),
        _ => {
            let _ = chunked(data, step);
        }
    }
});

fn request(data: &[u8], step: usize) {
    let Ok(Some(framed)) = fuzzing::request(data) else {
        return;
    };
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut theirs = httparse::Request::new(&mut headers);
    assert_eq!(
        theirs.parse(data).ok(),
        Some(httparse::Status::Complete(framed.consumed)),
        "httparse reads another head length"
    );
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut upstream = httparse::Request::new(&mut headers);
    assert_eq!(
        upstream.parse(&framed.upstream).ok(),
        Some(httparse::Status::Complete(framed.upstream.len())),
        "the backend's head is not one whole head: {:?}",
        String::from_utf8_lossy(&framed.upstream)
    );
    let target = upstream.path.unwrap_or("");
    assert!(target.starts_with('/') || target == "*", "{target}");
    assert_eq!(upstream.version, Some(1));
    check_framing(upstream.headers, framed.body, framed.upgrade);
    if framed.body == Body::Chunked {
        let _ = chunked(&data[framed.consumed..], step);
    }
}

fn response(data: &[u8], to_head: bool) {
    let Ok(Some(framed)) = fuzzing::response(data, to_head, false) else {
        return;
    };
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut theirs = httparse::Response::new(&mut headers);
    assert_eq!(
        theirs.parse(data).ok(),
        Some(httparse::Status::Complete(framed.consumed))
    );
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut client = httparse::Response::new(&mut headers);
    assert_eq!(
        client.parse(&framed.client).ok(),
        Some(httparse::Status::Complete(framed.client.len())),
        "{:?}",
        String::from_utf8_lossy(&framed.client)
    );
    assert_ne!(framed.status, 101, "a 101 nobody asked for");
    if framed.body != Body::Empty {
        check_framing(client.headers, framed.body, false);
    }
}

/// The framing headers of a message Ballast wrote say exactly how Ballast framed it.
fn check_framing(headers: &[httparse::Header<'_>], body: Body, upgrade: bool) {
    let values = |name: &str| -> Vec<&[u8]> {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    assert!(values("host").len() <= 1, "two Hosts");
    let lengths = values("content-length");
    let codings = values("transfer-encoding");
    match body {
        Body::Length(n) => {
            assert_eq!(lengths, [n.to_string().as_bytes()]);
            assert!(codings.is_empty());
        }
        Body::Chunked => {
            assert!(lengths.is_empty(), "both framings");
            assert_eq!(codings.len(), 1);
            let last = codings[0].rsplit(|&b| b == b',').next().unwrap_or(b"");
            assert!(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
        Body::Empty => assert!(codings.is_empty() && lengths.len() <= 1),
        Body::UntilClose => assert!(lengths.is_empty()),
    }
    for hop in ["keep-alive", "proxy-connection", "te", "trailer"] {
        assert!(values(hop).is_empty(), "{hop} forwarded");
    }
    let connection = values("connection");
    assert!(
        connection.is_empty()
            || connection == [b"upgrade"] && upgrade
            || connection == [b"close"]
            || connection == [b"keep-alive"],
        "{connection:?}"
    );
}

/// Relays a chunked body and checks it against httparse and against itself.
fn chunked(data: &[u8], step: usize) -> Option<()> {
    let (encoded, consumed) = fuzzing::chunked(data, step).ok()??;
    let ours = decode(&encoded).expect("our own encoding decodes");
    assert_eq!(ours.1, encoded.len(), "our encoding ends where it says");
    let theirs = decode(&data[..consumed]).expect("httparse reads what we accepted");
    assert_eq!(ours.0, theirs.0, "the same data, read two ways");
    assert_eq!(theirs.1, consumed, "the body ends at the same byte");
    let again = fuzzing::chunked(&encoded, 7).expect("valid").expect("complete");
    assert_eq!(again.0, encoded, "re-encoding is stable");
    Some(())
}

/// A chunked body decoded with `httparse::parse_chunk_size` for every size line: the data and
/// where the body ends.
fn decode(mut body: &[u8]) -> Option<(Vec<u8>, usize)> {
    let total = body.len();
    let mut data = Vec::new();
    loop {
        let httparse::Status::Complete((after, size)) = httparse::parse_chunk_size(body).ok()?
        else {
            return None;
        };
        body = &body[after..];
        if size == 0 {
            // Trailer lines until an empty one.
            loop {
                let end = body.windows(2).position(|w| w == b"\r\n")?;
                body = &body[end + 2..];
                if end == 0 {
                    return Some((data, total - body.len()));
                }
            }
        }
        let size = usize::try_from(size).ok()?;
        data.extend_from_slice(body.get(..size)?);
        if body.get(size..size + 2)? != b"\r\n" {
            return None;
        }
        body = &body[size + 2..];
    }
}
