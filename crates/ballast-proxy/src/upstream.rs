//! Connections to backends: each worker thread keeps its own cache of idle keep-alive
//! connections per backend, so taking and returning one is a plain `Vec` push and pop with no
//! lock and no sharing between workers (nginx's shape: one upstream keep-alive cache per worker).
//!
//! The cache is thread-local because each worker is a single-threaded runtime: a task never
//! leaves the thread it started on, so the connection it returns goes back to its own worker.
//! One [`IdleCache`] serves every kind of connection a request holds alone: the fast path's raw
//! sockets and hyper's HTTP/1.1 client connections. HTTP/2 connections ([`Multiplexed`]) are
//! shared instead: each request takes a stream on the least busy of a few per backend, and the
//! connection stays in the worker's list while it carries them.
//!
//! A pool that sends the PROXY protocol opens each connection with a header naming one client, so
//! the connection is that client's alone: it is kept with its owner and only a request of the
//! same client connection (the same address and port) takes it again, as Envoy keys its pools by
//! the header.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::thread::LocalKey;
use std::time::{Duration, Instant};

use crate::hyper_path::ClientBody;
use crate::protection::Opened;
use crate::state::BackendState;
use ballast_health::BackendTls;
use bytes::{Bytes, BytesMut};
use http_body_util::{Either, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// At most this many idle connections per backend per worker.
const MAX_IDLE_PER_BACKEND: usize = 256;

/// What is waiting on an idle connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waiting {
    Nothing,
    /// The backend closed it (or it failed).
    Closed,
    /// Bytes nobody asked for.
    Bytes,
}

/// One request's way to one backend.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dial<'a> {
    pub address: SocketAddr,
    /// The backend's place in every worker's cache.
    pub slot: usize,
    pub connect_timeout: Duration,
    /// How long a connection may have waited unused and still be taken.
    pub idle_timeout: Duration,
    /// The gauge of the backend's kept connections.
    pub pooled: &'a AtomicI64,
    /// The client whose connections these are, where they open with a PROXY header naming it.
    pub owner: Option<SocketAddr>,
    /// The PROXY header a new connection opens with.
    pub hello: Option<&'a [u8]>,
    /// TLS over the connection, for a pool that speaks it.
    pub tls: Option<&'a BackendTls>,
}

