//! `ballast backend add|remove|drain|enable|disable|set-weight|list`: backends through the admin
//! API.

use std::io::Write;

use anyhow::Result;
use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{Value, json};

use super::admin_client::{ControlFlags, segment};
use super::pool::text;
use ballast_bench::table::Table;

#[derive(Debug, Args)]
pub(crate) struct BackendCommand {
    #[command(flatten)]
    control: ControlFlags,
    #[command(subcommand)]
    action: BackendAction,
}

#[derive(Debug, Subcommand)]
enum BackendAction {
    /// Add a backend to a pool.
    Add {
        /// The pool.
        pool: String,
        /// IP:port.
        address: String,
        /// Its relative share of new traffic.
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Remove a backend.
    Remove {
        /// The pool.
        pool: String,
        /// IP:port.
        address: String,
    },
    /// Stop sending new requests to a backend; those in flight finish.
    Drain {
        /// The pool.
        pool: String,
        /// IP:port.
        address: String,
    },
    /// Send new requests to a backend again.
    Enable {
        /// The pool.
        pool: String,
        /// IP:port.
        address: String,
    },
    /// Take a backend out entirely.
    Disable {
        /// The pool.
        pool: String,
        /// IP:port.
        address: String,
    },
    /// Change a backend's weight.
    SetWeight {
        /// The pool.
        pool: String,
        /// IP:port.
        address: String,
        /// Its new relative share of new traffic (0 takes it out of rotation).
        #[arg(long)]
        weight: u32,
    },
    /// List a pool's backends.
    List {
        /// The pool.
        pool: String,
    },
}

impl BackendCommand {
    pub(crate) fn run(self) -> Result<()> {
        let control = &self.control;
        let at = |pool: &str, address: &str, tail: &str| {
            format!(
                "/v1/pools/{}/backends/{}{tail}",
                segment(pool),
                segment(address)
            )
        };
        let state = |pool: &str, address: &str, state: &str| {
            control.call(
                Method::PUT,
                &at(pool, address, "/state"),
                Some(json!({ "state": state })),
            )
        };
        let answer = match &self.action {
            BackendAction::Add {
                pool,
                address,
                weight,
            } => control.call(
                Method::POST,
                &format!("/v1/pools/{}/backends", segment(pool)),
                Some(json!({ "address": address, "weight": weight })),
            )?,
            BackendAction::Remove { pool, address } => {
                control.call(Method::DELETE, &at(pool, address, ""), None)?
            }
            BackendAction::Drain { pool, address } => state(pool, address, "draining")?,
            BackendAction::Enable { pool, address } => state(pool, address, "active")?,
            BackendAction::Disable { pool, address } => state(pool, address, "disabled")?,
            BackendAction::SetWeight {
                pool,
                address,
                weight,
            } => control.call(
                Method::PUT,
                &at(pool, address, "/weight"),
                Some(json!({ "weight": weight })),
            )?,
            BackendAction::List { pool } => control.call(
                Method::GET,
                &format!("/v1/pools/{}/backends", segment(pool)),
                None,
            )?,
        };
        let mut out = std::io::stdout().lock();
        if control.json {
            writeln!(out, "{answer}")?;
        } else if let BackendAction::List { .. } = self.action {
            backends_table(&answer, &mut out)?;
        } else {
            writeln!(out, "revision {}", answer["revision"])?;
        }
        Ok(())
    }
}

/// A table of backends from the API's JSON list.
pub(crate) fn backends_table(backends: &Value, out: &mut impl Write) -> Result<()> {
    let mut table = Table::new(&["backend", "weight", "state", "health", "phi", "why"]);
    for backend in backends.as_array().map_or(&[][..], |b| b) {
        table.row(vec![
            text(&backend["address"]),
            text(&backend["weight"]),
            text(&backend["admin_state"]),
            text(&backend["health"]),
            backend["phi"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |phi| format!("{phi:.1}")),
            text(&backend["health_reason"]),
        ]);
    }
    table.write(out)?;
    Ok(())
}
