//! `/plugins`: what the plugin registry holds (strategies, policies, probes; built-in and loaded), read-only here.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use serde_json::{Value, json};

use super::ApiState;
use super::auth::{Caller, Permission};
use super::errors::{ApiError, ApiResult};
use crate::plugins::registry::PluginInfo;

/// The plugin routes, relative to the API prefix.
pub fn routes() -> Router<ApiState> {
    Router::new().route("/plugins", get(plugins_list)).route("/plugins/{name}", get(plugins_get))
}

/// Reading plugins takes `read` or `plugins`.
fn may_read(caller: &Caller) -> ApiResult<()> {
    caller.not_an_agent("read plugins")?;
    if caller.has(Permission::Plugins) { Ok(()) } else { caller.require(Permission::Read) }
}

/// `GET /plugins` → `{"plugins": [...]}`.
pub async fn plugins_list(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<Value>> {
    may_read(&caller)?;
    Ok(Json(json!({"plugins": state.coordinator.plugins().list()})))
}

/// `GET /plugins/{name}`.
pub async fn plugins_get(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<PluginInfo>> {
    may_read(&caller)?;
    state
        .coordinator
        .plugins()
        .info(&name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("plugin_not_found", format!("no plugin named {name:?}")))
}
