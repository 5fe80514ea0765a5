//! A bounded fuzz loop against the running server: 100,000 datagrams of random bytes and of
//! valid queries cut short or with bytes flipped, then garbage over TCP. The server must keep
//! answering a well-formed query throughout — nothing in a packet may take it down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ballast_config::Config;
use ballast_dns::{Answerer, Zone, serve};
use hickory_server::proto::op::{Message, Query};
use hickory_server::proto::rr::{Name, RecordType};
use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;

const INPUTS: usize = 100_000;

fn query(id: u16) -> Vec<u8> {
    let mut message = Message::new();
    message.set_id(id).add_query(Query::query(
        Name::from_ascii("lb.web.ballast.local.").expect("name"),
        RecordType::A,
    ));
    message.to_vec().expect("encode")
}

/// Whether the server answers a well-formed query (asked up to ten times, a second each: UDP
/// may drop a query while the server works through a backlog of garbage).
async fn answers(server: SocketAddr, id: u16) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    let mut buffer = [0u8; 1024];
    for _ in 0..10 {
        let _ = socket.send_to(&query(id), server).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(Ok((n, _))) =
            tokio::time::timeout_at(deadline, socket.recv_from(&mut buffer)).await
        {
            if Message::from_vec(&buffer[..n]).is_ok_and(|m| m.id() == id) {
                return true;
            }
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_broken_packets_never_take_the_server_down() {
    let zone = Arc::new(ArcSwap::from_pointee(Zone::build(
        "ballast.local",
        5,
        &Config {
            revision: 1,
            pools: Vec::new(),
        },
        &[],
    )));
    let udp = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    let server_address = udp.local_addr().expect("address");
    let tcp = tokio::net::TcpListener::bind(server_address)
        .await
        .expect("tcp");
    let mut server = serve(Answerer::new(zone, None), udp, tcp);
    tokio::spawn(async move { server.block_until_done().await });
    assert!(answers(server_address, 1).await);

    let mut rng = fastrand::Rng::with_seed(0xba11a57);
    let valid = query(7);
    let sender = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    for i in 0..INPUTS {
        let packet: Vec<u8> = match i % 3 {
            // Random bytes of any length a datagram may have here.
            0 => (0..rng.usize(0..600)).map(|_| rng.u8(..)).collect(),
            // A valid query cut short.
            1 => valid[..rng.usize(0..valid.len())].to_vec(),
            // A valid query with a few bytes flipped.
            _ => {
                let mut packet = valid.clone();
                for _ in 0..rng.usize(1..4) {
                    let at = rng.usize(0..packet.len());
                    packet[at] = rng.u8(..);
                }
                packet
            }
        };
        let _ = sender.send_to(&packet, server_address).await;
        if i % 500 == 499 {
            // Pace the sender a little, so that the test measures robustness, not buffer sizes.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if i % 10_000 == 9_999 {
            // Let the server drain, then make sure it still answers.
            tokio::task::yield_now().await;
            assert!(
                answers(server_address, (i / 10_000) as u16 + 100).await,
                "after {i} inputs"
            );
        }
    }

    // Garbage over TCP: a length prefix that lies, then random bytes, then a hang-up.
    for _ in 0..50 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(server_address).await {
            let garbage: Vec<u8> = (0..rng.usize(1..300)).map(|_| rng.u8(..)).collect();
            let _ = stream.write_all(&garbage).await;
        }
    }
    assert!(answers(server_address, 9999).await, "after TCP garbage");
}
