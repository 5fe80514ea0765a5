//! Where the admin API is and its token, for `ballast pool …`, `backend …` and `fleet …` (flags
//! or `BALLAST_CONTROL` / `BALLAST_TOKEN`); each command makes one call through
//! [`ballast_control::client`].

use anyhow::{Context, Result};
use ballast_control::client::Client;
use clap::Args;
use hyper::Method;
use serde_json::Value;

/// Where the admin API is, and the token for it.
#[derive(Debug, Clone, Args)]
pub(crate) struct ControlFlags {
    /// The admin API's base URL.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "BALLAST_CONTROL",
        default_value = "http://127.0.0.1:9000"
    )]
    control: String,
    /// The admin API's bearer token.
    #[arg(long, global = true, env = "BALLAST_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

pub(crate) use ballast_control::client::segment;

impl ControlFlags {
    /// Sends one request and returns the JSON answer, or the API's error as an error.
    pub(crate) fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        let client = Client::new(&self.control, self.token.as_deref());
        Ok(runtime.block_on(client.call(method, path, body.as_ref()))?)
    }
}
