//! Answering over UDP in the task that received the query. hickory-server hands each datagram to
//! a task of its own and each answer to a sender task: two wake-ups between threads per query,
//! which profiling showed to be most of the server's time. Here a few tasks (one per CPU the
//! process may use) each receive from the shared socket, answer with the same [`Answerer`] and
//! send the answer themselves, every answer to what one wake-up found waiting in one
//! `sendmmsg`. TCP stays with hickory-server.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_server::authority::{MessageRequest, MessageResponse};
use hickory_server::proto::op::{Header, MessageType, ResponseCode};
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::{
    BinDecodable, BinDecoder, BinEncodable, BinEncoder,
};
use hickory_server::proto::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use rustix::net::addr::SocketAddrArg;
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::server::Answerer;

/// The largest datagram read: larger queries are malformed here anyway.
const MAX_DATAGRAM: usize = 4096;

/// The most queries read before their answers go out in one `sendmmsg`: a wake-up answers what
/// is waiting, up to this many, with one system call for the answers instead of one each.
const BATCH: usize = 32;

/// Receives queries on `socket` and answers them until the task is aborted.
pub(crate) async fn answer_loop(answerer: Arc<Answerer>, socket: Arc<UdpSocket>) {
    let mut inbox = vec![0u8; MAX_DATAGRAM];
    let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut outbox: Vec<(Vec<u8>, SocketAddr)> = (0..BATCH)
        .map(|_| (Vec::with_capacity(512), nowhere))
        .collect();
    loop {
        let mut ready = 0;
        match socket.recv_from(&mut inbox).await {
            Ok((length, peer)) => {
                ready += answer_into(&answerer, &inbox[..length], peer, &mut outbox[ready]).await;
            }
            // ICMP errors from earlier sends surface here on Linux: not this query's.
            Err(error) => tracing::debug!(%error, "UDP receive failed"),
        }
        for _ in 1..BATCH {
            match socket.try_recv_from(&mut inbox) {
                Ok((length, peer)) => {
                    ready +=
                        answer_into(&answerer, &inbox[..length], peer, &mut outbox[ready]).await;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => tracing::debug!(%error, "UDP receive failed"),
            }
        }
        send_all(&socket, &outbox[..ready]).await;
    }
}

/// Writes the answer to `message` from `peer` into `slot`: 1 if there is one, 0 if the
/// message deserves none.
async fn answer_into(
    answerer: &Answerer,
    message: &[u8],
    peer: SocketAddr,
    slot: &mut (Vec<u8>, SocketAddr),
) -> usize {
    slot.1 = peer;
    if answerer.answer_fast(message, &mut slot.0) {
        return 1;
    }
    match answerer.answer_full(message, peer, Protocol::Udp).await {
        Some(answer) => {
            slot.0 = answer;
            1
        }
        None => 0,
    }
}

/// Sends each answer to its peer, as few `sendmmsg` calls as the socket takes them in. An
/// answer the kernel refuses (an unreachable peer) is dropped, as a lone `sendto` would be.
async fn send_all(socket: &UdpSocket, answers: &[(Vec<u8>, SocketAddr)]) {
    let mut sent = 0;
    while sent < answers.len() {
        let rest = &answers[sent..];
        match socket
            .async_io(Interest::WRITABLE, || send_many(socket, rest))
            .await
        {
            Ok(count) => sent += count.max(1),
            Err(error) => {
                tracing::debug!(%error, peer = %rest[0].1, "UDP answer not sent");
                sent += 1;
            }
        }
    }
}

/// One `sendmmsg` of `answers`: how many went out, or the first one's error.
fn send_many(socket: &UdpSocket, answers: &[(Vec<u8>, SocketAddr)]) -> io::Result<usize> {
    let peers: Vec<SocketAddrAny> = answers.iter().map(|(_, peer)| peer.as_any()).collect();
    let bodies: Vec<[IoSlice<'_>; 1]> = answers
        .iter()
        .map(|(answer, _)| [IoSlice::new(answer)])
        .collect();
    let mut ancillary: Vec<SendAncillaryBuffer<'_, '_, '_>> = answers
        .iter()
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut messages: Vec<MMsgHdr<'_>> = peers
        .iter()
        .zip(&bodies)
        .zip(ancillary.iter_mut())
        .map(|((peer, body), ancillary)| MMsgHdr::new_with_addr(peer, body, ancillary))
        .collect();
    rustix::net::sendmmsg(socket, &mut messages, SendFlags::empty()).map_err(io::Error::from)
}

impl Answerer {
    /// The encoded answer to one DNS message as a client sent it over `protocol`, if it deserves
    /// one: a query is answered, a message whose header reads but whose rest does not gets
    /// FORMERR (as hickory-server does), anything shorter than a header or already a response
    /// gets nothing. The UDP tasks answer as it does; the fuzz target calls it.
    pub async fn answer_message(
        &self,
        message: &[u8],
        peer: SocketAddr,
        protocol: Protocol,
    ) -> Option<Vec<u8>> {
        let mut fast = Vec::new();
        if protocol == Protocol::Udp && self.answer_fast(message, &mut fast) {
            return Some(fast);
        }
        self.answer_full(message, peer, protocol).await
    }

    /// The answer by hickory's decoding and the handler, whatever the message's shape.
    pub(crate) async fn answer_full(
        &self,
        message: &[u8],
        peer: SocketAddr,
        protocol: Protocol,
    ) -> Option<Vec<u8>> {
        match MessageRequest::from_bytes(message) {
            Ok(request) if request.header().message_type() == MessageType::Query => {
                let request = Request::new(request, peer, protocol);
                let written = Written::default();
                self.handle_request(&request, written.clone()).await;
                written.take()
            }
            Ok(_) => None,
            Err(_) => {
                let header = Header::read(&mut BinDecoder::new(message)).ok()?;
                if header.message_type() != MessageType::Query {
                    return None;
                }
                let mut response = Header::response_from_request(&header);
                response.set_response_code(ResponseCode::FormErr);
                response.to_bytes().ok()
            }
        }
    }
}

/// A response handler that keeps the encoded answer for the caller to send.
#[derive(Clone, Default)]
struct Written(Arc<Mutex<Option<Vec<u8>>>>);

impl Written {
    fn take(&self) -> Option<Vec<u8>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Written {
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
        let info = response
            .destructive_emit(&mut BinEncoder::new(&mut bytes))
            .map_err(io::Error::other)?;
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
        Ok(info)
    }
}
