//! The DNS server's sockets: UDP and TCP on one address. Port 0 asks for any port, and the one
//! the OS gives the UDP socket may be taken for TCP; so port 0 tries again with another until a
//! number is free for both, rather than failing at random on a busy machine.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, UdpSocket};

/// How many ports port 0 tries before giving up.
const TRIES: usize = 64;

/// UDP and TCP sockets bound to `listen`, on the same port.
pub async fn bind(listen: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let context = |protocol: &str, address: SocketAddr, error: io::Error| {
        io::Error::new(
            error.kind(),
            format!("cannot listen on {address} ({protocol}): {error}"),
        )
    };
    for _ in 0..TRIES {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|e| context("UDP", listen, e))?;
        let address = udp.local_addr()?;
        match TcpListener::bind(address).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error) if listen.port() == 0 && error.kind() == io::ErrorKind::AddrInUse => {}
            Err(error) => return Err(context("TCP", address, error)),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("cannot listen on {listen}: no port free for both UDP and TCP in {TRIES} tries"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn port_zero_finds_one_free_for_both() {
        // Hold TCP ports so that some numbers the OS offers for UDP are taken for TCP.
        let mut held = Vec::new();
        for _ in 0..64 {
            held.push(TcpListener::bind("127.0.0.1:0").await.expect("tcp"));
        }
        for _ in 0..32 {
            let (udp, tcp) = bind("127.0.0.1:0".parse().expect("address"))
                .await
                .expect("bound");
            assert_eq!(
                udp.local_addr().expect("udp").port(),
                tcp.local_addr().expect("tcp").port()
            );
        }
        let taken = held[0].local_addr().expect("tcp");
        let error = bind(taken).await.expect_err("a fixed port that is taken");
        assert!(error.to_string().contains("(TCP)"), "{error}");
    }
}
