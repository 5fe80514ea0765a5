//! One request's policy, whichever path carries it. The HTTP/1.1 fast path ([`crate::h1`]) and
//! the hyper path for HTTP/2 and TLS ([`crate::hyper_path`]) move bytes differently, but both
//! proxy through an [`Attempt`], so the rules below exist once.
//!
//! What the client gets when the LB answers itself ([`answer`]):
//! - 503 when no backend took the request: none takes traffic, or none accepted a connection
//!   within the tries;
//! - 502 when a backend accepted the request and then broke the exchange (reset, closed, or sent
//!   an invalid response), after retries;
//! - 504 when a backend did not start its response within the pool's response timeout, after
//!   retries.
//!
//! A request is retried on another backend only when replaying it is safe: an idempotent method
//! (RFC 9110 §9.2.2), no request body, no upgrade, and no response byte received. That includes
//! a backend that took the request and then went silent (a host that vanished drops packets
//! without a reset): each try waits up to the response timeout, as Envoy's per-try timeout and
//! HAProxy's `retry-on response-timeout` do, since the request is safe to act on twice.

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode};

use crate::key::Affinity;
use crate::metrics::ErrorKind;
use crate::protection::{self, Held, Refusal};
use crate::state::{BackendState, PoolSnapshot, PoolState, Routed, Shared};
use crate::upstream::{self, Dial, Upstream};

/// Per client connection: what every request on it shares.
#[derive(Debug)]
pub(crate) struct ClientContext {
    pub shared: Arc<Shared>,
    /// The listener the client came in on (which names the pool it is served by).
    pub listener: usize,
    pub client: SocketAddr,
    /// The address the client connected to (a PROXY header's destination).
    pub local: SocketAddr,
    /// The client's address as `X-Forwarded-For` writes it, made once per connection.
    pub client_value: HeaderValue,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub scheme: &'static str,
    /// Over TLS: the certificate the connection was made with.
    pub tls: Option<crate::tls::Served>,
    /// Backend connections were opened for this client alone (with a PROXY header naming it):
    /// they are closed with the client's connection.
    pub owns_connections: AtomicBool,
}

impl Drop for ClientContext {
    fn drop(&mut self) {
        if self.owns_connections.load(Ordering::Relaxed) {
            let backends = self.shared.backends();
            upstream::release(self.client, |slot| {
                backends
                    .iter()
                    .find(|b| b.slot == slot)
                    .map(|b| &*b.counters.pooled_now)
            });
        }
    }
}

/// The most tries one request makes (the first plus up to 10 retries, the settings' maximum).
const MAX_TRIES: usize = 11;

/// Whether a request with this method may be sent again after a backend failed it.
pub(crate) fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

/// The status and body of a response the LB writes itself.
pub(crate) fn answer(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::NoBackend => (StatusCode::SERVICE_UNAVAILABLE, "no backend available\n"),
        ErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "backend timed out\n"),
        ErrorKind::BadGateway => (StatusCode::BAD_GATEWAY, "backend failed\n"),
        ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, "bad request\n"),
        ErrorKind::HeadersTooLarge => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large\n",
        ),
        ErrorKind::HeaderTimeout => (StatusCode::REQUEST_TIMEOUT, "request timed out\n"),
        ErrorKind::Misdirected => (
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected request: connect again for this host\n",
        ),
        ErrorKind::Overloaded => (
            StatusCode::SERVICE_UNAVAILABLE,
            "backends at their limit: retry later\n",
        ),
    }
}

/// The `Retry-After` (seconds) of an answer that asks the client to come back.
pub(crate) fn retry_after(kind: ErrorKind) -> Option<&'static str> {
    (kind == ErrorKind::Overloaded).then_some("1")
}

/// What the LB answers for a request that goes to no pool.
#[derive(Debug)]
pub(crate) struct RoutedAnswer<'a> {
    pub status: StatusCode,
    /// The body.
    pub text: std::borrow::Cow<'static, str>,
    /// A redirect's `Location`.
    pub location: Option<&'a str>,
    /// A rate limit's `Retry-After`, in seconds.
    pub retry_after: Option<String>,
}

