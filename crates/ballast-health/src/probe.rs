//! Active probes: a TCP connect, or an HTTP `GET` of a path where a 2xx or 3xx answer means up
//! (over TLS for a pool that speaks it, verified as the LB's own connections are).
//! A probe tells a definite failure (the connection was refused, the answer was an error status)
//! from a silence (no answer within the timeout): the first is evidence, the second is only the
//! absence of a heartbeat, which the phi accrual detector weighs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::BackendTls;

/// How a backend is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A TCP connection is accepted.
    Tcp,
    /// `GET path` answers 2xx or 3xx.
    Http {
        /// The path, e.g. `/health`.
        path: String,
        /// TLS first, where the backend speaks it.
        tls: Option<Arc<BackendTls>>,
    },
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Up.
    Up,
    /// Down for sure: refused, reset, or an error status; the reason says which.
    Failed(String),
    /// No answer within the timeout.
    TimedOut,
}

impl Outcome {
    /// Whether the backend answered as a healthy one does.
    pub fn is_up(&self) -> bool {
        matches!(self, Self::Up)
    }
}

/// Probes `address` once, within `timeout` in all.
pub async fn probe(address: SocketAddr, check: &Check, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, attempt(address, check)).await {
        Ok(Ok(())) => Outcome::Up,
        Ok(Err(reason)) => Outcome::Failed(reason),
        Err(_) => Outcome::TimedOut,
    }
}

async fn attempt(address: SocketAddr, check: &Check) -> Result<(), String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Check::Http { path, tls } = check else {
        return Ok(());
    };
    let _ = stream.set_nodelay(true);
    match tls {
        None => get(stream, address, path).await,
        Some(tls) => {
            let stream = tls
                .handshake(stream, address)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            get(stream, address, path).await
        }
    }
}

/// `GET path` on `io`, a connection to `address`.
async fn get<I>(io: I, address: SocketAddr, path: &str) -> Result<(), String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    // The connection is driven beside the request; it ends with this probe.
    let driving = tokio::spawn(connection);
    let request = Request::get(path)
        .header(hyper::header::HOST, address.to_string())
        .header(hyper::header::USER_AGENT, "ballast-health")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("the health path `{path}`: {e}"))?;
    let answer = sender.send_request(request).await;
    driving.abort();
    let status = answer.map_err(|e| format!("HTTP: {e}"))?.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("GET {path}: {status}"))
    }
}
