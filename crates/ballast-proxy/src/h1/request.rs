//! Requests on the fast path: the head parsed in place and rewritten for the backend, then sent
//! with its body.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Buf, BufMut, BytesMut};
use tokio::net::TcpStream;

use super::body::{Buffered, CopyError, Patience, copy_chunked, copy_length, write_within};
use super::message::{Coding, Framing, MAX_HEADERS, Message, is_framing, put_header};
use crate::access_log::RequestFacts;
use crate::attempt::ClientContext;
use crate::key::Affinity;
use crate::state::{RequestLine, Routed, Snapshot};
use crate::upstream::Raw;
use crate::{headers, request_id};

/// A request head, ready to send to a backend.
#[derive(Debug)]
pub(super) struct RequestHead {
    /// The head as the backend gets it.
    pub(super) upstream: BytesMut,
    pub(super) body: Framing,
    pub(super) is_head: bool,
    pub(super) idempotent: bool,
    pub(super) keep_alive: bool,
    pub(super) http10: bool,
    pub(super) upgrade: bool,
    pub(super) expect_continue: bool,
    /// An HTTP/1.0 request without a `Host`: the backend's address is added as its `Host`
    /// when it is sent (HTTP/1.1 backends may require one, RFC 9112 §3.2).
    pub(super) hostless: bool,
    /// Where it goes (a pool of `snapshot`, or an answer from the LB).
    pub(super) routed: Routed,
    /// The position of the route that chose, on a listener with a route table.
    pub(super) route: Option<u32>,
    /// What the access log says of it, and its ID (while request IDs are on).
    pub(super) facts: Option<RequestFacts>,
    /// The client is told the request's ID (`request_id_header`): a backend's own
    /// `X-Request-Id` in the response gives way to it.
    pub(super) id_to_client: bool,
    /// What steers it to a backend of its pool.
    pub(super) affinity: Affinity,
    /// The configuration the request was routed and keyed by, and the one it is proxied with.
    pub(super) snapshot: Arc<Snapshot>,
}

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// 400: malformed, or framed in a way two parsers could read differently.
    BadRequest,
    /// 431: a head too large.
    TooLarge,
    /// 501: a transfer coding other than chunked.
    NotImplemented,
}

/// Parses a request head and writes the head the backend gets. Strict by construction: the
/// backend is sent only what was understood — a request line in origin form, `Host` from the
/// one host rule ([`headers::backend_host`]), the client's other end-to-end headers, and the
/// framing Ballast itself reads the body by (`Content-Length: N` or `Transfer-Encoding:
/// chunked`, re-encoded). No framing header is ever copied, so none can be named away by
/// `Connection` or read differently on the next hop.
pub(super) fn parse_request(
    context: &ClientContext,
    bytes: &[u8],
) -> Result<Option<(RequestHead, usize)>, Refusal> {
    let shared = &context.shared;
    let snapshot = shared.snapshot.load_full();
    let forwarding = Forwarding {
        client: context.client_value.as_bytes(),
        scheme: context.scheme,
        draining: shared.draining.load(Ordering::Relaxed),
        request_ids: shared.settings.request_ids(),
        request_id_to_client: shared.settings.request_id_header,
    };
    let routing = Arc::clone(&snapshot);
    let (listener, client_ip) = (context.listener, context.client.ip());
    parse_with(bytes, &forwarding, snapshot, |request, headers| {
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        let (routed, route) = routing.route(listener, request, client_ip, header);
        let affinity = match routed.pool() {
            Some(pool) => {
                Affinity::of_raw(&routing.pools[pool], request.target, headers, client_ip)
            }
            None => Affinity::default(),
        };
        (routed, route, affinity)
    })
}

/// What the backend is told about the client, and whether responses close connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forwarding<'a> {
    /// `X-Forwarded-For`'s last entry.
    pub(crate) client: &'a [u8],
    /// `X-Forwarded-Proto`.
    pub(crate) scheme: &'a str,
    /// While draining, every response says `Connection: close`.
    pub(crate) draining: bool,
    /// Every request gets an ID, sent to the backend in `X-Request-Id`.
    pub(crate) request_ids: bool,
    /// And to the client, in the response.
    pub(crate) request_id_to_client: bool,
}

