//! TCP mode: each client connection is paired with a backend connection and bytes are copied
//! both ways until either side closes. Least connections then counts open connections, and the
//! hash key is the client's address. A backend that refuses is retried on another: nothing has
//! been sent yet, so a connect retry is always safe. A session on which nothing moved either way
//! for the idle timeout is closed, as HAProxy's `timeout client` does. A pool that sends the PROXY
//! protocol opens each backend connection with the header naming the client. A listener's rate
//! limit counts connections: one over it is closed before a backend is chosen.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::key::{Affinity, HashKey};
use crate::metrics::ErrorKind;
use crate::protection::{self, Refusal};
use crate::state::Shared;

/// Proxies one client connection from `peer`, which came to `local`, to a backend of the pool
/// `listener` serves.
pub(crate) async fn proxy<S>(
    shared: Arc<Shared>,
    listener: usize,
    mut client: S,
    peer: SocketAddr,
    local: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let snapshot = shared.snapshot.load_full();
    if let Some(limit) = snapshot.listener_limit(listener)
        && limit
            .admit(peer.ip(), shared.fleet.as_deref())
            .await
            .is_err()
    {
        tracing::debug!(client = %peer, "connection over the listener's rate: closed");
        return;
    }
    let Some(pool) = snapshot.for_listener(listener) else {
        return;
    };
    let affinity = Affinity {
        key: if pool.uses_key {
            HashKey::of_client(peer.ip())
        } else {
            0
        },
        sticky: None,
    };
    let tries = 1 + pool.state.retries as usize;
    let mut tried = Vec::with_capacity(tries);
    for _ in 0..tries {
        let retry = !tried.is_empty();
        if retry && !protection::retry_allowed(&pool.state) {
            pool.state.counters.retry_refused();
            break;
        }
        let (index, _held) = match protection::admit(pool, affinity, &tried, retry).await {
            Ok(admitted) => admitted,
            Err(Refusal::NoBackend) => break,
            Err(Refusal::Overloaded) => {
                pool.state.counters.error(ErrorKind::Overloaded);
                return;
            }
        };
        tried.push(index);
        let backend = &pool.state.backends[index];
        let connect_timeout = pool.state.connect_timeout;
        let mut upstream = match within(connect_timeout, TcpStream::connect(backend.address)).await
        {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(backend = %backend.address, %error, "backend connect failed");
                shared.failure(&pool.state, index);
                continue;
            }
        };
        let _opened = backend.connections.opened();
        let _ = upstream.set_nodelay(true);
        if let Some(version) = pool.state.send_proxy_protocol {
            let header = crate::proxy_protocol::header(version, peer, local);
            if let Err(error) = upstream.write_all(&header).await {
                tracing::debug!(backend = %backend.address, %error, "PROXY header not sent");
                shared.failure(&pool.state, index);
                continue;
            }
        }
        let idle = shared.settings.timeouts.idle;
        let tunneled = match &pool.state.tls {
            None => {
                backend.outlier.success();
                crate::watchdog::tunnel(&mut client, &mut upstream, idle).await
            }
            Some(tls) => {
                // TLS origination: the client speaks clear text, the backend TLS.
                let handshake = tls.handshake(upstream, backend.address);
                let mut secured = match within(connect_timeout, handshake).await {
                    Ok(secured) => secured,
                    Err(error) => {
                        tracing::debug!(backend = %backend.address, %error, "backend TLS handshake failed");
                        shared.failure(&pool.state, index);
                        continue;
                    }
                };
                backend.outlier.success();
                crate::watchdog::tunnel(&mut client, &mut secured, idle).await
            }
        };
        if let Err(error) = tunneled {
            tracing::debug!(backend = %backend.address, %error, "tcp session ended");
        }
        pool.state.counters.observe(started.elapsed().as_secs_f64());
        return;
    }
    pool.state.counters.error(ErrorKind::NoBackend);
}

/// `step` within `limit`, running out of time an error like its others.
async fn within<T>(
    limit: std::time::Duration,
    step: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(limit, step).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("timed out after {limit:?}"),
        ))
    })
}
