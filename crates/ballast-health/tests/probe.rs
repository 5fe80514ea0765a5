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
    Check::Http { path: path.into() }
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
