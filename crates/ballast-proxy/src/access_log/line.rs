//! One access log line, in JSON or in nginx's `combined` format, written straight into the
//! writer's buffer: no allocation per line, and the clock formatted once a second.
//!
//! `combined` is nginx's default format, so that tools that read nginx logs (GoAccess, AWStats,
//! fail2ban's filters) read Ballast's:
//! `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
//! "$http_referer" "$http_user_agent"`, with the time in UTC. Its strings are escaped as nginx
//! escapes them (`"`, `\` and bytes outside printable ASCII as `\xHH`).

use std::cell::RefCell;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::LogFormat;

/// What a request said about itself, kept for its log line: method, host, target, referer,
/// user agent and request ID, in one allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RequestFacts {
    text: String,
    ends: [u32; 6],
}

impl RequestFacts {
    /// Header values may hold bytes that are not UTF-8: they are kept as U+FFFD.
    pub(crate) fn new(
        method: &str,
        host: &[u8],
        target: &str,
        referer: &[u8],
        user_agent: &[u8],
        request_id: &str,
    ) -> Self {
        let mut text =
            String::with_capacity(method.len() + host.len() + target.len() + user_agent.len() + 48);
        let mut ends = [0u32; 6];
        let parts: [&[u8]; 6] = [
            method.as_bytes(),
            host,
            target.as_bytes(),
            referer,
            user_agent,
            request_id.as_bytes(),
        ];
        for (end, part) in ends.iter_mut().zip(parts) {
            match std::str::from_utf8(part) {
                Ok(valid) => text.push_str(valid),
                Err(_) => text.push_str(&String::from_utf8_lossy(part)),
            }
            *end = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        Self { text, ends }
    }

    fn part(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text.get(start..self.ends[i] as usize).unwrap_or("")
    }

    pub(crate) fn method(&self) -> &str {
        self.part(0)
    }

    pub(crate) fn host(&self) -> &str {
        self.part(1)
    }

    /// The request target, with its query string.
    pub(crate) fn target(&self) -> &str {
        self.part(2)
    }

    pub(crate) fn referer(&self) -> &str {
        self.part(3)
    }

    pub(crate) fn user_agent(&self) -> &str {
        self.part(4)
    }

    pub(crate) fn request_id(&self) -> &str {
        self.part(5)
    }
}

/// Everything one line says about a request.
#[derive(Debug, Clone)]
pub(crate) struct Line<'a> {
    pub client: SocketAddr,
    pub request: &'a RequestFacts,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: &'static str,
    /// 0 when the client went away before any response.
    pub status: u16,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes written to the client.
    pub bytes_out: u64,
    /// When the request ended: the line's time.
    pub at: Instant,
    /// From the request head to the response's last byte.
    pub total: Duration,
    /// From the request head to the backend's response head.
    pub first_byte: Option<Duration>,
    pub backend: Option<SocketAddr>,
    pub pool: Option<&'a str>,
    /// The route table and the route's position in it, when a route table chose.
    pub route: Option<(&'a str, u32)>,
    /// Tries after the first.
    pub retries: u32,
}

impl Line<'_> {
    /// Appends the line, with its newline, to `out`.
    pub(crate) fn write(&self, format: LogFormat, now: SystemTime, out: &mut Vec<u8>) {
        match format {
            LogFormat::Json => self.json(now, out),
            LogFormat::Combined => self.combined(now, out),
        }
    }

