//! The listeners a server runs, which a reload may add to and remove from while it serves.
//!
//! Each listener has an id for its whole life (snapshots map ids to pools, connections keep the
//! id they came in on) and is bound once per worker, with `SO_REUSEPORT`, so that every worker
//! accepts on it from its own queue. A listener removed stops accepting; the connections it
//! accepted stay until they finish, as they would on nginx's old workers after a reload.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::server::ServerError;
use crate::settings::{Listener, Mode, Serves};
use crate::tls::{self, Certificate};

/// One listener as a worker accepts on it.
pub(crate) struct WorkerListener {
    pub socket: std::net::TcpListener,
    pub mode: Mode,
    pub id: usize,
    /// Over TLS: the acceptor, and the certificates it serves (which requests are checked
    /// against).
    pub tls: Option<(TlsAcceptor, Arc<Certificate>)>,
    /// Connections open with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// Turns true when a reload removes the listener.
    pub removed: watch::Receiver<bool>,
}

/// A running listener.
#[derive(Debug)]
pub(crate) struct Running {
    /// As configured (the address as written: port 0 stays 0, so a reload finds it again).
    pub settings: Listener,
    /// Where it is bound.
    pub address: SocketAddr,
    pub certificate: Option<Arc<Certificate>>,
    removed: watch::Sender<bool>,
}

impl Running {
    /// Stops accepting (on every worker).
    pub(crate) fn remove(&self) {
        self.removed.send_replace(true);
    }
}

/// A listener bound and ready to hand to the workers, not yet accepting.
pub(crate) struct Prepared {
    pub id: usize,
    pub running: Running,
    /// One socket per worker.
    pub sockets: Vec<WorkerListener>,
}

/// Binds `settings` once per worker (the first socket on the configured address, the others
/// on the address it got) and loads its certificate, with `id` as its name in snapshots.
pub(crate) fn prepare(
    settings: &Listener,
    id: usize,
    workers: usize,
) -> Result<Prepared, ServerError> {
    let tls = (!settings.tls.is_empty())
        .then(|| tls::acceptor(&settings.tls))
        .transpose()?;
    let (acceptor, certificate) = tls.unzip();
    let first = bind(settings.address)?;
    let address = first.local_addr().map_err(|source| ServerError::Bind {
        address: settings.address,
        source,
    })?;
    let (removed, watching) = watch::channel(false);
    let mut sockets = Vec::with_capacity(workers);
    let mut socket = Some(first);
    for _ in 0..workers {
        let socket = match socket.take() {
            Some(first) => first,
            None => bind(address)?,
        };
        sockets.push(WorkerListener {
            socket,
            mode: settings.mode,
            id,
            tls: acceptor.clone().zip(certificate.clone()),
            proxy_protocol: settings.proxy_protocol,
            removed: watching.clone(),
        });
    }
    Ok(Prepared {
        id,
        running: Running {
            settings: settings.clone(),
            address,
            certificate,
            removed,
        },
        sockets,
    })
}

/// Every listener the server has run, by id, and the way to each worker.
#[derive(Debug)]
pub(crate) struct Registry {
    /// By id; `None` once removed.
    pub by_id: Vec<Option<Running>>,
    /// Each worker's queue of listeners to start accepting on.
    pub workers: Vec<mpsc::UnboundedSender<WorkerListener>>,
    /// The listeners running now, for whoever reports them (a managed LB's heartbeat).
    live: watch::Sender<Vec<Live>>,
}

/// A running listener as it is reported: where it is bound, its mode, what it serves.
pub(crate) type Live = (SocketAddr, Mode, Serves);

impl Default for Registry {
    fn default() -> Self {
        Self {
            by_id: Vec::new(),
            workers: Vec::new(),
            live: watch::Sender::new(Vec::new()),
        }
    }
}

impl Registry {
    /// Follows the running listeners as reloads add, remove and change them.
    pub(crate) fn watch_live(&self) -> watch::Receiver<Vec<Live>> {
        self.live.subscribe()
    }

    /// Tells the watchers what runs now (after a change).
    pub(crate) fn publish(&self) {
        let live = self
            .running()
            .map(|(_, r)| (r.address, r.settings.mode, r.settings.serves.clone()))
            .collect();
        self.live.send_replace(live);
    }

    /// The running listeners with their ids.
    pub(crate) fn running(&self) -> impl Iterator<Item = (usize, &Running)> {
        self.by_id
            .iter()
            .enumerate()
            .filter_map(|(id, running)| Some((id, running.as_ref()?)))
    }

    /// Starts accepting on `prepared` in every worker.
    pub(crate) fn start(&mut self, prepared: Prepared) {
        let id = prepared.id;
        if self.by_id.len() <= id {
            self.by_id.resize_with(id + 1, || None);
        }
        self.by_id[id] = Some(prepared.running);
        for (worker, socket) in self.workers.iter().zip(prepared.sockets) {
            // A worker gone is a server stopping: the socket closes with it.
            let _ = worker.send(socket);
        }
    }

    /// Stops accepting on listener `id` and forgets it; returns where it was bound.
    pub(crate) fn stop(&mut self, id: usize) -> Option<SocketAddr> {
        let running = self.by_id.get_mut(id).and_then(Option::take)?;
        running.remove();
        Some(running.address)
    }
}

/// A listening socket that shares its address with the other workers' (`SO_REUSEPORT`).
pub(crate) fn bind(address: SocketAddr) -> Result<std::net::TcpListener, ServerError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let error = |source| ServerError::Bind { address, source };
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(error)?;
    socket.set_reuse_address(true).map_err(error)?;
    socket.set_reuse_port(true).map_err(error)?;
    socket.set_nonblocking(true).map_err(error)?;
    socket.bind(&address.into()).map_err(error)?;
    socket.listen(4096).map_err(error)?;
    Ok(socket.into())
}
