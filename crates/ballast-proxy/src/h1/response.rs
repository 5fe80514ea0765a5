//! Responses on the fast path: the backend's head parsed in place and rewritten for the client,
//! interim responses relayed, then the body forwarded.

use std::io;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::body::{Patience, copy_chunked, copy_length, read_more, write_within};
use super::chunked::ChunkedRelay;
use super::message::{
    Coding, Framing, MAX_HEAD, MAX_HEADERS, Message, READ_CHUNK, is_framing, normalized_list,
    put_header,
};
use super::request::{RequestHead, put_length};
use crate::request_id;
use crate::upstream::Raw;

/// A response head from a backend, rewritten for the client.
#[derive(Debug)]
pub(super) struct ResponseHead {
    pub(super) status: u16,
    /// The head as the client gets it.
    pub(super) client: BytesMut,
    pub(super) body: Framing,
    pub(super) client_keep_alive: bool,
    pub(super) backend_keep_alive: bool,
}

/// Reads the backend's final response head, relaying interim (1xx) responses to the client.
pub(super) async fn read_response(
    upstream: &mut Raw,
    head: &RequestHead,
    client: &mut TcpStream,
    patience: Patience,
) -> io::Result<ResponseHead> {
    loop {
        if !upstream.buffer.is_empty() {
            if let Some((response, length)) = parse_response(&upstream.buffer, head)? {
                if (100..200).contains(&response.status) && response.status != 101 {
                    write_within(client, &upstream.buffer[..length], patience.write).await?;
                    upstream.buffer.advance(length);
                    continue;
                }
                upstream.buffer.advance(length);
                return Ok(response);
            }
            if upstream.buffer.len() >= MAX_HEAD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response head too large",
                ));
            }
        }
        upstream.buffer.reserve(READ_CHUNK);
        if upstream.stream.read_buf(&mut upstream.buffer).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "backend closed before a whole response head",
            ));
        }
    }
}

