//! The HTTP/1.1 fast path for plain-text listeners: each request head is parsed once, in place,
//! and the head the backend gets is written straight from it; bodies are forwarded as bytes,
//! with only their framing (length or chunks) tracked. No header map is built on either side,
//! and the backend connection is driven by the client connection's own task, which is how nginx
//! spends half the instructions per request that a parse-into-maps proxy does.
//!
//! TLS listeners and HTTP/2 clients (recognised by the connection preface) take the hyper path
//! in [`crate::http`]; both paths share the pickers, retries, outlier accounting, metrics and
//! the error statuses documented there.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::chunked::Chunked;
use crate::http::ClientContext;
use crate::metrics::ErrorKind;
use crate::state::{BackendState, PoolSnapshot, Shared};
use crate::upstream::{self, Raw};

/// At most this many header lines in a request or response.
const MAX_HEADERS: usize = 100;
/// Request or response heads larger than this are refused (431 for requests).
const MAX_HEAD: usize = 64 * 1024;
/// Read buffers grow by this much at a time.
const READ_CHUNK: usize = 16 * 1024;
/// The most tries one request makes.
const MAX_TRIES: usize = 11;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes (responses only).
    UntilClose,
}

/// A request head, ready to send to a backend.
#[derive(Debug)]
struct RequestHead {
    /// The head as the backend gets it.
    upstream: BytesMut,
    body: Framing,
    is_head: bool,
    idempotent: bool,
    keep_alive: bool,
    http10: bool,
    upgrade: bool,
    expect_continue: bool,
    key: u64,
}

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    BadRequest,
    TooLarge,
}

/// What happens to the client connection after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

/// Serves HTTP/1.1 requests on `client`, whose first bytes are already in `buffer`.
pub(crate) async fn serve(
    context: Arc<ClientContext>,
    mut client: TcpStream,
    mut buffer: BytesMut,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let head = match read_request(&context, &mut client, &mut buffer, &mut shutdown).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(refusal) => {
                let counters = &context.shared.pools[context.pool].counters;
                let (status, text, kind) = match refusal {
                    Refusal::BadRequest => {
                        ("400 Bad Request", "bad request\n", ErrorKind::BadRequest)
                    }
                    Refusal::TooLarge => (
                        "431 Request Header Fields Too Large",
                        "request headers too large\n",
                        ErrorKind::HeadersTooLarge,
                    ),
                };
                counters.error(kind);
                let _ = write_error(&mut client, status, text, false).await;
                return;
            }
        };
        match proxy(&context, &mut client, &mut buffer, head).await {
            Ok(Next::KeepAlive) if !context.shared.draining.load(Ordering::Relaxed) => {}
            _ => return,
        }
    }
}

/// Reads until a whole request head is in `buffer`; `None` when the client leaves, goes quiet,
/// or the server drains while the connection is idle.
async fn read_request(
    context: &ClientContext,
    client: &mut TcpStream,
    buffer: &mut BytesMut,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<RequestHead>, Refusal> {
    let timeout = context.shared.settings.timeouts.request_headers;
    loop {
        if !buffer.is_empty() {
            if let Some((head, length)) = parse_request(context, buffer)? {
                buffer.advance(length);
                return Ok(Some(head));
            }
            if buffer.len() >= MAX_HEAD {
                return Err(Refusal::TooLarge);
            }
        }
        buffer.reserve(READ_CHUNK);
        let read = if buffer.is_empty() {
            tokio::select! {
                read = tokio::time::timeout(timeout, client.read_buf(buffer)) => read,
                () = crate::shutdown::stopping(shutdown) => return Ok(None),
            }
        } else {
            tokio::time::timeout(timeout, client.read_buf(buffer)).await
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            Err(_) if !buffer.is_empty() => {
                context.shared.pools[context.pool]
                    .counters
                    .error(ErrorKind::HeaderTimeout);
                return Ok(None);
            }
            _ => return Ok(None),
        }
    }
}

fn parse_request(
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
    let snapshot = shared.snapshot.load();
    let pool = &snapshot.pools[context.pool];
    let key = if pool.uses_key {
        pool.state
            .hash_key
            .of_raw(path, request.headers, context.client.ip())
    } else {
        0
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
        },
        length,
    )))
}

