//! `ballast lb` beyond plain HTTP/1.1: TCP mode, HTTP/2 with prior knowledge (h2c), TLS
//! termination with HTTP/2 by ALPN, and a configuration file with several listeners and pools.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{Process, TempDir, backend_of, echo, get, lb};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// GET `uri` over HTTP/2 on an established connection; returns (version, body).
async fn h2_get<S>(io: S, uri: &str) -> (http::Version, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    let request = http::Request::get(uri)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let version = response.version();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (version, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn tcp_mode_round_trips_bytes_and_spreads_connections() {
    let (_b1, b1) = echo("b1", &[]);
    let (_b2, b2) = echo("b2", &[]);
    let (_lb, address) = lb(&[b1, b2], &["--mode", "tcp", "--algorithm", "round_robin"]);
    let names: Vec<String> = (0..4)
        .map(|_| backend_of(&get(address, "/", &[])))
        .collect();
    assert_eq!(names, ["b1", "b2", "b1", "b2"]);

    // Raw bytes both ways on one connection: an HTTP exchange the LB does not parse.
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(b"GET /headers HTTP/1.1\r\nHost: raw\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        !reply.contains("x-forwarded-for"),
        "TCP mode does not touch the bytes: {reply}"
    );
}

#[test]
fn tcp_mode_skips_a_dead_backend() {
    let (_b1, b1) = echo("b1", &[]);
    let dead = support::unused_addr();
    let (_lb, address) = lb(
        &[dead, b1],
        &["--mode", "tcp", "--algorithm", "round_robin"],
    );
    for _ in 0..6 {
        assert_eq!(backend_of(&get(address, "/", &[])), "b1");
    }
}

#[test]
fn http2_prior_knowledge_is_proxied() {
    let (_b1, b1) = echo("b1", &[]);
    let (_lb, address) = lb(&[b1], &[]);
    let (version, body) = runtime().block_on(async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        h2_get(stream, &format!("http://{address}/headers")).await
    });
    assert_eq!(version, http::Version::HTTP_2);
    assert!(body.starts_with("b1\n"), "{body}");
    assert!(body.contains(&format!("host: {address}")), "{body}");
}

/// A raw HTTP/2 client on `address` (the `h2` crate: hyper's client hides informational
/// responses).
async fn h2_client(address: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(connection);
    client.ready().await.expect("ready")
}

/// Reads an HTTP/2 response body whole, handing its window back as it goes.
async fn h2_body(response: http::Response<h2::RecvStream>) -> Vec<u8> {
    let mut body = response.into_body();
    let mut read = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        read.extend_from_slice(&chunk);
    }
    read
}

/// RFC 9110 §10.1.1: an HTTP/2 upload that expects `100 Continue` gets it from the LB before it
/// sends a byte of its body (curl used to wait a second for it), and the expectation, met on
/// the client's hop, never reaches the backend.
#[test]
fn http2_uploads_expecting_continue_get_it_at_once() {
    let (_b1, b1) = echo("b1", &[]);
    let (_lb, address) = lb(&[b1], &[]);
    let body = runtime().block_on(async {
        let mut client = h2_client(address).await;
        let request = http::Request::post(format!("http://{address}/headers"))
            .header("expect", "100-continue")
            .header("content-length", "5")
            .body(())
            .expect("request");
        let (mut response, mut upload) = client.send_request(request, false).expect("send");
        // No body is sent until the 100 arrives: without it, this waits for ever.
        let informational = tokio::time::timeout(
            Duration::from_secs(60),
            std::future::poll_fn(|cx| response.poll_informational(cx)),
        )
        .await
        .expect("no 100 Continue while the body waits for it")
        .expect("an informational response before the final one")
        .expect("a well-formed 100");
        assert_eq!(informational.status(), http::StatusCode::CONTINUE);
        upload
            .send_data(Bytes::from_static(b"hello"), true)
            .expect("body");
        let response = response.await.expect("response");
        assert_eq!(response.status(), http::StatusCode::OK);
        String::from_utf8(h2_body(response).await).expect("utf-8")
    });
    assert!(body.starts_with("b1\n"), "{body}");
    assert!(body.contains("content-length: 5"), "{body}");
    assert!(
        !body.to_ascii_lowercase().contains("expect:"),
        "the expectation reached the backend: {body}"
    );
}