/// Parses a backend's response head and writes the head the client gets, as strictly as
/// requests are parsed: the framing is read by [`Message::scan`]'s rules and written anew, never
/// copied, so a backend cannot name it away with `Connection` or frame it two ways at once.
pub(super) fn parse_response(
    bytes: &[u8],
    request: &RequestHead,
) -> io::Result<Option<(ResponseHead, usize)>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(invalid("malformed response head")),
    };
    let (Some(status), Some(version)) = (response.code, response.version) else {
        return Err(invalid("malformed status line"));
    };
    if status == 101 && !request.upgrade {
        // A tunnel nobody asked for would hand this connection's later bytes to whoever is
        // next on it.
        return Err(invalid(
            "101 Switching Protocols to a request that did not upgrade",
        ));
    }
    let message = Message::scan(response.headers).map_err(|_| invalid("malformed framing"))?;
    let bodiless =
        request.is_head || (100..200).contains(&status) || status == 204 || status == 304;
    let body = if bodiless {
        Framing::Empty
    } else {
        // With both framings, the transfer coding wins (RFC 9112 §6.3) and the length is
        // dropped with every other framing header below.
        match (message.coding, message.length) {
            (Some(Coding::Chunked | Coding::EndsChunked), _) => Framing::Chunked,
            (Some(Coding::NotChunked), _) | (None, None) => Framing::UntilClose,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    let backend_keep_alive = body != Framing::UntilClose
        && if version == 0 {
            message.connection_keep_alive
        } else {
            !message.connection_close
        };
    let client_keep_alive = request.keep_alive && body != Framing::UntilClose;

    let mut client = BytesMut::with_capacity(length + 32);
    if status == 101 {
        // Switching protocols, as asked: the head goes through as it is; the connection is
        // the tunnel.
        client.put_slice(&bytes[..length]);
    } else {
        client.put_slice(b"HTTP/1.1 ");
        client.put_slice(&status_digits(status));
        client.put_u8(b' ');
        client.put_slice(response.reason.unwrap_or("").as_bytes());
        client.put_slice(b"\r\n");
        for header in response.headers.iter() {
            // The LB's request ID replaces one the backend echoed (as on the hyper path): one
            // ID per response, the one in the log.
            let replaced =
                request.id_to_client && header.name.eq_ignore_ascii_case(request_id::HEADER);
            if !is_framing(header.name) && !message.is_hop_by_hop(header.name) && !replaced {
                put_header(&mut client, header.name.as_bytes(), header.value);
            }
        }
        match (body, message.coding) {
            (Framing::Chunked, Some(Coding::Chunked)) => {
                client.put_slice(b"transfer-encoding: chunked\r\n");
            }
            (Framing::Chunked | Framing::UntilClose, Some(_)) => {
                // Other codings go on as the backend listed them (one line, or none), written
                // as Ballast writes a list.
                let codings = message
                    .transfer_encoding
                    .ok_or_else(|| invalid("Transfer-Encoding on several lines"))?;
                let codings =
                    normalized_list(codings).map_err(|_| invalid("malformed Transfer-Encoding"))?;
                put_header(&mut client, b"transfer-encoding", &codings);
            }
            (Framing::Length(n), _) => put_length(&mut client, n),
            // HEAD and 304 keep the length of the body they stand for; `Content-Length: 0`
            // stays.
            (Framing::Empty, _) if status != 204 && !(100..200).contains(&status) => {
                if let Some(n) = message.length {
                    put_length(&mut client, n);
                }
            }
            _ => {}
        }
        match (client_keep_alive, request.http10) {
            (true, true) => client.put_slice(b"connection: keep-alive\r\n"),
            (true, false) => {}
            (false, _) => client.put_slice(b"connection: close\r\n"),
        }
        client.put_slice(b"\r\n");
    }
    Ok(Some((
        ResponseHead {
            status,
            client,
            body,
            client_keep_alive,
            backend_keep_alive,
        },
        length,
    )))
}

/// A status code as its three digits (httparse accepts exactly three).
pub(super) fn status_digits(status: u16) -> [u8; 3] {
    let digit = |value: u16| b'0' + (value % 10) as u8;
    [digit(status / 100), digit(status / 10), digit(status)]
}

pub(super) async fn send_response(
    client: &mut TcpStream,
    upstream: &mut Raw,
    response: &ResponseHead,
    patience: Patience,
) -> io::Result<u64> {
    match response.body {
        Framing::Empty => write_within(client, &response.client[..], patience.write)
            .await
            .map(|()| 0),
        Framing::Length(length) => {
            let ready = (length.min(upstream.buffer.len() as u64)) as usize;
            let first = Buf::chain(&response.client[..], &upstream.buffer[..ready]);
            write_within(client, first, patience.write).await?;
            upstream.buffer.advance(ready);
            copy_length(
                &mut upstream.stream,
                &mut upstream.buffer,
                client,
                length - ready as u64,
                patience,
            )
            .await
            .map_err(io::Error::from)?;
            Ok(length)
        }
        Framing::Chunked => {
            write_within(client, &response.client[..], patience.write).await?;
            copy_chunked(
                &mut upstream.stream,
                &mut upstream.buffer,
                client,
                patience,
                ChunkedRelay::default(),
            )
            .await
            .map_err(io::Error::from)
        }
        Framing::UntilClose => {
            write_within(client, &response.client[..], patience.write).await?;
            let mut written = 0;
            loop {
                write_within(client, &upstream.buffer[..], patience.write).await?;
                written += upstream.buffer.len() as u64;
                upstream.buffer.clear();
                match read_more(&mut upstream.stream, &mut upstream.buffer, patience.read).await {
                    Ok(()) => {}
                    Err(end) if end.kind() == io::ErrorKind::UnexpectedEof => return Ok(written),
                    Err(error) => return Err(error),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(is_head: bool) -> RequestHead {
        RequestHead {
            upstream: BytesMut::new(),
            body: Framing::Empty,
            is_head,
            idempotent: true,
            keep_alive: true,
            http10: false,
            upgrade: false,
            expect_continue: false,
            hostless: false,
            routed: crate::state::Routed::NoPool,
            route: None,
            facts: None,
            id_to_client: false,
            affinity: Default::default(),
            snapshot: std::sync::Arc::new(crate::state::Snapshot {
                pools: Vec::new(),
                by_listener: Vec::new(),
                http1_only: Vec::new(),
                listener_limits: Vec::new(),
                revision: 0,
            }),
        }
    }

    #[test]
    fn a_backends_request_id_gives_way_to_the_lbs_when_the_client_is_told_it() {
        let raw = b"HTTP/1.1 200 OK\r\nX-Request-Id: echoed\r\nx-request-idx: b\r\n\
                    Content-Length: 0\r\n\r\n";
        let kept = parse_response(raw, &request(false))
            .expect("valid")
            .expect("whole")
            .0;
        assert!(kept.client.windows(6).any(|w| w == b"echoed"));
        let telling = RequestHead {
            id_to_client: true,
            ..request(false)
        };
        let replaced = parse_response(raw, &telling)
            .expect("valid")
            .expect("whole")
            .0;
        let head = String::from_utf8_lossy(&replaced.client);
        assert!(
            !head.contains("echoed") && head.contains("x-request-idx: b"),
            "{head}"
        );
    }

    fn parse(raw: &[u8], is_head: bool) -> (ResponseHead, usize) {
        parse_response(raw, &request(is_head))
            .expect("valid")
            .expect("complete")
    }

    #[test]
    fn chunked_wins_over_a_length_and_the_length_is_dropped() {
        let raw =
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n";
        let (head, length) = parse(raw, false);
        assert_eq!(length, raw.len());
        assert_eq!(head.body, Framing::Chunked);
        let text = String::from_utf8_lossy(&head.client).to_ascii_lowercase();
        assert!(!text.contains("content-length"), "{text}");
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert!(text.contains("x-a: 1\r\n"), "{text}");
    }

    #[test]
    fn other_codings_go_on_as_a_clean_list() {
        // Found by the fuzz target: a trailing comma went on, and a next hop could read the
        // last coding as empty rather than `chunked`.
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked,\r\n\r\n";
        let (head, _) = parse(raw, false);
        assert_eq!(head.body, Framing::Chunked);
        let text = String::from_utf8_lossy(&head.client).into_owned();
        assert!(
            text.contains("\r\ntransfer-encoding: gzip, chunked\r\n"),
            "{text}"
        );
    }

    #[test]
    fn framing_follows_the_request_and_status() {
        let with_length = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(parse(with_length, false).0.body, Framing::Length(5));
        assert_eq!(
            parse(with_length, true).0.body,
            Framing::Empty,
            "HEAD has no body"
        );
        let no_content = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(parse(no_content, false).0.body, Framing::Empty);
        let until_close = b"HTTP/1.1 200 OK\r\n\r\n";
        let (head, _) = parse(until_close, false);
        assert_eq!(head.body, Framing::UntilClose);
        assert!(!head.backend_keep_alive && !head.client_keep_alive);
        let closing = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let (head, _) = parse(closing, false);
        assert!(!head.backend_keep_alive);
        assert!(
            head.client_keep_alive,
            "the backend's close is not the client's"
        );
    }

    #[test]
    fn partial_and_malformed_heads() {
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Le", &request(false))
                .expect("ok")
                .is_none()
        );
        assert!(parse_response(b"garbage\r\n\r\n", &request(false)).is_err());
        let two_lengths = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert!(parse_response(two_lengths, &request(false)).is_err());
    }
}
