//! HTTP/2 clients (h2c with prior knowledge, and `h2` by ALPN over TLS), served on the `h2`
//! crate directly. hyper's HTTP/2 server cannot send an informational response (hyper#2743): a
//! client's `Expect: 100-continue` waited a second for a `100` that never came. Serving the
//! streams here, the LB answers `100` as soon as the head arrives, as the HTTP/1.1 paths do, and
//! owns what hyper kept out of reach: flow control on both sides of the proxy, a client's
//! RST_STREAM ending the backend exchange at once, trailers. Each stream then takes the one
//! request path ([`crate::hyper_path::handle`]).

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::server::{Connection, SendResponse};
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::attempt::ClientContext;
use crate::hyper_path::{self, ClientBody, ProxyBody};
use crate::metrics::ErrorKind;
use crate::watchdog::{self, Activity, InService, Watched};

/// Per-stream and per-connection receive windows: large enough that a client's upload is not
/// throttled by round trips (the protocol's 64 KiB default is), as hyper and nginx choose.
const RECEIVE_WINDOW: u32 = 1024 * 1024;
/// Streams one client may have open at once (nginx: 128; hyper: 200).
const MAX_STREAMS: u32 = 200;
/// Bytes queued for sending per stream before the body's source is asked to wait.
const MAX_SEND_BUFFER: usize = 400 * 1024;

/// Serves one HTTP/2 connection until it ends, the server drains, or it does nothing for longer
/// than the listener's timeouts allow (see [`crate::watchdog`]).
pub(crate) async fn serve<S>(
    context: Arc<ClientContext>,
    stream: S,
    max_header_list: u32,
    shutdown: &mut watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (stream, activity, limits) = watchdog::watch(stream, &context.shared.settings.timeouts);
    let handshake = h2::server::Builder::new()
        .initial_window_size(RECEIVE_WINDOW)
        .initial_connection_window_size(RECEIVE_WINDOW)
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(max_header_list)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .handshake::<_, Bytes>(stream);
    let client = context.client;
    let Some(connection) =
        watchdog::handshake("HTTP/2", client, limits.first_request, handshake).await
    else {
        return;
    };
    let serving = Serving {
        connection,
        context: Arc::clone(&context),
        activity: Arc::clone(&activity),
    };
    if let Err(error) = watchdog::serve(serving, &activity, limits, shutdown).await {
        // A client that broke the protocol is a bad request; one that went away is not.
        if error.is_go_away() && !error.is_remote() && error.reason() != Some(h2::Reason::NO_ERROR)
        {
            context
                .shared
                .count_error(context.listener, ErrorKind::BadRequest);
        }
        tracing::debug!(%client, %error, "client connection ended with an error");
    }
}

/// A connection accepting streams, each proxied on a task of its own; it resolves when the
/// connection has closed.
struct Serving<S> {
    connection: Connection<Watched<S>, Bytes>,
    context: Arc<ClientContext>,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for Serving<S> {
    type Output = Result<(), h2::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match ready!(self.connection.poll_accept(cx)) {
                Some(Ok((request, respond))) => {
                    let in_service = self.activity.begin();
                    let context = Arc::clone(&self.context);
                    tokio::spawn(proxy_stream(context, request, respond, in_service));
                }
                Some(Err(error)) => return Poll::Ready(Err(error)),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> watchdog::Graceful for Serving<S> {
    fn graceful_shutdown(self: Pin<&mut Self>) {
        self.get_mut().connection.graceful_shutdown();
    }
}

/// One stream: the request proxied, the response sent back, its body paced by the client's
/// flow control. A client's RST_STREAM at any point drops the exchange (and with it the backend
/// connection, which still carries the rest of the response).
async fn proxy_stream(
    context: Arc<ClientContext>,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    _in_service: InService,
) {
    let (parts, body) = request.into_parts();
    // RFC 9110 §10.1.1: a server must not wait for the body before sending 100.
    if crate::headers::expects_continue(&parts.headers) && !body.is_end_stream() {
        let mut continue_ = Response::new(());
        *continue_.status_mut() = StatusCode::CONTINUE;
        if respond.send_informational(continue_).is_err() {
            return;
        }
    }
    let body = ClientBody::http2(RecvBody::new(body, &parts.headers));
    // Boxed: the exchange's future is large, and this one is moved into its task at every
    // stream's spawn (the copy was 6% of a profile under h2load).
    let mut handled = Box::pin(hyper_path::handle(
        context,
        Request::from_parts(parts, body),
    ));
    let response = tokio::select! {
        response = &mut handled => response,
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
    };
    let (mut parts, body) = response.into_parts();
    set_content_length(&mut parts.headers, parts.status, &body);
    let end = body.is_end_stream();
    match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(send) if !end => {
            if let Err(error) = send_body(body, send).await {
                tracing::debug!(%error, "response body not sent whole");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::debug!(%error, "response not sent"),
    }
}

/// A body of a known size says so, as HTTP/1.1 would have: a client may show progress or
/// refuse what is too large before reading it.
fn set_content_length(headers: &mut HeaderMap, status: StatusCode, body: &ProxyBody) {
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if bodiless || headers.contains_key(header::CONTENT_LENGTH) {
        return;
    }
    if let Some(length) = body.size_hint().exact() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
}

/// Sends a response body as DATA frames, each within the window the client has granted, then
/// its trailers if it has any.
async fn send_body(
    mut body: ProxyBody,
    mut send: SendStream<Bytes>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    loop {
        let frame = poll_fn(|cx| {
            if let Poll::Ready(reset) = send.poll_reset(cx) {
                return Poll::Ready(Some(Err(match reset {
                    Ok(reason) => format!("the client reset the stream ({reason})").into(),
                    Err(error) => error.into(),
                })));
            }
            Pin::new(&mut body).poll_frame(cx)
        })
        .await;
        let frame = match frame {
            None => {
                send.send_data(Bytes::new(), true)?;
                return Ok(());
            }
            Some(Err(error)) => {
                send.send_reset(h2::Reason::INTERNAL_ERROR);
                return Err(error);
            }
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(mut data) => {
                while !data.is_empty() {
                    send.reserve_capacity(data.len());
                    let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                        Some(granted) => granted?,
                        None => return Err("the stream closed".into()),
                    };
                    let chunk = data.split_to(granted.min(data.len()));
                    let last = data.is_empty() && body.is_end_stream();
                    send.send_data(chunk, last)?;
                    if last {
                        return Ok(());
                    }
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            send.send_trailers(trailers)?;
            return Ok(());
        }
    }
}

/// A client's request body on its way to the backend. Each chunk's window is handed back to the
/// client as it is passed on, so the client sends as fast as the backend takes it, no faster.
#[derive(Debug)]
pub(crate) struct RecvBody {
    stream: RecvStream,
    data_done: bool,
    length: Option<u64>,
}

impl RecvBody {
    fn new(stream: RecvStream, headers: &HeaderMap) -> Self {
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Self {
            stream,
            data_done: false,
            length,
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => self.data_done = true,
            }
        }
        match ready!(self.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // h2 checks the DATA against a declared length (RFC 9113 §8.1.1), so it can be trusted.
        self.length.map_or_else(SizeHint::new, SizeHint::with_exact)
    }
}
