//! Passwords out of any text before it is shown.
//!
//! Operators give Ballast secrets inside URLs (`postgres://user:secret@db/ballast`,
//! `redis://:secret@10.0.0.5:6379`) and as libpq parameters (`?password=secret`). Those URLs end
//! up in error messages, log fields, lock node names and the leader's step-down reason. Rather
//! than trust each of those places to remember, every one of them passes its text through
//! [`redact`], which finds the secrets wherever they sit in it.

use std::borrow::Cow;
use std::ops::Range;

/// What a secret is replaced with.
const MASK: &str = "***";

/// `text` with every password in it replaced by `***`: the password of each URL's userinfo
/// (`scheme://user:PASSWORD@host`) and the value of each `password=` / `sslpassword=` parameter.
/// User names, hosts and everything else stay, so the text still says what it was about.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut secrets = userinfo_passwords(text);
    secrets.extend(password_parameters(text));
    if secrets.is_empty() {
        return Cow::Borrowed(text);
    }
    secrets.sort_by_key(|span| span.start);
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for span in secrets {
        if span.start < copied {
            // Overlaps one already masked (`postgres://u:password=x@h`).
            copied = copied.max(span.end);
            continue;
        }
        out.push_str(&text[copied..span.start]);
        out.push_str(MASK);
        copied = span.end;
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// The byte ranges of `PASSWORD` in every `scheme://user:PASSWORD@host` of `text`.
fn userinfo_passwords(text: &str) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = text[from..].find("://") {
        let start = from + offset + 3;
        // RFC 3986 §3.2: the authority ends at the path, query or fragment; text around a URL
        // ends it too (a space, a quote, a comma between URLs in a list).
        let end = text[start..]
            .find(['/', '?', '#', '"', '\'', '<', '>', '`', ','])
            .map_or(text.len(), |i| start + i);
        let end = text[start..end]
            .find(char::is_whitespace)
            .map_or(end, |i| start + i);
        let authority = &text[start..end];
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority[..at].find(':')
            && colon + 1 < at
        {
            found.push(start + colon + 1..start + at);
        }
        from = end.max(start);
    }
    found
}

/// The byte ranges of the values of `password=` parameters (`sslpassword=` among them), in URL
/// queries and in libpq's `key=value` connection strings alike.
fn password_parameters(text: &str) -> Vec<Range<usize>> {
    const KEY: &str = "password=";
    // ASCII lowercasing keeps every byte offset, so ranges found here apply to `text`.
    let lower = text.to_ascii_lowercase();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = lower[from..].find(KEY) {
        let start = from + offset + KEY.len();
        let end = text[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, '&' | '"' | '\'' | ',' | ';' | ')'))
            .map_or(text.len(), |i| start + i);
        if end > start {
            found.push(start..end);
        }
        from = end.max(start);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::redact;
    use proptest::prelude::*;

    #[test]
    fn a_urls_password_is_masked_and_the_rest_kept() {
        assert_eq!(
            redact("postgres://ballast:s3cret@db.example:5432/config"),
            "postgres://ballast:***@db.example:5432/config"
        );
        assert_eq!(
            redact("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact("rediss://user:p%40ss@[::1]:6380"),
            "rediss://user:***@[::1]:6380"
        );
    }

    #[test]
    fn passwords_inside_messages_and_lists_are_masked() {
        assert_eq!(
            redact("--db postgres://u:pw@h/db: connection refused"),
            "--db postgres://u:***@h/db: connection refused"
        );
        assert_eq!(
            redact("lost redis://:a@h1:1,redis://:b@h2:2 and redis://:c@h3:3"),
            "lost redis://:***@h1:1,redis://:***@h2:2 and redis://:***@h3:3"
        );
        assert_eq!(
            redact("error: \"postgres://u:pw@h\" refused"),
            "error: \"postgres://u:***@h\" refused"
        );
    }

    #[test]
    fn password_parameters_are_masked() {
        assert_eq!(
            redact("postgres://h/db?user=u&password=pw&sslmode=require"),
            "postgres://h/db?user=u&password=***&sslmode=require"
        );
        assert_eq!(
            redact("host=h user=u PASSWORD=pw dbname=d sslpassword=k"),
            "host=h user=u PASSWORD=*** dbname=d sslpassword=***"
        );
    }

    #[test]
    fn text_without_secrets_is_left_alone() {
        for text in [
            "sqlite:///tmp/ballast.db",
            "redis://127.0.0.1:6379",
            "postgres://ballast@127.0.0.1/db",
            "http://127.0.0.1:8080/path?x=1",
            "a plain sentence: with a colon @ and an at",
            "",
        ] {
            assert!(
                matches!(redact(text), std::borrow::Cow::Borrowed(_)),
                "{text}"
            );
        }
    }

    proptest! {
        /// Whatever surrounds it, a password given in a URL never survives redaction.
        #[test]
        fn no_password_survives(
            before in "[ -~]{0,20}",
            user in "[a-z]{0,8}",
            password in "[A-Za-z0-9%!$*+;=._~-]{6,16}",
            host in "[a-z0-9.]{1,12}",
            after in "(/[ -~]{0,20})?",
        ) {
            let text = format!("{before} redis://{user}:{password}@{host}{after}");
            let shown = redact(&text);
            prop_assert!(
                !shown.contains(&format!(":{password}@")),
                "{text} -> {shown}"
            );
        }

        #[test]
        fn never_panics(text in "\\PC{0,64}") {
            let _ = redact(&text);
        }
    }
}
