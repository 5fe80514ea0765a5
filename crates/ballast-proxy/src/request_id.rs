//! Request IDs: one name for a request in the LB's access log, the backend's logs and, if the
//! operator wants, the client's bug report. A client's (or an LB's in front) `X-Request-Id` is
//! kept when it is a plausible ID, so a request keeps one name across hops; otherwise the LB
//! makes one, 128 random bits as 32 hex digits (nginx's `$request_id`).

/// The header that carries it, to backends and (with `request_id_header`) back to clients.
pub(crate) const HEADER: &str = "x-request-id";

/// The longest ID taken from a client: longer ones are not IDs but payloads.
const MAX_LEN: usize = 128;

/// Whether a client's `X-Request-Id` is kept: 1 to 128 characters, letters, digits and
/// `-_.:@/+=` (what UUIDs, ULIDs, base64 and trace IDs are written in), so that it cannot break
/// a log line or a header.
pub(crate) fn is_valid(value: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&value.len())
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-_.:@/+=".contains(&b))
}

/// An ID the LB made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestId([u8; 32]);

impl RequestId {
    /// A new random ID (from the thread's own generator: no lock, no system call).
    pub(crate) fn new() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bits = fastrand::u128(..);
        let mut digits = [0u8; 32];
        for (i, digit) in digits.iter_mut().enumerate() {
            *digit = HEX[((bits >> (4 * (31 - i))) & 0xf) as usize];
        }
        Self(digits)
    }

    pub(crate) fn as_str(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A request's ID: the one it came with, or one the LB made. Borrowed or on the stack: the
/// request path makes one per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Id<'a> {
    Kept(&'a str),
    Made(RequestId),
}

impl Id<'_> {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Kept(sent) => sent,
            Self::Made(made) => made.as_str(),
        }
    }
}

/// The ID of a request whose `X-Request-Id` (if any) was `sent`: the client's when valid, else
/// a new one.
pub(crate) fn of_request(sent: Option<&[u8]>) -> Id<'_> {
    // A valid ID is ASCII, so UTF-8.
    match sent
        .filter(|value| is_valid(value))
        .map(std::str::from_utf8)
    {
        Some(Ok(kept)) => Id::Kept(kept),
        _ => Id::Made(RequestId::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plausible_ids_are_kept_and_the_rest_replaced() {
        for kept in [
            &b"f81d4fae-7dec-11d0-a765-00a0c91e6bf6"[..],
            b"01ARZ3NDEKTSV4RRFFQ69G5FAV",
            b"aGVsbG8=",
            b"trace:span/1@edge",
        ] {
            assert!(is_valid(kept), "{kept:?}");
            assert_eq!(of_request(Some(kept)).as_str().as_bytes(), kept);
        }
        for replaced in [
            &b""[..],
            b"has space",
            b"quote\"",
            b"new\nline",
            &[b'a'; 129],
        ] {
            assert!(!is_valid(replaced), "{replaced:?}");
            let id = of_request(Some(replaced));
            let id = id.as_str();
            assert!(
                id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "{id}"
            );
        }
    }

    #[test]
    fn made_ids_are_32_hex_digits_and_differ() {
        let (a, b) = (RequestId::new(), RequestId::new());
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
