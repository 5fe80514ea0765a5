//! Any bytes a client may send, decoded as hickory-server decodes a datagram and answered by
//! Ballast's [`Answerer`] from a zone with a small pool and one too large for a UDP answer. No
//! input may panic the server, and the answer must encode and decode again as a DNS message with
//! the query's ID — unless the client wrote its question with compression pointers, which can
//! only point into the header: the question is echoed as written (as NSD and hickory-server do),
//! and the header's bytes differ in the answer.
//!
//! `cargo +nightly fuzz run answer` from `crates/ballast-dns` (the bounded loop in
//! `tests/garbage.rs` runs on stable in every `scripts/test`).

#![no_main]

use std::io;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use ballast_config::{AlgorithmSpec, Config, LbServer, LbState, Liveness, Pool, PoolSpec};
use ballast_dns::{Answerer, Zone};
use hickory_server::authority::{MessageRequest, MessageResponse};
use hickory_server::proto::op::Message;
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::{BinDecodable, BinEncoder};
use hickory_server::proto::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use libfuzzer_sys::fuzz_target;

/// Encodes the response as the server would send it and checks that it decodes again.
#[derive(Clone)]
struct Decodes {
    id: u16,
    /// Whether the answer must decode.
    strict: bool,
}

#[async_trait::async_trait]
impl ResponseHandler for Decodes {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> io::Result<ResponseInfo> {
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        let info = response
            .destructive_emit(&mut encoder)
            .map_err(io::Error::other)?;
        match Message::from_vec(&bytes) {
            Ok(decoded) => assert_eq!(decoded.id(), self.id, "the answer carries the query's ID"),
            Err(error) => assert!(!self.strict, "the answer does not decode: {error}"),
        }
        Ok(info)
    }
}

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
    // What hickory-server does with a datagram before a handler sees it: a request that does not
    // decode is answered FORMERR by the server itself, if at all.
    let Ok(first) = MessageRequest::from_bytes(data) else {
        return;
    };
    let id = first.id();
    let (runtime, every, subset) = answerers();
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        for answerer in [every, subset] {
            // Decoded again for each request: a MessageRequest is not Clone.
            let message = MessageRequest::from_bytes(data).expect("decoded once already");
            let request = Request::new(message, "127.0.0.1:5353".parse().unwrap(), protocol);
            let check = Decodes {
                id,
                strict: plain_question(data),
            };
            runtime.block_on(answerer.handle_request(&request, check));
        }
    }
});
