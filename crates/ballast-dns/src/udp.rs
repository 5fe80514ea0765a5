//! Answering over UDP in the task that received the query. hickory-server hands each datagram to
//! a task of its own and each answer to a sender task: two wake-ups between threads per query,
//! which profiling showed to be most of the server's time. Here a few tasks (one per CPU the
//! process may use) each receive from the shared socket, answer with the same [`Answerer`] and
//! send the answer themselves. TCP stays with hickory-server.

use std::io;
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
use tokio::net::UdpSocket;

use crate::server::Answerer;

/// The largest datagram read: larger queries are malformed here anyway.
const MAX_DATAGRAM: usize = 4096;

/// Receives queries on `socket` and answers them until the task is aborted.
pub(crate) async fn answer_loop(answerer: Arc<Answerer>, socket: Arc<UdpSocket>) {
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    loop {
        let (length, peer) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(error) => {
                // ICMP errors from earlier sends surface here on Linux: not this query's.
                tracing::debug!(%error, "UDP receive failed");
                continue;
            }
        };
        if let Some(answer) = answerer
            .answer_message(&buffer[..length], peer, Protocol::Udp)
            .await
            && let Err(error) = socket.send_to(&answer, peer).await
        {
            tracing::debug!(%error, %peer, "UDP answer not sent");
        }
    }
}

impl Answerer {
    /// The encoded answer to one DNS message as a client sent it over `protocol`, if it deserves
    /// one: a query is answered, a message whose header reads but whose rest does not gets
    /// FORMERR (as hickory-server does), anything shorter than a header or already a response
    /// gets nothing. The UDP tasks answer with it; so does the fuzz target.
    pub async fn answer_message(
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
