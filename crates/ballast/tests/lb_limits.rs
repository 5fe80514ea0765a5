//! A backend's cap on requests in flight and the pool's queue in front of it, seen from outside:
//! a backend held by the test (it answers only when told to) fills up, the next request waits in
//! the queue, the one after that gets 503 with Retry-After, and the waiting one goes through as
//! soon as a slot frees. Every step waits on what the LB or the backend reports, never on time.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use support::{Reply, eventually, get, lb, metric};

/// A backend that reads each request and answers `held` only once the test releases it.
struct HeldBackend {
    address: SocketAddr,
    state: Arc<(Mutex<Gate>, Condvar)>,
}

#[derive(Default)]
struct Gate {
    arrived: usize,
    released: usize,
}

impl HeldBackend {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let state = Arc::new((Mutex::new(Gate::default()), Condvar::new()));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let state = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                        line.clear();
                    }
                    let (gate, changed) = &*state;
                    let mut gate = gate.lock().expect("lock");
                    gate.arrived += 1;
                    let ticket = gate.arrived;
                    changed.notify_all();
                    let gate = changed
                        .wait_while(gate, |g| g.released < ticket)
                        .expect("lock");
                    drop(gate);
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nheld\n",
                    );
                });
            }
        });
        Self { address, state }
    }

    fn arrived(&self) -> usize {
        self.state.0.lock().expect("lock").arrived
    }

    /// Lets the next `count` requests (in arrival order) be answered.
    fn release(&self, count: usize) {
        let (gate, changed) = &*self.state;
        gate.lock().expect("lock").released += count;
        changed.notify_all();
    }
}

impl Drop for HeldBackend {
    fn drop(&mut self) {
        self.release(usize::MAX / 2);
    }
}

fn get_in_background(address: SocketAddr) -> std::thread::JoinHandle<Reply> {
    std::thread::spawn(move || get(address, "/", &[]))
}

#[test]
fn a_full_backend_queues_then_refuses_with_retry_after() {
    let backend = HeldBackend::start();
    let (lb, address) = lb(
        &[backend.address],
        &[
            "--workers",
            "2",
            "--max-requests",
            "2",
            "--queue-size",
            "1",
            "--queue-timeout",
            "120s",
        ],
    );
    let admin = lb.admin_addr();
    let queued = || metric(admin, "ballast_pool_queued_requests{pool=\"default\"}");

    let first = [get_in_background(address), get_in_background(address)];
    eventually(
        Duration::from_secs(20),
        "two requests at the backend",
        || backend.arrived() == 2,
    );
    let waiting = get_in_background(address);
    eventually(Duration::from_secs(20), "one request queued", || {
        queued() == Some(1.0)
    });

    let refused = get(address, "/", &[]);
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(
        refused.head.to_ascii_lowercase().contains("retry-after: 1"),
        "{refused:?}"
    );
    assert_eq!(backend.arrived(), 2, "the cap held");
    assert_eq!(
        metric(
            admin,
            "ballast_errors_total{pool=\"default\",kind=\"overloaded\"}"
        ),
        Some(1.0)
    );

    // A slot frees: the waiting request takes it at once.
    backend.release(1);
    eventually(
        Duration::from_secs(20),
        "the queued request admitted",
        || backend.arrived() == 3,
    );
    assert_eq!(queued(), Some(0.0));
    backend.release(2);
    for request in first.into_iter().chain([waiting]) {
        let reply = request.join().expect("client thread");
        assert_eq!((reply.status, reply.body.as_str()), (200, "held\n"));
    }
    assert_eq!(
        metric(
            admin,
            "ballast_pool_queue_wait_seconds_count{pool=\"default\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn a_request_that_waits_too_long_is_refused_with_retry_after() {
    let backend = HeldBackend::start();
    let (_lb, address) = lb(
        &[backend.address],
        &[
            "--max-requests",
            "1",
            "--queue-size",
            "5",
            "--queue-timeout",
            "200ms",
        ],
    );
    let holding = get_in_background(address);
    eventually(Duration::from_secs(20), "the backend full", || {
        backend.arrived() == 1
    });
    // The backend answers only when released, which is after this: the wait must end it.
    let refused = get(address, "/", &[]);
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(
        refused.head.to_ascii_lowercase().contains("retry-after: 1"),
        "{refused:?}"
    );
    assert_eq!(backend.arrived(), 1);
    backend.release(1);
    assert_eq!(holding.join().expect("client thread").status, 200);
}

/// A keep-alive backend that counts the connections open to it and the most it ever saw at once.
/// A connection the LB closed is counted until its thread reads the end of it: an accept that
/// would set a new peak first waits (for that end, five seconds at most) for such a one to go.
struct CountingBackend {
    address: SocketAddr,
    open: Arc<(Mutex<Connections>, Condvar)>,
}

#[derive(Default)]
struct Connections {
    open: usize,
    peak: usize,
    accepted: usize,
}

impl CountingBackend {
    fn start(cap: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let open = Arc::new((Mutex::new(Connections::default()), Condvar::new()));
        let shared = Arc::clone(&open);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                {
                    let (count, closed) = &*shared;
                    let count = count.lock().expect("lock");
                    let (mut count, _) = closed
                        .wait_timeout_while(count, Duration::from_secs(5), |c| c.open >= cap)
                        .expect("lock");
                    count.open += 1;
                    count.accepted += 1;
                    count.peak = count.peak.max(count.open);
                }
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                    let mut line = String::new();
                    'requests: loop {
                        loop {
                            line.clear();
                            if !reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                                break 'requests;
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let answered =
                            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n");
                        if answered.is_err() {
                            break;
                        }
                    }
                    let (count, closed) = &*shared;
                    count.lock().expect("lock").open -= 1;
                    closed.notify_all();
                });
            }
        });
        Self { address, open }
    }

    /// The most connections open at once, and how many were opened in all.
    fn seen(&self) -> (usize, usize) {
        let count = self.open.0.lock().expect("lock");
        (count.peak, count.accepted)
    }
}

#[test]
fn a_backend_never_has_more_connections_open_than_its_cap() {
    let backend = CountingBackend::start(2);
    let (lb, address) = lb(
        &[backend.address],
        &[
            "--workers",
            "2",
            "--max-connections",
            "2",
            "--queue-size",
            "100",
            "--queue-timeout",
            "120s",
        ],
    );
    // Clients on connections of their own, spread over both workers: each worker keeps the
    // backend connections it used, so under the cap one that needs a connection while the
    // other holds them idle must have it close one.
    let clients: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || {
                (0..25)
                    .map(|_| get(address, "/", &[]))
                    .filter(|reply| (reply.status, reply.body.as_str()) != (200, "ok\n"))
                    .map(|reply| format!("{reply:?}"))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for client in clients {
        let failed = client.join().expect("client thread");
        assert!(failed.is_empty(), "{failed:?}");
    }
    let (peak, accepted) = backend.seen();
    assert!(peak <= 2, "the backend saw {peak} connections at once");
    assert!(accepted >= 1);
    let open = metric(
        lb.admin_addr(),
        "ballast_backend_connections{pool=\"default\"",
    )
    .expect("ballast_backend_connections");
    assert!((1.0..=2.0).contains(&open), "{open} connections open");
}

#[test]
fn max_connections_needs_a_protocol_with_one_request_per_connection() {
    let refused = support::rejected(&[
        "lb",
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "127.0.0.1:9",
        "--max-connections",
        "4",
        "--protocol",
        "h2c",
    ]);
    assert!(
        refused.contains("max_connections: HTTP/2 carries many requests"),
        "{refused}"
    );
}
