//! Any bytes a client may send, answered as the server answers a datagram
//! ([`Answerer::answer_message`]) from a zone with a small pool and one too large for a UDP
//! answer. No input may panic the server, and an answer must decode as a DNS message with the
//! query's ID — unless the client wrote its question with compression pointers, which can only
//! point into the header: the question is echoed as written (as NSD and hickory-server do), and
//! the header's bytes differ in the answer.
//!
//! `cargo +nightly fuzz run answer` from `crates/ballast-dns` (the bounded loop in
//! `tests/garbage.rs` runs on stable in every `scripts/test`).

#![no_main]

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use ballast_config::{AlgorithmSpec, Config, LbServer, LbState, Liveness, Pool, PoolSpec};
use ballast_dns::proto::op::Message;
use ballast_dns::proto::xfer::Protocol;
use ballast_dns::{Answerer, Zone};
use libfuzzer_sys::fuzz_target;

fn pool(name: &str) -> Pool {
    Pool {
        spec: PoolSpec {
            name: name.into(),
            algorithm: AlgorithmSpec::named("round_robin"),
            hash_key: "client_ip".into(),
            dns_name: Some(format!("lb.{name}.ballast.local")),
            policy: Default::default(),
        },
        backends: Vec::new(),
    }
}

fn lb(i: usize, pool: &str, address: String) -> LbServer {
    LbServer {
        name: format!("lb-{pool}-{i}"),
        addresses: vec![address],
        pools: vec![pool.into()],
        admin: None,
        applied_revision: 1,
        state: LbState::Serving,
        last_heartbeat_ms: 0,
        figures: None,
        liveness: Liveness::Up,
        liveness_reason: None,
    }
}

/// `lb.web.ballast.local` with three IPv4 and one IPv6 LB; `lb.big.ballast.local` with 100.
fn answerers() -> &'static (tokio::runtime::Runtime, Answerer, Answerer) {
    static ANSWERERS: OnceLock<(tokio::runtime::Runtime, Answerer, Answerer)> = OnceLock::new();
    ANSWERERS.get_or_init(|| {
        let config = Config {
            revision: 7,
            pools: vec![pool("web"), pool("big")],
            route_tables: Vec::new(),
        };
        let mut fleet: Vec<LbServer> = (1..=3)
            .map(|i| lb(i, "web", format!("127.0.0.{}:8080", 10 + i)))
            .collect();
        fleet.push(lb(4, "web", "[::1]:8080".into()));
        fleet.extend((0..100).map(|i| lb(i, "big", format!("127.0.2.{i}:8080"))));
        let zone = Arc::new(ArcSwap::from_pointee(Zone::build(
            "ballast.local",
            5,
            &config,
            &fleet,
        )));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        (
            runtime,
            Answerer::new(Arc::clone(&zone), None),
            Answerer::new(zone, Some(2)),
        )
    })
}

/// Whether the first question's name, right after the header, is written out label by label.
fn plain_question(data: &[u8]) -> bool {
    let mut at = 12;
    while let Some(&length) = data.get(at) {
        match length {
            0 => return true,
            1..=63 => at += 1 + usize::from(length),
            _ => return false,
        }
    }
    false
}

fuzz_target!(|data: &[u8]| {
    let (runtime, every, subset) = answerers();
    let peer = "127.0.0.1:5353".parse().unwrap();
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        for answerer in [every, subset] {
            let Some(answer) = runtime.block_on(answerer.answer_message(data, peer, protocol))
            else {
                continue;
            };
            match Message::from_vec(&answer) {
                Ok(decoded) => assert_eq!(
                    decoded.id(),
                    u16::from_be_bytes([data[0], data[1]]),
                    "the answer carries the query's ID"
                ),
                Err(error) => assert!(!plain_question(data), "the answer does not decode: {error}"),
            }
        }
    }
});