/// What a request holds of a backend connection while it uses it: a connection alone, or a
/// stream of a shared one.
pub(crate) trait Upstream: Sized + 'static {
    /// Opens a new connection, which holds `opened` for as long as it is open.
    fn connect(dial: &Dial<'_>, opened: Opened)
    -> impl Future<Output = Result<Self, ConnectError>>;
    /// One from this worker's connections to the backend, if one is fit for the request; and
    /// whether one it passed over held bytes nobody asked for.
    fn take(dial: &Dial<'_>) -> (Option<Self>, bool);
    /// A connection just made: a shared one is offered to the next requests at once.
    fn connected(&self, _dial: &Dial<'_>) {}
}

/// A kind of connection that one request holds at a time, and that waits in the worker's
/// [`IdleCache`] between requests.
pub(crate) trait Exclusive: Upstream {
    /// This worker's cache of idle connections of this kind.
    fn cache() -> &'static LocalKey<RefCell<IdleCache<Self>>>;
    /// Checked on the way out of the cache and by the sweep.
    fn waiting(&self) -> Waiting;
    /// Whether its last exchange left it fit for another.
    fn reusable(&self) -> bool;
}

/// Idle connections of one kind, by backend slot, most recently returned last, each with when it
/// was returned and the client that owns it (if one does).
#[derive(Debug)]
pub(crate) struct IdleCache<C> {
    slots: Vec<Vec<(C, Instant, Option<SocketAddr>)>>,
}

impl<C> IdleCache<C> {
    const fn new() -> Self {
        Self { slots: Vec::new() }
    }
}

thread_local! {
    static RAW: RefCell<IdleCache<Raw>> = const { RefCell::new(IdleCache::new()) };
    static SENDERS: RefCell<IdleCache<Sender>> = const { RefCell::new(IdleCache::new()) };
}

/// The most recently used idle connection to the backend at `slot` that has nothing waiting on
/// it; and whether one of those it passed over held bytes nobody asked for.
///
/// Every connection is checked as it leaves the cache: a backend that closed it, or that sent
/// bytes after its last response (beyond its `Content-Length`, a body to a HEAD), must not
/// have them read as the next client's response.
fn take_idle<C: Exclusive>(dial: &Dial<'_>) -> (Option<C>, bool) {
    C::cache().with_borrow_mut(|cache| {
        let mut stray = false;
        let Some(idle) = cache.slots.get_mut(dial.slot) else {
            return (None, false);
        };
        // Without owners (the common case) this pops from the end.
        let mut at = idle.len();
        while at > 0 {
            at -= 1;
            if idle[at].2 != dial.owner {
                continue;
            }
            let (connection, since, _) = idle.remove(at);
            dial.pooled.fetch_sub(1, Ordering::Relaxed);
            match connection.waiting() {
                Waiting::Nothing if since.elapsed() < dial.idle_timeout => {
                    return (Some(connection), stray);
                }
                Waiting::Bytes => stray = true,
                _ => {}
            }
        }
        (None, stray)
    })
}

/// Returns a connection to `backend` whose last response was read in full; one that is not
/// fit for another exchange is closed instead, as is one a request waits to have closed (its
/// backend is at its `max_connections`).
pub(crate) fn give_back<C: Exclusive>(
    backend: &BackendState,
    connection: C,
    owner: Option<SocketAddr>,
) {
    if !connection.reusable() || backend.connections.wanted() > 0 {
        return;
    }
    let (slot, pooled) = (backend.slot, &*backend.counters.pooled_now);
    C::cache().with_borrow_mut(|cache| {
        if cache.slots.len() <= slot {
            cache.slots.resize_with(slot + 1, Vec::new);
        }
        let idle = &mut cache.slots[slot];
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push((connection, Instant::now(), owner));
            pooled.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// Closes this worker's connections that have been idle for `idle_timeout` or have closed;
/// `pooled_of(slot)` is the gauge to keep in step. Answers the slots of backends that sent
/// bytes on an idle connection.
pub(crate) fn sweep<'a>(
    idle_timeout: Duration,
    pooled_of: impl Fn(usize) -> Option<&'a AtomicI64>,
) -> Vec<usize> {
    let mut stray = Vec::new();
    sweep_kind::<Raw>(idle_timeout, &pooled_of, &mut stray);
    sweep_kind::<Sender>(idle_timeout, &pooled_of, &mut stray);
    sweep_multiplexed(idle_timeout, &pooled_of);
    stray.sort_unstable();
    stray.dedup();
    stray
}

/// Closes this worker's connections that `owner` owned (they opened with a PROXY header naming
/// it): its client connection is over, and no other client may have them.
pub(crate) fn release<'a>(owner: SocketAddr, pooled_of: impl Fn(usize) -> Option<&'a AtomicI64>) {
    let owner = Some(owner);
    let count = |slot: usize, closed: usize| {
        if let Some(pooled) = pooled_of(slot) {
            pooled.fetch_sub(closed as i64, Ordering::Relaxed);
        }
    };
    fn release_kind<C: Exclusive>(owner: Option<SocketAddr>, count: &impl Fn(usize, usize)) {
        C::cache().with_borrow_mut(|cache| {
            for (slot, idle) in cache.slots.iter_mut().enumerate() {
                let before = idle.len();
                idle.retain(|(_, _, of)| *of != owner);
                count(slot, before - idle.len());
            }
        });
    }
    release_kind::<Raw>(owner, &count);
    release_kind::<Sender>(owner, &count);
    MULTIPLEXED.with_borrow_mut(|slots| {
        for (slot, connections) in slots.iter_mut().enumerate() {
            let before = connections.len();
            connections.retain(|c| c.owner != owner);
            count(slot, before - connections.len());
        }
    });
}

/// Closes up to `count` of this worker's idle connections to the backend at `slot`, the longest
/// idle first, for requests that wait for room under the backend's `max_connections`.
pub(crate) fn close_idle(slot: usize, count: usize, pooled: &AtomicI64) {
    fn close_kind<C: Exclusive>(slot: usize, count: usize, pooled: &AtomicI64) -> usize {
        C::cache().with_borrow_mut(|cache| {
            let Some(idle) = cache.slots.get_mut(slot) else {
                return 0;
            };
            let closed = count.min(idle.len());
            idle.drain(..closed);
            pooled.fetch_sub(closed as i64, Ordering::Relaxed);
            closed
        })
    }
    let raw = close_kind::<Raw>(slot, count, pooled);
    close_kind::<Sender>(slot, count - raw, pooled);
}

fn sweep_kind<'a, C: Exclusive>(
    idle_timeout: Duration,
    pooled_of: &impl Fn(usize) -> Option<&'a AtomicI64>,
    stray: &mut Vec<usize>,
) {
    C::cache().with_borrow_mut(|cache| {
        for (slot, idle) in cache.slots.iter_mut().enumerate() {
            let before = idle.len();
            idle.retain(|(connection, since, _)| match connection.waiting() {
                Waiting::Nothing => since.elapsed() < idle_timeout,
                Waiting::Bytes => {
                    stray.push(slot);
                    false
                }
                Waiting::Closed => false,
            });
            if let Some(pooled) = pooled_of(slot) {
                pooled.fetch_sub((before - idle.len()) as i64, Ordering::Relaxed);
            }
        }
    });
}

/// A TCP connection to the backend, opened with the PROXY header if the pool sends one.
async fn connect_tcp(dial: &Dial<'_>) -> Result<TcpStream, ConnectError> {
    let timeout = dial.connect_timeout;
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect(dial.address))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    stream.set_nodelay(true)?;
    if let Some(hello) = dial.hello {
        stream.write_all(hello).await?;
    }
    Ok(stream)
}

/// A backend connection that could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// Nothing answered within the connect timeout.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// The connection was refused or failed.
    #[error("connect failed: {0}")]
    Io(#[from] io::Error),
    /// The HTTP handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
    /// The TLS handshake failed (a certificate not trusted, a name that does not match, no
    /// protocol in common).
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
}

/// A TLS connection to the backend, for a pool that speaks TLS.
async fn connect_tls(dial: &Dial<'_>, tls: &BackendTls) -> Result<BackendTlsStream, ConnectError> {
    let stream = connect_tcp(dial).await?;
    let handshake = tls.handshake(stream, dial.address);
    tokio::time::timeout(dial.connect_timeout, handshake)
        .await
        .map_err(|_| ConnectError::Timeout(dial.connect_timeout))?
        .map_err(ConnectError::Tls)
}

type BackendTlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// An HTTP/1.1 client connection over `io`, driven by its own task (which holds `opened`
/// until the connection ends).
async fn http1_over<I>(io: I, address: SocketAddr, opened: Opened) -> Result<Sender, ConnectError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _opened = opened;
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%address, %error, "backend connection ended");
        }
    });
    Ok(sender)
}

