//! The request path for HTTP/2 clients ([`crate::http2`]), HTTP/1.1 over TLS (hyper's server)
//! and every client of a pool whose backends speak HTTP/2: key → pick → backend connection
//! (hyper's HTTP/1.1 client, pooled, or a stream on a shared HTTP/2 connection) → response,
//! following the one request policy in [`crate::attempt`]. (Other plain-text HTTP/1.1 clients
//! take the fast path in [`crate::h1`].)

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::access_log::{Line, RequestFacts};
use crate::attempt::{self, Attempt, ClientContext, Try};
use crate::key::Affinity;
use crate::metrics::ErrorKind;
use crate::protection::Held;
use crate::state::Shared;
use crate::state::{BackendState, PoolState, RequestLine, Routed};
use crate::upstream::{self, H2Stream, Negotiated, Sender};
use crate::{headers, request_id};
use ballast_config::UpstreamProtocol;

/// The body of a response to a client: a backend's, streamed, or one the LB wrote.
pub(crate) type ProxyBody = Either<Forwarded, Full<Bytes>>;

/// A client's request body, from whichever server read the request, counted for the access
/// log while it is on.
#[derive(Debug)]
pub(crate) struct ClientBody {
    source: BodySource,
    received: Option<Arc<AtomicU64>>,
}

#[derive(Debug)]
enum BodySource {
    Http1(Incoming),
    Http2(crate::http2::RecvBody),
}

impl ClientBody {
    pub(crate) fn http1(body: Incoming) -> Self {
        Self {
            source: BodySource::Http1(body),
            received: None,
        }
    }

    pub(crate) fn http2(body: crate::http2::RecvBody) -> Self {
        Self {
            source: BodySource::Http2(body),
            received: None,
        }
    }

    /// From now on, the body's data bytes are added to the returned count as they arrive.
    fn counted(&mut self) -> Arc<AtomicU64> {
        Arc::clone(self.received.get_or_insert_with(Arc::default))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.source {
            BodySource::Http1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            BodySource::Http2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        };
        if let (Some(received), Poll::Ready(Some(Ok(frame)))) = (&this.received, &polled)
            && let Some(data) = frame.data_ref()
        {
            received.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            BodySource::Http1(body) => body.is_end_stream(),
            BodySource::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            BodySource::Http1(body) => body.size_hint(),
            BodySource::Http2(body) => body.size_hint(),
        }
    }
}

/// hyper's server calls a service; this one cannot fail (every failure is a response).
pub(crate) async fn service(
    context: Arc<ClientContext>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    Ok(handle(context, request.map(ClientBody::http1)).await)
}

