//! Host bindings for the three plugin worlds of `wit/control-plane.wit`, generated here and nowhere else.
//!
//! The `types` interface is generated once (with the strategy world) and shared by the other two worlds, so a
//! `TaskInfo` built for a strategy is the same type a policy receives.

/// The `strategy` world: exports `selector`.
#[expect(missing_docs, reason = "generated from the WIT world, whose own comments document it")]
pub mod strategy {
    wasmtime::component::bindgen!({
        world: "strategy",
        path: "../wit",
        additional_derives: [PartialEq],
    });
}

/// The `policy` world: exports `evaluator`.
#[expect(missing_docs, reason = "generated from the WIT world, whose own comments document it")]
pub mod policy {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "../wit",
        additional_derives: [PartialEq],
        with: { "aragora:control-plane/types": super::strategy::aragora::control_plane::types },
    });
}

/// The `health-probe` world: exports `prober`.
#[expect(missing_docs, reason = "generated from the WIT world, whose own comments document it")]
pub mod probe {
    wasmtime::component::bindgen!({
        world: "health-probe",
        path: "../wit",
        additional_derives: [PartialEq],
        with: { "aragora:control-plane/types": super::strategy::aragora::control_plane::types },
    });
}

pub use strategy::aragora::control_plane::types::{
    AgentInfo, CallContext, Candidate, CandidateDetails, Decision, DispatchRequest, HealthStatus, HttpCheck,
    Modification, Observations, PolicyInput, Priority, ProbeResult, RegisterChanges, SubmitChanges, SubmitRequest,
    TaskInfo,
};

/// Fully qualified export names, by which the host recognises a component's world.
pub const SELECTOR_EXPORT: &str = "aragora:control-plane/selector";
/// See [`SELECTOR_EXPORT`].
pub const EVALUATOR_EXPORT: &str = "aragora:control-plane/evaluator";
/// See [`SELECTOR_EXPORT`].
pub const PROBER_EXPORT: &str = "aragora:control-plane/prober";

// Conversions between the wire model and the plugin records: one place, so the two enums cannot drift apart.

impl From<crate::model::Priority> for Priority {
    fn from(priority: crate::model::Priority) -> Self {
        match priority {
            crate::model::Priority::Critical => Priority::Critical,
            crate::model::Priority::High => Priority::High,
            crate::model::Priority::Normal => Priority::Normal,
            crate::model::Priority::Low => Priority::Low,
        }
    }
}

impl From<Priority> for crate::model::Priority {
    fn from(priority: Priority) -> Self {
        match priority {
            Priority::Critical => crate::model::Priority::Critical,
            Priority::High => crate::model::Priority::High,
            Priority::Normal => crate::model::Priority::Normal,
            Priority::Low => crate::model::Priority::Low,
        }
    }
}

impl From<crate::model::HealthState> for HealthStatus {
    fn from(state: crate::model::HealthState) -> Self {
        match state {
            crate::model::HealthState::Healthy => HealthStatus::Healthy,
            crate::model::HealthState::Degraded => HealthStatus::Degraded,
            crate::model::HealthState::Unhealthy => HealthStatus::Unhealthy,
            crate::model::HealthState::Unknown => HealthStatus::Unknown,
        }
    }
}

impl From<HealthStatus> for crate::model::HealthState {
    fn from(status: HealthStatus) -> Self {
        match status {
            HealthStatus::Healthy => crate::model::HealthState::Healthy,
            HealthStatus::Degraded => crate::model::HealthState::Degraded,
            HealthStatus::Unhealthy => crate::model::HealthState::Unhealthy,
            HealthStatus::Unknown => crate::model::HealthState::Unknown,
        }
    }
}
