//! `/plugins`: what this server's plugin registry holds (strategies, policies, probes; built-in, folder and
//! uploaded), merged with the fleet's record of each name; and the fleet-wide changes: `PUT` an upload, `DELETE`
//! it, enable or disable a name. Changes are recorded in the store and applied by every server
//! (`coordinator::fleet_plugins`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Caller, Permission};
use super::errors::{ApiError, ApiResult};
use super::extract::{ApiQuery, is_json, parse};
use super::{ApiState, Prefixed};
use crate::coordinator::fleet_plugins::{FleetPluginError, MAX_UPLOAD_BYTES};
use crate::model::PluginAction;
use crate::plugins::registry::PluginInfo;

/// The plugin routes, relative to the API prefix.
pub fn routes(api: Prefixed<'_>) -> Prefixed<'_> {
    api.route("/plugins", get(plugins_list))
        .route(
            "/plugins/{name}",
            get(plugins_get)
                .put(plugins_upload)
                .delete(plugins_delete)
                // Base64 in JSON makes an 8 MiB component about 11 MiB of body.
                .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES * 4 / 3 + 64 * 1024)),
        )
        .route("/plugins/{name}/enable", post(plugins_enable))
        .route("/plugins/{name}/disable", post(plugins_disable))
}

/// Reading plugins takes `read` or `plugins`.
fn may_read(caller: &Caller) -> ApiResult<()> {
    caller.not_an_agent("read plugins")?;
    if caller.has(Permission::Plugins) { Ok(()) } else { caller.require(Permission::Read) }
}

/// Changing plugins takes `plugins`.
fn may_change(caller: &Caller) -> ApiResult<()> {
    caller.not_an_agent("change plugins")?;
    caller.require(Permission::Plugins)
}

/// A plugin name from the path: what a `NAME.wasm` file could be called.
fn plugin_name(raw: &str) -> ApiResult<String> {
    let valid = !raw.is_empty()
        && raw.len() <= 64
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !raw.starts_with('-');
    if valid {
        Ok(raw.to_string())
    } else {
        Err(ApiError::invalid("name", "a plugin name is 1 to 64 letters, digits, '_' or '-'"))
    }
}

impl From<FleetPluginError> for ApiError {
    fn from(error: FleetPluginError) -> Self {
        match error {
            FleetPluginError::BadManifest(detail) => ApiError::invalid("manifest", detail),
            FleetPluginError::ManifestRequired(detail) => {
                ApiError::new(StatusCode::BAD_REQUEST, "manifest_required", detail).with_field("manifest")
            }
            FleetPluginError::Rejected(load) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "plugin_rejected",
                format!("the component was rejected; the previous version keeps serving: {load}"),
            )
            .with_field("component"),
            FleetPluginError::UploadsDisabled => {
                ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "uploads_disabled", error.to_string())
            }
            FleetPluginError::Refused(detail) => ApiError::new(StatusCode::CONFLICT, "plugin_change_refused", detail),
            FleetPluginError::Store(store) => store.into(),
        }
    }
}

/// `GET /plugins` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginList {
    /// Every plugin name this server holds.
    pub plugins: Vec<PluginInfo>,
    /// How many (every list answer carries `total`, as Aragora's do).
    pub total: usize,
}

/// `GET /plugins` → `{"plugins": [...], "total"}`.
#[utoipa::path(get, path = "/plugins", tag = "plugins",
    responses((status = 200, description = "Strategies, policies and probes: active version, shadowed versions, last rejection, call counters, the fleet version applied", body = PluginList)),
    security(("bearer" = ["controlplane:read"]), ("bearer" = ["controlplane:plugins"])))]