/// [`parse_request`] without a server: `choose` routes the request and hashes it for its pool.
pub(crate) fn parse_with(
    bytes: &[u8],
    forwarding: &Forwarding<'_>,
    snapshot: Arc<Snapshot>,
    choose: impl FnOnce(RequestLine<'_>, &[httparse::Header<'_>]) -> (Routed, Option<u32>, Affinity),
) -> Result<Option<(RequestHead, usize)>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let length = match request.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
        Err(_) => return Err(Refusal::BadRequest),
    };
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Err(Refusal::BadRequest);
    };
    let http10 = version == 0;
    let message = Message::scan(request.headers).map_err(|_| Refusal::BadRequest)?;
    let body = match (message.coding, message.length) {
        // Both framings at once is how requests are smuggled past proxies (RFC 9112 §6.1).
        (Some(_), Some(_)) => return Err(Refusal::BadRequest),
        (Some(_), None) if http10 => return Err(Refusal::BadRequest),
        (Some(Coding::Chunked), None) => Framing::Chunked,
        (Some(Coding::EndsChunked), None) => return Err(Refusal::NotImplemented),
        (Some(Coding::NotChunked), None) => return Err(Refusal::BadRequest),
        (None, Some(0) | None) => Framing::Empty,
        (None, Some(n)) => Framing::Length(n),
    };
    let (path, authority) = split_target(method, target)?;
    let host = headers::backend_host(!http10, message.host, message.hosts, authority)
        .map_err(|_| Refusal::BadRequest)?;
    let upgrade = message.connection_upgrade && message.upgrade;
    let line = RequestLine {
        scheme: forwarding.scheme,
        method,
        host,
        target: path,
    };
    let (routed, route, affinity) = choose(line, request.headers);

    let mut upstream = BytesMut::with_capacity(length + 128);
    upstream.put_slice(method.as_bytes());
    upstream.put_u8(b' ');
    upstream.put_slice(path.as_bytes());
    upstream.put_slice(b" HTTP/1.1\r\n");
    if let Some(host) = host {
        put_header(&mut upstream, b"host", host);
    }
    let mut sent_id = None;
    let (mut referer, mut user_agent): (&[u8], &[u8]) = (b"", b"");
    for header in request.headers.iter() {
        let name = header.name;
        if forwarding.request_ids {
            if name.eq_ignore_ascii_case(request_id::HEADER) {
                // Sent on as the one ID below, whether it is the client's or a new one.
                sent_id = Some(header.value);
                continue;
            } else if name.eq_ignore_ascii_case("referer") {
                referer = header.value;
            } else if name.eq_ignore_ascii_case("user-agent") {
                user_agent = header.value;
            }
        }
        let keep_upgrade = upgrade && name.eq_ignore_ascii_case("upgrade");
        if is_framing(name)
            || (!keep_upgrade && message.is_hop_by_hop(name))
            || name.eq_ignore_ascii_case("x-forwarded-for")
            || name.eq_ignore_ascii_case("x-forwarded-proto")
            || (message.expect_continue && name.eq_ignore_ascii_case("expect"))
        {
            continue;
        }
        put_header(&mut upstream, name.as_bytes(), header.value);
    }
    upstream.put_slice(b"x-forwarded-for: ");
    if let Some(earlier) = message.forwarded_for {
        upstream.put_slice(earlier);
        upstream.put_slice(b", ");
    }
    upstream.put_slice(forwarding.client);
    upstream.put_slice(b"\r\nx-forwarded-proto: ");
    upstream.put_slice(forwarding.scheme.as_bytes());
    upstream.put_slice(b"\r\n");
    let facts = forwarding.request_ids.then(|| {
        let id = request_id::of_request(sent_id);
        put_header(
            &mut upstream,
            request_id::HEADER.as_bytes(),
            id.as_str().as_bytes(),
        );
        RequestFacts::new(
            method,
            host.unwrap_or_default(),
            path,
            referer,
            user_agent,
            id.as_str(),
        )
    });
    match body {
        Framing::Chunked => upstream.put_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(n) => put_length(&mut upstream, n),
        // A request that said `Content-Length: 0` says so again (some backends need it).
        Framing::Empty if message.length.is_some() => put_length(&mut upstream, 0),
        Framing::Empty | Framing::UntilClose => {}
    }
    if upgrade {
        upstream.put_slice(b"connection: upgrade\r\n");
    }
    upstream.put_slice(b"\r\n");

    Ok(Some((
        RequestHead {
            upstream,
            body,
            is_head: method == "HEAD",
            idempotent: crate::attempt::is_idempotent(method.as_bytes()),
            keep_alive: !forwarding.draining
                && if http10 {
                    message.connection_keep_alive
                } else {
                    !message.connection_close
                },
            http10,
            upgrade,
            expect_continue: message.expect_continue,
            hostless: host.is_none(),
            routed,
            route,
            id_to_client: facts.is_some() && forwarding.request_id_to_client,
            facts,
            affinity,
            snapshot,
        },
        length,
    )))
}

