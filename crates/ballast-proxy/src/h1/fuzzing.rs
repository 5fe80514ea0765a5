//! The fast path's parsers without a server, for the cargo-fuzz target in `fuzz/` (and its
//! corpus of the prober's vectors): a request head as the backend would get it, a response head
//! as the client would, and a chunked body re-encoded. Built only with the `fuzzing` feature
//! (and for its own test).

use std::sync::Arc;

use bytes::BytesMut;

use super::chunked::ChunkedRelay;
use super::message::Framing;
use super::request::{Forwarding, Refusal, RequestHead, parse_with};
use super::response::parse_response;
use crate::state::{Routed, Snapshot};

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body.
    Empty,
    /// This many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the backend closes (responses only).
    UntilClose,
}

impl From<Framing> for Body {
    fn from(framing: Framing) -> Self {
        match framing {
            Framing::Empty => Self::Empty,
            Framing::Length(n) => Self::Length(n),
            Framing::Chunked => Self::Chunked,
            Framing::UntilClose => Self::UntilClose,
        }
    }
}

/// What the fast path refused: a 502 for a response, a 400 for a chunked request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

/// A request head the fast path accepted.
#[derive(Debug)]
pub struct Request {
    /// The head the backend gets.
    pub upstream: Vec<u8>,
    /// How many input bytes the head took.
    pub consumed: usize,
    /// How the body is framed.
    pub body: Body,
    /// Whether it asks to upgrade.
    pub upgrade: bool,
}

/// Parses a request head as the fast path does; `Err` carries the status it answers with.
pub fn request(bytes: &[u8]) -> Result<Option<Request>, u16> {
    let forwarding = Forwarding {
        client: b"127.0.0.1",
        scheme: "http",
        draining: false,
        request_ids: false,
        request_id_to_client: false,
    };
    match parse_with(bytes, &forwarding, empty_snapshot(), |_, _| {
        (Routed::NoPool, None, Default::default())
    }) {
        Ok(Some((head, consumed))) => Ok(Some(Request {
            upstream: head.upstream.to_vec(),
            consumed,
            body: head.body.into(),
            upgrade: head.upgrade,
        })),
        Ok(None) => Ok(None),
        Err(Refusal::BadRequest) => Err(400),
        Err(Refusal::TooLarge) => Err(431),
        Err(Refusal::NotImplemented) => Err(501),
    }
}

/// A response head the fast path accepted.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The head the client gets.
    pub client: Vec<u8>,
    /// How many input bytes the head took.
    pub consumed: usize,
    /// How the body is framed.
    pub body: Body,
}

/// Parses a backend's response head to a request that was a HEAD or not, and upgraded or not;
/// `Err` when the fast path would answer 502.
pub fn response(
    bytes: &[u8],
    to_head: bool,
    to_upgrade: bool,
) -> Result<Option<Response>, Refused> {
    let request = RequestHead {
        upstream: BytesMut::new(),
        body: Framing::Empty,
        is_head: to_head,
        idempotent: true,
        keep_alive: true,
        http10: false,
        upgrade: to_upgrade,
        expect_continue: false,
        hostless: false,
        routed: Routed::NoPool,
        route: None,
        facts: None,
        id_to_client: false,
        affinity: Default::default(),
        snapshot: empty_snapshot(),
    };
    match parse_response(bytes, &request) {
        Ok(Some((head, consumed))) => Ok(Some(Response {
            status: head.status,
            client: head.client.to_vec(),
            consumed,
            body: head.body.into(),
        })),
        Ok(None) => Ok(None),
        Err(_) => Err(Refused),
    }
}

/// Relays a chunked body fed `step` bytes at a time: `Ok(Some((re-encoded, consumed)))` once it
/// is complete, `Ok(None)` if the input ends first, `Err` if it is malformed.
pub fn chunked(bytes: &[u8], step: usize) -> Result<Option<(Vec<u8>, usize)>, Refused> {
    let mut relay = ChunkedRelay::default();
    let mut output = BytesMut::new();
    let (mut consumed, mut available) = (0, 0);
    while !relay.is_done() {
        if available == bytes.len() {
            return Ok(None);
        }
        available = (available + step.max(1)).min(bytes.len());
        consumed += relay
            .relay(&bytes[consumed..available], &mut output)
            .map_err(|_| Refused)?;
    }
    Ok(Some((output.to_vec(), consumed)))
}

fn empty_snapshot() -> Arc<Snapshot> {
    Arc::new(Snapshot {
        pools: Vec::new(),
        by_listener: Vec::new(),
        http1_only: Vec::new(),
        listener_limits: Vec::new(),
        revision: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head of the first vector below, without its 3-byte body.
    fn framed_input_head_len() -> usize {
        b"POST /a HTTP/1.1\r\nHost: a\r\nConnection: Content-Length\r\nContent-Length: 3\r\n\r\n"
            .len()
    }

    #[test]
    fn the_prober_vectors_as_the_fuzz_target_sees_them() {
        let framed = request(b"POST /a HTTP/1.1\r\nHost: a\r\nConnection: Content-Length\r\nContent-Length: 3\r\n\r\nabc")
            .expect("accepted")
            .expect("complete");
        assert_eq!(framed.body, Body::Length(3));
        assert_eq!(framed.consumed, framed_input_head_len());
        assert!(!framed.upgrade);
        assert!(String::from_utf8_lossy(&framed.upstream).contains("content-length: 3\r\n"));
        let upgrade = request(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .expect("accepted")
        .expect("complete");
        assert!(upgrade.upgrade);
        let response_head =
            b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello";
        let framed = response(response_head, false, false)
            .expect("accepted")
            .expect("complete");
        assert_eq!((framed.status, framed.body), (200, Body::Length(5)));
        assert_eq!(framed.consumed, response_head.len() - 5);
        assert_eq!(
            framed.client,
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
        );
        assert_eq!(
            request(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
                .map(|_| ()),
            Err(501)
        );
        assert_eq!(chunked(b"0;\n\n", 1), Err(Refused));
        assert_eq!(
            chunked(b"5\r\nhello\r\n0\r\n\r\n", 3),
            Ok(Some((b"5\r\nhello\r\n0\r\n\r\n".to_vec(), 15)))
        );
        assert!(response(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false, false).is_err());
    }
}
