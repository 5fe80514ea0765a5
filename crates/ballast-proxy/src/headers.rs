//! Header rewriting between client and backend (RFC 9110 §7.6): hop-by-hop headers stay on their
//! hop, the backend learns who the client was (`X-Forwarded-For`, `X-Forwarded-Proto`), and a
//! request that arrived over HTTP/2 reaches an HTTP/1.1 backend in origin form with a `Host`.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Uri, Version};

/// Headers that describe one connection, never forwarded (besides those `Connection` names).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// What one pass over a header map found: enough to skip every lookup that would find nothing,
/// which is the common case (a per-request cost: hashing each name costs more than comparing it
/// to a short list).
#[derive(Debug, Default, Clone, Copy)]
struct Scan {
    /// Bit i: `HOP_BY_HOP[i]` is present.
    hop_by_hop: u8,
    upgrade: bool,
    host: bool,
    expect: bool,
}

fn scan(headers: &HeaderMap) -> Scan {
    let mut found = Scan::default();
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            found.hop_by_hop |= 1 << i;
        } else if name == header::UPGRADE {
            found.upgrade = true;
        } else if name == header::HOST {
            found.host = true;
        } else if name == header::EXPECT {
            found.expect = true;
        }
    }
    found
}

/// Whether the client takes trailers (`TE: trailers`): gRPC's clients say so, and an HTTP/2
/// backend should hear it again (the one TE value HTTP/2 allows, RFC 9113 §8.2.2).
pub(crate) fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| coding.trim().eq_ignore_ascii_case("trailers"))
}

/// A request [`to_backend`] made ready for HTTP/1.1, as an HTTP/2 backend takes it: the host as
/// `:authority` in place of a `Host` line, and `te: trailers` where the client accepts them.
pub(crate) fn for_http2(parts: &mut Parts, scheme: http::uri::Scheme, trailers: bool) {
    let authority = parts
        .headers
        .get(header::HOST)
        .and_then(|host| http::uri::Authority::try_from(host.as_bytes()).ok());
    if let Some(authority) = authority {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(scheme);
        uri.authority = Some(authority);
        uri.path_and_query = parts.uri.path_and_query().cloned();
        if let Ok(absolute) = Uri::from_parts(uri) {
            parts.uri = absolute;
            parts.headers.remove(header::HOST);
            parts.version = Version::HTTP_2;
        }
    }
    if trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether a message is gRPC's (`application/grpc`, `application/grpc+proto`, …).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The trailers that end a gRPC response with UNAVAILABLE (code 14), which clients may retry.
pub(crate) fn grpc_unavailable(message: &'static str) -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(2);
    trailers.insert("grpc-status", HeaderValue::from_static("14"));
    trailers.insert("grpc-message", HeaderValue::from_static(message));
    trailers
}

/// Whether a request asks to switch protocols (WebSocket and the like).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers; keeps `Upgrade` (and says so in `Connection`) for an upgrade.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    strip(headers, scan(headers), upgrade);
}

fn strip(headers: &mut HeaderMap, found: Scan, upgrade: bool) {
    if found.hop_by_hop & 1 != 0 {
        // Headers named in `Connection` are hop-by-hop too; the standard ones are handled below.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|token| {
                !["keep-alive", "close", "upgrade"]
                    .iter()
                    .any(|known| token.eq_ignore_ascii_case(known))
            })
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if found.hop_by_hop & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if found.upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// Takes back the upgrade [`to_backend`] kept: the backend chose HTTP/2, where a request has no
/// `Connection` or `Upgrade` (RFC 9113 §8.2.2) and cannot switch protocols.
pub(crate) fn without_upgrade(headers: &mut HeaderMap) {
    headers.remove(header::CONNECTION);
    headers.remove(header::UPGRADE);
}

