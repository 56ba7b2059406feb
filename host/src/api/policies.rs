//! `/policies`: every policy this server runs, rule sets and code alike, and `POST /policies`, which installs an
//! Aragora-style rule set without a compiler: it becomes an upload of the built-in `rules_policy` component with the
//! rules as its config (`plugins::rules`), recorded for the fleet like any `PUT /plugins/{name}`, hot on every
//! server, listed in `/plugins`, and enabled, disabled or deleted there.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::audit::AuditResource;
use super::auth::{Caller, Permission};
use super::errors::{ApiError, ApiResult};
use super::extract::ApiJson;
use super::{ApiState, Prefixed};
use crate::plugins::PluginKind;
use crate::plugins::registry::{PluginInfo, PluginStatus};
use crate::plugins::rules::{RuleSet, is_rule_policy};

/// The routes, relative to the API prefix.
pub fn routes(api: Prefixed<'_>) -> Prefixed<'_> {
    api.route("/policies", get(policies_list).post(policies_create))
}

/// One policy of `GET /policies`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyView {
    /// Its name (the plugin's), also its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// `rules` (a rule set run by `rules_policy`) or `code` (a policy component).
    #[serde(rename = "type")]
    pub policy_type: &'static str,
    /// Whether it answers calls (`active`), is disabled fleet-wide, or has no loadable version.
    pub status: PluginStatus,
    /// Evaluation order among policies (ascending).
    pub order: i64,
    /// The rule set, for `rules` policies; a code policy's manifest config otherwise.
    #[schema(value_type = Object)]
    pub config: Value,
    /// sha256 of the running component.
    pub sha256: String,
    /// Where the running version came from (`upload`, `file`, `builtin`).
    pub source: String,
    /// Calls on this server since it started (denials and warnings are in `GET /policies/violations`).
    pub calls: u64,
    /// Calls that produced no answer (the policy's `on_error` decided instead).
    pub failures: u64,
}

impl PolicyView {
    /// The view of a plugin, when it is a policy with a version loaded.
    fn of(info: &PluginInfo) -> Option<PolicyView> {
        let version = info.active.as_ref().or(info.shadowed.first())?;
        if version.kind != PluginKind::Policy {
            return None;
        }
        Some(PolicyView {
            id: info.name.clone(),
            name: info.name.clone(),
            policy_type: if is_rule_policy(&version.sha256) { "rules" } else { "code" },
            status: info.status,
            order: version.order,
            config: version.config.clone(),
            sha256: version.sha256.clone(),
            source: version.source.to_string(),
            calls: info.totals.calls,
            failures: info.totals.failures,
        })
    }
}

/// `GET /policies` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyList {
    /// Every policy, in evaluation order.
    pub policies: Vec<PolicyView>,
    /// How many.
    pub total: usize,
}

/// `GET /policies` → every policy this server runs, rule sets and code, in evaluation order.
#[utoipa::path(get, path = "/policies", tag = "plugins",
    responses((status = 200, description = "Rule sets and code policies together", body = PolicyList)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn policies_list(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<PolicyList>> {
    caller.require(Permission::Read)?;
    let mut policies: Vec<PolicyView> = state.coordinator.plugin_list().iter().filter_map(PolicyView::of).collect();
    policies.sort_by(|a, b| a.order.cmp(&b.order).then_with(|| a.name.cmp(&b.name)));
    Ok(Json(PolicyList { total: policies.len(), policies }))
}

/// `POST /policies` with an Aragora-style rule set → 201 with the installed policy. The rules are checked here and
/// run by the built-in `rules_policy` component on every server; a name already in use is refused
/// (`policy_exists`; `PUT /plugins/{name}` replaces, `DELETE /plugins/{name}` removes).
#[utoipa::path(post, path = "/policies", tag = "plugins", request_body = RuleSet,
    responses(
        (status = 201, description = "Installed for the fleet and active on this server", body = PolicyView),
        (status = 400, description = "A rule is malformed (the field is named)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "A plugin of that name exists (`policy_exists`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:plugins"])))]
pub async fn policies_create(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(rules): ApiJson<RuleSet>,
) -> ApiResult<(StatusCode, Extension<AuditResource>, Json<PolicyView>)> {
    caller.not_an_agent("install policies")?;
    caller.require(Permission::Plugins)?;
    let rules = rules.validated()?;
    if crate::plugins::builtin::is_builtin(&rules.name) || state.coordinator.plugin_info(&rules.name).await?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "policy_exists",
            format!(
                "a plugin named {} exists; choose another name, or replace it with PUT /plugins/{}",
                rules.name, rules.name
            ),
        ));
    }
    state.coordinator.install_rule_set(&rules, &caller.sub).await?;
    let info = state.coordinator.plugin_info(&rules.name).await?;
    let view = info.as_ref().and_then(PolicyView::of).ok_or_else(|| {
        ApiError::internal(format!("policy {} was installed but this server does not run it", rules.name))
    })?;
    Ok((StatusCode::CREATED, Extension(AuditResource(format!("policy:{}", view.name))), Json(view)))
}
