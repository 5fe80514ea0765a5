//! The DNS protocol side: a `hickory-server` request handler that answers from the current
//! [`Zone`], swapped in whole when the configuration or the fleet changes. Authoritative answers
//! for names in the zone (with SOA in the authority section for NXDOMAIN and NODATA), REFUSED for
//! names outside it; over UDP, an answer that does not fit what the client can take is sent
//! without records and with the TC bit set, and the client repeats the query over TCP. Names
//! above pool names exist (NODATA, RFC 8020); `ns.ZONE` answers with this server's address; ANY
//! gets the addresses (RFC 8482); zone transfers are refused; an EDNS version other than 0 gets
//! BADVERS and the DO bit is echoed (RFC 6891, RFC 3225).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use hickory_server::authority::{MessageRequest, MessageResponseBuilder};
use hickory_server::proto::op::{Edns, Header, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::{BinDecodable, BinEncodable};
use hickory_server::proto::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};

use crate::metrics::Metrics;
use crate::zone::{Lookup, QueryType, Zone};

/// Answers queries from the zone it holds.
#[derive(Debug)]
pub struct Answerer {
    zone: Arc<ArcSwap<Zone>>,
    max_answers: Option<usize>,
    rotation: AtomicU64,
    metrics: Arc<Metrics>,
    name_server: Option<std::net::IpAddr>,
}

impl Answerer {
    /// Answers from `zone` (swap a new one in to change the answers), with at most
    /// `max_answers` addresses per answer.
    pub fn new(zone: Arc<ArcSwap<Zone>>, max_answers: Option<usize>) -> Self {
        Self::with_metrics(zone, max_answers, Arc::new(Metrics::new()))
    }

    /// Like [`new`](Self::new), counting into `metrics`.
    pub fn with_metrics(
        zone: Arc<ArcSwap<Zone>>,
        max_answers: Option<usize>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            zone,
            max_answers,
            rotation: AtomicU64::new(0),
            metrics,
            name_server: None,
        }
    }

    /// Writes into `out` the answer to a UDP query of the one shape [`crate::fast`] takes, and
    /// counts it; false, with `out` untouched, for anything else, which the full path answers.
    pub(crate) fn answer_fast(&self, message: &[u8], out: &mut Vec<u8>) -> bool {
        let zone = self.zone.load();
        let rotation = || self.rotation.fetch_add(1, Ordering::Relaxed);
        let Some(answered) = crate::fast::answer(
            message,
            zone.fast_index(),
            zone.ttl(),
            self.max_answers,
            rotation,
            out,
        ) else {
            return false;
        };
        let qtype = if answered.v6 { "AAAA" } else { "A" };
        self.metrics
            .answered(qtype, "NOERROR", answered.bounded_size);
        true
    }

    /// Where the next answer's rotation starts, so that a test can ask two paths alike.
    #[cfg(test)]
    pub(crate) fn set_rotation(&self, rotation: u64) {
        self.rotation.store(rotation, Ordering::Relaxed);
    }

    /// Answers `ns.ZONE`, the apex NS record's target, with `address` (this server's), so that
    /// a resolver can follow the NS record as it can in `dns export`'s zone file.
    pub fn with_name_server(mut self, address: std::net::IpAddr) -> Self {
        self.name_server = Some(address);
        self
    }
}

/// A response code as the metrics label it: the mnemonic of RFC 1035 and its successors.
fn rcode_name(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "OTHER",
    }
}

/// The largest UDP answer sent, whatever a client advertises (the DNS flag day 2020 size).
const MAX_UDP_PAYLOAD: u16 = 1232;

/// The UDP payload a client with EDNS is answered within: what it advertises, at least 512
/// bytes (RFC 6891 §6.2.5) and at most [`MAX_UDP_PAYLOAD`].
pub(crate) fn udp_payload(advertised: u16) -> u16 {
    advertised.clamp(512, MAX_UDP_PAYLOAD)
}

/// An upper bound of a response's wire size, which decides truncation and is what the metrics
/// count: header, the question, each record with its owner name written out (compression only
/// makes it smaller), and the OPT record. Names are measured as hickory's `Name::len` does (the
/// text form, one less than the wire form); each record is its owner's and its data's length.
pub(crate) fn size_bound(
    name_len: usize,
    records: impl Iterator<Item = (usize, usize)>,
    edns: bool,
) -> usize {
    let records: usize = records.map(|(owner, rdata)| owner + 2 + 10 + rdata).sum();
    12 + name_len + 2 + 4 + records + if edns { 11 } else { 0 }
}

