//! Answers to the query a fleet's DNS server mostly gets — one A or AAAA question for a pool's
//! name, with or without a plain EDNS OPT record — written straight from the zone's addresses,
//! kept per zone in wire form, without decoding the message into hickory's types or encoding
//! records through its compression table.
//!
//! A profile of `ballast bench dns` put most of the full path's time in hickory's message
//! parse, name and record allocations, the encoder and the metric labels' strings. Here the
//! header and question are read in place, the name is looked up by its lower-cased wire bytes,
//! and the answer is the client's own header and question followed by one fixed-size record per
//! address, whose owner is a pointer to the question (as Knot and NSD write it).
//!
//! Anything else takes the full path, which stays the one definition of what is answered: other
//! types or classes, names outside this index (NXDOMAIN, NODATA, REFUSED, `ns.ZONE`), EDNS
//! options or versions, a client-subnet subset (`max_answers` below the addresses), an answer
//! that might not fit the UDP budget, anything malformed or unusual. A test compares the two
//! paths' answers, decoded, on every shape this one takes.

use std::collections::HashMap;
use std::net::IpAddr;

use foldhash::fast::FixedState;

use crate::server::{size_bound, udp_payload};

/// The longest name on the wire (RFC 1035 §3.1).
const MAX_NAME: usize = 255;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
/// The EDNS flag saying the client understands DNSSEC records, echoed (RFC 3225 §3).
const DNSSEC_OK: u16 = 0x8000;

/// Each answerable name's addresses, keyed by the name's lower-case wire form. The keys come
/// from the configuration, never from queries, so a fixed hash seed invites no flooding.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Index {
    names: HashMap<Box<[u8]>, Addresses, FixedState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Addresses {
    v4: Vec<[u8; 4]>,
    v6: Vec<[u8; 16]>,
}

impl Index {
    /// The index of `names` (canonical: lower case, no trailing dot), leaving out `exclude` —
    /// the server's own `ns.ZONE`, which the full path answers — and any name whose labels the
    /// fast path would not read as they are written (it then takes the full path).
    pub(crate) fn build<'a>(
        names: impl Iterator<Item = (&'a str, &'a [IpAddr])>,
        exclude: &str,
    ) -> Self {
        let names = names
            .filter(|(name, _)| *name != exclude)
            .filter_map(|(name, addresses)| {
                let wire = wire_name(name)?;
                let mut entry = Addresses::default();
                for address in addresses {
                    match address {
                        IpAddr::V4(v4) => entry.v4.push(v4.octets()),
                        IpAddr::V6(v6) => entry.v6.push(v6.octets()),
                    }
                }
                Some((wire, entry))
            })
            .collect();
        Self { names }
    }
}

/// `name` in wire form (length-prefixed labels and the root's zero), if every label is one the
/// query reader accepts.
fn wire_name(name: &str) -> Option<Box<[u8]>> {
    let mut wire = Vec::with_capacity(name.len() + 2);
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 || !label.bytes().all(plain) {
            return None;
        }
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    (wire.len() <= MAX_NAME).then(|| wire.into_boxed_slice())
}

/// A byte the fast path takes in a label: letters, digits, `-` and `_`. Anything else would be
/// escaped in the name's text form, which the full path looks up.
fn plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