/// The request target as the backend gets it (origin form, or `*` for `OPTIONS`) and, for an
/// absolute-form target, its authority (RFC 9112 §3.2). Authority-form (`CONNECT`) and other
/// schemes are refused: this is not a forward proxy.
fn split_target<'a>(method: &str, target: &'a str) -> Result<(&'a str, Option<&'a [u8]>), Refusal> {
    if target.starts_with('/') {
        return Ok((target, None));
    }
    if target == "*" && method == "OPTIONS" {
        return Ok((target, None));
    }
    let (scheme, rest) = target.split_once("://").ok_or(Refusal::BadRequest)?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(Refusal::BadRequest);
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if path.starts_with('/') {
        Ok((path, Some(authority.as_bytes())))
    } else if path.is_empty() {
        Ok(("/", Some(authority.as_bytes())))
    } else {
        // `http://host?query` has an empty path, which is `/` (RFC 9110 §4.2.3), but the
        // query cannot be kept without rewriting the target: refuse it rather than guess.
        Err(Refusal::BadRequest)
    }
}

pub(super) fn put_length(out: &mut BytesMut, length: u64) {
    use std::fmt::Write as _;
    // Writing into a `BytesMut` cannot fail.
    let _ = write!(out, "content-length: {length}\r\n");
}

/// Writes the request head and body to the backend: the body from `buffered` first, if it was
/// read before the backend was chosen, then whatever of it is still to come. Returns the body's
/// bytes as sent.
pub(super) async fn send_request(
    upstream: &mut Raw,
    head: &RequestHead,
    client: &mut TcpStream,
    buffer: &mut BytesMut,
    buffered: Option<Buffered>,
    patience: Patience,
) -> Result<u64, CopyError> {
    let with_host;
    let head_bytes: &[u8] = if head.hostless {
        with_host = add_host(&head.upstream, upstream.stream.peer_addr().ok());
        &with_host
    } else {
        &head.upstream
    };
    let sink = &mut upstream.stream;
    match head.body {
        Framing::Empty | Framing::UntilClose => write_within(sink, head_bytes, patience.write)
            .await
            .map(|()| 0)
            .map_err(CopyError::Sink),
        Framing::Length(length) => {
            let ready = (length.min(buffer.len() as u64)) as usize;
            let first = Buf::chain(head_bytes, &buffer[..ready]);
            write_within(sink, first, patience.write)
                .await
                .map_err(CopyError::Sink)?;
            buffer.advance(ready);
            copy_length(client, buffer, sink, length - ready as u64, patience).await?;
            Ok(length)
        }
        Framing::Chunked => {
            let (relay, encoded) = buffered.and_then(|b| b.chunked).unwrap_or_default();
            let first = Buf::chain(head_bytes, &encoded[..]);
            write_within(sink, first, patience.write)
                .await
                .map_err(CopyError::Sink)?;
            let first_bytes = encoded.len() as u64;
            if relay.is_done() {
                return Ok(first_bytes);
            }
            Ok(first_bytes + copy_chunked(client, buffer, sink, patience, relay).await?)
        }
    }
}

