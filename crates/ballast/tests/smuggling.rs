//! The security prober's vectors against a real `ballast lb`, over raw sockets, with a backend
//! that records every byte it receives and misbehaves on request: request smuggling (each vector
//! asserts the status the client gets and the exact bytes the backend got), response mixing
//! (a backend's stray bytes must never reach another client), and framing errors from a backend
//! (close, never reuse).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{eventually, lb, metric, raw};

/// A backend that records each request it reads (head and body, as received) and answers by
/// the request's path; most paths answer `200` with the path as the body, so a client can tell
/// whether it got its own response.
struct Backend {
    address: SocketAddr,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    connections: Arc<AtomicUsize>,
    /// Stray responses written after a complete one (`/late-junk`).
    injected: Arc<AtomicUsize>,
}

impl Backend {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let backend = Self {
            address,
            requests: Arc::default(),
            connections: Arc::default(),
            injected: Arc::default(),
        };
        let (requests, connections, injected) = (
            Arc::clone(&backend.requests),
            Arc::clone(&backend.connections),
            Arc::clone(&backend.injected),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                connections.fetch_add(1, Ordering::SeqCst);
                let (requests, injected) = (Arc::clone(&requests), Arc::clone(&injected));
                std::thread::spawn(move || serve(stream, &requests, &injected));
            }
        });
        backend
    }

    /// Every request received so far, as text.
    fn received(&self) -> Vec<String> {
        let requests = self.requests.lock().expect("lock");
        requests
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }

    fn clear(&self) {
        self.requests.lock().expect("lock").clear();
    }
}

/// One backend connection: read a request, record it, answer; until the peer closes or sends
/// what this strict reader cannot read (then it records the raw bytes and closes).
fn serve(stream: TcpStream, requests: &Mutex<Vec<Vec<u8>>>, injected: &AtomicUsize) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = Vec::new();
        loop {
            let before = head.len();
            match reader.read_until(b'\n', &mut head) {
                Ok(0) | Err(_) => {
                    if !head.is_empty() {
                        requests.lock().expect("lock").push(head);
                    }
                    return;
                }
                Ok(_) => {}
            }
            if &head[before..] == b"\r\n" {
                break;
            }
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
        if path == "/early-413" {
            // Refuse the upload before reading it, and close.
            requests.lock().expect("lock").push(head);
            let _ = writer.write_all(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large",
            );
            return;
        }
        let length = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let chunked = text.contains("\r\ntransfer-encoding: chunked\r\n");
        let mut request = head;
        if let Some(length) = length {
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                requests.lock().expect("lock").push(request);
                return;
            }
            request.extend_from_slice(&body);
        } else if chunked && !read_chunked(&mut reader, &mut request) {
            requests.lock().expect("lock").push(request);
            return;
        }
        requests.lock().expect("lock").push(request);
        let answer: Vec<u8> = match path.as_str() {
            "/switch" => b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ninjected".to_vec(),
            "/conn-cl" => b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            "/bad-chunk" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n".to_vec(),
            "/plus-length" => b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello".to_vec(),
            "/head-body" => b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ninjected".to_vec(),
            _ => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}", path.len()).into_bytes(),
        };
        if writer.write_all(&answer).is_err() {
            return;
        }
        if path.starts_with("/late-junk") {
            std::thread::sleep(Duration::from_millis(150));
            let _ = writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ninjected");
            injected.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Reads a chunked body strictly (CR LF lines, hex sizes), appending it to `into`.
fn read_chunked(reader: &mut BufReader<TcpStream>, into: &mut Vec<u8>) -> bool {
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).is_err() || !line.ends_with(b"\r\n") {
            into.extend_from_slice(&line);
            return false;
        }
        into.extend_from_slice(&line);
        let size_text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
        let Ok(size) = usize::from_str_radix(&size_text, 16) else {
            return false;
        };
        if size == 0 {
            loop {
                let mut trailer = Vec::new();
                if reader.read_until(b'\n', &mut trailer).is_err() {
                    return false;
                }
                into.extend_from_slice(&trailer);
                if trailer == b"\r\n" {
                    return true;
                }
            }
        }
        let mut data = vec![0u8; size + 2];
        if reader.read_exact(&mut data).is_err() {
            return false;
        }
        into.extend_from_slice(&data);
    }
}

fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    stream
}

