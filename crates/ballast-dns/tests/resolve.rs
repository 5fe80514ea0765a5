//! The DNS server over real UDP and TCP sockets on loopback, asked by a real resolver client
//! (`hickory-resolver`): answers follow the zone as it is swapped, unknown names are NXDOMAIN,
//! names outside the zone REFUSED, the first record rotates, and an answer too large for UDP is
//! truncated and fetched again over TCP in full; and the protocol details strict resolvers
//! rely on.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ballast_config::{AlgorithmSpec, Config, LbServer, LbState, Liveness, Pool, PoolSpec};
use ballast_dns::{Answerer, Zone, serve};
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::{ResolveErrorKind, Resolver, TokioResolver};

fn config() -> Config {
    Config {
        revision: 7,
        route_tables: Vec::new(),
        pools: vec![Pool {
            spec: PoolSpec {
                name: "web".into(),
                algorithm: AlgorithmSpec::named("round_robin"),
                hash_key: "client_ip".into(),
                dns_name: Some("lb.web.ballast.local".into()),
                policy: Default::default(),
            },
            backends: Vec::new(),
        }],
    }
}

fn fleet(count: u8, down: &[u8]) -> Vec<LbServer> {
    (1..=count)
        .map(|i| LbServer {
            name: format!("lb-{i}"),
            addresses: vec![format!("127.0.{}.{}:8080", i / 200, i % 200 + 1)],
            pools: vec!["web".into()],
            admin: None,
            applied_revision: 7,
            state: LbState::Serving,
            last_heartbeat_ms: 0,
            figures: None,
            liveness: if down.contains(&i) {
                Liveness::Down
            } else {
                Liveness::Up
            },
            liveness_reason: None,
        })
        .collect()
}

/// A server on a free loopback port (UDP and TCP), and a resolver that asks only it.
async fn start(zone: Arc<ArcSwap<Zone>>) -> (TokioResolver, SocketAddr) {
    let (udp, tcp) = ballast_dns::bind("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("UDP and TCP on one port");
    let address = udp.local_addr().expect("address");
    let answerer = Answerer::new(zone, None).with_name_server(address.ip());
    let mut server = serve(answerer, udp, tcp);
    tokio::spawn(async move { server.block_until_done().await });
    let servers = NameServerConfigGroup::from_ips_clear(&[address.ip()], address.port(), true);
    let mut builder = Resolver::builder_with_config(
        ResolverConfig::from_parts(None, Vec::new(), servers),
        TokioConnectionProvider::default(),
    );
    builder.options_mut().cache_size = 0;
    builder.options_mut().attempts = 1;
    (builder.build(), address)
}

async fn addresses(resolver: &TokioResolver, name: &str) -> Vec<IpAddr> {
    resolver
        .lookup_ip(name)
        .await
        .expect("an answer")
        .iter()
        .collect()
}

#[tokio::test]
async fn answers_follow_the_fleet_and_the_zone_says_no_where_due() {
    let zone = Arc::new(ArcSwap::from_pointee(Zone::build(
        "ballast.local",
        5,
        &config(),
        &fleet(3, &[]),
    )));
    let (resolver, _) = start(zone.clone()).await;
    let mut got = addresses(&resolver, "lb.web.ballast.local.").await;
    got.sort();
    assert_eq!(got.len(), 3, "{got:?}");

    // An LB marked down leaves the answer as soon as the zone is swapped.
    zone.store(Arc::new(Zone::build(
        "ballast.local",
        5,
        &config(),
        &fleet(3, &[2]),
    )));
    let got = addresses(&resolver, "lb.web.ballast.local.").await;
    assert_eq!(got.len(), 2);
    assert!(!got.contains(&"127.0.0.3".parse().expect("ip")), "{got:?}");

    let unknown = resolver
        .lookup_ip("nothing.ballast.local.")
        .await
        .expect_err("no such name");
    match unknown.kind() {
        ResolveErrorKind::Proto(proto) => {
            assert!(proto.is_nx_domain(), "{proto:?}");
        }
        other => panic!("{other:?}"),
    }
    let outside = resolver
        .lookup_ip("www.example.com.")
        .await
        .expect_err("not ours");
    assert!(
        format!("{outside:?}").contains("Refused") || format!("{outside}").contains("Refused"),
        "{outside:?}"
    );
    let _ = ResponseCode::Refused;
}

#[tokio::test]
async fn the_first_record_rotates_from_query_to_query() {
    let zone = Arc::new(ArcSwap::from_pointee(Zone::build(
        "ballast.local",
        5,
        &config(),
        &fleet(3, &[]),
    )));
    let (resolver, _) = start(zone).await;
    let mut firsts = std::collections::HashSet::new();
    for _ in 0..6 {
        firsts.insert(addresses(&resolver, "lb.web.ballast.local.").await[0]);
    }
    assert_eq!(firsts.len(), 3, "{firsts:?}");
}

#[tokio::test]
async fn a_large_fleet_is_truncated_over_udp_and_whole_over_tcp() {
    let zone = Arc::new(ArcSwap::from_pointee(Zone::build(
        "ballast.local",
        5,
        &config(),
        &fleet(100, &[]),
    )));
    let (resolver, server) = start(zone).await;
    // The resolver sees TC over UDP and asks again over TCP: all 100 come back.
    assert_eq!(
        addresses(&resolver, "lb.web.ballast.local.").await.len(),
        100
    );

    // Asked over UDP alone, without EDNS, the answer is the TC bit and no records.
    let (answer, size) = ask(
        server,
        "lb.web.ballast.local.",
        hickory_resolver::proto::rr::RecordType::A,
        None,
    )
    .await;
    assert!(size <= 512, "{size} bytes over UDP without EDNS");
    assert_eq!(answer.id(), QUERY_ID);
    assert!(answer.truncated());
    assert!(answer.authoritative());
    assert!(answer.answers().is_empty());
}

/// The ID [`ask`] gives its queries.
const QUERY_ID: u16 = 4242;

/// One query over UDP, with EDNS of `edns` = (version, DO bit) or none; the answer and its
/// size on the wire.
async fn ask(
    server: SocketAddr,
    name: &str,
    kind: hickory_resolver::proto::rr::RecordType,
    edns: Option<(u8, bool)>,
) -> (hickory_resolver::proto::op::Message, usize) {
    use hickory_resolver::proto::op::{Edns, Message, Query};
    use hickory_resolver::proto::rr::Name;
    let mut query = Message::new();
    query
        .set_id(QUERY_ID)
        .set_recursion_desired(false)
        .add_query(Query::query(Name::from_ascii(name).expect("name"), kind));
    if let Some((version, dnssec_ok)) = edns {
        let mut opt = Edns::new();
        opt.set_version(version)
            .set_max_payload(1232)
            .set_dnssec_ok(dnssec_ok);
        query.set_edns(opt);
    }
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp");
    socket
        .send_to(&query.to_vec().expect("encode"), server)
        .await
        .expect("send");
    let mut buffer = [0u8; 4096];
    let (n, _) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        socket.recv_from(&mut buffer),
    )
    .await
    .expect("an answer in time")
    .expect("receive");
    (Message::from_vec(&buffer[..n]).expect("a DNS message"), n)
}

