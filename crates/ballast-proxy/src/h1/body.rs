//! Bodies on the fast path: forwarded as bytes (chunked ones re-encoded), their end found from
//! their framing, every read and every write bounded in time.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::chunked::ChunkedRelay;
use super::message::READ_CHUNK;

/// Reads more of a body into `buffer`, waiting at most `patience` for it (a stalled sender must
/// not hold a connection and a backend forever); the end of the stream is an error here.
pub(super) async fn read_more(
    source: &mut TcpStream,
    buffer: &mut BytesMut,
    patience: Duration,
) -> io::Result<()> {
    buffer.reserve(READ_CHUNK);
    match tokio::time::timeout(patience, source.read_buf(buffer)).await {
        Ok(Ok(0)) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "body cut short",
        )),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "body stalled")),
    }
}

/// How long one read may wait for bytes and one write for room: a peer that stops sending, or
/// stops reading, must not hold a connection (and a backend's) forever.
#[derive(Debug, Clone, Copy)]
pub(super) struct Patience {
    pub(super) read: Duration,
    pub(super) write: Duration,
}

/// Writes all of `bytes`, failing with `TimedOut` if the peer takes none for `patience`.
pub(super) async fn write_within<B: Buf>(
    sink: &mut TcpStream,
    mut bytes: B,
    patience: Duration,
) -> io::Result<()> {
    match tokio::time::timeout(patience, sink.write_all_buf(&mut bytes)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "peer stopped reading",
        )),
    }
}

/// Which end of a copy failed: the difference between a client that stopped sending its body
/// (not the backend's fault) and a backend that stopped taking it.
#[derive(Debug)]
pub(super) enum CopyError {
    Source(io::Error),
    Sink(io::Error),
}

impl From<CopyError> for io::Error {
    fn from(error: CopyError) -> Self {
        match error {
            CopyError::Source(error) | CopyError::Sink(error) => error,
        }
    }
}

/// Copies `remaining` body bytes from `source` (after what is already in `buffer`) to `sink`.
pub(super) async fn copy_length(
    source: &mut TcpStream,
    buffer: &mut BytesMut,
    sink: &mut TcpStream,
    mut remaining: u64,
    patience: Patience,
) -> Result<(), CopyError> {
    while remaining > 0 {
        if buffer.is_empty() {
            read_more(source, buffer, patience.read)
                .await
                .map_err(CopyError::Source)?;
        }
        let take = (remaining.min(buffer.len() as u64)) as usize;
        write_within(sink, &buffer[..take], patience.write)
            .await
            .map_err(CopyError::Sink)?;
        buffer.advance(take);
        remaining -= take as u64;
    }
    Ok(())
}

/// Copies a chunked body from `source` (after what is already in `buffer`) to `sink`, validated
/// and re-encoded (see [`ChunkedRelay`]), up to the end of its trailers; `relay` says where in
/// the body `buffer` starts. A malformed body is the source's fault. Returns the bytes written,
/// chunk framing included.
pub(super) async fn copy_chunked(
    source: &mut TcpStream,
    buffer: &mut BytesMut,
    sink: &mut TcpStream,
    patience: Patience,
    mut relay: ChunkedRelay,
) -> Result<u64, CopyError> {
    let mut output = BytesMut::with_capacity(READ_CHUNK);
    let mut written = 0;
    loop {
        relay_some(&mut relay, buffer, &mut output).map_err(CopyError::Source)?;
        if !output.is_empty() {
            write_within(sink, &output[..], patience.write)
                .await
                .map_err(CopyError::Sink)?;
            written += output.len() as u64;
            output.clear();
        }
        if relay.is_done() {
            return Ok(written);
        }
        read_more(source, buffer, patience.read)
            .await
            .map_err(CopyError::Source)?;
    }
}

/// A request body read (and, if chunked, re-encoded) before any backend was chosen.
#[derive(Debug)]
pub(super) struct Buffered {
    /// Where a chunked body's relay stopped; `None` for a body by length, which stays in the
    /// client's read buffer.
    pub(super) chunked: Option<(ChunkedRelay, BytesMut)>,
}

/// Reads a body by length of `length` bytes into `buffer`.
pub(super) async fn buffer_length(
    source: &mut TcpStream,
    buffer: &mut BytesMut,
    length: u64,
    patience: Duration,
) -> io::Result<Buffered> {
    while (buffer.len() as u64) < length {
        read_more(source, buffer, patience).await?;
    }
    Ok(Buffered { chunked: None })
}

/// Reads and re-encodes a chunked body until it ends or its encoding passes `limit` bytes; the
/// rest, if any, is streamed after it.
pub(super) async fn buffer_chunked(
    source: &mut TcpStream,
    buffer: &mut BytesMut,
    limit: u64,
    patience: Duration,
) -> io::Result<Buffered> {
    let mut relay = ChunkedRelay::default();
    let mut encoded = BytesMut::new();
    loop {
        relay_some(&mut relay, buffer, &mut encoded)?;
        if relay.is_done() || encoded.len() as u64 > limit {
            return Ok(Buffered {
                chunked: Some((relay, encoded)),
            });
        }
        read_more(source, buffer, patience).await?;
    }
}

fn relay_some(
    relay: &mut ChunkedRelay,
    buffer: &mut BytesMut,
    output: &mut BytesMut,
) -> io::Result<()> {
    let consumed = relay
        .relay(buffer, output)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    buffer.advance(consumed);
    Ok(())
}
