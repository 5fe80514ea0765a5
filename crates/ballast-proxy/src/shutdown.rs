//! Stopping cleanly: every accept loop and connection watches one `watch` channel that turns
//! `true` when the server starts draining.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Resolves once `shutdown` holds `true` (at once if it already does), or its sender is gone.
pub(crate) async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here, not in the caller's future.
    let _ = shutdown.wait_for(|&stop| stop).await.map(|_| ());
}

/// The next connection on `listener` (with Nagle's algorithm off), or `None` once `shutdown`
/// turns true. Accept errors (out of descriptors, a connection reset before it was accepted) are
/// counted in `errors`, warned about at most once a second, and waited out briefly: they must
/// not stop the server, nor fill its log.
pub(crate) async fn accept(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
    errors: &mut AcceptErrors,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer));
                }
                Err(error) => {
                    errors.record(&error);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            () = stopping(shutdown) => return None,
        }
    }
}

/// Failed accepts of one accept loop: counted, and logged at most once a second with how many
/// the log did not show.
#[derive(Debug)]
pub(crate) struct AcceptErrors {
    counter: Option<Counter>,
    last_warning: Option<Instant>,
    unreported: u64,
}

impl AcceptErrors {
    pub(crate) fn new(counter: Option<Counter>) -> Self {
        Self {
            counter,
            last_warning: None,
            unreported: 0,
        }
    }

    fn record(&mut self, error: &std::io::Error) {
        if let Some(counter) = &self.counter {
            counter.inc();
        }
        self.unreported += 1;
        if self
            .last_warning
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(%error, failures = self.unreported, "accept failed");
            self.last_warning = Some(Instant::now());
            self.unreported = 0;
        }
    }
}

/// Serves an HTTP connection until it ends; once `shutdown` turns true, lets the request in
/// flight finish and then closes it.
pub(crate) async fn serve_gracefully<C: GracefulConnection>(
    connection: C,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), C::Error> {
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        () = stopping(shutdown) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}