/// What a strict resolver and the RFCs expect of the details: names above pool names exist
/// (RFC 8020), the NS target resolves, ANY is answered (RFC 8482), zone transfers are refused,
/// EDNS versions other than 0 get BADVERS (RFC 6891) and the DO bit is echoed (RFC 3225).
#[tokio::test]
async fn the_details_strict_resolvers_rely_on() {
    use hickory_resolver::proto::rr::{RData, RecordType};
    let zone = Arc::new(ArcSwap::from_pointee(Zone::build(
        "ballast.local",
        5,
        &config(),
        &fleet(3, &[]),
    )));
    let (_, server) = start(zone).await;

    let (above, _) = ask(server, "web.ballast.local.", RecordType::A, None).await;
    assert_eq!(above.response_code(), ResponseCode::NoError, "{above:?}");
    assert!(above.answers().is_empty());
    let (absent, _) = ask(server, "nothing.ballast.local.", RecordType::A, None).await;
    assert_eq!(absent.response_code(), ResponseCode::NXDomain);

    let (ns, _) = ask(server, "ns.ballast.local.", RecordType::A, None).await;
    let addresses: Vec<&RData> = ns.answers().iter().map(|r| r.data()).collect();
    assert_eq!(addresses.len(), 1, "{ns:?}");
    assert!(
        matches!(addresses[0], RData::A(a) if IpAddr::V4(a.0) == server.ip()),
        "{ns:?}"
    );

    let (any, _) = ask(server, "lb.web.ballast.local.", RecordType::ANY, None).await;
    assert_eq!(any.response_code(), ResponseCode::NoError);
    assert_eq!(any.answers().len(), 3, "{any:?}");

    let (transfer, _) = ask(server, "ballast.local.", RecordType::AXFR, None).await;
    assert_eq!(transfer.response_code(), ResponseCode::Refused);

    let (future, _) = ask(
        server,
        "lb.web.ballast.local.",
        RecordType::A,
        Some((1, false)),
    )
    .await;
    // BADVERS is 16 (hickory decodes 16 as BADSIG, which shares the number).
    assert_eq!(u16::from(future.response_code()), 16, "{future:?}");
    assert_eq!(future.extensions().as_ref().map(|e| e.version()), Some(0));
    assert!(future.answers().is_empty());

    let (signed, _) = ask(
        server,
        "lb.web.ballast.local.",
        RecordType::A,
        Some((0, true)),
    )
    .await;
    assert_eq!(signed.response_code(), ResponseCode::NoError);
    assert_eq!(
        signed.extensions().as_ref().map(|e| e.flags().dnssec_ok),
        Some(true)
    );
    let (unsigned, _) = ask(
        server,
        "lb.web.ballast.local.",
        RecordType::A,
        Some((0, false)),
    )
    .await;
    assert_eq!(
        unsigned.extensions().as_ref().map(|e| e.flags().dnssec_ok),
        Some(false)
    );
}