/// Reads one response with a Content-Length body (or none); `None` when the connection closed.
fn read_response(reader: &mut BufReader<TcpStream>) -> Option<(u16, String)> {
    let mut status = None;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if status.is_none() {
            status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().ok()?;
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some((status?, String::from_utf8_lossy(&body).into_owned()))
}

/// A kept-alive client connection: requests written, responses read in turn.
struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn open(address: SocketAddr) -> Self {
        let stream = connect(address);
        Self {
            writer: stream.try_clone().expect("clone"),
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> &mut Self {
        self.writer.write_all(bytes).expect("write");
        self
    }

    /// `GET path`, and its response.
    fn get(&mut self, path: &str) -> Option<(u16, String)> {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .response()
    }

    fn response(&mut self) -> Option<(u16, String)> {
        read_response(&mut self.reader)
    }
}

/// A victim: a request with credentials on a connection of its own, which must get its own
/// response, and whose credentials must reach the backend only in its own request.
fn victim(address: SocketAddr) -> (u16, String) {
    Client::open(address)
        .send(b"GET /account HTTP/1.1\r\nHost: a\r\nCookie: session=victim\r\nAuthorization: Bearer victim-token\r\n\r\n")
        .response()
        .expect("the victim gets a response")
}

/// Each request the backend got, by its request line.
fn request_lines(backend: &Backend) -> Vec<String> {
    backend
        .received()
        .iter()
        .map(|r| r.lines().next().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn connection_cannot_name_the_framing_away() {
    // Vector 1: `Connection: Content-Length` used to unframe the body, which became a second
    // request that swallowed the next client's request, cookies and all.
    let backend = Backend::start();
    let (_lb, address) = lb(&[backend.address], &[]);
    let smuggled = b"POST /capture HTTP/1.1\r\nHost: a\r\nContent-Length: 150\r\n\r\n";
    assert_eq!(smuggled.len(), 56);
    let mut attack =
        b"POST /attacker HTTP/1.1\r\nHost: a\r\nConnection: Content-Length\r\nContent-Length: 56\r\n\r\n"
            .to_vec();
    attack.extend_from_slice(smuggled);
    let (status, body) = Client::open(address)
        .send(&attack)
        .response()
        .expect("a response");
    assert_eq!((status, body.as_str()), (200, "/attacker"));
    for _ in 0..6 {
        assert_eq!(victim(address), (200, "/account".to_owned()));
    }
    let received = backend.received();
    assert_eq!(
        request_lines(&backend),
        ["POST /attacker HTTP/1.1"]
            .into_iter()
            .chain(std::iter::repeat_n("GET /account HTTP/1.1", 6))
            .collect::<Vec<_>>()
    );
    // The attacker's request arrived whole, its body as its body, framed as Ballast read it.
    let first = &received[0];
    assert!(
        first.ends_with(std::str::from_utf8(smuggled).expect("text")),
        "{first}"
    );
    assert!(first.contains("\r\ncontent-length: 56\r\n"), "{first}");
    assert!(
        !first.to_ascii_lowercase().contains("connection:"),
        "{first}"
    );
    assert!(
        received[1..]
            .iter()
            .all(|r| r.contains("Cookie: session=victim"))
    );
}

#[test]
fn chunked_bodies_are_validated_and_re_encoded() {
    let backend = Backend::start();
    let (_lb, address) = lb(&[backend.address], &[]);
    // Vector 2: a bare LF in a chunk extension; vector 3: chunk data not followed by CRLF, a
    // size with a space. Each is refused with 400 and the connection closed; nothing after the
    // malformed line reaches the backend.
    for attack in [
        &b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0;\n\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0 42\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 42\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\x0c5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let reply = raw(address, attack);
        assert_eq!(reply.status, 400, "{}: {reply:?}", String::from_utf8_lossy(attack));
        assert_eq!(victim(address), (200, "/account".to_owned()));
    }
    // Small bodies are read whole before a backend is chosen, so the backend saw none of the
    // attacks: only the victims' requests.
    assert_eq!(
        request_lines(&backend),
        vec!["GET /account HTTP/1.1"; 4],
        "{:?}",
        backend.received()
    );

    // Streamed (with buffering off), a malformed body still never gets past its bad line.
    let (_streaming, streaming) = lb(&[backend.address], &["--request-buffering", "0"]);
    backend.clear();
    let reply = raw(
        streaming,
        b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0;\n\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(victim(streaming), (200, "/account".to_owned()));
    for request in backend.received() {
        assert!(!request.contains("/smuggled"), "{request:?}");
    }

    // A valid body with extensions and a trailer reaches the backend in Ballast's encoding.
    backend.clear();
    let reply = raw(
        address,
        b"POST /ok HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;name=\"v\"\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n",
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    // Only this request: the streamed attack's head above may be recorded by the backend after
    // the clear (its connection ends when it ends), so it is told apart by its target.
    let received: Vec<String> = backend
        .received()
        .into_iter()
        .filter(|r| !r.starts_with("POST /a "))
        .collect();
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(
        received[0]
            .ends_with("\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n"),
        "{:?}",
        received[0]
    );
}

#[test]
fn ambiguous_framing_and_hosts_are_refused_before_any_backend_sees_them() {
    let backend = Backend::start();
    let (_lb, address) = lb(&[backend.address], &[]);
    for (request, status) in [
        (&b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"[..], 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\xc2\xa0\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \xe2\x80\x835\r\n\r\nhello", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\xc2\xa0\r\n\r\nhello", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET http://u:p@b/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"CONNECT b:443 HTTP/1.1\r\nHost: b:443\r\n\r\n", 400),
    ] {
        let reply = raw(address, request);
        assert_eq!(reply.status, status, "{}: {reply:?}", String::from_utf8_lossy(request));
    }
    assert_eq!(backend.received(), Vec::<String>::new());
}

#[test]
fn an_absolute_target_sets_the_host_the_backend_sees() {
    let backend = Backend::start();
    let (_lb, address) = lb(&[backend.address], &[]);
    let reply = raw(
        address,
        b"GET http://b.test:8080/x?y=1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let received = backend.received();
    assert!(
        received[0].starts_with("GET /x?y=1 HTTP/1.1\r\nhost: b.test:8080\r\n"),
        "{:?}",
        received[0]
    );
    assert_eq!(
        received[0].matches("ost:").count(),
        1,
        "one Host: {:?}",
        received[0]
    );

    // HTTP/1.0 needs no Host, but the HTTP/1.1 request the backend gets does: its address.
    backend.clear();
    let reply = raw(address, b"GET /old HTTP/1.0\r\n\r\n");
    assert_eq!(reply.status, 200, "{reply:?}");
    let received = backend.received();
    assert!(
        received[0].starts_with("GET /old HTTP/1.1\r\n"),
        "{:?}",
        received[0]
    );
    assert!(
        received[0].contains(&format!("\r\nhost: {}\r\n", backend.address)),
        "{:?}",
        received[0]
    );
}

#[test]
fn a_101_nobody_asked_for_is_a_bad_gateway_and_no_tunnel() {
    let backend = Backend::start();
    let (_lb, address) = lb(&[backend.address], &[]);
    let reply = raw(
        address,
        b"GET /switch HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(reply.status, 502, "{reply:?}");
    assert!(!reply.body.contains("injected"), "{reply:?}");
    // The connection was not kept: the next clients get their own responses.
    for _ in 0..5 {
        assert_eq!(victim(address), (200, "/account".to_owned()));
    }
}

#[test]
fn bytes_a_backend_sends_after_its_response_never_reach_the_next_client() {
    let backend = Backend::start();
    let (_lb, address) = lb(&[backend.address], &[]);
    for round in 1..=5 {
        let mut client = Client::open(address);
        assert_eq!(
            client.get("/late-junk"),
            Some((200, "/late-junk".to_owned()))
        );
        // The stray response arrives on the pooled backend connection after this one ended.
        eventually(Duration::from_secs(10), "the stray bytes", || {
            backend.injected.load(Ordering::SeqCst) >= round
        });
        assert_eq!(
            victim(address),
            (200, "/account".to_owned()),
            "round {round}"
        );
        assert_eq!(client.get("/again"), Some((200, "/again".to_owned())));
    }
    // A body to a HEAD request is stray bytes too.
    let mut client = Client::open(address);
    client.send(b"HEAD /head-body HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        assert!(client.reader.read_line(&mut head).expect("head") > 0);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    for _ in 0..3 {
        assert_eq!(victim(address), (200, "/account".to_owned()));
    }
}

#[test]
fn a_backends_framing_errors_close_its_connection() {
    let backend = Backend::start();
    let (_lb, address) = lb(&[backend.address], &[]);
    // `Connection: content-length` from a backend: the client still gets a framed response.
    let mut client = Client::open(address);
    assert_eq!(client.get("/conn-cl"), Some((200, "hello".to_owned())));
    assert_eq!(client.get("/after"), Some((200, "/after".to_owned())));

    // A `+5` length: 502, and the connection is not reused.
    let reply = raw(
        address,
        b"GET /plus-length HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(reply.status, 502, "{reply:?}");
    let before = backend.connections.load(Ordering::SeqCst);
    assert_eq!(victim(address), (200, "/account".to_owned()));
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        before + 1,
        "a fresh connection"
    );

    // A malformed chunk after the head went out: the client's connection ends there, and the
    // backend connection is not reused.
    let reply = raw(address, b"GET /bad-chunk HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(reply.status, 200, "the head was already sent: {reply:?}");
    assert!(
        !reply.body.contains("0\r\n\r\n"),
        "never a complete body: {reply:?}"
    );
    let before = backend.connections.load(Ordering::SeqCst);
    assert_eq!(victim(address), (200, "/account".to_owned()));
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        before + 1,
        "a fresh connection"
    );
}

#[test]
fn an_early_answer_to_an_upload_is_relayed_and_not_held_against_the_backend() {
    let backend = Backend::start();
    let (lb_process, address) = lb(&[backend.address], &[]);
    let body = vec![b'x'; 4 * 1024 * 1024];
    for _ in 0..6 {
        let stream = connect(address);
        let mut writer = stream.try_clone().expect("clone");
        let head = format!(
            "POST /early-413 HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        writer.write_all(head.as_bytes()).expect("head");
        let uploading = {
            let body = body.clone();
            std::thread::spawn(move || {
                let _ = writer.write_all(&body);
            })
        };
        let mut reply = Vec::new();
        let _ = BufReader::new(stream).read_to_end(&mut reply);
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
        assert!(text.ends_with("too large"), "{text}");
        let _ = uploading.join();
    }
    let admin = lb_process.admin_addr();
    assert_eq!(
        metric(
            admin,
            &format!(
                "ballast_backend_ejections_total{{pool=\"default\",backend=\"{}\"}}",
                backend.address
            )
        ),
        Some(0.0)
    );
    assert_eq!(victim(address), (200, "/account".to_owned()));
}

/// On a reused HTTP/1.1 connection, bytes a backend sends late are indistinguishable from the
/// next response; so the first time a backend is caught at it, Ballast counts it and stops
/// reusing its connections. From then on no client can get another's bytes, however many run.
#[test]
fn concurrent_tagged_clients_only_ever_get_their_own_responses() {
    let backend = Backend::start();
    let (lb_process, address) = lb(&[backend.address], &[]);
    let reply = raw(
        address,
        b"GET /late-junk HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(reply.body, "/late-junk", "{reply:?}");
    eventually(Duration::from_secs(10), "the stray bytes", || {
        backend.injected.load(Ordering::SeqCst) >= 1
    });
    assert_eq!(victim(address), (200, "/account".to_owned()));
    let stray = format!(
        "ballast_backend_stray_bytes_total{{pool=\"default\",backend=\"{}\"}}",
        backend.address
    );
    assert_eq!(metric(lb_process.admin_addr(), &stray), Some(1.0));

    let mixed = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..40)
        .map(|client| {
            let (mixed, answered) = (Arc::clone(&mixed), Arc::clone(&answered));
            std::thread::spawn(move || {
                let mut connection = Client::open(address);
                for request in 0..25 {
                    // Every fifth request asks the backend to send stray bytes after its answer.
                    let kind = if request % 5 == 0 { "late-junk" } else { "tag" };
                    let path = format!("/{kind}-{client}-{request}");
                    match connection.get(&path) {
                        Some((200, body)) if body == path => {
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                        Some((status, body)) if status >= 500 && !body.starts_with('/') => {}
                        other => {
                            eprintln!("client {client} sent {path}, got {other:?}");
                            mixed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client");
    }
    assert_eq!(
        mixed.load(Ordering::SeqCst),
        0,
        "a client got another's bytes"
    );
    assert!(answered.load(Ordering::SeqCst) > 900, "{answered:?}");
}

/// Slow bodies (the slowloris of uploads): with small bodies read whole before a backend is
/// chosen, a thousand clients that never finish their body hold no backend connection, and no
/// backend is blamed for them.
#[test]
fn slow_bodies_hold_no_backend_connection() {
    let backend = Backend::start();
    let (lb_process, address) = lb(&[backend.address], &["--header-timeout", "2s"]);
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut stream = connect(address);
            stream
                .write_all(
                    b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nhalf of it",
                )
                .expect("write");
            stream
        })
        .collect();
    // A request behind them still gets through, on the one backend connection there is.
    assert_eq!(victim(address), (200, "/account".to_owned()));
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
    // They time out on their own; the backend was never asked and is not blamed.
    for stream in &mut slow {
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    }
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
    assert_eq!(request_lines(&backend), ["GET /account HTTP/1.1"]);
    let bad_gateway = "ballast_errors_total{pool=\"default\",kind=\"bad_gateway\"}";
    assert_eq!(metric(lb_process.admin_addr(), bad_gateway), Some(0.0));
}