/// Proxies one request.
pub(crate) async fn handle(
    context: Arc<ClientContext>,
    mut request: Request<ClientBody>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let snapshot = context.shared.snapshot.load_full();
    let mut logged = Logged::of(&context, &request, started);
    let (routed, route) = {
        let hosts = request.headers().get_all(header::HOST);
        let checked = headers::backend_host(
            request.version() != http::Version::HTTP_10,
            hosts.iter().next().map(HeaderValue::as_bytes),
            hosts.iter().count(),
            request.uri().authority().map(|a| a.as_str().as_bytes()),
        );
        let host = match checked {
            Ok(host) => host,
            Err(error) => {
                tracing::debug!(client = %context.client, %error, "request refused");
                if let Some(pool) = snapshot.for_listener(context.listener) {
                    pool.state.counters.error(ErrorKind::BadRequest);
                }
                return answered(logged, status_response(ErrorKind::BadRequest));
            }
        };
        if let (Some(tls), Some(host)) = (&context.tls, host)
            && tls.misdirected(host)
        {
            context
                .shared
                .count_error(context.listener, ErrorKind::Misdirected);
            return answered(logged, status_response(ErrorKind::Misdirected));
        }
        let line = RequestLine {
            scheme: context.scheme,
            method: request.method().as_str(),
            host,
            target: request.uri().path_and_query().map_or("/", |pq| pq.as_str()),
        };
        let headers = request.headers();
        snapshot.route(context.listener, line, context.client.ip(), |name| {
            headers.get(name).map(HeaderValue::as_bytes)
        })
    };
    if let Some(logged) = &mut logged {
        logged.route = snapshot
            .route_table(context.listener)
            .zip(route)
            .map(|(table, position)| (table.to_owned(), position));
    }
    let settled =
        crate::rate_limit::settle(&context.shared, &snapshot, context.listener, route, &routed)
            .await;
    let pool = match settled.unwrap_or(routed) {
        Routed::Pool(pool) => &*snapshot.pools[pool],
        answer => return answered(logged, routed_response(&answer)),
    };
    if let Some(logged) = &mut logged {
        logged.pool = Some(pool.state.name.clone());
    }

    let protocol = pool.state.protocol;
    // An HTTP/1.1 upgrade has no HTTP/2 form: to an HTTP/2 backend it is a plain request, and
    // to an `auto` pool's it becomes one once the backend has chosen HTTP/2.
    let upgrade = headers::is_upgrade(request.headers())
        && matches!(protocol, UpstreamProtocol::Http1 | UpstreamProtocol::Auto);
    let mut client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, mut body) = request.into_parts();
    if let Some(logged) = &mut logged {
        logged.received = Some(body.counted());
    }
    let affinity = Affinity::of_request(pool, &parts, context.client.ip());
    let trailers = headers::accepts_trailers(&parts.headers);
    headers::to_backend(&mut parts, &context.client_value, context.scheme, upgrade);
    let scheme = if pool.state.tls.is_some() {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    };
    if let Some(id) = logged.as_ref().map(|l| l.facts.request_id())
        && let Ok(id) = HeaderValue::from_str(id)
    {
        parts.headers.insert(request_id::HEADER, id);
    }

    let mut body = (!body.is_end_stream()).then_some(body);
    let replayable =
        body.is_none() && !upgrade && attempt::is_idempotent(parts.method.as_str().as_bytes());
    let limits = snapshot.limits(context.listener, route, &pool.state);
    let mut attempt = Attempt::new(&context, pool, limits, affinity, replayable, started);
    let mut parts = Some(parts);
    while let Some((tried, mut connection)) = next_connection(&mut attempt, protocol).await {
        if let Some(logged) = &mut logged {
            logged.retries = attempt.retries();
            logged.backend = Some(tried.backend.address);
        }
        // The head is kept for another try unless this is the last.
        let head = if attempt.is_last() {
            parts.take()
        } else {
            parts.clone()
        };
        let Some(mut head) = head else { break };
        if matches!(connection, Connection::Http2(_)) {
            headers::for_http2(&mut head, scheme.clone(), trailers);
            if client_upgrade.take().is_some() {
                headers::without_upgrade(&mut head.headers);
            }
        }
        let upstream_body = match body.take() {
            Some(incoming) => Either::Left(incoming),
            None => Either::Right(Empty::new()),
        };
        let exchange = tokio::time::timeout(
            attempt.response_timeout(),
            connection.send(Request::from_parts(head, upstream_body)),
        )
        .await;
        match exchange {
            Err(_) => attempt.timed_out(&tried),
            Ok(Err(error)) => attempt.exchange_failed(&tried, &error, true),
            Ok(Ok(response)) => {
                if let Some(logged) = &mut logged {
                    logged.first_byte = Some(started.elapsed());
                }
                let backend = Backend {
                    tried,
                    connection,
                    response,
                };
                return respond(&attempt, backend, client_upgrade, logged);
            }
        }
    }
    if let Some(logged) = &mut logged {
        logged.retries = attempt.retries();
    }
    answered(logged, status_response(attempt.give_up()))
}

/// A connection to the next backend the attempt tries, in the pool's protocol.
async fn next_connection<'a>(
    attempt: &mut Attempt<'a>,
    protocol: UpstreamProtocol,
) -> Option<(Try<'a>, Connection)> {
    match protocol {
        UpstreamProtocol::Http1 => attempt
            .next::<Sender>()
            .await
            .map(|(tried, sender)| (tried, Connection::Http1(sender))),
        UpstreamProtocol::H2c | UpstreamProtocol::H2 => attempt
            .next::<H2Stream>()
            .await
            .map(|(tried, stream)| (tried, Connection::Http2(stream))),
        UpstreamProtocol::Auto => attempt
            .next::<Negotiated>()
            .await
            .map(|(tried, c)| match c {
                Negotiated::Http1(sender) => (tried, Connection::Http1(sender)),
                Negotiated::Http2(stream) => (tried, Connection::Http2(stream)),
            }),
    }
}

/// What a request holds of its backend connection until the response has been read.
#[derive(Debug)]
enum Connection {
    /// An HTTP/1.1 connection of its own, back to the worker's cache after a whole response.
    Http1(Sender),
    /// A stream on a shared HTTP/2 connection.
    Http2(H2Stream),
}

impl Connection {
    async fn send(
        &mut self,
        request: Request<upstream::UpstreamBody>,
    ) -> hyper::Result<Response<Incoming>> {
        match self {
            Self::Http1(sender) => sender.send_request(request).await,
            Self::Http2(stream) => stream.sender.send_request(request).await,
        }
    }
}

/// A backend's response, with the try it answers and the connection it came on.
struct Backend<'a> {
    tried: Try<'a>,
    connection: Connection,
    response: Response<Incoming>,
}

