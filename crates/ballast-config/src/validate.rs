//! Checks a write before it touches the database: every error names the field and the reason,
//! and an invalid write changes nothing.

use std::net::SocketAddr;

use ballast_balance::{ALGORITHM_NAMES, Backend, BuildError, Picker};

use crate::model::{AlgorithmSpec, PoolSpec, Write};

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    /// The field at fault, e.g. `address` or `table_size`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Invalid {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The checks that need nothing but the write itself.
pub fn check(write: &Write) -> Result<(), Invalid> {
    match write {
        Write::CreatePool(spec) => check_pool(spec),
        Write::SetAlgorithm {
            pool,
            algorithm,
            hash_key,
        } => {
            check_name(pool, "pool")?;
            if let Some(hash_key) = hash_key {
                check_hash_key(hash_key)?;
            }
            check_algorithm(algorithm)
        }
        Write::DeletePool { pool } => check_name(pool, "pool"),
        Write::SetPolicy { pool, policy } => {
            check_name(pool, "pool")?;
            check_policy(policy)
        }
        Write::AddBackend { pool, address, .. } => {
            check_name(pool, "pool")?;
            backend_address(address)
                .map(|_| ())
                .map_err(|reason| Invalid::new("address", reason))
        }
        Write::RemoveBackend { pool, address }
        | Write::SetWeight { pool, address, .. }
        | Write::SetAdminState { pool, address, .. } => {
            check_name(pool, "pool")?;
            check_address(address)
        }
        Write::SetHealth {
            pool,
            address,
            phi,
            reason,
            ..
        } => {
            check_name(pool, "pool")?;
            check_address(address)?;
            if phi.is_some_and(|phi| phi.is_nan() || phi < 0.0) {
                return Err(Invalid::new("phi", "a number from 0 up"));
            }
            if reason.as_ref().is_some_and(|r| r.len() > 1000) {
                return Err(Invalid::new("reason", "at most 1000 bytes"));
            }
            Ok(())
        }
        Write::AddRoute { table, route, .. } => {
            check_route_table_name(table)?;
            route.check_shape()
        }
        Write::RemoveRoute { table, .. } | Write::MoveRoute { table, .. } => {
            check_route_table_name(table)
        }
    }
}

fn check_route_table_name(table: &str) -> Result<(), Invalid> {
    crate::route::check_table_name(table).map_err(|e| Invalid::new("table", e.reason))
}

fn check_pool(spec: &PoolSpec) -> Result<(), Invalid> {
    check_name(&spec.name, "name")?;
    check_algorithm(&spec.algorithm)?;
    check_hash_key(&spec.hash_key)?;
    check_policy(&spec.policy)?;
    if let Some(dns) = &spec.dns_name {
        let valid = !dns.is_empty()
            && dns.len() <= 253
            && dns.trim_end_matches('.').split('.').all(label_is_valid);
        if !valid {
            return Err(Invalid::new(
                "dns_name",
                format!("`{dns}` is not a DNS name"),
            ));
        }
    }
    Ok(())
}

/// The retries and timeouts a request gets, as a pool's policy or a route over it sets them.
pub(crate) fn check_request_limits(
    retries: Option<u32>,
    connect_timeout_ms: Option<u64>,
    response_timeout_ms: Option<u64>,
) -> Result<(), Invalid> {
    if retries.is_some_and(|r| r > 10) {
        return Err(Invalid::new("retries", "at most 10 extra tries"));
    }
    for (field, value) in [
        ("connect_timeout_ms", connect_timeout_ms),
        ("response_timeout_ms", response_timeout_ms),
    ] {
        check_millis(field, value)?;
    }
    Ok(())
}

fn check_millis(field: &str, value: Option<u64>) -> Result<(), Invalid> {
    if value.is_some_and(|ms| ms == 0 || ms > 3_600_000) {
        return Err(Invalid::new(field, "must be from 1 ms to one hour"));
    }
    Ok(())
}

