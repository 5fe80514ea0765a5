//! The HTTP/1.1 fast path for plain-text listeners: each request head is parsed once, in place,
//! and the head the backend gets is written straight from it; bodies are forwarded as bytes,
//! with only their framing (length or chunks) tracked. No header map is built on either side,
//! and the backend connection is driven by the client connection's own task, which is how nginx
//! spends half the instructions per request that a parse-into-maps proxy does.
//!
//! TLS listeners and HTTP/2 clients (recognised by the connection preface) take the hyper path
//! in [`crate::hyper_path`]; both follow the one request policy in [`crate::attempt`].

mod body;
mod chunked;
// Public for the fuzz target; in the crate's own tests nothing outside reaches it.
#[cfg(any(test, feature = "fuzzing"))]
#[cfg_attr(not(feature = "fuzzing"), allow(unreachable_pub))]
pub mod fuzzing;
mod message;
mod request;
mod response;

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use self::body::{CopyError, Patience, write_within};
use self::message::{Framing, MAX_HEAD, READ_CHUNK, put_header};
use self::request::{Refusal, RequestHead, parse_request, send_request};
use self::response::{ResponseHead, read_response, send_response};
use crate::access_log::{Line, RequestFacts};
use crate::attempt::{self, Attempt, ClientContext, Try};
use crate::metrics::ErrorKind;
use crate::request_id;
use crate::spare;
use crate::state::{PoolSnapshot, Routed};
use crate::upstream::{self, Raw};
/// How long to look for an early response after a backend stopped taking a request body.
const EARLY_RESPONSE_WAIT: Duration = Duration::from_secs(1);
/// At most this long and this much of a client's unread body is drained before closing.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

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
                let (kind, (status, text)) = match refusal {
                    Refusal::BadRequest => (
                        ErrorKind::BadRequest,
                        attempt::answer(ErrorKind::BadRequest),
                    ),
                    Refusal::TooLarge => (
                        ErrorKind::HeadersTooLarge,
                        attempt::answer(ErrorKind::HeadersTooLarge),
                    ),
                    Refusal::NotImplemented => (
                        ErrorKind::BadRequest,
                        (
                            StatusCode::NOT_IMPLEMENTED,
                            "transfer coding not implemented\n",
                        ),
                    ),
                };
                context.shared.count_error(context.listener, kind);
                log_refused(&context, status, text.len());
                let patience = context.shared.settings.timeouts.idle;
                let _ = write_error(&mut client, status, text, false, patience).await;
                return;
            }
        };
        let started = Instant::now();
        let mut outcome = Outcome::default();
        // Boxed: a connection waiting for its next request holds only the reading state, not
        // the exchange's (most of an idle connection's memory otherwise).
        let next = Box::pin(proxy(
            &context,
            &mut client,
            &mut buffer,
            &head,
            &mut outcome,
            started,
        ))
        .await;
        log(&context, &head, &outcome, started);
        match next {
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
    let timeouts = &context.shared.settings.timeouts;
    // A whole head must arrive within `request_headers` of its first byte, so a client that
    // dribbles a byte at a time is cut off as surely as one that stops; between requests, a
    // kept-alive connection may stay idle for `idle`.
    let head_deadline = || tokio::time::Instant::now() + timeouts.request_headers;
    let mut deadline = (!buffer.is_empty()).then(head_deadline);
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
        if deadline.is_none() {
            // Idle between requests: the buffer waits with the worker, not the connection.
            spare::give_back(std::mem::take(buffer));
            let ready = tokio::select! {
                ready = tokio::time::timeout(timeouts.idle, client.readable()) => ready,
                () = crate::shutdown::stopping(shutdown) => return Ok(None),
            };
            if !matches!(ready, Ok(Ok(()))) {
                return Ok(None);
            }
            *buffer = spare::take();
        }
        buffer.reserve(READ_CHUNK);
        let read = match deadline {
            Some(at) => tokio::time::timeout_at(at, client.read_buf(buffer)).await,
            None => tokio::select! {
                read = tokio::time::timeout(timeouts.idle, client.read_buf(buffer)) => read,
                () = crate::shutdown::stopping(shutdown) => return Ok(None),
            },
        };
        match read {
            Ok(Ok(n)) if n > 0 => {
                deadline.get_or_insert_with(head_deadline);
            }
            Err(_) if deadline.is_some() => {
                context
                    .shared
                    .count_error(context.listener, ErrorKind::HeaderTimeout);
                return Ok(None);
            }
            _ => return Ok(None),
        }
    }
}

