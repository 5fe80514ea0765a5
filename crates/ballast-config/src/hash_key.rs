//! What a pool's hash-based algorithms hash, as people write it: `client_ip`, `header:NAME`,
//! `cookie:NAME` or `path`. This is the one grammar: the store's validation, the LB's flags and
//! file, and the proxy (which turns it into its own request-side form) all parse it here, so
//! what one accepts the others cannot refuse.

use std::fmt;
use std::str::FromStr;

/// The source of a request's hash key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HashKeySpec {
    /// The client's IP address (also the key of every TCP connection).
    ClientIp,
    /// A request header's value; the name is kept in lower case.
    Header(String),
    /// A cookie's value.
    Cookie(String),
    /// The request path, without the query.
    Path,
}

impl HashKeySpec {
    /// The grammar as a regular expression, for the OpenAPI document; kept beside the parser it
    /// describes (a test holds the two to one character set).
    pub const PATTERN: &'static str =
        "^(client_ip|path|(header|cookie):[A-Za-z0-9!#$%&'*+.^_`|~-]+)$";
}

/// A header or cookie name: an RFC 9110 token (RFC 6265 names cookies by the same grammar).
pub(crate) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl FromStr for HashKeySpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once(':') {
            None if text == "client_ip" => Ok(Self::ClientIp),
            None if text == "path" => Ok(Self::Path),
            Some(("header", name)) if is_token(name) => Ok(Self::Header(name.to_ascii_lowercase())),
            Some(("cookie", name)) if is_token(name) => Ok(Self::Cookie(name.to_owned())),
            _ => Err(format!(
                "`{text}`: expected client_ip, header:NAME, cookie:NAME or path \
                 (NAME: letters, digits and !#$%&'*+-.^_`|~)"
            )),
        }
    }
}

impl fmt::Display for HashKeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientIp => f.write_str("client_ip"),
            Self::Header(name) => write!(f, "header:{name}"),
            Self::Cookie(name) => write!(f, "cookie:{name}"),
            Self::Path => f.write_str("path"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_prints_as_it_parses() {
        for text in ["client_ip", "header:x-user", "cookie:session", "path"] {
            let parsed: HashKeySpec = text.parse().expect("valid");
            assert_eq!(parsed.to_string(), text);
        }
        assert_eq!(
            "header:X-User".parse::<HashKeySpec>(),
            Ok(HashKeySpec::Header("x-user".into()))
        );
    }

    #[test]
    fn the_pattern_allows_the_characters_the_parser_takes() {
        let class = HashKeySpec::PATTERN
            .split_once(":[")
            .and_then(|(_, rest)| rest.split_once("]+"))
            .map(|(class, _)| class)
            .expect("one character class");
        let mut allowed = std::collections::HashSet::new();
        let mut chars = class.chars().peekable();
        while let Some(c) = chars.next() {
            let mut ahead = chars.clone();
            if ahead.next() == Some('-')
                && let Some(end) = ahead.next()
            {
                allowed.extend(c..=end);
                chars = ahead;
            } else {
                allowed.insert(c);
            }
        }
        for byte in 0u8..128 {
            let c = char::from(byte);
            assert_eq!(allowed.contains(&c), is_token(&c.to_string()), "{c:?}");
        }
    }

    #[test]
    fn names_outside_the_token_grammar_are_refused() {
        for text in [
            "body",
            "cookie:",
            "header:",
            "header:bad name",
            "cookie:a,b",
            "cookie:a=b",
            "cookie:a;b",
            "header:x\u{e9}",
            "client_ip:x",
        ] {
            let refused = text.parse::<HashKeySpec>().expect_err(text);
            assert!(refused.starts_with(&format!("`{text}`")), "{refused}");
        }
    }
}