/// TLS to the backends: the fields that only mean something over TLS need it, and a backend's
/// certificate is either verified (against `ca_file`) or explicitly not.
fn check_backend_tls(policy: &crate::model::PoolPolicy) -> Result<(), Invalid> {
    let tls = policy.tls_to_backends();
    if policy.tls == Some(false) && policy.protocol == Some(crate::model::UpstreamProtocol::H2) {
        return Err(Invalid::new(
            "tls",
            "protocol h2 is HTTP/2 over TLS; for clear text use h2c",
        ));
    }
    if tls && policy.protocol == Some(crate::model::UpstreamProtocol::H2c) {
        return Err(Invalid::new(
            "protocol",
            "h2c is HTTP/2 in clear text; over TLS use h2 (or auto)",
        ));
    }
    let insecure = policy.insecure_skip_verify == Some(true);
    for (field, set) in [
        ("ca_file", policy.ca_file.is_some()),
        ("server_name", policy.server_name.is_some()),
        ("client_cert", policy.client_cert.is_some()),
        ("client_key", policy.client_key.is_some()),
        ("insecure_skip_verify", insecure),
    ] {
        if set && !tls {
            return Err(Invalid::new(field, "only with tls = true (or protocol h2)"));
        }
    }
    if tls && policy.ca_file.is_none() && !insecure {
        return Err(Invalid::new(
            "ca_file",
            "backends' certificates are verified against a CA file (e.g. \
             /etc/ssl/certs/ca-certificates.crt for public ones); or set insecure_skip_verify",
        ));
    }
    if insecure && policy.ca_file.is_some() {
        return Err(Invalid::new(
            "insecure_skip_verify",
            "skips the verification ca_file is for: set one of them",
        ));
    }
    if policy.client_cert.is_some() != policy.client_key.is_some() {
        let missing = if policy.client_cert.is_some() {
            "client_key"
        } else {
            "client_cert"
        };
        return Err(Invalid::new(
            missing,
            "client_cert and client_key come together",
        ));
    }
    for (field, path) in [
        ("ca_file", &policy.ca_file),
        ("client_cert", &policy.client_cert),
        ("client_key", &policy.client_key),
    ] {
        if path
            .as_deref()
            .is_some_and(|p| p.is_empty() || p.len() > 4096 || p.contains('\0'))
        {
            return Err(Invalid::new(field, "a file path, up to 4096 bytes"));
        }
    }
    if let Some(name) = &policy.server_name {
        let is_name = name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !is_name && name.parse::<std::net::IpAddr>().is_err() {
            return Err(Invalid::new(
                "server_name",
                "a DNS name (letters, digits, hyphens, dots) or an IP address",
            ));
        }
    }
    Ok(())
}

fn check_policy(policy: &crate::model::PoolPolicy) -> Result<(), Invalid> {
    check_request_limits(
        policy.retries,
        policy.connect_timeout_ms,
        policy.response_timeout_ms,
    )?;
    for (field, value) in [
        ("health_interval_ms", policy.health_interval_ms),
        ("health_timeout_ms", policy.health_timeout_ms),
        ("phi_min_std_dev_ms", policy.phi_min_std_dev_ms),
        ("slow_start_ms", policy.slow_start_ms),
        ("queue_timeout_ms", policy.queue_timeout_ms),
    ] {
        check_millis(field, value)?;
    }
    if policy
        .phi_acceptable_pause_ms
        .is_some_and(|ms| ms > 3_600_000)
    {
        return Err(Invalid::new("phi_acceptable_pause_ms", "at most one hour"));
    }
    for (field, value) in [
        ("health_rise", policy.health_rise),
        ("health_fall", policy.health_fall),
    ] {
        if value.is_some_and(|n| n == 0 || n > 100) {
            return Err(Invalid::new(field, "from 1 to 100 checks in a row"));
        }
    }
    if policy
        .max_requests
        .is_some_and(|n| !(1..=1_000_000).contains(&n))
    {
        return Err(Invalid::new("max_requests", "from 1 to 1000000 requests"));
    }
    if policy
        .max_connections
        .is_some_and(|n| !(1..=1_000_000).contains(&n))
    {
        return Err(Invalid::new(
            "max_connections",
            "from 1 to 1000000 connections",
        ));
    }
    if policy.max_connections.is_some()
        && policy
            .protocol
            .is_some_and(|p| p != crate::model::UpstreamProtocol::Http1)
    {
        return Err(Invalid::new(
            "max_connections",
            "HTTP/2 carries many requests per connection: cap them with max_requests",
        ));
    }
    for (field, value) in [
        ("queue_size", policy.queue_size),
        ("retry_budget_min", policy.retry_budget_min),
    ] {
        if value.is_some_and(|n| n > 1_000_000) {
            return Err(Invalid::new(field, "at most 1000000"));
        }
    }
    if policy.max_requests.is_none()
        && policy.max_connections.is_none()
        && policy.queue_size.is_some_and(|n| n > 0)
    {
        return Err(Invalid::new(
            "queue_size",
            "requests queue for a backend under its max_requests or max_connections: set one",
        ));
    }
    check_backend_tls(policy)?;
    if let Some(name) = &policy.sticky_cookie
        && !(crate::hash_key::is_token(name) && name.len() <= 64)
    {
        return Err(Invalid::new(
            "sticky_cookie",
            "a cookie name: up to 64 letters, digits and !#$%&'*+-.^_`|~",
        ));
    }
    if policy
        .retry_budget_percent
        .is_some_and(|p| !(0.0..=100.0).contains(&p))
    {
        return Err(Invalid::new("retry_budget_percent", "from 0 to 100"));
    }
    if policy
        .phi_window
        .is_some_and(|n| !(2..=100_000).contains(&n))
    {
        return Err(Invalid::new("phi_window", "from 2 to 100000 intervals"));
    }
    if policy
        .phi_threshold
        .is_some_and(|phi| !(phi > 0.0 && phi <= 100.0))
    {
        return Err(Invalid::new(
            "phi_threshold",
            "a number above 0, at most 100",
        ));
    }
    if let Some(path) = &policy.health_path
        && (!path.starts_with('/') || path.contains(char::is_whitespace))
    {
        return Err(Invalid::new(
            "health_path",
            format!("`{path}`: a path starting with `/`, without spaces"),
        ));
    }
    Ok(())
}

