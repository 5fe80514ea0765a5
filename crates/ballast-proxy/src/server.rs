//! The LB server's shape: `workers` threads, each a single-threaded tokio runtime with its own
//! accept queue per listener (`SO_REUSEPORT`) and its own upstream connection cache, so that
//! nothing on the request path is shared but the read-only snapshot and atomic counters. Worker 0
//! runs on the calling thread and also serves the admin endpoint, watches for SIGTERM/SIGINT and
//! rebuilds the snapshot when an ejection starts or ends.
//!
//! Draining: on SIGTERM or SIGINT every worker stops accepting, asks its HTTP connections to
//! finish the request in flight and close, and waits for them (up to `drain_timeout`); then
//! [`run`] returns.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::access_log::AccessLog;
use crate::attempt::ClientContext;
use crate::hyper_path;
use crate::listeners::{self, WorkerListener};
use crate::managed::Following;
use crate::metrics::ErrorKind;
use crate::prefixed::Prefixed;
use crate::reload::Reload;
use crate::settings::{Mode, Serves, Settings, SettingsError};
use crate::state::Shared;
use crate::{admin, h1, http2, tcp, tls, upstream, watchdog};
use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Request heads larger than this get 431 (nginx allows 8 KiB per line in 4 buffers).
const MAX_REQUEST_HEAD: u32 = 64 * 1024;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The settings are invalid.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A runtime or signal handler could not be created.
    #[error("runtime: {0}")]
    Runtime(io::Error),
    /// A picker could not be built.
    #[error(transparent)]
    Picker(#[from] ballast_balance::BuildError),
    /// The access log could not be opened.
    #[error(transparent)]
    AccessLog(#[from] crate::access_log::AccessLogError),
    /// Managed mode: the database could not be followed and no cached configuration was
    /// there to start from.
    #[error("--db {url}: {source}")]
    Database {
        /// The database's URL, its password removed.
        url: String,
        /// Why.
        source: ballast_config::StoreError,
    },
}

/// Where the server listens, once every socket is bound.
#[derive(Debug, Clone)]
pub struct Bound {
    /// Each listener's address (with the port the OS chose for port 0), mode and what it serves.
    pub listeners: Vec<(SocketAddr, Mode, Serves)>,
    /// The listeners running now: [`Bound::listeners`] at first, then as SIGHUP changes them.
    pub live: watch::Receiver<Vec<(SocketAddr, Mode, Serves)>>,
    /// The admin endpoint's address.
    pub admin: Option<SocketAddr>,
    /// Becomes `true` when SIGTERM or SIGINT starts the drain, so that whoever started the
    /// server can tell the fleet before it is gone.
    pub stopping: watch::Receiver<bool>,
}

/// Where the pools come from.
#[derive(Debug)]
pub enum Source {
    /// The settings' own pools, for the life of the server.
    Static,
    /// The configuration database: each revision replaces the pools.
    Managed(crate::managed::Managed),
}

/// Runs the server until SIGTERM or SIGINT has drained it; SIGHUP applies what `reload` reads
/// (see [`crate::reload`]), or, without one, changes nothing. `on_bound` is called once every
/// socket is bound and the signal handlers are in place: from then on the server is ready.
pub fn run(
    settings: Settings,
    source: Source,
    reload: Option<Reload>,
    on_bound: impl FnOnce(&Bound),
) -> Result<(), ServerError> {
    match source {
        Source::Static => serve(settings, None, reload, on_bound),
        Source::Managed(managed) => crate::managed::run(settings, managed, reload, on_bound),
    }
}

/// [`run`], with the follower already started in managed mode.
pub(crate) fn serve(
    settings: Settings,
    following: Option<Following>,
    reload: Option<Reload>,
    on_bound: impl FnOnce(&Bound),
) -> Result<(), ServerError> {
    settings.validate()?;
    let mut shared = Shared::new(settings)?;
    if let Some(log) = &shared.settings.access_log {
        let counters = shared.metrics.access_log();
        shared.access_log = Some(AccessLog::start(log, shared.settings.workers, counters)?);
    }
    let shared = Arc::new(shared);
    if let Some(following) = &following {
        crate::managed::install(&shared, &following.followed.borrow().config);
    }
    let settings = &shared.settings;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Turns true at SIGTERM, `drain_delay` before `shutdown` does.
    let (leaving_tx, leaving_rx) = watch::channel(false);
    let mut bound = Bound {
        listeners: Vec::new(),
        live: shared
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .watch_live(),
        admin: None,
        stopping: leaving_rx,
    };
    // Each worker takes its listeners from a queue, at start and as reloads add them.
    let (queues, mut added): (Vec<_>, Vec<_>) = (0..settings.workers)
        .map(|_| mpsc::unbounded_channel())
        .unzip();
    {
        let mut registry = shared.listeners.lock().unwrap_or_else(|e| e.into_inner());
        registry.workers = queues;
        for (id, listener) in settings.listeners.iter().enumerate() {
            let prepared = listeners::prepare(listener, id, settings.workers)?;
            bound.listeners.push((
                prepared.running.address,
                listener.mode,
                listener.serves.clone(),
            ));
            registry.start(prepared);
        }
        registry.publish();
    }
    let admin = match settings.admin {
        Some(address) => {
            let socket = listeners::bind(address)?;
            bound.admin = Some(
                socket
                    .local_addr()
                    .map_err(|source| ServerError::Bind { address, source })?,
            );
            Some(socket)
        }
        None => None,
    };

    let runtime = current_thread_runtime()?;
    let signals = {
        let _context = runtime.enter();
        let term = signal(SignalKind::terminate()).map_err(ServerError::Runtime)?;
        let int = signal(SignalKind::interrupt()).map_err(ServerError::Runtime)?;
        // Handled from the start: SIGHUP's default action would end the process.
        let hup = signal(SignalKind::hangup()).map_err(ServerError::Runtime)?;
        // Handled from the start too: logrotate's SIGUSR1 must not end the process.
        let usr1 = signal(SignalKind::user_defined1()).map_err(ServerError::Runtime)?;
        (term, int, hup, usr1)
    };
    on_bound(&bound);

    let own = added.remove(0);
    let mut threads = Vec::new();
    for (id, listeners) in added.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        let shutdown = shutdown_rx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ballast-worker-{}", id + 1))
            .spawn(move || -> Result<(), ServerError> {
                current_thread_runtime()?.block_on(worker(shared, listeners, shutdown));
                Ok(())
            })
            .map_err(ServerError::Runtime)?;
        threads.push(thread);
    }

    runtime.block_on(async {
        let (mut term, mut int, hup, usr1) = signals;
        tokio::spawn(reopen_on_usr1(Arc::clone(&shared), usr1));
        tokio::spawn(maintain_snapshot(Arc::clone(&shared), shutdown_rx.clone()));
        tokio::spawn(reload_on_hangup(
            Arc::clone(&shared),
            hup,
            reload.map(Arc::new),
            shutdown_rx.clone(),
        ));
        if let Some(following) = following {
            let shared = Arc::clone(&shared);
            tokio::spawn(crate::managed::apply_revisions(shared, following));
        }
        if let Some(socket) = admin {
            match TcpListener::from_std(socket) {
                Ok(listener) => {
                    let router = admin::router(Arc::clone(&shared));
                    let mut shutdown = shutdown_rx.clone();
                    tokio::spawn(async move {
                        let stop = async move { crate::shutdown::stopping(&mut shutdown).await };
                        if let Err(error) = axum::serve(listener, router)
                            .with_graceful_shutdown(stop)
                            .await
                        {
                            tracing::error!(%error, "admin endpoint failed");
                        }
                    });
                }
                Err(error) => tracing::error!(%error, "admin endpoint failed"),
            }
        }
        let shared_for_signal = Arc::clone(&shared);
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = int.recv() => tracing::info!("SIGINT: draining"),
            }
            shared_for_signal.draining.store(true, Ordering::Relaxed);
            let _ = leaving_tx.send(true);
            let delay = shared_for_signal.settings.drain_delay;
            if !delay.is_zero() {
                tracing::info!(
                    ?delay,
                    "still accepting while the fleet learns this LB leaves"
                );
                // A second signal cuts the delay short.
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            let _ = shutdown_tx.send(true);
        });
        worker(Arc::clone(&shared), own, shutdown_rx).await;
    });
    for thread in threads {
        match thread.join() {
            Ok(result) => result?,
            Err(_) => tracing::error!("a worker thread panicked"),
        }
    }
    if let Some(log) = &shared.access_log {
        log.finish();
    }
    tracing::info!("drained; exiting");
    Ok(())
}

