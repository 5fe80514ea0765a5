//! Bytes copied both ways between a client and a backend (TCP mode, upgraded connections),
//! holding a read buffer only while bytes are in flight.
//!
//! tokio's `copy_bidirectional` keeps two 8 KiB buffers for a connection's whole life, and a
//! tunnelled connection is mostly idle (a database session, a WebSocket between messages). Here
//! each direction takes a buffer from the worker's spares ([`crate::spare`]) to read, keeps it
//! until what it read is written, and hands it back as soon as a read finds nothing waiting.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

/// Copies `a` to `b` and `b` to `a` until both have ended (each end's EOF shuts the other's
/// writing side, as `copy_bidirectional` does), or either fails.
pub(crate) fn relay<'s, A, B>(a: &'s mut A, b: &'s mut B) -> Relay<'s, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    Relay {
        a,
        b,
        a_to_b: Direction::default(),
        b_to_a: Direction::default(),
    }
}

/// The future of [`relay`].
pub(crate) struct Relay<'s, A: ?Sized, B: ?Sized> {
    a: &'s mut A,
    b: &'s mut B,
    a_to_b: Direction,
    b_to_a: Direction,
}

impl<A: ?Sized, B: ?Sized> Relay<'_, A, B> {
    /// Buffers held now: one for each direction with bytes read and not yet written.
    #[cfg(test)]
    fn buffers_held(&self) -> usize {
        usize::from(self.a_to_b.buffer.is_some()) + usize::from(self.b_to_a.buffer.is_some())
    }
}

impl<A, B> Future for Relay<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let forth = this.a_to_b.poll_copy(cx, &mut *this.a, &mut *this.b)?;
        let back = this.b_to_a.poll_copy(cx, &mut *this.b, &mut *this.a)?;
        if forth.is_ready() && back.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// One direction: the bytes read and not yet written, if any.
#[derive(Debug, Default)]
struct Direction {
    buffer: Option<BytesMut>,
    read_done: bool,
    finished: bool,
}

impl Direction {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some(buffer) = &mut self.buffer
                && !buffer.is_empty()
            {
                let written = ready!(Pin::new(&mut *writer).poll_write(cx, buffer))?;
                if written == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                bytes::Buf::advance(buffer, written);
                continue;
            }
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.finished = true;
                return Poll::Ready(Ok(()));
            }
            // The buffer just written out, or a spare one: a buffer is kept while bytes flow.
            let mut buffer = self.buffer.take().unwrap_or_else(crate::spare::take);
            buffer.clear();
            buffer.reserve(crate::spare::READ_CHUNK);
            match tokio_util::io::poll_read_buf(Pin::new(&mut *reader), cx, &mut buffer) {
                Poll::Pending => {
                    // Nothing waiting: wait without a buffer, once what was written is sent on.
                    crate::spare::give_back(buffer);
                    ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                    return Poll::Pending;
                }
                Poll::Ready(Err(error)) => {
                    crate::spare::give_back(buffer);
                    return Poll::Ready(Err(error));
                }
                Poll::Ready(Ok(0)) => {
                    crate::spare::give_back(buffer);
                    self.read_done = true;
                }
                Poll::Ready(Ok(_)) => self.buffer = Some(buffer),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    /// Polls `relay` once, as its task would be when woken.
    async fn step<A, B>(relay: &mut Relay<'_, A, B>) -> Poll<io::Result<()>>
    where
        A: AsyncRead + AsyncWrite + Unpin + ?Sized,
        B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        poll_fn(|cx| Poll::Ready(Pin::new(&mut *relay).poll(cx))).await
    }

    #[tokio::test]
    async fn bytes_go_both_ways_and_an_idle_relay_holds_no_buffer() {
        // A backend side whose pipe holds 64 bytes, to see a relay wait on a slow reader.
        let (mut client, mut client_side) = duplex(1 << 20);
        let (mut backend_side, mut backend) = duplex(64);
        let mut relay = relay(&mut client_side, &mut backend_side);

        client.write_all(b"hello").await.expect("write");
        assert!(step(&mut relay).await.is_pending());
        assert_eq!(relay.buffers_held(), 0, "idle after passing 5 bytes on");
        let mut hello = [0u8; 5];
        backend.read_exact(&mut hello).await.expect("read");
        assert_eq!(&hello, b"hello");

        // More than the backend's pipe takes: the rest waits in a buffer until it reads.
        let large = vec![7u8; 1000];
        client.write_all(&large).await.expect("write");
        assert!(step(&mut relay).await.is_pending());
        assert_eq!(relay.buffers_held(), 1, "bytes not yet written are held");
        let mut received = Vec::new();
        while received.len() < large.len() {
            let mut chunk = [0u8; 64];
            let n = backend.read(&mut chunk).await.expect("read");
            received.extend_from_slice(&chunk[..n]);
            assert!(step(&mut relay).await.is_pending());
        }
        assert_eq!(received, large);
        assert_eq!(relay.buffers_held(), 0);

        // Each side's end is passed on; the relay ends when both have.
        client.shutdown().await.expect("shutdown");
        assert!(step(&mut relay).await.is_pending());
        assert_eq!(backend.read(&mut [0u8; 8]).await.expect("read"), 0, "EOF");
        backend.write_all(b"bye").await.expect("write");
        backend.shutdown().await.expect("shutdown");
        assert!(matches!(step(&mut relay).await, Poll::Ready(Ok(()))));
        let mut bye = Vec::new();
        client.read_to_end(&mut bye).await.expect("read");
        assert_eq!(bye, b"bye");
    }
}