/// What the LB answers for a request that goes to no pool: a route's redirect or status, 429 for
/// a client over the route's rate, no route (404), or a pool the configuration lacks (503, as
/// when no backend takes it).
pub(crate) fn routed_answer(routed: &Routed) -> RoutedAnswer<'_> {
    let status = |code: u16| StatusCode::from_u16(code).unwrap_or(StatusCode::NOT_FOUND);
    let plain = |status: StatusCode, text: std::borrow::Cow<'static, str>| RoutedAnswer {
        status,
        text,
        location: None,
        retry_after: None,
    };
    match routed {
        Routed::Redirect {
            location,
            status: code,
        } => RoutedAnswer {
            location: Some(location),
            ..plain(status(*code), format!("see {location}\n").into())
        },
        Routed::Status(code) => {
            let status = status(*code);
            let text =
                format!("{}\n", status.canonical_reason().unwrap_or("")).to_ascii_lowercase();
            plain(status, text.into())
        }
        Routed::Limited(seconds) => RoutedAnswer {
            retry_after: Some(seconds.to_string()),
            ..plain(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests: retry later\n".into(),
            )
        },
        Routed::NoRoute => plain(StatusCode::NOT_FOUND, "no route\n".into()),
        // Settled before an answer is made; were it not, the answer is where it goes.
        Routed::AskFleet { then, .. } => routed_answer(then),
        Routed::NoPool | Routed::Pool(_) => {
            let (status, text) = answer(ErrorKind::NoBackend);
            plain(status, text.into())
        }
    }
}

/// How the last try failed, which decides the status when every try failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    NoBackend,
    Overloaded,
    Connect,
    Exchange,
    Timeout,
}

/// How many tries one request gets and how long each may take: the pool's, or the route's
/// where the route that chose the pool sets its own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub retries: u32,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

/// The tries of one request to one pool.
#[derive(Debug)]
pub(crate) struct Attempt<'a> {
    context: &'a ClientContext,
    pool: &'a PoolSnapshot,
    limits: Limits,
    affinity: Affinity,
    tries: usize,
    tried: [usize; MAX_TRIES],
    made: usize,
    failure: Failure,
    started: Instant,
}

/// One try: the backend chosen, counted in its load for as long as this lives.
#[derive(Debug)]
pub(crate) struct Try<'a> {
    pub index: usize,
    pub backend: &'a Arc<BackendState>,
    /// Whether the connection came from the worker's cache (a cached connection the backend
    /// had closed meanwhile is not the backend failing).
    pub reused: bool,
    /// Counted in the backend's load (and the queue's, the retry budget's) while it lives.
    pub held: Held,
    /// The client the connection is for alone (it opened with a PROXY header naming it).
    pub owner: Option<SocketAddr>,
}

impl<'a> Attempt<'a> {
    /// `replayable`: the request may go to another backend if one fails it (see the module
    /// docs); `limits` say how many times.
    pub(crate) fn new(
        context: &'a ClientContext,
        pool: &'a PoolSnapshot,
        limits: Limits,
        affinity: Affinity,
        replayable: bool,
        started: Instant,
    ) -> Self {
        let retries = if replayable {
            limits.retries as usize
        } else {
            0
        };
        Self {
            context,
            pool,
            limits,
            affinity,
            tries: (1 + retries).min(MAX_TRIES),
            tried: [usize::MAX; MAX_TRIES],
            made: 0,
            failure: Failure::NoBackend,
            started,
        }
    }

