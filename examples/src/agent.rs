//! The agent loop of the guide: register, then claim → process → complete while heartbeating; on shutdown,
//! report `draining`, finish the work in hand, and unregister.
//!
//! Run the demo of it: `cargo run -p aragora-cp-examples --bin agent-loop`.

use std::sync::Arc;
use std::time::Duration;

use aragora_cp::coordinator::ControlPlaneCoordinator;
use aragora_cp::model::Fence;
use aragora_cp::model::{AgentStatus, HeartbeatRequest, RegisterRequest};
use aragora_cp::scheduler::Claim;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// What one agent did before it stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentReport {
    /// The agent.
    pub agent_id: String,
    /// Tasks it completed.
    pub completed: usize,
}

/// Runs one agent until `stop` fires: register, claim with a long poll, "process" (here: echo the payload after
/// `work`), complete with the lease, heartbeat in the background; then drain and unregister.
pub async fn run_agent(
    cp: Arc<ControlPlaneCoordinator>,
    agent_id: String,
    capabilities: Vec<String>,
    work: Duration,
    stop: CancellationToken,
) -> anyhow::Result<AgentReport> {
    let registration = RegisterRequest {
        agent_id: agent_id.clone(),
        capabilities,
        model: "example-model".into(),
        provider: "example".into(),
        ..Default::default()
    };
    let session = cp.register_agent(registration).await?.agent.session_id;

    let heartbeats = {
        let cp = cp.clone();
        let agent_id = agent_id.clone();
        let stop = stop.clone();
        let interval = cp.config().heartbeat_interval;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {
                        let _ = cp.heartbeat(&agent_id, HeartbeatRequest::default()).await;
                    }
                }
            }
        })
    };

    let mut report = AgentReport { agent_id: agent_id.clone(), completed: 0 };
    let claim = Claim {
        agent_id: agent_id.clone(),
        capabilities: None,
        block: Duration::from_millis(500),
        max_tasks: 1,
        session_id: Some(session.clone()),
    };
    while !stop.is_cancelled() {
        let outcome = tokio::select! {
            _ = stop.cancelled() => break,
            outcome = cp.claim_task(&claim) => outcome?,
        };
        for task in outcome.tasks {
            let fence = Fence::Lease(task.lease_id.clone().unwrap_or_default());
            cp.start_task(&task.task_id, &fence).await?;
            tokio::time::sleep(work).await;
            cp.complete_task(&task.task_id, &fence, json!({"echo": task.payload, "by": agent_id})).await?;
            report.completed += 1;
        }
    }

    // Shutdown: no new work, then leave.
    let draining =
        HeartbeatRequest { status: Some(AgentStatus::Draining), session_id: Some(session), ..Default::default() };
    cp.heartbeat(&agent_id, draining).await?;
    heartbeats.abort();
    cp.unregister_agent(&agent_id).await?;
    Ok(report)
}
