//! Why a state transition was refused: the errors every store answers with and the engine passes on. Each variant
//! maps to one HTTP status in the API.

use super::TaskId;

/// Why a transition was refused. Each variant maps to one HTTP status in the API.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// 404: no such agent (a claim tells the agent to register).
    #[error("agent {0} is not registered")]
    AgentNotFound(String),
    /// 404: no uploaded plugin of that name (delete, enable or disable of a name the fleet never heard of).
    #[error("no plugin named {0:?} in the fleet's uploads")]
    PluginNotFound(String),
    /// 404: no such task.
    #[error("task {0} not found")]
    TaskNotFound(TaskId),
    /// 409: the transition does not apply to the current state; `code` says why (`lease_lost`, `task_cancelled`,
    /// `task_timeout`, `outcome_conflict`, `session_replaced`, `idempotency_key_reused`, `invalid_transition`).
    #[error("{message}")]
    Conflict {
        /// Machine-readable reason.
        code: &'static str,
        /// Human-readable detail.
        message: String,
    },
    /// 503: the pending index already has `MAX_SIGNATURES` distinct capability sets.
    #[error("too many distinct capability signatures pending ({0}); retry later")]
    TooManySignatures(usize),
    /// 429: `MAX_PENDING_TASKS` tasks are pending already; the submit changed nothing.
    #[error("{0} tasks are pending already (MAX_PENDING_TASKS); retry later")]
    TooManyPending(u64),
    /// 503: the store cannot be reached; the outcome of a write is unknown.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        StoreError::Conflict { code, message: message.into() }
    }
}

/// Result of a store transition.
pub type StoreResult<T> = Result<T, StoreError>;
