//! The HTTP/1.1 details of `ballast lb`'s fast path, over raw sockets: bodies by length and by
//! chunks both ways, keep-alive, HEAD, HTTP/1.0, `Expect: 100-continue`, and requests that try to
//! smuggle a second request past the proxy.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::{echo, lb, raw};

fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

/// Reads one response with a Content-Length body from a kept-alive connection.
fn read_response(reader: &mut BufReader<TcpStream>) -> (String, String) {
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("head line");
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().expect("length");
        }
        let done = line == "\r\n";
        head.push_str(&line);
        if done {
            break;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).expect("body");
    (head, String::from_utf8(body).expect("utf-8"))
}

#[test]
fn bodies_by_length_and_by_chunks_reach_the_backend() {
    let (_backend, backend) = echo("b1", &[]);
    let (_lb, address) = lb(&[backend], &[]);
    let reply = raw(
        address,
        b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world",
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "b1\nhello world");

    let reply = raw(
        address,
        b"POST /body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "b1\nhello world");
}

#[test]
fn chunked_responses_reach_the_client_whole() {
    let (_backend, backend) = echo("b1", &[]);
    let (_lb, address) = lb(&[backend], &[]);
    let reply = raw(
        address,
        b"GET /chunked HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply
            .head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{reply:?}"
    );
    assert_eq!(reply.body, "3\r\nb1\n\r\n9\r\nand more\n\r\n0\r\n\r\n");
}

#[test]
fn one_connection_carries_many_requests_including_head() {
    let (_backend, backend) = echo("b1", &[]);
    let (_lb, address) = lb(&[backend], &[]);
    let stream = connect(address);
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    for i in 0..5 {
        writer
            .write_all(format!("GET /n{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .expect("write");
        let (head, body) = read_response(&mut reader);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "b1\n");
    }
    // HEAD: the length of the body it would have, and no body.
    writer
        .write_all(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("head line");
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (next, body) = read_response(&mut reader);
    assert!(
        next.starts_with("HTTP/1.1 200"),
        "the pipelined GET after HEAD: {next}"
    );
    assert_eq!(body, "b1\n");
}

#[test]
fn http10_clients_get_their_connection_closed() {
    let (_backend, backend) = echo("b1", &[]);
    let (_lb, address) = lb(&[backend], &[]);
    let reply = raw(address, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply
            .head
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{reply:?}"
    );
    assert_eq!(reply.body, "b1\n");
}

#[test]
fn expect_continue_is_answered_and_the_body_forwarded() {
    let (_backend, backend) = echo("b1", &[]);
    let (_lb, address) = lb(&[backend], &[]);
    let mut stream = connect(address);
    stream
        .write_all(b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .expect("head");
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).expect("100 Continue");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"data").expect("body");
    let mut rest = String::new();
    stream.read_to_string(&mut rest).expect("response");
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    assert!(rest.ends_with("b1\ndata"), "{rest}");
}

#[test]
fn ambiguous_framing_and_missing_host_are_refused() {
    let (_backend, backend) = echo("b1", &[]);
    let (_lb, address) = lb(&[backend], &[]);
    let smuggle = raw(
        address,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n",
    );
    assert_eq!(smuggle.status, 400, "{smuggle:?}");
    let conflicting = raw(
        address,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    );
    assert_eq!(conflicting.status, 400, "{conflicting:?}");
    let gzip = raw(
        address,
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
    );
    assert_eq!(gzip.status, 400, "{gzip:?}");
    let hostless = raw(address, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(hostless.status, 400, "{hostless:?}");
}

#[test]
fn a_stalled_request_body_is_cut_off_without_blaming_the_backend() {
    let (_backend, backend) = echo("b1", &[]);
    let (lb_process, address) = lb(&[backend], &["--header-timeout", "300ms"]);
    let mut stream = connect(address);
    stream
        .write_all(b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly ten b")
        .expect("partial body");
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "held for {:?}",
        started.elapsed()
    );
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    let admin = lb_process.admin_addr();
    assert_eq!(
        support::metric(
            admin,
            "ballast_errors_total{pool=\"default\",kind=\"bad_gateway\"}"
        ),
        Some(0.0),
        "the client's stall is not the backend's failure"
    );
    assert_eq!(support::backend_of(&support::get(address, "/", &[])), "b1");
}
