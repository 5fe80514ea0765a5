//! Route tables: which pool a request goes to, or which answer it gets, by its host, path, method
//! and headers — nginx's `server_name` and `location`, HAProxy's ACLs with `use_backend`, Envoy's
//! route tables. An ordered list: the first route that matches wins.
//!
//! ```
//! use ballast_config::route::{Route, RouteTable};
//!
//! let table: RouteTable = toml::from_str(r#"
//!     name = "main"
//!     [[routes]]
//!     host = "api.example.test"
//!     path_prefix = "/v1"
//!     pool = "api"
//!     [[routes]]
//!     host = "*.example.test"
//!     pool = "web"
//! "#).unwrap();
//! assert!(table.check(&["api", "web"]).is_ok());
//! assert_eq!(table.check(&["web"]).unwrap_err().to_string(), "routes[0].pool: no pool `api`");
//! ```

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::validate::Invalid;

/// An ordered list of routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteTable {
    /// What listeners name it by.
    pub name: String,
    /// Tried in order; the first that matches wins. None matching: 404 from the LB.
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// What a request must have to take a route (every field given must hold), and where it goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `Host` (or HTTP/2's `:authority`), without its port, case-insensitive: exact, or
    /// `*.example.com` for every name below `example.com` (not `example.com` itself).
    #[schema(
        pattern = r"^(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        max_length = 253
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The path, exactly (the query string is not part of it).
    #[schema(pattern = r"^/[^?# ]*$")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The path starts with these whole segments: `/api` takes `/api` and `/api/x`, not `/apix`.
    #[schema(pattern = r"^/[^?# ]*$")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// The method, e.g. `GET`.
    #[schema(pattern = "^[A-Z]+$")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `NAME=VALUE`: the header has exactly that value; `NAME`: the header is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Send the request to this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Answer with a redirect to this URL; `{scheme}`, `{host}` (without the port) and `{path}`
    /// (with the query string) are the request's, e.g. `https://{host}{path}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<String>,
    /// With `redirect`: 301, 302 (the default), 307 or 308. Alone: answer with this status.
    #[schema(minimum = 200, maximum = 599)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// With `pool`: extra tries on another backend for replayable requests (0 to 10), over the
    /// pool's.
    #[schema(minimum = 0, maximum = 10)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// With `pool`: connecting to a backend, in milliseconds, over the pool's.
    #[schema(minimum = 1, maximum = 3_600_000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// With `pool`: a backend starting its response, in milliseconds, over the pool's.
    #[schema(minimum = 1, maximum = 3_600_000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_timeout_ms: Option<u64>,
    /// At most this many requests from one client (see `rate_key`) per second, minute or hour,
    /// e.g. `100/s` or `6000/m`; past it the LB answers 429 with `Retry-After`.
    #[schema(pattern = r"^[0-9]+/[smh]$")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// With `rate`: how many requests one client may send at once above the steady rate
    /// (default: the rate's count).
    #[schema(minimum = 1, maximum = 1_000_000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// With `rate`: what tells clients apart: `client_ip` (the default), `header:NAME`,
    /// `cookie:NAME` or `path`; a request without the header or cookie counts by its address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_key: Option<String>,
    /// With `rate`: counted by each LB server on its own (`local`, the default), or over the
    /// LB servers' Redis nodes (`fleet`: one count for the whole fleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_scope: Option<RateScope>,
    /// With `rate_scope = "fleet"`: what a request gets when Redis cannot be asked in time:
    /// `allow` (the default: the limit lapses, the site stays up) or `deny` (429).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_redis_error: Option<OnRedisError>,
}

/// Where a route's rate is counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RateScope {
    /// By each LB server for itself.
    #[default]
    Local,
    /// Over the LB servers' Redis nodes, for the whole fleet.
    Fleet,
}

/// What a fleet-wide rate limit does when Redis does not answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisError {
    /// Let the request through.
    #[default]
    Allow,
    /// Answer 429.
    Deny,
}

