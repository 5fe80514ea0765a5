//! `ballast route add|list|remove|move`: route tables through the admin API. A table is made by
//! its first route and goes with its last; managed LBs serve one with `--routes TABLE`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Result, bail};
use ballast_config::route::{OnRedisError, RateScope, Route};
use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{Value, json};

use super::admin_client::{ControlFlags, segment};
use super::pool::text;
use ballast_bench::table::Table;

#[derive(Debug, Args)]
pub(crate) struct RouteCommand {
    #[command(flatten)]
    control: ControlFlags,
    #[command(subcommand)]
    action: RouteAction,
}

#[derive(Debug, Subcommand)]
enum RouteAction {
    /// Add a route: what it matches (every match given must hold) and one action.
    Add {
        /// The route table (made by its first route).
        table: String,
        /// Where in the table (0 is tried first); unset: at the end.
        #[arg(long)]
        position: Option<u32>,
        #[command(flatten)]
        route: Box<RouteArgs>,
    },
    /// List a table's routes in the order they are tried.
    List {
        /// The route table.
        table: String,
    },
    /// Remove the route at a position.
    Remove {
        /// The route table.
        table: String,
        /// The route's position.
        #[arg(long)]
        position: u32,
    },
    /// Move a route within its table.
    Move {
        /// The route table.
        table: String,
        /// The route's position now.
        #[arg(long)]
        from: u32,
        /// Its position once moved (the routes between shift by one).
        #[arg(long)]
        to: u32,
    },
}

/// A route as flags: the same fields as a route table's `[[routes]]` in a file.
#[derive(Debug, Args)]
struct RouteArgs {
    /// Host, exact or `*.example.com` (case-insensitive, port ignored).
    #[arg(long)]
    host: Option<String>,
    /// The path, exactly.
    #[arg(long)]
    path: Option<String>,
    /// The path starts with these whole segments (`/api` takes `/api/x`, not `/apix`).
    #[arg(long)]
    path_prefix: Option<String>,
    /// The method, e.g. GET.
    #[arg(long)]
    method: Option<String>,
    /// `NAME=VALUE` (the header has that value) or `NAME` (it is present).
    #[arg(long)]
    header: Option<String>,
    /// Send matching requests to this pool.
    #[arg(long)]
    pool: Option<String>,
    /// Redirect to this URL template (`{scheme}`, `{host}`, `{path}`), e.g. https://{host}{path}.
    #[arg(long)]
    redirect: Option<String>,
    /// With --redirect: 301, 302 (default), 307 or 308. Alone: answer with this status.
    #[arg(long)]
    status: Option<u16>,
    /// With --pool: extra tries for replayable requests, over the pool's.
    #[arg(long)]
    retries: Option<u32>,
    /// With --pool: connecting to a backend (e.g. 250ms), over the pool's.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    connect_timeout: Option<Duration>,
    /// With --pool: a backend starting its response (e.g. 2s), over the pool's.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    response_timeout: Option<Duration>,
    /// At most this many requests per client per second, minute or hour (e.g. 100/s, 6000/m);
    /// past it, 429 with Retry-After.
    #[arg(long, value_name = "N/UNIT")]
    rate: Option<String>,
    /// With --rate: requests a client may send at once above it [default: the rate's count].
    #[arg(long, value_name = "N")]
    burst: Option<u32>,
    /// With --rate: what tells clients apart: client_ip, header:NAME, cookie:NAME or path
    /// [default: client_ip].
    #[arg(long, value_name = "SOURCE")]
    rate_key: Option<String>,
    /// With --rate: counted by each LB (local) or over the LBs' Redis nodes (fleet)
    /// [default: local].
    #[arg(long, value_name = "SCOPE")]
    rate_scope: Option<RateScope>,
    /// With --rate-scope fleet: allow or deny a request Redis gives no verdict for in time
    /// [default: allow].
    #[arg(long, value_name = "POLICY")]
    on_redis_error: Option<OnRedisError>,
}

impl RouteArgs {
    fn route(&self) -> Route {
        Route {
            host: self.host.clone(),
            path: self.path.clone(),
            path_prefix: self.path_prefix.clone(),
            method: self.method.clone(),
            header: self.header.clone(),
            pool: self.pool.clone(),
            redirect: self.redirect.clone(),
            status: self.status,
            retries: self.retries,
            connect_timeout_ms: self.connect_timeout.map(millis),
            response_timeout_ms: self.response_timeout.map(millis),
            rate: self.rate.clone(),
            burst: self.burst,
            rate_key: self.rate_key.clone(),
            rate_scope: self.rate_scope,
            on_redis_error: self.on_redis_error,
        }
    }
}

/// Whole milliseconds, at least 1 (a timeout of less is not one).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl RouteCommand {
    pub(crate) fn run(self) -> Result<()> {
        let control = &self.control;
        let answer = match &self.action {
            RouteAction::Add {
                table,
                position,
                route,
            } => {
                let route = route.route();
                // Said here with the flags' names; the API checks it all again.
                if let Err(invalid) = route.check_shape() {
                    bail!("--{}: {}", invalid.field.replace('_', "-"), invalid.reason);
                }
                let at = position.map_or_else(String::new, |p| format!("?position={p}"));
                control.call(
                    Method::POST,
                    &format!("/v1/routes/{}{at}", segment(table)),
                    Some(json!(route)),
                )?
            }
            RouteAction::List { table } => {
                control.call(Method::GET, &format!("/v1/routes/{}", segment(table)), None)?
            }
            RouteAction::Remove { table, position } => control.call(
                Method::DELETE,
                &format!("/v1/routes/{}/{position}", segment(table)),
                None,
            )?,
            RouteAction::Move { table, from, to } => control.call(
                Method::PUT,
                &format!("/v1/routes/{}/{from}/position", segment(table)),
                Some(json!({ "to": to })),
            )?,
        };
        let mut out = std::io::stdout().lock();
        if control.json {
            writeln!(out, "{answer}")?;
        } else if let RouteAction::List { .. } = self.action {
            routes_table(&answer["routes"], &mut out)?;
        } else {
            writeln!(out, "revision {}", answer["revision"])?;
        }
        Ok(())
    }
}

/// A table of routes from the API's JSON list, in the order they are tried.
fn routes_table(routes: &Value, out: &mut impl Write) -> Result<()> {
    let mut table = Table::new(&["#", "host", "path", "method", "header", "action"]);
    for (position, route) in routes.as_array().map_or(&[][..], |r| r).iter().enumerate() {
        let path = match (&route["path"], &route["path_prefix"]) {
            (Value::String(exact), _) => exact.clone(),
            (_, Value::String(prefix)) => format!("{prefix}/…"),
            _ => "-".to_owned(),
        };
        let action = match (&route["pool"], &route["redirect"], &route["status"]) {
            (Value::String(pool), _, _) => format!("pool {pool}"),
            (_, Value::String(url), status) => {
                format!("redirect {} {url}", status.as_u64().unwrap_or(302))
            }
            (_, _, status) => format!("status {}", status.as_u64().unwrap_or(404)),
        };
        table.row(vec![
            position.to_string(),
            text(&route["host"]),
            path,
            text(&route["method"]),
            text(&route["header"]),
            action,
        ]);
    }
    table.write(out)?;
    Ok(())
}
