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
use crate::coordinator::fleet_plugins::FleetPluginError;
use crate::model::{PluginAction, RolloutMode};
use crate::plugins::registry::PluginInfo;
use crate::plugins::rollout::ShadowFigures;

/// The plugin routes, relative to the API prefix.
pub fn routes(api: Prefixed<'_>) -> Prefixed<'_> {
    // Base64 in JSON makes a component a third larger.
    let upload_body_limit = api.max_component_bytes * 4 / 3 + 64 * 1024;
    api.route("/plugins", get(plugins_list))
        .route(
            "/plugins/{name}",
            get(plugins_get).put(plugins_upload).delete(plugins_delete).layer(DefaultBodyLimit::max(upload_body_limit)),
        )
        .route("/plugins/{name}/enable", post(plugins_enable))
        .route("/plugins/{name}/disable", post(plugins_disable))
        .route("/plugins/{name}/shadow", get(plugins_shadow).delete(plugins_rollback))
        .route("/plugins/{name}/promote", post(plugins_promote))
        .route("/plugins/{name}/rollback", post(plugins_rollback))
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
    let max = state.coordinator.max_component_bytes();
    if component.len() > max {
        let limit = format!("over the {} MiB limit (PLUGIN_MAX_COMPONENT_MIB)", max / (1024 * 1024));
        return Err(crate::model::ValidationError::too_large("component", limit).into());
    }
    match options.rollout()? {
        Some(mode) => state.coordinator.stage_plugin(&name, component, manifest, mode, &caller.sub).await?,
        None => state.coordinator.upload_plugin(&name, component, manifest, &caller.sub).await?,
    };
    Ok(Json(view(&state, &name).await?))
}

/// The query of `PUT /plugins/{name}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadOptions {
    /// Replacing a built-in must be asked for: a typo'd upload must not take over every task's routing.
    #[serde(default)]
    override_builtin: bool,
    /// `shadow`: stage the component beside the active version, seeing its inputs, deciding nothing; `canary`
    /// (with `canary=N`): deciding N % of decisions.
    #[serde(default)]
    mode: Option<String>,
    /// The canary's share of decisions, 1 to 100 (implies `mode=canary`).
    #[serde(default)]
    canary: Option<u32>,
}

impl UploadOptions {
    /// The rollout the query asks for; `None`: a plain upload that becomes the active version.
    fn rollout(&self) -> ApiResult<Option<RolloutMode>> {
        let percent = |canary: Option<u32>| match canary {
            Some(p @ 1..=100) => Ok(RolloutMode::Canary { percent: p as u8 }),
            Some(other) => Err(ApiError::invalid("canary", format!("{other} is not a percentage from 1 to 100"))),
            None => Err(ApiError::invalid("canary", "mode=canary needs canary=N, the percentage of decisions")),
        };
        match (self.mode.as_deref(), self.canary) {
            (None | Some("active"), None) => Ok(None),
            (Some("shadow"), None) => Ok(Some(RolloutMode::Shadow)),
            (None | Some("canary"), canary) => percent(canary).map(Some),
            (Some("shadow" | "active"), Some(_)) => {
                Err(ApiError::invalid("canary", "canary=N goes with mode=canary (or no mode), not this one"))
            }
            (Some(other), _) => Err(ApiError::invalid("mode", format!("{other:?}: use shadow or canary"))),
        }
    }
}

/// The parts of a `multipart/form-data` upload (`curl -F component=@x.wasm -F manifest=@x.toml`): the component,
/// and the manifest's TOML text if sent.
async fn multipart_upload(headers: &HeaderMap, body: Bytes) -> ApiResult<(Vec<u8>, Option<String>)> {
    let mut request = axum::extract::Request::new(axum::body::Body::from(body));
    *request.headers_mut() = headers.clone();
    // The body was read within the route's limit already; without this the parser applies axum's own default
    // (2 MiB) to the rebuilt request and refuses larger components as a malformed body.
    DefaultBodyLimit::disable().apply(&mut request);
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

/// `GET /plugins/{name}/shadow` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShadowReport {
    /// The plugin name.
    pub name: String,
    /// The shadow version's sha256.
    pub sha256: String,
    /// The active version's sha256.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_sha256: Option<String>,
    /// When the shadow was installed on this server (RFC 3339).
    pub since: String,
    /// The comparisons on this server (each server compares the decisions it makes).
    #[serde(flatten)]
    pub figures: ShadowFigures,
    /// The server reporting.
    pub server_id: String,
}