/// `head` (ending in its empty line) with `host: ADDRESS` added before that line.
fn add_host(head: &[u8], backend: Option<std::net::SocketAddr>) -> BytesMut {
    let lines = head.strip_suffix(b"\r\n").unwrap_or(head);
    let mut out = BytesMut::with_capacity(head.len() + 32);
    out.put_slice(lines);
    if let Some(backend) = backend {
        put_header(&mut out, b"host", backend.to_string().as_bytes());
    }
    out.put_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Option<(RequestHead, usize)>, Refusal> {
        let forwarding = Forwarding {
            client: b"10.0.0.9",
            scheme: "https",
            draining: false,
            request_ids: false,
            request_id_to_client: false,
        };
        let snapshot = Arc::new(Snapshot {
            pools: Vec::new(),
            by_listener: Vec::new(),
            http1_only: Vec::new(),
            listener_limits: Vec::new(),
            revision: 0,
        });
        parse_with(bytes, &forwarding, snapshot, |_, _| {
            (
                Routed::NoPool,
                None,
                Affinity {
                    key: 7,
                    sticky: None,
                },
            )
        })
    }

    fn head(bytes: &[u8]) -> RequestHead {
        parse(bytes).expect("accepted").expect("complete").0
    }

    fn upstream(bytes: &[u8]) -> String {
        String::from_utf8(head(bytes).upstream.to_vec()).expect("text")
    }

    #[test]
    fn the_backend_gets_origin_form_one_host_and_the_forwarding_headers() {
        // Names of the client's other headers go on as written.
        let sent = upstream(
            b"GET http://a.test/x?y HTTP/1.1\r\nHost: b.test\r\nX-Forwarded-For: 1.2.3.4\r\n\
              X-Forwarded-Proto: http\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!(
            sent,
            "GET /x?y HTTP/1.1\r\nhost: a.test\r\nAccept: */*\r\n\
             x-forwarded-for: 1.2.3.4, 10.0.0.9\r\nx-forwarded-proto: https\r\n\r\n"
        );
    }

    #[test]
    fn hop_by_hop_and_expectations_stay_on_this_hop() {
        let parsed = head(
            b"POST /upload HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-secret\r\n\
              X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nExpect: 100-continue\r\n\
              Content-Length: 3\r\n\r\nabc",
        );
        let sent = String::from_utf8(parsed.upstream.to_vec()).expect("text");
        for gone in ["x-secret", "keep-alive", "te:", "expect", "connection"] {
            assert!(
                !sent.to_ascii_lowercase().contains(gone),
                "{gone} in {sent}"
            );
        }
        assert!(sent.contains("content-length: 3\r\n"), "{sent}");
        assert!(parsed.expect_continue);
        assert_eq!(parsed.body, Framing::Length(3));
        assert!(!parsed.idempotent);
        assert_eq!(parsed.affinity.key, 7);
    }

    #[test]
    fn framing_that_two_parsers_could_read_differently_is_refused() {
        for bytes in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET http://user@a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test\r\n\r\n",
            // Chunked must be the final coding, or the body's end is anyone's guess.
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        ] {
            let refused = parse(bytes).err();
            assert_eq!(
                refused,
                Some(Refusal::BadRequest),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").err(),
            Some(Refusal::NotImplemented)
        );
    }

    #[test]
    fn chunked_bodies_are_re_encoded_and_a_hostless_http10_request_is_taken() {
        let chunked = head(b"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(chunked.body, Framing::Chunked);
        let sent = String::from_utf8(chunked.upstream.to_vec()).expect("text");
        assert!(
            sent.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{sent}"
        );

        let old = head(b"GET / HTTP/1.0\r\n\r\n");
        assert!(old.hostless && old.http10 && !old.keep_alive);
        let with_host = add_host(&old.upstream, Some("127.0.0.1:9001".parse().expect("addr")));
        assert!(
            with_host.ends_with(b"host: 127.0.0.1:9001\r\n\r\n"),
            "{}",
            String::from_utf8_lossy(&with_host)
        );
    }

    #[test]
    fn a_head_arrives_in_pieces_and_is_complete_only_at_its_empty_line() {
        let whole = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for end in 0..whole.len() {
            assert!(
                parse(&whole[..end]).expect("no refusal yet").is_none(),
                "{end}"
            );
        }
        let (_, length) = parse(whole).expect("accepted").expect("complete");
        assert_eq!(length, whole.len());
    }
}
