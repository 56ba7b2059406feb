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
    /// Where it stands with its reviewers: `open` until someone acknowledges, investigates or resolves it.
    #[serde(default)]
    pub status: ViolationStatus,
    /// The note that came with the last status change.
    #[serde(default)]
    pub note: Option<String>,
    /// Who changed the status last (the token's subject).
    #[serde(default)]
    pub updated_by: Option<String>,
    /// When (RFC 3339, store clock).
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// Where a violation stands with the people who review it (Aragora's statuses, and `acknowledged`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ViolationStatus {
    /// Nobody has looked at it yet.
    #[default]
    Open,
    /// Seen.
    Acknowledged,
    /// Being looked into.
    Investigating,
    /// Dealt with.
    Resolved,
    /// The policy was wrong.
    FalsePositive,
}

impl ViolationStatus {
    /// Every status.
    pub const ALL: [ViolationStatus; 5] = [
        ViolationStatus::Open,
        ViolationStatus::Acknowledged,
        ViolationStatus::Investigating,
        ViolationStatus::Resolved,
        ViolationStatus::FalsePositive,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationStatus::Open => "open",
            ViolationStatus::Acknowledged => "acknowledged",
            ViolationStatus::Investigating => "investigating",
            ViolationStatus::Resolved => "resolved",
            ViolationStatus::FalsePositive => "false_positive",
        }
    }
}

impl std::str::FromStr for ViolationStatus {
    type Err = super::ValidationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ViolationStatus::ALL.into_iter().find(|s| s.as_str() == text).ok_or_else(|| {
            super::ValidationError::new(
                "status",
                "must be open, acknowledged, investigating, resolved or false_positive",
            )
        })
    }
}

/// A reviewer's change to a violation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViolationUpdate {
    /// The new status.
    pub status: ViolationStatus,
    /// Their note (replaces the previous one; none clears it).
    pub note: Option<String>,
    /// Who (the token's subject).
    pub by: String,
}

/// Violations kept (the oldest are dropped past this).
pub const VIOLATIONS_KEPT: usize = 10_000;
