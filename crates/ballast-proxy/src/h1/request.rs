//! Requests on the fast path: the head parsed in place and rewritten for the backend, then sent
//! with its body.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::body::{CopyError, copy_chunked, copy_length};
use super::message::{Framing, MAX_HEADERS, Message, put_header};
use crate::http::ClientContext;
use crate::state::Snapshot;
use crate::upstream::Raw;

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
    pub(super) key: u64,
    /// The configuration the key was computed with, and the one the request is proxied with.
    pub(super) snapshot: Arc<Snapshot>,
}

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    BadRequest,
    TooLarge,
}

pub(super) fn parse_request(
    context: &ClientContext,
    bytes: &[u8],
) -> Result<Option<(RequestHead, usize)>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let length = match request.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
        Err(_) => return Err(Refusal::BadRequest),
    };
    let (Some(method), Some(path), Some(version)) = (request.method, request.path, request.version)
    else {
        return Err(Refusal::BadRequest);
    };
    let http10 = version == 0;
    let message = Message::scan(request.headers).ok_or(Refusal::BadRequest)?;
    if message.chunked && (message.length.is_some() || http10) {
        // Both framings at once is how requests are smuggled past proxies.
        return Err(Refusal::BadRequest);
    }
    if !http10 && !message.host {
        return Err(Refusal::BadRequest);
    }
    let upgrade = message.connection_upgrade && message.upgrade;
    let body = if message.chunked {
        Framing::Chunked
    } else {
        match message.length {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        }
    };
    let shared = &context.shared;
    let snapshot = shared.snapshot.load_full();
    let key = match snapshot.for_listener(context.listener) {
        Some(pool) if pool.uses_key => {
            pool.state
                .hash_key
                .of_raw(path, request.headers, context.client.ip())
        }
        _ => 0,
    };

    let mut upstream = BytesMut::with_capacity(length + 128);
    upstream.put_slice(method.as_bytes());
    upstream.put_u8(b' ');
    upstream.put_slice(path.as_bytes());
    upstream.put_slice(b" HTTP/1.1\r\n");
    for header in request.headers.iter() {
        let name = header.name;
        let keep_upgrade = upgrade && name.eq_ignore_ascii_case("upgrade");
        if (!keep_upgrade && message.is_hop_by_hop(name))
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
    upstream.put_slice(context.client_value.as_bytes());
    upstream.put_slice(b"\r\nx-forwarded-proto: ");
    upstream.put_slice(context.scheme.as_bytes());
    upstream.put_slice(b"\r\n");
    if body == Framing::Chunked {
        upstream.put_slice(b"transfer-encoding: chunked\r\n");
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
            idempotent: matches!(
                method,
                "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
            ),
            // While draining, every response says `Connection: close`.
            keep_alive: !shared.draining.load(Ordering::Relaxed)
                && if http10 {
                    message.connection_keep_alive
                } else {
                    !message.connection_close
                },
            http10,
            upgrade,
            expect_continue: message.expect_continue,
            key,
            snapshot,
        },
        length,
    )))
}

/// Writes the request head and body to the backend.
pub(super) async fn send_request(
    upstream: &mut Raw,
    head: &RequestHead,
    client: &mut TcpStream,
    buffer: &mut BytesMut,
    patience: Duration,
) -> Result<(), CopyError> {
    match head.body {
        Framing::Empty | Framing::UntilClose => upstream
            .stream
            .write_all(&head.upstream)
            .await
            .map_err(CopyError::Sink),
        Framing::Length(length) => {
            let ready = (length.min(buffer.len() as u64)) as usize;
            let mut first = Buf::chain(&head.upstream[..], &buffer[..ready]);
            upstream
                .stream
                .write_all_buf(&mut first)
                .await
                .map_err(CopyError::Sink)?;
            buffer.advance(ready);
            copy_length(
                client,
                buffer,
                &mut upstream.stream,
                length - ready as u64,
                patience,
            )
            .await
        }
        Framing::Chunked => {
            upstream
                .stream
                .write_all(&head.upstream)
                .await
                .map_err(CopyError::Sink)?;
            copy_chunked(client, buffer, &mut upstream.stream, patience).await
        }
    }
}
