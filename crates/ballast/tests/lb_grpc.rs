//! gRPC through the LB with a real gRPC stack on both sides (tonic): every call shape, trailers,
//! and a backend that dies mid-stream, through an h2c listener and a TLS listener, to a pool whose
//! backends speak h2c. The service is written by hand over a bytes codec, as tonic's generated
//! code would be, so no protobuf compiler is needed.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use support::{Process, TempDir, lb};
use tokio_stream::{Stream, StreamExt};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Service, StdError};
use tonic::server::{
    ClientStreamingService, Grpc, NamedService, ServerStreamingService, StreamingService,
    UnaryService,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};

/// Messages as raw bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

type Messages = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// `Unary`: answers `echo:` and the message. `Count`: the message is `N` or `N fail`; streams
/// `0`…`N-1`, then ends OK, or with FAILED_PRECONDITION and an `x-detail` trailer. `Join`: the
/// client's messages joined with `,`. `Chat`: answers each message as it arrives. `Stall`:
/// three messages, then nothing, ever.
#[derive(Debug, Clone)]
struct Echo {
    name: &'static str,
}

impl NamedService for Echo {
    const NAME: &'static str = "ballast.test.Echo";
}

struct Unary(&'static str);

impl UnaryService<Bytes> for Unary {
    type Response = Bytes;
    type Future = BoxFuture<Response<Bytes>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let name = self.0;
        Box::pin(async move {
            let mut body = b"echo:".to_vec();
            body.extend_from_slice(request.get_ref());
            let mut response = Response::new(Bytes::from(body));
            response
                .metadata_mut()
                .insert("x-backend", name.parse().expect("ascii"));
            Ok(response)
        })
    }
}

struct Count;

impl ServerStreamingService<Bytes> for Count {
    type Response = Bytes;
    type ResponseStream = Messages;
    type Future = BoxFuture<Response<Messages>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        Box::pin(async move {
            let asked = String::from_utf8_lossy(request.get_ref()).into_owned();
            let (count, fail) = match asked.split_once(' ') {
                Some((count, _)) => (count.to_owned(), true),
                None => (asked, false),
            };
            let count: usize = count
                .parse()
                .map_err(|_| Status::invalid_argument("a count"))?;
            let numbers = (0..count).map(|n| Ok(Bytes::from(n.to_string())));
            let end = fail.then(|| {
                let mut status = Status::failed_precondition("stopped on purpose");
                status
                    .metadata_mut()
                    .insert("x-detail", format!("after-{count}").parse().expect("ascii"));
                Err(status)
            });
            let stream: Messages = Box::pin(tokio_stream::iter(numbers.chain(end)));
            Ok(Response::new(stream))
        })
    }
}

struct Join;

impl ClientStreamingService<Bytes> for Join {
    type Response = Bytes;
    type Future = BoxFuture<Response<Bytes>, Status>;

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        Box::pin(async move {
            let mut messages = request.into_inner();
            let mut joined = Vec::new();
            while let Some(message) = messages.message().await? {
                if !joined.is_empty() {
                    joined.push(b',');
                }
                joined.extend_from_slice(&message);
            }
            Ok(Response::new(Bytes::from(joined)))
        })
    }
}

struct Chat;

impl StreamingService<Bytes> for Chat {
    type Response = Bytes;
    type ResponseStream = Messages;
    type Future = BoxFuture<Response<Messages>, Status>;

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        Box::pin(async move {
            let replies = request.into_inner().map(|message| {
                message.map(|m| {
                    let mut reply = b"re:".to_vec();
                    reply.extend_from_slice(&m);
                    Bytes::from(reply)
                })
            });
            let stream: Messages = Box::pin(replies);
            Ok(Response::new(stream))
        })
    }
}

struct Stall;

impl ServerStreamingService<Bytes> for Stall {
    type Response = Bytes;
    type ResponseStream = Messages;
    type Future = BoxFuture<Response<Messages>, Status>;

    fn call(&mut self, _: Request<Bytes>) -> Self::Future {
        Box::pin(async move {
            let first = tokio_stream::iter((0..3).map(|n| Ok(Bytes::from(n.to_string()))));
            let stream: Messages = Box::pin(first.chain(tokio_stream::pending()));
            Ok(Response::new(stream))
        })
    }
}

