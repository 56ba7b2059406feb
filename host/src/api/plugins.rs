//! `/plugins`: what the plugin registry holds (strategies, policies, probes; built-in and loaded), read-only here.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;

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

/// `GET /plugins` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginList {
    /// Every plugin name this server holds.
    pub plugins: Vec<PluginInfo>,
}

/// `GET /plugins` → `{"plugins": [...]}`.
#[utoipa::path(get, path = "/plugins", tag = "plugins",
    responses((status = 200, description = "Strategies, policies and probes: active version, shadowed versions, last rejection, call counters", body = PluginList)),
    security(("bearer" = ["controlplane:read"]), ("bearer" = ["controlplane:plugins"])))]
pub async fn plugins_list(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<PluginList>> {
    may_read(&caller)?;
    Ok(Json(PluginList { plugins: state.coordinator.plugins().list() }))
}

/// `GET /plugins/{name}`.
#[utoipa::path(get, path = "/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses((status = 200, description = "One plugin", body = PluginInfo)),
    security(("bearer" = ["controlplane:read"]), ("bearer" = ["controlplane:plugins"])))]
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