fn respond(
    attempt: &Attempt<'_>,
    backend: Backend<'_>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    mut logged: Option<Box<Logged>>,
) -> Response<ProxyBody> {
    let Backend {
        tried,
        connection,
        mut response,
    } = backend;
    // hyper's HTTP/1.1 server writes what it is given; an HTTP/2 backend's answer is sent on
    // in the client's protocol.
    *response.version_mut() = http::Version::HTTP_11;
    let status = response.status();
    attempt.responded(&tried, status.as_u16());
    if let Some(logged) = &mut logged {
        logged.status = status.as_u16();
        if let Some(id) = logged.id_for_client() {
            response.headers_mut().insert(request_id::HEADER, id);
        }
    }
    if let Some(cookie) = attempt.sticky_cookie(&tried) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }

    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let backend_upgrade = hyper::upgrade::on(&mut response);
            let idle = attempt.context().shared.settings.timeouts.idle;
            tokio::spawn(tunnel(client_upgrade, backend_upgrade, tried.held, idle));
        }
        attempt.finished();
        if let Some(logged) = logged {
            logged.write(0);
        }
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, Either::Right(Full::new(Bytes::new())));
    }

    headers::strip_hop_by_hop(response.headers_mut(), false);
    let grpc = headers::is_grpc(response.headers());
    response.map(|inner| {
        Either::Left(Forwarded {
            inner,
            grpc,
            ended: false,
            finish: Some(Finish {
                connection,
                pool: Arc::clone(attempt.pool()),
                backend: Arc::clone(tried.backend),
                owner: tried.owner,
                _held: tried.held,
                started: attempt.started(),
                logged,
                sent: 0,
            }),
        })
    })
}

/// Copies bytes both ways between an upgraded client connection and its backend, until either
/// closes or nothing moves for `idle`.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    _held: Held,
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

/// A request's access log line in the making (while request IDs are on), written when its
/// response has been sent, or when it is dropped unwritten: the client went away (an HTTP/2
/// stream reset, a closed connection) before its response, which nginx logs as 499.
#[derive(Debug)]
struct Logged {
    /// Not written yet.
    pending: bool,
    shared: Arc<Shared>,
    client: std::net::SocketAddr,
    facts: RequestFacts,
    protocol: &'static str,
    started: Instant,
    status: u16,
    received: Option<Arc<AtomicU64>>,
    first_byte: Option<std::time::Duration>,
    backend: Option<std::net::SocketAddr>,
    pool: Option<String>,
    route: Option<(String, u32)>,
    retries: u32,
}

impl Logged {
    fn of(
        context: &ClientContext,
        request: &Request<ClientBody>,
        started: Instant,
    ) -> Option<Box<Self>> {
        let shared = &context.shared;
        if !shared.settings.request_ids() {
            return None;
        }
        let headers = request.headers();
        let header = |name| headers.get(name).map_or(&b""[..], HeaderValue::as_bytes);
        let host = request.uri().authority().map_or_else(
            || header(header::HOST.as_str()),
            |authority| authority.as_str().as_bytes(),
        );
        let id = request_id::of_request(headers.get(request_id::HEADER).map(HeaderValue::as_bytes));
        let facts = RequestFacts::new(
            request.method().as_str(),
            host,
            request.uri().path_and_query().map_or("/", |pq| pq.as_str()),
            header(header::REFERER.as_str()),
            header(header::USER_AGENT.as_str()),
            id.as_str(),
        );
        let protocol = match request.version() {
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        Some(Box::new(Self {
            pending: true,
            shared: Arc::clone(shared),
            client: context.client,
            facts,
            protocol,
            started,
            status: 0,
            received: None,
            first_byte: None,
            backend: None,
            pool: None,
            route: None,
            retries: 0,
        }))
    }

    /// The request's ID as a header value, when the client is to be told it.
    fn id_for_client(&self) -> Option<HeaderValue> {
        if !self.shared.settings.request_id_header {
            return None;
        }
        HeaderValue::from_str(self.facts.request_id()).ok()
    }

    /// Writes the line, `sent` being the response body's bytes.
    fn write(mut self: Box<Self>, sent: u64) {
        self.record(sent);
    }

    fn record(&mut self, sent: u64) {
        self.pending = false;
        let Some(log) = &self.shared.access_log else {
            return;
        };
        let at = Instant::now();
        log.record(&Line {
            client: self.client,
            request: &self.facts,
            protocol: self.protocol,
            status: self.status,
            bytes_in: self
                .received
                .as_ref()
                .map_or(0, |received| received.load(Ordering::Relaxed)),
            bytes_out: sent,
            at,
            total: at.duration_since(self.started),
            first_byte: self.first_byte,
            backend: self.backend,
            pool: self.pool.as_deref(),
            route: self.route.as_ref().map(|(table, at)| (table.as_str(), *at)),
            retries: self.retries,
        });
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if self.pending {
            // nginx's "client closed request".
            self.status = 499;
            self.record(0);
        }
    }
}

/// A response the LB wrote itself, logged (with the request's ID for the client, if wanted).
fn answered(logged: Option<Box<Logged>>, mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    if let Some(mut logged) = logged {
        logged.status = response.status().as_u16();
        if let Some(id) = logged.id_for_client() {
            response.headers_mut().insert(request_id::HEADER, id);
        }
        logged.write(response.body().size_hint().exact().unwrap_or(0));
    }
    response
}

/// The response for an error the LB answers itself.
fn status_response(kind: ErrorKind) -> Response<ProxyBody> {
    let (status, text) = attempt::answer(kind);
    let retry_after = attempt::retry_after(kind);
    text_response(
        status,
        Bytes::from_static(text.as_bytes()),
        None,
        retry_after,
    )
}

/// The response for a request that goes to no pool (see [`attempt::routed_answer`]).
fn routed_response(routed: &Routed) -> Response<ProxyBody> {
    let answer = attempt::routed_answer(routed);
    let text = Bytes::from(answer.text.into_owned());
    text_response(
        answer.status,
        text,
        answer.location,
        answer.retry_after.as_deref(),
    )
}

/// A plain-text response the LB writes itself, with a `Location` for a redirect and a
/// `Retry-After` for an answer that asks the client to come back.
fn text_response(
    status: StatusCode,
    text: Bytes,
    location: Option<&str>,
    retry_after: Option<&str>,
) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(text)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        headers.insert(header::LOCATION, location);
    }
    if let Some(seconds) = retry_after.and_then(|s| HeaderValue::from_str(s).ok()) {
        headers.insert(header::RETRY_AFTER, seconds);
    }
    response
}

