//! What a request's affinity key is made of, for the hash-based algorithms: the client's
//! address, a header, a cookie or the path ([`HashKeySpec`] in the request path's terms). A request without the header or cookie falls back to
//! the client's address, so it still lands somewhere stable.

use std::net::IpAddr;

use ballast_balance::hash_key;
use ballast_config::HashKeySpec;
use http::HeaderName;
use http::request::Parts;

use crate::state::PoolSnapshot;

/// The source of a request's hash key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HashKey {
    /// The client's IP address (also the key of every TCP connection).
    ClientIp,
    /// A request header's value, e.g. `header:x-user-id`.
    Header(HeaderName),
    /// A cookie's value, e.g. `cookie:session`.
    Cookie(String),
    /// The request path (without the query).
    Path,
}

impl From<&HashKeySpec> for HashKey {
    fn from(spec: &HashKeySpec) -> Self {
        match spec {
            HashKeySpec::ClientIp => Self::ClientIp,
            // A token is always a valid header name; were it not, the client's address is
            // still a stable key.
            HashKeySpec::Header(name) => {
                HeaderName::from_bytes(name.as_bytes()).map_or(Self::ClientIp, Self::Header)
            }
            HashKeySpec::Cookie(name) => Self::Cookie(name.clone()),
            HashKeySpec::Path => Self::Path,
        }
    }
}

impl HashKey {
    /// The 64-bit key of a request from `client`.
    pub(crate) fn of_request(&self, request: &Parts, client: IpAddr) -> u64 {
        let bytes = match self {
            Self::ClientIp => None,
            Self::Header(name) => request.headers.get(name).map(|v| v.as_bytes()),
            Self::Cookie(name) => cookie(request, name),
            Self::Path => Some(request.uri.path().as_bytes()),
        };
        match bytes {
            Some(bytes) => hash_key(bytes),
            None => Self::of_client(client),
        }
    }

    /// The key of a request parsed in place: `path` is the request target, `headers` its
    /// header lines as parsed.
    pub(crate) fn of_raw(
        &self,
        path: &str,
        headers: &[httparse::Header<'_>],
        client: IpAddr,
    ) -> u64 {
        let bytes = match self {
            Self::ClientIp => None,
            Self::Header(name) => headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name.as_str()))
                .map(|h| h.value),
            Self::Cookie(name) => raw_cookie(headers, name),
            Self::Path => Some(path.split('?').next().unwrap_or(path).as_bytes()),
        };
        match bytes {
            Some(bytes) => hash_key(bytes),
            None => Self::of_client(client),
        }
    }

    /// The key of a request seen through `header` (a lookup by lower-case name), with `path`
    /// its target, for a check made where neither form of the headers is at hand.
    pub(crate) fn of_lookup<'h>(
        &self,
        path: &str,
        header: impl Fn(&str) -> Option<&'h [u8]>,
        client: IpAddr,
    ) -> u64 {
        let bytes = match self {
            Self::ClientIp => None,
            Self::Header(name) => header(name.as_str()),
            Self::Cookie(name) => header("cookie")
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| cookie_value(v, name))
                .map(str::as_bytes),
            Self::Path => Some(path.split('?').next().unwrap_or(path).as_bytes()),
        };
        match bytes {
            Some(bytes) => hash_key(bytes),
            None => Self::of_client(client),
        }
    }

    /// The key of a client address.
    pub(crate) fn of_client(client: IpAddr) -> u64 {
        match client {
            IpAddr::V4(v4) => hash_key(&v4.octets()),
            IpAddr::V6(v6) => hash_key(&v6.octets()),
        }
    }
}

/// What steers a request to a backend of its pool: the key the pool's algorithm hashes (0 where
/// it hashes none), and the backend token of the pool's sticky cookie, if the request has one
/// (see [`crate::sticky`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Affinity {
    pub key: u64,
    pub sticky: Option<u64>,
}

impl Affinity {
    /// For a request to `pool` from `client`.
    pub(crate) fn of_request(pool: &PoolSnapshot, request: &Parts, client: IpAddr) -> Self {
        let state = &pool.state;
        Self {
            key: if pool.uses_key {
                state.hash_key.of_request(request, client)
            } else {
                0
            },
            sticky: state
                .sticky_cookie
                .as_deref()
                .and_then(|name| cookie(request, name))
                .and_then(crate::sticky::parse),
        }
    }

    /// For a request to `pool` parsed in place (see [`HashKey::of_raw`]).
    pub(crate) fn of_raw(
        pool: &PoolSnapshot,
        path: &str,
        headers: &[httparse::Header<'_>],
        client: IpAddr,
    ) -> Self {
        let state = &pool.state;
        Self {
            key: if pool.uses_key {
                state.hash_key.of_raw(path, headers, client)
            } else {
                0
            },
            sticky: state
                .sticky_cookie
                .as_deref()
                .and_then(|name| raw_cookie(headers, name))
                .and_then(crate::sticky::parse),
        }
    }
}

fn raw_cookie<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .find_map(|v| cookie_value(v, name))
        .map(str::as_bytes)
}

fn cookie<'a>(request: &'a Parts, name: &str) -> Option<&'a [u8]> {
    request
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| cookie_value(v, name))
        .map(str::as_bytes)
}

/// The value of cookie `name` in one `Cookie` header.
fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(builder: http::request::Builder) -> Parts {
        builder.body(()).expect("request").into_parts().0
    }

    fn key_of(text: &str) -> HashKey {
        HashKey::from(&text.parse::<HashKeySpec>().expect("valid"))
    }

    #[test]
    fn every_source_of_the_grammar_is_built() {
        assert_eq!(key_of("client_ip"), HashKey::ClientIp);
        assert_eq!(key_of("path"), HashKey::Path);
        assert_eq!(key_of("cookie:s"), HashKey::Cookie("s".into()));
        assert_eq!(
            key_of("header:X-User"),
            HashKey::Header(HeaderName::from_static("x-user"))
        );
    }

    #[test]
    fn keys_come_from_the_named_source_or_fall_back_to_the_client() {
        let client: IpAddr = "127.0.0.9".parse().expect("ip");
        let request = parts(
            http::Request::get("/a/b?q=1")
                .header("x-user", "alice")
                .header("cookie", "theme=dark; session=s1"),
        );
        let key = |source: &str| key_of(source).of_request(&request, client);
        assert_eq!(key("header:x-user"), hash_key(b"alice"));
        assert_eq!(key("cookie:session"), hash_key(b"s1"));
        assert_eq!(key("path"), hash_key(b"/a/b"));
        assert_eq!(key("client_ip"), hash_key(&[127, 0, 0, 9]));
        assert_eq!(key("header:x-missing"), hash_key(&[127, 0, 0, 9]));
        assert_eq!(key("cookie:missing"), hash_key(&[127, 0, 0, 9]));

        // The same keys from a request parsed in place.
        let raw =
            b"GET /a/b?q=1 HTTP/1.1\r\nX-User: alice\r\nCookie: theme=dark; session=s1\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut parsed = httparse::Request::new(&mut headers);
        assert!(parsed.parse(raw).expect("valid").is_complete());
        let raw_key = |source: &str| {
            key_of(source).of_raw(parsed.path.expect("path"), parsed.headers, client)
        };
        for source in [
            "header:x-user",
            "cookie:session",
            "path",
            "client_ip",
            "header:x-missing",
        ] {
            assert_eq!(raw_key(source), key(source), "{source}");
        }
    }
}