/// A query of the one shape answered here, read in place.
#[derive(Debug, PartialEq, Eq)]
struct Query<'a> {
    /// The question as the client wrote it: name, type and class.
    question: &'a [u8],
    /// The name's length on the wire.
    name_len: usize,
    v6: bool,
    edns: Option<Edns>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Edns {
    payload: u16,
    dnssec_ok: bool,
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// `message` as a query of the fast path's shape, with its name lower-cased into `key`; `None`
/// for anything else. Flags the full path ignores (AA, TC, Z, AD) are ignored here too.
fn read<'a>(message: &'a [u8], key: &mut [u8; MAX_NAME]) -> Option<Query<'a>> {
    let flags = u16_at(message, 2)?;
    let is_query = flags & 0x8000 == 0;
    let opcode = (flags >> 11) & 0xF;
    let rcode = flags & 0xF;
    let counts = (
        u16_at(message, 4)?,
        u16_at(message, 6)?,
        u16_at(message, 8)?,
        u16_at(message, 10)?,
    );
    if !is_query || opcode != 0 || rcode != 0 || !matches!(counts, (1, 0, 0, 0 | 1)) {
        return None;
    }
    let mut at = 12;
    loop {
        let length = usize::from(*message.get(at)?);
        // A compression pointer (or the reserved 0x40/0x80 forms) has no place in the only
        // name of a query: the full path decides what it means.
        if length > 63 {
            return None;
        }
        let end = at - 12 + 1 + length;
        if end > MAX_NAME {
            return None;
        }
        key[at - 12] = length as u8;
        if length == 0 {
            break;
        }
        let label = message.get(at + 1..at + 1 + length)?;
        for (slot, &byte) in key[at - 12 + 1..end].iter_mut().zip(label) {
            if !plain(byte) {
                return None;
            }
            *slot = byte.to_ascii_lowercase();
        }
        at += 1 + length;
    }
    let name_len = at - 12 + 1;
    let qtype = u16_at(message, at + 1)?;
    let v6 = match qtype {
        TYPE_A => false,
        TYPE_AAAA => true,
        _ => return None,
    };
    if u16_at(message, at + 3)? != CLASS_IN {
        return None;
    }
    let question_end = at + 5;
    let edns = if counts.3 == 1 {
        // The OPT record, plain: the root as owner, no extended rcode, version 0, no flag but
        // DO, no options (a cookie or a client subnet takes the full path).
        let opt = message.get(question_end..)?;
        if opt.len() != 11 || opt[0] != 0 || u16_at(opt, 1)? != TYPE_OPT {
            return None;
        }
        let flags = u16_at(opt, 7)?;
        if opt[5] != 0 || opt[6] != 0 || flags & !DNSSEC_OK != 0 || u16_at(opt, 9)? != 0 {
            return None;
        }
        Some(Edns {
            payload: u16_at(opt, 3)?,
            dnssec_ok: flags & DNSSEC_OK != 0,
        })
    } else {
        if message.len() != question_end {
            return None;
        }
        None
    };
    Some(Query {
        question: &message[12..question_end],
        name_len,
        v6,
        edns,
    })
}

/// What [`answer`] wrote, for the metrics.
pub(crate) struct Answered {
    pub(crate) v6: bool,
    pub(crate) bounded_size: usize,
}

/// Writes into `out` the answer to `message` from `index` — the addresses rotated left by
/// `rotation()`, called only once the answer is certain — or returns `None` with `out` as it was
/// for the full path to answer. `max_answers` below the name's addresses needs the client's
/// subnet and takes the full path.
pub(crate) fn answer(
    message: &[u8],
    index: &Index,
    ttl: u32,
    max_answers: Option<usize>,
    rotation: impl FnOnce() -> u64,
    out: &mut Vec<u8>,
) -> Option<Answered> {
    let mut key = [0u8; MAX_NAME];
    let query = read(message, &mut key)?;
    let addresses = index.names.get(&key[..query.name_len])?;
    let (count, rdata) = if query.v6 {
        (addresses.v6.len(), 16)
    } else {
        (addresses.v4.len(), 4)
    };
    if count == 0 || max_answers.is_some_and(|k| k < count) {
        return None;
    }
    // Truncation is decided on the full path's bound, every owner written out (this path
    // points each at the question), so that both send whole answers alike.
    let budget = query
        .edns
        .map_or(512, |edns| usize::from(udp_payload(edns.payload)));
    // Measured as hickory's `Name::len` does: the text form, one less than the wire form.
    let name_len = query.name_len - 1;
    let owners = std::iter::repeat_n((name_len, rdata), count);
    let bounded = size_bound(name_len, owners, query.edns.is_some());
    if bounded > budget {
        return None;
    }
    let turn = (rotation() % count as u64) as usize;

    out.clear();
    out.extend_from_slice(&message[..2]);
    // QR and AA set, the opcode (0) and RD and CD echoed, RA and AD clear, NOERROR.
    out.push(0x80 | 0x04 | (message[2] & 0x01));
    out.push(message[3] & 0x10);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(count as u16).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&u16::from(query.edns.is_some()).to_be_bytes());
    out.extend_from_slice(query.question);
    let mut record = |data: &[u8]| {
        // The owner is the question's name, at offset 12.
        out.extend_from_slice(&[0xC0, 0x0C]);
        out.extend_from_slice(&(if query.v6 { TYPE_AAAA } else { TYPE_A }).to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    };
    if query.v6 {
        let (head, tail) = addresses.v6.split_at(turn);
        tail.iter().chain(head).for_each(|a| record(a));
    } else {
        let (head, tail) = addresses.v4.split_at(turn);
        tail.iter().chain(head).for_each(|a| record(a));
    }
    if let Some(edns) = query.edns {
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&udp_payload(edns.payload).to_be_bytes());
        // Extended rcode 0, version 0, DO echoed.
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(if edns.dnssec_ok { DNSSEC_OK } else { 0 }).to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
    }
    Some(Answered {
        v6: query.v6,
        bounded_size: bounded,
    })
}

#[cfg(test)]
mod tests {
    //! The fast path against the full path: for queries of every shape — names in any case,
    //! inside and outside the zone, every query type and class, EDNS plain, with DO, with
    //! options or a later version, odd header flags — whatever the fast path answers, the full
    //! path answers the same, decoded, at the same rotation.