/// A route's rate limit, checked and with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSpec {
    /// The steady rate.
    pub rate: Rate,
    /// Requests at once above it.
    pub burst: u32,
    /// What tells clients apart.
    pub key: crate::HashKeySpec,
    /// Where it is counted.
    pub scope: RateScope,
    /// With [`RateScope::Fleet`], when Redis does not answer.
    pub on_redis_error: OnRedisError,
}

/// A rate limit as a route or a listener writes it, field by field, for [`RateFields::spec`] to
/// check and complete: one grammar for both.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateFields<'a> {
    /// `100/s`, `6000/m`, `10000/h`.
    pub rate: Option<&'a str>,
    /// Requests at once above the rate (default: the rate's count).
    pub burst: Option<u32>,
    /// A hash key: `client_ip` (the default), `header:NAME`, `cookie:NAME` or `path`.
    pub rate_key: Option<&'a str>,
    /// `local` (the default) or `fleet`.
    pub rate_scope: Option<RateScope>,
    /// With `fleet`: `allow` (the default) or `deny`.
    pub on_redis_error: Option<OnRedisError>,
}

impl RateFields<'_> {
    /// The limit they describe (`None`: no `rate`), with its defaults; or the first field that
    /// is wrong.
    pub fn spec(&self) -> Result<Option<RateLimitSpec>, Invalid> {
        if self.on_redis_error.is_some() && self.rate_scope != Some(RateScope::Fleet) {
            return Err(Invalid::new(
                "on_redis_error",
                "only with rate_scope = \"fleet\"",
            ));
        }
        let Some(rate) = self.rate else {
            for (field, set) in [
                ("burst", self.burst.is_some()),
                ("rate_key", self.rate_key.is_some()),
                ("rate_scope", self.rate_scope.is_some()),
            ] {
                if set {
                    return Err(Invalid::new(field, "only with rate"));
                }
            }
            return Ok(None);
        };
        let rate: Rate = rate.parse().map_err(|e| Invalid::new("rate", e))?;
        if self.burst.is_some_and(|b| !(1..=1_000_000).contains(&b)) {
            return Err(Invalid::new("burst", "from 1 to 1000000 requests"));
        }
        let key = match self.rate_key {
            Some(key) => key
                .parse::<crate::HashKeySpec>()
                .map_err(|e| Invalid::new("rate_key", e))?,
            None => crate::HashKeySpec::ClientIp,
        };
        Ok(Some(RateLimitSpec {
            rate,
            burst: self.burst.unwrap_or(rate.count.min(1_000_000)),
            key,
            scope: self.rate_scope.unwrap_or_default(),
            on_redis_error: self.on_redis_error.unwrap_or_default(),
        }))
    }
}

/// A request rate: `count` requests per `per` (`100/s`, `6000/m`, `10000/h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests…
    pub count: u32,
    /// …per this long.
    pub per: std::time::Duration,
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let wrong =
            || format!("`{text}`: requests per second, minute or hour, e.g. 100/s or 6000/m");
        let (count, unit) = text.split_once('/').ok_or_else(wrong)?;
        let count: u32 = count.parse().map_err(|_| wrong())?;
        let seconds = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return Err(wrong()),
        };
        if !(1..=1_000_000_000).contains(&count) {
            return Err(format!("`{text}`: from 1 to 1000000000 requests"));
        }
        Ok(Self {
            count,
            per: std::time::Duration::from_secs(seconds),
        })
    }
}