/// What became of a request, for its access log line.
#[derive(Debug, Default)]
struct Outcome {
    /// 0 until a response (or its head) is on its way.
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    first_byte: Option<Duration>,
    backend: Option<std::net::SocketAddr>,
    retries: u32,
}

/// The request's access log line, if the log is on.
fn log(context: &ClientContext, head: &RequestHead, outcome: &Outcome, started: Instant) {
    let (Some(log), Some(facts)) = (&context.shared.access_log, &head.facts) else {
        return;
    };
    let snapshot = &head.snapshot;
    let pool = head
        .routed
        .pool()
        .map(|pool| snapshot.pools[pool].state.name.as_str());
    let at = Instant::now();
    log.record(&Line {
        client: context.client,
        request: facts,
        protocol: if head.http10 { "HTTP/1.0" } else { "HTTP/1.1" },
        status: outcome.status,
        bytes_in: outcome.bytes_in,
        bytes_out: outcome.bytes_out,
        at,
        total: at.duration_since(started),
        first_byte: outcome.first_byte,
        backend: outcome.backend,
        pool,
        route: snapshot.route_table(context.listener).zip(head.route),
        retries: outcome.retries,
    });
}

/// The line of a request refused before its head was read whole (nginx logs its 400s too): of
/// the request, only its client is known.
fn log_refused(context: &ClientContext, status: StatusCode, bytes_out: usize) {
    let Some(log) = &context.shared.access_log else {
        return;
    };
    let id = crate::request_id::RequestId::new();
    let facts = RequestFacts::new("-", b"", "-", b"", b"", id.as_str());
    log.record(&Line {
        client: context.client,
        request: &facts,
        protocol: "HTTP/1.1",
        status: status.as_u16(),
        bytes_in: 0,
        bytes_out: bytes_out as u64,
        at: Instant::now(),
        total: Duration::ZERO,
        first_byte: None,
        backend: None,
        pool: None,
        route: None,
        retries: 0,
    });
}

/// The request's ID, when the client is to be told it.
fn id_for_client(head: &RequestHead) -> Option<&str> {
    let facts = head.facts.as_ref()?;
    head.id_to_client.then(|| facts.request_id())
}