    use std::sync::Arc;

    use arc_swap::ArcSwap;
    use ballast_config::{
        AlgorithmSpec, Config, LbServer, LbState, Liveness, Pool, PoolPolicy, PoolSpec,
    };
    use hickory_server::proto::op::Message;
    use hickory_server::proto::xfer::Protocol;
    use proptest::prelude::*;

    use crate::{Answerer, Zone};

    fn pool(name: &str, dns_name: &str) -> Pool {
        Pool {
            spec: PoolSpec {
                name: name.into(),
                algorithm: AlgorithmSpec::named("round_robin"),
                hash_key: "client_ip".into(),
                dns_name: Some(dns_name.into()),
                policy: PoolPolicy::default(),
            },
            backends: Vec::new(),
        }
    }

    fn lb(i: usize, addresses: Vec<String>, pools: &[&str]) -> LbServer {
        LbServer {
            name: format!("lb-{i}"),
            addresses,
            pools: pools.iter().map(|p| (*p).to_owned()).collect(),
            admin: None,
            applied_revision: 3,
            state: LbState::Serving,
            last_heartbeat_ms: 0,
            figures: None,
            liveness: Liveness::Up,
            liveness_reason: None,
        }
    }

    /// `web` on three LBs with IPv4 and IPv6 addresses, `big` on 60 (too many for 512 bytes),
    /// `v6only` on IPv6 alone, and a pool named like the server's own `ns`.
    fn zone() -> Zone {
        let config = Config {
            revision: 3,
            route_tables: Vec::new(),
            pools: vec![
                pool("web", "lb.web.ballast.local"),
                pool("big", "big.ballast.local"),
                pool("v6only", "v6.ballast.local"),
                pool("ns", "ns.ballast.local"),
            ],
        };
        let mut fleet: Vec<LbServer> = (1..=3)
            .map(|i| {
                let addresses = vec![format!("127.0.0.{i}:80"), format!("[fd00::{i}]:80")];
                lb(i, addresses, &["web", "ns"])
            })
            .collect();
        fleet.extend((10..70).map(|i| lb(i, vec![format!("127.0.1.{i}:80")], &["big"])));
        fleet.push(lb(99, vec!["[fd00::99]:80".into()], &["v6only"]));
        Zone::build("ballast.local", 30, &config, &fleet)
    }

    fn name_bytes(name: &str) -> Vec<u8> {
        let mut wire = Vec::new();
        for label in name.split('.').filter(|l| !l.is_empty()) {
            wire.push(label.len() as u8);
            wire.extend_from_slice(label.as_bytes());
        }
        wire.push(0);
        wire
    }

    #[derive(Debug, Clone)]
    struct Shape {
        id: u16,
        flags: u16,
        name: String,
        upper: Vec<bool>,
        qtype: u16,
        class: u16,
        opt: Option<(u16, u8, u16, Vec<u8>)>,
        trailing: Vec<u8>,
    }

