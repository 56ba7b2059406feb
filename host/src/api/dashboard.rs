//! The operators' dashboard at `/dashboard`: one framework-free page (`dashboard/index.html`, `app.js`,
//! `app.css`) compiled into the binary, so it works offline and matches the server it comes from. The page holds
//! no data and needs no token to load; everything it shows it reads from the API with the token the operator
//! pastes (kept in the tab's session storage), so the API's permissions are the dashboard's permissions.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// Where the dashboard is served.
pub const PATH: &str = "/dashboard";

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// Scripts and styles from this server only, no inline code, no framing: a pasted token is the page's one secret,
/// and nothing but our own script may read it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes (at the server's root, beside `/livez`).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(PATH, get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        // Relative, so a proxy that mounts the server under a prefix keeps it (the page's own links are relative).
        .route("/dashboard/", get(|| async { Redirect::permanent("../dashboard") }))
        .route("/dashboard/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/dashboard/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
}

/// One embedded file with the headers every dashboard answer carries. `no-cache` makes the browser ask again after
/// an upgrade rather than run an old script against a new API.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}
