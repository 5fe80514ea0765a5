//! The client side of the admin API, for `ballast pool …` and `ballast backend …`: where the API
//! is and the token (flags or `BALLAST_CONTROL` / `BALLAST_TOKEN`), one JSON request per
//! command, and errors that say what the API said.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
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

/// What may stand unescaped in a path segment (an address's `:` and `.` included).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b':');

/// One path segment, escaped (IPv6 addresses carry brackets).
pub(crate) fn segment(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

impl ControlFlags {
    /// Sends one request and returns the JSON answer, or the API's error as an error.
    pub(crate) fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        runtime.block_on(self.send(method, path, body))
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let Some(token) = &self.token else {
            bail!("the admin API needs its token: give --token or set BALLAST_TOKEN");
        };
        let url = format!("{}{path}", self.control.trim_end_matches('/'));
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let request = Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(
                body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string())),
            ))
            .with_context(|| format!("--control {}: not a URL", self.control))?;
        let response = client
            .request(request)
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.control))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .context("reading the admin API's answer")?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let error = &value["error"];
            let reason = error["reason"].as_str().unwrap_or("no reason given");
            match error["field"].as_str() {
                Some(field) => bail!("{status}: {field}: {reason}"),
                None => bail!("{status}: {reason}"),
            }
        }
        Ok(value)
    }
}