impl<B> Service<http::Request<B>> for Echo
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let name = self.name;
        Box::pin(async move {
            let mut grpc = Grpc::new(Raw);
            Ok(match request.uri().path() {
                "/ballast.test.Echo/Unary" => grpc.unary(Unary(name), request).await,
                "/ballast.test.Echo/Count" => grpc.server_streaming(Count, request).await,
                "/ballast.test.Echo/Join" => grpc.client_streaming(Join, request).await,
                "/ballast.test.Echo/Chat" => grpc.streaming(Chat, request).await,
                "/ballast.test.Echo/Stall" => grpc.server_streaming(Stall, request).await,
                "/ballast.test.Echo/plain" => {
                    // Not gRPC: tells an HTTP/1.1 client which protocol reached the backend.
                    let text = format!("{name} over {:?}", request.version());
                    http::Response::new(tonic::body::Body::new(http_body_util::Full::new(
                        Bytes::from(text),
                    )))
                }
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// A tonic server on a thread and runtime of its own: dropping it (or [`GrpcBackend::kill`])
/// ends the runtime with every connection on it, as a crashed process's would end.
struct GrpcBackend {
    address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GrpcBackend {
    fn start(name: &'static str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = runtime();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let serving = tonic::transport::Server::builder()
                    .add_service(Echo { name })
                    .serve_with_incoming(incoming);
                tokio::select! {
                    served = serving => served.expect("gRPC server"),
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection task: sockets close mid-stream.
            runtime.shutdown_background();
        });
        Self {
            address,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("backend thread");
        }
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn path(method: &'static str) -> PathAndQuery {
    PathAndQuery::from_static(method)
}

async fn client(channel: Channel) -> tonic::client::Grpc<Channel> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    grpc
}

/// Every call shape, and a call's trailers, through `channel`.
async fn every_call_shape(channel: Channel) {
    let mut grpc = client(channel.clone()).await;
    let reply: Response<Bytes> = grpc
        .unary(
            Request::new(Bytes::from_static(b"hello")),
            path("/ballast.test.Echo/Unary"),
            Raw,
        )
        .await
        .expect("unary call");
    assert_eq!(reply.metadata().get("x-backend").expect("header"), "g1");
    assert_eq!(&reply.into_inner()[..], b"echo:hello");

    let mut grpc = client(channel.clone()).await;
    let mut numbers: Streaming<Bytes> = grpc
        .server_streaming(
            Request::new(Bytes::from_static(b"1000")),
            path("/ballast.test.Echo/Count"),
            Raw,
        )
        .await
        .expect("server streaming call")
        .into_inner();
    let mut expected = 0;
    while let Some(message) = numbers.message().await.expect("message") {
        assert_eq!(message, expected.to_string(), "messages in order");
        expected += 1;
    }
    assert_eq!(expected, 1000, "every message arrived");

    let mut grpc = client(channel.clone()).await;
    let parts = (0..100).map(|n| Bytes::from(n.to_string()));
    let joined: Response<Bytes> = grpc
        .client_streaming(
            Request::new(tokio_stream::iter(parts)),
            path("/ballast.test.Echo/Join"),
            Raw,
        )
        .await
        .expect("client streaming call");
    let want = (0..100)
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(joined.into_inner(), want.as_bytes());

    // Each reply arrives before the next message is sent: the stream is open both ways at once.
    let mut grpc = client(channel.clone()).await;
    let (outgoing, queue) = tokio::sync::mpsc::channel::<Bytes>(1);
    let mut replies: Streaming<Bytes> = grpc
        .streaming(
            Request::new(tokio_stream::wrappers::ReceiverStream::new(queue)),
            path("/ballast.test.Echo/Chat"),
            Raw,
        )
        .await
        .expect("bidirectional call")
        .into_inner();
    for n in 0..10 {
        outgoing
            .send(Bytes::from(n.to_string()))
            .await
            .expect("send");
        let reply = replies.message().await.expect("reply").expect("a reply");
        assert_eq!(reply, format!("re:{n}"));
    }
    drop(outgoing);
    assert!(replies.message().await.expect("end").is_none());

    // A status with metadata after messages travels in the trailers.
    let mut grpc = client(channel).await;
    let mut numbers: Streaming<Bytes> = grpc
        .server_streaming(
            Request::new(Bytes::from_static(b"5 fail")),
            path("/ballast.test.Echo/Count"),
            Raw,
        )
        .await
        .expect("server streaming call")
        .into_inner();
    for n in 0..5 {
        let message = numbers.message().await.expect("message").expect("some");
        assert_eq!(message, n.to_string());
    }
    let status = numbers
        .message()
        .await
        .expect_err("the call fails at the end");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.message(), "stopped on purpose");
    assert_eq!(
        status.metadata().get("x-detail").expect("custom trailer"),
        "after-5"
    );
}

#[test]
fn every_grpc_call_shape_passes_an_h2c_listener_to_h2c_backends() {
    let backend = GrpcBackend::start("g1");
    let (_lb, address) = lb(&[backend.address], &["--protocol", "h2c"]);
    runtime().block_on(async {
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the LB");
        every_call_shape(channel).await;
    });

    // A plain HTTP/1.1 client of the same listener reaches the backend over HTTP/2.
    let reply = support::get(address, "/ballast.test.Echo/plain", &[]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, "g1 over HTTP/2.0");
}

#[test]
fn every_grpc_call_shape_passes_a_tls_listener_to_h2c_backends() {
    let backend = GrpcBackend::start("g1");
    let dir = TempDir::new("grpc-tls");
    let (cert_path, key_path, cert) = support::localhost_tls_files(dir.path());
    let (_lb, address) = lb(
        &[backend.address],
        &[
            "--protocol",
            "h2c",
            "--tls-cert",
            &cert_path,
            "--tls-key",
            &key_path,
        ],
    );
    runtime().block_on(async {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&cert))
            .domain_name("localhost");
        let channel = Endpoint::from_shared(format!("https://{address}"))
            .expect("endpoint")
            .tls_config(tls)
            .expect("TLS config")
            .connect()
            .await
            .expect("connect to the LB");
        every_call_shape(channel).await;
    });
}

#[test]
fn a_backend_that_dies_mid_stream_gives_the_client_unavailable() {
    let mut backend = GrpcBackend::start("g1");
    let (lb, address): (Process, SocketAddr) = lb(&[backend.address], &["--protocol", "h2c"]);
    runtime().block_on(async {
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the LB");
        let mut grpc = client(channel).await;
        let mut numbers: Streaming<Bytes> = grpc
            .server_streaming(
                Request::new(Bytes::new()),
                path("/ballast.test.Echo/Stall"),
                Raw,
            )
            .await
            .expect("server streaming call")
            .into_inner();
        for n in 0..3 {
            let message = numbers.message().await.expect("message").expect("some");
            assert_eq!(message, n.to_string());
        }
        backend.kill();
        // Bounded so that a hang fails the test rather than stalling the suite.
        let ended = tokio::time::timeout(Duration::from_secs(60), numbers.message())
            .await
            .expect("the call ends once its backend is gone");
        let status = ended.expect_err("the call fails");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    });
    drop(lb);
}