/// A backend's response body on its way to the client. When it has been read to the end, its
/// connection goes back to the worker's cache; if the client goes away first, the connection is
/// closed instead (it still carries the rest of the body).
///
/// A gRPC response the backend breaks off ends with `grpc-status: 14` (UNAVAILABLE) in its
/// trailers, as gRPC's own proxies end it, so the client's call fails at once with a status it
/// may retry rather than with an internal error.
#[derive(Debug)]
pub(crate) struct Forwarded {
    inner: Incoming,
    grpc: bool,
    /// The body has ended (its trailers sent), whatever the backend does next.
    ended: bool,
    finish: Option<Finish>,
}

#[derive(Debug)]
struct Finish {
    connection: Connection,
    /// The client the connection is for alone, if it is.
    owner: Option<std::net::SocketAddr>,
    pool: Arc<PoolState>,
    backend: Arc<BackendState>,
    _held: Held,
    started: Instant,
    logged: Option<Box<Logged>>,
    /// Body bytes sent on to the client.
    sent: u64,
}

impl Forwarded {
    fn complete(&mut self, reusable: bool) {
        if let Some(finish) = self.finish.take() {
            attempt::observe(&finish.pool, finish.started);
            if let Some(logged) = finish.logged {
                logged.write(finish.sent);
            }
            if let (true, Connection::Http1(sender)) = (reusable, finish.connection) {
                upstream::give_back::<Sender>(&finish.backend, sender, finish.owner);
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
        if self.ended {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.complete(true),
            Poll::Ready(Some(Err(error))) => {
                self.complete(false);
                if self.grpc {
                    tracing::debug!(%error, "backend broke off a gRPC response");
                    self.ended = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(headers::grpc_unavailable(
                        "the backend connection was lost",
                    )))));
                }
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(finish), Some(data)) = (&mut self.finish, frame.data_ref()) {
                    finish.sent += data.len() as u64;
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
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

#[cfg(test)]
mod tests {
    /// The size of the futures an async fn of two arguments returns.
    fn future_size<A, B, F: std::future::Future>(_: impl Fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every HTTP/2 stream and every request on hyper's path moves its exchange's future into
    /// a task or a box: what only some requests need (a new backend connection, a fleet-wide
    /// rate limit's Redis call) is boxed where it is needed. Inline, the exchange was 9.6 KB
    /// and its copies 6% of a profile under h2load.
    #[test]
    fn an_exchange_carries_no_connect_or_redis_state() {
        let exchange = future_size(super::handle);
        assert!(exchange <= 3072, "{exchange} bytes");
        let connection = future_size(super::next_connection);
        assert!(connection <= 1024, "{connection} bytes");
    }
}
