//! Policy violations (DESIGN §5): a deny or warn as the policy stage reports it, and the fleet-wide record it
//! becomes in the store.

use serde::{Deserialize, Serialize};

/// A policy deny or warn, as the policy stage reports it (DESIGN §5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewViolation {
    /// The policy's plugin name.
    pub policy: String,
    /// `submit`, `register` or `dispatch`.
    pub stage: &'static str,
    /// `deny` or `warn`.
    pub decision: &'static str,
    /// The policy's reason.
    pub reason: String,
    /// The task concerned (the id it was to get, for a denied submit).
    pub task_id: Option<String>,
    /// The agent concerned.
    pub agent_id: Option<String>,
}

/// A recorded deny or warn: fleet-wide, newest first in `GET /policies/violations`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Violation {
    /// `viol_` + a fleet-wide sequence number.
    pub id: String,
    /// The policy's plugin name.
    pub policy: String,
    /// `submit`, `register` or `dispatch`.
    pub stage: String,
    /// `deny` or `warn`.
    pub decision: String,
    /// The policy's reason.
    pub reason: String,
    /// The task concerned (the id it was to get, for a denied submit).
    #[serde(default)]
    pub task_id: Option<String>,
    /// The agent concerned.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// When (RFC 3339, store clock).
    pub time: String,
}

/// Violations kept (the oldest are dropped past this).
pub const VIOLATIONS_KEPT: usize = 10_000;