/// SIGUSR1 reopens the access log (after logrotate moved it), as it does nginx's.
async fn reopen_on_usr1(shared: Arc<Shared>, mut usr1: tokio::signal::unix::Signal) {
    while usr1.recv().await.is_some() {
        match &shared.access_log {
            Some(log) => log.reopen(),
            None => tracing::info!("SIGUSR1: no access log to reopen"),
        }
    }
}

fn current_thread_runtime() -> Result<tokio::runtime::Runtime, ServerError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)
}

/// One worker: accept on every listener it is handed (at start, and as reloads add them) until
/// shutdown, then drain.
async fn worker(
    shared: Arc<Shared>,
    mut listeners: mpsc::UnboundedReceiver<WorkerListener>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Each connection holds a clone of `done`; when the last one is dropped, draining is over.
    let (done, mut all_done) = mpsc::channel::<()>(1);
    let http1 = Arc::new(http1_builder(&shared.settings));
    let mut accepting = Vec::new();
    tokio::spawn(sweep_idle(Arc::clone(&shared), shutdown.clone()));
    loop {
        let listener = tokio::select! {
            listener = listeners.recv() => listener,
            () = crate::shutdown::stopping(&mut shutdown) => break,
        };
        let Some(listener) = listener else {
            // No reload can add one any more.
            crate::shutdown::stopping(&mut shutdown).await;
            break;
        };
        let accepted = Accepting {
            shared: Arc::clone(&shared),
            http1: Arc::clone(&http1),
            shutdown: shutdown.clone(),
            done: done.clone(),
        };
        accepting.push(tokio::spawn(accepted.run(listener)));
    }
    for task in accepting {
        let _ = task.await;
    }
    drop(done);
    let drain = shared.settings.drain_timeout;
    if tokio::time::timeout(drain, all_done.recv()).await.is_err() {
        tracing::warn!(?drain, "drain timeout: closing the connections still open");
    }
}

