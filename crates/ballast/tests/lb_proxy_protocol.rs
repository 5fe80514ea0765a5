//! The PROXY protocol against HAProxy both ways: HAProxy (`send-proxy`, `send-proxy-v2`) in front
//! of an LB listener that takes the header, and an LB pool that sends it to HAProxy
//! (`accept-proxy`), which says whom it believes the client is. Clients connect from 127.0.0.2
//! and 127.0.0.3, so the address the header carries differs from the one the hop itself sees.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use ballast_testkit::haproxy;
use support::{echo, eventually, lb, metric};

/// A connection to `to` from the loopback address `from`.
fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from((from, 0)))
            .expect("bind the source address");
        socket.connect(to).await.expect("connect")
    });
    let stream = stream.into_std().expect("std stream");
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    stream
}

/// One keep-alive GET on `stream`; the response's body.
fn get_on(stream: &mut TcpStream, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("write");
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("head");
        assert!(!line.is_empty(), "the connection closed before a response");
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = value.trim().parse().expect("length");
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    String::from_utf8(body).expect("utf-8")
}

#[test]
fn haproxy_in_front_tells_the_lb_who_the_client_is() {
    let (_backend, backend) = echo("b1", &[]);
    let (lb, address) = lb(&[backend], &["--proxy-protocol"]);
    let port = address.port();
    let front = haproxy::Server::start(
        &format!(
            "frontend v2\n  mode tcp\n  bind 127.0.0.1:{{PORT0}}\n  default_backend lb_v2\n\
             backend lb_v2\n  mode tcp\n  server lb 127.0.0.1:{port} send-proxy-v2\n\
             frontend v1\n  mode tcp\n  bind 127.0.0.1:{{PORT1}}\n  default_backend lb_v1\n\
             backend lb_v1\n  mode tcp\n  server lb 127.0.0.1:{port} send-proxy\n"
        ),
        2,
    );
    for (version, port, client) in [
        ("v2", front.ports[0], [127, 0, 0, 2]),
        ("v1", front.ports[1], [127, 0, 0, 3]),
    ] {
        let mut stream = connect_from(client, SocketAddr::from(([127, 0, 0, 1], port)));
        for _ in 0..2 {
            let headers = get_on(&mut stream, "/headers");
            let want = format!("x-forwarded-for: {}", IpAddr::from(client));
            assert!(headers.contains(&want), "{version}: {headers}");
        }
    }

    // A connection that does not open with a header is closed unanswered, and counted.
    let admin = lb.admin_addr();
    let mut direct = TcpStream::connect(address).expect("connect");
    direct
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    direct
        .write_all(b"GET /headers HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("write");
    let mut answer = Vec::new();
    let _ = direct.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    eventually(Duration::from_secs(10), "the refusal counted", || {
        metric(admin, "ballast_proxy_protocol_errors_total") == Some(1.0)
    });
}

/// HAProxy taking the header, answering with the client it read from it.
fn accepting_haproxy() -> haproxy::Server {
    haproxy::Server::start(
        "frontend accept\n  mode http\n  bind 127.0.0.1:{PORT0} accept-proxy\n  \
         http-request return status 200 content-type text/plain lf-string \"client=%ci:%cp\"\n",
        1,
    )
}

#[test]
fn a_pool_tells_haproxy_who_the_client_is_and_keeps_each_clients_connections_its_own() {
    let behind = accepting_haproxy();
    let backend = SocketAddr::from(([127, 0, 0, 1], behind.ports[0]));
    for version in ["v1", "v2"] {
        let (_lb, address) = lb(&[backend], &["--send-proxy-protocol", version]);
        // Two clients, each with two requests on one connection: each is named on both, never
        // the other (a backend connection opened for one client is not reused for another).
        for client in [[127, 0, 0, 2], [127, 0, 0, 3], [127, 0, 0, 2]] {
            let mut stream = connect_from(client, address);
            let own = stream.local_addr().expect("address");
            for _ in 0..2 {
                let seen = get_on(&mut stream, "/");
                assert_eq!(
                    seen,
                    format!("client={}:{}", own.ip(), own.port()),
                    "{version}"
                );
            }
        }
    }
}

#[test]
fn tcp_mode_tells_haproxy_who_the_client_is() {
    let behind = accepting_haproxy();
    let backend = SocketAddr::from(([127, 0, 0, 1], behind.ports[0]));
    let (_lb, address) = lb(
        &[backend],
        &["--mode", "tcp", "--send-proxy-protocol", "v2"],
    );
    let mut stream = connect_from([127, 0, 0, 3], address);
    let own = stream.local_addr().expect("address");
    assert_eq!(
        get_on(&mut stream, "/"),
        format!("client={}:{}", own.ip(), own.port())
    );
}