/// LB server names are DNS labels too (the fleet's DNS names them).
pub(crate) fn check_lb_name(name: &str) -> Result<(), Invalid> {
    check_name(name, "name")
}

/// Pool names are DNS labels, so that a pool can be served under its own name.
fn check_name(name: &str, field: &str) -> Result<(), Invalid> {
    if label_is_valid(name) {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            format!(
                "`{name}`: use 1 to 63 lower-case letters, digits and dashes, not starting or ending with a dash"
            ),
        ))
    }
}

fn label_is_valid(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// The algorithm and its parameters, checked by building a picker, so that whatever the store
/// accepts, every LB can run.
fn check_algorithm(spec: &AlgorithmSpec) -> Result<(), Invalid> {
    let algorithm = spec.build().map_err(invalid_algorithm)?;
    Picker::build(&algorithm, &[Backend::new("probe", 1)]).map_err(invalid_algorithm)?;
    Ok(())
}

fn invalid_algorithm(error: BuildError) -> Invalid {
    match error {
        BuildError::UnknownAlgorithm { name } => Invalid::new(
            "algorithm",
            format!(
                "unknown `{name}`; expected one of {}",
                ALGORITHM_NAMES.join(", ")
            ),
        ),
        BuildError::InvalidParameter { field, reason } => Invalid::new(field, reason),
        other => Invalid::new("algorithm", other.to_string()),
    }
}

/// The grammar the LB servers accept for a hash key source.
fn check_hash_key(text: &str) -> Result<(), Invalid> {
    text.parse::<crate::HashKeySpec>()
        .map(drop)
        .map_err(|reason| Invalid::new("hash_key", reason))
}

/// An address as stored: parsed and printed back, so `[::1]:80` and `[0:0::1]:80` are one
/// backend.
pub(crate) fn canonical_address(address: &str) -> String {
    address
        .parse::<SocketAddr>()
        .map_or_else(|_| address.to_owned(), |a| a.to_string())
}

/// An address already stored (to remove, reweigh or drain): it need only parse, so that one
/// stored before [`backend_address`] refused it can still be taken out.
fn check_address(address: &str) -> Result<(), Invalid> {
    address
        .parse::<SocketAddr>()
        .map(|_| ())
        .map_err(|_| Invalid::new("address", NOT_IP_PORT))
}

const NOT_IP_PORT: &str = "not an IP:port address (e.g. 127.0.0.1:9101, [::1]:9101)";

/// A new backend's address, `IP:port`: one an LB can connect to. Port 0 and the unspecified,
/// multicast and broadcast addresses are refused, being no backend's. Host names are not resolved
/// (each LB resolving on its own could split a pool, and a name that stops resolving would empty
/// it), so they are refused with that reason. The reason does not repeat the text: the caller
/// shows it beside the field or the flag.
pub fn backend_address(text: &str) -> Result<SocketAddr, String> {
    let address: SocketAddr = text.parse().map_err(|_| {
        let host = text.rsplit_once(':').map_or(text, |(host, _)| host);
        if !host.is_empty() && host.chars().any(|c| c.is_ascii_alphabetic()) && !host.contains('[')
        {
            format!(
                "`{host}` is a host name; give the backend's IP:port (e.g. 127.0.0.1:9101): \
                 host names are not resolved"
            )
        } else {
            NOT_IP_PORT.to_owned()
        }
    })?;
    let ip = address.ip();
    if address.port() == 0 {
        return Err("port 0 is no backend's port".to_owned());
    }
    if ip.is_unspecified() {
        return Err(format!(
            "{ip} means every local address when listening, and no backend's address: give \
             the one it is reached at (e.g. 127.0.0.1:{})",
            address.port()
        ));
    }
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_multicast() || broadcast {
        return Err(format!(
            "{ip} is a multicast or broadcast address, no backend's"
        ));
    }
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, algorithm: AlgorithmSpec, hash_key: &str) -> Write {
        Write::CreatePool(PoolSpec {
            name: name.into(),
            algorithm,
            hash_key: hash_key.into(),
            dns_name: None,
            policy: Default::default(),
        })
    }

    fn error(write: &Write) -> String {
        check(write).expect_err("invalid").to_string()
    }

    #[test]
    fn accepts_good_writes() {
        check(&pool(
            "web-1",
            AlgorithmSpec::named("maglev"),
            "header:x-user",
        ))
        .expect("valid");
        check(&Write::AddBackend {
            pool: "web-1".into(),
            address: "[::1]:8080".into(),
            weight: 0,
        })
        .expect("valid");
    }

    #[test]
    fn pool_policy_is_checked() {
        let with = |policy: crate::model::PoolPolicy| {
            Write::CreatePool(PoolSpec {
                name: "web".into(),
                algorithm: AlgorithmSpec::named("maglev"),
                hash_key: "path".into(),
                dns_name: None,
                policy,
            })
        };
        let good = crate::model::PoolPolicy {
            retries: Some(3),
            connect_timeout_ms: Some(250),
            response_timeout_ms: Some(5_000),
            health_path: Some("/health".into()),
            health_interval_ms: Some(1_000),
            health_timeout_ms: Some(500),
            health_rise: Some(2),
            health_fall: Some(3),
            phi_threshold: Some(8.0),
            phi_window: Some(1000),
            phi_min_std_dev_ms: Some(100),
            phi_acceptable_pause_ms: Some(0),
            protocol: Some(crate::model::UpstreamProtocol::H2),
            send_proxy_protocol: Some(crate::model::ProxyProtocol::V1),
            slow_start_ms: Some(30_000),
            max_requests: Some(100),
            max_connections: None,
            queue_size: Some(50),
            queue_timeout_ms: Some(500),
            retry_budget_percent: Some(25.0),
            retry_budget_min: Some(2),
            sticky_cookie: Some("lb".into()),
            tls: Some(true),
            ca_file: Some("/etc/ballast/backends-ca.pem".into()),
            server_name: Some("api.internal".into()),
            client_cert: Some("/etc/ballast/lb.pem".into()),
            client_key: Some("/etc/ballast/lb.key".into()),
            insecure_skip_verify: None,
        };
        check(&with(good.clone())).expect("valid");
        let bad = [
            (
                crate::model::PoolPolicy {
                    retries: Some(11),
                    ..good.clone()
                },
                "retries: at most 10",
            ),
            (
                crate::model::PoolPolicy {
                    response_timeout_ms: Some(0),
                    ..good.clone()
                },
                "response_timeout_ms: must be",
            ),
            (
                crate::model::PoolPolicy {
                    health_path: Some("health".into()),
                    ..good.clone()
                },
                "health_path: `health`",
            ),
            (
                crate::model::PoolPolicy {
                    health_fall: Some(0),
                    ..good.clone()
                },
                "health_fall: from 1 to 100",
            ),
            (
                crate::model::PoolPolicy {
                    sticky_cookie: Some("session id".into()),
                    ..good.clone()
                },
                "sticky_cookie: a cookie name",
            ),
            (
                crate::model::PoolPolicy {
                    max_connections: Some(10),
                    ..good.clone()
                },
                "max_connections: HTTP/2 carries many requests",
            ),
            (
                crate::model::PoolPolicy {
                    protocol: Some(crate::model::UpstreamProtocol::Http1),
                    tls: Some(true),
                    max_connections: Some(0),
                    ..good.clone()
                },
                "max_connections: from 1 to 1000000",
            ),
            (
                crate::model::PoolPolicy {
                    max_requests: None,
                    ..good.clone()
                },
                "queue_size: requests queue for a backend",
            ),
            (
                crate::model::PoolPolicy {
                    ca_file: None,
                    ..good.clone()
                },
                "ca_file: backends' certificates are verified",
            ),
            (
                crate::model::PoolPolicy {
                    insecure_skip_verify: Some(true),
                    ..good.clone()
                },
                "insecure_skip_verify: skips the verification",
            ),
            (
                crate::model::PoolPolicy {
                    tls: None,
                    protocol: Some(crate::model::UpstreamProtocol::Http1),
                    ..good.clone()
                },
                "ca_file: only with tls = true",
            ),
            (
                crate::model::PoolPolicy {
                    tls: Some(false),
                    protocol: Some(crate::model::UpstreamProtocol::H2),
                    ..good.clone()
                },
                "tls: protocol h2 is HTTP/2 over TLS",
            ),
            (
                crate::model::PoolPolicy {
                    client_key: None,
                    ..good.clone()
                },
                "client_key: client_cert and client_key come together",
            ),
            (
                crate::model::PoolPolicy {
                    protocol: Some(crate::model::UpstreamProtocol::H2c),
                    ..good.clone()
                },
                "protocol: h2c is HTTP/2 in clear text",
            ),
            (
                crate::model::PoolPolicy {
                    server_name: Some("under_score.internal".into()),
                    ..good.clone()
                },
                "server_name: a DNS name",
            ),
            (
                crate::model::PoolPolicy {
                    phi_threshold: Some(f64::NAN),
                    ..good.clone()
                },
                "phi_threshold: a number above 0",
            ),
            (
                crate::model::PoolPolicy {
                    phi_window: Some(1),
                    ..good.clone()
                },
                "phi_window: from 2",
            ),
        ];
        for (policy, expected) in bad {
            let error = check(&with(policy)).expect_err("invalid").to_string();
            assert!(error.starts_with(expected), "{error}");
        }
    }

    #[test]
    fn names_the_field_and_the_reason() {
        assert!(
            error(&pool("Web", AlgorithmSpec::named("maglev"), "path")).starts_with("name: `Web`")
        );
        assert!(
            error(&pool("web", AlgorithmSpec::named("fastest"), "path"))
                .starts_with("algorithm: unknown `fastest`; expected one of round_robin")
        );
        let not_prime = AlgorithmSpec {
            table_size: Some(65_536),
            ..AlgorithmSpec::named("maglev")
        };
        assert!(
            error(&pool("web", not_prime, "path"))
                .starts_with("maglev.table_size: 65536 is not a prime")
        );
        let misfit = AlgorithmSpec {
            load_factor: Some(1.5),
            ..AlgorithmSpec::named("round_robin")
        };
        assert_eq!(
            error(&pool("web", misfit, "path")),
            "load_factor: does not apply to algorithm round_robin"
        );
        assert!(
            error(&pool("web", AlgorithmSpec::named("maglev"), "body"))
                .starts_with("hash_key: `body`")
        );
        assert_eq!(
            error(&Write::AddBackend {
                pool: "web".into(),
                address: "localhost:80".into(),
                weight: 1
            }),
            "address: `localhost` is a host name; give the backend's IP:port (e.g. \
             127.0.0.1:9101): host names are not resolved"
        );
        for (address, reason) in [
            ("127.0.0.1:0", "port 0 is no backend's port"),
            ("0.0.0.0:9101", "0.0.0.0 means every local address"),
            ("[::]:9101", ":: means every local address"),
            ("224.0.0.1:9101", "multicast"),
            ("255.255.255.255:9101", "broadcast"),
            ("127.0.0.1", "not an IP:port address"),
            ("[::1:9101", "not an IP:port address"),
        ] {
            let add = Write::AddBackend {
                pool: "web".into(),
                address: address.into(),
                weight: 1,
            };
            let said = error(&add);
            assert!(
                said.starts_with("address: ") && said.contains(reason),
                "{address}: {said}"
            );
        }
        // One stored before these rules can still be removed.
        assert!(
            check(&Write::RemoveBackend {
                pool: "web".into(),
                address: "127.0.0.1:0".into()
            })
            .is_ok()
        );
    }
}
