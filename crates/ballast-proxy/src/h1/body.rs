//! Bodies on the fast path: forwarded as bytes, their end found from their framing, every read
//! bounded in time.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::chunked::Chunked;
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
    patience: Duration,
) -> Result<(), CopyError> {
    while remaining > 0 {
        if buffer.is_empty() {
            read_more(source, buffer, patience)
                .await
                .map_err(CopyError::Source)?;
        }
        let take = (remaining.min(buffer.len() as u64)) as usize;
        sink.write_all(&buffer[..take])
            .await
            .map_err(CopyError::Sink)?;
        buffer.advance(take);
        remaining -= take as u64;
    }
    Ok(())
}

/// Copies a chunked body from `source` (after what is already in `buffer`) to `sink`, as it is,
/// up to the end of its trailers.
pub(super) async fn copy_chunked(
    source: &mut TcpStream,
    buffer: &mut BytesMut,
    sink: &mut TcpStream,
    patience: Duration,
) -> Result<(), CopyError> {
    let mut state = Chunked::Size;
    loop {
        let whole = state
            .scan(buffer)
            .map_err(|e| CopyError::Source(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        if whole > 0 {
            sink.write_all(&buffer[..whole])
                .await
                .map_err(CopyError::Sink)?;
            buffer.advance(whole);
        }
        if state == Chunked::Done {
            return Ok(());
        }
        read_more(source, buffer, patience)
            .await
            .map_err(CopyError::Source)?;
    }
}