/// Bodies larger than every HTTP/2 window (1 MiB) flow both ways: the LB hands the client's
/// window back as the backend takes the upload, and sends the download as the client grants.
#[test]
fn http2_bodies_larger_than_the_windows_flow_both_ways() {
    let (_b1, b1) = echo("b1", &[]);
    let (_lb, address) = lb(&[b1], &[]);
    // Text: the echo backend returns the body as text.
    let upload: Vec<u8> = (0..3 * 1024 * 1024)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let sent = Bytes::from(upload.clone());
    let (status, body) = runtime().block_on(async move {
        let mut client = h2_client(address).await;
        let request = http::Request::post(format!("http://{address}/body"))
            .body(())
            .expect("request");
        let (response, mut stream) = client.send_request(request, false).expect("send");
        let mut left = sent;
        while !left.is_empty() {
            stream.reserve_capacity(left.len());
            let granted = std::future::poll_fn(|cx| stream.poll_capacity(cx))
                .await
                .expect("the stream is open")
                .expect("capacity");
            let chunk = left.split_to(granted.min(left.len()));
            stream.send_data(chunk, left.is_empty()).expect("data");
        }
        let response = response.await.expect("response");
        (response.status(), h2_body(response).await)
    });
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(&body[..3], b"b1\n");
    assert_eq!(
        body.len(),
        3 + upload.len(),
        "the body came back cut or padded"
    );
    assert!(body[3..] == upload[..], "the body came back changed");
}

/// An LB terminating TLS with a fresh self-signed certificate for `localhost`, and a client
/// connector that trusts it and offers `alpn`.
struct TlsLb {
    _dir: TempDir,
    _lb: Process,
    address: SocketAddr,
    admin: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    roots: Arc<rustls::RootCertStore>,
}

impl TlsLb {
    fn start(backends: &[SocketAddr], extra: &[&str], alpn: &[&[u8]]) -> Self {
        let dir = TempDir::new("tls");
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, certified.cert.pem()).expect("write cert");
        std::fs::write(&key_path, certified.signing_key.serialize_pem()).expect("write key");
        let mut args = vec![
            "--tls-cert",
            cert_path.to_str().expect("utf-8 path"),
            "--tls-key",
            key_path.to_str().expect("utf-8 path"),
        ];
        args.extend_from_slice(extra);
        let (lb, address) = lb(backends, &args);
        let admin = lb.admin_addr();

        let mut roots = rustls::RootCertStore::empty();
        roots.add(certified.cert.der().clone()).expect("root");
        let roots = Arc::new(roots);
        let versions = rustls::DEFAULT_VERSIONS;
        Self {
            _dir: dir,
            _lb: lb,
            address,
            admin,
            connector: client(&roots, versions, alpn),
            roots,
        }
    }

    /// A client of its own (its own session store) that speaks `versions`.
    fn client(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> tokio_rustls::TlsConnector {
        client(&self.roots, versions, &[b"http/1.1"])
    }

    async fn connect(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        self.connect_with(&self.connector).await
    }

    async fn connect_with(
        &self,
        connector: &tokio_rustls::TlsConnector,
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let stream = tokio::net::TcpStream::connect(self.address)
            .await
            .expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        connector
            .connect(name, stream)
            .await
            .expect("TLS handshake")
    }
}