/// A request whose host cannot be told (RFC 9112 §3.2): answered 400 on every path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadHost {
    /// HTTP/1.1 or HTTP/2 without a `Host` (or `:authority`).
    #[error("no Host")]
    Missing,
    /// More than one `Host` line.
    #[error("more than one Host")]
    Repeated,
    /// A `Host` or authority that is not a host and optional port.
    #[error("malformed Host")]
    Malformed,
    /// An absolute URI with user information (`http://user@host/`).
    #[error("user information in the request target")]
    UserInfo,
}

/// The one rule, for the HTTP/1.1 fast path and the hyper path alike, for which host a request
/// is for and what `Host` the backend gets: the request target's authority when it has one
/// (absolute form; HTTP/2's `:authority`), which then overrides the `Host` line (RFC 9112
/// §3.2.2); otherwise the single `Host` line. `host_lines` is how many `Host` lines there were,
/// `host` the first; `required` is false only for HTTP/1.0.
pub(crate) fn backend_host<'a>(
    required: bool,
    host: Option<&'a [u8]>,
    host_lines: usize,
    authority: Option<&'a [u8]>,
) -> Result<Option<&'a [u8]>, BadHost> {
    if host_lines > 1 {
        return Err(BadHost::Repeated);
    }
    if let Some(host) = host
        && !is_authority(host)
    {
        return Err(BadHost::Malformed);
    }
    match authority {
        Some(authority) if authority.contains(&b'@') => Err(BadHost::UserInfo),
        Some(authority) if authority.is_empty() || !is_authority(authority) => {
            Err(BadHost::Malformed)
        }
        Some(authority) => Ok(Some(authority)),
        None if host.is_none() && required => Err(BadHost::Missing),
        None => Ok(host),
    }
}

/// `host [ ":" port ]` in the characters RFC 3986 allows a reg-name, an IPv4 address or an IP
/// literal (no userinfo, no percent-decoding needed to decide).
fn is_authority(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b))
}

