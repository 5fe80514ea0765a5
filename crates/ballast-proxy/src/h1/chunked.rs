//! Finding where a chunked body ends (RFC 9112 §7.1) without decoding it: the HTTP/1.1 fast path
//! forwards chunked bodies byte for byte and only needs to know when the last chunk and its
//! trailers have gone by.

/// Where the scanner is in a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: this many bytes of data and its CRLF remain.
    Data(u64),
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    /// The body is complete.
    Done,
}

/// A malformed chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub(crate) struct ChunkError;

/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;

impl Chunked {
    /// Scans as much of `bytes` as forms whole steps; returns how many bytes were consumed.
    /// Call again with more bytes after the consumed ones until the state is `Done`.
    pub(crate) fn scan(&mut self, bytes: &[u8]) -> Result<usize, ChunkError> {
        let mut at = 0;
        loop {
            let rest = &bytes[at..];
            match *self {
                Self::Done => return Ok(at),
                Self::Data(remaining) => {
                    if rest.is_empty() {
                        return Ok(at);
                    }
                    let take = remaining.min(rest.len() as u64);
                    at += take as usize;
                    *self = if take == remaining {
                        Self::Size
                    } else {
                        Self::Data(remaining - take)
                    };
                }
                Self::Size | Self::Trailers => {
                    let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
                        if rest.len() > MAX_LINE {
                            return Err(ChunkError);
                        }
                        return Ok(at);
                    };
                    let line = &rest[..end];
                    at += end + 2;
                    *self = match *self {
                        Self::Size => match chunk_size(line)? {
                            0 => Self::Trailers,
                            size => Self::Data(size.checked_add(2).ok_or(ChunkError)?),
                        },
                        _ if line.is_empty() => Self::Done,
                        _ => Self::Trailers,
                    };
                }
            }
        }
    }
}

fn chunk_size(line: &[u8]) -> Result<u64, ChunkError> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or(b"")
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(ChunkError);
    }
    digits.iter().try_fold(0u64, |size, &digit| {
        let value = (digit as char).to_digit(16).ok_or(ChunkError)?;
        Ok(size * 16 + u64::from(value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(body: &[u8], step: usize) -> Result<(usize, Chunked), ChunkError> {
        let mut state = Chunked::Size;
        let mut consumed = 0;
        let mut available = 0;
        while state != Chunked::Done && available < body.len() {
            available = (available + step).min(body.len());
            consumed += state.scan(&body[consumed..available])?;
        }
        Ok((consumed, state))
    }

    #[test]
    fn finds_the_end_whatever_the_read_sizes() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 64, 1000] {
            let (consumed, state) = scan_all(body, step).expect("valid");
            assert_eq!(state, Chunked::Done, "step {step}");
            assert_eq!(&body[consumed..], b"NEXT", "step {step}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_or_overrun(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), step in 1usize..64) {
            // Whatever a peer sends, the scanner consumes only what it was given, or says no.
            let mut state = Chunked::Size;
            let mut consumed = 0;
            let mut available = 0;
            while state != Chunked::Done && available < bytes.len() {
                available = (available + step).min(bytes.len());
                match state.scan(&bytes[consumed..available]) {
                    Ok(n) => {
                        consumed += n;
                        proptest::prop_assert!(consumed <= available);
                    }
                    Err(ChunkError) => break,
                }
            }
        }
    }

    #[test]
    fn rejects_bad_sizes_and_endless_lines() {
        assert_eq!(Chunked::Size.scan(b"xyz\r\n"), Err(ChunkError));
        assert_eq!(Chunked::Size.scan(b"\r\n"), Err(ChunkError));
        assert_eq!(Chunked::Size.scan(b"ffffffffffffffff\r\n"), Err(ChunkError));
        assert_eq!(Chunked::Size.scan(&[b'1'; 5000]), Err(ChunkError));
        let mut state = Chunked::Size;
        assert_eq!(state.scan(b"0\r\n\r\n"), Ok(5));
        assert_eq!(state, Chunked::Done);
    }
}
