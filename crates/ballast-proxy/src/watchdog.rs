//! Deadlines for every state of a connection served on hyper or h2 (HTTP/1.1 over TLS, HTTP/2),
//! so that no client holds a descriptor by doing nothing: the HTTP/2 preface and a TLS client's
//! first request are waited for without a limit, an idle HTTP/2 connection is never closed, and
//! a client that stops reading leaves every write pending forever.
//!
//! - Until its first request arrives, a connection has `first_request` from the accept (a bare
//!   `PRI `, a preface with SETTINGS and nothing more, a TLS handshake and silence).
//! - With no request in service, a connection on which no byte moved either way for `idle` is
//!   closed gracefully (HTTP/2: GOAWAY, then the close).
//! - A write that makes no progress for `idle` fails the connection.
//! - A tunnel (TCP mode, an upgraded connection) on which no byte moved either way for `idle`
//!   is closed.
//!
//! The HTTP/1.1 fast path keeps its own deadlines (see [`crate::h1`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

/// What a connection has done, shared by its I/O, its requests and its watchdog.
#[derive(Debug)]
pub(crate) struct Activity {
    opened: Instant,
    /// Milliseconds from `opened` to the last byte read or written.
    last_ms: AtomicU64,
    requests: AtomicUsize,
    in_service: AtomicUsize,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            requests: AtomicUsize::new(0),
            in_service: AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// A request begins; it is in service until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> InService {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_service.fetch_add(1, Ordering::Relaxed);
        InService(Arc::clone(self))
    }

    /// When the connection may be closed for doing nothing, as things stand; `None` while a
    /// request is in service.
    fn deadline(&self, limits: Limits) -> Option<Instant> {
        if self.requests.load(Ordering::Relaxed) == 0 {
            return Some(self.opened + limits.first_request);
        }
        if self.in_service.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.opened + last + limits.idle)
    }

    /// Resolves once the connection has done nothing for longer than it may.
    async fn expired(&self, limits: Limits) {
        loop {
            match self.deadline(limits) {
                Some(at) if at <= Instant::now() => return,
                Some(at) => tokio::time::sleep_until(at).await,
                // A request in service has its own timeouts; look again later.
                None => tokio::time::sleep(limits.idle).await,
            }
        }
    }
}

impl Activity {
    /// Resolves once no byte has moved either way for `idle`.
    async fn quiet_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let at = self.opened + last + idle;
            if at <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(at).await;
        }
    }
}

/// Copies bytes both ways between a client and a backend (TCP mode, upgraded connections)
/// until either side closes, or nothing has moved either way for `idle`.
pub(crate) async fn tunnel<C, B>(client: C, backend: &mut B, idle: Duration) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut client = Watched::new(client, Arc::clone(&activity), idle);
    tokio::select! {
        copied = crate::relay::relay(&mut client, backend) => copied,
        () = activity.quiet_for(idle) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("nothing moved either way for {idle:?}"),
        )),
    }
}

/// Marks a request in service for as long as it lives.
#[derive(Debug)]
pub(crate) struct InService(Arc<Activity>);

impl Drop for InService {
    fn drop(&mut self) {
        self.0.in_service.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// How long a connection may do nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) first_request: Duration,
    pub(crate) idle: Duration,
}

/// A client stream whose reads and writes are recorded in an [`Activity`], and whose writes
/// fail once they have made no progress for `stall`.
#[derive(Debug)]
pub(crate) struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    stall: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>, stall: Duration) -> Self {
        Self {
            inner,
            activity,
            stall,
            stalled: None,
        }
    }

    /// After a write or flush was polled: progress clears the stall clock, `Pending` runs it.
    fn watch_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => {
                let stall = self.stall;
                let sleep = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                ready!(sleep.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client stopped reading",
                )))
            }
            ready => {
                self.stalled = None;
                self.activity.touch();
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch_write(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A client stream watched under the listener's `timeouts`: the stream, its activity, and the
/// limits [`serve`] holds it to.
pub(crate) fn watch<S>(
    stream: S,
    timeouts: &crate::settings::Timeouts,
) -> (Watched<S>, Arc<Activity>, Limits) {
    let limits = Limits {
        first_request: timeouts.request_headers,
        idle: timeouts.idle,
    };
    let activity = Activity::new();
    let stream = Watched::new(stream, Arc::clone(&activity), timeouts.idle);
    (stream, activity, limits)
}

/// Waits at most `limit` for a connection's handshake (TLS, the HTTP/2 preface and SETTINGS); a
/// failure or a timeout is the client's doing, logged at debug and answered by closing.
pub(crate) async fn handshake<T, E: std::fmt::Display>(
    what: &'static str,
    client: std::net::SocketAddr,
    limit: Duration,
    handshake: impl Future<Output = Result<T, E>>,
) -> Option<T> {
    match tokio::time::timeout(limit, handshake).await {
        Ok(Ok(done)) => Some(done),
        Ok(Err(error)) => {
            tracing::debug!(%client, %error, "{what} handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%client, "{what} handshake timed out");
            None
        }
    }
}

/// A served connection that can be asked to finish what it has begun and take nothing new
/// (HTTP/1.1: close after the response in progress; HTTP/2: GOAWAY).
pub(crate) trait Graceful: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

/// Serves a connection until it ends, closing it gracefully when the server drains or when it
/// has done nothing for longer than `limits` allow; after a graceful close begins, it gets
/// `limits.idle` more to finish.
pub(crate) async fn serve<C, E>(
    connection: C,
    activity: &Activity,
    limits: Limits,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), E>
where
    C: Graceful<Output = Result<(), E>>,
{
    tokio::pin!(connection);
    let idle = tokio::select! {
        result = connection.as_mut() => return result,
        () = crate::shutdown::stopping(shutdown) => false,
        () = activity.expired(limits) => true,
    };
    if idle {
        tracing::debug!("closing a connection that did nothing");
    }
    connection.as_mut().graceful_shutdown();
    match tokio::time::timeout(limits.idle, connection).await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_connections_state() {
        let limits = Limits {
            first_request: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        };
        let activity = Activity::new();
        assert_eq!(
            activity.deadline(limits),
            Some(activity.opened + limits.first_request),
            "before the first request"
        );
        let request = activity.begin();
        assert_eq!(activity.deadline(limits), None, "in service");
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(request);
        let deadline = activity.deadline(limits).expect("idle");
        assert_eq!(deadline, activity.opened + Duration::from_secs(65));
        let started = Instant::now();
        activity.expired(limits).await;
        assert!(Instant::now() >= started + limits.idle);
    }
}