/// The client's address as a header value, made once per connection.
pub(crate) fn client_value(client: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&client.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Whether a request expects `100 Continue` before it sends its body (RFC 9110 §10.1.1).
pub(crate) fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Turns a client's request head into the head the backend gets; `client` comes from
/// [`client_value`]. A `100-continue` expectation is the LB's to meet (it answers 100 itself,
/// on every path), so the backend does not see it.
pub(crate) fn to_backend(
    parts: &mut Parts,
    client: &HeaderValue,
    scheme: &'static str,
    upgrade: bool,
) {
    let found = scan(&parts.headers);
    strip(&mut parts.headers, found, upgrade);
    if found.expect && expects_continue(&parts.headers) {
        parts.headers.remove(header::EXPECT);
    }
    if let Some(authority) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        // The target's authority is the host (RFC 9112 §3.2.2), whatever a `Host` line said.
        parts.headers.insert(header::HOST, host);
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let origin = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .parse::<Uri>()
            .unwrap_or_else(|_| Uri::from_static("/"));
        parts.uri = origin;
    }
    parts.version = Version::HTTP_11;

    let forwarded_for = match parts.headers.get(X_FORWARDED_FOR) {
        Some(earlier) => {
            let mut joined = Vec::with_capacity(earlier.len() + 2 + client.len());
            joined.extend_from_slice(earlier.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client.clone())
        }
        None => client.clone(),
    };
    parts.headers.insert(X_FORWARDED_FOR, forwarded_for);
    parts
        .headers
        .insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(builder: http::request::Builder) -> Parts {
        builder.body(()).expect("request").into_parts().0
    }

    #[test]
    fn strips_hop_by_hop_and_sets_forwarding_headers() {
        let mut parts = head(
            http::Request::get("/path?q=1")
                .header("host", "example.test")
                .header("connection", "keep-alive, x-secret")
                .header("keep-alive", "timeout=5")
                .header("x-secret", "hop")
                .header("te", "trailers")
                .header("upgrade", "h2c")
                .header("x-forwarded-for", "198.51.100.1")
                .header("x-kept", "yes"),
        );
        to_backend(
            &mut parts,
            &client_value("127.0.0.5".parse().expect("ip")),
            "https",
            false,
        );
        let h = &parts.headers;
        for gone in ["connection", "keep-alive", "x-secret", "te", "upgrade"] {
            assert!(!h.contains_key(gone), "{gone} must not be forwarded");
        }
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 127.0.0.5");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h["host"], "example.test");
        assert_eq!(parts.uri, "/path?q=1");
    }

    #[test]
    fn a_continue_expectation_stays_on_the_clients_hop() {
        let client = client_value("127.0.0.1".parse().expect("ip"));
        let mut parts = head(http::Request::post("/up").header("expect", "100-Continue"));
        assert!(expects_continue(&parts.headers));
        to_backend(&mut parts, &client, "http", false);
        assert!(!parts.headers.contains_key("expect"));
        // An expectation the LB does not meet is the backend's to refuse (417).
        let mut parts = head(http::Request::post("/up").header("expect", "something-else"));
        assert!(!expects_continue(&parts.headers));
        to_backend(&mut parts, &client, "http", false);
        assert_eq!(parts.headers["expect"], "something-else");
    }

    #[test]
    fn responses_lose_their_connection_headers_only() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("keep-alive"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("content-length", HeaderValue::from_static("10"));
        headers.insert("server", HeaderValue::from_static("nginx"));
        strip_hop_by_hop(&mut headers, false);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "server"]);

        let mut clean = HeaderMap::new();
        clean.insert("content-type", HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut clean, false);
        assert_eq!(clean.len(), 1);
    }

    #[test]
    fn http2_requests_get_origin_form_and_a_host() {
        let mut parts =
            head(http::Request::get("https://example.test:8443/a?b").version(Version::HTTP_2));
        to_backend(
            &mut parts,
            &client_value("127.0.0.1".parse().expect("ip")),
            "https",
            false,
        );
        assert_eq!(parts.uri, "/a?b");
        assert_eq!(parts.headers["host"], "example.test:8443");
        assert_eq!(parts.version, Version::HTTP_11);
    }

    #[test]
    fn one_host_rule() {
        let host = Some(&b"a.test"[..]);
        assert_eq!(backend_host(true, host, 1, None), Ok(host));
        assert_eq!(backend_host(true, None, 0, None), Err(BadHost::Missing));
        assert_eq!(backend_host(false, None, 0, None), Ok(None), "HTTP/1.0");
        assert_eq!(backend_host(true, host, 2, None), Err(BadHost::Repeated));
        let other = Some(&b"other.test:8080"[..]);
        assert_eq!(
            backend_host(true, host, 1, other),
            Ok(other),
            "the URI wins"
        );
        assert_eq!(
            backend_host(true, None, 0, Some(b"u:p@other.test")),
            Err(BadHost::UserInfo)
        );
        assert_eq!(
            backend_host(true, Some(b"a b"), 1, None),
            Err(BadHost::Malformed)
        );
        assert_eq!(
            backend_host(true, Some(b"a/b"), 1, None),
            Err(BadHost::Malformed)
        );
        assert_eq!(
            backend_host(true, Some(b"[::1]:80"), 1, None),
            Ok(Some(&b"[::1]:80"[..]))
        );
    }

    #[test]
    fn an_absolute_target_sets_the_host() {
        let mut parts = head(http::Request::get("http://b.test/x").header("host", "a.test"));
        to_backend(
            &mut parts,
            &client_value("127.0.0.1".parse().expect("ip")),
            "http",
            false,
        );
        assert_eq!(parts.uri, "/x");
        assert_eq!(parts.headers["host"], "b.test");
        assert_eq!(parts.headers.get_all("host").iter().count(), 1);
    }

    #[test]
    fn upgrades_keep_their_upgrade_header() {
        let mut parts = head(
            http::Request::get("/ws")
                .header("connection", "Upgrade")
                .header("upgrade", "websocket"),
        );
        assert!(is_upgrade(&parts.headers));
        to_backend(
            &mut parts,
            &client_value("127.0.0.1".parse().expect("ip")),
            "http",
            true,
        );
        assert_eq!(parts.headers["upgrade"], "websocket");
        assert_eq!(parts.headers["connection"], "upgrade");
    }
}