/// `GET /plugins/{name}/shadow`: how the shadow's answers compare with the active version's on this server.
#[utoipa::path(get, path = "/plugins/{name}/shadow", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    responses(
        (status = 200, description = "Agreements, disagreements (another agent, another verdict, an error), comparisons dropped, and the latest disagreements", body = ShadowReport),
        (status = 404, description = "The name has no shadow (`no_shadow`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:read"]), ("bearer" = ["controlplane:plugins"])))]
pub async fn plugins_shadow(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<ShadowReport>> {
    may_read(&caller)?;
    let info = view(&state, &name).await?;
    let shadow = info.rollout.filter(|r| r.mode == RolloutMode::Shadow);
    let (Some(shadow), Some(figures)) = (shadow, state.coordinator.shadow_figures(&name)) else {
        return Err(ApiError::not_found("no_shadow", format!("{name} has no shadow version on this server")));
    };
    Ok(Json(ShadowReport {
        name,
        sha256: shadow.candidate.sha256,
        active_sha256: info.active.map(|a| a.sha256),
        since: shadow.since,
        figures,
        server_id: info.server_id,
    }))
}

/// The body of `POST /plugins/{name}/promote` and `/rollback` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CandidateRequest {
    /// Only if the candidate is this version (so a promote never takes a candidate staged since the caller
    /// looked).
    #[serde(default)]
    pub sha256: Option<String>,
}

fn candidate_request(body: &Bytes) -> ApiResult<CandidateRequest> {
    let request: CandidateRequest =
        if body.iter().all(u8::is_ascii_whitespace) { CandidateRequest::default() } else { parse(body)? };
    if let Some(sha) = &request.sha256
        && !(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    {
        return Err(ApiError::invalid("sha256", "must be a component's sha256: 64 lower-case hex digits"));
    }
    Ok(request)
}

/// `POST /plugins/{name}/promote`: the candidate becomes the active version on every server, in one step.
#[utoipa::path(post, path = "/plugins/{name}/promote", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    request_body(content = Option<CandidateRequest>, description = "Optional: the candidate's sha256, to promote only that version"),
    responses(
        (status = 200, description = "The candidate is the fleet's upload (the active version); calls in flight finish on the version they started with", body = PluginInfo),
        (status = 409, description = "No candidate (`no_candidate`), or another one than `sha256` (`candidate_changed`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:plugins"])))]
pub async fn plugins_promote(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<PluginInfo>> {
    let request = candidate_request(&body)?;
    change(&state, &caller, &name, PluginAction::Promote { sha256: request.sha256 }).await
}

/// `POST /plugins/{name}/rollback` (and `DELETE /plugins/{name}/shadow`): drops the candidate on every server.
#[utoipa::path(post, path = "/plugins/{name}/rollback", tag = "plugins",
    params(("name" = String, Path, description = "The plugin's name")),
    request_body(content = Option<CandidateRequest>, description = "Optional: the candidate's sha256, to drop only that version"),
    responses(
        (status = 200, description = "The candidate is gone; the active version answers everything", body = PluginInfo),
        (status = 409, description = "No candidate (`no_candidate`), or another one than `sha256` (`candidate_changed`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:plugins"])))]
pub async fn plugins_rollback(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<PluginInfo>> {
    let request = candidate_request(&body)?;
    change(&state, &caller, &name, PluginAction::Rollback { sha256: request.sha256, reason: None }).await
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