/// What an accept loop shares with the worker that runs it.
struct Accepting {
    shared: Arc<Shared>,
    http1: Arc<http1::Builder>,
    shutdown: watch::Receiver<bool>,
    /// Cloned into every connection, so the worker knows when the last one is done.
    done: mpsc::Sender<()>,
}

impl Accepting {
    /// Accepts on `listener` until shutdown or a reload removes it, serving each connection on a
    /// task of its own.
    async fn run(self, listener: WorkerListener) {
        let Self {
            shared,
            http1,
            mut shutdown,
            done,
        } = self;
        let socket = match TcpListener::from_std(listener.socket) {
            Ok(socket) => socket,
            Err(error) => {
                tracing::error!(%error, "listener failed");
                return;
            }
        };
        let (mode, id, tls) = (listener.mode, listener.id, listener.tls);
        let proxy_protocol = listener.proxy_protocol;
        let mut removed = listener.removed;
        let mut errors =
            crate::shutdown::AcceptErrors::new(Some(shared.metrics.accept_errors().clone()));
        loop {
            let accepted = tokio::select! {
                accepted = crate::shutdown::accept(&socket, &mut shutdown, &mut errors) => accepted,
                () = crate::shutdown::stopping(&mut removed) => None,
            };
            let Some((stream, peer)) = accepted else {
                return;
            };
            let open = ConnectionGauge::open(shared.metrics.client_connections());
            let shared = Arc::clone(&shared);
            let http1 = Arc::clone(&http1);
            let mut shutdown = shutdown.clone();
            let done = done.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let _open = open;
                let _done = done;
                let timeout = shared.settings.timeouts.request_headers;
                let mut stream = stream;
                // Bytes read before the protocol's own code takes the connection.
                let mut first = BytesMut::new();
                let peer = if proxy_protocol {
                    match crate::proxy_protocol::read(&mut stream, &mut first, timeout).await {
                        Ok(client) => client.unwrap_or(peer),
                        Err(error) => {
                            shared.metrics.proxy_header_errors().inc();
                            tracing::debug!(%peer, %error, "connection closed");
                            return;
                        }
                    }
                } else {
                    peer
                };
                let local = stream.local_addr().unwrap_or(peer);
                let accepted = Accepted {
                    shared,
                    listener: id,
                    peer,
                    local,
                };
                match (mode, tls) {
                    // Each protocol's future boxed: the task is sized for the one it runs.
                    (Mode::Tcp, _) if first.is_empty() => Box::pin(accepted.tcp(stream)).await,
                    (Mode::Tcp, _) => Box::pin(accepted.tcp(Prefixed::new(first, stream))).await,
                    (Mode::Http, None) => {
                        if first.is_empty() {
                            first = crate::spare::take();
                        }
                        first.reserve(crate::spare::READ_CHUNK);
                        let speaks = sniff(&mut stream, &mut first, timeout).await;
                        let context = Arc::new(accepted.context("http"));
                        match speaks {
                            Some(Speaks::Http2) => {
                                let stream = Prefixed::new(first, stream);
                                Box::pin(http2::serve(
                                    context,
                                    stream,
                                    MAX_REQUEST_HEAD,
                                    &mut shutdown,
                                ))
                                .await;
                            }
                            Some(Speaks::Http1) if context.shared.http1_only(id) => {
                                Box::pin(h1::serve(context, stream, first, shutdown)).await
                            }
                            Some(Speaks::Http1) => {
                                let stream = Prefixed::new(first, stream);
                                Box::pin(serve_http1(context, stream, &http1, &mut shutdown)).await;
                            }
                            None => {}
                        }
                    }
                    (Mode::Http, Some(tls)) if first.is_empty() => {
                        Box::pin(accepted.tls(stream, tls, &http1, &mut shutdown)).await;
                    }
                    (Mode::Http, Some(tls)) => {
                        let stream = Prefixed::new(first, stream);
                        Box::pin(accepted.tls(stream, tls, &http1, &mut shutdown)).await;
                    }
                }
            });
        }
    }
}

