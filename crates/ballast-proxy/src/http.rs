//! The HTTP request path for HTTP/2 clients and TLS listeners, on hyper: key → pick → pooled
//! backend connection → response, with retries on another backend, passive outlier accounting,
//! and the errors a client sees when no backend can answer. (Plain-text HTTP/1.1 clients take the
//! fast path in [`crate::h1`], which follows the same rules.)
//!
//! What the client gets when the LB answers itself:
//! - 503 when no backend took the request: none takes traffic, or none accepted a connection
//!   within the tries;
//! - 502 when a backend accepted the request and then broke the exchange (reset, closed, or sent
//!   an invalid response), after retries;
//! - 504 when a backend did not start its response within the pool's response timeout.
//!
//! A request is retried on another backend only when replaying it is safe: an idempotent method
//! (RFC 9110 §9.2.2), no request body, and no response byte received.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use ballast_balance::InFlight;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::headers;
use crate::metrics::ErrorKind;
use crate::state::{BackendState, PoolState, Shared};
use crate::upstream::{self, Sender};

/// The body of a response to a client: a backend's, streamed, or one the LB wrote.
pub(crate) type ProxyBody = Either<Forwarded, Full<Bytes>>;

/// Per client connection: what every request on it shares.
#[derive(Debug)]
pub(crate) struct ClientContext {
    /// The server's shared state.
    pub shared: Arc<Shared>,
    /// The listener the client came in on (which names the pool it is served by).
    pub listener: usize,
    /// The client's address.
    pub client: SocketAddr,
    /// The client's address as `X-Forwarded-For` writes it, made once per connection.
    pub client_value: HeaderValue,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub scheme: &'static str,
}

/// The most tries one request makes (the first plus up to 10 retries, the settings' maximum).
const MAX_TRIES: usize = 11;

/// How the last try failed, which decides the status when every try failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    NoBackend,
    Connect,
    Exchange,
}

/// Proxies one request.
pub(crate) async fn handle(
    context: Arc<ClientContext>,
    mut request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let shared = &context.shared;
    {
        let hosts = request.headers().get_all(header::HOST);
        let checked = headers::backend_host(
            request.version() != http::Version::HTTP_10,
            hosts.iter().next().map(HeaderValue::as_bytes),
            hosts.iter().count(),
            request.uri().authority().map(|a| a.as_str().as_bytes()),
        );
        if let Err(error) = checked {
            tracing::debug!(client = %context.client, %error, "request refused");
            shared.count_error(context.listener, ErrorKind::BadRequest);
            return Ok(status_response(ErrorKind::BadRequest));
        }
    }
    let snapshot = shared.snapshot.load_full();
    let Some(pool) = snapshot.for_listener(context.listener) else {
        return Ok(status_response(ErrorKind::NoBackend));
    };

    let upgrade = headers::is_upgrade(request.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let key = if pool.uses_key {
        pool.state.hash_key.of_request(&parts, context.client.ip())
    } else {
        0
    };
    headers::to_backend(&mut parts, &context.client_value, context.scheme, upgrade);

    let mut body = (!body.is_end_stream()).then_some(body);
    let replayable =
        body.is_none() && !upgrade && is_idempotent(&parts.method) && pool.state.retries > 0;
    let tries = if replayable {
        1 + pool.state.retries as usize
    } else {
        1
    }
    .min(MAX_TRIES);

    let mut tried = [usize::MAX; MAX_TRIES];
    let mut parts = Some(parts);
    let mut failure = Failure::NoBackend;
    for attempt in 0..tries {
        let Some(index) = pool.choose(key, &tried[..attempt]) else {
            break;
        };
        tried[attempt] = index;
        let backend = &pool.state.backends[index];
        let in_flight = backend.balance.load().start();

        let mut sender = match backend_connection(shared, &pool.state, backend).await {
            Ok(sender) => sender,
            Err(error) => {
                tracing::debug!(backend = %backend.address, %error, "backend connect failed");
                shared.failure(&pool.state, index);
                failure = Failure::Connect;
                continue;
            }
        };

        let last = attempt + 1 == tries;
        let head = match (last, parts.take()) {
            (true, Some(head)) => head,
            (false, Some(head)) => {
                let copy = head.clone();
                parts = Some(head);
                copy
            }
            (_, None) => break,
        };
        let upstream_body = match body.take() {
            Some(incoming) => Either::Left(incoming),
            None => Either::Right(Empty::new()),
        };
        let exchange = tokio::time::timeout(
            pool.state.response_timeout,
            sender.send_request(Request::from_parts(head, upstream_body)),
        )
        .await;
        match exchange {
            Err(_) => {
                shared.failure(&pool.state, index);
                return Ok(error(&pool.state, ErrorKind::Timeout, started));
            }
            Ok(Err(error)) => {
                tracing::debug!(backend = %backend.address, %error, "backend exchange failed");
                shared.failure(&pool.state, index);
                failure = Failure::Exchange;
            }
            Ok(Ok(response)) => {
                return Ok(respond(
                    &context,
                    &pool.state,
                    index,
                    response,
                    sender,
                    in_flight,
                    client_upgrade,
                    started,
                ));
            }
        }
    }
    let kind = match failure {
        Failure::NoBackend | Failure::Connect => ErrorKind::NoBackend,
        Failure::Exchange => ErrorKind::BadGateway,
    };
    Ok(error(&pool.state, kind, started))
}

/// A pooled connection that is ready, or a new one.
async fn backend_connection(
    shared: &Shared,
    pool: &PoolState,
    backend: &BackendState,
) -> Result<Sender, upstream::ConnectError> {
    let timeouts = &shared.settings.timeouts;
    let pooled = &backend.counters.pooled_now;
    while let Some(mut sender) = upstream::take(backend.slot, timeouts.idle, pooled) {
        // A connection just given back may still be finishing its last exchange.
        if sender.ready().await.is_ok() {
            return Ok(sender);
        }
    }
    upstream::connect(backend.address, pool.connect_timeout).await
}

#[allow(clippy::too_many_arguments)]
fn respond(
    context: &ClientContext,
    pool: &Arc<PoolState>,
    index: usize,
    mut response: Response<Incoming>,
    sender: Sender,
    in_flight: InFlight,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    started: Instant,
) -> Response<ProxyBody> {
    let backend = &pool.backends[index];
    let status = response.status();
    if status.is_server_error() {
        context.shared.failure(pool, index);
    } else {
        backend.outlier.success();
    }
    backend.counters.response(status.as_u16());

    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let backend_upgrade = hyper::upgrade::on(&mut response);
            let idle = context.shared.settings.timeouts.idle;
            tokio::spawn(tunnel(client_upgrade, backend_upgrade, in_flight, idle));
        }
        pool.counters.observe(started.elapsed().as_secs_f64());
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, Either::Right(Full::new(Bytes::new())));
    }

    headers::strip_hop_by_hop(response.headers_mut(), false);
    response.map(|inner| {
        Either::Left(Forwarded {
            inner,
            finish: Some(Finish {
                sender,
                pool: Arc::clone(pool),
                backend: Arc::clone(backend),
                _in_flight: in_flight,
                started,
            }),
        })
    })
}

