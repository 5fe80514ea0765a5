//! Connections to backends: each worker thread keeps its own cache of idle HTTP/1.1 keep-alive
//! connections per backend, so taking and returning one is a plain `Vec` push and pop with no
//! lock and no sharing between workers (nginx's shape: one upstream keep-alive cache per worker).
//!
//! The cache is thread-local because each worker is a single-threaded runtime: a task never
//! leaves the thread it started on, so the connection it returns goes back to its own worker.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What a request to a backend carries: the client's body as it streams in, or nothing (for
/// requests that may be replayed on another backend).
pub(crate) type UpstreamBody = Either<Incoming, Empty<Bytes>>;

/// A ready-to-use HTTP/1.1 connection to a backend.
pub(crate) type Sender = http1::SendRequest<UpstreamBody>;

/// At most this many idle connections per backend per worker.
const MAX_IDLE_PER_BACKEND: usize = 256;

struct Idle {
    sender: Sender,
    since: Instant,
}

thread_local! {
    static CACHE: RefCell<Vec<Vec<Idle>>> = const { RefCell::new(Vec::new()) };
    static RAW_CACHE: RefCell<Vec<Vec<(Raw, Instant)>>> = const { RefCell::new(Vec::new()) };
}

/// A plain TCP connection to a backend for the HTTP/1.1 fast path, with the bytes read from it
/// but not yet used.
#[derive(Debug)]
pub(crate) struct Raw {
    pub(crate) stream: TcpStream,
    pub(crate) buffer: bytes::BytesMut,
}

/// An idle fast-path connection to the backend at `slot`, most recently used first, that has
/// nothing waiting on it; and whether one of those it passed over held bytes nobody asked for.
///
/// Every connection is checked as it leaves the cache (see [`peek`]): a backend that closed
/// it, or that sent bytes after its last response (beyond its `Content-Length`, a body to a
/// HEAD), must not have them read as the next client's response.
pub(crate) fn take_raw(
    slot: usize,
    idle_timeout: Duration,
    pooled: &AtomicI64,
) -> (Option<Raw>, bool) {
    RAW_CACHE.with_borrow_mut(|cache| {
        let mut stray = false;
        let Some(idle) = cache.get_mut(slot) else {
            return (None, false);
        };
        while let Some((raw, since)) = idle.pop() {
            pooled.fetch_sub(1, Ordering::Relaxed);
            match peek(&raw.stream) {
                Waiting::Nothing if since.elapsed() < idle_timeout => return (Some(raw), stray),
                Waiting::Bytes => stray = true,
                _ => {}
            }
        }
        (None, stray)
    })
}

/// What is waiting to be read on an idle connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Nothing,
    /// The backend closed it (or it failed).
    Closed,
    /// Bytes nobody asked for.
    Bytes,
}

/// Looks without taking: a `MSG_PEEK` when the runtime has seen the socket become readable
/// since it last read it dry, no system call otherwise (the common case: reading a response
/// that did not fill the buffer leaves the socket known to be empty).
fn peek(stream: &TcpStream) -> Waiting {
    let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        socket2::SockRef::from(stream).peek(&mut probe)
    });
    match peeked {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Waiting::Nothing,
        Ok(n) if n > 0 => Waiting::Bytes,
        _ => Waiting::Closed,
    }
}

/// Returns a fast-path connection whose last response was read in full.
pub(crate) fn give_back_raw(slot: usize, raw: Raw, pooled: &AtomicI64) {
    if !raw.buffer.is_empty() {
        // Bytes beyond the response: the connection is out of step; close it.
        return;
    }
    RAW_CACHE.with_borrow_mut(|cache| {
        if cache.len() <= slot {
            cache.resize_with(slot + 1, Vec::new);
        }
        let idle = &mut cache[slot];
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push((raw, Instant::now()));
            pooled.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// Opens a fast-path connection to `address`.
pub(crate) async fn connect_raw(
    address: SocketAddr,
    timeout: Duration,
) -> Result<Raw, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    stream.set_nodelay(true)?;
    Ok(Raw {
        stream,
        buffer: bytes::BytesMut::with_capacity(8 * 1024),
    })
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
    /// The HTTP/1.1 handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

/// The most recently returned idle connection to the backend at `slot` that is still usable.
pub(crate) fn take(slot: usize, idle_timeout: Duration, pooled: &AtomicI64) -> Option<Sender> {
    CACHE.with_borrow_mut(|cache| {
        let idle = cache.get_mut(slot)?;
        while let Some(entry) = idle.pop() {
            pooled.fetch_sub(1, Ordering::Relaxed);
            if entry.since.elapsed() < idle_timeout && entry.sender.is_ready() {
                return Some(entry.sender);
            }
        }
        None
    })
}

/// Returns a connection whose last response has been read in full.
pub(crate) fn give_back(slot: usize, sender: Sender, pooled: &AtomicI64) {
    if !sender.is_ready() {
        return;
    }
    CACHE.with_borrow_mut(|cache| {
        if cache.len() <= slot {
            cache.resize_with(slot + 1, Vec::new);
        }
        let idle = &mut cache[slot];
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
            pooled.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// Closes this worker's connections that have been idle for `idle_timeout` or have closed;
/// `pooled_of(slot)` is the gauge to keep in step. Answers the slots of backends that sent
/// bytes on an idle fast-path connection.
pub(crate) fn sweep<'a>(
    idle_timeout: Duration,
    pooled_of: impl Fn(usize) -> Option<&'a AtomicI64>,
) -> Vec<usize> {
    CACHE.with_borrow_mut(|cache| {
        for (slot, idle) in cache.iter_mut().enumerate() {
            let before = idle.len();
            idle.retain(|e| e.since.elapsed() < idle_timeout && !e.sender.is_closed());
            if let Some(pooled) = pooled_of(slot) {
                pooled.fetch_sub((before - idle.len()) as i64, Ordering::Relaxed);
            }
        }
    });
    let mut stray = Vec::new();
    RAW_CACHE.with_borrow_mut(|cache| {
        for (slot, idle) in cache.iter_mut().enumerate() {
            let before = idle.len();
            idle.retain(|(raw, since)| match peek(&raw.stream) {
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
    stray.dedup();
    stray
}

/// Opens a new connection to `address` and starts its HTTP/1.1 driver task.
pub(crate) async fn connect(
    address: SocketAddr,
    timeout: Duration,
) -> Result<Sender, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%address, %error, "backend connection ended");
        }
    });
    Ok(sender)
}
