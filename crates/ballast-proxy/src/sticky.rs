//! Sticky sessions by cookie, as HAProxy's `cookie … insert` and Envoy's cookie-based stateful
//! sessions keep them: an application that holds a session in one backend's memory needs the
//! client's next requests there, whatever the algorithm would choose.
//!
//! The LB answers a client that came without the pool's cookie (or with one naming a backend
//! that no longer takes traffic) with `Set-Cookie: NAME=TOKEN`, TOKEN naming the backend that
//! served it. A request carrying a token goes to that backend while it takes traffic and is
//! under its cap; otherwise the pool's algorithm chooses and the cookie is rewritten, so a drained
//! or failed backend sheds its clients at their next request.
//!
//! A token is a hash of the backend's address, the same on every LB of a fleet (a client may
//! reach any of them through DNS) and across restarts, and it says nothing readable about the
//! backend: clients see 16 hex digits, never an address.

use std::net::SocketAddr;

use ballast_balance::hash_key;
use http::HeaderValue;

/// The seed that keeps tokens from being plain address hashes shared with other programs.
const TOKEN_SEED: &[u8] = b"ballast sticky v1 ";

/// The token of the backend at `address`.
pub(crate) fn token(address: SocketAddr) -> u64 {
    let mut text = Vec::with_capacity(TOKEN_SEED.len() + 48);
    text.extend_from_slice(TOKEN_SEED);
    text.extend_from_slice(address.to_string().as_bytes());
    hash_key(&text)
}

/// The token in a cookie's value, if it is one (16 lower- or upper-case hex digits).
pub(crate) fn parse(value: &[u8]) -> Option<u64> {
    if value.len() != 16 || !value.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    u64::from_str_radix(text, 16).ok()
}

/// The `Set-Cookie` value that names the backend of `token` to the client. `secure`: the client
/// came over TLS, and the cookie is not to be sent over clear text.
pub(crate) fn set_cookie(name: &str, token: u64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::try_from(format!("{name}={token:016x}; Path=/; HttpOnly{secure}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stable_distinct_and_read_back() {
        let a: SocketAddr = "10.0.0.1:8080".parse().expect("address");
        let b: SocketAddr = "10.0.0.2:8080".parse().expect("address");
        assert_eq!(token(a), token(a));
        assert_ne!(token(a), token(b));
        let cookie = set_cookie("srv", token(a), false).expect("header");
        let text = cookie.to_str().expect("ascii");
        assert!(text.starts_with("srv=") && text.ends_with("; Path=/; HttpOnly"));
        assert!(!text.contains("10.0.0.1"), "{text}");
        let value = &text["srv=".len().."srv=".len() + 16];
        assert_eq!(parse(value.as_bytes()), Some(token(a)));
        assert_eq!(parse(value.to_ascii_uppercase().as_bytes()), Some(token(a)));
        assert!(
            set_cookie("srv", 1, true)
                .expect("header")
                .to_str()
                .expect("ascii")
                .ends_with("; Secure")
        );
    }

    #[test]
    fn anything_else_is_no_token() {
        for value in [
            "",
            "abc",
            "0123456789abcdeg",
            "0123456789abcdef0",
            "+123456789abcdef",
        ] {
            assert_eq!(parse(value.as_bytes()), None, "{value}");
        }
    }
}