/// What one pass over a message's header lines found.
#[derive(Debug, Default)]
struct Message<'a> {
    length: Option<u64>,
    chunked: bool,
    connection_close: bool,
    connection_keep_alive: bool,
    connection_upgrade: bool,
    /// Other header names listed in `Connection` (hop-by-hop by declaration).
    connection_named: Vec<&'a str>,
    upgrade: bool,
    host: bool,
    forwarded_for: Option<&'a [u8]>,
    expect_continue: bool,
}

impl<'a> Message<'a> {
    /// `None` when the framing headers are malformed.
    fn scan(headers: &'a [httparse::Header<'a>]) -> Option<Self> {
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
    fn is_hop_by_hop(&self, name: &str) -> bool {
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

fn put_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// How the tries of one request ended, when none produced a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    NoBackend,
    Connect,
    Exchange,
}

/// Sends one request to a backend (retrying where safe) and its response to the client.
async fn proxy(
    context: &ClientContext,
    client: &mut TcpStream,
    buffer: &mut BytesMut,
    head: RequestHead,
) -> io::Result<Next> {
    let started = Instant::now();
    let shared = &context.shared;
    let snapshot = shared.snapshot.load_full();
    let pool = &snapshot.pools[context.pool];
    if head.expect_continue && head.body != Framing::Empty {
        // We answer for the backend, so the client's body and the backend's reply never wait
        // on each other through us.
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    let replayable = head.body == Framing::Empty
        && head.idempotent
        && !head.upgrade
        && shared.settings.retries > 0;
    let tries = if replayable {
        (1 + shared.settings.retries as usize).min(MAX_TRIES)
    } else {
        1
    };
    let mut tried = [usize::MAX; MAX_TRIES];
    let mut failure = Failure::NoBackend;
    for attempt in 0..tries {
        let Some(index) = pool.choose(head.key, &tried[..attempt]) else {
            break;
        };
        tried[attempt] = index;
        let backend = &pool.state.backends[index];
        let _in_flight = backend.balance.load().start();
        let (mut upstream, reused) = match backend_connection(shared, backend).await {
            Ok(found) => found,
            Err(error) => {
                tracing::debug!(backend = %backend.address, %error, "backend connect failed");
                shared.failure(&pool.state, index);
                failure = Failure::Connect;
                continue;
            }
        };
        let patience = shared.settings.timeouts.request_headers;
        match send_request(&mut upstream, &head, client, buffer, patience).await {
            Ok(()) => {}
            Err(CopyError::Source(error)) => {
                // The client stopped sending its body: nothing to answer, no backend to blame.
                tracing::debug!(client = %context.client, %error, "request body cut short");
                return Ok(Next::Close);
            }
            Err(CopyError::Sink(error)) => {
                tracing::debug!(backend = %backend.address, %error, "sending to the backend failed");
                if !reused {
                    shared.failure(&pool.state, index);
                }
                failure = Failure::Exchange;
                continue;
            }
        }
        let response = tokio::time::timeout(
            shared.settings.timeouts.backend_response,
            read_response(&mut upstream, &head, client),
        )
        .await;
        match response {
            Err(_) => {
                shared.failure(&pool.state, index);
                return reply_error(pool, client, ErrorKind::Timeout, &head, started).await;
            }
            Ok(Err(error)) => {
                tracing::debug!(backend = %backend.address, %error, "backend response failed");
                // A cached connection the backend had closed is not the backend failing.
                if !(reused && error.kind() == io::ErrorKind::UnexpectedEof) {
                    shared.failure(&pool.state, index);
                }
                failure = Failure::Exchange;
            }
            Ok(Ok(response)) => {
                return respond(
                    context, pool, index, client, buffer, upstream, &head, response, started,
                )
                .await;
            }
        }
    }
    let kind = match failure {
        Failure::NoBackend | Failure::Connect => ErrorKind::NoBackend,
        Failure::Exchange => ErrorKind::BadGateway,
    };
    reply_error(pool, client, kind, &head, started).await
}

/// A cached connection (`true`) or a new one (`false`).
async fn backend_connection(
    shared: &Shared,
    backend: &BackendState,
) -> Result<(Raw, bool), upstream::ConnectError> {
    let timeouts = &shared.settings.timeouts;
    if let Some(raw) = upstream::take_raw(backend.slot, timeouts.idle, &backend.counters.pooled_now)
    {
        return Ok((raw, true));
    }
    let raw = upstream::connect_raw(backend.address, timeouts.connect).await?;
    Ok((raw, false))
}

/// Writes the request head and body to the backend.
async fn send_request(
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

/// A response head from a backend, rewritten for the client.
#[derive(Debug)]
struct ResponseHead {
    status: u16,
    /// The head as the client gets it.
    client: BytesMut,
    body: Framing,
    client_keep_alive: bool,
    backend_keep_alive: bool,
}

/// Reads the backend's final response head, relaying interim (1xx) responses to the client.
async fn read_response(
    upstream: &mut Raw,
    head: &RequestHead,
    client: &mut TcpStream,
) -> io::Result<ResponseHead> {
    loop {
        if !upstream.buffer.is_empty() {
            if let Some((response, length)) = parse_response(&upstream.buffer, head)? {
                if (100..200).contains(&response.status) && response.status != 101 {
                    client.write_all(&upstream.buffer[..length]).await?;
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

fn parse_response(
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
    let message = Message::scan(response.headers).ok_or_else(|| invalid("malformed framing"))?;
    let body = if request.is_head || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::Empty
    } else if message.chunked {
        Framing::Chunked
    } else {
        match message.length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
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
        // Switching protocols: the head goes through as it is; the connection is the tunnel.
        client.put_slice(&bytes[..length]);
    } else {
        client.put_slice(b"HTTP/1.1 ");
        client.put_slice(&status_digits(status));
        client.put_u8(b' ');
        client.put_slice(response.reason.unwrap_or("").as_bytes());
        client.put_slice(b"\r\n");
        for header in response.headers.iter() {
            if !message.is_hop_by_hop(header.name) {
                put_header(&mut client, header.name.as_bytes(), header.value);
            }
        }
        if body == Framing::Chunked {
            client.put_slice(b"transfer-encoding: chunked\r\n");
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
fn status_digits(status: u16) -> [u8; 3] {
    let digit = |value: u16| b'0' + (value % 10) as u8;
    [digit(status / 100), digit(status / 10), digit(status)]
}

/// Sends the response head and body to the client and settles the accounts.
#[allow(clippy::too_many_arguments)]
async fn respond(
    context: &ClientContext,
    pool: &PoolSnapshot,
    index: usize,
    client: &mut TcpStream,
    buffer: &mut BytesMut,
    mut upstream: Raw,
    head: &RequestHead,
    response: ResponseHead,
    started: Instant,
) -> io::Result<Next> {
    let backend = &pool.state.backends[index];
    if response.status >= 500 {
        context.shared.failure(&pool.state, index);
    } else {
        backend.outlier.success();
    }
    backend.counters.response(response.status);

    if response.status == 101 && head.upgrade {
        client.write_all(&response.client).await?;
        if !upstream.buffer.is_empty() {
            client.write_all(&upstream.buffer).await?;
        }
        if !buffer.is_empty() {
            upstream.stream.write_all(buffer).await?;
            buffer.clear();
        }
        let result = tokio::io::copy_bidirectional(client, &mut upstream.stream).await;
        pool.state.counters.observe(started.elapsed().as_secs_f64());
        return result.map(|_| Next::Close);
    }

    let patience = context.shared.settings.timeouts.backend_response;
    let result = send_response(client, &mut upstream, &response, patience).await;
    pool.state.counters.observe(started.elapsed().as_secs_f64());
    result?;
    if response.backend_keep_alive {
        upstream::give_back_raw(backend.slot, upstream, &backend.counters.pooled_now);
    }
    Ok(if response.client_keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    })
}

async fn send_response(
    client: &mut TcpStream,
    upstream: &mut Raw,
    response: &ResponseHead,
    patience: Duration,
) -> io::Result<()> {
    match response.body {
        Framing::Empty => client.write_all(&response.client).await,
        Framing::Length(length) => {
            let ready = (length.min(upstream.buffer.len() as u64)) as usize;
            let mut first = Buf::chain(&response.client[..], &upstream.buffer[..ready]);
            client.write_all_buf(&mut first).await?;
            upstream.buffer.advance(ready);
            copy_length(
                &mut upstream.stream,
                &mut upstream.buffer,
                client,
                length - ready as u64,
                patience,
            )
            .await
            .map_err(io::Error::from)
        }
        Framing::Chunked => {
            client.write_all(&response.client).await?;
            copy_chunked(&mut upstream.stream, &mut upstream.buffer, client, patience)
                .await
                .map_err(io::Error::from)
        }
        Framing::UntilClose => {
            client.write_all(&response.client).await?;
            loop {
                client.write_all(&upstream.buffer).await?;
                upstream.buffer.clear();
                match read_more(&mut upstream.stream, &mut upstream.buffer, patience).await {
                    Ok(()) => {}
                    Err(end) if end.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(error) => return Err(error),
                }
            }
        }
    }
}

/// Reads more of a body into `buffer`, waiting at most `patience` for it (a stalled sender must
/// not hold a connection and a backend forever); the end of the stream is an error here.
async fn read_more(
    source: &mut TcpStream,
    buffer: &mut BytesMut,
    patience: Duration,
) -> io::Result<()> {
    buffer.reserve(READ_CHUNK);
    match tokio::time::timeout(patience, source.read_buf(buffer)).await {
        Ok(Ok(0)) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "body cut short",
        )),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "body stalled")),
    }
}

/// Which end of a copy failed: the difference between a client that stopped sending its body
/// (not the backend's fault) and a backend that stopped taking it.
#[derive(Debug)]
enum CopyError {
    Source(io::Error),
    Sink(io::Error),
}

impl From<CopyError> for io::Error {
    fn from(error: CopyError) -> Self {
        match error {
            CopyError::Source(error) | CopyError::Sink(error) => error,
        }
    }
}

/// Copies `remaining` body bytes from `source` (after what is already in `buffer`) to `sink`.
async fn copy_length(
    source: &mut TcpStream,
    buffer: &mut BytesMut,
    sink: &mut TcpStream,
    mut remaining: u64,
    patience: Duration,
) -> Result<(), CopyError> {
    while remaining > 0 {
        if buffer.is_empty() {
            read_more(source, buffer, patience)
                .await
                .map_err(CopyError::Source)?;
        }
        let take = (remaining.min(buffer.len() as u64)) as usize;
        sink.write_all(&buffer[..take])
            .await
            .map_err(CopyError::Sink)?;
        buffer.advance(take);
        remaining -= take as u64;
    }
    Ok(())
}

/// Copies a chunked body from `source` (after what is already in `buffer`) to `sink`, as it is,
/// up to the end of its trailers.
async fn copy_chunked(
    source: &mut TcpStream,
    buffer: &mut BytesMut,
    sink: &mut TcpStream,
    patience: Duration,
) -> Result<(), CopyError> {
    let mut state = Chunked::Size;
    loop {
        let whole = state
            .scan(buffer)
            .map_err(|e| CopyError::Source(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        if whole > 0 {
            sink.write_all(&buffer[..whole])
                .await
                .map_err(CopyError::Sink)?;
            buffer.advance(whole);
        }
        if state == Chunked::Done {
            return Ok(());
        }
        read_more(source, buffer, patience)
            .await
            .map_err(CopyError::Source)?;
    }
}

/// Answers for the backend, counting the error; keeps the client connection when it can.
async fn reply_error(
    pool: &PoolSnapshot,
    client: &mut TcpStream,
    kind: ErrorKind,
    head: &RequestHead,
    started: Instant,
) -> io::Result<Next> {
    let (status, text) = match kind {
        ErrorKind::NoBackend => ("503 Service Unavailable", "no backend available\n"),
        ErrorKind::Timeout => ("504 Gateway Timeout", "backend timed out\n"),
        _ => ("502 Bad Gateway", "backend failed\n"),
    };
    pool.state.counters.error(kind);
    pool.state.counters.observe(started.elapsed().as_secs_f64());
    // A request body we did not forward would be read as the next request: close instead.
    let keep_alive = head.keep_alive && head.body == Framing::Empty;
    write_error(client, status, text, keep_alive).await?;
    Ok(if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    })
}

async fn write_error(
    client: &mut TcpStream,
    status: &str,
    text: &str,
    keep_alive: bool,
) -> io::Result<()> {
    let connection = if keep_alive {
        ""
    } else {
        "connection: close\r\n"
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{connection}\r\n{text}",
        text.len()
    );
    client.write_all(response.as_bytes()).await?;
    if !keep_alive {
        let _ = client.shutdown().await;
    }
    Ok(())
}
