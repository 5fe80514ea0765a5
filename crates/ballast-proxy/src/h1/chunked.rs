//! Chunked bodies (RFC 9112 §7.1), validated and re-encoded: the fast path never forwards a
//! chunk-size line, an extension or a trailer as it came, because a line that one parser ends at a
//! bare LF and another at CR LF is how a second request is smuggled inside the first one's body.
//! What goes on is our own encoding of what we understood: each chunk's size in hex and CR LF,
//! its data, CR LF; the last chunk, the trailer fields that parse as fields, and the empty line.
//! Chunk extensions are checked against the grammar and dropped, as nginx does (nothing uses
//! them, and a backend cannot misread what it is not sent).

use bytes::{BufMut, BytesMut};

/// Where the relay is in a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: this many bytes of data remain.
    Data(u64),
    /// After a chunk's data: expecting exactly CR LF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    /// The body is complete.
    Done,
}

/// A chunked body on its way through: feed it bytes, take the re-encoded bytes out.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedRelay {
    state: State,
    trailer_bytes: usize,
}

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChunkError {
    /// A chunk-size line that is not 1*HEXDIG followed by well-formed extensions.
    #[error("malformed chunk-size line")]
    Size,
    /// A chunk's data not followed by CR LF.
    #[error("chunk data not followed by CRLF")]
    DataEnd,
    /// A line ended by a bare LF, or a CR not followed by LF.
    #[error("chunked body line not ended by CRLF")]
    LineEnd,
    /// A trailer line that is not a field line.
    #[error("malformed trailer field")]
    Trailer,
    /// A chunk-size or trailer line, or the trailers together, past their limits.
    #[error("chunk line or trailers too long")]
    TooLong,
}

/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Most trailer bytes accepted in all.
const MAX_TRAILERS: usize = 16 * 1024;
/// Chunk sizes of more hex digits than this could overflow (15 digits: < 2^60 bytes).
const MAX_SIZE_DIGITS: usize = 15;

impl Default for ChunkedRelay {
    fn default() -> Self {
        Self {
            state: State::Size,
            trailer_bytes: 0,
        }
    }
}

impl ChunkedRelay {
    /// Whether the last chunk and the trailers have gone by.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes as much of `input` as forms whole steps, appending the re-encoded body to
    /// `output`; returns how many bytes of `input` were consumed. Call again with more bytes
    /// after the consumed ones until [`is_done`](Self::is_done). Bytes after the body's end are
    /// never consumed: they belong to the next message.
    pub(crate) fn relay(
        &mut self,
        input: &[u8],
        output: &mut BytesMut,
    ) -> Result<usize, ChunkError> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match self.state {
                State::Done => return Ok(at),
                State::Data(remaining) => {
                    if rest.is_empty() {
                        return Ok(at);
                    }
                    let take = remaining.min(rest.len() as u64) as usize;
                    output.put_slice(&rest[..take]);
                    at += take;
                    self.state = match remaining - take as u64 {
                        0 => State::DataEnd,
                        left => State::Data(left),
                    };
                }
                State::DataEnd => {
                    if rest.len() < 2 {
                        // A lone byte that cannot begin CR LF is refused now, not later.
                        if rest.first().is_some_and(|&b| b != b'\r') {
                            return Err(ChunkError::DataEnd);
                        }
                        return Ok(at);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(ChunkError::DataEnd);
                    }
                    output.put_slice(b"\r\n");
                    at += 2;
                    self.state = State::Size;
                }
                State::Size | State::Trailers => {
                    let Some(line) = whole_line(rest)? else {
                        return Ok(at);
                    };
                    at += line.len() + 2;
                    if self.state == State::Size {
                        let size = chunk_size(line)?;
                        put_hex(output, size);
                        output.put_slice(b"\r\n");
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::Data(size)
                        };
                    } else if line.is_empty() {
                        output.put_slice(b"\r\n");
                        self.state = State::Done;
                    } else {
                        self.trailer_bytes += line.len() + 2;
                        if self.trailer_bytes > MAX_TRAILERS {
                            return Err(ChunkError::TooLong);
                        }
                        if !is_field_line(line) {
                            return Err(ChunkError::Trailer);
                        }
                        if !is_framing_field(line) {
                            output.put_slice(line);
                            output.put_slice(b"\r\n");
                        }
                    }
                }
            }
        }
    }
}