pub async fn plugins_list(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<PluginList>> {
    may_read(&caller)?;
    let plugins = state.coordinator.plugin_list();
    Ok(Json(PluginList { total: plugins.len(), plugins }))
}

/// This server's view of `name` with the fleet's record, or 404 when neither knows it.
async fn view(state: &ApiState, name: &str) -> ApiResult<PluginInfo> {
    state
        .coordinator
        .plugin_info(name)
        .await?
        .ok_or_else(|| ApiError::not_found("plugin_not_found", format!("no plugin named {name:?}")))
}

/// `GET /plugins/{name}`.
#[utoipa::path(get, path = "/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses((status = 200, description = "This server's versions of the plugin, and the fleet's record with its history (who, when, sha256)", body = PluginInfo)),
    security(("bearer" = ["controlplane:read"]), ("bearer" = ["controlplane:plugins"])))]
pub async fn plugins_get(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<PluginInfo>> {
    may_read(&caller)?;
    Ok(Json(view(&state, &name).await?))
}

/// The JSON form of an upload, for a manifest to travel with the component.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadRequest {
    /// The component, base64 (standard alphabet, padded).
    component: String,
    /// The manifest (`NAME.toml` of a plugins folder), as TOML text.
    #[serde(default)]
    manifest: Option<String>,
}

/// The multipart form of an upload (for the OpenAPI document; the handler reads the parts itself).
#[derive(Debug, ToSchema)]
#[allow(dead_code, reason = "describes the multipart parts in the OpenAPI document")]
pub struct MultipartUpload {
    /// The component (`NAME.wasm`).
    #[schema(format = Binary, value_type = String)]
    component: Vec<u8>,
    /// The manifest (`NAME.toml`), as text.
    manifest: Option<String>,
}

/// `PUT /plugins/{name}`: validated here, then recorded for the fleet; every server loads it.
#[utoipa::path(put, path = "/plugins/{name}", tag = "plugins",
    params(
        ("name" = String, Path, description = "The plugin's name: 1 to 64 letters, digits, '_' or '-'"),
        ("override_builtin" = Option<bool>, Query, description = "Required (`true`) to replace a built-in plugin (`least_loaded`, `round_robin`, `random`, `heartbeat_probe`) on every server"),
    ),
    request_body(description = "The component itself (`application/wasm` or `application/octet-stream`), multipart/form-data with the parts `component` and `manifest` (the NAME.toml text), or JSON with the component in base64 and an optional manifest. Without a manifest, an upload replacing a version that runs with one (labels, config, order, …) is refused (`manifest_required`)",
        content(
            (Vec<u8> = "application/wasm"),
            (UploadRequest = "application/json"),
            (MultipartUpload = "multipart/form-data"),
        )),
    responses(
        (status = 200, description = "Validated, recorded and active on this server; the other servers load it from the store", body = PluginInfo),
        (status = 400, description = "The component was rejected (`plugin_rejected`: not a component, wrong world, bad import, failing init or trial call) or the manifest does not parse; the previous version keeps serving", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
        (status = 405, description = "Uploads are disabled (`ARAGORA_CONTROL_PLANE_POLICY_SOURCE=inprocess`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The name is a built-in's and `override_builtin=true` was not given (`builtin_override`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:plugins"])))]
pub async fn plugins_upload(
    State(state): State<ApiState>,
    caller: Caller,
    Path(raw_name): Path<String>,
    ApiQuery(options): ApiQuery<UploadOptions>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<PluginInfo>> {
    may_change(&caller)?;
    let name = plugin_name(&raw_name)?;
    if crate::plugins::builtin::is_builtin(&name) && !options.override_builtin {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "builtin_override",
            format!(
                "{name} is a built-in plugin: add ?override_builtin=true to replace it on every server \
                 (DELETE /plugins/{name} removes the replacement)"
            ),
        ));
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let (component, manifest) = if is_json(content_type) {
        use base64::Engine as _;
        let upload: UploadRequest = parse(&body)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(upload.component.trim())
            .map_err(|e| ApiError::invalid("component", format!("not base64: {e}")))?;
        (bytes, upload.manifest)
    } else if essence == "multipart/form-data" {
        multipart_upload(&headers, body).await?
    } else if essence == "application/wasm" || essence == "application/octet-stream" {
        (body.to_vec(), None)
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type {content_type:?}: send application/wasm (the component), multipart/form-data (parts \
                 `component` and `manifest`) or application/json"
            ),
        ));
    };
    if component.is_empty() {
        return Err(ApiError::invalid("component", "is empty"));
    }
    if component.len() > MAX_UPLOAD_BYTES {
        return Err(crate::model::ValidationError::too_large("component", "over the 8 MiB upload limit").into());
    }
    state.coordinator.upload_plugin(&name, component, manifest, &caller.sub).await?;
    Ok(Json(view(&state, &name).await?))
}

