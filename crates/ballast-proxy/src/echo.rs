//! `ballast echo`: a demo backend for tests, benchmarks and demos. It answers every request with
//! its name (so a client can see where a request went), `/health` with 200, `/headers` with the
//! request headers it received, `/body` with the request body it received, `/chunked` with its
//! name in a chunked response, and an `Upgrade` request by switching to echoing bytes back. It can
//! be made slow (`latency` ± `jitter`) or flaky (`fail_rate` of 500s).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How an echo backend behaves.
#[derive(Debug, Clone)]
pub struct EchoSettings {
    /// The name it answers with.
    pub name: String,
    /// Added to every response.
    pub latency: Duration,
    /// The latency varies uniformly by up to this much either way.
    pub jitter: Duration,
    /// The share of requests (0.0–1.0) answered with 500.
    pub fail_rate: f64,
}

/// Serves HTTP/1.1 on `listener` until `shutdown` turns true, then lets requests in flight
/// finish.
pub async fn serve(
    listener: TcpListener,
    settings: EchoSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let settings = Arc::new(settings);
    let mut errors = crate::shutdown::AcceptErrors::new(None);
    loop {
        let Some((stream, peer)) =
            crate::shutdown::accept(&listener, &mut shutdown, &mut errors).await
        else {
            return;
        };
        let settings = Arc::clone(&settings);
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(Arc::clone(&settings), peer, request));
            let builder = auto::Builder::new(TokioExecutor::new()).http1_only();
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(error) = crate::shutdown::serve_gracefully(connection, &mut shutdown).await {
                tracing::debug!(%peer, %error, "echo connection ended");
            }
        });
    }
}

async fn answer(
    settings: Arc<EchoSettings>,
    peer: SocketAddr,
    mut request: Request<Incoming>,
) -> Result<Response<Reply>, Infallible> {
    if request.uri().path() == "/health" {
        return Ok(text(&settings, StatusCode::OK, "ok\n".to_owned()));
    }
    if request.headers().contains_key(header::UPGRADE) {
        return Ok(upgrade(&settings, &mut request));
    }
    let delay = delay(&settings);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let path = request.uri().path().to_owned();
    let headers = request.headers().clone();
    // Read the body to the end so the connection can be reused.
    let received = request
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes())
        .unwrap_or_default();
    if settings.fail_rate > 0.0 && fastrand::f64() < settings.fail_rate {
        let body = format!("{} failed\n", settings.name);
        return Ok(text(&settings, StatusCode::INTERNAL_SERVER_ERROR, body));
    }
    let mut body = format!("{}\n", settings.name);
    if path == "/body" {
        body.push_str(&String::from_utf8_lossy(&received));
    }
    if path == "/chunked" {
        let response = text(&settings, StatusCode::OK, String::new());
        let chunks = [body.clone(), "and more\n".to_owned()];
        return Ok(response.map(|_| Reply::Chunks(chunks.map(Bytes::from).into())));
    }
    if path == "/headers" {
        let _ = writeln!(body, "peer: {peer}");
        for (name, value) in &headers {
            let _ = writeln!(
                body,
                "{name}: {}",
                String::from_utf8_lossy(value.as_bytes())
            );
        }
    }
    Ok(text(&settings, StatusCode::OK, body))
}

fn delay(settings: &EchoSettings) -> Duration {
    let jitter = settings.jitter.as_secs_f64();
    let base = settings.latency.as_secs_f64();
    let seconds = base + jitter * (fastrand::f64() * 2.0 - 1.0);
    Duration::from_secs_f64(seconds.max(0.0))
}

/// Switches to echoing bytes back, for testing upgrade tunnelling.
fn upgrade(settings: &EchoSettings, request: &mut Request<Incoming>) -> Response<Reply> {
    let protocol = request.headers()[header::UPGRADE].clone();
    let upgrading = hyper::upgrade::on(request);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrading.await {
            let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
        }
    });
    let mut response = text(settings, StatusCode::SWITCHING_PROTOCOLS, String::new());
    response.headers_mut().insert(header::UPGRADE, protocol);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    response
}

fn text(settings: &EchoSettings, status: StatusCode, body: String) -> Response<Reply> {
    let mut response = Response::new(Reply::Whole(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(name) = HeaderValue::from_str(&settings.name) {
        headers.insert("x-backend", name);
    }
    response
}

/// An echo response body: whole (sent with `Content-Length`) or in chunks of unknown total size
/// (sent with `Transfer-Encoding: chunked`).
#[derive(Debug)]
pub enum Reply {
    /// The whole body at once.
    Whole(Full<Bytes>),
    /// Chunks, one frame each.
    Chunks(std::collections::VecDeque<Bytes>),
}

impl http_body::Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Whole(full) => std::pin::Pin::new(full).poll_frame(cx),
            Self::Chunks(chunks) => {
                std::task::Poll::Ready(chunks.pop_front().map(|c| Ok(http_body::Frame::data(c))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Whole(full) => full.is_end_stream(),
            Self::Chunks(chunks) => chunks.is_empty(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Whole(full) => full.size_hint(),
            Self::Chunks(_) => http_body::SizeHint::default(),
        }
    }
}