/// Where a matching request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// To the pool.
    Pool(&'a str),
    /// A redirect: the URL template and the status.
    Redirect(&'a str, u16),
    /// An answer with this status.
    Status(u16),
}

impl Route {
    /// Where a matching request goes (for a checked route).
    pub fn action(&self) -> Action<'_> {
        match (&self.pool, &self.redirect, self.status) {
            (Some(pool), _, _) => Action::Pool(pool),
            (None, Some(url), status) => Action::Redirect(url, status.unwrap_or(302)),
            (None, None, status) => Action::Status(status.unwrap_or(404)),
        }
    }

    /// `header` as (lower-case name, value if one is required).
    pub fn header_match(&self) -> Option<(String, Option<&str>)> {
        let header = self.header.as_deref()?;
        Some(match header.split_once('=') {
            Some((name, value)) => (name.trim().to_ascii_lowercase(), Some(value.trim())),
            None => (header.trim().to_ascii_lowercase(), None),
        })
    }
}

impl RouteTable {
    /// Every route checked, naming the field at fault (`routes[2].path_prefix`); `pools` are
    /// the pools the configuration has.
    pub fn check(&self, pools: &[&str]) -> Result<(), Invalid> {
        check_table_name(&self.name)?;
        for (i, route) in self.routes.iter().enumerate() {
            route
                .check(pools)
                .map_err(|e| Invalid::new(format!("routes[{i}].{}", e.field), e.reason))?;
        }
        Ok(())
    }

    /// The position of the first route that sends requests to `pool`.
    pub fn uses_pool(&self, pool: &str) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| r.pool.as_deref() == Some(pool))
    }

    /// Inserts `route` at `position` (at the end without one); returns where it went.
    pub fn insert(&mut self, position: Option<u32>, route: Route) -> Result<u32, Invalid> {
        let at = match position {
            None => self.routes.len(),
            Some(at) if at as usize <= self.routes.len() => at as usize,
            Some(at) => {
                return Err(Invalid::new(
                    "position",
                    format!(
                        "{at}: table `{}` has {} routes",
                        self.name,
                        self.routes.len()
                    ),
                ));
            }
        };
        self.routes.insert(at, route);
        Ok(at as u32)
    }

    /// Removes the route at `position`.
    pub fn remove(&mut self, position: u32) -> Result<Route, Invalid> {
        self.existing(position, "position")?;
        Ok(self.routes.remove(position as usize))
    }

    /// Moves the route at `from` to `to` (its position once moved); the routes between shift
    /// by one.
    pub fn move_route(&mut self, from: u32, to: u32) -> Result<(), Invalid> {
        self.existing(from, "from")?;
        self.existing(to, "to")?;
        let route = self.routes.remove(from as usize);
        self.routes.insert(to as usize, route);
        Ok(())
    }

    fn existing(&self, position: u32, field: &str) -> Result<(), Invalid> {
        if (position as usize) < self.routes.len() {
            return Ok(());
        }
        Err(Invalid::new(
            field,
            format!(
                "no route {position}: table `{}` has {} routes",
                self.name,
                self.routes.len()
            ),
        ))
    }
}

/// A route table's name: what listeners and the API name it by.
pub fn check_table_name(name: &str) -> Result<(), Invalid> {
    let valid = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        return Ok(());
    }
    Err(Invalid::new(
        "name",
        format!("`{name}`: a route table name is 1 to 63 letters, digits, `-` or `_`"),
    ))
}

impl Route {
    /// The route's rate limit, if it has one: the rate, the burst and what tells clients apart
    /// (checked: see [`Route::check_shape`]).
    pub fn rate_limit(&self) -> Option<RateLimitSpec> {
        self.rate_fields().spec().ok().flatten()
    }