/// The query of `PUT /plugins/{name}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadOptions {
    /// Replacing a built-in must be asked for: a typo'd upload must not take over every task's routing.
    #[serde(default)]
    override_builtin: bool,
}

/// The parts of a `multipart/form-data` upload (`curl -F component=@x.wasm -F manifest=@x.toml`): the component,
/// and the manifest's TOML text if sent.
async fn multipart_upload(headers: &HeaderMap, body: Bytes) -> ApiResult<(Vec<u8>, Option<String>)> {
    let mut request = axum::extract::Request::new(axum::body::Body::from(body));
    *request.headers_mut() = headers.clone();
    let malformed = |e: &dyn std::fmt::Display| ApiError::invalid("body", format!("malformed multipart body: {e}"));
    let mut parts = Multipart::from_request(request, &()).await.map_err(|e| malformed(&e))?;
    let (mut component, mut manifest) = (None, None);
    while let Some(part) = parts.next_field().await.map_err(|e| malformed(&e))? {
        match part.name().unwrap_or_default() {
            "component" => component = Some(part.bytes().await.map_err(|e| malformed(&e))?.to_vec()),
            "manifest" => {
                let text = part.text().await.map_err(|e| ApiError::invalid("manifest", format!("not text: {e}")))?;
                manifest = Some(text);
            }
            other => {
                return Err(ApiError::invalid(other, "an upload takes the parts `component` and `manifest` only"));
            }
        }
    }
    let component = component.ok_or_else(|| ApiError::invalid("component", "missing part `component`"))?;
    Ok((component, manifest))
}

async fn change(
    state: &ApiState,
    caller: &Caller,
    raw_name: &str,
    action: PluginAction,
) -> ApiResult<Json<PluginInfo>> {
    may_change(caller)?;
    let name = plugin_name(raw_name)
        .map_err(|_| ApiError::not_found("plugin_not_found", format!("no plugin named {raw_name:?}")))?;
    state.coordinator.change_plugin(&name, action, &caller.sub).await?;
    Ok(Json(view(state, &name).await?))
}

/// `DELETE /plugins/{name}`: removes the fleet's upload; the file or built-in of the name, if any, answers again.
#[utoipa::path(delete, path = "/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses(
        (status = 200, description = "The upload is removed fleet-wide", body = PluginInfo),
        (status = 405, description = "Uploads are disabled (`ARAGORA_CONTROL_PLANE_POLICY_SOURCE=inprocess`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:plugins"])))]
pub async fn plugins_delete(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<PluginInfo>> {
    change(&state, &caller, &name, PluginAction::Delete).await
}

/// `POST /plugins/{name}/enable`.
#[utoipa::path(post, path = "/plugins/{name}/enable", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses((status = 200, description = "The name answers calls again on every server", body = PluginInfo)),
    security(("bearer" = ["controlplane:plugins"])))]
pub async fn plugins_enable(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<PluginInfo>> {
    change(&state, &caller, &name, PluginAction::Enable).await
}

/// `POST /plugins/{name}/disable`.
#[utoipa::path(post, path = "/plugins/{name}/disable", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses(
        (status = 200, description = "No version of the name answers calls on any server: a strategy is unknown, a policy or probe skipped", body = PluginInfo),
        (status = 409, description = "The name is `DEFAULT_STRATEGY` (`plugin_change_refused`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:plugins"])))]
pub async fn plugins_disable(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<PluginInfo>> {
    change(&state, &caller, &name, PluginAction::Disable).await
}
