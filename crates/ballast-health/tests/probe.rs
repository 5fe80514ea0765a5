//! Probes against real sockets on loopback: a tiny HTTP server that answers with a chosen status,
//! one that accepts and never answers, and a port nobody listens on.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ballast_health::{Check, Outcome, probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves every connection with `status` after reading its request head; returns the address and
/// the request lines it saw.
async fn server(
    status: &'static str,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (seen, requests) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buffer[..n]),
                }
            }
            let text = String::from_utf8_lossy(&head);
            let _ = seen.send(text.lines().next().unwrap_or("").to_owned());
            let answer =
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    (address, requests)
}

fn http(path: &str) -> Check {
    Check::Http {
        path: path.into(),
        tls: None,
    }
}

const TIMEOUT: Duration = Duration::from_millis(500);

#[tokio::test]
async fn two_and_three_hundreds_are_up_and_errors_are_definite_failures() {
    let (ok, mut requests) = server("200 OK").await;
    assert_eq!(probe(ok, &http("/health"), TIMEOUT).await, Outcome::Up);
    assert_eq!(
        requests.recv().await.as_deref(),
        Some("GET /health HTTP/1.1")
    );

    let (moved, _) = server("302 Found").await;
    assert_eq!(probe(moved, &http("/"), TIMEOUT).await, Outcome::Up);

    let (failing, _) = server("503 Service Unavailable").await;
    assert_eq!(
        probe(failing, &http("/health"), TIMEOUT).await,
        Outcome::Failed("GET /health: 503 Service Unavailable".into())
    );
}

#[tokio::test]
async fn a_refused_connection_fails_at_once_and_silence_times_out() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("address")
    };
    let started = Instant::now();
    let refused = probe(closed, &Check::Tcp, TIMEOUT).await;
    assert!(
        matches!(&refused, Outcome::Failed(reason) if reason.starts_with("connect:")),
        "{refused:?}"
    );
    assert!(started.elapsed() < TIMEOUT);

    // Accepts (the kernel does, from its backlog) but never answers the request.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = silent.local_addr().expect("address");
    assert_eq!(probe(address, &Check::Tcp, TIMEOUT).await, Outcome::Up);
    let started = Instant::now();
    assert_eq!(
        probe(address, &http("/health"), TIMEOUT).await,
        Outcome::TimedOut
    );
    assert!(started.elapsed() >= TIMEOUT);
    drop(silent);
}

/// A TLS server for `backend.test` (its certificate signed by a test CA, written to `dir`) that
/// answers every request 200; the address.
async fn tls_server(dir: &std::path::Path) -> SocketAddr {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write the CA");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["backend.test".to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("signed");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
        )
        .expect("config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                let _ = tls.write_all(answer).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    address
}

/// Long enough for a TLS handshake on a loaded machine; the probes that pass return at once.
const PATIENT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_tls_backend_is_probed_over_tls_and_verified() {
    let dir = std::env::temp_dir().join(format!("ballast-probe-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let address = tls_server(&dir).await;
    let check = |server_name: &str, insecure: bool| {
        let policy = ballast_config::PoolPolicy {
            tls: Some(true),
            ca_file: (!insecure).then(|| dir.join("ca.pem").display().to_string()),
            insecure_skip_verify: insecure.then_some(true),
            server_name: Some(server_name.to_owned()),
            ..Default::default()
        };
        Check::Http {
            path: "/health".into(),
            tls: ballast_health::BackendTls::of(&policy).expect("TLS settings"),
        }
    };
    assert_eq!(
        probe(address, &check("backend.test", false), PATIENT).await,
        Outcome::Up
    );
    // A name the certificate is not for fails the probe, as it fails the LB's connections.
    let wrong = probe(address, &check("other.test", false), PATIENT).await;
    assert!(
        matches!(&wrong, Outcome::Failed(reason) if reason.starts_with("TLS: ")),
        "{wrong:?}"
    );
    assert_eq!(
        probe(address, &check("other.test", true), PATIENT).await,
        Outcome::Up
    );
    // Plain HTTP against it gets no answer it can read.
    assert!(!probe(address, &http("/health"), PATIENT).await.is_up());
    let _ = std::fs::remove_dir_all(&dir);
}
