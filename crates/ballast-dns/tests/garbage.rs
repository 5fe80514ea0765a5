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

/// A server for `zone` on a free loopback port (UDP and TCP), running for the rest of the test.
async fn start(zone: Zone) -> SocketAddr {
    let (udp, tcp) = ballast_dns::bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("UDP and TCP on one port");
    let address = udp.local_addr().expect("address");
    let mut server = serve(
        Answerer::new(Arc::new(ArcSwap::from_pointee(zone)), None),
        udp,
        tcp,
    );
    tokio::spawn(async move { server.block_until_done().await });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_broken_packets_never_take_the_server_down() {
    let server_address = start(Zone::build(
        "ballast.local",
        5,
        &Config {
            revision: 1,
            pools: Vec::new(),
            route_tables: Vec::new(),
        },
        &[],
    ))
    .await;
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

/// Requests without exactly one question get a FORMERR that decodes, with the request's ID and no
/// question. (The first was found by `cargo fuzz run answer`: hickory-server copies the
/// questions' bytes into the answer, compression pointers into the header and all.)
#[tokio::test]
async fn requests_without_exactly_one_question_get_a_formerr_that_decodes() {
    let server_address = start(Zone::new("ballast.local", 5)).await;

    let header = |id: u16, questions: u16| {
        let mut bytes = id.to_be_bytes().to_vec();
        bytes.extend([1, 0]);
        bytes.extend(questions.to_be_bytes());
        bytes.extend([0; 6]);
        bytes
    };
    // Ten questions whose names point into the header.
    let mut ten = header(0x0200, 10);
    ten.extend([
        0, 0x8a, 0xa8, 0x39, 0x72, 0, 0, 1, 0xfa, 0, 0, 0, 0xfa, 0x20, 0, 0, 0, 0, 2, 0, 0x1a,
        0x14, 0, 0x44, 0, 0, 0, 0x14, 0, 0x44, 0, 0, 0, 0x3d, 0, 0, 0, b'b', b'i', b'g', 0, 0xb6,
        0, 0, 0, 0, 0, 0, 0x14, 0, 0x44, 0, 0, 0, 0x3d, 0, 0, 0, b'b', b'i', b'g', 0, 0xc0, 0, 0,
        0, 0, 0, 0, 0, 0, 0x14, 0, 0, 0, 0x3d, 0, 0, 0, b'b', b'i', b'g', 0, 0xc0, 0, 0, 0, 0,
        0x2a, 0x55, 0x14, 0, 0x7f, 0xe7, 0xe7, 0xe7, 0, 0xe5, 0,
    ]);
    // Two well-formed questions (RFC 9619: FORMERR).
    let mut two = query(0x0402);
    two[5] = 2;
    two.extend_from_slice(&query(0)[12..]);

    let client = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    for request in [ten, two] {
        let id = u16::from_be_bytes([request[0], request[1]]);
        client
            .send_to(&request, server_address)
            .await
            .expect("send");
        let mut buffer = [0u8; 1024];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buffer))
            .await
            .expect("an answer within 5 s")
            .expect("recv");
        let answer = Message::from_vec(&buffer[..n]).expect("the answer decodes");
        assert_eq!(answer.id(), id, "{request:?}");
        assert_eq!(
            answer.response_code(),
            hickory_server::proto::op::ResponseCode::FormErr,
            "{request:?}"
        );
        assert!(answer.queries().is_empty());
    }
    assert!(answers(server_address, 42).await, "still answering");
}
