//! The command line's REST client: JSON over HTTP with a bearer token, used by the client commands (`aragora-cp
//! agents|tasks|…`), the demo's driver and every simulated agent. A refused request keeps the server's problem
//! `code`, so callers can act on `lease_lost` or `policy_denied`. (The load generators of `bench` keep their own
//! lean calls: they time every request and parse only the fields they count.)

use std::time::Duration;

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::api::PREFIXES;

/// How a request went wrong.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server answered with an error status.
    #[error("{method} {path}: the server answered {status} {code}: {detail}")]
    Refused {
        /// The request's method.
        method: Method,
        /// The request's path under the API prefix.
        path: String,
        /// The HTTP status.
        status: StatusCode,
        /// The problem's `code` (`lease_lost`, `policy_denied`, …).
        code: String,
        /// The problem's `detail`.
        detail: String,
        /// The whole problem body (a policy denial adds `policy`, `reason`, `violation_id`).
        problem: Value,
    },
    /// No answer: the connection failed or timed out.
    #[error("{method} {path}: {source}")]
    Transport {
        /// The request's method.
        method: Method,
        /// The request's path under the API prefix.
        path: String,
        /// What reqwest reported.
        source: reqwest::Error,
    },
}

impl CallError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            CallError::Refused { status, .. } => Some(*status),
            CallError::Transport { .. } => None,
        }
    }

    /// The problem code of a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            CallError::Refused { code, .. } => Some(code),
            CallError::Transport { .. } => None,
        }
    }

    /// The problem body of a refusal (`Null` for a transport error).
    pub fn problem(&self) -> &Value {
        match self {
            CallError::Refused { problem, .. } => problem,
            CallError::Transport { .. } => &Value::Null,
        }
    }

    /// Whether a policy denied the request because the policy itself failed (a trap, or its deadline passed on a
    /// busy machine) and fails closed, rather than because of the request: worth sending again.
    pub fn policy_failed(&self) -> bool {
        self.code() == Some("policy_denied")
            && self.problem()["reason"].as_str().is_some_and(|reason| reason.starts_with("the policy failed"))
    }

    /// Whether the outcome is unknown and the request may be sent again (with the same idempotency key).
    pub fn retryable(&self) -> bool {
        match self {
            CallError::Refused { status, .. } => *status == StatusCode::SERVICE_UNAVAILABLE,
            CallError::Transport { .. } => true,
        }
    }
}

/// One caller of the API: a base URL and a token.
#[derive(Clone, Debug)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// A client of the server at `server` (`http://host:port`) acting with `token` (without one, requests carry no
    /// credentials). The timeout only guards against a server that went away: blocking claims and `?wait=` answer
    /// well within it.
    pub fn new(server: &str, token: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build()
            .context("building the HTTP client")?;
        Ok(Api { http, base: format!("{}{}", server.trim_end_matches('/'), PREFIXES[0]), token })
    }

    /// The same server with another token (connections are shared).
    pub fn with_token(&self, token: impl Into<String>) -> Self {
        Api { http: self.http.clone(), base: self.base.clone(), token: Some(token.into()) }
    }

    /// The full URL of `path` under the API prefix.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the token set, for callers that need the raw response (the event stream).
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// `GET path` of a stream (the event stream), with the token set. The client's timeout bounds whole requests and
    /// a stream has no end, so this request gets a year instead.
    pub fn stream(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(Method::GET, path).timeout(Duration::from_secs(365 * 24 * 3600))
    }

    /// Sends `body` (none for `None`) and returns the JSON answer.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, CallError> {
        let mut request = self.request(method.clone(), path);
        if let Some(body) = body {
            request = request.json(body);
        }
        let transport = |source| CallError::Transport { method: method.clone(), path: path.to_string(), source };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let text = response.text().await.map_err(transport)?;
        if status.is_success() {
            return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
        let problem: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Err(CallError::Refused {
            method,
            path: path.to_string(),
            status,
            code: problem["code"].as_str().unwrap_or("error").to_string(),
            detail: problem["detail"].as_str().map(str::to_string).unwrap_or(text),
            problem,
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value, CallError> {
        self.call(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CallError> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<Value, CallError> {
        self.call(Method::DELETE, path, None).await
    }

    /// `POST path` again while the outcome is unknown (503, no answer) or a policy failed rather than decided: safe
    /// only for bodies that carry an idempotency key, which is why every submit of the demo has one (DESIGN §4).
    pub async fn post_idempotent(&self, path: &str, body: &Value) -> Result<Value, CallError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.post(path, body).await {
                Err(error) if (error.retryable() || error.policy_failed()) && attempt < 5 => {
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                outcome => return outcome,
            }
        }
    }
}