/// An HTTP/2 client connection over `io`, driven by its own task, with a first stream on it.
async fn http2_over<I>(io: I, address: SocketAddr, opened: Opened) -> Result<H2Stream, ConnectError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_WINDOW)
        .initial_connection_window_size(H2_WINDOW)
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        let _opened = opened;
        if let Err(error) = connection.await {
            tracing::debug!(%address, %error, "backend HTTP/2 connection ended");
        }
    });
    Ok(H2Stream {
        sender,
        streams: Arc::new(AtomicUsize::new(1)),
    })
}

/// A plain TCP connection to a backend for the HTTP/1.1 fast path, with the bytes read from it
/// but not yet used.
#[derive(Debug)]
pub(crate) struct Raw {
    pub(crate) stream: TcpStream,
    pub(crate) buffer: BytesMut,
    _opened: Opened,
}

impl Upstream for Raw {
    async fn connect(dial: &Dial<'_>, opened: Opened) -> Result<Self, ConnectError> {
        Ok(Self {
            stream: connect_tcp(dial).await?,
            buffer: BytesMut::with_capacity(8 * 1024),
            _opened: opened,
        })
    }

    fn take(dial: &Dial<'_>) -> (Option<Self>, bool) {
        take_idle(dial)
    }
}

impl Exclusive for Raw {
    fn cache() -> &'static LocalKey<RefCell<IdleCache<Self>>> {
        &RAW
    }

    /// Looks without taking: a `MSG_PEEK` when the runtime has seen the socket become readable
    /// since it last read it dry, no system call otherwise (the common case: reading a response
    /// that did not fill the buffer leaves the socket known to be empty).
    fn waiting(&self) -> Waiting {
        let peeked = self.stream.try_io(tokio::io::Interest::READABLE, || {
            let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
            socket2::SockRef::from(&self.stream).peek(&mut probe)
        });
        match peeked {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Waiting::Nothing,
            Ok(n) if n > 0 => Waiting::Bytes,
            _ => Waiting::Closed,
        }
    }

    /// Bytes beyond the response mean the connection is out of step.
    fn reusable(&self) -> bool {
        self.buffer.is_empty()
    }
}