/// Sends one request to a backend (retrying where safe) and its response to the client.
async fn proxy(
    context: &ClientContext,
    client: &mut TcpStream,
    buffer: &mut BytesMut,
    head: &RequestHead,
    outcome: &mut Outcome,
    started: Instant,
) -> io::Result<Next> {
    let shared = &context.shared;
    let timeouts = &shared.settings.timeouts;
    let snapshot = &head.snapshot;
    let settled =
        crate::rate_limit::settle(shared, snapshot, context.listener, head.route, &head.routed)
            .await;
    let pool = match settled.as_ref().unwrap_or(&head.routed) {
        Routed::Pool(pool) => &*snapshot.pools[*pool],
        // A route's own answer, a client over its rate, no route, or a pool the configuration
        // lacks (now).
        routed => {
            let routed = attempt::routed_answer(routed);
            // Its body, if it has one, was not read: the connection cannot be trusted after.
            let keep_alive = head.keep_alive && head.body == Framing::Empty;
            outcome.status = routed.status.as_u16();
            outcome.bytes_out = routed.text.len() as u64;
            let answer = Answer {
                status: routed.status,
                location: routed.location,
                text: &routed.text,
                request_id: id_for_client(head),
                retry_after: routed.retry_after.as_deref(),
            };
            write_answer(client, answer, keep_alive, timeouts.idle).await?;
            return Ok(if keep_alive {
                Next::KeepAlive
            } else {
                Next::Close
            });
        }
    };
    if !pool.state.speaks_plain_http1() {
        // The pool began speaking HTTP/2 or TLS to its backends after this connection took the fast
        // path: the client is asked to connect again, and its next connection takes the path
        // that translates (see `Shared::http1_only`).
        pool.state.counters.error(ErrorKind::NoBackend);
        let (status, text) = attempt::answer(ErrorKind::NoBackend);
        outcome.status = status.as_u16();
        outcome.bytes_out = text.len() as u64;
        let answer = Answer {
            status,
            location: None,
            text,
            request_id: id_for_client(head),
            retry_after: None,
        };
        write_answer(client, answer, false, timeouts.idle).await?;
        return Ok(Next::Close);
    }
    if head.expect_continue && head.body != Framing::Empty {
        // We answer for the backend, so the client's body and the backend's reply never wait
        // on each other through us.
        write_within(client, &b"HTTP/1.1 100 Continue\r\n\r\n"[..], timeouts.idle).await?;
    }
    let limit = shared.settings.request_buffering.0;
    let buffering = match head.body {
        Framing::Length(length) if length <= limit => {
            Some(body::buffer_length(client, buffer, length, timeouts.request_headers).await)
        }
        Framing::Chunked if limit > 0 => {
            Some(body::buffer_chunked(client, buffer, limit, timeouts.request_headers).await)
        }
        _ => None,
    };
    let mut buffered = match buffering {
        None => None,
        Some(Ok(buffered)) => Some(buffered),
        Some(Err(error)) => {
            // The client's body never arrived whole, or was malformed: no backend saw any of it.
            return refuse_body(context, pool, client, &error, outcome).await;
        }
    };
    let replayable = head.body == Framing::Empty && head.idempotent && !head.upgrade;
    let limits = snapshot.limits(context.listener, head.route, &pool.state);
    let mut attempt = Attempt::new(context, pool, limits, head.affinity, replayable, started);
    let sending = Patience {
        read: timeouts.request_headers,
        write: timeouts.idle,
    };
    let receiving = Patience {
        read: attempt.response_timeout(),
        write: timeouts.idle,
    };
    while let Some((tried, mut upstream)) = attempt.next::<Raw>().await {
        outcome.retries = attempt.retries();
        outcome.backend = Some(tried.backend.address);
        let sent = send_request(
            &mut upstream,
            head,
            client,
            buffer,
            buffered.take(),
            sending,
        )
        .await;
        match sent {
            Ok(sent) => outcome.bytes_in = sent,
            Err(CopyError::Source(error)) => {
                // The client stopped sending its body, or sent a malformed one: nothing more to
                // forward, no backend to blame.
                return refuse_body(context, pool, client, &error, outcome).await;
            }
            Err(CopyError::Sink(error)) => {
                // A backend may answer before it has read the whole body (413, 401) and stop
                // reading: its answer is the response, and no failure of its own.
                let closing_head = closing(head);
                if head.body != Framing::Empty
                    && let Ok(Ok(mut response)) = tokio::time::timeout(
                        EARLY_RESPONSE_WAIT,
                        read_response(&mut upstream, &closing_head, client, receiving),
                    )
                    .await
                {
                    // The rest of the body was never sent: this connection is out of step.
                    response.backend_keep_alive = false;
                    outcome.first_byte = Some(started.elapsed());
                    let exchange = Exchange {
                        upstream,
                        head: &closing_head,
                        response,
                    };
                    let next = respond(&attempt, tried, client, buffer, exchange, outcome).await;
                    linger(client).await;
                    return next.map(|_| Next::Close);
                }
                attempt.exchange_failed(&tried, &error, !tried.reused);
                continue;
            }
        }
        let response = tokio::time::timeout(
            attempt.response_timeout(),
            read_response(&mut upstream, head, client, receiving),
        )
        .await;
        match response {
            Err(_) => attempt.timed_out(&tried),
            Ok(Err(error)) => {
                // A cached connection the backend had closed is not the backend failing.
                let blame = !(tried.reused && error.kind() == io::ErrorKind::UnexpectedEof);
                attempt.exchange_failed(&tried, &error, blame);
            }
            Ok(Ok(response)) => {
                outcome.first_byte = Some(started.elapsed());
                let exchange = Exchange {
                    upstream,
                    head,
                    response,
                };
                return respond(&attempt, tried, client, buffer, exchange, outcome).await;
            }
        }
    }
    outcome.retries = attempt.retries();
    let kind = attempt.give_up();
    reply_error(context, client, kind, head, outcome).await
}

