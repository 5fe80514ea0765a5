//! Workloads from a host: a thread moves into the host's network namespace (`setns`), so every
//! socket it opens is that host's, and runs a small runtime of its own there. Each request is
//! recorded — when it started, how long it took, what it got — so a check judges from what
//! clients saw rather than from what the servers say of themselves.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::net::Host;

/// Runs `work` on a thread inside `host`'s network namespace.
pub fn on_host<T: Send + 'static>(
    host: &Host,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let path = host.netns_path();
    let name = host.name.clone();
    std::thread::spawn(move || {
        let namespace = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        rustix::thread::move_into_link_name_space(
            namespace.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .with_context(|| format!("entering {name}'s network namespace"))?;
        work()
    })
}

/// Runs `work` inside `host`'s network namespace and waits for what it returns.
pub fn run_on_host<T: Send + 'static>(
    host: &Host,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    on_host(host, work)
        .join()
        .map_err(|_| anyhow::anyhow!("a thread on {} panicked", host.name))?
}

/// One request as the client saw it.
#[allow(missing_docs)]
#[derive(Debug, Clone)]
pub struct Request {
    /// When it started, from the workload's origin.
    pub at: Duration,
    pub took: Duration,
    /// The response's status, or why there was none.
    pub outcome: Result<u16, String>,
}

impl Request {
    /// Whether the client got what it asked for (a 2xx).
    pub fn ok(&self) -> bool {
        matches!(self.outcome, Ok(status) if (200..300).contains(&status))
    }
}

/// GET requests from `concurrency` clients, each on a keep-alive connection of its own
/// (opened again after an error), until stopped.
#[allow(missing_docs)]
#[derive(Debug, Clone)]
pub struct GetLoad {
    pub target: SocketAddr,
    pub concurrency: usize,
    /// A request without a response this long is a failure (the client gives up).
    pub give_up_after: Duration,
}

/// A running workload: stop it to get its history.
pub struct Running {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<Vec<Request>>>,
}

impl Running {
    /// Stops the clients (each finishes its request in flight) and returns every request, in
    /// the order they started.
    pub fn stop(self) -> Result<Vec<Request>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut history = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the workload's thread panicked"))??;
        history.sort_by_key(|r| r.at);
        Ok(history)
    }
}

impl GetLoad {
    /// Starts it from `host`, timing requests from `origin`.
    pub fn start(self, host: &Host, origin: Instant) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = on_host(host, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("the workload's runtime")?;
            runtime.block_on(async move {
                let clients: Vec<_> = (0..self.concurrency)
                    .map(|_| tokio::spawn(client(self.clone(), origin, stopped.clone())))
                    .collect();
                let mut history = Vec::new();
                for client in clients {
                    history.extend(client.await.context("a workload client")?);
                }
                Ok(history)
            })
        });
        Running { stop, thread }
    }
}

async fn client(load: GetLoad, origin: Instant, stop: Arc<AtomicBool>) -> Vec<Request> {
    let mut history = Vec::new();
    let mut connection = None;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let outcome =
            match tokio::time::timeout(load.give_up_after, get(&load, &mut connection)).await {
                Ok(Ok(status)) => Ok(status),
                Ok(Err(error)) => {
                    connection = None;
                    Err(error)
                }
                Err(_) => {
                    connection = None;
                    Err(format!("no response in {} s", load.give_up_after.as_secs()))
                }
            };
        let failed = outcome.is_err();
        history.push(Request {
            at: started - origin,
            took: started.elapsed(),
            outcome,
        });
        if failed {
            // A refused connection fails at once: do not spin on it.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    history
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn get(load: &GetLoad, connection: &mut Option<Sender>) -> Result<u16, String> {
    if connection.as_ref().is_none_or(|c| c.is_closed()) {
        let stream = tokio::net::TcpStream::connect(load.target)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(driver);
        *connection = Some(sender);
    }
    let sender = connection.as_mut().ok_or("no connection")?;
    sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let request = hyper::Request::get("/")
        .header(hyper::header::HOST, load.target.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok(status)
}

/// `GET path` from `host` to `target`, one connection; the response's body when it is a 200.
/// For the lab's own looks at what a server says (an LB's `/metrics`), from where a client
/// would look.
pub fn fetch(host: &Host, target: SocketAddr, path: &str) -> Result<String> {
    let path = path.to_owned();
    run_on_host(host, move || get_page(target, &path, None))
}

/// The value of the sample `name` (without labels) in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// `GET path` from wherever the calling thread is (on a host: inside [`on_host`]), with a
/// bearer `token` if given; the body of a 200.
pub fn get_page(target: SocketAddr, path: &str, token: Option<&str>) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2))
        .with_context(|| format!("connecting to {target}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let authorization = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {target}\r\n{authorization}Connection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("a response without a head")?;
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!("{target}{path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}