    pub(crate) fn context(&self) -> &'a ClientContext {
        self.context
    }

    pub(crate) fn pool(&self) -> &'a Arc<PoolState> {
        &self.pool.state
    }

    /// How long the backend may take to start its response, and each read of its body.
    pub(crate) fn response_timeout(&self) -> Duration {
        self.limits.response_timeout
    }

    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Tries made after the first.
    pub(crate) fn retries(&self) -> u32 {
        u32::try_from(self.made.saturating_sub(1)).unwrap_or(u32::MAX)
    }

    /// Whether the try just made is the last one (its request need not be kept for another).
    pub(crate) fn is_last(&self) -> bool {
        self.made >= self.tries
    }

    /// The next backend and a connection to it (cached, or new); `None` once the tries are
    /// spent or no backend is left to try. A backend that refuses the connection is charged
    /// with it, and the next one is tried.
    pub(crate) async fn next<C: Upstream>(&mut self) -> Option<(Try<'a>, C)> {
        let shared = &*self.context.shared;
        let pool = &self.pool.state;
        let hello = pool.send_proxy_protocol.map(|version| {
            crate::proxy_protocol::header(version, self.context.client, self.context.local)
        });
        let owner = hello.is_some().then_some(self.context.client);
        if owner.is_some() {
            self.context.owns_connections.store(true, Ordering::Relaxed);
        }
        while self.made < self.tries {
            let retry = self.made > 0;
            if retry && !protection::retry_allowed(pool) {
                pool.counters.retry_refused();
                return None;
            }
            let tried = &self.tried[..self.made];
            let (index, held) =
                match protection::admit(self.pool, self.affinity, tried, retry).await {
                    Ok(admitted) => admitted,
                    Err(Refusal::NoBackend) => return None,
                    Err(Refusal::Overloaded) => {
                        self.failure = Failure::Overloaded;
                        return None;
                    }
                };
            self.tried[self.made] = index;
            self.made += 1;
            let backend = &pool.backends[index];
            let dial = Dial {
                address: backend.address,
                slot: backend.slot,
                connect_timeout: self.limits.connect_timeout,
                idle_timeout: shared.settings.timeouts.idle,
                pooled: &backend.counters.pooled_now,
                owner,
                hello: hello.as_deref(),
                tls: pool.tls.as_deref(),
            };
            let (taken, stray) = C::take(&dial);
            if stray {
                shared.distrust(backend);
            }
            let (connection, reused) = match taken {
                Some(connection) => (connection, true),
                None => {
                    let Some(opened) = backend
                        .connections
                        .open(
                            pool.protection.max_connections,
                            &shared.reap,
                            dial.connect_timeout,
                        )
                        .await
                    else {
                        self.failure = Failure::Overloaded;
                        return None;
                    };
                    // Boxed: a connect (TCP, TLS, the protocol's handshake) is the largest
                    // state a request can hold, and only a request without an idle connection
                    // needs it; inline, every request's future carried and copied it.
                    match Box::pin(C::connect(&dial, opened)).await {
                        Ok(connection) => {
                            connection.connected(&dial);
                            (connection, false)
                        }
                        Err(error) => {
                            tracing::debug!(backend = %backend.address, %error, "backend connect failed");
                            shared.failure(pool, index);
                            self.failure = Failure::Connect;
                            continue;
                        }
                    }
                }
            };
            let chosen = Try {
                index,
                backend,
                reused,
                held,
                owner,
            };
            return Some((chosen, connection));
        }
        None
    }

    /// The exchange with the backend of `tried` broke before a response; `blame` charges the
    /// backend with it.
    pub(crate) fn exchange_failed(&mut self, tried: &Try<'_>, error: &dyn Display, blame: bool) {
        tracing::debug!(backend = %tried.backend.address, %error, "backend exchange failed");
        if blame {
            self.context.shared.failure(&self.pool.state, tried.index);
        }
        self.failure = Failure::Exchange;
    }

    /// A backend answered with `status`: a 5xx counts against it, anything else for it.
    pub(crate) fn responded(&self, tried: &Try<'_>, status: u16) {
        if status >= 500 {
            self.context.shared.failure(&self.pool.state, tried.index);
        } else {
            tried.backend.outlier.success();
        }
        tried.backend.counters.response(status);
    }

    /// The request's time, from its head to its last byte, in the pool's latency histogram.
    pub(crate) fn finished(&self) {
        observe(&self.pool.state, self.started);
    }

    /// The `Set-Cookie` that tells the client which backend served it, where the pool keeps
    /// clients on their backend and the request's cookie named no backend or another one.
    pub(crate) fn sticky_cookie(&self, tried: &Try<'_>) -> Option<HeaderValue> {
        let name = self.pool.state.sticky_cookie.as_deref()?;
        let token = tried.backend.sticky_token;
        if self.affinity.sticky == Some(token) {
            return None;
        }
        crate::sticky::set_cookie(name, token, self.context.tls.is_some())
    }

    /// The backend of `tried` did not start its response in time. A replayable request goes
    /// on to the next try (the attempt made it replayable only where acting twice is safe);
    /// when none is left, [`Attempt::give_up`] answers 504.
    pub(crate) fn timed_out(&mut self, tried: &Try<'_>) {
        tracing::debug!(backend = %tried.backend.address, "backend response timed out");
        self.context.shared.failure(&self.pool.state, tried.index);
        self.failure = Failure::Timeout;
    }

    /// Every try failed: what the LB answers, counted.
    pub(crate) fn give_up(&self) -> ErrorKind {
        self.answered(match self.failure {
            Failure::NoBackend | Failure::Connect => ErrorKind::NoBackend,
            Failure::Overloaded => ErrorKind::Overloaded,
            Failure::Exchange => ErrorKind::BadGateway,
            Failure::Timeout => ErrorKind::Timeout,
        })
    }

    fn answered(&self, kind: ErrorKind) -> ErrorKind {
        self.pool.state.counters.error(kind);
        self.finished();
        kind
    }
}

/// Records a request's time in `pool`'s latency histogram.
pub(crate) fn observe(pool: &PoolState, started: Instant) {
    pool.counters.observe(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_methods_rfc_9110_calls_idempotent_are_replayed() {
        for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(is_idempotent(method.as_bytes()), "{method}");
        }
        for method in ["POST", "PATCH", "CONNECT", "get", "PRI"] {
            assert!(!is_idempotent(method.as_bytes()), "{method}");
        }
    }

    #[test]
    fn every_answer_is_an_error_status_with_a_line_of_text() {
        for kind in ErrorKind::ALL {
            let (status, text) = answer(kind);
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{kind:?}"
            );
            assert!(text.ends_with('\n') && text.len() > 1, "{kind:?}");
        }
        assert_eq!(
            answer(ErrorKind::NoBackend).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(answer(ErrorKind::Timeout).0, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(answer(ErrorKind::BadGateway).0, StatusCode::BAD_GATEWAY);
    }
}