    fn json(&self, now: SystemTime, out: &mut Vec<u8>) {
        let request = self.request;
        out.extend_from_slice(b"{\"time\":\"");
        clock(now, |c| out.extend_from_slice(c.iso.as_bytes()));
        out.push(b'.');
        push_three_digits(out, millis_of(now));
        out.extend_from_slice(b"Z\",\"client\":\"");
        push_ip(out, self.client.ip());
        out.push(b'"');
        for (name, value) in [
            ("method", request.method()),
            ("host", request.host()),
            ("path", request.target()),
            ("protocol", self.protocol),
        ] {
            json_field(out, name, value);
        }
        out.extend_from_slice(b",\"status\":");
        push_decimal(out, self.status.into());
        out.extend_from_slice(b",\"bytes_in\":");
        push_decimal(out, self.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        push_decimal(out, self.bytes_out);
        out.extend_from_slice(b",\"duration_ms\":");
        push_millis(out, self.total);
        out.extend_from_slice(b",\"backend_ms\":");
        match self.first_byte {
            Some(at) => push_millis(out, at),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"backend\":");
        match self.backend {
            Some(backend) => {
                out.push(b'"');
                push_ip(out, backend.ip());
                out.push(b':');
                push_decimal(out, backend.port().into());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"pool\":");
        match self.pool {
            Some(pool) => json_string(out, pool),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"route\":");
        match self.route {
            Some((table, position)) => {
                out.push(b'"');
                json_escaped(out, table);
                out.push(b'#');
                push_decimal(out, position.into());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"retries\":");
        push_decimal(out, self.retries.into());
        for (name, value) in [
            ("request_id", request.request_id()),
            ("referer", request.referer()),
            ("user_agent", request.user_agent()),
        ] {
            json_field(out, name, value);
        }
        out.extend_from_slice(b"}\n");
    }

    fn combined(&self, now: SystemTime, out: &mut Vec<u8>) {
        let request = self.request;
        push_ip(out, self.client.ip());
        out.extend_from_slice(b" - - [");
        clock(now, |c| out.extend_from_slice(c.common.as_bytes()));
        out.extend_from_slice(b" +0000] \"");
        nginx_escaped(out, request.method());
        out.push(b' ');
        nginx_escaped(out, request.target());
        out.push(b' ');
        out.extend_from_slice(self.protocol.as_bytes());
        out.extend_from_slice(b"\" ");
        push_decimal(out, self.status.into());
        out.push(b' ');
        push_decimal(out, self.bytes_out);
        out.extend_from_slice(b" \"");
        nginx_escaped_or_dash(out, request.referer());
        out.extend_from_slice(b"\" \"");
        nginx_escaped_or_dash(out, request.user_agent());
        out.extend_from_slice(b"\"\n");
    }
}

fn json_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    json_string(out, value);
}

fn json_string(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    json_escaped(out, value);
    out.push(b'"');
}

/// RFC 8259 §7: `"`, `\` and control characters escaped; the rest is UTF-8 as it is. Runs
/// without any are copied whole: most values have none.
fn json_escaped(out: &mut Vec<u8>, value: &str) {
    let mut rest = value.as_bytes();
    while let Some(at) = rest.iter().position(|&b| needs_json_escape(b)) {
        out.extend_from_slice(&rest[..at]);
        match rest[at] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            control => {
                out.extend_from_slice(b"\\u00");
                out.extend_from_slice(&hex_byte(control));
            }
        }
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

fn needs_json_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\' || byte == 0x7f
}

fn nginx_escaped_or_dash(out: &mut Vec<u8>, value: &str) {
    if value.is_empty() {
        out.push(b'-');
    } else {
        nginx_escaped(out, value);
    }
}

/// As nginx escapes variables in a log line: `"`, `\` and bytes outside printable ASCII become
/// `\xHH`, so a line cannot be split or its quotes closed early.
fn nginx_escaped(out: &mut Vec<u8>, value: &str) {
    for &byte in value.as_bytes() {
        if byte == b'"' || byte == b'\\' || !(0x20..0x7f).contains(&byte) {
            out.extend_from_slice(b"\\x");
            out.extend_from_slice(&hex_byte(byte).map(|d| d.to_ascii_uppercase()));
        } else {
            out.push(byte);
        }
    }
}

fn hex_byte(byte: u8) -> [u8; 2] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    [HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]]
}

/// `n` in decimal, without `fmt`'s machinery: a line holds a dozen numbers.
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// `n` (below 1000) as three digits, for milliseconds and microseconds after a point.
fn push_three_digits(out: &mut Vec<u8>, n: u32) {
    let n = n % 1000;
    out.extend_from_slice(&[
        b'0' + (n / 100) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

/// Milliseconds with three decimals (microseconds), as integers: no float formatting.
fn push_millis(out: &mut Vec<u8>, duration: Duration) {
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    push_decimal(out, micros / 1000);
    out.push(b'.');
    push_three_digits(out, (micros % 1000) as u32);
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_decimal(out, octet.into());
            }
        }
        // Writing into a Vec cannot fail.
        IpAddr::V6(v6) => drop(write!(out, "{v6}")),
    }
}

fn millis_of(now: SystemTime) -> u32 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_millis())
}

/// One second, formatted both ways.
#[derive(Debug, Default)]
struct Second {
    at: u64,
    /// `2026-12-05T14:33:31`
    iso: String,
    /// `05/Dec/2026:14:33:31`
    common: String,
}

thread_local! {
    static CLOCK: RefCell<Second> = RefCell::new(Second { at: u64::MAX, ..Second::default() });
}