/// A client connection accepted, with who the client is (by its PROXY header, where the
/// listener takes one) and the address it came to.
struct Accepted {
    shared: Arc<Shared>,
    listener: usize,
    peer: SocketAddr,
    local: SocketAddr,
}

impl Accepted {
    fn context(self, scheme: &'static str) -> ClientContext {
        ClientContext {
            client_value: crate::headers::client_value(self.peer.ip()),
            shared: self.shared,
            listener: self.listener,
            client: self.peer,
            local: self.local,
            scheme,
            tls: None,
            owns_connections: std::sync::atomic::AtomicBool::new(false),
        }
    }

    async fn tcp<S: AsyncRead + AsyncWrite + Unpin>(self, stream: S) {
        tcp::proxy(self.shared, self.listener, stream, self.peer, self.local).await;
    }

    /// Terminates TLS, then serves HTTP/2 or HTTP/1.1 as ALPN agreed (RFC 9113 §3.2).
    async fn tls<S>(
        self,
        stream: S,
        (acceptor, certificates): (tokio_rustls::TlsAcceptor, Arc<crate::tls::Certificate>),
        http1: &http1::Builder,
        shutdown: &mut watch::Receiver<bool>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let timeout = self.shared.settings.timeouts.request_headers;
        let accepting = acceptor.accept(stream);
        let Some(stream) = watchdog::handshake("TLS", self.peer, timeout, accepting).await else {
            return;
        };
        let session = stream.get_ref().1;
        let h2 = session.alpn_protocol() == Some(b"h2");
        let served = crate::tls::Served {
            certificates,
            sni: session.server_name().map(Into::into),
        };
        let mut context = self.context("https");
        context.tls = Some(served);
        let context = Arc::new(context);
        if h2 {
            http2::serve(context, stream, MAX_REQUEST_HEAD, shutdown).await;
        } else {
            serve_http1(context, stream, http1, shutdown).await;
        }
    }
}