/// [`size_bound`] of a response the handler built.
fn encoded_size(name: &Name, answers: &[Record], authority: &[Record], edns: bool) -> usize {
    let records = answers.iter().chain(authority).map(|record| {
        let rdata = match record.data() {
            RData::A(_) => 4,
            RData::AAAA(_) => 16,
            RData::SOA(soa) => soa.mname().len() + soa.rname().len() + 4 + 20,
            RData::NS(ns) => ns.0.len() + 2,
            _ => 255,
        };
        (record.name().len(), rdata)
    });
    size_bound(name.len(), records, edns)
}

/// The zone's SOA record: the serial is the configuration revision it was built from.
fn soa(zone: &Zone, origin: &Name) -> Record {
    let mname =
        Name::from_ascii(format!("ns.{}.", zone.origin())).unwrap_or_else(|_| origin.clone());
    let rname = Name::from_ascii(format!("hostmaster.{}.", zone.origin()))
        .unwrap_or_else(|_| origin.clone());
    let ttl = zone.ttl();
    let serial = u32::try_from(zone.serial() % u64::from(u32::MAX)).unwrap_or(0);
    Record::from_rdata(
        origin.clone(),
        ttl,
        RData::SOA(SOA::new(mname, rname, serial, 60, 30, 3600, ttl)),
    )
}

// hickory-server's trait is declared with `async_trait`, so its implementations are too.
#[async_trait::async_trait]
impl RequestHandler for Answerer {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // Not exactly one question (RFC 9619): FORMERR.
        let Ok(info) = request.request_info() else {
            return form_error(request, response_handle).await;
        };
        let mut builder = MessageResponseBuilder::from_message_request(request);
        let mut header = Header::response_from_request(request.header());
        let zone = self.zone.load();
        let name: Name = info.query.name().into();
        let origin =
            Name::from_ascii(format!("{}.", zone.origin())).unwrap_or_else(|_| Name::root());
        let qtype = match info.query.query_type() {
            // ANY gets one RRset, the addresses, as RFC 8482 allows.
            RecordType::A | RecordType::ANY => QueryType::A,
            RecordType::AAAA => QueryType::Aaaa,
            _ => QueryType::Other,
        };
        let ns_name = Name::from_ascii(format!("ns.{}.", zone.origin())).ok();
        let lookup = if matches!(info.query.query_type(), RecordType::AXFR | RecordType::IXFR) {
            // No zone transfers: secondaries take `dns export`'s zone file instead.
            Lookup::Refused
        } else if ns_name.as_ref() == Some(&name) {
            let matching = self.name_server.filter(|address| match qtype {
                QueryType::A => address.is_ipv4(),
                QueryType::Aaaa => address.is_ipv6(),
                QueryType::Other => false,
            });
            matching.map_or(Lookup::NoData, |address| Lookup::Answers(vec![address]))
        } else {
            let rotation = self.rotation.fetch_add(1, Ordering::Relaxed);
            zone.lookup(
                &name.to_ascii(),
                qtype,
                info.src.ip(),
                self.max_answers,
                rotation,
            )
        };
        let mut answers = Vec::new();
        let mut authority = Vec::new();
        match lookup {
            Lookup::Refused => {
                header.set_response_code(ResponseCode::Refused);
            }
            Lookup::NxDomain => {
                header.set_authoritative(true);
                header.set_response_code(ResponseCode::NXDomain);
                authority.push(soa(&zone, &origin));
            }
            Lookup::NoData => {
                header.set_authoritative(true);
                match info.query.query_type() {
                    RecordType::SOA if name == origin => answers.push(soa(&zone, &origin)),
                    RecordType::NS if name == origin => {
                        let ns = Name::from_ascii(format!("ns.{}.", zone.origin()))
                            .unwrap_or_else(|_| origin.clone());
                        answers.push(Record::from_rdata(
                            origin.clone(),
                            zone.ttl(),
                            RData::NS(NS(ns)),
                        ));
                    }
                    _ => authority.push(soa(&zone, &origin)),
                }
            }
            Lookup::Answers(addresses) => {
                header.set_authoritative(true);
                for address in addresses {
                    let rdata = match address {
                        std::net::IpAddr::V4(v4) => RData::A(A(v4)),
                        std::net::IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                    };
                    answers.push(Record::from_rdata(name.clone(), zone.ttl(), rdata));
                }
            }
        }
        // Over UDP the answer must fit what the client can take: 512 bytes without EDNS (RFC
        // 1035), its advertised payload with EDNS, capped at 1232 (the DNS flag day's size that
        // avoids fragmentation). Too large: no records and the TC bit, and the client asks again
        // over TCP, which carries the whole answer.
        let budget = match request.edns() {
            Some(edns) => {
                let payload = udp_payload(edns.max_payload());
                let mut ours = Edns::new();
                ours.set_max_payload(payload)
                    .set_version(0)
                    // The DO bit says the client understands DNSSEC records; it is echoed
                    // (RFC 3225 §3), though this unsigned zone has none to add.
                    .set_dnssec_ok(edns.flags().dnssec_ok);
                builder.edns(ours);
                if edns.version() > 0 {
                    // Only EDNS version 0 exists: BADVERS, with our OPT saying which we speak
                    // (RFC 6891 §6.1.3).
                    header.set_response_code(ResponseCode::BADVERS);
                    header.set_authoritative(false);
                    answers.clear();
                    authority.clear();
                }
                usize::from(payload)
            }
            None => 512,
        };
        if info.protocol == Protocol::Udp
            && encoded_size(&name, &answers, &authority, request.edns().is_some()) > budget
        {
            header.set_truncated(true);
            answers.clear();
        }
        self.metrics.answered(
            info.query.query_type().into(),
            rcode_name(header.response_code()),
            encoded_size(&name, &answers, &authority, request.edns().is_some()),
        );
        let response = builder.build(
            header,
            answers.iter(),
            [].iter(),
            authority.iter(),
            [].iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "answer not sent");
                header.into()
            }
        }
    }
}