/// A connector trusting `roots`, speaking `versions`, offering `alpn`.
fn client(
    roots: &Arc<rustls::RootCertStore>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(Arc::clone(roots))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One GET over `tls` to its end, so that the session's tickets (sent after a TLS 1.3
/// handshake) have been read; and how the handshake went.
async fn get_and_close(
    mut tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> (Option<rustls::HandshakeKind>, String) {
    tokio::io::AsyncWriteExt::write_all(
        &mut tls,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let mut reply = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut reply).await;
    let kind = tls.get_ref().1.handshake_kind();
    (kind, String::from_utf8_lossy(&reply).into_owned())
}

/// Many clients, then the first again: it resumes its session (no certificate signature), with
/// TLS 1.3 and 1.2 alike, whatever number of clients came between (a session cache alone
/// would have forgotten it).
#[test]
fn a_returning_tls_client_resumes_its_session_however_many_came_between() {
    let (_b1, b1) = echo("b1", &[]);
    let tls_lb = TlsLb::start(&[b1], &["--workers", "2"], &[b"http/1.1"]);
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let first = tls_lb.client(versions);
        let kinds = runtime().block_on(async {
            let (kind, reply) = get_and_close(tls_lb.connect_with(&first).await).await;
            assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
            assert_eq!(kind, Some(rustls::HandshakeKind::Full));
            for _ in 0..300 {
                let other = tls_lb.client(versions);
                get_and_close(tls_lb.connect_with(&other).await).await;
            }
            let mut kinds = Vec::new();
            for _ in 0..3 {
                let (kind, reply) = get_and_close(tls_lb.connect_with(&first).await).await;
                assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
                kinds.push(kind);
            }
            kinds
        });
        assert!(
            kinds
                .iter()
                .all(|k| *k == Some(rustls::HandshakeKind::Resumed)),
            "{versions:?}: {kinds:?}"
        );
    }
}

/// Whatever order a client lists its suites in (rustls's own lists AES-256-GCM-SHA384 first, as
/// OpenSSL's does), the listener picks one hashed with SHA-256, which CPUs hash in hardware.
#[test]
fn a_tls_listener_picks_suites_hashed_with_sha256() {
    let (_b1, b1) = echo("b1", &[]);
    let tls_lb = TlsLb::start(&[b1], &[], &[b"http/1.1"]);
    let offered = rustls::crypto::ring::default_provider().cipher_suites;
    assert_eq!(
        offered[0].suite(),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
        "the client prefers a SHA-384 suite"
    );
    for (versions, wanted) in [
        (
            &[&rustls::version::TLS13][..],
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
        ),
        (
            &[&rustls::version::TLS12][..],
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
    ] {
        let suite = runtime().block_on(async {
            let tls = tls_lb.connect_with(&tls_lb.client(versions)).await;
            tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite())
        });
        assert_eq!(suite, Some(wanted), "{versions:?}");
    }
}

#[test]
fn tls_terminates_and_negotiates_http2() {
    let (_b1, b1) = echo("b1", &[]);
    let tls_lb = TlsLb::start(&[b1], &[], &[b"h2"]);
    let (alpn, version, body) = runtime().block_on(async {
        let tls = tls_lb.connect().await;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let (version, body) = h2_get(tls, "https://localhost/headers").await;
        (alpn, version, body)
    });
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(version, http::Version::HTTP_2);
    assert!(body.starts_with("b1\n"), "{body}");
    assert!(body.contains("x-forwarded-proto: https"), "{body}");
}

/// One Host rule on every path: HTTP/1.1 over TLS (hyper) refuses what the fast path refuses.
#[test]
fn https_requests_follow_the_same_host_rule() {
    let (_b1, b1) = echo("b1", &[]);
    let tls_lb = TlsLb::start(&[b1], &[], &[b"http/1.1"]);
    let replies = runtime().block_on(async {
        let mut replies = Vec::new();
        for request in [
            &b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
            b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        ] {
            let mut tls = tls_lb.connect().await;
            tokio::io::AsyncWriteExt::write_all(&mut tls, request)
                .await
                .expect("write");
            let mut reply = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut reply).await;
            replies.push(String::from_utf8_lossy(&reply).into_owned());
        }
        replies
    });
    assert!(
        replies[0].starts_with("HTTP/1.1 400"),
        "no Host: {}",
        replies[0]
    );
    assert!(
        replies[1].starts_with("HTTP/1.1 400"),
        "two Hosts: {}",
        replies[1]
    );
    assert!(replies[2].starts_with("HTTP/1.1 200"), "{}", replies[2]);
}

/// Reads until the server closes; a read timeout (the server holding on) fails the test.
fn closes(mut stream: TcpStream, what: &str) {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut sink = Vec::new();
    match stream.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(error) => panic!("{what}: the LB kept the connection open ({error})"),
    }
}