    fn rate_fields(&self) -> RateFields<'_> {
        RateFields {
            rate: self.rate.as_deref(),
            burst: self.burst,
            rate_key: self.rate_key.as_deref(),
            rate_scope: self.rate_scope,
            on_redis_error: self.on_redis_error,
        }
    }

    /// The checks of [`Route::check_shape`], and that its pool is one of `pools`.
    fn check(&self, pools: &[&str]) -> Result<(), Invalid> {
        self.check_shape()?;
        match &self.pool {
            Some(pool) if !pools.contains(&pool.as_str()) => {
                Err(Invalid::new("pool", format!("no pool `{pool}`")))
            }
            _ => Ok(()),
        }
    }

    /// Every check that needs nothing but the route: its matches are well-formed and it has
    /// exactly one action.
    pub fn check_shape(&self) -> Result<(), Invalid> {
        if let Some(host) = &self.host {
            let name = host.strip_prefix("*.").unwrap_or(host);
            let valid = !name.is_empty()
                && name.len() <= 253
                && name
                    .split('.')
                    .all(|label| !label.is_empty() && label.bytes().all(is_host_byte));
            if !valid {
                return Err(Invalid::new(
                    "host",
                    format!("`{host}`: a host name, or `*.` and a domain"),
                ));
            }
        }
        if self.path.is_some() && self.path_prefix.is_some() {
            return Err(Invalid::new("path", "give path or path_prefix, not both"));
        }
        for (field, path) in [("path", &self.path), ("path_prefix", &self.path_prefix)] {
            if let Some(path) = path
                && (!path.starts_with('/') || path.contains(['?', '#', ' ']))
            {
                return Err(Invalid::new(
                    field,
                    format!("`{path}`: a path starts with `/` and has no query"),
                ));
            }
        }
        if let Some(method) = &self.method
            && (method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(Invalid::new(
                "method",
                format!("`{method}`: a method in capitals, e.g. GET"),
            ));
        }
        if let Some((name, value)) = self.header_match() {
            let token = !name.is_empty() && crate::hash_key::is_token(&name);
            let printable =
                value.is_none_or(|v| v.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
            if !token || !printable {
                return Err(Invalid::new(
                    "header",
                    "NAME=VALUE (the header has that value) or NAME (it is present)",
                ));
            }
        }
        crate::validate::check_request_limits(
            self.retries,
            self.connect_timeout_ms,
            self.response_timeout_ms,
        )?;
        for (field, ms) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("response_timeout_ms", self.response_timeout_ms),
        ] {
            if ms.is_some() && self.pool.is_none() {
                return Err(Invalid::new(field, "only a route to a pool has timeouts"));
            }
        }
        if self.retries.is_some() && self.pool.is_none() {
            return Err(Invalid::new("retries", "only a route to a pool retries"));
        }
        self.rate_fields().spec()?;
        match (&self.pool, &self.redirect, self.status) {
            (Some(_), Some(_), _) | (Some(_), None, Some(_)) => Err(Invalid::new(
                "pool",
                "a route goes to a pool, or redirects, or answers a status: one of them",
            )),
            (None, Some(url), status) => {
                if !(url.starts_with("http://")
                    || url.starts_with("https://")
                    || url.starts_with('/')
                    || url.starts_with('{'))
                    || url.contains(['\r', '\n'])
                {
                    return Err(Invalid::new(
                        "redirect",
                        format!(
                            "`{url}`: an absolute URL or a path, e.g. https://{{host}}{{path}}"
                        ),
                    ));
                }
                match status {
                    None | Some(301 | 302 | 307 | 308) => Ok(()),
                    Some(other) => Err(Invalid::new(
                        "status",
                        format!("{other}: a redirect is 301, 302, 307 or 308"),
                    )),
                }
            }
            (None, None, Some(status)) if !(200..=599).contains(&status) => Err(Invalid::new(
                "status",
                format!("{status}: a status from 200 to 599"),
            )),
            (None, None, None) => Err(Invalid::new(
                "pool",
                "a route needs pool, redirect or status",
            )),
            _ => Ok(()),
        }
    }
}

fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(text: &str) -> Route {
        toml::from_str(text).expect("a route")
    }

    /// The field a route's check names, checked against a configuration with pool `web`.
    fn field(text: &str) -> String {
        route(text)
            .check(&["web"])
            .err()
            .map(|e| e.field)
            .unwrap_or_default()
    }

    #[test]
    fn bad_routes_name_their_field() {
        assert_eq!(field("pool = \"web\""), "");
        assert_eq!(field("host = \"*.example.test\"\npool = \"web\""), "");
        assert_eq!(field("host = \"a b\"\npool = \"web\""), "host");
        assert_eq!(field("host = \"*.\"\npool = \"web\""), "host");
        assert_eq!(field("path = \"x\"\npool = \"web\""), "path");
        assert_eq!(
            field("path_prefix = \"/a?b\"\npool = \"web\""),
            "path_prefix"
        );
        assert_eq!(
            field("path = \"/a\"\npath_prefix = \"/a\"\npool = \"web\""),
            "path"
        );
        assert_eq!(field("method = \"get\"\npool = \"web\""), "method");
        assert_eq!(field("header = \"x y=1\"\npool = \"web\""), "header");
        assert_eq!(field("pool = \"api\""), "pool");
        assert_eq!(field("pool = \"web\"\nstatus = 404"), "pool");
        assert_eq!(field("redirect = \"ftp://x\""), "redirect");
        assert_eq!(
            field("redirect = \"https://{host}{path}\"\nstatus = 200"),
            "status"
        );
        assert_eq!(field("status = 99"), "status");
        assert_eq!(field("host = \"a.test\""), "pool");
        assert_eq!(field("pool = \"web\"\nretries = 11"), "retries");
        assert_eq!(field("status = 404\nretries = 1"), "retries");
        assert_eq!(
            field("pool = \"web\"\nresponse_timeout_ms = 0"),
            "response_timeout_ms"
        );
        assert_eq!(
            field("pool = \"web\"\nretries = 0\nconnect_timeout_ms = 50"),
            ""
        );
    }

    #[test]
    fn rate_limits_are_checked_and_read() {
        for bad in [
            "rate = \"100\"",
            "rate = \"0/s\"",
            "rate = \"10/d\"",
            "rate = \"x/s\"",
        ] {
            assert_eq!(field(&format!("pool = \"web\"\n{bad}")), "rate", "{bad}");
        }
        assert_eq!(field("pool = \"web\"\nburst = 5"), "burst");
        assert_eq!(field("pool = \"web\"\nrate = \"5/s\"\nburst = 0"), "burst");
        assert_eq!(
            field("pool = \"web\"\nrate = \"5/s\"\nrate_key = \"header:a b\""),
            "rate_key"
        );
        let limited = route("pool = \"web\"\nrate = \"6000/m\"\nrate_key = \"header:x-api-key\"");
        assert_eq!(limited.check(&["web"]), Ok(()));
        let RateLimitSpec {
            rate,
            burst,
            key,
            scope,
            on_redis_error,
        } = limited.rate_limit().expect("a limit");
        assert_eq!(
            (scope, on_redis_error),
            (RateScope::Local, OnRedisError::Allow)
        );
        assert_eq!(
            field("pool = \"web\"\nrate = \"5/s\"\non_redis_error = \"deny\""),
            "on_redis_error"
        );
        assert_eq!(
            field("pool = \"web\"\nrate_scope = \"fleet\""),
            "rate_scope"
        );
        assert_eq!(
            field(
                "pool = \"web\"\nrate = \"5/s\"\nrate_scope = \"fleet\"\non_redis_error = \"deny\""
            ),
            ""
        );
        assert_eq!(
            rate,
            Rate {
                count: 6000,
                per: std::time::Duration::from_secs(60)
            }
        );
        assert_eq!(burst, 6000);
        assert_eq!(key, crate::HashKeySpec::Header("x-api-key".into()));
        assert_eq!(route("pool = \"web\"").rate_limit(), None);
    }

    #[test]
    fn actions() {
        assert_eq!(route("pool = \"web\"").action(), Action::Pool("web"));
        assert_eq!(
            route("redirect = \"https://{host}{path}\"").action(),
            Action::Redirect("https://{host}{path}", 302)
        );
        assert_eq!(route("status = 410").action(), Action::Status(410));
        assert_eq!(
            route("header = \"X-Canary = 1\"\npool = \"web\"").header_match(),
            Some(("x-canary".to_owned(), Some("1")))
        );
    }
}