/// FORMERR, with no question section: hickory-server echoes a request's questions as the client
/// wrote them, and an answer carrying a client's malformed or pointer-laden questions might not
/// decode (found by `cargo fuzz run answer`).
async fn form_error<R: ResponseHandler>(request: &Request, mut response_handle: R) -> ResponseInfo {
    let mut header = Header::response_from_request(request.header());
    header.set_response_code(ResponseCode::FormErr);
    // The builder echoes a request's question section, so it is given a request of this one's
    // header alone, whose question section is empty.
    let mut bare = *request.header();
    bare.set_query_count(0)
        .set_answer_count(0)
        .set_name_server_count(0)
        .set_additional_count(0);
    let Ok(bare) = bare
        .to_bytes()
        .and_then(|bytes| MessageRequest::from_bytes(&bytes))
    else {
        return header.into();
    };
    let response = MessageResponseBuilder::from_message_request(&bare).build_no_records(header);
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::debug!(%error, "FORMERR not sent");
            header.into()
        }
    }
}

/// A server for `answerer` on `udp` and `tcp` (idle TCP connections close after 5 s); drive it
/// with `block_until_done`, stop it with `shutdown_gracefully`. UDP is answered in this crate's
/// own tasks ([`crate::udp`]), TCP by hickory-server. Call it inside a Tokio runtime.
pub fn serve(
    answerer: Answerer,
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
) -> DnsServer {
    let answerer = Arc::new(answerer);
    let udp = Arc::new(udp);
    let loops = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let udp = (0..loops)
        .map(|_| {
            tokio::spawn(crate::udp::answer_loop(
                Arc::clone(&answerer),
                Arc::clone(&udp),
            ))
        })
        .collect();
    let mut tcp_server = hickory_server::ServerFuture::new(Shared(answerer));
    tcp_server.register_listener(tcp, std::time::Duration::from_secs(5));
    DnsServer {
        tcp: tcp_server,
        udp,
    }
}

/// A running DNS server; dropping it stops answering over UDP.
pub struct DnsServer {
    tcp: hickory_server::ServerFuture<Shared>,
    udp: Vec<tokio::task::JoinHandle<()>>,
}

impl DnsServer {
    /// Runs until the server stops (its TCP listener fails or it is shut down).
    pub async fn block_until_done(&mut self) -> Result<(), hickory_server::proto::ProtoError> {
        self.tcp.block_until_done().await
    }

    /// Stops answering over UDP at once and lets TCP connections finish.
    pub async fn shutdown_gracefully(&mut self) -> Result<(), hickory_server::proto::ProtoError> {
        for task in &self.udp {
            task.abort();
        }
        self.tcp.shutdown_gracefully().await
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.udp {
            task.abort();
        }
    }
}

/// The answerer as hickory-server's TCP side holds it, shared with the UDP tasks.
struct Shared(Arc<Answerer>);

#[async_trait::async_trait]
impl RequestHandler for Shared {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.0.handle_request(request, response_handle).await
    }
}
