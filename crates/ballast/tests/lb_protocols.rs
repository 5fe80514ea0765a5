//! `ballast lb` beyond plain HTTP/1.1: TCP mode, HTTP/2 with prior knowledge (h2c), TLS
//! termination with HTTP/2 by ALPN, and a configuration file with several listeners and pools.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{Process, backend_of, echo, get, lb};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "ballast-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

#[test]
fn tls_terminates_and_negotiates_http2() {
    let dir = TempDir::new("tls");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert_path = dir.0.join("cert.pem");
    let key_path = dir.0.join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).expect("write cert");
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).expect("write key");

    let (_b1, b1) = echo("b1", &[]);
    let (_lb, address) = lb(
        &[b1],
        &[
            "--tls-cert",
            cert_path.to_str().expect("utf-8 path"),
            "--tls-key",
            key_path.to_str().expect("utf-8 path"),
        ],
    );

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    let (alpn, version, body) = runtime().block_on(async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let tls = connector
            .connect(name, stream)
            .await
            .expect("TLS handshake");
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let (version, body) = h2_get(tls, "https://localhost/headers").await;
        (alpn, version, body)
    });
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(version, http::Version::HTTP_2);
    assert!(body.starts_with("b1\n"), "{body}");
    assert!(body.contains("x-forwarded-proto: https"), "{body}");
}

#[test]
fn config_file_runs_several_listeners_and_pools() {
    let (_web, web) = echo("web", &[]);
    let (_db, db) = echo("db", &[]);
    let dir = TempDir::new("config");
    let path = dir.0.join("ballast.toml");
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