/// Every state of a connection ends: the h2c preface alone or with SETTINGS, an idle HTTP/2
/// connection after its request, a TLS handshake and silence, an idle TCP session.
#[test]
fn connections_that_do_nothing_are_closed() {
    let (_b1, b1) = echo("b1", &[]);
    let quick = ["--header-timeout", "300ms", "--idle-timeout", "1s"];
    let (_lb, address) = lb(&[b1], &quick);
    let mut pri = TcpStream::connect(address).expect("connect");
    pri.write_all(b"PRI ").expect("write");
    closes(pri, "`PRI ` alone");
    let mut preface = TcpStream::connect(address).expect("connect");
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .expect("write");
    closes(preface, "the preface and SETTINGS");

    // HTTP/2 after a request: GOAWAY after the idle timeout ends the client's connection.
    runtime().block_on(async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        let driving = tokio::spawn(connection);
        let request = http::Request::get(format!("http://{address}/"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        assert_eq!(response.status(), 200);
        let _ = response.into_body().collect().await;
        tokio::time::timeout(Duration::from_secs(20), driving)
            .await
            .expect("the LB closed the idle HTTP/2 connection")
            .expect("driver")
            .expect("a clean close");
    });

    let tls_lb = TlsLb::start(&[b1], &quick, &[b"h2"]);
    runtime().block_on(async {
        let mut tls = tls_lb.connect().await;
        let mut sink = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(20),
            tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut sink),
        )
        .await
        .expect("the LB closed a TLS connection that sent nothing")
        .ok();
    });
    support::eventually(Duration::from_secs(20), "no client connection left", || {
        support::metric(tls_lb.admin, "ballast_client_connections") == Some(0.0)
    });

    let (_tcp_lb, tcp_address) = lb(&[b1], &[&quick[..], &["--mode", "tcp"]].concat());
    closes(
        TcpStream::connect(tcp_address).expect("connect"),
        "an idle TCP session",
    );
}

/// A client that never reads a large response releases its connection and the backend's once
/// writes to it have made no progress for the idle timeout.
#[test]
fn a_client_that_never_reads_is_let_go() {
    let backend = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend_address = backend.local_addr().expect("address");
    let (gave_up_tx, gave_up) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in backend.incoming().map_while(Result::ok) {
            let gave_up_tx = gave_up_tx.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n");
                let chunk = vec![b'x'; 64 * 1024];
                while stream.write_all(&chunk).is_ok() {}
                let _ = gave_up_tx.send(());
            });
        }
    });
    let (lb_process, address) = lb(&[backend_address], &["--idle-timeout", "1s"]);
    let mut client = TcpStream::connect(address).expect("connect");
    client
        .write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("write");
    gave_up
        .recv_timeout(Duration::from_secs(30))
        .expect("the LB closed the backend connection");
    support::eventually(
        Duration::from_secs(20),
        "the client connection closed",
        || support::metric(lb_process.admin_addr(), "ballast_client_connections") == Some(0.0),
    );
    drop(client);
}

#[test]
fn config_file_runs_several_listeners_and_pools() {
    let (_web, web) = echo("web", &[]);
    let (_db, db) = echo("db", &[]);
    let dir = TempDir::new("config");
    let path = dir.path().join("ballast.toml");
    let (http_at, tcp_at): (SocketAddr, SocketAddr) =
        (support::unused_addr(), support::unused_addr());
    std::fs::write(
        &path,
        format!(
            r#"
workers = 2
drain_timeout = "5s"

[[listeners]]
listen = "{http_at}"
pool = "web"

[[listeners]]
listen = "{tcp_at}"
mode = "tcp"
pool = "db"

[[pools]]
name = "web"
algorithm = "maglev"
hash_key = "cookie:session"
backends = ["{web}=2"]

[[pools]]
name = "db"
algorithm = "least_connections"
backends = ["{db}"]
"#
        ),
    )
    .expect("write config");
    let lb = Process::start(&["lb", "--config", path.to_str().expect("utf-8")], 2);
    assert_eq!(lb.listen_addr(0), http_at);
    assert!(lb.ready[0].ends_with("pool web"), "{:?}", lb.ready);
    assert_eq!(
        backend_of(&get(http_at, "/", &[("cookie", "session=abc")])),
        "web"
    );
    assert_eq!(backend_of(&get(tcp_at, "/", &[])), "db");

    std::fs::write(
        &path,
        "[[pools]]\nname = \"web\"\nalgorithm = \"fastest\"\nbackends = []\n",
    )
    .expect("write bad config");
    let stderr = support::rejected(&["lb", "--config", path.to_str().expect("utf-8")]);
    assert!(
        stderr.contains("pools[0]: algorithm: unknown `fastest`"),
        "{stderr}"
    );
}