/// What a request to a backend carries on the hyper path: the client's body as it streams in,
/// or nothing (for requests that may be replayed on another backend).
pub(crate) type UpstreamBody = Either<ClientBody, Empty<Bytes>>;

/// A ready-to-use HTTP/1.1 connection to a backend, driven by its own task.
pub(crate) type Sender = http1::SendRequest<UpstreamBody>;

impl Upstream for Sender {
    fn take(dial: &Dial<'_>) -> (Option<Self>, bool) {
        take_idle(dial)
    }

    async fn connect(dial: &Dial<'_>, opened: Opened) -> Result<Self, ConnectError> {
        match dial.tls {
            None => http1_over(connect_tcp(dial).await?, dial.address, opened).await,
            Some(tls) => http1_over(connect_tls(dial, tls).await?, dial.address, opened).await,
        }
    }
}

impl Exclusive for Sender {
    fn cache() -> &'static LocalKey<RefCell<IdleCache<Self>>> {
        &SENDERS
    }

    fn waiting(&self) -> Waiting {
        if self.is_ready() {
            Waiting::Nothing
        } else {
            Waiting::Closed
        }
    }

    fn reusable(&self) -> bool {
        self.is_ready()
    }
}

/// Requests one HTTP/2 connection carries at once before another is opened beside it (servers
/// must allow at least 100, RFC 9113 §6.5.2; beyond a backend's own limit, h2 queues them).
const STREAMS_PER_CONNECTION: usize = 100;
/// At most this many HTTP/2 connections per backend per worker; past them, the least busy one
/// takes the stream.
const MAX_MULTIPLEXED_PER_BACKEND: usize = 8;
/// Receive windows on backend HTTP/2 connections: a response is not throttled by round trips.
const H2_WINDOW: u32 = 1024 * 1024;

thread_local! {
    static MULTIPLEXED: RefCell<Vec<Vec<Multiplexed>>> = const { RefCell::new(Vec::new()) };
}

/// An HTTP/2 connection to a backend, shared by the requests in flight on it.
#[derive(Debug, Clone)]
struct Multiplexed {
    sender: http2::SendRequest<UpstreamBody>,
    /// Requests holding a stream on it now.
    streams: Arc<AtomicUsize>,
    /// When a request last took a stream on it.
    used: Instant,
    /// The client it is for, where it opened with a PROXY header.
    owner: Option<SocketAddr>,
}

/// A request's stream on a shared HTTP/2 connection, counted against the connection for as
/// long as it lives.
#[derive(Debug)]
pub(crate) struct H2Stream {
    pub(crate) sender: http2::SendRequest<UpstreamBody>,
    streams: Arc<AtomicUsize>,
}