/// A client's request body stopped or was malformed: a 400 for the malformed one, and the
/// connection closes either way (what follows on it cannot be read as a request).
async fn refuse_body(
    context: &ClientContext,
    pool: &PoolSnapshot,
    client: &mut TcpStream,
    error: &io::Error,
    outcome: &mut Outcome,
) -> io::Result<Next> {
    tracing::debug!(client = %context.client, %error, "request body refused");
    if error.kind() == io::ErrorKind::InvalidData {
        pool.state.counters.error(ErrorKind::BadRequest);
        let patience = context.shared.settings.timeouts.idle;
        let (status, text) = attempt::answer(ErrorKind::BadRequest);
        outcome.status = status.as_u16();
        outcome.bytes_out = text.len() as u64;
        let _ = write_error(client, status, text, false, patience).await;
    }
    Ok(Next::Close)
}

/// A backend's response, read up to its body, on the connection it came on.
struct Exchange<'a> {
    upstream: Raw,
    /// The request it answers.
    head: &'a RequestHead,
    response: ResponseHead,
}

/// Sends the response head and body to the client and settles the accounts.
async fn respond(
    attempt: &Attempt<'_>,
    tried: Try<'_>,
    client: &mut TcpStream,
    buffer: &mut BytesMut,
    exchange: Exchange<'_>,
    outcome: &mut Outcome,
) -> io::Result<Next> {
    let Exchange {
        mut upstream,
        head,
        mut response,
    } = exchange;
    let context = attempt.context();
    let shared = &context.shared;
    let backend = tried.backend;
    attempt.responded(&tried, response.status);
    outcome.status = response.status;
    let id = id_for_client(head);
    let cookie = attempt.sticky_cookie(&tried);
    if id.is_some() || cookie.is_some() {
        // Before the head's empty line (the backend's own ID, if it echoed one, was left out).
        response.client.truncate(response.client.len() - 2);
        if let Some(id) = id {
            let name = request_id::HEADER.as_bytes();
            put_header(&mut response.client, name, id.as_bytes());
        }
        if let Some(cookie) = cookie {
            put_header(&mut response.client, b"set-cookie", cookie.as_bytes());
        }
        response.client.extend_from_slice(b"\r\n");
    }

    let patience = Patience {
        read: attempt.response_timeout(),
        write: shared.settings.timeouts.idle,
    };
    if response.status == 101 && head.upgrade {
        write_within(client, &response.client[..], patience.write).await?;
        if !upstream.buffer.is_empty() {
            write_within(client, &upstream.buffer[..], patience.write).await?;
        }
        if !buffer.is_empty() {
            upstream.stream.write_all(buffer).await?;
            buffer.clear();
        }
        let idle = shared.settings.timeouts.idle;
        let result = crate::watchdog::tunnel(&mut *client, &mut upstream.stream, idle).await;
        attempt.finished();
        return result.map(|_| Next::Close);
    }

    let result = send_response(client, &mut upstream, &response, patience).await;
    attempt.finished();
    outcome.bytes_out = result?;
    if !upstream.buffer.is_empty() {
        // Bytes beyond the response: the connection is out of step.
        shared.distrust(backend);
    } else if response.backend_keep_alive
        && backend.outlier.reuses_connections(shared.clock.now_ms())
    {
        upstream::give_back(backend, upstream, tried.owner);
    }
    Ok(if response.client_keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    })
}

