//! Extractors that answer a client's mistake in our error format: `ApiJson` (JSON bodies, with the leniency
//! existing clients need: a POST with no body is `{}`) and `ApiQuery` (query strings). Axum's own extractors answer
//! in plain text, so handlers never use them for bodies or queries.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::errors::ApiError;
use crate::model::ValidationError;

/// A JSON body deserialized into `T`. No body at all (whatever the Content-Type) is `{}`; a Content-Type other
/// than JSON is 415; malformed JSON, a missing or unknown field is 400 naming the field; a body over
/// `MAX_BODY_BYTES` is 413.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = request.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("?").to_owned());
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ValidationError::too_large("body", "the request body is over the MAX_BODY_BYTES limit").into()
            } else {
                ApiError::invalid("body", rejection.body_text())
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return parse(b"{}").map(ApiJson);
        }
        if let Some(content_type) = content_type
            && !is_json(&content_type)
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("Content-Type {content_type:?} is not JSON: send application/json"),
            ));
        }
        parse(&bytes).map(ApiJson)
    }
}

pub(super) fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Deserializes a body, naming the field at fault. Bodies are parsed plainly first: tracking the path costs a
/// tenth of a submit, and only a refused body needs it, so that one is parsed again with the path.
pub(super) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match serde_json::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(_) => parse_naming_the_field(bytes),
    }
}

fn parse_naming_the_field<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = inner.to_string();
        let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(head, _)| head).to_string();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::invalid("body", format!("malformed JSON: {message}"));
        }
        let named = ["unknown field `", "missing field `"]
            .iter()
            .find_map(|prefix| message.strip_prefix(prefix))
            .and_then(|rest| rest.split('`').next());
        let field = match (named, path.as_str()) {
            (Some(name), "." | "") => name.to_string(),
            (Some(name), parent) if !parent.ends_with(name) => format!("{parent}.{name}"),
            (_, "." | "") => "body".to_string(),
            (_, path) => path.to_string(),
        };
        ApiError::invalid(field, message)
    })?;
    deserializer.end().map_err(|e| ApiError::invalid("body", format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// A page size from the query: `default` when absent, else a number from 1 to `max` (400 naming `limit` otherwise).
pub fn page_limit(raw: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    let expected = format!("a number from 1 to {max}");
    let limit = query_param::<usize>("limit", raw, &expected)?.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("must be {expected}")));
    }
    Ok(limit)
}

/// A query string deserialized into `T`, refused as 400 in our format.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|rejection| ApiError::invalid("query", rejection.body_text()))
    }
}

/// Parses an optional query parameter, naming it on failure.
pub fn query_param<T: std::str::FromStr>(name: &str, raw: Option<&str>, expected: &str) -> Result<Option<T>, ApiError> {
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| ApiError::invalid(name, format!("must be {expected}"))),
    }
}

/// Items in one page of a list paged by id, unless `limit` says otherwise, and the most it may say.
const DEFAULT_PAGE: usize = 1_000;
const MAX_PAGE: usize = 10_000;

/// `limit` and `cursor` of a list paged by id (`GET /agents`, `GET /health`).
#[derive(Debug, Default, serde::Deserialize)]
pub struct IdPaging {
    limit: Option<String>,
    cursor: Option<String>,
}

/// One page of `items`, which come sorted by `id`: those after the cursor, at most `limit` (1 to 10000, default
/// 1000), and the cursor of the next page when more follow (the last id of this one).
pub fn page_by_id<T>(
    items: impl IntoIterator<Item = T>,
    id: impl Fn(&T) -> &str,
    paging: &IdPaging,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let limit = page_limit(paging.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)?;
    let after = paging.cursor.as_deref().filter(|c| !c.is_empty());
    let mut page: Vec<T> =
        items.into_iter().skip_while(|item| after.is_some_and(|after| id(item) <= after)).take(limit + 1).collect();
    let next_cursor = (page.len() > limit).then(|| {
        page.truncate(limit);
        page.last().map(|item| id(item).to_string()).unwrap_or_default()
    });
    Ok((page, next_cursor))
}