/// The line at the start of `bytes` without its CR LF, once it is whole; a bare LF or a CR not
/// followed by LF is an error wherever it is.
fn whole_line(bytes: &[u8]) -> Result<Option<&[u8]>, ChunkError> {
    let window = &bytes[..bytes.len().min(MAX_LINE + 2)];
    for (i, &byte) in window.iter().enumerate() {
        match byte {
            b'\n' => return Err(ChunkError::LineEnd),
            b'\r' => {
                return match window.get(i + 1) {
                    Some(b'\n') => Ok(Some(&bytes[..i])),
                    Some(_) => Err(ChunkError::LineEnd),
                    None => Ok(None),
                };
            }
            _ => {}
        }
    }
    if window.len() > MAX_LINE {
        return Err(ChunkError::TooLong);
    }
    Ok(None)
}

/// `chunk-size [ chunk-ext ]` (RFC 9112 §7.1, §7.1.1):
/// `1*HEXDIG *( BWS ";" BWS ext-name [ BWS "=" BWS ( token / quoted-string ) ] )`.
fn chunk_size(line: &[u8]) -> Result<u64, ChunkError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > MAX_SIZE_DIGITS {
        return Err(ChunkError::Size);
    }
    let size = line[..digits].iter().fold(0u64, |size, &digit| {
        let value = (digit as char).to_digit(16).unwrap_or(0);
        size * 16 + u64::from(value)
    });
    let mut rest = &line[digits..];
    loop {
        // Whitespace is allowed before a `;` only: never at the end of the line.
        let Some((&b';', after)) = skip_whitespace(rest).split_first() else {
            return if rest.is_empty() {
                Ok(size)
            } else {
                Err(ChunkError::Size)
            };
        };
        rest = skip_token(skip_whitespace(after)).ok_or(ChunkError::Size)?;
        let after_name = skip_whitespace(rest);
        if let Some((&b'=', value)) = after_name.split_first() {
            let value = skip_whitespace(value);
            rest = match value.first() {
                Some(b'"') => skip_quoted_string(value).ok_or(ChunkError::Size)?,
                _ => skip_token(value).ok_or(ChunkError::Size)?,
            };
        }
    }
}

fn skip_whitespace(bytes: &[u8]) -> &[u8] {
    let spaces = bytes
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    &bytes[spaces..]
}

/// RFC 9110 §5.6.2 `tchar`.
pub(crate) fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// What follows a non-empty token at the start of `bytes`.
fn skip_token(bytes: &[u8]) -> Option<&[u8]> {
    let length = bytes.iter().take_while(|&&b| is_tchar(b)).count();
    (length > 0).then(|| &bytes[length..])
}

/// What follows a quoted-string at the start of `bytes` (RFC 9110 §5.6.4).
fn skip_quoted_string(bytes: &[u8]) -> Option<&[u8]> {
    let mut i = 1;
    loop {
        match *bytes.get(i)? {
            b'"' => return Some(&bytes[i + 1..]),
            b'\\' => {
                let escaped = *bytes.get(i + 1)?;
                if !is_field_byte(escaped) {
                    return None;
                }
                i += 2;
            }
            byte if is_field_byte(byte) => i += 1,
            _ => return None,
        }
    }
}

/// HTAB, SP, VCHAR or obs-text: what a field value may hold.
fn is_field_byte(byte: u8) -> bool {
    byte == b'\t' || byte == b' ' || (0x21..=0x7e).contains(&byte) || byte >= 0x80
}

/// `field-name ":" OWS field-value OWS` (RFC 9112 §5), without obs-fold.
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    !name.is_empty() && name.iter().all(|&b| is_tchar(b)) && value.iter().all(|&b| is_field_byte(b))
}

/// Trailer fields that would change how the message is framed or routed (RFC 9110 §6.5.1):
/// dropped rather than forwarded.
fn is_framing_field(line: &[u8]) -> bool {
    let name = line.split(|&b| b == b':').next().unwrap_or(b"");
    [
        &b"content-length"[..],
        b"transfer-encoding",
        b"host",
        b"connection",
        b"trailer",
    ]
    .iter()
    .any(|framing| name.eq_ignore_ascii_case(framing))
}

