//! The agent registry: service discovery. Registration (validated, passed through the register policies, then
//! an upsert in the store), heartbeats, pause/resume, lookups and listings. Liveness itself is the store's:
//! heartbeats push an agent's expiry forward and the sweeper marks silent agents offline.

use std::sync::Arc;

use crate::model::{
    Agent, AgentFilter, AgentRegistration, AgentStatus, HeartbeatOutcome, HeartbeatRequest, RegisterRequest,
    Registered, StoreError,
};
use crate::scheduler::{EngineError, Scheduler};
use crate::store::Store;

/// The registry; cheap to clone.
#[derive(Clone)]
pub struct AgentRegistry {
    store: Arc<dyn Store>,
    scheduler: Arc<Scheduler>,
}

impl AgentRegistry {
    /// A registry over the scheduler's store (the scheduler also keeps the violation log policies write to).
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        AgentRegistry { store: scheduler.store().clone(), scheduler }
    }

    /// Registers (or re-registers) an agent after the register policies.
    pub async fn register(&self, request: RegisterRequest) -> Result<Registered, EngineError> {
        let (capabilities, max_concurrent_tasks) = request.validate()?;
        let mut registration = AgentRegistration {
            agent_id: request.agent_id,
            capabilities,
            model: request.model,
            provider: request.provider,
            metadata: request.metadata,
            max_concurrent_tasks,
            health_url: request.health_url,
            status: request.status.unwrap_or(AgentStatus::Ready),
            session_id: request.session_id,
        };
        self.scheduler.policies_on_register(&mut registration).await?;
        let registered = self.store.register(registration).await?;
        // A new session revoked the old one's leases: that work goes to the claims waiting for it.
        self.scheduler.route_requeued(registered.requeued.clone());
        Ok(registered)
    }

    /// Records a heartbeat.
    pub async fn heartbeat(
        &self,
        agent_id: &str,
        heartbeat: HeartbeatRequest,
    ) -> Result<HeartbeatOutcome, EngineError> {
        heartbeat.validate()?;
        let outcome = self.store.heartbeat(agent_id, &heartbeat).await?;
        // Grants the agent never heard of were released: they go to the claims waiting for them.
        self.scheduler.route_requeued(outcome.requeued.clone());
        Ok(outcome)
    }

    /// Removes an agent (its work is requeued).
    pub async fn unregister(&self, agent_id: &str) -> Result<(), EngineError> {
        let requeued = self.store.unregister(agent_id).await?;
        self.scheduler.route_requeued(requeued);
        Ok(())
    }

    /// Pauses (no new work) or resumes an agent.
    pub async fn set_paused(&self, agent_id: &str, paused: bool) -> Result<Agent, EngineError> {
        Ok(self.store.set_paused(agent_id, paused).await?)
    }

    /// One agent.
    pub async fn get(&self, agent_id: &str) -> Result<Agent, EngineError> {
        self.store.get_agent(agent_id).await?.ok_or_else(|| StoreError::AgentNotFound(agent_id.to_string()).into())
    }

    /// Agents, filtered by capability and availability.
    pub async fn list(&self, filter: &AgentFilter) -> Result<Vec<Agent>, EngineError> {
        Ok(self.store.list_agents(filter).await?)
    }
}