    impl Shape {
        fn bytes(&self) -> Vec<u8> {
            let mut name = name_bytes(&self.name);
            for (byte, upper) in name.iter_mut().zip(self.upper.iter().cycle()) {
                if *upper {
                    *byte = byte.to_ascii_uppercase();
                }
            }
            let mut message = Vec::new();
            message.extend_from_slice(&self.id.to_be_bytes());
            message.extend_from_slice(&self.flags.to_be_bytes());
            message.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(self.opt.is_some())]);
            message.extend_from_slice(&name);
            message.extend_from_slice(&self.qtype.to_be_bytes());
            message.extend_from_slice(&self.class.to_be_bytes());
            if let Some((payload, version, flags, options)) = &self.opt {
                message.push(0);
                message.extend_from_slice(&41u16.to_be_bytes());
                message.extend_from_slice(&payload.to_be_bytes());
                message.extend_from_slice(&[0, *version]);
                message.extend_from_slice(&flags.to_be_bytes());
                message.extend_from_slice(&(options.len() as u16).to_be_bytes());
                message.extend_from_slice(options);
            }
            message.extend_from_slice(&self.trailing);
            message
        }
    }

    fn shapes() -> impl Strategy<Value = Shape> {
        let names = prop::sample::select(vec![
            "lb.web.ballast.local",
            "big.ballast.local",
            "v6.ballast.local",
            "ns.ballast.local",
            "ballast.local",
            "web.ballast.local",
            "nothing.ballast.local",
            "lb.web.example.com",
            "lb-web_x.ballast.local",
        ]);
        let flags = prop::sample::select(vec![
            0x0000u16, 0x0100, 0x0110, 0x0120, 0x0130, 0x0140, 0x0500, 0x0200, 0x8100, 0x0900,
            0x2100, 0x0103,
        ]);
        let qtypes = prop::sample::select(vec![1u16, 28, 255, 15, 16, 6, 2, 252]);
        let classes = prop::sample::select(vec![1u16, 1, 1, 3, 255]);
        let opt = prop::option::of((
            prop::sample::select(vec![0u16, 100, 512, 1232, 4096, 65535]),
            prop::sample::select(vec![0u8, 0, 0, 1]),
            prop::sample::select(vec![0u16, 0x8000, 0x8001, 0x0001]),
            prop::sample::select(vec![
                Vec::new(),
                Vec::new(),
                vec![0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8],
            ]),
        ));
        let trailing = prop::sample::select(vec![Vec::new(), Vec::new(), vec![0]]);
        (
            any::<u16>(),
            flags,
            names,
            prop::collection::vec(any::<bool>(), 1..8),
            qtypes,
            classes,
            opt,
            trailing,
        )
            .prop_map(
                |(id, flags, name, upper, qtype, class, opt, trailing)| Shape {
                    id,
                    flags,
                    name: name.to_owned(),
                    upper,
                    qtype,
                    class,
                    opt,
                    trailing,
                },
            )
    }

    /// Everything an answer says, its names in lower case: hickory's `Record` equality leaves
    /// out the TTL.
    fn said(answer: &[u8]) -> String {
        let message = Message::from_vec(answer).expect("the answer decodes");
        let records = |records: &[hickory_server::proto::rr::Record]| {
            records
                .iter()
                .map(|r| {
                    let name = r.name().to_lowercase();
                    format!(
                        "{name} {} {} {} {:?}",
                        r.ttl(),
                        r.dns_class(),
                        r.record_type(),
                        r.data()
                    )
                })
                .collect::<Vec<_>>()
        };
        format!(
            "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
            message.header(),
            message.queries(),
            records(message.answers()),
            records(message.name_servers()),
            records(message.additionals()),
            message.extensions(),
        )
    }

    fn answerer(max_answers: Option<usize>) -> Answerer {
        Answerer::new(Arc::new(ArcSwap::from_pointee(zone())), max_answers)
            .with_name_server("127.0.0.53".parse().expect("address"))
    }

    /// The fast path's answer at `rotation`, and the full path's, where each answers.
    fn both(
        answerer: &Answerer,
        message: &[u8],
        rotation: u64,
    ) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        answerer.set_rotation(rotation);
        let mut fast = Vec::new();
        let fast = answerer.answer_fast(message, &mut fast).then_some(fast);
        answerer.set_rotation(rotation);
        let peer = "127.0.0.9:5353".parse().expect("address");
        let full = runtime.block_on(answerer.answer_full(message, peer, Protocol::Udp));
        (fast, full)
    }

    #[test]
    fn a_plain_query_for_a_pool_takes_the_fast_path() {
        let answerer = answerer(None);
        for (name, qtype) in [("lb.web.ballast.local", 1), ("LB.Web.ballast.local", 28)] {
            let shape = Shape {
                id: 7,
                flags: 0x0100,
                name: name.into(),
                upper: vec![false],
                qtype,
                class: 1,
                opt: Some((1232, 0, 0x8000, Vec::new())),
                trailing: Vec::new(),
            };
            let (fast, full) = both(&answerer, &shape.bytes(), 1);
            let fast = fast.expect("answered by the fast path");
            let full = full.expect("answered by the full path");
            assert_eq!(said(&fast), said(&full));
            assert!(fast.len() < full.len(), "owners point at the question");
        }
        // Too large for 512 bytes without EDNS, and a client-subnet subset: the full path.
        let big = Shape {
            id: 1,
            flags: 0,
            name: "big.ballast.local".into(),
            upper: vec![false],
            qtype: 1,
            class: 1,
            opt: None,
            trailing: Vec::new(),
        };
        assert!(both(&answerer, &big.bytes(), 0).0.is_none());
        let web = Shape {
            name: "lb.web.ballast.local".into(),
            ..big
        };
        assert!(both(&answerer, &web.bytes(), 0).0.is_some());
        assert!(both(&self::answerer(Some(2)), &web.bytes(), 0).0.is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn whatever_the_fast_path_answers_the_full_path_answers_alike(
            shape in shapes(),
            rotation in 0u64..7,
            max_answers in prop::option::of(1usize..5),
        ) {
            let answerer = answerer(max_answers);
            let message = shape.bytes();
            let (fast, full) = both(&answerer, &message, rotation);
            if let Some(fast) = fast {
                let full = full.expect("a query the fast path answers, the full path answers");
                prop_assert_eq!(said(&fast), said(&full));
            }
        }
    }
}