fn put_hex(output: &mut BytesMut, value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buffer = [0u8; 16];
    let mut at = buffer.len();
    let mut value = value;
    loop {
        at -= 1;
        buffer[at] = DIGITS[(value % 16) as usize];
        value /= 16;
        if value == 0 {
            break;
        }
    }
    output.put_slice(&buffer[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relays `body` fed `step` bytes at a time; the re-encoded output and what was left over.
    fn relay_all(body: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), ChunkError> {
        let mut relay = ChunkedRelay::default();
        let mut output = BytesMut::new();
        let mut consumed = 0;
        let mut available = 0;
        while !relay.is_done() && available < body.len() {
            available = (available + step).min(body.len());
            consumed += relay.relay(&body[consumed..available], &mut output)?;
        }
        assert!(relay.is_done(), "incomplete: {:?}", relay.state);
        Ok((output.to_vec(), body[consumed..].to_vec()))
    }

    #[test]
    fn re_encodes_whatever_the_read_sizes() {
        let body = b"5\r\nhello\r\n01A;ext=1 ; q=\"a \\\" b\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 64, 1000] {
            let (output, left) = relay_all(body, step).expect("valid");
            assert_eq!(
                output,
                b"5\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n",
                "step {step}"
            );
            assert_eq!(left, b"NEXT", "step {step}");
        }
    }

    /// The smuggling vectors: a bare LF in an extension, data not followed by CR LF,
    /// sizes with spaces or form feeds.
    #[test]
    fn refuses_what_another_parser_could_read_differently() {
        for (body, error) in [
            (
                &b"0;\n\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"[..],
                ChunkError::LineEnd,
            ),
            (b"5\r\nhello\n0 42\r\n\r\n", ChunkError::DataEnd),
            (b"5\r\nhelloXY0\r\n\r\n", ChunkError::DataEnd),
            (b"0 42\r\n\r\n", ChunkError::Size),
            (b"5 \r\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (b"\x0c5\r\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (b"5\x0c\r\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (b"+5\r\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (b"0x5\r\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (b"5;\r\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (
                b"5;a=\"unterminated\r\nhello\r\n0\r\n\r\n",
                ChunkError::Size,
            ),
            (b"5;a=b c\r\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (b"5\rX\nhello\r\n0\r\n\r\n", ChunkError::LineEnd),
            (b"0\r\nx-trailer: 1\n\r\n", ChunkError::LineEnd),
            (b"0\r\nnot a field\r\n\r\n", ChunkError::Trailer),
            (b"0\r\n folded: x\r\n\r\n", ChunkError::Trailer),
            (b"ffffffffffffffff\r\n", ChunkError::Size),
            (b"\r\n", ChunkError::Size),
        ] {
            let mut relay = ChunkedRelay::default();
            let mut output = BytesMut::new();
            assert_eq!(
                relay.relay(body, &mut output),
                Err(error),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let mut relay = ChunkedRelay::default();
        assert_eq!(
            relay.relay(&[b'1'; 5000], &mut BytesMut::new()),
            Err(ChunkError::TooLong)
        );
        let mut relay = ChunkedRelay::default();
        assert_eq!(
            relay.relay(&[b'a'; 5000], &mut BytesMut::new()),
            Err(ChunkError::TooLong)
        );
    }

    #[test]
    fn framing_trailers_are_dropped() {
        let (output, _) =
            relay_all(b"0\r\nContent-Length: 5\r\nx-kept: y\r\n\r\n", 100).expect("valid");
        assert_eq!(output, b"0\r\nx-kept: y\r\n\r\n");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_or_overrun(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), step in 1usize..64) {
            // Whatever a peer sends, the relay consumes only what it was given, or says no.
            let mut relay = ChunkedRelay::default();
            let mut output = BytesMut::new();
            let mut consumed = 0;
            let mut available = 0;
            while !relay.is_done() && available < bytes.len() {
                available = (available + step).min(bytes.len());
                match relay.relay(&bytes[consumed..available], &mut output) {
                    Ok(n) => {
                        consumed += n;
                        proptest::prop_assert!(consumed <= available);
                    }
                    Err(_) => break,
                }
            }
        }

        #[test]
        fn what_it_writes_it_reads_back_the_same(chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 1..40), 0..8)) {
            // Its own encoding is valid input, and re-encoding it changes nothing.
            let mut body = Vec::new();
            for chunk in &chunks {
                body.extend_from_slice(format!("{:X};e=1\r\n", chunk.len()).as_bytes());
                body.extend_from_slice(chunk);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n\r\n");
            let (once, _) = relay_all(&body, 7).expect("valid");
            let (twice, _) = relay_all(&once, 3).expect("its own output is valid");
            proptest::prop_assert_eq!(&once, &twice);
            let mut expected = Vec::new();
            for chunk in &chunks {
                expected.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                expected.extend_from_slice(chunk);
                expected.extend_from_slice(b"\r\n");
            }
            expected.extend_from_slice(b"0\r\n\r\n");
            proptest::prop_assert_eq!(once, expected);
        }
    }
}
