//! The request path for HTTP/2 clients ([`crate::http2`]) and HTTP/1.1 over TLS (hyper's
//! server): key → pick → pooled backend connection (hyper's HTTP/1.1 client) → response,
//! following the one request policy in [`crate::attempt`]. (Plain-text HTTP/1.1 clients take
//! the fast path in [`crate::h1`].)

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use ballast_balance::InFlight;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::attempt::{self, Attempt, ClientContext, Try};
use crate::headers;
use crate::metrics::ErrorKind;
use crate::state::{BackendState, PoolState, RequestLine, Routed};
use crate::upstream::{self, Sender};

/// The body of a response to a client: a backend's, streamed, or one the LB wrote.
pub(crate) type ProxyBody = Either<Forwarded, Full<Bytes>>;

/// A client's request body, from whichever server read the request.
#[derive(Debug)]
pub(crate) enum ClientBody {
    Http1(Incoming),
    Http2(crate::http2::RecvBody),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Http1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Self::Http2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Http1(body) => body.is_end_stream(),
            Self::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Http1(body) => body.size_hint(),
            Self::Http2(body) => body.size_hint(),
        }
    }
}

/// hyper's server calls a service; this one cannot fail (every failure is a response).
pub(crate) async fn service(
    context: Arc<ClientContext>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    Ok(handle(context, request.map(ClientBody::Http1)).await)
}

/// Proxies one request.
pub(crate) async fn handle(
    context: Arc<ClientContext>,
    mut request: Request<ClientBody>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let snapshot = context.shared.snapshot.load_full();
    let routed = {
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
                return status_response(ErrorKind::BadRequest);
            }
        };
        let line = RequestLine {
            scheme: context.scheme,
            method: request.method().as_str(),
            host,
            target: request.uri().path_and_query().map_or("/", |pq| pq.as_str()),
        };
        let headers = request.headers();
        snapshot.route(context.listener, line, |name| {
            headers.get(name).map(HeaderValue::as_bytes)
        })
    };
    let pool = match routed {
        Routed::Pool(pool) => &*snapshot.pools[pool],
        answer => return routed_response(&answer),
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
        body.is_none() && !upgrade && attempt::is_idempotent(parts.method.as_str().as_bytes());
    let mut attempt = Attempt::new(&context, pool, key, replayable, started);
    let mut parts = Some(parts);
    while let Some((tried, mut sender)) = attempt.next::<Sender>().await {
        // The head is kept for another try unless this is the last.
        let head = if attempt.is_last() {
            parts.take()
        } else {
            parts.clone()
        };
        let Some(head) = head else { break };
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
            Err(_) => return status_response(attempt.timed_out(&tried)),
            Ok(Err(error)) => attempt.exchange_failed(&tried, &error, true),
            Ok(Ok(response)) => {
                return respond(&attempt, tried, response, sender, client_upgrade);
            }
        }
    }
    status_response(attempt.give_up())
}

fn respond(
    attempt: &Attempt<'_>,
    tried: Try<'_>,
    mut response: Response<Incoming>,
    sender: Sender,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ProxyBody> {
    let status = response.status();
    attempt.responded(&tried, status.as_u16());

    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let backend_upgrade = hyper::upgrade::on(&mut response);
            let idle = attempt.context().shared.settings.timeouts.idle;
            tokio::spawn(tunnel(
                client_upgrade,
                backend_upgrade,
                tried.in_flight,
                idle,
            ));
        }
        attempt.finished();
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, Either::Right(Full::new(Bytes::new())));
    }

    headers::strip_hop_by_hop(response.headers_mut(), false);
    response.map(|inner| {
        Either::Left(Forwarded {
            inner,
            finish: Some(Finish {
                sender,
                pool: Arc::clone(attempt.pool()),
                backend: Arc::clone(tried.backend),
                _in_flight: tried.in_flight,
                started: attempt.started(),
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

/// The response for an error the LB answers itself.
fn status_response(kind: ErrorKind) -> Response<ProxyBody> {
    let (status, text) = attempt::answer(kind);
    text_response(status, Bytes::from_static(text.as_bytes()), None)
}

/// The response for a request that goes to no pool (see [`attempt::routed_answer`]).
fn routed_response(routed: &Routed) -> Response<ProxyBody> {
    let (status, text, location) = attempt::routed_answer(routed);
    text_response(status, Bytes::from(text.into_owned()), location)
}

/// A plain-text response the LB writes itself, with a `Location` for a redirect.
fn text_response(status: StatusCode, text: Bytes, location: Option<&str>) -> Response<ProxyBody> {
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
            attempt::observe(&finish.pool, finish.started);
            if reusable {
                upstream::give_back::<Sender>(
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
