//! "May this agent take work?" — the one rule (DESIGN §4), with the reason when it may not. Claims, routing,
//! `select_agent`, `GET /agents?available=` and the counters all ask it here; the Redis store's scripts mirror it
//! (`refusal` in `lib.lua`) and the store conformance suite pins the two together.
//!
//! A claim first brings its agent back (an offline or starting agent that claims is alive and ready), so the
//! statuses `offline` and `starting` refuse only work offered to an agent that is not asking for it. Capacity is
//! not part of the rule: an agent asking for work judges its own capacity (a claim at capacity is served), while
//! routing and availability prefer agents below it ([`Standing::available`]).

use serde::{Deserialize, Serialize};

use super::{AgentStatus, BreakerState, HealthState};

/// Why an agent may not take work now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Paused by an operator.
    Paused,
    /// The agent is draining: it finishes what it holds and takes nothing new.
    Draining,
    /// The agent reported a fatal error, or a probe judged it unhealthy.
    Failed,
    /// Its last probe verdict is unhealthy.
    Unhealthy,
    /// Its circuit breaker is open (cooling down after failures).
    BreakerOpen,
    /// Its breaker is half-open and the one trial lease is out.
    BreakerTrialInFlight,
    /// No heartbeat within `HEARTBEAT_TIMEOUT` (a claim or heartbeat brings it back).
    Offline,
    /// It registered as starting and has not said it is ready (a claim or heartbeat does).
    Starting,
}

impl Refusal {
    /// The snake_case name (a refused claim's `reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Paused => "paused",
            Refusal::Draining => "draining",
            Refusal::Failed => "failed",
            Refusal::Unhealthy => "unhealthy",
            Refusal::BreakerOpen => "breaker_open",
            Refusal::BreakerTrialInFlight => "breaker_trial_in_flight",
            Refusal::Offline => "offline",
            Refusal::Starting => "starting",
        }
    }

    /// Every reason, in the order the rule checks them.
    pub const ALL: [Refusal; 8] = [
        Refusal::Paused,
        Refusal::Unhealthy,
        Refusal::BreakerOpen,
        Refusal::BreakerTrialInFlight,
        Refusal::Draining,
        Refusal::Failed,
        Refusal::Offline,
        Refusal::Starting,
    ];
}

/// What the rule reads of an agent. A breaker that is open past its cooldown counts as half-open: each store
/// resolves that from its own clock before asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    /// Paused by an operator.
    pub paused: bool,
    /// Its status.
    pub status: AgentStatus,
    /// Its last probe verdict.
    pub health: HealthState,
    /// Its circuit breaker.
    pub breaker: BreakerState,
    /// A half-open breaker's one trial lease is out.
    pub trial_in_flight: bool,
}

impl Standing {
    /// Why the agent may not take work now, if it may not: the first of, in this order, paused, unhealthy, breaker
    /// open, half-open trial out, draining, failed, offline, starting.
    pub fn refusal(&self) -> Option<Refusal> {
        if self.paused {
            return Some(Refusal::Paused);
        }
        // Health before status: an unhealthy verdict also sets `failed`, and "unhealthy" says why.
        if self.health == HealthState::Unhealthy {
            return Some(Refusal::Unhealthy);
        }
        match self.breaker {
            BreakerState::Open => return Some(Refusal::BreakerOpen),
            BreakerState::HalfOpen if self.trial_in_flight => return Some(Refusal::BreakerTrialInFlight),
            _ => {}
        }
        match self.status {
            AgentStatus::Draining => Some(Refusal::Draining),
            AgentStatus::Failed => Some(Refusal::Failed),
            AgentStatus::Offline => Some(Refusal::Offline),
            AgentStatus::Starting => Some(Refusal::Starting),
            AgentStatus::Ready | AgentStatus::Busy => None,
        }
    }

    /// Whether the agent could take work now and has room for it (`GET /agents?available=true`,
    /// `available_agents`): no refusal, `ready` (not `busy`, which the agent may also report itself), and fewer
    /// tasks in flight than it may hold.
    pub fn available(&self, in_flight: u32, max_concurrent: u32) -> bool {
        self.refusal().is_none() && self.status == AgentStatus::Ready && in_flight < max_concurrent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(status: AgentStatus) -> Standing {
        Standing {
            paused: false,
            status,
            health: HealthState::Unknown,
            breaker: BreakerState::Closed,
            trial_in_flight: false,
        }
    }

    #[test]
    fn a_ready_or_busy_agent_may_take_work_and_the_first_reason_wins() {
        assert_eq!(standing(AgentStatus::Ready).refusal(), None);
        assert_eq!(standing(AgentStatus::Busy).refusal(), None, "busy is capacity, which a claim judges itself");
        let everything_wrong = Standing {
            paused: true,
            status: AgentStatus::Draining,
            health: HealthState::Unhealthy,
            breaker: BreakerState::Open,
            trial_in_flight: false,
        };
        assert_eq!(everything_wrong.refusal(), Some(Refusal::Paused));
        assert_eq!(Standing { paused: false, ..everything_wrong }.refusal(), Some(Refusal::Unhealthy));
        let healthy = Standing { paused: false, health: HealthState::Healthy, ..everything_wrong };
        assert_eq!(healthy.refusal(), Some(Refusal::BreakerOpen));
        assert_eq!(Standing { breaker: BreakerState::Closed, ..healthy }.refusal(), Some(Refusal::Draining));
        let half_open = Standing { breaker: BreakerState::HalfOpen, ..standing(AgentStatus::Ready) };
        assert_eq!(half_open.refusal(), None);
        assert_eq!(Standing { trial_in_flight: true, ..half_open }.refusal(), Some(Refusal::BreakerTrialInFlight));
        assert_eq!(standing(AgentStatus::Offline).refusal(), Some(Refusal::Offline));
        assert_eq!(standing(AgentStatus::Starting).refusal(), Some(Refusal::Starting));
    }

    #[test]
    fn available_means_no_refusal_and_room() {
        assert!(standing(AgentStatus::Ready).available(0, 1));
        assert!(!standing(AgentStatus::Ready).available(1, 1));
        assert!(!standing(AgentStatus::Starting).available(0, 1));
    }
}