/// Answers for the backend (the error is counted already); keeps the client connection when
/// it can.
async fn reply_error(
    context: &ClientContext,
    client: &mut TcpStream,
    kind: ErrorKind,
    head: &RequestHead,
    outcome: &mut Outcome,
) -> io::Result<Next> {
    let (status, text) = attempt::answer(kind);
    // A request body we did not forward would be read as the next request: close instead.
    let keep_alive = head.keep_alive && head.body == Framing::Empty;
    outcome.status = status.as_u16();
    outcome.bytes_out = text.len() as u64;
    let answer = Answer {
        status,
        location: None,
        text,
        request_id: id_for_client(head),
        retry_after: attempt::retry_after(kind),
    };
    let patience = context.shared.settings.timeouts.idle;
    write_answer(client, answer, keep_alive, patience).await?;
    Ok(if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    })
}

async fn write_error(
    client: &mut TcpStream,
    status: StatusCode,
    text: &str,
    keep_alive: bool,
    patience: Duration,
) -> io::Result<()> {
    let answer = Answer {
        status,
        location: None,
        text,
        request_id: None,
        retry_after: None,
    };
    write_answer(client, answer, keep_alive, patience).await
}

/// A response the LB writes itself.
struct Answer<'a> {
    status: StatusCode,
    /// A redirect's target.
    location: Option<&'a str>,
    text: &'a str,
    /// The request's ID, when the client is to be told it.
    request_id: Option<&'a str>,
    /// When to come back, in seconds.
    retry_after: Option<&'a str>,
}

async fn write_answer(
    client: &mut TcpStream,
    answer: Answer<'_>,
    keep_alive: bool,
    patience: Duration,
) -> io::Result<()> {
    let Answer {
        status,
        location,
        text,
        request_id,
        retry_after,
    } = answer;
    let connection = if keep_alive {
        ""
    } else {
        "connection: close\r\n"
    };
    let location = location.map_or_else(String::new, |to| format!("location: {to}\r\n"));
    let id = request_id.map_or_else(String::new, |id| format!("x-request-id: {id}\r\n"));
    let retry = retry_after.map_or_else(String::new, |s| format!("retry-after: {s}\r\n"));
    let response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{location}{id}{retry}{connection}\r\n{text}",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        text.len()
    );
    write_within(client, response.as_bytes(), patience).await?;
    if !keep_alive {
        let _ = client.shutdown().await;
    }
    Ok(())
}

/// The same request, but the client connection closes after its response (the client's body
/// was not all read, so what follows it on the connection cannot be trusted as a request).
fn closing(head: &RequestHead) -> RequestHead {
    RequestHead {
        keep_alive: false,
        upstream: BytesMut::new(),
        routed: head.routed.clone(),
        facts: head.facts.clone(),
        snapshot: Arc::clone(&head.snapshot),
        ..*head
    }
}

/// Closes our side and reads what the client still sends for a moment, so that the kernel
/// does not answer its unread body with a reset that could destroy the response it just got.
async fn linger(client: &mut TcpStream) {
    let _ = client.shutdown().await;
    let mut sink = [0u8; 16 * 1024];
    let mut drained = 0usize;
    let until = tokio::time::Instant::now() + LINGER;
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(until, client.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a connection's task holds while it waits for a request is its serving future: the
    /// exchange is boxed apart, so the wait is small (it was 18 KiB in a debug build before).
    #[tokio::test]
    async fn an_idle_connection_is_a_small_future() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let client = TcpStream::connect(address).await.expect("connect");
        let settings = crate::settings::Settings::new(Vec::new(), Vec::new());
        let shared = Arc::new(crate::state::Shared::new(settings).expect("state"));
        let context = Arc::new(ClientContext {
            client_value: crate::headers::client_value(address.ip()),
            shared,
            listener: 0,
            client: address,
            local: address,
            scheme: "http",
            tls: None,
            owns_connections: std::sync::atomic::AtomicBool::new(false),
        });
        let (_stop, shutdown) = watch::channel(false);
        let serving = serve(context, client, BytesMut::new(), shutdown);
        let size = std::mem::size_of_val(&serving);
        assert!(size <= 2048, "{size} bytes");
    }
}