/// At the descriptor limit, accepts fail: each is counted, the log is not flooded, and the LB
/// serves again as soon as descriptors are free.
#[test]
fn at_the_descriptor_limit_failed_accepts_are_counted_and_service_recovers() {
    let (_b1, b1) = echo("b1", &[]);
    let backend = b1.to_string();
    let lb = Process::start_under(
        &["prlimit", "--nofile=64:64", "--"],
        &[
            "lb",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--backend",
            &backend,
        ],
        2,
    );
    let (address, admin) = (lb.listen_addr(0), lb.admin_addr());
    // Far more connections than descriptors; the kernel queues those the LB cannot accept.
    let held: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(address).expect("the kernel accepts into the backlog"))
        .collect();
    // One that arrives while the LB is out of descriptors, answered once they are back.
    let mut waiting = TcpStream::connect(address).expect("connect");
    waiting
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .expect("write");
    drop(held);
    waiting
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut reply = String::new();
    waiting.read_to_string(&mut reply).expect("answered");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let failed = support::metric(admin, "ballast_accept_errors_total").expect("metric");
    assert!(failed >= 1.0, "no failed accept counted");
    assert_eq!(backend_of(&get(address, "/", &[])), "b1");
}

/// Several certificates on one listener, chosen by SNI: the exact name, then a wildcard (one
/// label deep), and the first certificate for any other name and for clients that send none.
#[test]
fn sni_picks_the_certificate_for_the_name() {
    let (_b1, b1) = echo("b1", &[]);
    let dir = TempDir::new("sni");
    let (default_cert, default_key, default_der) = support::certificate(&["a.test"]);
    let (wild_cert, wild_key, wild_der) = support::certificate(&["*.b.test", "b.test"]);
    let mut files = Vec::new();
    for (name, cert, key) in [
        ("a", &default_cert, &default_key),
        ("b", &wild_cert, &wild_key),
    ] {
        let (cert_path, key_path) = (
            dir.path().join(format!("{name}.pem")),
            dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert).expect("cert");
        std::fs::write(&key_path, key).expect("key");
        files.push(format!(
            "{{ cert = \"{}\", key = \"{}\" }}",
            cert_path.display(),
            key_path.display()
        ));
    }
    let listen = support::unused_addr();
    let path = dir.path().join("ballast.toml");
    std::fs::write(
        &path,
        format!(
            "admin = \"127.0.0.1:0\"\n\
             [[listeners]]\nlisten = \"{listen}\"\npool = \"web\"\ntls = [{}]\n\n\
             [[pools]]\nname = \"web\"\nbackends = [\"{b1}\"]\n",
            files.join(", ")
        ),
    )
    .expect("write config");
    let lb = Process::start(&["lb", "--config", path.to_str().expect("utf-8")], 2);
    let admin = lb.admin_addr();
    assert_eq!(support::presented(listen, "a.test"), default_der);
    assert_eq!(support::presented(listen, "www.b.test"), wild_der);
    assert_eq!(support::presented(listen, "b.test"), wild_der);
    // Two labels below: the wildcard does not cover it; the first certificate does the talking.
    assert_eq!(support::presented(listen, "x.y.b.test"), default_der);
    // No SNI at all (a client connecting by address).
    assert_eq!(support::presented(listen, "127.0.0.1"), default_der);

    // A request for a name with a certificate of its own, on a connection made with another's
    // (as a browser coalesces connections), is sent to connect again: 421. Names the
    // connection's own certificate is chosen for pass, and so do names no certificate has.
    let status = |sni: &str, host: &str| support::get_over_tls(listen, sni, host).status;
    assert_eq!(status("www.b.test", "a.test"), 421);
    assert_eq!(status("a.test", "shop.b.test:443"), 421);
    assert_eq!(status("www.b.test", "shop.b.test"), 200);
    assert_eq!(status("a.test", "A.test:443"), 200);
    assert_eq!(status("a.test", "unknown.test"), 200);
    let counted = support::metric(
        admin,
        "ballast_errors_total{pool=\"web\",kind=\"misdirected\"}",
    );
    assert_eq!(counted, Some(2.0));
}
