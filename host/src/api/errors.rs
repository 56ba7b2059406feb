//! The API's one error type: every refusal becomes an `application/problem+json` body with `type, title, status,
//! detail, code, error` (`error` repeats `detail` for existing clients), plus `field` when one is to blame. Domain
//! errors map here and nowhere else; 5xx bodies are opaque. Each refusal leaves its code and, for a server error,
//! its cause on the response, where the access log (`access.rs`) logs it once with the request's id.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::model::StoreError;
use crate::model::ValidationError;
use crate::scheduler::EngineError;

/// Media type of error bodies (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A refusal, as the client will see it (boxed: handlers return it in every `Result`, so it stays one pointer).
#[derive(Debug)]
pub struct ApiError(pub Box<Problem>);

/// The members of a problem body.
#[derive(Debug)]
pub struct Problem {
    /// The HTTP status.
    pub status: StatusCode,
    /// Machine-readable reason (`validation_error`, `lease_lost`, …).
    pub code: String,
    /// Human-readable detail, naming the field when one is to blame.
    pub detail: String,
    /// The offending field, when known.
    pub field: Option<String>,
    /// Extra members of the problem body (a denying policy's name and reason).
    pub extra: Map<String, Value>,
    /// `WWW-Authenticate` challenge of a 401.
    pub challenge: Option<String>,
    /// What went wrong on the server (logged, never sent).
    pub cause: Option<String>,
    /// Seconds after which a retry may succeed (`Retry-After`), for refusals that pass.
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// A refusal with this status, code and detail.
    pub fn new(status: StatusCode, code: impl Into<String>, detail: impl Into<String>) -> Self {
        ApiError(Box::new(Problem {
            status,
            code: code.into(),
            detail: detail.into(),
            field: None,
            extra: Map::new(),
            challenge: None,
            cause: None,
            retry_after: None,
        }))
    }

    /// The same refusal, telling the client when to try again (`Retry-After`, in seconds).
    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.0.retry_after = Some(seconds);
        self
    }

    /// The same refusal, naming `field`.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.0.field = Some(field.into());
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// The machine-readable code.
    pub fn code(&self) -> &str {
        &self.0.code
    }

    /// 400 naming the field.
    pub fn invalid(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        ValidationError::new(field, message.to_string()).into()
    }

    /// 404.
    pub fn not_found(code: &str, detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, code, detail)
    }

    /// 401 with a Bearer challenge.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let description = detail.replace(['"', '\\'], "'");
        let mut refusal = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail);
        refusal.0.challenge =
            Some(format!("Bearer realm=\"aragora-cp\", error=\"invalid_token\", error_description=\"{description}\""));
        refusal
    }

    /// 403: the caller may not do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 500: the cause is logged, the body says nothing about it.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "internal error (logged on the server)")
            .with_cause(cause)
    }

    /// The same refusal, with the server-side cause the log gives (a 5xx's body never does).
    pub fn with_cause(mut self, cause: impl std::fmt::Display) -> Self {
        self.0.cause = Some(cause.to_string());
        self
    }
}

impl From<ValidationError> for ApiError {
    fn from(error: ValidationError) -> Self {
        let (status, code) = if error.too_large {
            (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
        } else {
            (StatusCode::BAD_REQUEST, "validation_error")
        };
        ApiError::new(status, code, error.to_string()).with_field(error.field)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::AgentNotFound(_) => ApiError::not_found("agent_not_found", error.to_string()),
            StoreError::PluginNotFound(_) => ApiError::not_found("plugin_not_found", error.to_string()),
            StoreError::TaskNotFound(_) => ApiError::not_found("task_not_found", error.to_string()),
            StoreError::Conflict { code, message } => ApiError::new(StatusCode::CONFLICT, code, message),
            StoreError::TooManySignatures(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too_many_signatures", error.to_string())
            }
            StoreError::TooManyPending(_) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_pending_tasks", error.to_string())
                    .with_retry_after(1)
            }
            StoreError::Unavailable(cause) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the store is unavailable; the outcome of a write is unknown (retry with the same idempotency key)",
            )
            .with_cause(format!("store unavailable: {cause}"))
            .with_retry_after(1),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Invalid(invalid) => invalid.into(),
            EngineError::Store(store) => store.into(),
            EngineError::Denied(denied) => {
                let mut refusal = ApiError::new(
                    StatusCode::FORBIDDEN,
                    "policy_denied",
                    format!("policy {} denied the request: {}", denied.policy, denied.reason),
                );
                let extra = &mut refusal.0.extra;
                extra.insert("policy".into(), json!(denied.policy));
                extra.insert("reason".into(), json!(denied.reason));
                if let Some(id) = &denied.violation_id {
                    extra.insert("violation_id".into(), json!(id));
                }
                refusal
            }
            EngineError::TooManyWaiting(why) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_waiting_claims", why).with_retry_after(1)
            }
            EngineError::UnknownStrategy(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "unknown_strategy", error.to_string()).with_field("strategy")
            }
            EngineError::ScheduleNotFound(_) => ApiError::not_found("schedule_not_found", error.to_string()),
            EngineError::ChannelNotFound(_) => ApiError::not_found("channel_not_found", error.to_string()),
            EngineError::DeliveryNotFound(_) => ApiError::not_found("delivery_not_found", error.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = *self.0;
        problem.into_response()
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let refusal = super::access::Refusal {
            code: self.code.clone(),
            detail: self.detail.clone(),
            cause: self.cause.or_else(|| self.status.is_server_error().then(|| self.detail.clone())),
        };
        let mut body = Map::new();
        body.insert("type".into(), json!(format!("urn:aragora-cp:problem:{}", self.code)));
        body.insert("title".into(), json!(self.status.canonical_reason().unwrap_or("Error")));
        body.insert("status".into(), json!(self.status.as_u16()));
        body.insert("detail".into(), json!(self.detail));
        body.insert("code".into(), json!(self.code));
        body.insert("error".into(), json!(self.detail));
        if let Some(field) = &self.field {
            body.insert("field".into(), json!(field));
        }
        body.extend(self.extra);
        let mut response = (self.status, Value::Object(body).to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(challenge) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response.extensions_mut().insert(refusal);
        response
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