/// HTTP/1.1 over TLS, on hyper's server.
async fn serve_http1<S>(
    context: Arc<ClientContext>,
    stream: S,
    http1: &http1::Builder,
    shutdown: &mut watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::clone(&context.shared);
    let (client, listener) = (context.client, context.listener);
    let (stream, activity, limits) = watchdog::watch(stream, &shared.settings.timeouts);
    let in_service = Arc::clone(&activity);
    let service = service_fn(move |request| {
        let context = Arc::clone(&context);
        let request_in_service = in_service.begin();
        async move {
            let response = hyper_path::service(context, request).await;
            drop(request_in_service);
            response
        }
    });
    let connection = http1
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(error) = watchdog::serve(connection, &activity, limits, shutdown).await {
        let kind = if error.is_parse_too_large() {
            Some(ErrorKind::HeadersTooLarge)
        } else if error.is_parse() {
            Some(ErrorKind::BadRequest)
        } else if error.is_timeout() {
            Some(ErrorKind::HeaderTimeout)
        } else {
            None
        };
        if let Some(kind) = kind {
            shared.count_error(listener, kind);
        }
        tracing::debug!(%client, %error, "client connection ended with an error");
    }
}

/// The protocol a plain-text client speaks.
enum Speaks {
    Http1,
    Http2,
}

/// HTTP/2 with prior knowledge starts with the connection preface, `PRI * HTTP/2.0`; no HTTP/1
/// method is called PRI, so four bytes tell them apart. `None` when the client sends nothing.
async fn sniff(stream: &mut TcpStream, first: &mut BytesMut, timeout: Duration) -> Option<Speaks> {
    const PREFACE: &[u8] = b"PRI ";
    loop {
        let seen = first.len().min(PREFACE.len());
        if first[..seen] != PREFACE[..seen] {
            return Some(Speaks::Http1);
        }
        if seen == PREFACE.len() {
            return Some(Speaks::Http2);
        }
        match tokio::time::timeout(timeout, stream.read_buf(first)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

fn http1_builder(settings: &Settings) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.timeouts.request_headers)
        .max_buf_size(MAX_REQUEST_HEAD as usize)
        .keep_alive(true);
    builder
}

/// Applies the configuration again at each SIGHUP, until shutdown.
async fn reload_on_hangup(
    shared: Arc<Shared>,
    mut hup: tokio::signal::unix::Signal,
    reload: Option<Arc<Reload>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            _ = crate::shutdown::stopping(&mut shutdown) => return,
        }
        let Some(reload) = &reload else {
            tracing::warn!("SIGHUP: started from flags, there is no --config file to reload");
            continue;
        };
        // Reading the file and building pickers (Maglev's tables) stays off the event loop.
        let (shared, reload) = (Arc::clone(&shared), Arc::clone(reload));
        let reloading = tokio::task::spawn_blocking(move || {
            crate::reload::reload(&shared, &reload);
        });
        let _ = reloading.await;
    }
}

/// Rebuilds the snapshot when an ejection starts, and again when the next one ends.
async fn maintain_snapshot(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let next = shared.rebuild();
        let wake = async {
            match next {
                Some(at) => {
                    tokio::time::sleep(shared.clock.until(at) + Duration::from_millis(1)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shared.changed.notified() => {}
            _ = wake => {}
            _ = crate::shutdown::stopping(&mut shutdown) => return,
        }
    }
}

/// Closes this worker's idle backend connections past their idle timeout, and at once those to a
/// backend that a request waits for room under its `max_connections`.
async fn sweep_idle(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let idle = shared.settings.timeouts.idle;
    let period = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut ticks = tokio::time::interval(period);
    let mut reap = shared.reap.subscribe();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = reap.changed() => {
                for backend in shared.backends() {
                    let wanted = backend.connections.wanted() as usize;
                    if wanted > 0 {
                        upstream::close_idle(backend.slot, wanted, &backend.counters.pooled_now);
                    }
                }
                continue;
            }
            _ = crate::shutdown::stopping(&mut shutdown) => return,
        }
        let backends = shared.backends();
        let mut by_slot: Vec<Option<&AtomicI64>> = vec![None; shared.slots()];
        for backend in &backends {
            if let Some(entry) = by_slot.get_mut(backend.slot) {
                *entry = Some(&*backend.counters.pooled_now);
            }
        }
        let stray = upstream::sweep(idle, |slot| by_slot.get(slot).copied().flatten());
        for backend in backends.iter().filter(|b| stray.contains(&b.slot)) {
            shared.distrust(backend);
        }
    }
}

/// Counts an open client connection for as long as it lives.
struct ConnectionGauge(Arc<AtomicI64>);

impl ConnectionGauge {
    fn open(count: &Arc<AtomicI64>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(count))
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
