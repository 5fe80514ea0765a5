//! The one client of the admin API: the CLI's `pool`/`backend`/`fleet` commands and the
//! benchmarks call the API through it, so the URL rules, the token and the reading of the API's
//! error shape (`{"error": {"field", "reason"}}`) exist once.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

/// A call to the admin API that did not succeed.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the admin API needs its token: give --token or set BALLAST_TOKEN")]
    NoToken,
    #[error("{0}: not a URL")]
    BadUrl(String),
    #[error("cannot reach the admin API at {base}: {source}")]
    Unreachable {
        base: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("reading the admin API's answer: {0}")]
    Read(#[from] hyper::Error),
    /// The API answered with an error status; `field` names the input it refused.
    #[error("{status}: {}{reason}", field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Api {
        status: StatusCode,
        field: Option<String>,
        reason: String,
    },
}

/// What may stand unescaped in a path segment (an address's `:` and `.` included).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b':');

/// One path segment, escaped (IPv6 addresses carry brackets).
pub fn segment(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

/// A client of one admin API.
#[derive(Debug, Clone)]
pub struct Client {
    http: HttpClient<HttpConnector, Full<Bytes>>,
    base: String,
    token: Option<String>,
}

impl Client {
    /// `base` is the API's URL (`http://127.0.0.1:9000`); without a token only `/healthz`
    /// and the like answer.
    pub fn new(base: &str, token: Option<&str>) -> Self {
        Self {
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
            base: base.trim_end_matches('/').to_owned(),
            token: token.map(str::to_owned),
        }
    }

    /// Sends one request to `target` (a path on the API, or a whole URL such as an LB's admin
    /// endpoint) and answers its status and body, whatever the status.
    pub async fn send(
        &self,
        method: Method,
        target: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Bytes), ClientError> {
        let token = self.token.as_deref().ok_or(ClientError::NoToken)?;
        let url = if target.starts_with("http://") || target.starts_with("https://") {
            target.to_owned()
        } else {
            format!("{}{target}", self.base)
        };
        let request = Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(
                body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string())),
            ))
            .map_err(|_| ClientError::BadUrl(self.base.clone()))?;
        let response =
            self.http
                .request(request)
                .await
                .map_err(|source| ClientError::Unreachable {
                    base: self.base.clone(),
                    source,
                })?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// One call whose JSON answer is wanted; an error status becomes [`ClientError::Api`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let (status, bytes) = self.send(method, path, body).await?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let error = &value["error"];
            return Err(ClientError::Api {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                field: error["field"].as_str().map(str::to_owned),
                reason: error["reason"]
                    .as_str()
                    .unwrap_or("no reason given")
                    .to_owned(),
            });
        }
        Ok(value)
    }

    /// A write: the configuration revision it made.
    pub async fn write(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<u64, ClientError> {
        let answer = self.call(method, path, Some(body)).await?;
        answer["revision"].as_u64().ok_or_else(|| ClientError::Api {
            status: StatusCode::OK,
            field: None,
            reason: format!("no revision in the answer: {answer}"),
        })
    }
}