/// Calls `f` with `now`'s second formatted, formatting it only when the second changed.
fn clock(now: SystemTime, f: impl FnOnce(&Second)) {
    let at = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CLOCK.with_borrow_mut(|second| {
        if second.at != at {
            *second = Second::of(at);
        }
        f(second);
    });
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

impl Second {
    fn of(at: u64) -> Self {
        let (year, month, day) = civil_from_days(at / 86_400);
        let in_day = at % 86_400;
        let (hour, minute, second) = (in_day / 3600, in_day / 60 % 60, in_day % 60);
        Self {
            at,
            iso: format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}"),
            common: format!(
                "{day:02}/{}/{year:04}:{hour:02}:{minute:02}:{second:02}",
                MONTHS[(month - 1) as usize]
            ),
        }
    }
}

/// The date `days` after 1970-01-01, in the proleptic Gregorian calendar (Howard Hinnant's
/// `civil_from_days`, restricted to dates after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> RequestFacts {
        RequestFacts::new(
            "GET",
            b"api.example.test",
            "/v1/x?q=\"1\"",
            b"",
            b"curl/8.5 \"quoted\"\x01",
            "abc-123",
        )
    }

    fn line(request: &RequestFacts) -> Line<'_> {
        Line {
            client: "127.0.0.9:5000".parse().expect("test"),
            request,
            protocol: "HTTP/1.1",
            status: 200,
            bytes_in: 3,
            bytes_out: 1234,
            at: Instant::now(),
            total: Duration::from_micros(1500),
            first_byte: Some(Duration::from_micros(700)),
            backend: Some("127.0.0.1:9001".parse().expect("test")),
            pool: Some("api"),
            route: Some(("main", 0)),
            retries: 1,
        }
    }

    /// 2026-12-05T14:33:31.042Z
    fn moment() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_796_481_211_042)
    }

    #[test]
    fn numbers_and_addresses_are_written_as_fmt_would() {
        let written = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut out = Vec::new();
            f(&mut out);
            String::from_utf8(out).expect("test")
        };
        for n in [0, 7, 10, 999, 1000, 65_535, u64::MAX] {
            assert_eq!(written(&|out| push_decimal(out, n)), n.to_string());
        }
        for micros in [0, 1, 999, 1000, 1_500, 12_345_678] {
            let duration = Duration::from_micros(micros);
            assert_eq!(
                written(&|out| push_millis(out, duration)),
                format!("{:.3}", micros as f64 / 1e3)
            );
        }
        for ip in [
            "0.0.0.0",
            "127.0.0.9",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().expect("test");
            assert_eq!(written(&|out| push_ip(out, ip)), ip.to_string());
        }
    }

    #[test]
    fn dates_are_those_of_the_gregorian_calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(20_792), (2026, 12, 5));
        assert_eq!(civil_from_days(47_540), (2100, 2, 28));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
    }

    #[test]
    fn a_json_line_is_one_object_with_every_field_escaped() {
        let request = facts();
        let mut out = Vec::new();
        line(&request).write(LogFormat::Json, moment(), &mut out);
        let text = String::from_utf8(out).expect("test");
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1);
        assert!(text.starts_with(r#"{"time":"2026-12-05T14:33:31.042Z","client":"127.0.0.9","#));
        assert!(text.contains(r#""path":"/v1/x?q=\"1\"""#), "{text}");
        assert!(
            text.contains(r#""user_agent":"curl/8.5 \"quoted\"\u0001""#),
            "{text}"
        );
        assert!(
            text.contains(r#""duration_ms":1.500,"backend_ms":0.700"#),
            "{text}"
        );
        assert!(text.contains(r#""route":"main#0","retries":1,"request_id":"abc-123""#));
        assert!(
            text.contains(r#""backend":"127.0.0.1:9001","pool":"api""#),
            "{text}"
        );
    }

    #[test]
    fn a_combined_line_reads_as_nginx_writes_it() {
        let request = facts();
        let mut out = Vec::new();
        let mut answered = line(&request);
        answered.backend = None;
        answered.write(LogFormat::Combined, moment(), &mut out);
        assert_eq!(
            String::from_utf8(out).expect("test"),
            "127.0.0.9 - - [05/Dec/2026:14:33:31 +0000] \"GET /v1/x?q=\\x221\\x22 HTTP/1.1\" \
             200 1234 \"-\" \"curl/8.5 \\x22quoted\\x22\\x01\"\n"
        );
    }

    #[test]
    fn facts_keep_their_parts_apart_and_survive_bytes_that_are_not_utf8() {
        let facts = RequestFacts::new("POST", b"h\xff", "/", b"r", b"", "id");
        assert_eq!(facts.method(), "POST");
        assert_eq!(facts.host(), "h\u{fffd}");
        assert_eq!(facts.target(), "/");
        assert_eq!(facts.referer(), "r");
        assert_eq!(facts.user_agent(), "");
        assert_eq!(facts.request_id(), "id");
    }
}