impl H2Stream {
    fn on(connection: &Multiplexed) -> Self {
        connection.streams.fetch_add(1, Ordering::Relaxed);
        Self {
            sender: connection.sender.clone(),
            streams: Arc::clone(&connection.streams),
        }
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        self.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream for H2Stream {
    async fn connect(dial: &Dial<'_>, opened: Opened) -> Result<Self, ConnectError> {
        match dial.tls {
            None => http2_over(connect_tcp(dial).await?, dial.address, opened).await,
            Some(tls) => http2_over(connect_tls(dial, tls).await?, dial.address, opened).await,
        }
    }

    /// A stream on the least busy open connection with room for one, or on the least busy of
    /// all once the backend has as many connections as a worker opens.
    fn take(dial: &Dial<'_>) -> (Option<Self>, bool) {
        MULTIPLEXED.with_borrow_mut(|slots| {
            let Some(connections) = slots.get_mut(dial.slot) else {
                return (None, false);
            };
            let before = connections.len();
            connections.retain(|c| !c.sender.is_closed());
            let pooled = dial.pooled;
            pooled.fetch_sub((before - connections.len()) as i64, Ordering::Relaxed);
            let full = connections.len() >= MAX_MULTIPLEXED_PER_BACKEND;
            let least_busy = connections
                .iter_mut()
                .filter(|c| c.owner == dial.owner)
                .min_by_key(|c| c.streams.load(Ordering::Relaxed));
            let taken = least_busy
                .filter(|c| c.streams.load(Ordering::Relaxed) < STREAMS_PER_CONNECTION || full);
            let taken = taken.map(|c| {
                c.used = Instant::now();
                Self::on(c)
            });
            (taken, false)
        })
    }

    fn connected(&self, dial: &Dial<'_>) {
        let (slot, pooled) = (dial.slot, dial.pooled);
        MULTIPLEXED.with_borrow_mut(|slots| {
            if slots.len() <= slot {
                slots.resize_with(slot + 1, Vec::new);
            }
            if slots[slot].len() < MAX_MULTIPLEXED_PER_BACKEND {
                slots[slot].push(Multiplexed {
                    sender: self.sender.clone(),
                    streams: Arc::clone(&self.streams),
                    used: Instant::now(),
                    owner: dial.owner,
                });
                pooled.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

/// A connection in whichever protocol the backend chose by ALPN (`protocol = "auto"` over TLS;
/// in clear text, HTTP/1.1): an open HTTP/2 connection's stream is taken first, then an idle
/// HTTP/1.1 connection, then a new connection says which it is.
#[derive(Debug)]
pub(crate) enum Negotiated {
    Http1(Sender),
    Http2(H2Stream),
}

impl Upstream for Negotiated {
    async fn connect(dial: &Dial<'_>, opened: Opened) -> Result<Self, ConnectError> {
        let Some(tls) = dial.tls else {
            return Sender::connect(dial, opened).await.map(Self::Http1);
        };
        let stream = connect_tls(dial, tls).await?;
        if ballast_health::speaks_h2(&stream) {
            http2_over(stream, dial.address, opened)
                .await
                .map(Self::Http2)
        } else {
            http1_over(stream, dial.address, opened)
                .await
                .map(Self::Http1)
        }
    }

    fn take(dial: &Dial<'_>) -> (Option<Self>, bool) {
        if let (Some(stream), _) = H2Stream::take(dial) {
            return (Some(Self::Http2(stream)), false);
        }
        let (sender, stray) = Sender::take(dial);
        (sender.map(Self::Http1), stray)
    }

    fn connected(&self, dial: &Dial<'_>) {
        if let Self::Http2(stream) = self {
            stream.connected(dial);
        }
    }
}

/// Closes this worker's HTTP/2 connections that have closed, or carried nothing for
/// `idle_timeout` (dropping the last sender ends the connection).
fn sweep_multiplexed<'a>(
    idle_timeout: Duration,
    pooled_of: &impl Fn(usize) -> Option<&'a AtomicI64>,
) {
    MULTIPLEXED.with_borrow_mut(|slots| {
        for (slot, connections) in slots.iter_mut().enumerate() {
            let before = connections.len();
            connections.retain(|c| {
                !c.sender.is_closed()
                    && (c.streams.load(Ordering::Relaxed) > 0 || c.used.elapsed() < idle_timeout)
            });
            if let Some(pooled) = pooled_of(slot) {
                pooled.fetch_sub((before - connections.len()) as i64, Ordering::Relaxed);
            }
        }
    });
}