/// Copies bytes both ways between an upgraded client connection and its backend, until either
/// closes or nothing moves for `idle`.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    _in_flight: InFlight,
    idle: std::time::Duration,
) {
    match tokio::try_join!(client, backend) {
        Ok((client, backend)) => {
            let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
            if let Err(error) = crate::watchdog::tunnel(&mut client, &mut backend, idle).await {
                tracing::debug!(%error, "upgraded connection ended");
            }
        }
        Err(error) => tracing::debug!(%error, "upgrade failed"),
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A response the LB writes itself, counted in the pool's error metrics.
fn error(pool: &PoolState, kind: ErrorKind, started: Instant) -> Response<ProxyBody> {
    pool.counters.error(kind);
    pool.counters.observe(started.elapsed().as_secs_f64());
    status_response(kind)
}

/// The response for an error the LB answers itself.
fn status_response(kind: ErrorKind) -> Response<ProxyBody> {
    let (status, text) = match kind {
        ErrorKind::NoBackend => (StatusCode::SERVICE_UNAVAILABLE, "no backend available\n"),
        ErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "backend timed out\n"),
        ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, "bad request\n"),
        _ => (StatusCode::BAD_GATEWAY, "backend failed\n"),
    };
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A backend's response body on its way to the client. When it has been read to the end, its
/// connection goes back to the worker's cache; if the client goes away first, the connection is
/// closed instead (it still carries the rest of the body).
#[derive(Debug)]
pub(crate) struct Forwarded {
    inner: Incoming,
    finish: Option<Finish>,
}

#[derive(Debug)]
struct Finish {
    sender: Sender,
    pool: Arc<PoolState>,
    backend: Arc<BackendState>,
    _in_flight: InFlight,
    started: Instant,
}

impl Forwarded {
    fn complete(&mut self, reusable: bool) {
        if let Some(finish) = self.finish.take() {
            finish
                .pool
                .counters
                .observe(finish.started.elapsed().as_secs_f64());
            if reusable {
                upstream::give_back(
                    finish.backend.slot,
                    finish.sender,
                    &finish.backend.counters.pooled_now,
                );
            }
        }
    }
}

impl Body for Forwarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.complete(true),
            Poll::Ready(Some(Err(_))) => self.complete(false),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Forwarded {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304, Content-Length: 0) may never be polled.
        let done = self.inner.is_end_stream();
        self.complete(done);
    }
}
